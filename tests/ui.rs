//! Browser test of the web console (`/ui`): the real `inferd serve` with
//! SmolLM2 as v1 (bf16) and v2 (f32, same GGUF), driven by Debian's headless
//! Chromium through playwright-core (`tests/ui/console.spec.mjs`): a streamed
//! chat reply, stop mid-stream (running count back to 0), activating v2 on the
//! models page (next reply served by v2), non-empty live charts, and
//! screenshots of each page in `target/ui-artifacts/`, checked non-blank.
//!
//! Needs `scripts/setup-ui-test.sh` (chromium + tests/ui/node_modules).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2";
/// The whole browser run, server start excluded.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(600);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gguf() -> PathBuf {
    let p = root().join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "missing {} — run `make setup`", p.display());
    p
}

/// v1 is active; v2 is the same weights in f32, so "served by v2" is a real switch.
fn config_text(gguf: &Path) -> String {
    let version = |dtype: &str| {
        format!(
            "source = \"{}\"\ndtype = \"{dtype}\"\nkv_cache_mb = 64\nmax_num_seqs = 4\nmax_batched_tokens = 512\nmax_context = 2048\nprefix_caching = true\n",
            gguf.display()
        )
    };
    format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\n# The test's own state folder: a shared one would restore another run's routing.\ndata_dir = \"data\"\n\n[models.{MODEL}]\nactive = \"v1\"\n\n[models.{MODEL}.versions.v1]\n{}\n[models.{MODEL}.versions.v2]\n{}",
        version("bf16"),
        version("f32")
    )
}

/// The server child, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(cfg: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
        .spawn()
        .expect("spawn inferd serve");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("the server exited before printing its address").unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.trim().to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (server, base)
}

/// Wait until `/v1/models` lists the model as ready.
fn wait_ready(base: &str) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ready = client
            .get(format!("{base}/v1/models"))
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .and_then(|v| v["data"].as_array().cloned())
            .is_some_and(|d| d.iter().any(|m| m["id"] == MODEL && m["ready"] != false));
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "{MODEL} not ready after 180 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_prerequisites() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing — run scripts/setup-ui-test.sh");
    let pw = root().join("tests/ui/node_modules/playwright-core");
    assert!(pw.exists(), "{} is missing — run scripts/setup-ui-test.sh", pw.display());
    assert!(root().join("web/dist/index.html").exists(), "web/dist is missing — run scripts/build-ui.sh");
}

#[test]
fn console_in_a_real_browser() {
    check_prerequisites();
    let gguf = gguf();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ui.toml");
    std::fs::write(&cfg, config_text(&gguf)).unwrap();
    let (_server, base) = start_server(&cfg);
    wait_ready(&base);

    let artifacts = root().join("target/ui-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut node = Command::new("node")
        .arg(root().join("tests/ui/console.spec.mjs"))
        .args([base.as_str(), artifacts.to_str().unwrap()])
        .env("UI_TEST_MODEL", MODEL)
        .env("UI_TEST_V2_SOURCE", &gguf)
        .env("UI_TEST_V2_DTYPE", "f32")
        .env_remove("UI_DIST")
        .current_dir(root())
        .spawn()
        .expect("run node (Node 20+ is needed)");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("the browser test ran past {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the browser test failed ({status}); screenshots in {}", artifacts.display());
    for page in ["playground", "models", "live"] {
        let png = artifacts.join(format!("{page}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} missing or tiny ({len} bytes)", png.display());
    }
}
