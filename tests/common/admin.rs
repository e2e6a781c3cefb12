//! Helpers of the model-management tests (tests/admin.rs): the two-version
//! SmolLM2 config, admin calls, one-token completions and streamed chats
//! that report the version that served them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::server::{smollm2_gguf, ServerProcess};

pub const MODEL: &str = "smollm2";
pub const READY: Duration = Duration::from_secs(300);
pub const PATIENCE: Duration = Duration::from_secs(240);
/// Concurrent clients of the canary test: a step costs about the same for
/// 4 or 40 one-token requests on this CPU, so big batches keep it short.
pub const WORKERS: usize = 48;

pub fn v2_folder() -> PathBuf {
    let p = super::root().join("weights/fixtures/smollm2_v2");
    assert!(
        p.join("model.safetensors").exists(),
        "missing {} — run `make setup`",
        p.display()
    );
    p
}

/// Both versions, `max_num_seqs` running sequences per step.
pub fn config(max_num_seqs: usize) -> String {
    let version = |source: &Path| {
        format!(
            "source = \"{}\"\ndtype = \"f32\"\nkv_cache_mb = 64\nmax_num_seqs = {max_num_seqs}\nmax_batched_tokens = 512\nmax_context = 512\nmax_queue_requests = 1024\n",
            source.display()
        )
    };
    format!(
        "[server]\nport = 0\ndata_dir = \"data\"\n\n[models.{MODEL}]\nactive = \"v1\"\n\n[models.{MODEL}.versions.v1]\n{}\n[models.{MODEL}.versions.v2]\n{}",
        version(&smollm2_gguf()),
        version(&v2_folder())
    )
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// (status, body) of an admin call.
pub fn admin(s: &ServerProcess, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/admin/models{path}", s.base);
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().expect("admin call");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

pub fn model_entry(s: &ServerProcess, model: &str) -> Value {
    let (status, v) = admin(s, "GET", "", None);
    assert_eq!(status, 200, "{v}");
    let models = v["models"].as_array().expect("models").clone();
    models
        .into_iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("{model} not listed: {v}"))
}

pub fn version_entry(m: &Value, version: &str) -> Value {
    let versions = m["versions"].as_array().expect("versions");
    versions
        .iter()
        .find(|v| v["version"] == version)
        .cloned()
        .unwrap_or(Value::Null)
}

/// One short completion; the serving version from the header.
pub fn complete(
    c: &Client,
    base: &str,
    model: &str,
    session: Option<&str>,
) -> Result<String, String> {
    let mut req = c
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}));
    if let Some(id) = session {
        req = req.header("x-session-id", id);
    }
    let r = req.send().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let version = r
        .headers()
        .get("x-inferd-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.text().map_err(|e| e.to_string())?;
    if status != 200 || version.is_empty() {
        return Err(format!("{status} (version {version:?}): {body}"));
    }
    Ok(version)
}

/// One streamed chat; Ok(version) if the header and every chunk's
/// `system_fingerprint` name the same version and the stream ends in [DONE].
pub fn stream_chat(c: &Client, base: &str, i: usize) -> Result<String, String> {
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 6, "temperature": 0,
        "messages": [{"role": "user", "content": format!("Count to {}.", i % 7)}]});
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let header = r
        .headers()
        .get("x-inferd-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().map_err(|e| format!("reading the stream: {e}"))?;
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    if events.last() != Some(&"data: [DONE]") {
        return Err(format!("no [DONE]: {text}"));
    }
    let want = format!("inferd-{header}");
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e.trim_start_matches("data: "))
            .map_err(|_| format!("bad event {e}"))?;
        if chunk.get("error").is_some() {
            return Err(format!("error event: {e}"));
        }
        if chunk["system_fingerprint"] != want.as_str() {
            return Err(format!(
                "chunk of another version than the header's {header}: {e}"
            ));
        }
    }
    Ok(header)
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < PATIENCE,
            "never happened within {PATIENCE:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn unloaded(s: &ServerProcess, version: &str) -> bool {
    let v = version_entry(&model_entry(s, MODEL), version);
    v["state"] == "unloaded" && v["memory_bytes"] == 0 && v["replicas"] == json!([])
}

/// config/multi-model.toml with its paths made absolute and its data dir
/// in the test's folder.
pub fn multi_model_config() -> String {
    let text =
        std::fs::read_to_string(super::root().join("config/multi-model.toml")).expect("config");
    let weights = format!("\"{}/weights/", super::root().display());
    text.replace("\"../weights/", &weights)
        .replace("data_dir = \"../data/multi-model\"", "data_dir = \"data\"")
        .replace("port = 8080", "port = 0")
}
