//! API keys: who may call what, and how much. Keys are configured as SHA-256
//! hashes (never in clear), each with an id for logs, scopes (`inference`,
//! `admin`) and limits (requests and tokens per minute, requests in flight).
//! A key is sent as `Authorization: Bearer <key>` or `x-api-key: <key>`.
//!
//! [`KeyStore::check`] is the decision alone (plain state, unit-tested): it
//! classifies the route, finds the key, checks its scope and limits, and on
//! success hands back a [`Permit`] that holds the key's concurrency slot
//! until the response has been sent; tokens are charged to the key when the
//! request ends. The HTTP wiring lives in `access.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health probes, metrics, stats and the console's static files.
    Open,
    Inference,
    Admin,
}

/// A key's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Inference,
    Admin,
}

/// One key as configured (the keys file, or `INFERD_API_KEYS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Names the key in logs and the audit log.
    pub id: String,
    /// Hex SHA-256 of the key (`inferd keys hash <key>` prints it).
    pub sha256: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub max_concurrent: Option<usize>,
}

/// The keys file: `[[keys]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// Hex SHA-256 of `key`.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A refilling allowance (per minute), allowed to go negative when a
/// request's real cost is charged after the fact.
#[derive(Debug)]
struct Bucket {
    per_minute: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: f64) -> Bucket {
        Bucket { per_minute, level: per_minute, at: Instant::now() }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * self.per_minute / 60.0).min(self.per_minute);
        self.at = now;
    }

    /// Time until the level reaches `need`.
    fn wait_for(&self, need: f64) -> Duration {
        let missing = (need - self.level).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / self.per_minute.max(f64::MIN_POSITIVE))
    }
}

/// A configured key with its live counters.
#[derive(Debug)]
pub struct Key {
    pub id: String,
    scopes: Vec<Scope>,
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
    max_concurrent: Option<usize>,
    in_flight: AtomicUsize,
}

impl Key {
    fn new(c: &KeyConfig) -> Key {
        Key {
            id: c.id.clone(),
            scopes: c.scopes.clone(),
            requests: c.requests_per_minute.map(|n| Mutex::new(Bucket::new(f64::from(n)))),
            tokens: c.tokens_per_minute.map(|n| Mutex::new(Bucket::new(n as f64))),
            max_concurrent: c.max_concurrent,
            in_flight: AtomicUsize::new(0),
        }
    }

    fn allows(&self, need: Need) -> bool {
        match need {
            Need::Open => true,
            Need::Inference => self.scopes.contains(&Scope::Inference),
            Need::Admin => self.scopes.contains(&Scope::Admin),
        }
    }

    /// Charges `n` prompt + generated tokens to the per-minute allowance.
    pub fn charge_tokens(&self, n: u64) {
        if let Some(b) = &self.tokens {
            let mut b = b.lock();
            b.refill(Instant::now());
            b.level -= n as f64;
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Holds a key's concurrency slot; released on drop.
#[derive(Debug)]
pub struct Permit {
    pub key: Arc<Key>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.key.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// 401: no key, or not a known one.
    Unauthenticated(&'static str),
    /// 403: the key lacks the scope.
    Forbidden { key_id: String, scope: &'static str },
    /// 429: over a limit; retry after this long.
    Limited { key_id: String, limit: &'static str, retry_after: Duration },
}

/// Every configured key, by hash.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<String, Arc<Key>>,
    /// Serve /metrics and /stats without a key.
    pub open_metrics: bool,
    /// Serve /health/* without a key.
    pub open_health: bool,
}

/// What a route needs, by path.
pub fn need_of(path: &str, store: &KeyStore) -> Need {
    let health = matches!(path, "/health" | "/health/live" | "/health/ready" | "/ready")
        || (path.starts_with("/v1/models/") && path.ends_with("/ready"));
    let metrics = matches!(path, "/metrics" | "/stats");
    if (health && store.open_health) || (metrics && store.open_metrics) {
        return Need::Open;
    }
    if path == "/ui" || path.starts_with("/ui/") || path == "/favicon.ico" {
        // Static files only; the console sends the operator's key to the API.
        return Need::Open;
    }
    if path == "/admin" || path.starts_with("/admin/") {
        return Need::Admin;
    }
    Need::Inference
}

impl KeyStore {
    /// A store of `keys`; a malformed hash or a duplicate id is an error
    /// naming the key.
    pub fn new(keys: &[KeyConfig], open_health: bool, open_metrics: bool) -> Result<KeyStore, String> {
        let mut by_hash = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            let h = k.sha256.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("keys[{i}].sha256 (key `{}`): expected 64 hex digits", k.id));
            }
            if !ids.insert(k.id.clone()) {
                return Err(format!("keys[{i}].id: `{}` is used twice", k.id));
            }
            if k.scopes.is_empty() {
                return Err(format!("keys[{i}].scopes (key `{}`): list at least one of inference, admin", k.id));
            }
            by_hash.insert(h, Arc::new(Key::new(k)));
        }
        Ok(KeyStore { by_hash, open_health, open_metrics })
    }

    /// No keys configured: everything is open.
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Decides a request to `need` presenting `key` (None when absent).
    /// `Ok(None)`: allowed without a key (open route or auth off).
    pub fn check(&self, need: Need, key: Option<&str>) -> Result<Option<Permit>, Denied> {
        if self.is_open() || need == Need::Open {
            return Ok(None);
        }
        let key = key.ok_or(Denied::Unauthenticated("missing API key: send `Authorization: Bearer <key>` or `x-api-key`"))?;
        let k = self.by_hash.get(&hash_key(key)).ok_or(Denied::Unauthenticated("invalid API key"))?;
        if !k.allows(need) {
            let scope = if need == Need::Admin { "admin" } else { "inference" };
            return Err(Denied::Forbidden { key_id: k.id.clone(), scope });
        }
        let limited = |limit: &'static str, retry_after: Duration| Denied::Limited { key_id: k.id.clone(), limit, retry_after };
        let now = Instant::now();
        if let Some(t) = &k.tokens {
            let mut t = t.lock();
            t.refill(now);
            if t.level <= 0.0 {
                return Err(limited("tokens_per_minute", t.wait_for(1.0)));
            }
        }
        let prev = k.in_flight.fetch_add(1, Ordering::SeqCst);
        // From here on the slot is held: the permit gives it back on any return.
        let permit = Permit { key: k.clone() };
        if k.max_concurrent.is_some_and(|max| prev >= max) {
            return Err(limited("max_concurrent", Duration::from_secs(1)));
        }
        if let Some(r) = &k.requests {
            let mut r = r.lock();
            r.refill(now);
            if r.level < 1.0 {
                return Err(limited("requests_per_minute", r.wait_for(1.0)));
            }
            r.level -= 1.0;
        }
        Ok(Some(permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str, scopes: &[Scope]) -> KeyConfig {
        KeyConfig {
            id: id.into(),
            sha256: hash_key(secret),
            scopes: scopes.to_vec(),
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
        }
    }

    fn store(keys: &[KeyConfig]) -> KeyStore {
        KeyStore::new(keys, true, true).unwrap()
    }

    #[test]
    fn routes_are_classified() {
        let s = store(&[]);
        assert_eq!(need_of("/health/ready", &s), Need::Open);
        assert_eq!(need_of("/v1/models/smollm2/ready", &s), Need::Open);
        assert_eq!(need_of("/metrics", &s), Need::Open);
        assert_eq!(need_of("/ui/assets/x.js", &s), Need::Open);
        assert_eq!(need_of("/admin/models", &s), Need::Admin);
        assert_eq!(need_of("/v1/chat/completions", &s), Need::Inference);
        assert_eq!(need_of("/v1/models", &s), Need::Inference);
        assert_eq!(need_of("/generate", &s), Need::Inference);
        let closed = KeyStore::new(&[], false, false).unwrap();
        assert_eq!(need_of("/metrics", &closed), Need::Inference);
        assert_eq!(need_of("/health/live", &closed), Need::Inference);
    }

    #[test]
    fn no_keys_means_open() {
        let s = store(&[]);
        assert!(s.is_open());
        assert!(matches!(s.check(Need::Admin, None), Ok(None)));
    }

    #[test]
    fn scope_matrix() {
        let s = store(&[key("inf", "sk-inf", &[Scope::Inference]), key("adm", "sk-adm", &[Scope::Admin, Scope::Inference])]);
        let status = |need, k: Option<&str>| match s.check(need, k) {
            Ok(_) => 200,
            Err(Denied::Unauthenticated(_)) => 401,
            Err(Denied::Forbidden { .. }) => 403,
            Err(Denied::Limited { .. }) => 429,
        };
        for need in [Need::Inference, Need::Admin] {
            assert_eq!(status(need, None), 401);
            assert_eq!(status(need, Some("wrong")), 401);
        }
        assert_eq!(status(Need::Inference, Some("sk-inf")), 200);
        assert_eq!(status(Need::Admin, Some("sk-inf")), 403);
        assert_eq!(status(Need::Admin, Some("sk-adm")), 200);
        assert_eq!(status(Need::Inference, Some("sk-adm")), 200);
        assert_eq!(status(Need::Open, None), 200);
    }

    #[test]
    fn requests_per_minute_limits_then_refills() {
        let mut k = key("k", "s", &[Scope::Inference]);
        k.requests_per_minute = Some(2);
        let s = store(&[k]);
        assert!(s.check(Need::Inference, Some("s")).is_ok());
        assert!(s.check(Need::Inference, Some("s")).is_ok());
        match s.check(Need::Inference, Some("s")) {
            Err(Denied::Limited { limit, retry_after, .. }) => {
                assert_eq!(limit, "requests_per_minute");
                assert!(retry_after > Duration::from_secs(20) && retry_after <= Duration::from_secs(30), "{retry_after:?}");
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        // Simulate 30 s passing: one request's worth comes back.
        let key = s.by_hash.values().next().unwrap();
        key.requests.as_ref().unwrap().lock().at -= Duration::from_secs(31);
        assert!(s.check(Need::Inference, Some("s")).is_ok());
    }

    #[test]
    fn concurrency_slots_are_held_by_permits() {
        let mut k = key("k", "s", &[Scope::Inference]);
        k.max_concurrent = Some(1);
        let s = store(&[k]);
        let p = s.check(Need::Inference, Some("s")).unwrap().unwrap();
        assert!(matches!(s.check(Need::Inference, Some("s")), Err(Denied::Limited { limit: "max_concurrent", .. })));
        assert_eq!(p.key.in_flight(), 1, "a refused request gives its slot back");
        drop(p);
        assert!(s.check(Need::Inference, Some("s")).is_ok());
    }

    #[test]
    fn tokens_are_charged_after_the_fact() {
        let mut k = key("k", "s", &[Scope::Inference]);
        k.tokens_per_minute = Some(100);
        let s = store(&[k]);
        let p = s.check(Need::Inference, Some("s")).unwrap().unwrap();
        p.key.charge_tokens(150);
        drop(p);
        assert!(matches!(s.check(Need::Inference, Some("s")), Err(Denied::Limited { limit: "tokens_per_minute", .. })));
    }

    #[test]
    fn bad_key_config_names_the_key() {
        let mut k = key("a", "s", &[Scope::Inference]);
        k.sha256 = "xyz".into();
        assert!(KeyStore::new(&[k], true, true).unwrap_err().contains("keys[0].sha256"));
        let dup = [key("a", "s", &[Scope::Inference]), key("a", "t", &[Scope::Inference])];
        assert!(KeyStore::new(&dup, true, true).unwrap_err().contains("used twice"));
    }
}
