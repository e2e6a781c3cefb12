//! One model's deployment as plain state: its versions and their lifecycle
//! (loading -> warming -> ready -> draining -> unloaded, or failed), which
//! version is active, which one was active before (for rollback), the canary
//! split, and the routing decision that picks a version for each new request.
//! The router keeps one `Deployment` per model behind the model's lock, so a
//! switch of the active version is atomic with respect to routing: a request
//! is routed either before it (old version) or after it (new version), and a
//! running request stays on the replica it was sent to. No actors here; the
//! async orchestration lives in `manage`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::ModelDeployment;
use crate::request::SubmitError;

/// Canary buckets: weights are percentages.
pub const BUCKETS: u64 = 100;
/// Step between consecutive session-less requests' buckets: coprime with
/// `BUCKETS`, so every run of 100 requests visits each bucket once (the split
/// is exact over 100) while canary requests are spread, not bunched.
const BUCKET_STRIDE: u64 = 61;

/// Where a version is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionState {
    /// Weights are being loaded onto the devices.
    Loading,
    /// Loaded; a short internal generation runs on each replica.
    Warming,
    /// Serves traffic if active, canary or pinned; otherwise a warm standby.
    Ready,
    /// Takes no new requests; unloaded once its running requests finish.
    Draining,
    /// Weights and KV pool released.
    Unloaded,
    /// The load or warm-up failed (why); nothing of it stays loaded.
    Failed(String),
}

impl VersionState {
    /// Weights may be on the devices (memory held).
    pub fn is_loaded(&self) -> bool {
        matches!(
            self,
            VersionState::Loading
                | VersionState::Warming
                | VersionState::Ready
                | VersionState::Draining
        )
    }
}

impl std::fmt::Display for VersionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionState::Loading => f.write_str("loading"),
            VersionState::Warming => f.write_str("warming"),
            VersionState::Ready => f.write_str("ready"),
            VersionState::Draining => f.write_str("draining"),
            VersionState::Unloaded => f.write_str("unloaded"),
            VersionState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// A canary: this share of a model's new requests goes to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub version: String,
    /// 0..=100.
    pub weight_percent: u32,
}

/// Routing wishes of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteHints {
    /// e.g. x-session-id: the same session always gets the same side of a
    /// canary split (as long as the split is unchanged).
    pub session_id: Option<String>,
    /// Pin to this version (it must be ready, active or not).
    pub version: Option<String>,
}

/// One model's routing state, as persisted across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRouting {
    pub model: String,
    pub active: Option<String>,
    pub canary: Option<Canary>,
}

/// Every model's routing state (`Engine::snapshot` / `Engine::restore`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    pub models: Vec<ModelRouting>,
}

/// Why a management operation was refused or failed. Messages name the
/// model and version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManageError {
    #[error("model `{0}` is not served here")]
    UnknownModel(String),
    #[error("model `{model}` has no version `{version}`")]
    UnknownVersion { model: String, version: String },
    #[error("model `{model}` version `{version}` already exists ({state}); unload it first")]
    AlreadyLoaded {
        model: String,
        version: String,
        state: String,
    },
    #[error("model `{model}` version `{version}` is {state}, not ready")]
    NotReady {
        model: String,
        version: String,
        state: String,
    },
    #[error("model `{model}` version `{version}` is the active version; activate another one first or remove the model")]
    IsActive { model: String, version: String },
    #[error("model `{model}` version `{version}` is the canary; clear the canary first")]
    IsCanary { model: String, version: String },
    #[error("model `{0}` has no previous version to roll back to")]
    NoPrevious(String),
    #[error("model `{model}` previous version `{version}` was unloaded; load it again, then activate it")]
    PreviousUnloaded { model: String, version: String },
    #[error("model `{0}` has no active version")]
    NoActive(String),
    #[error("model `{model}` version `{version}` is {state}; wait for it to finish")]
    Busy {
        model: String,
        version: String,
        state: String,
    },
    #[error("canary weight must be in 0..=100, got {0}")]
    InvalidWeight(u32),
    #[error("model `{model}` version `{version}` failed to load: {reason}")]
    LoadFailed {
        model: String,
        version: String,
        reason: String,
    },
    #[error("restored what could be restored; skipped: {}", .0.join("; "))]
    PartialRestore(Vec<String>),
}

/// One version of a model.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub deployment: ModelDeployment,
    pub state: VersionState,
}

impl VersionRecord {
    pub fn version(&self) -> &str {
        &self.deployment.spec.version
    }

    pub fn source(&self) -> &PathBuf {
        &self.deployment.spec.source
    }
}

/// A model's versions and its routing choices.
#[derive(Debug, Clone)]
pub struct Deployment {
    model: String,
    /// In load order.
    versions: Vec<VersionRecord>,
    active: Option<String>,
    /// The version active before the current one (rollback target).
    previous: Option<String>,
    canary: Option<Canary>,
    /// Being removed: routes nothing, then disappears.
    removing: bool,
    /// Session-less requests routed so far (their canary bucket).
    unsessioned: u64,
}

impl Deployment {
    pub fn new(model: &str) -> Deployment {
        Deployment {
            model: model.to_string(),
            versions: Vec::new(),
            active: None,
            previous: None,
            canary: None,
            removing: false,
            unsessioned: 0,
        }
    }

    pub fn versions(&self) -> &[VersionRecord] {
        &self.versions
    }

    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    pub fn previous(&self) -> Option<&str> {
        self.previous.as_deref()
    }

    pub fn canary(&self) -> Option<&Canary> {
        self.canary.as_ref()
    }

    pub fn is_removing(&self) -> bool {
        self.removing
    }

    pub fn state(&self, version: &str) -> Option<&VersionState> {
        self.record(version).map(|r| &r.state)
    }

    fn record(&self, version: &str) -> Option<&VersionRecord> {
        self.versions.iter().find(|r| r.version() == version)
    }

    fn record_mut(&mut self, version: &str) -> Result<&mut VersionRecord, ManageError> {
        let model = self.model.clone();
        self.versions
            .iter_mut()
            .find(|r| r.version() == version)
            .ok_or_else(|| ManageError::UnknownVersion {
                model,
                version: version.to_string(),
            })
    }

    /// The active version is designated and ready (the replicas are the
    /// router's to check).
    pub fn is_ready(&self) -> bool {
        !self.removing
            && self
                .active
                .as_deref()
                .is_some_and(|v| self.state(v) == Some(&VersionState::Ready))
    }

    /// Records a new version in `Loading`. A version that exists unloaded or
    /// failed is replaced; a loaded one is refused.
    pub fn begin_load(&mut self, dep: &ModelDeployment) -> Result<(), ManageError> {
        let version = dep.spec.version.as_str();
        if self.removing {
            return Err(ManageError::UnknownModel(self.model.clone()));
        }
        if let Some(r) = self.record(version) {
            if r.state.is_loaded() {
                return Err(ManageError::AlreadyLoaded {
                    model: self.model.clone(),
                    version: version.to_string(),
                    state: r.state.to_string(),
                });
            }
        }
        self.versions.retain(|r| r.version() != version);
        self.versions.push(VersionRecord {
            deployment: dep.clone(),
            state: VersionState::Loading,
        });
        Ok(())
    }

    /// Lists a version that is known (e.g. configured) but not loaded, in
    /// state `Unloaded`, so it can be loaded later from its record (see
    /// `Engine::version_deployment`). Returns false, changing nothing, if
    /// the version is already listed.
    pub fn register_unloaded(&mut self, dep: &ModelDeployment) -> Result<bool, ManageError> {
        if self.removing {
            return Err(ManageError::UnknownModel(self.model.clone()));
        }
        if self.record(&dep.spec.version).is_some() {
            return Ok(false);
        }
        self.versions.push(VersionRecord {
            deployment: dep.clone(),
            state: VersionState::Unloaded,
        });
        Ok(true)
    }

    /// The settings `version` was (or is to be) loaded with.
    pub fn deployment_of(&self, version: &str) -> Option<&ModelDeployment> {
        self.record(version).map(|r| &r.deployment)
    }

    /// Makes `version` the active one before it is ready (configuration at
    /// start: the first listed version of a model).
    pub fn designate_active(&mut self, version: &str) {
        self.active = Some(version.to_string());
    }

    pub fn set_state(&mut self, version: &str, state: VersionState) -> Result<(), ManageError> {
        self.record_mut(version)?.state = state;
        Ok(())
    }

    /// The version is loaded and warm: ready, and active if the model has no
    /// active version yet (a model added at run time). Returns whether it
    /// became active.
    pub fn finish_load(&mut self, version: &str) -> Result<bool, ManageError> {
        self.set_state(version, VersionState::Ready)?;
        if self.active.is_none() {
            self.active = Some(version.to_string());
            return Ok(true);
        }
        Ok(false)
    }

    /// Switches new requests to `version` (ready, or draining and not yet
    /// unloaded: it is revived). The previous active version becomes a ready
    /// standby if `keep_previous_warm`, else draining; it is returned when it
    /// must be drained and unloaded. Any canary is cleared (it was a split
    /// against the old active version).
    pub fn activate(
        &mut self,
        version: &str,
        keep_previous_warm: bool,
    ) -> Result<Option<String>, ManageError> {
        let model = self.model.clone();
        if self.removing {
            return Err(ManageError::UnknownModel(model));
        }
        let rec = self.record_mut(version)?;
        if !matches!(rec.state, VersionState::Ready | VersionState::Draining) {
            return Err(ManageError::NotReady {
                model,
                version: version.to_string(),
                state: rec.state.to_string(),
            });
        }
        rec.state = VersionState::Ready;
        self.canary = None;
        if self.active.as_deref() == Some(version) {
            return Ok(None);
        }
        let old = self.active.replace(version.to_string());
        self.previous = old.clone();
        let Some(old) = old else {
            return Ok(None);
        };
        if keep_previous_warm {
            return Ok(None);
        }
        // The old active version exists: it was activated from a record.
        self.set_state(&old, VersionState::Draining)?;
        Ok(Some(old))
    }

    /// `activate` of the previous active version.
    pub fn rollback(&mut self, keep_previous_warm: bool) -> Result<Option<String>, ManageError> {
        let Some(prev) = self.previous.clone() else {
            return Err(ManageError::NoPrevious(self.model.clone()));
        };
        match self.state(&prev) {
            Some(VersionState::Ready | VersionState::Draining) => {
                self.activate(&prev, keep_previous_warm)
            }
            _ => Err(ManageError::PreviousUnloaded {
                model: self.model.clone(),
                version: prev,
            }),
        }
    }

    /// Splits new requests: `weight_percent` go to `version` (ready, not the
    /// active one), the rest to the active version.
    pub fn set_canary(&mut self, version: &str, weight_percent: u32) -> Result<(), ManageError> {
        if weight_percent as u64 > BUCKETS {
            return Err(ManageError::InvalidWeight(weight_percent));
        }
        if self.removing {
            return Err(ManageError::UnknownModel(self.model.clone()));
        }
        let Some(active) = self.active.clone() else {
            return Err(ManageError::NoActive(self.model.clone()));
        };
        let state = self.record_mut(version)?.state.clone();
        if state != VersionState::Ready {
            return Err(ManageError::NotReady {
                model: self.model.clone(),
                version: version.to_string(),
                state: state.to_string(),
            });
        }
        if active == version {
            return Err(ManageError::IsActive {
                model: self.model.clone(),
                version: version.to_string(),
            });
        }
        self.canary = Some(Canary {
            version: version.to_string(),
            weight_percent,
        });
        Ok(())
    }

    pub fn clear_canary(&mut self) {
        self.canary = None;
    }

    /// Takes `version` out of service for unloading. Returns whether it has
    /// replicas to drain and unload (`false`: an unloaded or failed record,
    /// now forgotten).
    pub fn begin_unload(&mut self, version: &str) -> Result<bool, ManageError> {
        let model = self.model.clone();
        let is = |v: Option<&str>| v == Some(version);
        if is(self.active.as_deref()) && !self.removing {
            return Err(ManageError::IsActive {
                model,
                version: version.into(),
            });
        }
        if is(self.canary.as_ref().map(|c| c.version.as_str())) {
            return Err(ManageError::IsCanary {
                model,
                version: version.into(),
            });
        }
        let rec = self.record_mut(version)?;
        match rec.state {
            VersionState::Loading | VersionState::Warming => Err(ManageError::Busy {
                model,
                version: version.into(),
                state: rec.state.to_string(),
            }),
            VersionState::Ready | VersionState::Draining => {
                rec.state = VersionState::Draining;
                Ok(true)
            }
            VersionState::Unloaded | VersionState::Failed(_) => {
                self.versions.retain(|r| r.version() != version);
                Ok(false)
            }
        }
    }

    /// The drained version's replicas are about to be unloaded: `Unloaded`,
    /// unless it was revived (activated again) meanwhile, then `false`.
    pub fn finish_unload(&mut self, version: &str) -> bool {
        match self.record_mut(version) {
            Ok(rec) if rec.state == VersionState::Draining => {
                rec.state = VersionState::Unloaded;
                true
            }
            _ => false,
        }
    }

    /// Stops routing anything (new requests see an unknown model) and marks
    /// every loaded version draining. Refused while a version is loading.
    /// Returns the versions to drain and unload.
    pub fn begin_remove(&mut self) -> Result<Vec<String>, ManageError> {
        if let Some(r) = self
            .versions
            .iter()
            .find(|r| matches!(r.state, VersionState::Loading | VersionState::Warming))
        {
            return Err(ManageError::Busy {
                model: self.model.clone(),
                version: r.version().to_string(),
                state: r.state.to_string(),
            });
        }
        self.removing = true;
        self.active = None;
        self.previous = None;
        self.canary = None;
        let mut out = Vec::new();
        for r in &mut self.versions {
            if r.state.is_loaded() {
                r.state = VersionState::Draining;
                out.push(r.version().to_string());
            }
        }
        Ok(out)
    }

    /// The version a new request goes to: the pinned one (if ready), else
    /// the canary for its share of buckets, else the active version.
    pub fn route(&mut self, hints: &RouteHints) -> Result<String, SubmitError> {
        if self.removing {
            return Err(SubmitError::UnknownModel(self.model.clone()));
        }
        if let Some(v) = &hints.version {
            return self.route_pinned(v);
        }
        if let Some(c) = &self.canary {
            if self.state(&c.version) == Some(&VersionState::Ready) {
                let bucket = match &hints.session_id {
                    Some(s) => session_bucket(s),
                    None => {
                        let n = self.unsessioned;
                        self.unsessioned = self.unsessioned.wrapping_add(1);
                        n.wrapping_mul(BUCKET_STRIDE) % BUCKETS
                    }
                };
                if bucket < c.weight_percent as u64 {
                    return Ok(c.version.clone());
                }
            }
        }
        match self.active.as_deref() {
            Some(v) if self.state(v) == Some(&VersionState::Ready) => Ok(v.to_string()),
            _ => Err(SubmitError::NotReady(self.model.clone())),
        }
    }

    fn route_pinned(&self, version: &str) -> Result<String, SubmitError> {
        let invalid = |why: String| SubmitError::Invalid {
            field: "version",
            message: why,
        };
        match self.state(version) {
            Some(VersionState::Ready) => Ok(version.to_string()),
            Some(VersionState::Loading | VersionState::Warming | VersionState::Draining) => {
                Err(SubmitError::NotReady(self.model.clone()))
            }
            Some(state) => Err(invalid(format!(
                "model `{}` version `{version}` is {state}",
                self.model
            ))),
            None => Err(invalid(format!(
                "model `{}` has no version `{version}`",
                self.model
            ))),
        }
    }

    pub fn routing(&self) -> ModelRouting {
        ModelRouting {
            model: self.model.clone(),
            active: self.active.clone(),
            canary: self.canary.clone(),
        }
    }
}

/// A session's canary bucket: stable across processes and releases (FNV-1a,
/// then a splitmix64 finalizer so similar ids spread evenly).
pub fn session_bucket(session: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ModelSpec, Quantization};

    fn dep(version: &str) -> ModelDeployment {
        ModelDeployment {
            spec: ModelSpec {
                name: "m".into(),
                version: version.into(),
                source: PathBuf::from(format!("/models/{version}")),
                dtype: "bf16".into(),
                kv_budget_bytes: 1,
                block_size: 4,
                max_context: None,
                quantization: Quantization::None,
            },
            devices: vec!["cpu".into()],
            max_num_seqs: 1,
            max_batched_tokens: 1,
            enable_prefix_caching: false,
            max_queue_requests: 1,
            max_queue_tokens: 1,
        }
    }

    /// v1 active and ready, the others ready standbys.
    fn deployment(versions: &[&str]) -> Deployment {
        let mut d = Deployment::new("m");
        for v in versions {
            d.begin_load(&dep(v)).unwrap();
            d.finish_load(v).unwrap();
        }
        d
    }

    fn route(d: &mut Deployment) -> String {
        d.route(&RouteHints::default()).unwrap()
    }

    #[test]
    fn first_ready_version_becomes_active_and_loading_is_not_routed() {
        let mut d = Deployment::new("m");
        d.begin_load(&dep("v1")).unwrap();
        assert_eq!(
            d.route(&RouteHints::default()),
            Err(SubmitError::NotReady("m".into()))
        );
        assert!(!d.is_ready());
        assert_eq!(d.finish_load("v1"), Ok(true));
        assert!(d.is_ready());
        d.begin_load(&dep("v2")).unwrap();
        assert_eq!(
            d.finish_load("v2"),
            Ok(false),
            "a second version is a standby"
        );
        assert_eq!(route(&mut d), "v1");
        assert!(matches!(
            d.begin_load(&dep("v2")),
            Err(ManageError::AlreadyLoaded { .. })
        ));
    }

    #[test]
    fn activate_drains_or_keeps_the_old_version_and_rollback_reverses() {
        let mut d = deployment(&["v1", "v2"]);
        assert_eq!(d.activate("v2", true), Ok(None));
        assert_eq!(
            (route(&mut d), d.state("v1")),
            ("v2".into(), Some(&VersionState::Ready))
        );
        assert_eq!(d.rollback(false), Ok(Some("v2".into())));
        assert_eq!(route(&mut d), "v1");
        assert_eq!(d.state("v2"), Some(&VersionState::Draining));
        // Rolling back to a draining version revives it (not yet unloaded).
        assert_eq!(d.rollback(false), Ok(Some("v1".into())));
        assert_eq!(d.state("v2"), Some(&VersionState::Ready));
        assert!(d.finish_unload("v1"));
        assert!(!d.finish_unload("v2"), "only a draining version unloads");
        assert_eq!(
            d.rollback(true),
            Err(ManageError::PreviousUnloaded {
                model: "m".into(),
                version: "v1".into()
            })
        );
        assert_eq!(
            deployment(&["v1"]).rollback(true),
            Err(ManageError::NoPrevious("m".into()))
        );
        assert!(matches!(
            d.activate("v9", true),
            Err(ManageError::UnknownVersion { .. })
        ));
        assert!(matches!(
            d.activate("v1", true),
            Err(ManageError::NotReady { .. })
        ));
    }

    #[test]
    fn a_revived_version_is_not_unloaded() {
        let mut d = deployment(&["v1", "v2"]);
        assert_eq!(d.activate("v2", false), Ok(Some("v1".into())));
        assert_eq!(d.activate("v1", true), Ok(None));
        assert!(!d.finish_unload("v1"), "activated again while draining");
        assert_eq!(route(&mut d), "v1");
    }

    #[test]
    fn canary_split_is_exact_per_100_session_less_requests() {
        let mut d = deployment(&["v1", "v2"]);
        d.set_canary("v2", 20).unwrap();
        let n = (0..500).filter(|_| route(&mut d) == "v2").count();
        assert_eq!(n, 100);
        // Spread, not bunched: no run of 10 is all canary.
        let seq: Vec<bool> = (0..100).map(|_| route(&mut d) == "v2").collect();
        assert!(seq.windows(10).all(|w| w.iter().any(|c| !c)));
        d.clear_canary();
        assert!((0..50).all(|_| route(&mut d) == "v1"));
    }

    #[test]
    fn sessions_are_sticky_and_spread() {
        let mut d = deployment(&["v1", "v2"]);
        d.set_canary("v2", 30).unwrap();
        let hints = |s: String| RouteHints {
            session_id: Some(s),
            version: None,
        };
        let mut canary = 0;
        for i in 0..1000 {
            let h = hints(format!("session-{i}"));
            let first = d.route(&h).unwrap();
            for _ in 0..3 {
                assert_eq!(d.route(&h).unwrap(), first, "sticky");
            }
            canary += (first == "v2") as usize;
        }
        assert!((250..=350).contains(&canary), "{canary}");
    }

    #[test]
    fn canary_and_unload_rules() {
        let mut d = deployment(&["v1", "v2", "v3"]);
        assert_eq!(
            d.set_canary("v2", 101),
            Err(ManageError::InvalidWeight(101))
        );
        assert!(matches!(
            d.set_canary("v1", 10),
            Err(ManageError::IsActive { .. })
        ));
        d.set_canary("v2", 10).unwrap();
        assert!(matches!(
            d.begin_unload("v2"),
            Err(ManageError::IsCanary { .. })
        ));
        assert!(matches!(
            d.begin_unload("v1"),
            Err(ManageError::IsActive { .. })
        ));
        assert_eq!(d.begin_unload("v3"), Ok(true));
        assert!(matches!(
            d.set_canary("v3", 10),
            Err(ManageError::NotReady { .. })
        ));
        assert!(d.finish_unload("v3"));
        assert_eq!(d.begin_unload("v3"), Ok(false), "forgotten");
        assert_eq!(d.state("v3"), None);
        // Activating the canary promotes it and clears the split.
        assert_eq!(d.activate("v2", false), Ok(Some("v1".into())));
        assert_eq!(d.canary(), None);
    }

    #[test]
    fn pinning_needs_a_ready_version() {
        let mut d = deployment(&["v1", "v2"]);
        let pin = |v: &str| RouteHints {
            session_id: None,
            version: Some(v.into()),
        };
        assert_eq!(d.route(&pin("v2")), Ok("v2".into()));
        assert!(matches!(
            d.route(&pin("v9")),
            Err(SubmitError::Invalid {
                field: "version",
                ..
            })
        ));
        d.begin_unload("v2").unwrap();
        assert_eq!(d.route(&pin("v2")), Err(SubmitError::NotReady("m".into())));
        d.finish_unload("v2");
        assert!(matches!(
            d.route(&pin("v2")),
            Err(SubmitError::Invalid {
                field: "version",
                ..
            })
        ));
    }

    #[test]
    fn registered_versions_are_unloaded_until_loaded() {
        let mut d = deployment(&["v1"]);
        assert_eq!(d.register_unloaded(&dep("v2")), Ok(true));
        assert_eq!(d.register_unloaded(&dep("v2")), Ok(false), "listed once");
        assert_eq!(d.register_unloaded(&dep("v1")), Ok(false), "loaded stays");
        assert_eq!(d.state("v2"), Some(&VersionState::Unloaded));
        assert_eq!(d.state("v1"), Some(&VersionState::Ready));
        assert_eq!(
            d.deployment_of("v2").map(|r| r.spec.source.clone()),
            Some(PathBuf::from("/models/v2"))
        );
        assert!(matches!(
            d.activate("v2", false),
            Err(ManageError::NotReady { .. })
        ));
        assert_eq!(route(&mut d), "v1");
        d.begin_load(&dep("v2")).unwrap();
        d.finish_load("v2").unwrap();
        assert_eq!(d.activate("v2", false), Ok(Some("v1".into())));
    }

    #[test]
    fn remove_drains_everything_and_refuses_while_loading() {
        let mut d = deployment(&["v1", "v2"]);
        d.begin_load(&dep("v3")).unwrap();
        assert!(matches!(d.begin_remove(), Err(ManageError::Busy { .. })));
        d.set_state("v3", VersionState::Failed("bad file".into()))
            .unwrap();
        assert_eq!(
            d.begin_remove(),
            Ok(vec!["v1".to_string(), "v2".to_string()])
        );
        assert_eq!(
            d.route(&RouteHints::default()),
            Err(SubmitError::UnknownModel("m".into()))
        );
        assert!(!d.is_ready());
    }
}
