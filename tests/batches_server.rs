//! Batch jobs through the real server with SmolLM2: a 50-request job
//! completes with 50 results, and a job interrupted by a server crash
//! (SIGKILL) finishes after a restart on the same data directory with every
//! custom_id exactly once.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{smollm2_gguf, ServerProcess};
use serde_json::{json, Value};

const LINES: usize = 50;

fn config(data_dir: &Path) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
data_dir = "{}"
batch_concurrency = 8

[models.smollm2]
active = "v1"

[models.smollm2.versions.v1]
source = "{}"
dtype = "bf16"
kv_cache_mb = 64
max_num_seqs = 16
max_context = 1024
"#,
        data_dir.display(),
        smollm2_gguf().display()
    )
}

fn jsonl(tag: &str, max_tokens: usize) -> String {
    (0..LINES)
        .map(|i| {
            let body = json!({"model": "smollm2", "max_tokens": max_tokens, "temperature": 0,
                              "messages": [{"role": "user", "content": format!("Count to {}.", i % 7 + 2)}]});
            json!({"custom_id": format!("{tag}-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn submit(base: &str, body: String) -> String {
    let r = reqwest::blocking::Client::new().post(format!("{base}/v1/batches")).body(body).send().expect("submit");
    assert_eq!(r.status().as_u16(), 200, "submit: {}", r.text().unwrap_or_default());
    let job: Value = r.json().expect("job json");
    job["id"].as_str().expect("job id").to_string()
}

fn job(base: &str, id: &str) -> Value {
    reqwest::blocking::get(format!("{base}/v1/batches/{id}")).expect("get job").json().expect("job json")
}

fn wait_done(base: &str, id: &str, within: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let j = job(base, id);
        if j["status"] == "completed" {
            return j;
        }
        assert!(t0.elapsed() < within, "job not done in {within:?}: {j}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// custom_id -> how many result lines carry it; every result must be a 200.
fn results(base: &str, id: &str) -> HashMap<String, usize> {
    let text = reqwest::blocking::get(format!("{base}/v1/batches/{id}/results")).expect("results").text().expect("text");
    let mut seen = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("result line json");
        assert_eq!(v["response"]["status_code"], 200, "failed line: {v}");
        let content = &v["response"]["body"]["choices"][0]["message"]["content"];
        assert!(content.is_string(), "no content in {v}");
        *seen.entry(v["custom_id"].as_str().expect("custom_id").to_string()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn batch_job_of_50_completes_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    // A whole job.
    let server = ServerProcess::start(dir.path(), &config(&data), Duration::from_secs(180));
    let id = submit(&server.base, jsonl("a", 4));
    let done = wait_done(&server.base, &id, Duration::from_secs(300));
    assert_eq!(done["request_counts"]["total"], LINES);
    assert_eq!(done["request_counts"]["completed"], LINES);
    let seen = results(&server.base, &id);
    assert_eq!(seen.len(), LINES);
    assert!(seen.values().all(|&n| n == 1), "a custom_id repeated: {seen:?}");

    // A job killed midway resumes after a restart.
    let id = submit(&server.base, jsonl("b", 16));
    let t0 = Instant::now();
    loop {
        let done = job(&server.base, &id)["request_counts"]["completed"].as_u64().unwrap_or(0);
        if done >= 5 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "job made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();
    let server = ServerProcess::start(dir.path(), &config(&data), Duration::from_secs(180));
    let before = job(&server.base, &id)["request_counts"]["completed"].as_u64().unwrap_or(0);
    println!("after restart the job had {before}/{LINES} results; resuming");
    assert!(before >= 5 && (before as usize) < LINES, "the restart should land mid-job ({before})");
    let done = wait_done(&server.base, &id, Duration::from_secs(300));
    assert_eq!(done["request_counts"]["completed"], LINES);
    let seen = results(&server.base, &id);
    assert_eq!(seen.len(), LINES, "missing custom_ids");
    assert!(seen.values().all(|&n| n == 1), "a custom_id repeated: {seen:?}");
    for i in 0..LINES {
        assert!(seen.contains_key(&format!("b-{i}")), "b-{i} missing");
    }
}
