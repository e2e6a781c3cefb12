//! The compose stack's very nginx.conf and prometheus.yml, run with Debian's
//! nginx and prometheus (installed by scripts/setup-system.sh) in front of
//! two real `inferd serve` processes (SmolLM2 on CPU) on loopback ports:
//! - requests without a session are balanced across both replicas;
//! - requests with the same `x-session-id` always reach the same replica;
//! - SSE and WebSocket streams pass through nginx token by token;
//! - Prometheus shows both targets up, with the inferd metrics of each;
//! - killing one replica mid-load loses only that replica's in-flight
//!   requests, and the other keeps serving.
//!
//! The only changes to the committed files (see `for_test`): the upstream
//! and scrape targets `inferd-N:8080` become `127.0.0.1:<port>`, and nginx's
//! `listen 8080;` becomes `listen 127.0.0.1:<port>;` — every other line is
//! asserted identical. Which replica served a request comes from nginx's own
//! JSON access log (stdout), matched by the `x-request-id` the test sends.
//!
//! Every wait is bounded; every child process is killed on drop (nginx and
//! prometheus also run under `timeout`, so they cannot outlive a killed test
//! by more than STACK_TIMEOUT).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MODEL: &str = "smollm2";
/// The replica port of the committed files (compose: `inferd-N:8080`).
const COMPOSE_PORT: u16 = 8080;
const REPLICAS: [&str; 2] = ["inferd-1", "inferd-2"];
/// Upper bound on the life of the nginx / prometheus children.
const STACK_TIMEOUT_S: u64 = 900;
const READY_TIMEOUT: Duration = Duration::from_secs(240);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().unwrap()
}

/// A child process killed (TERM, then KILL) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("[deploy_live] {} ignored SIGTERM; killing", self.name);
        self.kill_hard();
    }
}

fn find_bin(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(PathBuf::from).chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found: run scripts/setup-system.sh (or `make setup`), which installs nginx and prometheus");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_status(url: &str) -> Option<u16> {
    client().get(url).timeout(Duration::from_secs(5)).send().ok().map(|r| r.status().as_u16())
}

// ---- the committed files, minimally rewritten ---------------------------------

/// `text` with each `inferd-N:8080` replaced by `replicas[N]` and, if given,
/// `listen 8080;` by `listen <listen>;`. Asserts that exactly the expected
/// number of lines changed and every other line is identical.
fn for_test(file: &str, text: &str, replicas: &BTreeMap<&str, String>, listen: Option<&str>, per_replica: usize) -> String {
    let mut out = Vec::new();
    let mut changed = 0;
    for line in text.lines() {
        let mut l = line.to_string();
        for (name, addr) in replicas {
            l = l.replace(&format!("{name}:{COMPOSE_PORT}"), addr);
        }
        if let Some(addr) = listen {
            if l.trim() == format!("listen {COMPOSE_PORT};") {
                l = l.replace(&format!("listen {COMPOSE_PORT};"), &format!("listen {addr};"));
            }
        }
        if l != line {
            changed += 1;
        }
        out.push(l);
    }
    let want = per_replica * replicas.len() + usize::from(listen.is_some());
    assert_eq!(changed, want, "{file}: the test rewrites exactly {want} lines (upstream addresses, listen), but {changed} changed");
    for (a, b) in text.lines().zip(&out) {
        let is_addr = REPLICAS.iter().any(|r| a.contains(&format!("{r}:{COMPOSE_PORT}"))) || a.trim() == format!("listen {COMPOSE_PORT};");
        assert!(a == b || is_addr, "{file}: line changed beyond the documented substitution: {a:?}");
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

// ---- the processes ---------------------------------------------------------------

struct Replica {
    name: &'static str,
    addr: String,
    proc: Proc,
}

fn replica_config(dir: &Path, name: &str) -> PathBuf {
    let gguf = root().join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "missing {} — run `make setup`", gguf.display());
    let text = format!(
        r#"[server]
host = "127.0.0.1"
port = 0
data_dir = "{}"

[models.{MODEL}]
active = "v1"

[models.{MODEL}.versions.v1]
source = "{}"
dtype = "bf16"
kv_cache_mb = 64
max_num_seqs = 8
max_batched_tokens = 512
max_context = 1024
max_queue_requests = 64
prefix_caching = true
"#,
        dir.join(format!("{name}-data")).display(),
        gguf.display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn start_replica(dir: &Path, name: &'static str) -> Replica {
    let cfg = replica_config(dir, name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
        .spawn()
        .expect("spawn inferd serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap_or_else(|| panic!("{name}: inferd printed nothing")).unwrap();
    let addr = line.strip_prefix("listening on http://").unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}")).trim().to_string();
    std::thread::spawn(move || for _ in lines {});
    Replica { name, addr, proc: Proc { name: name.to_string(), child } }
}

fn wait_ready(r: &mut Replica) {
    let url = format!("http://{}/health/ready", r.addr);
    let t0 = Instant::now();
    loop {
        if let Some(st) = r.proc.exited() {
            panic!("{} exited while loading: {st}", r.name);
        }
        match get_status(&url) {
            Some(200) => return,
            Some(404) => panic!("{}: GET /health/ready is 404 — the server lacks the readiness route the deployment probes", r.name),
            _ => {}
        }
        assert!(t0.elapsed() < READY_TIMEOUT, "{} not ready after {READY_TIMEOUT:?}", r.name);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// nginx's JSON access log lines, read from its stdout.
type Log = Arc<Mutex<Vec<Value>>>;

struct Nginx {
    base: String,
    log: Log,
    _proc: Proc,
}

fn start_nginx(dir: &Path, replicas: &BTreeMap<&str, String>) -> Nginx {
    let committed = read("deploy/nginx/nginx.conf");
    let bin = find_bin("nginx");
    for attempt in 0..3 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let conf = for_test("deploy/nginx/nginx.conf", &committed, replicas, Some(&listen), 2);
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let globals = format!("daemon off; pid {};", dir.join("nginx.pid").display());
        let mut child = Command::new("timeout")
            .arg(STACK_TIMEOUT_S.to_string())
            .arg(&bin)
            .args(["-c", path.to_str().unwrap(), "-p", dir.to_str().unwrap(), "-g", &globals])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
            .spawn()
            .expect("spawn nginx");
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => eprintln!("[nginx] {line}"),
                }
            }
        });
        let mut proc = Proc { name: "nginx".into(), child };
        let base = format!("http://{listen}");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if proc.exited().is_some() {
                break;
            }
            if get_status(&format!("{base}/nginx-health")) == Some(200) {
                return Nginx { base, log, _proc: proc };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("[deploy_live] nginx did not come up on {listen} (attempt {attempt})");
    }
    panic!("nginx did not start (3 attempts)");
}

impl Nginx {
    /// The log line of request `id`, waiting up to 10 s for it.
    fn entry(&self, id: &str) -> Option<Value> {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.log.lock().unwrap().iter().find(|v| v["request_id"] == id) {
                return Some(v.clone());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The replica address that finally answered request `id`.
    fn served_by(&self, id: &str) -> String {
        let e = self.entry(id).unwrap_or_else(|| panic!("no nginx log line for request {id}"));
        last_upstream(&e)
    }
}

/// The last address in `$upstream_addr` ("a, b" after a retry).
fn last_upstream(e: &Value) -> String {
    e["upstream"].as_str().unwrap_or("").rsplit(", ").next().unwrap().trim().to_string()
}

struct Prometheus {
    base: String,
    _proc: Proc,
}

fn start_prometheus(dir: &Path, replicas: &BTreeMap<&str, String>) -> Prometheus {
    let committed = read("deploy/prometheus/prometheus.yml");
    let conf = for_test("deploy/prometheus/prometheus.yml", &committed, replicas, None, 1);
    std::fs::write(dir.join("prometheus.yml"), conf).unwrap();
    // Rule files are copied verbatim (relative to the config file).
    std::fs::write(dir.join("alerts.yml"), read("deploy/prometheus/alerts.yml")).unwrap();
    let bin = find_bin("prometheus");
    let port = free_port();
    let child = Command::new("timeout")
        .arg(STACK_TIMEOUT_S.to_string())
        .arg(&bin)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
        .spawn()
        .expect("spawn prometheus");
    let mut proc = Proc { name: "prometheus".into(), child };
    let base = format!("http://127.0.0.1:{port}");
    wait_for("prometheus /-/ready", Duration::from_secs(60), || {
        assert!(proc.exited().is_none(), "prometheus exited (bad config?)");
        get_status(&format!("{base}/-/ready")) == Some(200)
    });
    Prometheus { base, _proc: proc }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

impl Prometheus {
    fn api(&self, path: &str) -> Value {
        let v: Value = client().get(format!("{}{path}", self.base)).send().unwrap().json().unwrap();
        assert_eq!(v["status"], "success", "prometheus {path}: {v}");
        v["data"].clone()
    }

    fn query(&self, q: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", urlencode(q)))["result"].as_array().unwrap().clone()
    }
}

// ---- clients ---------------------------------------------------------------------

fn completion(base: &str, id: &str, session: Option<&str>, max_tokens: u32) -> Result<u16, String> {
    let mut rb = client()
        .post(format!("{base}/v1/completions"))
        .header("x-request-id", id)
        .json(&json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true}));
    if let Some(s) = session {
        rb = rb.header("x-session-id", s);
    }
    match rb.send() {
        Ok(r) => {
            let st = r.status().as_u16();
            // A response cut mid-body counts as lost.
            r.bytes().map_err(|e| format!("{id}: body: {e}"))?;
            Ok(st)
        }
        Err(e) => Err(format!("{id}: {e}")),
    }
}

/// Arrival instants, grouped: events closer than `gap` count as one arrival.
fn arrival_groups(times: &[Instant], gap: Duration) -> usize {
    let mut groups = 0;
    let mut last: Option<Instant> = None;
    for &t in times {
        if last.is_none_or(|l| t.duration_since(l) > gap) {
            groups += 1;
        }
        last = Some(t);
    }
    groups
}

/// Asserts `times` (one per token) arrived spread out, not in one burst.
fn assert_incremental(what: &str, times: &[Instant]) {
    let n = times.len();
    assert!(n >= 10, "{what}: only {n} token events");
    let groups = arrival_groups(times, Duration::from_millis(3));
    let span = times[n - 1].duration_since(times[0]);
    eprintln!("[deploy_live] {what}: {n} token events in {groups} separate arrivals over {span:?}");
    assert!(groups * 2 >= n, "{what}: {n} tokens arrived in only {groups} bursts (buffered, not token by token)");
    assert!(span >= Duration::from_millis(50), "{what}: all tokens within {span:?}");
}

/// SSE through nginx: the arrival time of each `data:` event with a token.
fn sse_token_times(base: &str) -> Vec<Instant> {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Count from one to thirty in words."}],
                      "max_tokens": 24, "temperature": 0, "ignore_eos": true, "stream": true});
    let mut r = client().post(format!("{base}/v1/chat/completions")).header("x-request-id", "sse-1").json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let (mut buf, mut pending, mut times) = ([0u8; 4096], Vec::<u8>::new(), Vec::new());
    let mut done = false;
    let t0 = Instant::now();
    while !done && t0.elapsed() < Duration::from_secs(120) {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let now = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = pending.drain(..i + 2).collect();
            let ev = String::from_utf8_lossy(&ev);
            let data = ev.trim().strip_prefix("data:").map(str::trim).unwrap_or("");
            if data == "[DONE]" {
                done = true;
            } else if let Ok(v) = serde_json::from_str::<Value>(data) {
                if v["choices"][0]["delta"]["content"].is_string() {
                    times.push(now);
                }
            }
        }
    }
    assert!(done, "SSE stream did not end with [DONE]");
    times
}

// A minimal RFC 6455 client (text frames, ping/pong, close).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455 section 1.3 example (its printed accept value has a known erratum).
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn ws_connect(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nx-request-id: ws-1\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
        assert!(head.len() < 16384, "handshake response too long");
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "WebSocket upgrade refused through nginx: {head}");
    assert!(head.contains(&format!("sec-websocket-accept: {}", WS_ACCEPT.to_lowercase())), "bad accept: {head}");
    s
}

fn ws_send(s: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// The next data frame (opcode, payload); answers pings.
fn ws_recv(s: &mut TcpStream) -> (u8, Vec<u8>) {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let opcode = h[0] & 0x0f;
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut mask = None;
        if h[1] & 0x80 != 0 {
            let mut m = [0u8; 4];
            s.read_exact(&mut m).unwrap();
            mask = Some(m);
        }
        let mut p = vec![0u8; len as usize];
        s.read_exact(&mut p).unwrap();
        if let Some(m) = mask {
            p.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
        }
        match opcode {
            0x9 => ws_send(s, 0xA, &p),
            0xA => {}
            _ => return (opcode, p),
        }
    }
}

fn ws_token_times(addr: &str) -> Vec<Instant> {
    let mut s = ws_connect(addr);
    let req = json!({"type": "generate", "id": "g1", "model": MODEL, "prompt": "Write a long story about a cat.", "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    ws_send(&mut s, 0x1, req.to_string().as_bytes());
    let mut times = Vec::new();
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "WebSocket generation did not finish");
        let (op, p) = ws_recv(&mut s);
        assert_eq!(op, 0x1, "unexpected WebSocket frame opcode {op}");
        let m: Value = serde_json::from_slice(&p).unwrap();
        match m["type"].as_str() {
            Some("token") => times.push(Instant::now()),
            Some("done") => {
                assert_eq!(m["finish_reason"], "length", "{m}");
                break;
            }
            _ => panic!("unexpected WebSocket message {m}"),
        }
    }
    ws_send(&mut s, 0x8, &[0x03, 0xe8]);
    times
}

// ---- the test ----------------------------------------------------------------------

#[test]
fn nginx_and_prometheus_in_front_of_two_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps: Vec<Replica> = REPLICAS.iter().map(|n| start_replica(dir.path(), n)).collect();
    for r in reps.iter_mut() {
        wait_ready(r);
    }
    let addrs: BTreeMap<&str, String> = reps.iter().map(|r| (r.name, r.addr.clone())).collect();
    let all: BTreeSet<String> = addrs.values().cloned().collect();
    let nginx = start_nginx(dir.path(), &addrs);
    let prom = start_prometheus(dir.path(), &addrs);
    let base = nginx.base.clone();
    eprintln!("[deploy_live] replicas {all:?}, nginx {base}, prometheus {}", prom.base);

    // 1. Balance: 24 requests from 4 concurrent clients, no session.
    let ids: Vec<String> = (0..24).map(|i| format!("bal-{i}")).collect();
    std::thread::scope(|sc| {
        for chunk in ids.chunks(6) {
            let base = &base;
            sc.spawn(move || {
                for id in chunk {
                    assert_eq!(completion(base, id, None, 4), Ok(200), "{id}");
                }
            });
        }
    });
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        *per.entry(nginx.served_by(id)).or_default() += 1;
    }
    eprintln!("[deploy_live] balance: {per:?}");
    assert_eq!(per.keys().cloned().collect::<BTreeSet<_>>(), all, "not every replica served: {per:?}");
    assert!(per.values().all(|&n| n >= 6), "unbalanced: {per:?} (24 requests)");

    // 2. Stickiness: 16 sessions x 3 requests, interleaved over 4 clients.
    let sessions: Vec<String> = (0..16).map(|i| format!("conv-{i}")).collect();
    std::thread::scope(|sc| {
        for (t, chunk) in sessions.chunks(4).enumerate() {
            let base = &base;
            sc.spawn(move || {
                for round in 0..3 {
                    for sid in chunk {
                        let id = format!("{sid}-r{round}-t{t}");
                        assert_eq!(completion(base, &id, Some(sid), 2), Ok(200), "{id}");
                    }
                }
            });
        }
    });
    let mut home: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (t, chunk) in sessions.chunks(4).enumerate() {
        for sid in chunk {
            for round in 0..3 {
                home.entry(sid).or_default().insert(nginx.served_by(&format!("{sid}-r{round}-t{t}")));
            }
        }
    }
    for (sid, h) in &home {
        assert_eq!(h.len(), 1, "session {sid} was served by several replicas: {h:?}");
    }
    let used: BTreeSet<String> = home.values().flatten().cloned().collect();
    assert_eq!(used, all, "16 sessions all hashed to one replica: {home:?}");

    // 3. Streams through nginx, token by token.
    assert_incremental("SSE via nginx", &sse_token_times(&base));
    assert_incremental("WebSocket via nginx", &ws_token_times(base.trim_start_matches("http://")));

    // 4. Prometheus: both targets up, and each replica's inferd metrics.
    wait_for("prometheus: both inferd targets up", Duration::from_secs(60), || {
        let t = prom.api("/api/v1/targets");
        let up: BTreeSet<String> = t["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["labels"]["job"] == "inferd" && x["health"] == "up")
            .map(|x| x["labels"]["instance"].as_str().unwrap().to_string())
            .collect();
        up == all
    });
    let listed = listed_metrics();
    for addr in &all {
        let direct = exported_names(addr);
        // The always-present families: gauges, histograms, request/token counters.
        let mut core: BTreeSet<String> = BTreeSet::new();
        for (name, kind) in &listed {
            match kind.as_str() {
                "gauge" => {
                    core.insert(name.clone());
                }
                "histogram" => core.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
                _ => {}
            }
        }
        core.extend(["inferd_requests_total", "inferd_prompt_tokens_total", "inferd_generation_tokens_total"].map(String::from));
        let missing: Vec<_> = core.difference(&direct).collect();
        assert!(missing.is_empty(), "replica {addr} /metrics lacks {missing:?}");
        let unlisted: Vec<_> = direct.iter().filter(|n| !listed.contains_key(base_name(n))).collect();
        assert!(unlisted.is_empty(), "replica {addr} exports metrics deploy/metrics.txt does not list: {unlisted:?}");
        let mut names = BTreeSet::new();
        wait_for(&format!("prometheus has every inferd metric of {addr}"), Duration::from_secs(30), || {
            let q = format!("group by (__name__) ({{job=\"inferd\",instance=\"{addr}\",__name__=~\"inferd_.+\"}})");
            names = prom.query(&q).iter().map(|r| r["metric"]["__name__"].as_str().unwrap().to_string()).collect();
            direct.is_subset(&names)
        });
        let served = prom.query(&format!("sum(inferd_requests_total{{instance=\"{addr}\",model=\"{MODEL}\",version=\"v1\"}})"));
        let n: f64 = served.first().map(|r| r["value"][1].as_str().unwrap().parse().unwrap()).unwrap_or(0.0);
        assert!(n >= 1.0, "prometheus: inferd_requests_total of {addr} (model, version labels) is {n}");
        eprintln!("[deploy_live] prometheus: {addr} up, {} inferd series names, {n} requests", names.len());
    }

    // 5. Kill one replica mid-load: only its in-flight requests are lost.
    let (victim, survivor) = (reps[0].addr.clone(), reps[1].addr.clone());
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(String, Instant, Instant, Result<u16, String>)>> = Mutex::new(Vec::new());
    let grace = Duration::from_millis(300);
    let mut kill_at = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..4u32 {
            let (base, stop, results) = (&base, &stop, &results);
            sc.spawn(move || {
                for i in 0..300 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let id = format!("kill-t{t}-{i}");
                    let start = Instant::now();
                    let r = completion(base, &id, None, 6 + 2 * t);
                    results.lock().unwrap().push((id, start, Instant::now(), r));
                }
            });
        }
        // Steady load first (both replicas busy), then the crash.
        let t0 = Instant::now();
        while results.lock().unwrap().len() < 4 && t0.elapsed() < Duration::from_secs(90) {
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_at = Instant::now();
        reps[0].proc.kill_hard();
        eprintln!("[deploy_live] killed {victim} after {:?} of load", t0.elapsed());
        // Keep the load on until 6 requests started after the kill are done.
        let ka = kill_at;
        let after = || results.lock().unwrap().iter().filter(|(_, s, _, _)| *s > ka + grace).count();
        while after() < 6 && kill_at.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let results = results.into_inner().unwrap();
    let mut lost = Vec::new();
    let mut after_ok = 0;
    for (id, start, end, r) in &results {
        let ok = *r == Ok(200);
        if !ok {
            let e = nginx.entry(id).unwrap_or_else(|| panic!("failed request {id} ({r:?}) has no nginx log line"));
            assert_eq!(last_upstream(&e), victim, "request {id} failed ({r:?}) but was not on the killed replica: {e}");
            assert!(*start < kill_at + grace && *end >= kill_at, "request {id} failed ({r:?}) but was not in flight at the kill");
            lost.push(id.clone());
        } else if *start > kill_at + grace {
            after_ok += 1;
            assert_eq!(nginx.served_by(id), survivor, "request {id} after the kill was answered by {}", nginx.served_by(id));
        }
    }
    eprintln!("[deploy_live] kill: {} requests, {} lost (in flight on {victim}), {after_ok} served after the kill", results.len(), lost.len());
    assert!(!lost.is_empty(), "no request was in flight on the killed replica: the scenario was not exercised");
    assert!(lost.len() <= 4, "lost {} requests, more than the 4 that can be in flight", lost.len());
    assert!(after_ok >= 4, "only {after_ok} requests succeeded after the kill");
    drop(reps);
}

/// deploy/metrics.txt: name -> type.
fn listed_metrics() -> BTreeMap<String, String> {
    read("deploy/metrics.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

fn base_name(n: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s)).filter(|b| !b.ends_with("_total")).unwrap_or(n)
}

/// The inferd_* sample names a replica's /metrics exposes.
fn exported_names(addr: &str) -> BTreeSet<String> {
    let r = client().get(format!("http://{addr}/metrics")).send().unwrap();
    assert_eq!(r.status(), 200, "GET /metrics on {addr}");
    r.text()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("inferd_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}
