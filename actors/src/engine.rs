//! The engine handle: the in-process API the HTTP layer and the CLI use.
//! It is thin: admission and routing go to the shared [`Router`], lifecycle
//! to the [`Supervisor`] actor, per-request commands and stats to the
//! batchers. Cloning is cheap; all clones drive the same engine. Model
//! management (load / activate / rollback / canary / unload, snapshots) is
//! in `manage`, as more methods on this handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Recipient};

use crate::batcher::{Cancel, GetStats};
use crate::deployment::RouteHints;
use crate::executor::{Executor, ModelSpec, ReplicaInfo};
use crate::request::{Event, GenerateRequest, ReplicaStats, SubmitError};
use crate::router::{QueueLimits, Router};
use crate::supervisor::{Health, LoadVersion, Supervisor, UnloadVersion, WorkerFailed};

pub use crate::worker::ExecutorFactory;

/// How often `wait_ready` looks at the load state.
const READY_POLL: Duration = Duration::from_millis(10);

/// Per-model serving settings (one entry per model; the replicas are its devices).
#[derive(Debug, Clone)]
pub struct ModelDeployment {
    pub spec: ModelSpec,
    /// e.g. ["cpu"] or ["cuda:0","cuda:1"]: one replica per device.
    pub devices: Vec<String>,
    /// Scheduler: running sequences per step.
    pub max_num_seqs: usize,
    /// Scheduler: token budget per step.
    pub max_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    /// Admission: waiting requests per model (all replicas) before Overloaded.
    pub max_queue_requests: usize,
    /// Admission: waiting prompt tokens per model before Overloaded.
    pub max_queue_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub devices: Vec<String>,
    /// Several entries may share a `spec.name` with different
    /// `spec.version`s: the FIRST listed per name is the model's active
    /// version, the others load as ready standbys (no traffic until
    /// activated, pinned or made a canary). A repeated (name, version) is a
    /// load error. Queue limits are the first entry's per name.
    pub models: Vec<ModelDeployment>,
}

/// A request's id, unique in the process (also its `SeqId` in the batcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// An admitted request: its id and its event stream (`Token*` then exactly
/// one `Done` or `Error`). Dropping `events` cancels the request.
pub struct RequestHandle {
    pub id: RequestId,
    pub model: String,
    pub version: String,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

/// A handle to a running engine (cheap to clone). Must be created inside a
/// running actix System.
#[derive(Clone)]
pub struct Engine {
    pub(crate) router: Arc<Router>,
    pub(crate) health: Arc<Health>,
    /// Keeps the supervisor alive while a handle exists.
    _supervisor: Recipient<WorkerFailed>,
    /// Model management requests to the supervisor.
    pub(crate) load: Recipient<LoadVersion>,
    pub(crate) unload: Recipient<UnloadVersion>,
}

impl Engine {
    /// Starts supervisor, router, one worker per device and one batcher per
    /// (model, device); returns at once, models load in the background
    /// (`is_ready()` turns true when all loaded; a failed load is reported
    /// by `load_errors()`).
    pub fn start<E: Executor>(mut config: EngineConfig, factory: ExecutorFactory<E>) -> Engine {
        let mut limits: Vec<(String, QueueLimits)> = Vec::new();
        for m in &config.models {
            if !limits.iter().any(|(n, _)| *n == m.spec.name) {
                let l = QueueLimits {
                    max_queue_requests: m.max_queue_requests,
                    max_queue_tokens: m.max_queue_tokens,
                };
                limits.push((m.spec.name.clone(), l));
            }
        }
        let router = Arc::new(Router::new(limits));
        let health = Arc::new(Health::default());
        // Record every version (the first per name active); a repeated one
        // is reported and not loaded.
        let mut seen: Vec<String> = Vec::new();
        config.models.retain(|m| {
            let first = !seen.contains(&m.spec.name);
            seen.push(m.spec.name.clone());
            match router.begin_load(m, first) {
                Ok(()) => true,
                Err(e) => {
                    health.error(e.to_string());
                    false
                }
            }
        });
        let supervisor = Supervisor::new(config, factory, router.clone(), health.clone()).start();
        Engine {
            router,
            health,
            _supervisor: supervisor.clone().recipient(),
            load: supervisor.clone().recipient(),
            unload: supervisor.recipient(),
        }
    }

    /// Waits until every model is loaded; fails early on a load error.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let errors = self.load_errors();
            if !errors.is_empty() {
                return Err(errors.join("; "));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("models not loaded after {timeout:?}"));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Start-up loads are done without error and every model with a
    /// designated active version has it ready (a model being added by
    /// `load_version` counts once its first version is active).
    pub fn is_ready(&self) -> bool {
        self.health.is_ready() && self.router.all_ready()
    }

    /// `model` has a ready active version with a ready replica.
    pub fn model_ready(&self, model: &str) -> bool {
        self.router.model_ready(model)
    }

    pub fn load_errors(&self) -> Vec<String> {
        self.health.load_errors()
    }

    /// Admits a request (least-loaded replica, prefix affinity, admission
    /// control). On success the stream yields `Event::Token*` then exactly
    /// one `Event::Done` or `Event::Error`. Dropping the receiver cancels.
    pub async fn submit(&self, req: GenerateRequest) -> Result<RequestHandle, SubmitError> {
        self.router.submit(req)
    }

    /// `submit` with routing hints: `version` pins a ready version (unknown
    /// or unloaded: `SubmitError::Invalid { field: "version" }`; loading or
    /// draining: `NotReady`); `session_id` keeps a session on one side of a
    /// canary split. `RequestHandle::version` and `Event::Done::version`
    /// name the version that serves it.
    pub async fn submit_with(
        &self,
        req: GenerateRequest,
        hints: RouteHints,
    ) -> Result<RequestHandle, SubmitError> {
        self.router.submit_with(req, &hints)
    }

    /// Cancels a request: its blocks are freed before the next step and its
    /// stream ends with `Event::Error { "cancelled" }`. Unknown ids (already
    /// finished) are ignored.
    pub fn cancel(&self, id: RequestId) {
        if let Some(batcher) = self.router.batcher_of(id) {
            batcher.do_send(Cancel { id });
        }
    }

    /// One entry per loaded replica (a replica that does not answer is left out).
    pub async fn stats(&self) -> Vec<ReplicaStats> {
        let mut out = Vec::new();
        for (_, replica) in self.router.replicas() {
            if let Ok(stats) = replica.batcher.send(GetStats).await {
                out.push(stats);
            }
        }
        out
    }

    /// Max context (prompt + output) and vocab of a model's active replica,
    /// for validation at the edge.
    pub fn model_limits(&self, model: &str) -> Option<ReplicaInfo> {
        self.router.model_limits(model)
    }

    /// Served model names, in configuration order (then models added by
    /// `load_version`; removed ones are gone).
    pub fn models(&self) -> Vec<String> {
        self.router.models()
    }

    /// Number of worker restarts so far (tests).
    /// Sizes the response cache shared by all models (0, the default,
    /// disables it). Entries are keyed by version, so swaps never mix them.
    pub fn set_response_cache_bytes(&self, bytes: usize) {
        self.router.set_response_cache_bytes(bytes);
    }

    /// (entries, bytes, hits, misses) of the response cache.
    pub fn response_cache_stats(&self) -> (usize, usize, u64, u64) {
        self.router.response_cache_stats()
    }

    pub fn worker_restarts(&self) -> u64 {
        self.health.worker_restarts()
    }
}
