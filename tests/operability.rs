//! Operability and protection against the real `inferd serve` binary
//! (SmolLM2 on CPU): the API-key matrix over every route, rate limits that
//! answer 429 with Retry-After and recover, the audit log (one line per
//! request, no prompt text), an overload burst of 10x the queue answered by
//! fast 429s, per-request deadlines, the response cache (hits counted, never
//! across versions), a real Prometheus server scraping /metrics, and the
//! SIGTERM drain.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{client, config as two_versions, wait_for, MODEL, READY};
use common::server::{smollm2_gguf, ServerProcess};
use serde_json::{json, Value};

const INFERENCE_KEY: &str = "sk-test-inference";
const ADMIN_KEY: &str = "sk-test-admin";
const LIMITED_KEY: &str = "sk-test-limited";
/// Requests per minute of LIMITED_KEY: the bucket holds this many and
/// refills one every 60/N seconds.
const LIMITED_RPM: u32 = 30;
/// A prompt that must never reach the audit log.
const SECRET: &str = "zebra-quartz-customer-secret";

fn sha(key: &str) -> String {
    inferd::api::auth::hash_key(key)
}

fn one_model(extra_server: &str, extra_version: &str) -> String {
    format!(
        "[server]\nport = 0\ndata_dir = \"data\"\n{extra_server}\n[models.{MODEL}]\nactive = \"v1\"\n\n[models.{MODEL}.versions.v1]\nsource = \"{}\"\ndtype = \"f32\"\nkv_cache_mb = 64\nmax_context = 512\n{extra_version}\n",
        smollm2_gguf().display()
    )
}

fn completion(max_tokens: u32) -> Value {
    json!({"model": MODEL, "prompt": format!("Say hello. {SECRET}"), "max_tokens": max_tokens, "temperature": 0})
}

/// (status, Retry-After, body) of one request.
fn call(base: &str, method: &str, path: &str, key: Option<&str>, body: Option<Body>) -> (u16, Option<String>, String) {
    let c = client();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = c.request(m, format!("{base}{path}"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r = match body {
        Some(Body::Json(v)) => r.json(&v),
        Some(Body::Text(t)) => r.body(t),
        None => r,
    };
    let res = r.send().expect("request");
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (status, retry, res.text().unwrap_or_default())
}

#[derive(Clone)]
enum Body {
    Json(Value),
    Text(String),
}

/// Every route, and the status it gives to (no key, a wrong key, an
/// inference key, an admin key).
fn routes() -> Vec<(&'static str, &'static str, Option<Body>, [u16; 4])> {
    let batch = format!(
        "{}\n",
        json!({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": MODEL, "prompt": "Hi", "max_tokens": 1}})
    );
    let open = [200, 200, 200, 200];
    let inference = [401, 401, 200, 200];
    let admin = [401, 401, 403, 200];
    vec![
        ("GET", "/health", None, open),
        ("GET", "/health/live", None, open),
        ("GET", "/health/ready", None, open),
        ("GET", "/ready", None, open),
        ("GET", "/v1/models/smollm2/ready", None, open),
        ("GET", "/metrics", None, open),
        ("GET", "/stats", None, open),
        ("GET", "/ui/", None, open),
        ("GET", "/v1/models", None, inference),
        ("GET", "/v1/models/smollm2", None, inference),
        ("POST", "/v1/completions", Some(Body::Json(completion(1))), inference),
        ("POST", "/v1/chat/completions", Some(Body::Json(json!({"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 1}))), inference),
        ("POST", "/generate", Some(Body::Json(json!({"inputs": SECRET, "parameters": {"max_new_tokens": 1}}))), inference),
        ("POST", "/generate_stream", Some(Body::Json(json!({"inputs": SECRET, "parameters": {"max_new_tokens": 1}}))), inference),
        ("POST", "/", Some(Body::Json(json!({"inputs": SECRET, "parameters": {"max_new_tokens": 1}}))), inference),
        ("GET", "/info", None, inference),
        ("POST", "/v1/batches", Some(Body::Text(batch)), inference),
        ("GET", "/v1/batches/nope", None, [401, 401, 404, 404]),
        ("GET", "/v1/batches/nope/results", None, [401, 401, 404, 404]),
        ("POST", "/v1/batches/nope/cancel", None, [401, 401, 404, 404]),
        // A plain GET is not a WebSocket handshake: 400 once authorized.
        ("GET", "/v1/ws", None, [401, 401, 400, 400]),
        ("GET", "/admin/models", None, admin),
        ("GET", "/admin/models/smollm2", None, admin),
        ("POST", "/admin/models/nope/activate", Some(Body::Json(json!({"version": "v1"}))), [401, 401, 403, 404]),
        ("PUT", "/admin/models/nope/canary", Some(Body::Json(json!({"version": "v1", "weight": 10}))), [401, 401, 403, 404]),
    ]
}

#[test]
fn auth_matrix_rate_limits_and_audit_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = format!(
        "[[keys]]\nid = \"inf\"\nsha256 = \"{}\"\nscopes = [\"inference\"]\n\n[[keys]]\nid = \"adm\"\nsha256 = \"{}\"\nscopes = [\"inference\", \"admin\"]\n\n[[keys]]\nid = \"lim\"\nsha256 = \"{}\"\nscopes = [\"inference\"]\nrequests_per_minute = {LIMITED_RPM}\n",
        sha(INFERENCE_KEY),
        sha(ADMIN_KEY),
        sha(LIMITED_KEY)
    );
    std::fs::write(dir.path().join("keys.toml"), keys).expect("keys file");
    let cfg = one_model("[auth]\nkeys_file = \"keys.toml\"\n\n[audit]\npath = \"audit.log\"\n", "");
    let s = ServerProcess::start(dir.path(), &cfg, READY);

    let mut sent = 0usize;
    let mut wrong = Vec::new();
    for (method, path, body, expected) in routes() {
        for (who, key) in [None, Some("sk-wrong"), Some(INFERENCE_KEY), Some(ADMIN_KEY)].into_iter().enumerate() {
            let (status, _, text) = call(&s.base, method, path, key, body.clone());
            // Probes, metrics and console files are not audited.
            if expected != [200; 4] {
                sent += 1;
            }
            if status != expected[who] {
                wrong.push(format!("{method} {path} as {:?}: {status}, expected {} ({text:.200})", key, expected[who]));
            }
            if status == 401 {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                assert_eq!(v["error"]["code"], "invalid_api_key", "{text}");
            }
        }
    }
    assert!(wrong.is_empty(), "auth matrix:\n{}", wrong.join("\n"));
    // x-api-key works as well as Bearer.
    let r = client().get(format!("{}/v1/models", s.base)).header("x-api-key", INFERENCE_KEY).send().expect("x-api-key");
    assert_eq!(r.status(), 200);
    sent += 1;

    // Rate limit: the bucket holds LIMITED_RPM requests, then 429 with Retry-After...
    for i in 0..LIMITED_RPM {
        let (status, _, _) = call(&s.base, "GET", "/v1/models", Some(LIMITED_KEY), None);
        sent += 1;
        assert_eq!(status, 200, "request {i} within the limit");
    }
    let (status, retry, text) = call(&s.base, "GET", "/v1/models", Some(LIMITED_KEY), None);
    sent += 1;
    assert_eq!(status, 429, "{text}");
    let retry: u64 = retry.expect("Retry-After on 429").parse().expect("seconds");
    assert!((1..=60 / LIMITED_RPM as u64 + 1).contains(&retry), "Retry-After {retry}");
    // ... other keys are not affected ...
    assert_eq!(call(&s.base, "GET", "/v1/models", Some(INFERENCE_KEY), None).0, 200);
    sent += 1;
    // ... and after Retry-After it recovers.
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(200));
    assert_eq!(call(&s.base, "GET", "/v1/models", Some(LIMITED_KEY), None).0, 200, "recovered after Retry-After");
    sent += 1;

    // The audit log: one line per API request (written once its body was
    // sent); the readiness polls of the test harness are not in it.
    let path = dir.path().join("audit.log");
    let lines = || std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    wait_for("every request audited", || lines().len() >= sent);
    std::thread::sleep(Duration::from_millis(300));
    let lines = lines();
    assert_eq!(lines.len(), sent, "one audit line per request");
    let text = lines.join("\n");
    assert!(!text.contains(SECRET) && !text.contains("zebra"), "the audit log holds no prompt text");
    let recs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let done: Vec<&Value> = recs.iter().filter(|r| r["path"] == "/v1/completions" && r["status"] == 200).collect();
    assert_eq!(done.len(), 2, "inference and admin key");
    for r in done {
        assert_eq!(r["model"], MODEL, "{r}");
        assert_eq!(r["version"], "v1", "{r}");
        assert!(r["prompt_tokens"].as_u64().unwrap_or(0) > 3 && r["completion_tokens"] == 1, "{r}");
        assert!(r["request_id"].as_str().is_some_and(|id| !id.is_empty()) && r["latency_ms"].as_f64().is_some(), "{r}");
        assert!(r["key_id"] == "inf" || r["key_id"] == "adm", "{r}");
    }
    assert!(recs.iter().any(|r| r["status"] == 429 && r["key_id"] == "lim"), "the refusal is audited with its key");
    assert!(recs.iter().any(|r| r["status"] == 401 && r["key_id"].is_null()));
}

/// Completion calls from `n` threads at once: (status, Retry-After, latency) each.
fn burst(base: &str, n: usize, body: Value) -> Vec<(u16, Option<String>, Duration)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (base, body, barrier) = (base.to_string(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let c = client();
                barrier.wait();
                let t0 = Instant::now();
                let r = c.post(format!("{base}/v1/completions")).json(&body).send().expect("request");
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
                let lat = t0.elapsed();
                let _ = r.text();
                (status, retry, lat)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client thread")).collect()
}

fn stats(base: &str) -> Value {
    client().get(format!("{base}/stats")).send().expect("stats").json().expect("json")
}

fn replica(base: &str) -> Value {
    stats(base)["replicas"][0].clone()
}

#[test]
fn overload_burst_gets_fast_429s_and_the_server_recovers() {
    const QUEUE: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = one_model("", &format!("max_num_seqs = 2\nmax_queue_requests = {QUEUE}\n"));
    let s = ServerProcess::start(dir.path(), &cfg, READY);
    let body = json!({"model": MODEL, "prompt": "Count to ten:", "max_tokens": 24, "ignore_eos": true});
    // Warm up (first-call allocations) so the memory baseline is fair.
    assert_eq!(burst(&s.base, 1, body.clone())[0].0, 200);
    let rss0 = s.rss_bytes();

    let results = burst(&s.base, 10 * QUEUE, body.clone());
    let (rejected, accepted): (Vec<_>, Vec<_>) = results.iter().partition(|r| r.0 == 429);
    assert!(accepted.iter().all(|r| r.0 == 200), "accepted requests complete: {:?}", accepted.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(accepted.len() >= QUEUE, "the queue's worth is served: {} accepted", accepted.len());
    assert!(rejected.len() >= 10 * QUEUE - 3 * QUEUE, "most of a 10x burst is refused: {} of {}", rejected.len(), results.len());
    assert!(rejected.iter().all(|r| r.1.as_deref().is_some_and(|v| v.parse::<u64>().is_ok())), "every 429 has Retry-After");
    let mut lat: Vec<Duration> = rejected.iter().map(|r| r.2).collect();
    lat.sort();
    let p99 = lat[(lat.len() * 99).div_ceil(100) - 1];
    assert!(p99 < Duration::from_millis(50), "rejections p99 {p99:?} (all: {lat:?})");

    // Still up, memory bounded, and serving normally afterwards.
    let rss1 = s.rss_bytes();
    assert!(rss1 < rss0 + (256 << 20), "RSS grew from {} MiB to {} MiB", rss0 >> 20, rss1 >> 20);
    let after = burst(&s.base, QUEUE, body);
    assert!(after.iter().all(|r| r.0 == 200), "after the burst: {:?}", after.iter().map(|r| r.0).collect::<Vec<_>>());
    let r = replica(&s.base);
    assert_eq!((r["running"].as_u64(), r["waiting"].as_u64()), (Some(0), Some(0)), "{r}");
}

#[test]
fn deadlines_end_requests_with_a_timeout_and_free_their_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The server default (1.5 s) applies to requests without `timeout`.
    let s = ServerProcess::start(dir.path(), &one_model("request_timeout_secs = 1.5", ""), READY);
    let idle = replica(&s.base)["free_blocks"].as_u64().expect("free_blocks");
    let long = |timeout: Option<f64>| {
        let mut b = json!({"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": true});
        if let Some(t) = timeout {
            b["timeout"] = json!(t);
        }
        b
    };
    for (body, what) in [(long(Some(0.3)), "own timeout"), (long(None), "server default")] {
        let t0 = Instant::now();
        let (status, _, text) = call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(body)));
        assert_eq!(status, 504, "{what}: {text}");
        let v: Value = serde_json::from_str(&text).expect("json error");
        assert_eq!(v["error"]["code"], "timeout", "{what}: {text}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}: ended at its deadline, not at max_tokens");
    }
    // A streamed request ends with an error event naming the timeout.
    let mut b = long(Some(0.3));
    b["stream"] = json!(true);
    let (status, _, text) = call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(b)));
    assert_eq!(status, 200, "the stream had started");
    assert!(text.contains("deadline exceeded"), "{text:.400}");
    // Blocks are freed (the prompt's full blocks may stay cached, and cached
    // blocks count as free).
    wait_for("blocks freed", || replica(&s.base)["free_blocks"].as_u64() == Some(idle));
    let m = client().get(format!("{}/metrics", s.base)).send().expect("metrics").text().expect("text");
    let timeouts = m.lines().find(|l| l.starts_with("inferd_request_errors_total") && l.contains("type=\"timeout\""));
    assert!(timeouts.is_some_and(|l| l.ends_with(" 3")), "three timeouts counted: {timeouts:?}");
    // An invalid timeout names the field and the limit.
    let (status, _, text) = call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(long(Some(-1.0)))));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("timeout") && text.contains("86400"), "{text}");
}

fn metric(base: &str, name: &str, label: &str) -> f64 {
    let m = client().get(format!("{base}/metrics")).send().expect("metrics").text().expect("text");
    m.lines().filter(|l| l.starts_with(name) && l.contains(label)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Model steps run by `version`'s replicas.
fn steps(base: &str, version: &str) -> u64 {
    stats(base)["replicas"].as_array().expect("replicas").iter().filter(|r| r["version"] == version).filter_map(|r| r["steps"].as_u64()).sum()
}

#[test]
fn response_cache_hits_skip_the_model_and_never_cross_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = two_versions(8).replace("[server]\n", "[server]\nresponse_cache_mb = 16\n");
    let s = ServerProcess::start(dir.path(), &cfg, READY);
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
    let text = |v: &str| serde_json::from_str::<Value>(v).expect("json")["choices"][0]["text"].as_str().expect("text").to_string();
    let hits = || metric(&s.base, "inferd_response_cache_hits_total", "model=\"smollm2\"");

    let (st, _, first) = call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(body.clone())));
    assert_eq!(st, 200, "{first}");
    let steps0 = steps(&s.base, "v1");
    let (st, _, second) = call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(body.clone())));
    assert_eq!(st, 200);
    assert_eq!(text(&second), text(&first), "a hit gives the same text");
    assert_eq!(steps(&s.base, "v1"), steps0, "a hit runs no model step");
    assert_eq!(hits(), 1.0);
    // The bypass header runs the model again.
    let r = client().post(format!("{}/v1/completions", s.base)).header("x-inferd-cache", "bypass").json(&body).send().expect("bypass");
    assert_eq!(r.status(), 200);
    assert!(steps(&s.base, "v1") > steps0, "a bypassed request runs the model");
    assert_eq!(hits(), 1.0);

    // Another version never answers from v1's entries.
    let r = client().post(format!("{}/admin/models/{MODEL}/activate", s.base)).json(&json!({"version": "v2"})).send().expect("activate");
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let steps1 = steps(&s.base, "v2");
    let r = client().post(format!("{}/v1/completions", s.base)).json(&body).send().expect("v2 request");
    assert_eq!(r.headers().get("x-inferd-model-version").and_then(|v| v.to_str().ok()), Some("v2"));
    assert_eq!(r.status(), 200);
    assert!(steps(&s.base, "v2") > steps1, "v2 ran its model instead of replaying v1's answer");
    assert_eq!(hits(), 1.0, "no hit across versions");
    // Sampled requests without a seed are never cached.
    let sampled = json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 4, "temperature": 1.0});
    for _ in 0..2 {
        assert_eq!(call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(sampled.clone()))).0, 200);
    }
    assert_eq!(hits(), 1.0, "unseeded sampling is not deterministic, so not cached");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A Prometheus server (the Debian package) scraping `target` every second.
fn prometheus(dir: &Path, target: &str) -> (Child, String) {
    let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().find(|p| Path::new(p).exists()).expect("prometheus not installed — run `make setup` (scripts/setup-system.sh)");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: inferd\n    static_configs:\n      - targets: ['{target}']\n")).expect("prometheus.yml");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    (child, format!("http://{addr}"))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_ttft_and_running_gauge_and_stats_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProcess::start(dir.path(), &one_model("", ""), READY);
    for _ in 0..3 {
        assert_eq!(call(&s.base, "POST", "/v1/completions", None, Some(Body::Json(completion(4)))).0, 200);
    }
    // /stats has the same traffic: totals and last-minute percentiles.
    let r = replica(&s.base);
    assert_eq!(r["requests_total"], 3, "{r}");
    assert_eq!(r["generation_tokens_total"], 12, "{r}");
    for k in ["ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "e2e_p50", "e2e_p99"] {
        assert!(r[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {r}");
    }
    assert!(r["ttft_p50"].as_f64() <= r["e2e_p99"].as_f64(), "{r}");
    // Every step is timed on the worker: its forward and its sampling.
    let steps = r["steps"].as_f64().expect("steps");
    assert!(steps >= 3.0, "{r}");
    for name in ["inferd_step_forward_seconds", "inferd_step_sample_seconds"] {
        let count = metric(&s.base, &format!("{name}_count"), "device=\"cpu\"");
        assert_eq!(count, steps, "{name}: one observation per step");
    }
    let forward = metric(&s.base, "inferd_step_forward_seconds_sum", "model=\"smollm2\"");
    let forward_secs = r["forward_secs"].as_f64().expect("forward_secs");
    assert!(forward > 0.0 && (forward - forward_secs).abs() <= 1e-3 * forward_secs, "forward {forward}: {r}");
    let target = s.base.trim_start_matches("http://").to_string();
    let (child, prom) = prometheus(dir.path(), &target);
    let _guard = Killed(child);
    let query = |q: &str| -> Vec<Value> {
        let enc: String = q.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
        let r = client().get(format!("{prom}/api/v1/query?query={enc}")).send();
        r.ok().and_then(|r| r.json::<Value>().ok()).and_then(|v| v["data"]["result"].as_array().cloned()).unwrap_or_default()
    };
    let t0 = Instant::now();
    let (ttft, running) = loop {
        let ttft = query("inferd_time_to_first_token_seconds_count{model=\"smollm2\",version=\"v1\"}");
        let running = query("inferd_requests_running{model=\"smollm2\"}");
        if !ttft.is_empty() && !running.is_empty() {
            break (ttft, running);
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "Prometheus never saw the series (ttft {ttft:?}, running {running:?})");
        std::thread::sleep(Duration::from_millis(500));
    };
    let count: f64 = ttft[0]["value"][1].as_str().and_then(|v| v.parse().ok()).expect("value");
    assert!(count >= 3.0, "three requests had a first token: {ttft:?}");
    assert_eq!(running[0]["value"][1], "0", "idle after the traffic: {running:?}");
    let buckets = query("inferd_time_to_first_token_seconds_bucket{model=\"smollm2\"}");
    assert!(buckets.len() > 3, "the TTFT histogram has buckets: {buckets:?}");
}

#[test]
fn sigterm_drains_running_requests_then_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProcess::start(dir.path(), &one_model("shutdown_grace_secs = 60", ""), READY);
    let base = s.base.clone();
    // A stream long enough to be running when SIGTERM arrives.
    let (tx, rx) = std::sync::mpsc::channel();
    let streamer = std::thread::spawn({
        let base = base.clone();
        move || {
            let body = json!({"model": MODEL, "prompt": "Count slowly:", "max_tokens": 48, "ignore_eos": true, "stream": true});
            let r = client().post(format!("{base}/v1/completions")).json(&body).send().expect("stream");
            assert_eq!(r.status(), 200);
            let mut lines = BufReader::new(r).lines();
            let mut text = String::new();
            for line in lines.by_ref() {
                let line = line.expect("read");
                if line.starts_with("data: {") && text.is_empty() {
                    tx.send(()).expect("signal first chunk");
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        }
    });
    rx.recv_timeout(Duration::from_secs(120)).expect("the stream started");
    let killer = std::thread::spawn(move || s.terminate(Duration::from_secs(90)));
    // Draining: readiness 503 and new work refused with 503, at once.
    wait_for("readiness 503", || reqwest::blocking::get(format!("{base}/health/ready")).is_ok_and(|r| r.status() == 503));
    let (status, retry, text) = call(&base, "POST", "/v1/completions", None, Some(Body::Json(completion(1))));
    assert_eq!(status, 503, "{text}");
    assert!(retry.is_some(), "Retry-After on 503");
    // The running stream still finishes whole.
    let streamed = streamer.join().expect("streamer");
    assert!(streamed.contains("\"finish_reason\":\"length\"") && streamed.trim_end().ends_with("data: [DONE]"), "{streamed:.600}");
    let status = killer.join().expect("killer");
    assert_eq!(status.code(), Some(0), "exit status after the drain");
}
