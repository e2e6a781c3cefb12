//! The operator's protection and observability settings: the `[auth]`
//! (API keys), `[audit]` (audit log) and `[log]` (structured logs) tables of
//! the server config, and where API keys come from.
//!
//! Keys are never written in clear anywhere: the keys file and the
//! environment hold SHA-256 hashes (`inferd keys hash <key>` prints one).
//! They are read from, in this order, `[auth] keys_file`, the file named by
//! `INFERD_API_KEYS_FILE`, and `INFERD_API_KEYS` (a JSON array of key
//! objects); all that are given are merged.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::auth::{KeyConfig, KeysFile};

/// Environment variable naming a keys file (TOML, `[[keys]]` tables).
pub const KEYS_FILE_ENV: &str = "INFERD_API_KEYS_FILE";
/// Environment variable holding keys inline, as a JSON array.
pub const KEYS_ENV: &str = "INFERD_API_KEYS";

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A TOML file of `[[keys]]` tables (id, sha256, scopes, limits);
    /// relative to the config file.
    pub keys_file: Option<PathBuf>,
    /// Serve `/health/*` without a key.
    pub open_health: bool,
    /// Serve `/metrics` and `/stats` without a key.
    pub open_metrics: bool,
    /// With no keys configured the server binds to loopback only; set this
    /// to serve an unauthenticated API on the address asked for anyway.
    pub allow_unauthenticated: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { keys_file: None, open_health: true, open_metrics: true, allow_unauthenticated: false }
    }
}

/// `[audit]`: off unless `path` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The JSON-lines file; relative to the config file.
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` .. `audit.log.N`).
    pub keep: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { path: None, max_bytes: 100 << 20, keep: 5 }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `inferd=debug,actix_web=warn`, ...);
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".to_string() }
    }
}

impl AuthConfig {
    /// Resolve a relative `keys_file` against `base` (the config's folder).
    pub fn resolve(&mut self, base: &Path) {
        if let Some(p) = self.keys_file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
    }

    /// Every configured key: the keys file, `INFERD_API_KEYS_FILE` and
    /// `INFERD_API_KEYS`. Errors name the file or variable at fault.
    pub fn load_keys(&self) -> Result<Vec<KeyConfig>, String> {
        let env_file = std::env::var_os(KEYS_FILE_ENV).map(PathBuf::from);
        let inline = std::env::var(KEYS_ENV).ok().filter(|s| !s.trim().is_empty());
        load_keys(self.keys_file.as_deref(), env_file.as_deref(), inline.as_deref())
    }
}

impl AuditConfig {
    pub fn resolve(&mut self, base: &Path) {
        if let Some(p) = self.path.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
    }
}

/// The keys of a keys file, a keys file named by the environment, and an
/// inline JSON array, merged.
pub fn load_keys(file: Option<&Path>, env_file: Option<&Path>, inline: Option<&str>) -> Result<Vec<KeyConfig>, String> {
    let mut keys = Vec::new();
    for path in file.into_iter().chain(env_file) {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading keys file {}: {e}", path.display()))?;
        let parsed: KeysFile = toml::from_str(&text).map_err(|e| format!("keys file {}: {e}", path.display()))?;
        keys.extend(parsed.keys);
    }
    if let Some(json) = inline {
        let parsed: Vec<KeyConfig> = serde_json::from_str(json).map_err(|e| format!("{KEYS_ENV}: expected a JSON array of keys: {e}"))?;
        keys.extend(parsed);
    }
    Ok(keys)
}

/// True for addresses only this machine can reach.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_merge_from_file_and_inline_json() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys.toml");
        std::fs::write(&f, "[[keys]]\nid = \"a\"\nsha256 = \"00\"\nscopes = [\"inference\"]\nrequests_per_minute = 5\n").unwrap();
        let keys = load_keys(Some(&f), None, Some(r#"[{"id":"b","sha256":"11","scopes":["admin"]}]"#)).unwrap();
        let ids: Vec<_> = keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(keys[0].requests_per_minute, Some(5));
    }

    #[test]
    fn bad_key_sources_name_themselves() {
        let e = load_keys(Some(Path::new("/nonexistent/keys.toml")), None, None).unwrap_err();
        assert!(e.contains("/nonexistent/keys.toml"), "{e}");
        let e = load_keys(None, None, Some("{not json")).unwrap_err();
        assert!(e.contains(KEYS_ENV), "{e}");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0") && !is_loopback("10.0.0.5"));
    }
}
