//! The server's TOML configuration (`inferd serve --config FILE`): the
//! `[server]` table (address, body limit, default model) and one
//! `[models.<name>]` table per served model, which names its `active`
//! version and lists its versions under `[models.<name>.versions.<v>]`
//! (source, dtype, devices, KV budget and scheduler / admission limits).
//!
//! Unknown keys are rejected (`deny_unknown_fields`) and every check names
//! the offending key, so a typo fails at start instead of being ignored.
//! A relative `source` path is resolved against the directory holding the
//! config file (so `config/default.toml` says `../weights/...`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use inferd_actors::engine::{EngineConfig, ModelDeployment};
use inferd_actors::executor::{ModelSpec, Quantization};
use serde::{Deserialize, Serialize};

pub use crate::ops_config::{AuditConfig, AuthConfig, LogConfig, LogFormat};

/// Default bind address (loopback: exposing the server is a deliberate act).
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 8080;
/// Largest request body accepted (413 beyond it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// A config that cannot be served, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: `{key}` {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub models: BTreeMap<String, ModelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (tests); the bound address is printed on stdout.
    pub port: u16,
    pub max_body_bytes: usize,
    /// Model used by the routes that name none (TGI's); defaults to the
    /// first model in name order.
    pub default_model: Option<String>,
    /// Where the server keeps its state (batch-job database, persisted
    /// routing). Relative paths resolve against the config file's directory.
    pub data_dir: PathBuf,
    /// Batch-job lines run at once (process-wide).
    pub batch_concurrency: usize,
    /// Devices to start a worker on besides those the configured versions
    /// name, so versions loaded at run time (`POST /admin/models/...`) can
    /// use them.
    pub devices: Vec<String>,
    /// Deadline of an HTTP request that sets no `timeout` of its own, in
    /// seconds (0: none). The request then ends with a timeout status.
    pub request_timeout_secs: f64,
    /// Bytes of the response cache (repeated greedy or seeded requests),
    /// in MiB; 0 turns it off.
    pub response_cache_mb: u64,
    /// On SIGTERM: how long running requests get to finish before exit.
    pub shutdown_grace_secs: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            default_model: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            batch_concurrency: DEFAULT_BATCH_CONCURRENCY,
            devices: Vec::new(),
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            response_cache_mb: 0,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }
}

/// Default per-request deadline (10 minutes).
const DEFAULT_REQUEST_TIMEOUT_SECS: f64 = 600.0;
/// Default drain time on SIGTERM (Kubernetes' default grace is 30 s).
const DEFAULT_SHUTDOWN_GRACE_SECS: f64 = 25.0;

/// Default state directory, relative to the config file.
const DEFAULT_DATA_DIR: &str = "../data";
/// Default number of batch-job lines in flight.
const DEFAULT_BATCH_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The version that serves traffic.
    pub active: String,
    pub versions: BTreeMap<String, VersionConfig>,
}

/// One version's settings: a `[models.<name>.versions.<v>]` table, and the
/// body of `POST /admin/models/{model}/versions` (less `version`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// A .gguf file or a Hugging Face folder.
    pub source: PathBuf,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_devices")]
    pub devices: Vec<String>,
    /// KV pool per replica, in MiB.
    #[serde(default = "default_kv_cache_mb")]
    pub kv_cache_mb: u64,
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    #[serde(default = "default_max_num_seqs")]
    pub max_num_seqs: usize,
    #[serde(default = "default_max_batched_tokens")]
    pub max_batched_tokens: usize,
    /// Cap on prompt + output (the model's own limit applies anyway).
    #[serde(default)]
    pub max_context: Option<usize>,
    #[serde(default = "default_max_queue_requests")]
    pub max_queue_requests: usize,
    #[serde(default = "default_max_queue_tokens")]
    pub max_queue_tokens: usize,
    #[serde(default = "default_true")]
    pub prefix_caching: bool,
    /// `"gguf"`: keep a GGUF file's Q4_0/Q4_1/Q8_0 linear weights in their
    /// blocks (bf16 on a CPU with AVX512_BF16 and AVX512_VNNI); `"none"`: dequantize.
    #[serde(default)]
    pub quantization: Quantization,
}

fn default_dtype() -> String {
    "bf16".to_string()
}
fn default_devices() -> Vec<String> {
    vec!["cpu".to_string()]
}
fn default_kv_cache_mb() -> u64 {
    256
}
fn default_block_size() -> usize {
    16
}
fn default_max_num_seqs() -> usize {
    32
}
fn default_max_batched_tokens() -> usize {
    2048
}
fn default_max_queue_requests() -> usize {
    256
}
fn default_max_queue_tokens() -> usize {
    256 * 1024
}
fn default_true() -> bool {
    true
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Read, parse, resolve relative sources and check `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse `text`, resolving relative sources against `base`, and check it.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        if cfg.server.data_dir.is_relative() {
            cfg.server.data_dir = base.join(&cfg.server.data_dir);
        }
        cfg.auth.resolve(base);
        cfg.audit.resolve(base);
        for model in cfg.models.values_mut() {
            for v in model.versions.values_mut() {
                if v.source.is_relative() {
                    v.source = base.join(&v.source);
                }
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(invalid("models", "must list at least one model"));
        }
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be positive"));
        }
        if self.server.batch_concurrency == 0 {
            return Err(invalid("server.batch_concurrency", "must be positive"));
        }
        let t = self.server.request_timeout_secs;
        if !(0.0..=crate::api::validate::MAX_TIMEOUT_SECS).contains(&t) {
            return Err(invalid("server.request_timeout_secs", format!("must be in [0, {}] (0: none), got {t}", crate::api::validate::MAX_TIMEOUT_SECS)));
        }
        let g = self.server.shutdown_grace_secs;
        if !(0.0..=3600.0).contains(&g) {
            return Err(invalid("server.shutdown_grace_secs", format!("must be in [0, 3600], got {g}")));
        }
        if self.audit.path.is_some() && self.audit.max_bytes < 1024 {
            return Err(invalid("audit.max_bytes", "must be at least 1024"));
        }
        for d in &self.server.devices {
            check_device(d).map_err(|m| invalid("server.devices", m))?;
        }
        if let Some(d) = &self.server.default_model {
            if !self.models.contains_key(d) {
                return Err(invalid(
                    "server.default_model",
                    format!("names `{d}`, which is not under [models]"),
                ));
            }
        }
        for (name, m) in &self.models {
            if !m.versions.contains_key(&m.active) {
                return Err(invalid(
                    format!("models.{name}.active"),
                    format!(
                        "names version `{}`, which is not under [models.{name}.versions]",
                        m.active
                    ),
                ));
            }
            for (ver, v) in &m.versions {
                v.check(&format!("models.{name}.versions.{ver}"))?;
            }
        }
        Ok(())
    }

    /// Environment overrides, between the file and the command line:
    /// `INFERD_HOST`, `INFERD_PORT` and `INFERD_DATA_DIR` (secrets come from
    /// the environment too: `INFERD_API_KEYS` / `INFERD_API_KEYS_FILE`).
    /// `get` reads a variable (`std::env::var` in the server).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(h) = get("INFERD_HOST").filter(|h| !h.is_empty()) {
            self.server.host = h;
        }
        if let Some(p) = get("INFERD_PORT").filter(|p| !p.is_empty()) {
            self.server.port = p
                .parse()
                .map_err(|_| invalid("INFERD_PORT (environment)", format!("must be a port number 0..=65535, got {p:?}")))?;
        }
        if let Some(d) = get("INFERD_DATA_DIR").filter(|d| !d.is_empty()) {
            self.server.data_dir = PathBuf::from(d);
        }
        Ok(())
    }

    /// The default deadline of HTTP requests, if any.
    pub fn request_timeout(&self) -> Option<std::time::Duration> {
        let t = self.server.request_timeout_secs;
        (t > 0.0).then(|| std::time::Duration::from_secs_f64(t))
    }

    /// The model answering routes that name none.
    pub fn default_model(&self) -> Option<&str> {
        self.server
            .default_model
            .as_deref()
            .or_else(|| self.models.keys().next().map(String::as_str))
    }

    /// The engine's configuration: the active version of every model, and
    /// one worker per device that any configured version or
    /// `server.devices` names. The other configured versions are not loaded
    /// at start (see [`Config::standby`]).
    pub fn engine_config(&self) -> EngineConfig {
        let mut devices: Vec<String> = Vec::new();
        let all = self.models.values().flat_map(|m| m.versions.values());
        for d in all.flat_map(|v| &v.devices).chain(&self.server.devices) {
            if !devices.contains(d) {
                devices.push(d.clone());
            }
        }
        let models = self
            .active()
            .map(|(name, version, v)| v.deployment(name, version))
            .collect();
        EngineConfig { devices, models }
    }

    /// The configured versions that are not active: (name, version, settings).
    pub fn standby(&self) -> impl Iterator<Item = (&str, &str, &VersionConfig)> {
        self.models.iter().flat_map(|(name, m)| {
            m.versions
                .iter()
                .filter(move |(v, _)| **v != m.active)
                .map(move |(v, c)| (name.as_str(), v.as_str(), c))
        })
    }

    /// A configured version's settings.
    pub fn version(&self, model: &str, version: &str) -> Option<&VersionConfig> {
        self.models.get(model)?.versions.get(version)
    }

    /// The active version of every model: (name, version label, settings).
    pub fn active(&self) -> impl Iterator<Item = (&str, &str, &VersionConfig)> {
        self.models.iter().filter_map(|(name, m)| {
            m.versions
                .get(&m.active)
                .map(|v| (name.as_str(), m.active.as_str(), v))
        })
    }
}

/// "cpu" or "cuda:N"; otherwise why not.
pub fn check_device(d: &str) -> Result<(), String> {
    let ok = d == "cpu"
        || d.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("must hold \"cpu\" or \"cuda:N\", got {d:?}"))
    }
}

impl VersionConfig {
    fn check(&self, at: &str) -> Result<(), ConfigError> {
        self.validate()
            .map_err(|(key, message)| invalid(format!("{at}.{key}"), message))
    }

    /// Checks every value; on failure names the key (e.g. `dtype`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !matches!(self.dtype.as_str(), "f32" | "bf16" | "f16") {
            let why = format!("must be f32, bf16 or f16, got {:?}", self.dtype);
            return Err(("dtype", why));
        }
        if self.devices.is_empty() {
            return Err(("devices", "must list at least one device".into()));
        }
        if self.quantization == Quantization::Gguf && (self.dtype != "bf16" || self.devices.iter().any(|d| d != "cpu")) {
            let why = format!("\"gguf\" runs on CPU in bf16 (dtype = \"bf16\", devices = [\"cpu\"]), got dtype {:?} on {:?}", self.dtype, self.devices);
            return Err(("quantization", why));
        }
        for d in &self.devices {
            check_device(d).map_err(|m| ("devices", m))?;
        }
        let positive: [(&'static str, u64); 6] = [
            ("kv_cache_mb", self.kv_cache_mb),
            ("block_size", self.block_size as u64),
            ("max_num_seqs", self.max_num_seqs as u64),
            ("max_batched_tokens", self.max_batched_tokens as u64),
            ("max_queue_requests", self.max_queue_requests as u64),
            ("max_queue_tokens", self.max_queue_tokens as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be positive".into()));
            }
        }
        if self.max_context == Some(0) {
            return Err(("max_context", "must be positive".into()));
        }
        Ok(())
    }

    /// The engine's deployment of this version as model `name` version
    /// `version`.
    pub fn deployment(&self, name: &str, version: &str) -> ModelDeployment {
        let spec = ModelSpec {
            name: name.to_string(),
            version: version.to_string(),
            source: self.source.clone(),
            dtype: self.dtype.clone(),
            kv_budget_bytes: self.kv_cache_mb << 20,
            block_size: self.block_size,
            max_context: self.max_context,
            quantization: self.quantization,
        };
        ModelDeployment {
            spec,
            devices: self.devices.clone(),
            max_num_seqs: self.max_num_seqs,
            max_batched_tokens: self.max_batched_tokens,
            enable_prefix_caching: self.prefix_caching,
            max_queue_requests: self.max_queue_requests,
            max_queue_tokens: self.max_queue_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_host_port_and_data_dir_and_names_a_bad_port() {
        let text = "[models.m]\nactive = \"v1\"\n[models.m.versions.v1]\nsource = \"x.gguf\"\n";
        let mut cfg = Config::parse(text, Path::new("/etc/inferd")).unwrap();
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        cfg.apply_env(env(&[("INFERD_HOST", "0.0.0.0"), ("INFERD_PORT", "9000"), ("INFERD_DATA_DIR", "/var/lib/x")])).unwrap();
        assert_eq!((cfg.server.host.as_str(), cfg.server.port), ("0.0.0.0", 9000));
        assert_eq!(cfg.server.data_dir, PathBuf::from("/var/lib/x"));
        let e = cfg.apply_env(env(&[("INFERD_PORT", "http")])).unwrap_err().to_string();
        assert!(e.contains("INFERD_PORT") && e.contains("http"), "{e}");
    }

    const OK: &str = r#"
[server]
port = 0
[models.m]
active = "v1"
[models.m.versions.v1]
source = "w/model.gguf"
"#;

    #[test]
    fn defaults_and_relative_source() {
        let cfg = Config::parse(OK, Path::new("/etc/inferd")).unwrap();
        assert_eq!(cfg.server.host, DEFAULT_HOST);
        assert_eq!(cfg.server.port, 0);
        assert_eq!(cfg.default_model(), Some("m"));
        let (name, ver, v) = cfg.active().next().unwrap();
        assert_eq!((name, ver), ("m", "v1"));
        assert_eq!(v.source, PathBuf::from("/etc/inferd/w/model.gguf"));
        assert_eq!(v.dtype, "bf16");
        assert_eq!(v.devices, vec!["cpu".to_string()]);
        assert!(v.prefix_caching);
    }

    #[test]
    fn standby_versions_and_devices() {
        let text = format!("{OK}devices = [\"cuda:1\"]\n[models.m.versions.v2]\nsource = \"v2\"\n")
            .replace("port = 0", "port = 0\ndevices = [\"cuda:3\"]");
        let cfg = Config::parse(&text, Path::new("/x")).unwrap();
        let engine = cfg.engine_config();
        assert_eq!(engine.models.len(), 1, "only the active version loads");
        assert_eq!(engine.models[0].spec.version, "v1");
        assert_eq!(engine.devices, vec!["cuda:1", "cpu", "cuda:3"]);
        assert_eq!(cfg.version("m", "v1").unwrap().deployment("m", "v1").spec.quantization, Quantization::None);
        let standby: Vec<_> = cfg.standby().map(|(n, v, _)| (n, v)).collect();
        assert_eq!(standby, vec![("m", "v2")]);
        let dep = cfg.version("m", "v2").unwrap().deployment("m", "v2");
        assert_eq!(dep.spec.source, PathBuf::from("/x/v2"));
        assert_eq!(dep.spec.kv_budget_bytes, 256 << 20);
    }

    #[test]
    fn gguf_quantization_reaches_the_spec() {
        let text = format!("{OK}dtype = \"bf16\"\nquantization = \"gguf\"\n");
        let cfg = Config::parse(&text, Path::new(".")).unwrap();
        let dep = cfg.version("m", "v1").unwrap().deployment("m", "v1");
        assert_eq!(dep.spec.quantization, Quantization::Gguf);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = OK.replace("port = 0", "port = 0\nprot = 1");
        let err = Config::parse(&text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                OK.replace("active = \"v1\"", "active = \"v2\""),
                "models.m.active",
            ),
            (
                format!("{OK}dtype = \"int3\"\n"),
                "models.m.versions.v1.dtype",
            ),
            (
                format!("{OK}devices = [\"tpu\"]\n"),
                "models.m.versions.v1.devices",
            ),
            (
                format!("{OK}block_size = 0\n"),
                "models.m.versions.v1.block_size",
            ),
            (
                format!("{OK}quantization = \"awq\"\n"),
                "quantization",
            ),
            (
                format!("{OK}dtype = \"f32\"\nquantization = \"gguf\"\n"),
                "models.m.versions.v1.quantization",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text, Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
