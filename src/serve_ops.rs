//! The operability side of `inferd serve`: structured logs, API keys (and
//! the loopback-only rule when there are none), the audit log, and the
//! `inferd keys` command that prints the hash of a key for the keys file.

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

use crate::api::access::Access;
use crate::api::audit::AuditLog;
use crate::api::auth::{hash_key, KeyStore};
use crate::api::drain::Drain;
use crate::config::{Config, LogConfig, LogFormat};
use crate::ops_config::is_loopback;

/// Start the `tracing` subscriber on stderr (stdout carries the
/// `listening on` line). `RUST_LOG` overrides the configured level.
pub fn init_logs(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests that start several servers in one process) is
    // harmless: the first subscriber stays.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// The access state of a server about to bind `cfg.server.host`: its keys
/// and audit log. With no keys, it warns loudly and, unless
/// `[auth] allow_unauthenticated`, moves a non-loopback host to 127.0.0.1.
pub fn access(cfg: &mut Config) -> Result<Access> {
    let keys = cfg.auth.load_keys().map_err(anyhow::Error::msg).context("[auth]")?;
    let store = KeyStore::new(&keys, cfg.auth.open_health, cfg.auth.open_metrics).map_err(anyhow::Error::msg).context("[auth] keys")?;
    if store.is_open() {
        tracing::warn!("NO API KEYS CONFIGURED: every route, /admin included, is open to whoever can reach the server. Set [auth] keys_file, INFERD_API_KEYS_FILE or INFERD_API_KEYS.");
        if !is_loopback(&cfg.server.host) && !cfg.auth.allow_unauthenticated {
            tracing::warn!(
                host = %cfg.server.host,
                "refusing to serve an unauthenticated API beyond this machine: binding 127.0.0.1 instead (configure keys, or set [auth] allow_unauthenticated = true)"
            );
            cfg.server.host = "127.0.0.1".to_string();
        }
    } else {
        tracing::info!(keys = store.len(), open_health = store.open_health, open_metrics = store.open_metrics, "API keys required");
    }
    let audit = match &cfg.audit.path {
        Some(p) => {
            let log = AuditLog::open(p, cfg.audit.max_bytes, cfg.audit.keep).with_context(|| format!("[audit] path: opening {}", p.display()))?;
            tracing::info!(path = %p.display(), max_bytes = cfg.audit.max_bytes, keep = cfg.audit.keep, "audit log on");
            Some(log)
        }
        None => None,
    };
    Ok(Access { keys: store, audit, drain: Drain::new() })
}

/// `inferd keys`.
#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Print the SHA-256 of a key, for the `sha256` field of a keys file.
    /// Reads the key from stdin when none is given (keeps it out of shell history).
    Hash { key: Option<String> },
    /// Make a new random key and print it with its hash.
    New,
}

pub fn run_keys(a: KeysArgs) -> Result<()> {
    match a.command {
        KeysCommand::Hash { key } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_line(&mut s).context("reading the key from stdin")?;
                    s.trim().to_string()
                }
            };
            anyhow::ensure!(!key.is_empty(), "the key is empty");
            println!("{}", hash_key(&key));
        }
        KeysCommand::New => {
            let key = format!("sk-inferd-{:032x}", rand::random::<u128>());
            println!("key:    {key}");
            println!("sha256: {}", hash_key(&key));
        }
    }
    Ok(())
}
