//! The audit log: one JSON line per HTTP request — time, request id, API key
//! id, route, model, version, prompt and output token counts, latency and
//! status — never the prompt or the output text. Written to a file the
//! operator names and rotated by size (`audit.log` -> `audit.log.1` -> ...,
//! keeping a fixed number of old files).
//!
//! A request's model, version and token counts are known deep inside the
//! handlers, and for streams only after the response has started; they are
//! gathered in a [`Ledger`] that the access middleware creates and that every
//! [`Generation`](super::backend::Generation) made while handling the request
//! picks up from a task-local (so no handler has to pass it along).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

tokio::task_local! {
    /// The ledger of the HTTP request being handled on this task.
    pub static LEDGER: Arc<Ledger>;
}

/// The ledger of the current request, if one is being handled here.
pub fn current_ledger() -> Option<Arc<Ledger>> {
    LEDGER.try_with(Arc::clone).ok()
}

/// What the handlers learn about a request (summed over its generations).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Served {
    pub model: Option<String>,
    pub version: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub generations: u32,
    pub errors: u32,
}

/// Filled while a request is handled and streamed; read when it ends.
#[derive(Debug, Default)]
pub struct Ledger {
    served: Mutex<Served>,
}

impl Ledger {
    /// A generation of `model` (`version` once known) ended with a result.
    pub fn done(&self, model: &str, version: &str, prompt: usize, completion: usize) {
        let mut s = self.served.lock();
        s.model.get_or_insert_with(|| model.to_string());
        s.version.get_or_insert_with(|| version.to_string());
        s.prompt_tokens += prompt as u64;
        s.completion_tokens += completion as u64;
        s.generations += 1;
    }

    /// A generation ended with an error.
    pub fn failed(&self) {
        self.served.lock().errors += 1;
    }

    pub fn served(&self) -> Served {
        self.served.lock().clone()
    }
}

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Unix seconds, with milliseconds.
    pub time: f64,
    pub request_id: &'a str,
    /// The API key's id (never the key), `null` when auth is off.
    pub key_id: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    #[serde(flatten)]
    pub served: Served,
}

/// The log file and its rotation.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<(File, u64)>,
}

impl AuditLog {
    /// Opens (appends to) `path`; rotates once it passes `max_bytes`,
    /// keeping `keep` old files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog { path: path.to_path_buf(), max_bytes: max_bytes.max(1), keep, file: Mutex::new((file, size)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. An I/O error is returned for the caller to log;
    /// it never fails the request.
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock();
        if f.1 > 0 && f.1 + line.len() as u64 > self.max_bytes {
            self.rotate(&mut f)?;
        }
        f.0.write_all(&line)?;
        f.1 += line.len() as u64;
        Ok(())
    }

    /// audit.log.(k-1) -> audit.log.k, ..., audit.log -> audit.log.1; the
    /// oldest beyond `keep` is dropped.
    fn rotate(&self, f: &mut (File, u64)) -> std::io::Result<()> {
        let numbered = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for i in (1..self.keep).rev() {
                let from = numbered(i);
                if from.exists() {
                    std::fs::rename(&from, numbered(i + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        *f = (OpenOptions::new().create(true).append(true).open(&self.path)?, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record<'_> {
        Record {
            time: 1.5,
            request_id: id,
            key_id: Some("k1"),
            method: "POST",
            path: "/v1/completions",
            status: 200,
            latency_ms: 12.0,
            served: Served { model: Some("m".into()), version: Some("v1".into()), prompt_tokens: 3, completion_tokens: 4, generations: 1, errors: 0 },
        }
    }

    #[test]
    fn one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a/audit.log"), 1 << 20, 2).unwrap();
        log.write(&record("r1")).unwrap();
        log.write(&record("r2")).unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["request_id"], "r2");
        assert_eq!(lines[0]["version"], "v1");
        assert_eq!(lines[0]["completion_tokens"], 4);
        assert_eq!(lines[0]["key_id"], "k1");
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let one = serde_json::to_vec(&record("r0")).unwrap().len() as u64 + 1;
        let log = AuditLog::open(&path, 2 * one, 2).unwrap();
        for i in 0..9 {
            log.write(&record(&format!("r{i}"))).unwrap();
        }
        let count = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
        assert_eq!(count(&path), 1, "9 lines in files of 2: the live file holds the 9th");
        assert_eq!(count(&dir.path().join("audit.log.1")), 2);
        assert_eq!(count(&dir.path().join("audit.log.2")), 2);
        assert!(!dir.path().join("audit.log.3").exists());
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"r8\""));
    }

    #[tokio::test]
    async fn generations_find_the_ledger_of_their_request() {
        let ledger = Arc::new(Ledger::default());
        assert!(current_ledger().is_none());
        LEDGER
            .scope(ledger.clone(), async {
                current_ledger().unwrap().done("m", "v2", 5, 6);
                current_ledger().unwrap().failed();
            })
            .await;
        let s = ledger.served();
        assert_eq!((s.version.as_deref(), s.prompt_tokens, s.completion_tokens, s.errors), (Some("v2"), 5, 6, 1));
    }
}
