//! Black-box tests of the HTTP API: the real `inferd serve` binary on a free
//! port with SmolLM2 (bf16, CPU), driven by real clients — the `openai` and
//! `text-generation` Python packages and a WebSocket client (from
//! `$INFERD_CACHE/clients-venv`, made by `make setup`) — plus Rust-side
//! checks of every validation error with its status and body, of the
//! headers, of overload (429 + Retry-After) and of a client disconnecting
//! mid-stream (the engine returns to idle with every KV block free).
//!
//! One server serves every test of this file; it exits when this process
//! does (`--exit-on-stdin-eof`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MODEL: &str = "smollm2";
const MAX_CONTEXT: usize = 1024;
const MAX_BODY: usize = 64 * 1024;
const MAX_NUM_SEQS: usize = 4;
const MAX_QUEUE: usize = 4;

struct Server {
    base: String,
    addr: String,
    /// Kept so the child is not reaped early; it exits with our stdin pipe.
    _child: Child,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config_text() -> String {
    let gguf = root().join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "missing {} — run `make setup`",
        gguf.display()
    );
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
max_body_bytes = {MAX_BODY}
data_dir = "data"

[models.{MODEL}]
active = "v1"

[models.{MODEL}.versions.v1]
source = "{}"
dtype = "bf16"
kv_cache_mb = 64
max_num_seqs = {MAX_NUM_SEQS}
max_batched_tokens = 512
max_context = {MAX_CONTEXT}
max_queue_requests = {MAX_QUEUE}
prefix_caching = false
"#,
        gguf.display()
    )
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("inferd-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("api.toml");
        std::fs::write(&cfg, config_text()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
            .args([
                "serve",
                "--config",
                cfg.to_str().unwrap(),
                "--port",
                "0",
                "--exit-on-stdin-eof",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
            .spawn()
            .expect("spawn inferd serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("server printed nothing").unwrap();
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        let addr = base.trim_start_matches("http://").to_string();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = reqwest::blocking::get(format!("{base}/ready")) {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "server not ready after 180 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Server {
            base,
            addr,
            _child: child,
        }
    })
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn post(path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(format!("{}{path}", server().base))
        .json(body)
        .send()
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn python() -> PathBuf {
    let cache = std::env::var("INFERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/inferd"));
    let py = cache.join("clients-venv/bin/python");
    assert!(py.exists(), "missing {} — run `make setup`", py.display());
    py
}

fn run_client(script: &str, args: &[&str]) {
    let status = Command::new(python())
        .arg(root().join("tests/clients").join(script))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{script} failed: {status}");
}

/// Asserts an OpenAI-shaped error.
fn openai_error(
    path: &str,
    body: Value,
    status: u16,
    param: Option<&str>,
    needles: &[&str],
) -> Value {
    let (s, _, v) = post(path, &body);
    assert_eq!(s, status, "{body} -> {v}");
    let e = &v["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "error without {key}: {v}");
    }
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
    let msg = e["message"].as_str().unwrap();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
    }
    v
}

fn stats() -> Value {
    reqwest::blocking::get(format!("{}/stats", server().base))
        .unwrap()
        .json()
        .unwrap()
}

/// Waits until no sequence runs or waits and every KV block is free.
fn wait_idle() -> Value {
    let t0 = Instant::now();
    loop {
        let s = stats();
        let idle =
            s["replicas"].as_array().unwrap().iter().all(|r| {
                r["running"] == 0 && r["waiting"] == 0 && r["free_blocks"] == r["num_blocks"]
            });
        if idle {
            return s;
        }
        assert!(
            // Generous: the other tests of this file share the server and
            // both cores (the Python clients, the overload burst).
            t0.elapsed() < Duration::from_secs(90),
            "engine not idle after 90 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn openai_python_client() {
    run_client("openai_client.py", &[&server().base, MODEL]);
}

#[test]
fn tgi_python_client() {
    run_client("tgi_client.py", &[&server().base]);
}

#[test]
fn websocket_client() {
    run_client("ws_client.py", &[&server().base, MODEL]);
    wait_idle();
}

#[test]
fn validation_errors_openai() {
    let chat = |extra: Value| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let v = openai_error(
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        404,
        Some("model"),
        &["nope"],
    );
    assert_eq!(v["error"]["code"], "model_not_found");
    openai_error(
        "/v1/chat/completions",
        chat(json!({"temperature": 3})),
        400,
        Some("temperature"),
        &["[0, 2]", "3"],
    );
    openai_error(
        "/v1/chat/completions",
        chat(json!({"top_p": 1.5})),
        400,
        Some("top_p"),
        &["(0, 1]"],
    );
    openai_error(
        "/v1/chat/completions",
        chat(json!({"n": 50})),
        400,
        Some("n"),
        &["[1, 16]"],
    );
    openai_error(
        "/v1/chat/completions",
        chat(json!({"max_tokens": "many"})),
        400,
        Some("max_tokens"),
        &["max_tokens"],
    );
    openai_error(
        "/v1/chat/completions",
        chat(json!({"top_logprobs": 30, "logprobs": true})),
        400,
        Some("top_logprobs"),
        &["[0, 20]"],
    );
    openai_error(
        "/v1/chat/completions",
        chat(json!({"presence_penalty": -3})),
        400,
        Some("presence_penalty"),
        &["[-2, 2]"],
    );
    openai_error(
        "/v1/chat/completions",
        chat(json!({"logit_bias": {"99999": 1}})),
        400,
        Some("logit_bias token id"),
        &["vocabulary"],
    );
    openai_error(
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": []}),
        400,
        Some("messages"),
        &["at least 1"],
    );
    openai_error(
        "/v1/completions",
        json!({"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
        400,
        Some("stop"),
        &["at most 4"],
    );
    openai_error(
        "/v1/completions",
        json!({"model": MODEL, "prompt": "hi", "max_tokens": MAX_CONTEXT + 1}),
        400,
        Some("max_tokens"),
        &[&MAX_CONTEXT.to_string()],
    );
    // Prompt + max_tokens beyond the context: both numbers and the limit.
    let prompt: Vec<u32> = (0..900).map(|i| 100 + i % 1000).collect();
    let v = openai_error(
        "/v1/completions",
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 200}),
        400,
        Some("prompt"),
        &["900", "200", &MAX_CONTEXT.to_string()],
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // Not JSON at all.
    let r = client()
        .post(format!("{}/v1/completions", server().base))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Too large: 413 in OpenAI's shape.
    let big = "word ".repeat(MAX_BODY / 4);
    let (s, _, v) = post("/v1/completions", &json!({"model": MODEL, "prompt": big}));
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&MAX_BODY.to_string()),
        "{v}"
    );
    // Unknown route: a JSON 404.
    let (s, _, v) = post("/v1/nothing", &json!({}));
    assert_eq!(s, 404);
    assert!(v["error"]["message"].is_string());
}

#[test]
fn validation_errors_tgi() {
    let cases = [
        (
            json!({"inputs": "hi", "parameters": {"temperature": 0}}),
            "temperature",
        ),
        (json!({"inputs": "hi", "parameters": {"top_k": 0}}), "top_k"),
        (
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 100000}}),
            "max_new_tokens",
        ),
        (json!({"inputs": "", "parameters": {}}), "inputs"),
        (
            json!({"inputs": "hi", "parameters": {"max_new_tokens": "x"}}),
            "max_new_tokens",
        ),
    ];
    for (body, field) in cases {
        for path in ["/generate", "/generate_stream"] {
            let (s, _, v) = post(path, &body);
            assert_eq!(s, 422, "{path} {body} -> {v}");
            assert_eq!(v["error_type"], "validation", "{v}");
            assert!(v["error"].as_str().unwrap().contains(field), "{v}");
        }
    }
    let (s, _, v) = post("/generate", &json!({"inputs": "hi", "model": "nope"}));
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].is_string() && v["error_type"].is_string(), "{v}");
}

#[test]
fn headers_and_models() {
    let r = client()
        .post(format!("{}/v1/completions", server().base))
        .header("x-request-id", "my-id-123")
        .json(&json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "my-id-123");
    assert_eq!(r.headers()["x-inferd-model-version"], "v1");
    let r = client()
        .get(format!("{}/v1/models", server().base))
        .send()
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(generated.len() >= 16, "{generated}");
    let v: Value = r.json().unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["version"], "v1");
    let r = client()
        .get(format!("{}/v1/models/{MODEL}", server().base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-inferd-model-version"], "v1");
    let r = client()
        .get(format!("{}/v1/models/nope", server().base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn overload_is_429_with_retry_after() {
    wait_idle();
    let base = server().base.clone();
    let body = json!({"model": MODEL, "prompt": "Tell me a story", "max_tokens": 48, "ignore_eos": true, "temperature": 0});
    let threads: Vec<_> = (0..4 * (MAX_NUM_SEQS + MAX_QUEUE))
        .map(|_| {
            let (base, body) = (base.clone(), body.clone());
            std::thread::spawn(move || {
                let r = client()
                    .post(format!("{base}/v1/completions"))
                    .json(&body)
                    .send()
                    .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry, r.json::<Value>().unwrap())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    let served = results.iter().filter(|r| r.0 == 200).count();
    assert!(
        !refused.is_empty(),
        "no 429 among {} concurrent requests",
        results.len()
    );
    assert!(served >= MAX_NUM_SEQS, "only {served} served");
    assert_eq!(
        served + refused.len(),
        results.len(),
        "other statuses: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for (_, retry, v) in refused {
        let secs: u64 = retry
            .as_deref()
            .expect("429 without Retry-After")
            .parse()
            .unwrap();
        assert!(secs >= 1);
        assert_eq!(v["error"]["code"], "overloaded", "{v}");
    }
    wait_idle();
}

#[test]
fn disconnect_mid_stream_frees_the_sequence() {
    wait_idle();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 800, "ignore_eos": true, "stream": true}).to_string();
    let mut sock = TcpStream::connect(&server().addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", server().addr, body.len()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < 8 {
        let n = sock.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let busy = stats();
    assert!(
        busy["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["running"].as_u64().unwrap() > 0),
        "nothing running mid-stream: {busy}"
    );
    drop(sock);
    let t0 = Instant::now();
    let idle = wait_idle();
    eprintln!(
        "idle {:.2}s after the disconnect: {idle}",
        t0.elapsed().as_secs_f64()
    );
}
