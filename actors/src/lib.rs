//! inferd-actors: the actor system (supervisor, router, batcher, worker) and
//! the plain state it drives (scheduler, block manager). It does not depend on
//! libtorch: the model side is reached through an `Executor` trait.
//!
//! State modules (plain data, unit-tested, no actors):
//! - [`ids`]: `SeqId`, `BlockId`, `BlockHash` newtypes.
//! - [`sequence`]: one request's tokens, KV progress, priority.
//! - [`block_manager`]: the paged KV pool, refcounts, prefix cache (LRU).
//! - [`scheduler`]: continuous batching with chunked prefill and preemption.
//! - [`errors`]: `NoBlocks`, `ConfigError`, `AddError`.
//! - [`deployment`]: a model's versions, their lifecycle, active / previous /
//!   canary, and the version routing decision; `ManageError`, snapshots.
//! - [`status`]: what `Engine::deployments` reports.
//! - [`sampler`]: per-sequence sampling over a logits row (own RNG per sequence).
//! - [`detok`], [`stop`]: incremental UTF-8-safe detokenization, stop strings.
//!
//! Actors (thin shells over that state; see each module's doc):
//! - [`worker`]: one per device on its own OS thread, owns the `Executor`.
//! - [`batcher`]: one per model replica, drives continuous batching.
//! - [`router`]: model -> replicas, load- and prefix-aware choice, admission.
//! - [`supervisor`]: starts workers, loads models, restarts failed workers.
//! - [`engine`]: the `Engine` handle, the crate's public serving API.
//! - [`manage`]: model management on the `Engine` (load, activate, rollback,
//!   canary, unload, remove, snapshot / restore).

pub mod batcher;
pub mod block_manager;
pub mod deployment;
pub mod detok;
pub mod engine;
pub mod errors;
pub mod executor;
pub mod ids;
pub mod manage;
pub mod metrics;
pub mod recent;
pub mod request;
pub mod response_cache;
pub mod router;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod status;
pub mod stop;
pub mod supervisor;
pub mod worker;

pub use block_manager::{BlockManager, SeqBlocks};
pub use deployment::{
    Canary, ManageError, ModelRouting, RouteHints, RoutingSnapshot, VersionState,
};
pub use engine::{
    Engine, EngineConfig, ExecutorFactory, ModelDeployment, RequestHandle, RequestId,
};
pub use errors::{AddError, ConfigError, NoBlocks};
pub use ids::{BlockHash, BlockId, SeqId};
pub use scheduler::{FinishedSeq, ScheduledBatch, ScheduledSeq, Scheduler, SchedulerConfig};
pub use sequence::{FinishReason, Priority, SeqStatus, Sequence};
pub use status::{ModelStatus, ReplicaStatus, VersionStatus};
