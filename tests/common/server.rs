//! Spawning the real `inferd serve` binary for black-box tests: a config in a
//! temp dir, `--port 0`, the bound address read from stdout, readiness
//! polled, and the child killed on drop (it also exits with our stdin).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SMOLLM2_GGUF: &str = "weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn smollm2_gguf() -> PathBuf {
    let p = super::root().join(SMOLLM2_GGUF);
    assert!(p.exists(), "missing {} — run `make setup`", p.display());
    p
}

pub struct ServerProcess {
    pub base: String,
    child: Child,
}

impl ServerProcess {
    /// Start `inferd serve --config <dir>/inferd.toml` with `config` and wait
    /// until /health/ready (or /ready) answers 200, at most `ready_within`.
    pub fn start(dir: &Path, config: &str, ready_within: Duration) -> ServerProcess {
        let server = ServerProcess::spawn(dir, config);
        server.wait_ready(ready_within);
        server
    }

    /// Start it and return once it listens, without waiting for the models.
    pub fn spawn(dir: &Path, config: &str) -> ServerProcess {
        std::fs::create_dir_all(dir).expect("test dir");
        let cfg = dir.join("inferd.toml");
        std::fs::write(&cfg, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
            .args(["serve", "--config", cfg.to_str().expect("utf-8 path"), "--port", "0", "--exit-on-stdin-eof"])
            // Request lines are per request: keep test logs to warnings
            // unless asked (RUST_LOG=info).
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn inferd serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = lines.next().expect("server printed nothing").expect("read stdout");
        let base = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { base, child }
    }

    pub fn wait_ready(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            for path in ["/health/ready", "/ready"] {
                if let Ok(r) = reqwest::blocking::get(format!("{}{path}", self.base)) {
                    if r.status() == 200 {
                        return;
                    }
                }
            }
            assert!(t0.elapsed() < within, "server not ready after {within:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM and wait at most `within` for the exit; its status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(t0.elapsed() < within, "the server did not exit within {within:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the server process, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).expect("VmRSS");
        kb * 1024
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
