//! `inferd bench` against an in-test fake OpenAI-compatible server: a tiny
//! HTTP/1.1 server on 127.0.0.1:0 that streams `max_tokens` SSE chunks with
//! small sleeps, sends a usage chunk when asked, fails one request in K when
//! told, and records every request body and connection. The runs go through
//! the same entry point as the CLI (`inferd::bench::execute`), so counts,
//! latency ordering, goodput, the JSON and the PNG plots are all checked on
//! real files and real sockets.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use inferd::bench::metrics::{percentile, Summary};
use inferd::bench::{execute, BenchArgs, BenchOutcome};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Default)]
struct FakeCfg {
    /// Sleep between content chunks.
    chunk_ms: u64,
    /// Sleep before the first chunk; odd-numbered requests use `slow_ttft_ms` when set.
    ttft_ms: u64,
    slow_ttft_ms: Option<u64>,
    /// Fail request n (0-based) with HTTP 500 when n % fail_every == fail_every - 1.
    fail_every: usize,
}

struct FakeServer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    connections: Arc<AtomicUsize>,
}

impl FakeServer {
    fn start(cfg: FakeCfg) -> FakeServer {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (b, c) = (bodies.clone(), connections.clone());
        // The server lives on its own runtime in its own thread, because
        // `execute` builds and blocks on a runtime of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let counter = Arc::new(AtomicUsize::new(0));
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let (b, counter) = (b.clone(), counter.clone());
                    tokio::spawn(async move {
                        let _ = serve_conn(sock, cfg, b, counter).await;
                    });
                }
            });
        });
        let addr = rx.recv().unwrap();
        FakeServer {
            addr,
            bodies,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Serve HTTP/1.1 requests on one connection until the client closes it or
/// asks for `Connection: close`.
async fn serve_conn(
    mut sock: TcpStream,
    cfg: FakeCfg,
    bodies: Arc<Mutex<Vec<Value>>>,
    counter: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 4096];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let close = head.contains("connection: close");
        while buf.len() < head_end + len {
            let mut tmp = [0u8; 4096];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        if head.starts_with("get /v1/models") {
            let text = json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            sock.write_all(resp.as_bytes()).await?;
        } else {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            bodies.lock().unwrap().push(req.clone());
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if cfg.fail_every > 0 && n % cfg.fail_every == cfg.fail_every - 1 {
                let text = r#"{"error":{"message":"injected failure"}}"#;
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                sock.write_all(resp.as_bytes()).await?;
            } else {
                stream_reply(&mut sock, &req, cfg, n).await?;
            }
        }
        if close {
            return Ok(());
        }
    }
}

async fn write_chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await
}

async fn stream_reply(
    sock: &mut TcpStream,
    req: &Value,
    cfg: FakeCfg,
    n: usize,
) -> std::io::Result<()> {
    let max_tokens = req["max_tokens"].as_u64().unwrap_or(16) as usize;
    let chat = req.get("messages").is_some();
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    let ttft = match cfg.slow_ttft_ms {
        Some(slow) if n % 2 == 1 => slow,
        _ => cfg.ttft_ms,
    };
    tokio::time::sleep(Duration::from_millis(ttft)).await;
    for i in 0..max_tokens {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.chunk_ms)).await;
        }
        let ev = if chat {
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " tok"}}]})
        } else {
            json!({"object": "text_completion", "choices": [{"index": 0, "text": " tok"}]})
        };
        write_chunk(sock, &format!("data: {ev}\n\n")).await?;
    }
    if req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
    {
        let prompt_tokens = match req.get("prompt").and_then(Value::as_str) {
            Some(p) => p.split_whitespace().count(),
            None => 7,
        };
        let ev = json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens}});
        write_chunk(sock, &format!("data: {ev}\n\n")).await?;
    }
    write_chunk(sock, "data: [DONE]\n\n").await?;
    sock.write_all(b"0\r\n\r\n").await
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn args(server: &FakeServer, out: &Path, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "bench".to_string(),
        "--base-url".into(),
        server.url(),
        "--output-dir".into(),
        out.display().to_string(),
        "--no-progress".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::try_parse_from(argv).expect("flags parse").args
}

fn assert_ordered(name: &str, s: &Summary) {
    assert!(s.count > 0, "{name}: no samples");
    assert!(s.min > 0.0, "{name}: non-positive latency {s:?}");
    assert!(s.mean > 0.0 && s.median > 0.0, "{name}: {s:?}");
    assert!(
        s.min <= s.median && s.median <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max,
        "{name}: unordered {s:?}"
    );
}

fn assert_png(path: &Path) {
    // Set INFERD_BENCH_KEEP_PLOTS=<dir> to keep the plots for a look.
    if let Some(keep) = std::env::var_os("INFERD_BENCH_KEEP_PLOTS") {
        let name = format!(
            "{}-{}",
            std::process::id(),
            path.file_name().unwrap().to_string_lossy()
        );
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(path, Path::new(&keep).join(name));
    }
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 20_000,
        "{} is suspiciously small ({} bytes)",
        path.display(),
        bytes.len()
    );
}

fn check_run_invariants(outcome: &BenchOutcome) {
    for run in &outcome.runs {
        let s = &run.stats;
        assert_eq!(s.completed + s.failed, s.sent, "counts must add up");
        assert_eq!(s.sent, run.records.len());
        assert!(s.completed > 0);
        assert!(
            s.request_throughput > 0.0
                && s.output_token_throughput > 0.0
                && s.input_token_throughput > 0.0
        );
        for (name, sum) in [
            ("ttft", &s.ttft_ms),
            ("tpot", &s.tpot_ms),
            ("itl", &s.itl_ms),
            ("e2e", &s.e2e_ms),
        ] {
            assert_ordered(name, sum);
        }
        for r in run.records.iter().filter(|r| r.ok) {
            assert!(
                r.ttft_s > 0.0 && r.ttft_s < r.e2e_s,
                "TTFT {} must be below E2E {}",
                r.ttft_s,
                r.e2e_s
            );
            assert!(r.itl_s.iter().all(|g| *g >= 0.0));
        }
    }
}

fn read_json(outcome: &BenchOutcome) -> Value {
    let text = std::fs::read_to_string(&outcome.json_path).unwrap();
    let v: Value = serde_json::from_str(&text).expect("bench.json parses");
    assert_eq!(v["schema"], "inferd-bench/1");
    for key in ["config", "runs", "plots", "sweep"] {
        assert!(v.get(key).is_some(), "bench.json lacks `{key}`");
    }
    for run in v["runs"].as_array().unwrap() {
        for key in [
            "name",
            "sent",
            "completed",
            "failed",
            "duration_s",
            "request_throughput",
            "input_token_throughput",
            "output_token_throughput",
            "total_input_tokens",
            "total_output_tokens",
        ] {
            assert!(run.get(key).is_some(), "run lacks `{key}`");
        }
        for lat in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            for stat in ["mean", "median", "p90", "p99"] {
                assert!(
                    run[lat][stat].as_f64().is_some_and(|x| x > 0.0),
                    "{lat}.{stat} missing or not positive"
                );
            }
        }
    }
    v
}

#[test]
fn percentile_matches_numpy_linear() {
    let v = [10.0, 20.0, 30.0, 40.0, 50.0];
    assert_eq!(percentile(&v, 50.0), 30.0);
    assert!((percentile(&v, 90.0) - 46.0).abs() < 1e-9);
    assert!((percentile(&v, 99.0) - 49.6).abs() < 1e-9);
    assert_eq!(percentile(&v, 0.0), 10.0);
    assert_eq!(percentile(&v, 100.0), 50.0);
    assert_eq!(percentile(&[], 50.0), 0.0);
    let s = Summary::of_seconds(&[0.003, 0.001, 0.002]);
    assert_eq!((s.count, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
}

#[test]
fn fixed_concurrency_counts_latencies_json_and_plots() {
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 2,
        ttft_ms: 3,
        fail_every: 10,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &server,
        dir.path(),
        &[
            "--concurrency",
            "4",
            "--num-requests",
            "40",
            "--input-len",
            "20..40",
            "--output-len",
            "4..8",
            "--slo",
            "e2e=10s",
        ],
    );
    let outcome = execute(a).expect("bench runs");
    check_run_invariants(&outcome);
    assert_eq!(outcome.runs.len(), 1);
    let s = &outcome.runs[0].stats;
    assert_eq!((s.sent, s.completed, s.failed), (40, 36, 4));
    assert!(s.usage_reported);
    assert_eq!(
        s.good_requests,
        Some(36),
        "every completed request meets a 10 s E2E SLO"
    );

    // ignore_eos and usage were asked for, and the fake honours max_tokens, so
    // the output tokens are exactly what was requested by completed requests.
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 40);
    assert!(bodies
        .iter()
        .all(|b| b["ignore_eos"] == true && b["stream"] == true));
    assert!(bodies
        .iter()
        .all(|b| b["stream_options"]["include_usage"] == true && b["model"] == "fake-model"));
    assert!(bodies
        .iter()
        .all(|b| (4..=8).contains(&b["max_tokens"].as_u64().unwrap())));
    let asked: usize = outcome.runs[0]
        .records
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.output_tokens)
        .sum();
    assert_eq!(s.total_output_tokens, asked);
    assert!(outcome.runs[0]
        .records
        .iter()
        .filter(|r| r.ok)
        .all(|r| (4..=8).contains(&r.output_tokens)));
    // The prompt is sized in words without a tokenizer: 20..40 of them.
    assert!(bodies
        .iter()
        .all(|b| (20..=40).contains(&b["prompt"].as_str().unwrap().split_whitespace().count())));
    // Keep-alive reuse: four workers need about four connections, not forty.
    assert!(
        server.connections.load(Ordering::SeqCst) <= 8,
        "connections were not reused"
    );

    let v = read_json(&outcome);
    assert_eq!(v["runs"][0]["completed"], 36);
    assert_eq!(
        v["config"]["model"], "fake-model",
        "model discovered from /v1/models"
    );
    assert!(v["runs"][0]["errors"][0].as_str().unwrap().contains("500"));
    assert_eq!(outcome.plots.len(), 1);
    assert_png(&dir.path().join("latency_cdf.png"));
}

#[test]
fn poisson_rate_sweep_chat_without_usage() {
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 1,
        ttft_ms: 2,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--api",
            "chat",
            "--no-stream-usage",
            "--request-rate",
            "40,80",
            "--arrival",
            "poisson",
            "--num-requests",
            "30",
            "--output-len",
            "5",
            "--seed",
            "7",
        ],
    );
    let outcome = execute(a).expect("bench runs");
    check_run_invariants(&outcome);
    assert_eq!(outcome.runs.len(), 2);
    for run in &outcome.runs {
        let s = &run.stats;
        assert_eq!((s.sent, s.completed, s.failed), (30, 30, 0));
        // Without usage every content chunk counts as a token.
        assert!(!s.usage_reported);
        assert_eq!(s.total_output_tokens, 30 * 5);
        // 30 Poisson arrivals at rate r take about 30/r seconds; far less means no pacing.
        let expected = 30.0 / s.request_rate.unwrap();
        assert!(
            s.duration_s > expected * 0.3,
            "run took {} s, expected about {expected}",
            s.duration_s
        );
    }
    let bodies = server.bodies();
    assert!(bodies
        .iter()
        .all(|b| b["messages"][0]["role"] == "user" && b.get("stream_options").is_none()));
    let v = read_json(&outcome);
    assert_eq!(v["sweep"], "request_rate");
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert_png(&dir.path().join("latency_cdf.png"));
    assert_png(&dir.path().join("sweep.png"));
}

#[test]
fn shared_prefix_groups_share_their_prefix() {
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 1,
        ttft_ms: 1,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--concurrency",
            "2",
            "--num-requests",
            "12",
            "--shared-prefix-groups",
            "3",
            "--shared-prefix-len",
            "50",
            "--input-len",
            "10",
            "--output-len",
            "2",
            "--no-plots",
            "--save-detailed",
        ],
    );
    let outcome = execute(a).expect("bench runs");
    check_run_invariants(&outcome);
    // --save-detailed: every request in the JSON, with its group.
    let reqs = outcome.json["runs"][0]["requests"].as_array().expect("runs[0].requests");
    assert_eq!(reqs.len(), 12);
    let mut per_group = [0usize; 3];
    for r in reqs {
        assert!(r["ok"].as_bool().unwrap() && r["ttft_s"].as_f64().unwrap() > 0.0 && r["e2e_s"].as_f64().unwrap() >= r["ttft_s"].as_f64().unwrap());
        per_group[r["group"].as_u64().expect("group") as usize] += 1;
    }
    assert_eq!(per_group, [4, 4, 4]);
    let mut by_prefix: std::collections::HashMap<String, Vec<String>> = Default::default();
    for b in server.bodies() {
        let prompt = b["prompt"].as_str().unwrap().to_string();
        let (prefix, suffix) = prompt
            .split_once("\n\n")
            .expect("prefix and question are separated");
        assert_eq!(prefix.split_whitespace().count(), 50);
        assert_eq!(suffix.split_whitespace().count(), 10);
        by_prefix
            .entry(prefix.to_string())
            .or_default()
            .push(suffix.to_string());
    }
    assert_eq!(by_prefix.len(), 3, "three groups, three distinct prefixes");
    for suffixes in by_prefix.values() {
        assert_eq!(suffixes.len(), 4);
    }
    assert!(outcome.plots.is_empty() && !dir.path().join("latency_cdf.png").exists());
}

#[test]
fn goodput_counts_requests_meeting_slo() {
    // Odd requests take 200 ms to the first token, even ones 2 ms: with one
    // request at a time exactly half miss a 100 ms TTFT SLO (wide margins so a loaded CI machine cannot blur them).
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 1,
        ttft_ms: 2,
        slow_ttft_ms: Some(200),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--concurrency",
            "1",
            "--num-requests",
            "16",
            "--output-len",
            "3",
            "--slo",
            "ttft=100ms",
            "--no-plots",
        ],
    );
    let outcome = execute(a).expect("bench runs");
    check_run_invariants(&outcome);
    let s = &outcome.runs[0].stats;
    assert_eq!(s.good_requests, Some(8));
    let ratio = s.goodput.unwrap() / s.request_throughput;
    assert!((ratio - 0.5).abs() < 1e-9, "goodput ratio {ratio}");
    assert!(s.ttft_ms.p90 > 150.0 && s.ttft_ms.min < 100.0);
}

#[test]
fn one_connection_per_request_dials_every_time() {
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 1,
        ttft_ms: 1,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--concurrency",
            "2",
            "--num-requests",
            "10",
            "--output-len",
            "2",
            "--one-connection-per-request",
            "--no-plots",
        ],
    );
    let outcome = execute(a).expect("bench runs");
    check_run_invariants(&outcome);
    assert_eq!(outcome.runs[0].stats.completed, 10);
    assert_eq!(server.connections.load(Ordering::SeqCst), 10);
}

#[test]
fn dataset_prompts_are_sent_as_chat() {
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 1,
        ttft_ms: 1,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts.jsonl");
    let mut f = std::fs::File::create(&data).unwrap();
    writeln!(f, r#"{{"messages": [{{"role": "system", "content": "be brief"}}, {{"role": "user", "content": "hi there"}}], "max_tokens": 3}}"#).unwrap();
    writeln!(f, r#"{{"conversations": [{{"from": "human", "value": "what is rust"}}, {{"from": "gpt", "value": "a language"}}]}}"#).unwrap();
    writeln!(f, r#"{{"prompt": "plain text prompt"}}"#).unwrap();
    drop(f);
    let a = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--api",
            "chat",
            "--dataset",
            data.to_str().unwrap(),
            "--num-requests",
            "6",
            "--output-len",
            "4",
            "--no-plots",
        ],
    );
    let outcome = execute(a).expect("bench runs");
    check_run_invariants(&outcome);
    assert_eq!(outcome.runs[0].stats.completed, 6);
    let bodies = server.bodies();
    let firsts: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["messages"][0]["content"] == "be brief")
        .collect();
    assert_eq!(firsts.len(), 2);
    assert!(firsts
        .iter()
        .all(|b| b["max_tokens"] == 3 && b["messages"][1]["content"] == "hi there"));
    // The recorded assistant reply is not sent: the server is asked to write it.
    let sharegpt: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["messages"][0]["content"] == "what is rust")
        .collect();
    assert_eq!(sharegpt.len(), 2);
    assert!(sharegpt
        .iter()
        .all(|b| b["messages"].as_array().unwrap().len() == 1 && b["max_tokens"] == 4));
}

#[test]
fn bad_flags_are_errors_not_panics() {
    let server = FakeServer::start(FakeCfg::default());
    let dir = tempfile::tempdir().unwrap();
    let both = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--concurrency",
            "1,2",
            "--request-rate",
            "1,2",
        ],
    );
    assert!(execute(both).is_err());
    let missing = args(
        &server,
        dir.path(),
        &["--model", "m", "--dataset", "/nonexistent/prompts.jsonl"],
    );
    assert!(execute(missing).is_err());
    let mut argv = vec!["bench", "--slo", "latency=3"];
    assert!(Cli::try_parse_from(&argv).is_err());
    argv = vec!["bench", "--input-len", "9..3"];
    assert!(Cli::try_parse_from(&argv).is_err());
}

#[test]
fn tokenizer_sizes_prompts_in_real_tokens() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let server = FakeServer::start(FakeCfg {
        chunk_ms: 1,
        ttft_ms: 1,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &server,
        dir.path(),
        &[
            "--model",
            "m",
            "--tokenizer",
            gguf.to_str().unwrap(),
            "--concurrency",
            "4",
            "--num-requests",
            "8",
            "--input-len",
            "64",
            "--output-len",
            "2",
            "--no-stream-usage",
            "--no-plots",
        ],
    );
    let outcome = execute(a).expect("bench runs (needs the SmolLM2 GGUF from `make setup`)");
    check_run_invariants(&outcome);
    let tok = inferd::model::source::open(&gguf).unwrap().tokenizer;
    for b in server.bodies() {
        let n = tok
            .encode(b["prompt"].as_str().unwrap(), false)
            .unwrap()
            .len();
        // Cutting at 64 ids and decoding can merge or split one token at the cut.
        assert!(
            (63..=65).contains(&n),
            "prompt re-encodes to {n} tokens, asked 64"
        );
    }
    assert_eq!(outcome.runs[0].stats.total_input_tokens, 8 * 64);
}
