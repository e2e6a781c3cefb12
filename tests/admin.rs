//! Model management against the real `inferd serve` binary (SmolLM2 on CPU):
//! a hot swap v1 -> v2 -> rollback under 16 streaming clients, an 80/20
//! canary with sticky sessions, a failed load that leaves the active version
//! serving (and the admin API's error statuses), the persisted routing
//! across a restart, readiness while loading, and config/multi-model.toml
//! serving all its models from one process.
//!
//! v1 is the Q4_1 GGUF, v2 the same model exported as a bf16 Hugging Face
//! folder (`weights/fixtures/smollm2_v2`); both serve in f32, the faster
//! dtype on this CPU. Each response names its version in the
//! `x-inferd-model-version` header and, in every streamed chunk, in
//! `system_fingerprint` ("inferd-<version>").

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::*;
use common::server::ServerProcess;
use serde_json::{json, Value};

#[test]
fn hot_swap_and_rollback_under_16_streaming_clients() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProcess::start(dir.path(), &config(16), READY);
    let v1 = version_entry(&model_entry(&s, MODEL), "v1");
    assert!(
        v1["memory_bytes"].as_u64().unwrap_or(0) > 100 << 20,
        "v1 holds its weights: {v1}"
    );
    assert_eq!(
        version_entry(&model_entry(&s, MODEL), "v2")["state"],
        "unloaded",
        "configured, not loaded"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let clients: Vec<_> = (0..16)
        .map(|k| {
            let (stop, seen, base) = (stop.clone(), seen.clone(), s.base.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut i = k;
                while !stop.load(Ordering::SeqCst) {
                    let r = stream_chat(&c, &base, i);
                    seen.lock().expect("lock").push(r);
                    i += 16;
                }
            })
        })
        .collect();
    let count = |v: &str| {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|r| r.as_deref() == Ok(v))
            .count()
    };

    wait_for("16 responses by v1", || count("v1") >= 16);
    let (status, m) = admin(
        &s,
        "POST",
        "/smollm2/activate",
        Some(json!({"version": "v2"})),
    );
    assert_eq!((status, m["active"].clone()), (200, json!("v2")), "{m}");
    let before = count("v2");
    wait_for("v2 serves", || count("v2") >= before + 16);
    wait_for("v1 drained and unloaded", || unloaded(&s, "v1"));
    let after_swap = count("v1");

    // Rollback: v1 was unloaded, so it is loaded again, then activated.
    let (status, m) = admin(&s, "POST", "/smollm2/rollback", None);
    assert_eq!(
        (status, m["active"].clone(), m["previous"].clone()),
        (200, json!("v1"), json!("v2")),
        "{m}"
    );
    wait_for("v1 serves again", || count("v1") >= after_swap + 16);
    wait_for("v2 drained and unloaded", || unloaded(&s, "v2"));

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let seen = seen.lock().expect("lock");
    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        seen.len(),
        failed.first()
    );
    let mut by_version: HashMap<&str, usize> = HashMap::new();
    for v in seen.iter().flatten() {
        *by_version.entry(v.as_str()).or_default() += 1;
    }
    assert_eq!(by_version.len(), 2, "{by_version:?}");
    let v1 = version_entry(&model_entry(&s, MODEL), "v1");
    assert!(v1["memory_bytes"].as_u64().unwrap_or(0) > 100 << 20, "{v1}");
    eprintln!(
        "hot swap: {} streamed responses {by_version:?}, 0 failed, in {:.1}s",
        seen.len(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn canary_80_20_over_500_requests_and_sticky_sessions() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProcess::start(dir.path(), &config(64), READY);
    // v2 is configured but unloaded: the canary loads it first.
    let (status, m) = admin(
        &s,
        "PUT",
        "/smollm2/canary",
        Some(json!({"version": "v2", "weight": 20})),
    );
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["canary"], json!({"version": "v2", "weight": 20}));
    assert_eq!(version_entry(&m, "v2")["canary_weight"], 20);

    let versions: Arc<Mutex<Vec<String>>> = Arc::default();
    let workers: Vec<_> = (0..WORKERS)
        .map(|k| {
            let (versions, base) = (versions.clone(), s.base.clone());
            std::thread::spawn(move || {
                let c = client();
                for _ in (k..500).step_by(WORKERS) {
                    let v = complete(&c, &base, MODEL, None).expect("canary request");
                    versions.lock().expect("lock").push(v);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let versions = versions.lock().expect("lock");
    assert_eq!(versions.len(), 500);
    let canary = versions.iter().filter(|v| *v == "v2").count();
    let share = canary as f64 / 5.0;
    assert!(
        (15.0..=25.0).contains(&share),
        "canary share {share}% of 500, want 20 ± 5"
    );

    drop(versions);

    // Sticky: each session stays on one side; sessions spread over both.
    let sessions: Vec<_> = (0..40)
        .map(|i| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                let (c, id) = (client(), format!("session-{i}"));
                let first = complete(&c, &base, MODEL, Some(&id)).expect("session request");
                for _ in 0..2 {
                    let again = complete(&c, &base, MODEL, Some(&id)).expect("again");
                    assert_eq!(again, first, "{id} moved");
                }
                first
            })
        })
        .collect();
    let mut sides: HashMap<String, usize> = HashMap::new();
    for t in sessions {
        *sides.entry(t.join().expect("session thread")).or_default() += 1;
    }
    assert_eq!(sides.len(), 2, "sessions all on one side: {sides:?}");

    let c = client();
    let (status, m) = admin(&s, "DELETE", "/smollm2/canary", None);
    assert_eq!((status, m["canary"].clone()), (200, Value::Null));
    assert!((0..20).all(|_| complete(&c, &s.base, MODEL, None).as_deref() == Ok("v1")));
    eprintln!(
        "canary: {canary}/500 = {share}% on v2, sessions {sides:?}, in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn a_failed_load_is_reported_and_the_active_version_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProcess::start(dir.path(), &config(16), READY);
    let c = client();
    let corrupt = dir.path().join("corrupt.gguf");
    let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&corrupt, bytes).expect("write corrupt file");

    let (status, e) = admin(
        &s,
        "POST",
        "/smollm2/versions",
        Some(json!({"version": "v3", "source": corrupt})),
    );
    assert_eq!(status, 500, "{e}");
    assert_eq!(e["error"]["param"], "source", "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("v3") && msg.contains("corrupt.gguf"), "{msg}");
    let m = model_entry(&s, MODEL);
    let v3 = version_entry(&m, "v3");
    assert_eq!(
        (v3["state"].clone(), v3["memory_bytes"].clone()),
        (json!("failed"), json!(0)),
        "{m}"
    );
    assert!(
        v3["error"]
            .as_str()
            .is_some_and(|e| e.contains("corrupt.gguf")),
        "{v3}"
    );
    assert_eq!(m["active"], "v1");
    for _ in 0..3 {
        assert_eq!(complete(&c, &s.base, MODEL, None).as_deref(), Ok("v1"));
    }
    let ready = c
        .get(format!("{}/health/ready", s.base))
        .send()
        .expect("ready");
    assert_eq!(ready.status().as_u16(), 200);

    // The other refusals, each naming the field.
    let cases = [
        (
            "POST",
            "/smollm2/versions",
            Some(json!({"version": "v4", "source": "/nonexistent/x.gguf"})),
            400,
            "source",
        ),
        (
            "POST",
            "/smollm2/versions",
            Some(json!({"version": "v4", "source": corrupt, "dtype": "int3"})),
            400,
            "dtype",
        ),
        (
            "POST",
            "/smollm2/versions",
            Some(json!({"version": "v4", "source": corrupt, "devices": ["cuda:9"]})),
            400,
            "devices",
        ),
        (
            "POST",
            "/smollm2/activate",
            Some(json!({"version": "v9"})),
            404,
            "version",
        ),
        (
            "POST",
            "/nope/activate",
            Some(json!({"version": "v1"})),
            404,
            "model",
        ),
        ("DELETE", "/smollm2/versions/v1", None, 409, "version"),
        (
            "PUT",
            "/smollm2/canary",
            Some(json!({"version": "v2", "weight": 101})),
            400,
            "weight",
        ),
        (
            "PUT",
            "/smollm2/canary",
            Some(json!({"version": "v1", "weight": 10})),
            409,
            "version",
        ),
    ];
    for (method, path, body, want, param) in cases {
        let (status, e) = admin(&s, method, path, body);
        assert_eq!(
            (status, e["error"]["param"].as_str()),
            (want, Some(param)),
            "{method} {path}: {e}"
        );
    }
    let (status, e) = admin(&s, "POST", "/smollm2/rollback", None);
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("no_previous")),
        "{e}"
    );
    // Forgetting the failed version.
    let (status, m) = admin(&s, "DELETE", "/smollm2/versions/v3", None);
    assert_eq!(status, 200);
    assert_eq!(version_entry(&m, "v3"), Value::Null, "{m}");
}

#[test]
fn restart_restores_the_persisted_active_version_and_canary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProcess::start(dir.path(), &config(16), READY);
    let (status, m) = admin(
        &s,
        "POST",
        "/smollm2/activate",
        Some(json!({"version": "v2"})),
    );
    assert_eq!(status, 200, "{m}");
    let (status, m) = admin(
        &s,
        "PUT",
        "/smollm2/canary",
        Some(json!({"version": "v1", "weight": 30})),
    );
    assert_eq!(status, 200, "{m}");
    let persisted: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("data/routing.json")).expect("routing.json"),
    )
    .expect("json");
    assert_eq!(
        persisted["routing"]["models"][0]["active"], "v2",
        "{persisted}"
    );
    s.kill();

    // Same config (v1 active there) and data dir: v2 and the canary come back.
    let s = ServerProcess::start(dir.path(), &config(16), READY);
    let m = model_entry(&s, MODEL);
    assert_eq!(m["active"], "v2", "{m}");
    assert_eq!(m["canary"], json!({"version": "v1", "weight": 30}), "{m}");
    let c = client();
    assert_eq!(m["ready"], true, "{m}");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let v = complete(&c, &s.base, MODEL, None).expect("request after restart");
        *seen.entry(v).or_default() += 1;
    }
    let (v1, v2) = (
        seen.get("v1").copied().unwrap_or(0),
        seen.get("v2").copied().unwrap_or(0),
    );
    assert!(
        v1 >= 1 && v2 > v1,
        "a 30% canary on v1 over 20 requests: {seen:?}"
    );
    let (status, _) = admin(&s, "DELETE", "/smollm2/canary", None);
    assert_eq!(status, 200);
    assert_eq!(complete(&c, &s.base, MODEL, None).as_deref(), Ok("v2"));
}

#[test]
fn readiness_while_loading_and_multi_model_serves_every_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = multi_model_config();
    let s = ServerProcess::spawn(dir.path(), &cfg);
    let c = client();
    let (mut saw_503, mut saw_model_503) = (false, false);
    let t0 = Instant::now();
    loop {
        let live = c
            .get(format!("{}/health/live", s.base))
            .send()
            .expect("live");
        assert_eq!(live.status().as_u16(), 200, "liveness while loading");
        let model = c
            .get(format!("{}/v1/models/{MODEL}/ready", s.base))
            .send()
            .expect("model ready");
        if model.status().as_u16() == 503 {
            saw_model_503 = true;
        }
        let r = c
            .get(format!("{}/health/ready", s.base))
            .send()
            .expect("ready");
        let status = r.status().as_u16();
        let body: Value = r.json().expect("ready json");
        if status == 200 {
            assert_eq!(
                (body["status"].clone(), body["reasons"].clone()),
                (json!("ready"), json!([]))
            );
            break;
        }
        assert_eq!(
            (status, body["status"].clone()),
            (503, json!("not ready")),
            "{body}"
        );
        assert!(
            !body["reasons"].as_array().expect("reasons").is_empty(),
            "{body}"
        );
        saw_503 = true;
        assert!(t0.elapsed() < READY, "not ready after {READY:?}: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        saw_503 && saw_model_503,
        "readiness was never 503 while the models loaded"
    );
    let live = c
        .get(format!("{}/health/live", s.base))
        .send()
        .expect("live");
    assert_eq!(live.status().as_u16(), 200);

    let models: Value = c
        .get(format!("{}/v1/models", s.base))
        .send()
        .expect("models")
        .json()
        .expect("json");
    let names: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{models}");
    for name in names {
        let r = c
            .get(format!("{}/v1/models/{name}/ready", s.base))
            .send()
            .expect("ready");
        assert_eq!(r.status().as_u16(), 200, "{name}");
        let body = json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3});
        let r = c
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&body)
            .send()
            .expect("chat");
        assert_eq!(r.status().as_u16(), 200, "{name}");
        assert_eq!(r.headers()["x-inferd-model-version"], "v1");
        let v: Value = r.json().expect("json");
        assert_eq!(v["model"], name, "{v}");
        assert!(v["choices"][0]["finish_reason"].is_string(), "{v}");
    }
    let r = c
        .get(format!("{}/v1/models/nope/ready", s.base))
        .send()
        .expect("unknown");
    assert_eq!(r.status().as_u16(), 404);
}
