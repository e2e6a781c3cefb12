//! Model management at the edge: sequences the engine's operations
//! (`Engine::load_version`, `activate`, `rollback`, canary, `unload`,
//! `remove_model`) with what the HTTP layer owns around them:
//! - the per-model codecs (a model added at run time gets its tokenizer
//!   before its first request; a removed one loses it);
//! - reloading an unloaded version from its settings when it is activated,
//!   rolled back to or made a canary (configured versions are listed
//!   unloaded at start; drained versions keep their settings);
//! - persistence: after every successful change the routing is written to
//!   `<data_dir>/routing.json` (see `routing_store`), and at start it is
//!   re-applied once the configured models are up.
//!
//! Settings of a version are looked up in this order: given through the
//! admin API (also across restarts), the engine's record, the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use inferd_actors::deployment::{ManageError, VersionState};
use inferd_actors::engine::{Engine, ModelDeployment};
use inferd_actors::status::ModelStatus;

use super::admin_error::AdminError;
use super::codec::{Codecs, TokenizerCodec};
use super::routing_store::{PersistedRouting, PersistedVersion, RoutingStore, FORMAT};
use crate::config::{Config, VersionConfig};

/// (model, version).
type Key = (String, String);

/// How long the restore at start waits for the configured loads.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);
const SETTLE_POLL: Duration = Duration::from_millis(50);

pub struct ModelManager {
    engine: Engine,
    codecs: Arc<Codecs>,
    /// Every version the config file names.
    configured: BTreeMap<Key, VersionConfig>,
    /// The config file's folder: relative sources given to the admin API
    /// resolve against it, as in the config file.
    base: PathBuf,
    /// Devices the engine has a worker on.
    devices: Vec<String>,
    /// Versions loaded through the admin API with settings the config file
    /// does not give them (persisted).
    added: Mutex<BTreeMap<Key, VersionConfig>>,
    store: RoutingStore,
    /// Serializes writes of `routing.json`.
    persist_lock: Mutex<()>,
    /// True until the persisted routing has been re-applied at start.
    restoring: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only plain map inserts run under these locks; a panic there leaves
    // the map consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn key(model: &str, version: &str) -> Key {
    (model.to_string(), version.to_string())
}

impl ModelManager {
    /// `engine` must have been started from `cfg.engine_config()`; `base`
    /// is the config file's folder.
    pub fn new(engine: Engine, codecs: Arc<Codecs>, cfg: &Config, base: &Path) -> ModelManager {
        let mut configured = BTreeMap::new();
        for (name, m) in &cfg.models {
            for (v, c) in &m.versions {
                configured.insert(key(name, v), c.clone());
            }
        }
        let store = RoutingStore::new(&cfg.server.data_dir);
        let restoring = Arc::new(AtomicBool::new(store.path().exists()));
        ModelManager {
            engine,
            codecs,
            configured,
            base: base.to_path_buf(),
            devices: cfg.engine_config().devices,
            added: Mutex::new(BTreeMap::new()),
            store,
            persist_lock: Mutex::new(()),
            restoring,
        }
    }

    /// `source` as given to the admin API, made absolute.
    pub fn resolve_source(&self, source: &Path) -> PathBuf {
        if source.is_relative() {
            self.base.join(source)
        } else {
            source.to_path_buf()
        }
    }

    /// Set while the persisted routing is being restored (readiness waits).
    pub fn restoring_flag(&self) -> Arc<AtomicBool> {
        self.restoring.clone()
    }

    /// Lists the configured versions that are not active as unloaded.
    pub fn register_configured(&self) {
        for ((m, v), c) in &self.configured {
            // The active versions are already listed (loading); a model the
            // engine refused at start has nothing to list under.
            let _ = self.engine.register_version(&c.deployment(m, v));
        }
    }

    pub fn status(&self) -> Vec<ModelStatus> {
        self.engine.deployments()
    }

    pub fn model_status(&self, model: &str) -> Result<ModelStatus, AdminError> {
        self.status()
            .into_iter()
            .find(|m| m.model == model)
            .ok_or_else(|| ManageError::UnknownModel(model.to_string()).into())
    }

    fn state(&self, model: &str, version: &str) -> Option<VersionState> {
        let m = self.status().into_iter().find(|m| m.model == model)?;
        m.version(version).map(|v| v.state.clone())
    }

    /// Loads a version beside the others (a new model if `model` is not
    /// served yet) and warms it up; replies when it is ready or failed.
    pub async fn load(
        &self,
        model: &str,
        version: &str,
        settings: VersionConfig,
    ) -> Result<(), AdminError> {
        self.load_deployment(settings.deployment(model, version))
            .await?;
        let k = key(model, version);
        let mut added = lock(&self.added);
        if self.configured.get(&k) == Some(&settings) {
            added.remove(&k);
        } else {
            added.insert(k, settings);
        }
        drop(added);
        self.persist();
        Ok(())
    }

    async fn load_deployment(&self, dep: ModelDeployment) -> Result<(), AdminError> {
        if let Some(d) = dep.devices.iter().find(|d| !self.devices.contains(d)) {
            let why = format!(
                "device {d:?} has no worker in this server (it has {:?}; add it to [server] devices)",
                self.devices
            );
            return Err(AdminError::invalid("devices", why));
        }
        let model = dep.spec.name.clone();
        if !self.codecs.contains(&model) {
            let src = dep.spec.source.clone();
            let opened = tokio::task::spawn_blocking(move || TokenizerCodec::open(&src))
                .await
                .map_err(|e| AdminError::internal(None, format!("reading the tokenizer: {e}")))?;
            let codec = opened.map_err(|e| {
                let why = format!(
                    "model `{model}`: reading the tokenizer of {}: {e}",
                    dep.spec.source.display()
                );
                AdminError::internal(Some("source"), why)
            })?;
            self.codecs.insert(&model, Arc::new(codec));
        }
        self.engine.load_version(dep).await?;
        Ok(())
    }

    /// The settings to (re)load `version` with, if it is known at all.
    fn deployment_of(&self, model: &str, version: &str) -> Option<ModelDeployment> {
        let k = key(model, version);
        let added = lock(&self.added)
            .get(&k)
            .map(|s| s.deployment(model, version));
        added
            .or_else(|| self.engine.version_deployment(model, version))
            .or_else(|| {
                self.configured
                    .get(&k)
                    .map(|c| c.deployment(model, version))
            })
    }

    /// Loads `version` if it is not loaded (unloaded, failed, or only
    /// configured); a loaded one (even still loading) is left to the caller.
    async fn ensure_loaded(&self, model: &str, version: &str) -> Result<(), AdminError> {
        if self.state(model, version).is_some_and(|s| s.is_loaded()) {
            return Ok(());
        }
        let Some(dep) = self.deployment_of(model, version) else {
            if self.status().iter().any(|m| m.model == model) {
                let v = version.to_string();
                return Err(ManageError::UnknownVersion {
                    model: model.into(),
                    version: v,
                }
                .into());
            }
            return Err(ManageError::UnknownModel(model.to_string()).into());
        };
        self.load_deployment(dep).await
    }

    /// New requests go to `version` (loaded first if needed); the previous
    /// active version drains, then unloads unless `keep_previous_warm`.
    pub async fn activate(
        &self,
        model: &str,
        version: &str,
        keep_previous_warm: bool,
    ) -> Result<(), AdminError> {
        self.ensure_loaded(model, version).await?;
        self.engine
            .activate(model, version, keep_previous_warm)
            .await?;
        self.persist();
        Ok(())
    }

    /// Activates the previous version (reloaded first if it was unloaded).
    pub async fn rollback(&self, model: &str, keep_previous_warm: bool) -> Result<(), AdminError> {
        let status = self.model_status(model)?;
        let prev = status
            .previous
            .ok_or_else(|| ManageError::NoPrevious(model.to_string()))?;
        self.ensure_loaded(model, &prev).await?;
        self.engine.rollback(model, keep_previous_warm).await?;
        self.persist();
        Ok(())
    }

    /// `weight`% of new requests to `version` (loaded first if needed).
    pub async fn set_canary(
        &self,
        model: &str,
        version: &str,
        weight: u32,
    ) -> Result<(), AdminError> {
        if weight > 100 {
            return Err(ManageError::InvalidWeight(weight).into());
        }
        self.model_status(model)?;
        // A draining version takes no new requests: let it finish unloading,
        // then load it again as a standby.
        let t0 = Instant::now();
        while self.state(model, version) == Some(VersionState::Draining)
            && t0.elapsed() < SETTLE_TIMEOUT
        {
            tokio::time::sleep(SETTLE_POLL).await;
        }
        self.ensure_loaded(model, version).await?;
        self.engine.set_canary(model, version, weight)?;
        self.persist();
        Ok(())
    }

    pub fn clear_canary(&self, model: &str) -> Result<(), AdminError> {
        self.engine.clear_canary(model)?;
        self.persist();
        Ok(())
    }

    /// Unloads a standby version (drained first); an unloaded or failed one
    /// is forgotten, with its persisted settings.
    pub async fn unload(&self, model: &str, version: &str) -> Result<(), AdminError> {
        self.engine.unload(model, version).await?;
        if self.state(model, version).is_none() {
            lock(&self.added).remove(&key(model, version));
        }
        self.persist();
        Ok(())
    }

    /// Drains and removes the whole model (a configured one comes back at
    /// the next start).
    pub async fn remove(&self, model: &str) -> Result<(), AdminError> {
        self.engine.remove_model(model).await?;
        self.codecs.remove(model);
        lock(&self.added).retain(|(m, _), _| m != model);
        self.persist();
        Ok(())
    }

    /// Writes the current routing to `routing.json`; a failure is logged
    /// (the change itself is made and serving).
    pub fn persist(&self) {
        let _guard = lock(&self.persist_lock);
        let versions = lock(&self.added)
            .iter()
            .map(|((m, v), s)| PersistedVersion {
                model: m.clone(),
                version: v.clone(),
                settings: s.clone(),
            })
            .collect();
        let r = PersistedRouting {
            format: FORMAT,
            routing: self.engine.snapshot(),
            versions,
        };
        if let Err(e) = self.store.save(&r) {
            eprintln!(
                "warning: persisting the routing to {} failed: {e}",
                self.store.path().display()
            );
        }
    }

    /// At start, once the configured loads are done: loads what the
    /// persisted routing needs (active and canary versions), lists the other
    /// persisted versions as unloaded, and re-applies the routing. What
    /// cannot be restored is logged and skipped; readiness waits for this.
    pub async fn restore_persisted(&self) {
        let persisted = match self.store.load() {
            Ok(Some(p)) => p,
            Ok(None) => return self.restoring.store(false, Ordering::SeqCst),
            Err(e) => {
                eprintln!("warning: not restoring the routing: {e}");
                return self.restoring.store(false, Ordering::SeqCst);
            }
        };
        self.wait_settled().await;
        {
            let mut added = lock(&self.added);
            for v in &persisted.versions {
                added.insert(key(&v.model, &v.version), v.settings.clone());
            }
        }
        for m in &persisted.routing.models {
            let canary = m.canary.as_ref().map(|c| &c.version);
            for v in m.active.iter().chain(canary) {
                if let Err(e) = self.ensure_loaded(&m.model, v).await {
                    eprintln!("warning: restoring model `{}` version `{v}`: {e}", m.model);
                }
            }
        }
        for v in &persisted.versions {
            let _ = self
                .engine
                .register_version(&v.settings.deployment(&v.model, &v.version));
        }
        if let Err(e) = self.engine.restore(&persisted.routing).await {
            eprintln!("warning: {e}");
        }
        self.restoring.store(false, Ordering::SeqCst);
        self.persist();
        eprintln!("routing restored from {}", self.store.path().display());
    }

    /// Waits until no version is loading or warming up.
    async fn wait_settled(&self) {
        let t0 = Instant::now();
        let busy = |s: &VersionState| matches!(s, VersionState::Loading | VersionState::Warming);
        while self
            .status()
            .iter()
            .any(|m| m.versions.iter().any(|v| busy(&v.state)))
        {
            if t0.elapsed() > SETTLE_TIMEOUT {
                eprintln!(
                    "warning: models still loading after {SETTLE_TIMEOUT:?}; restoring anyway"
                );
                return;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}
