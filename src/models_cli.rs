//! `inferd models ...`: the admin API of a running server from the command
//! line (docs/admin-api.md). `list` prints a table (or the JSON with
//! `--json`); the mutations print the model's new entry as a table (or
//! JSON). A refusal prints the server's message and exits non-zero.
//!
//! ```text
//! inferd models list
//! inferd models load smollm2 v2 weights/smollm2-v2 --dtype bf16 --devices cpu
//! inferd models activate smollm2 v2 [--keep-previous-warm]
//! inferd models rollback smollm2
//! inferd models canary smollm2 v2 10 | inferd models canary smollm2 --clear
//! inferd models unload smollm2 v1
//! inferd models remove smollm2
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct ModelsArgs {
    /// The server's base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key with the `admin` scope (sent as a bearer token), once the
    /// server requires keys; default: $INFERD_API_KEY.
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for an answer (a load answers once the version is warm).
    #[arg(long, global = true, default_value_t = 1800)]
    timeout: u64,
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Every model with its versions, states, replicas and memory.
    List,
    /// Load a version beside the active one, warm it up, mark it ready.
    Load(LoadArgs),
    /// Send new requests to VERSION (loading it first if it is unloaded).
    Activate {
        model: String,
        version: String,
        /// Keep the previous version loaded (instant rollback) instead of draining it.
        #[arg(long)]
        keep_previous_warm: bool,
    },
    /// Activate the previous version.
    Rollback {
        model: String,
        #[arg(long)]
        keep_previous_warm: bool,
    },
    /// Send WEIGHT percent of new requests to VERSION (sticky per x-session-id), or --clear.
    Canary {
        model: String,
        #[arg(required_unless_present = "clear")]
        version: Option<String>,
        #[arg(required_unless_present = "clear", value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: Option<u32>,
        /// Remove the split.
        #[arg(long, conflicts_with_all = ["version", "weight"])]
        clear: bool,
    },
    /// Unload a version that is neither active nor canary.
    Unload { model: String, version: String },
    /// Drain and remove a whole model.
    Remove { model: String },
}

#[derive(Args)]
struct LoadArgs {
    model: String,
    version: String,
    /// A .gguf file or a Hugging Face folder (a path that exists here is sent absolute).
    source: PathBuf,
    #[arg(long)]
    dtype: Option<String>,
    /// Comma-separated devices, one replica each (cpu, cuda:0, ...).
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<String>>,
    #[arg(long)]
    kv_cache_mb: Option<u64>,
    #[arg(long)]
    max_num_seqs: Option<usize>,
    #[arg(long)]
    max_batched_tokens: Option<usize>,
    #[arg(long)]
    max_context: Option<usize>,
    /// "gguf": keep a GGUF file's Q4_0/Q4_1/Q8_0 weights in their blocks (bf16, CPU).
    #[arg(long)]
    quantization: Option<String>,
}

impl LoadArgs {
    fn body(&self) -> Value {
        let source = std::fs::canonicalize(&self.source).unwrap_or_else(|_| self.source.clone());
        let mut b = json!({"version": self.version, "source": source});
        let opt = [
            ("dtype", self.dtype.as_ref().map(|d| json!(d))),
            ("devices", self.devices.as_ref().map(|d| json!(d))),
            ("kv_cache_mb", self.kv_cache_mb.map(|v| json!(v))),
            ("max_num_seqs", self.max_num_seqs.map(|v| json!(v))),
            (
                "max_batched_tokens",
                self.max_batched_tokens.map(|v| json!(v)),
            ),
            ("max_context", self.max_context.map(|v| json!(v))),
            ("quantization", self.quantization.as_ref().map(|q| json!(q))),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                b[k] = v;
            }
        }
        b
    }
}

pub fn run(a: ModelsArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let v = match rt.block_on(call(&a)) {
        Ok(v) => v,
        Err(e) => {
            // The server's refusal, without a backtrace: it is not a bug here.
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Some(models) = v["models"].as_array() {
        print!("{}", table(models));
    } else if v["removed"] == json!(true) {
        println!(
            "removed model `{}`",
            v["model"].as_str().unwrap_or_default()
        );
    } else {
        print!("{}", table(std::slice::from_ref(&v)));
    }
    Ok(())
}

async fn call(a: &ModelsArgs) -> Result<Value> {
    use reqwest::Method;
    let base = a.url.trim_end_matches('/');
    let m = |model: &str| format!("{base}/admin/models/{model}");
    let (method, url, body) = match &a.command {
        ModelsCommand::List => (Method::GET, format!("{base}/admin/models"), None),
        ModelsCommand::Load(l) => (
            Method::POST,
            format!("{}/versions", m(&l.model)),
            Some(l.body()),
        ),
        ModelsCommand::Activate {
            model,
            version,
            keep_previous_warm,
        } => {
            let b = json!({"version": version, "keep_previous_warm": keep_previous_warm});
            (Method::POST, format!("{}/activate", m(model)), Some(b))
        }
        ModelsCommand::Rollback {
            model,
            keep_previous_warm,
        } => {
            let b = json!({"keep_previous_warm": keep_previous_warm});
            (Method::POST, format!("{}/rollback", m(model)), Some(b))
        }
        ModelsCommand::Canary {
            model, clear: true, ..
        } => (Method::DELETE, format!("{}/canary", m(model)), None),
        ModelsCommand::Canary {
            model,
            version,
            weight,
            ..
        } => {
            let b = json!({"version": version, "weight": weight});
            (Method::PUT, format!("{}/canary", m(model)), Some(b))
        }
        ModelsCommand::Unload { model, version } => (
            Method::DELETE,
            format!("{}/versions/{version}", m(model)),
            None,
        ),
        ModelsCommand::Remove { model } => (Method::DELETE, m(model), None),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(a.timeout))
        .build()
        .context("building the HTTP client")?;
    let mut req = client.request(method.clone(), &url);
    let key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("INFERD_API_KEY").ok());
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        req = req.bearer_auth(key);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = res.status();
    let text = res
        .text()
        .await
        .with_context(|| format!("{method} {url}: reading the answer"))?;
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| json!({"error": {"message": text}}));
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("(no message)");
        bail!("{method} {url}: {status}: {msg}");
    }
    Ok(v)
}

/// A fixed-width table: one row per version.
fn table(models: &[Value]) -> String {
    let head = [
        "MODEL", "VERSION", "STATE", "ROLE", "DEVICES", "MEMORY", "RUNNING", "SOURCE",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    for m in models {
        let versions = m["versions"].as_array().cloned().unwrap_or_default();
        if versions.is_empty() {
            rows.push(vec![
                s(&m["model"]),
                "-".into(),
                "-".into(),
                String::new(),
                String::new(),
                "0".into(),
                "0".into(),
                String::new(),
            ]);
        }
        for v in versions {
            let mut role = Vec::new();
            if v["is_active"] == json!(true) {
                role.push("active".to_string());
            }
            if v["is_previous"] == json!(true) {
                role.push("previous".to_string());
            }
            if let Some(w) = v["canary_weight"].as_u64() {
                role.push(format!("canary {w}%"));
            }
            let mut state = s(&v["state"]);
            if let Some(e) = v["error"].as_str() {
                state = format!("{state}: {e}");
            }
            let devices: Vec<String> = v["devices"]
                .as_array()
                .map(|d| d.iter().map(s).collect())
                .unwrap_or_default();
            let running: u64 = v["replicas"]
                .as_array()
                .map(|r| r.iter().filter_map(|r| r["running"].as_u64()).sum())
                .unwrap_or(0);
            let mem = v["memory_bytes"].as_u64().unwrap_or(0);
            rows.push(vec![
                s(&m["model"]),
                s(&v["version"]),
                state,
                role.join(","),
                devices.join(","),
                human_bytes(mem),
                running.to_string(),
                s(&v["source"]),
            ]);
        }
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut x, mut u) = (n as f64, 0);
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_one_row_per_version() {
        let m = json!({"model": "smollm2", "versions": [
            {"version": "v1", "state": "ready", "is_active": true, "is_previous": false, "canary_weight": null,
             "devices": ["cpu"], "memory_bytes": 3u64 << 20, "replicas": [{"running": 2}], "source": "/w/a.gguf"},
            {"version": "v2", "state": "failed", "error": "bad magic", "is_active": false, "is_previous": false,
             "canary_weight": 10, "devices": ["cpu"], "memory_bytes": 0, "replicas": [], "source": "/w/b"}]});
        let t = table(&[m]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].contains("active") && lines[1].contains("3.0 MiB"),
            "{t}"
        );
        assert!(
            lines[2].contains("failed: bad magic") && lines[2].contains("canary 10%"),
            "{t}"
        );
    }
}
