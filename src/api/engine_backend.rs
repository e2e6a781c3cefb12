//! The real [`Backend`]: the actor engine of `inferd-actors`. A request
//! handle becomes a [`Generation`] whose early drop calls `Engine::cancel`
//! (besides dropping the receiver), so a sequence is freed even while it
//! still waits in the queue. Model names, active versions and readiness come
//! from the engine's deployments, so they follow the admin API's changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use inferd_actors::deployment::{RouteHints, VersionState};
use inferd_actors::engine::Engine;
use inferd_actors::request::{GenerateRequest, ReplicaStats, SubmitError};

use super::backend::{Backend, Generation, ModelInfo, ModelLimits};

pub struct EngineBackend {
    engine: Engine,
    /// True while the persisted routing is being re-applied at start:
    /// the server is not ready until it is done.
    restoring: Arc<AtomicBool>,
}

impl EngineBackend {
    pub fn new(engine: Engine, restoring: Arc<AtomicBool>) -> EngineBackend {
        EngineBackend { engine, restoring }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Backend for EngineBackend {
    fn submit(&self, req: GenerateRequest) -> BoxFuture<'static, Result<Generation, SubmitError>> {
        self.submit_with(req, RouteHints::default())
    }

    fn submit_with(
        &self,
        req: GenerateRequest,
        hints: RouteHints,
    ) -> BoxFuture<'static, Result<Generation, SubmitError>> {
        let engine = self.engine.clone();
        async move {
            let h = engine.submit_with(req, hints).await?;
            let id = h.id;
            let canceller = engine.clone();
            Ok(Generation::new(
                id.0,
                h.model,
                h.version,
                h.events,
                move || canceller.cancel(id),
            ))
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'static, Vec<ReplicaStats>> {
        let engine = self.engine.clone();
        async move { engine.stats().await }.boxed()
    }

    fn limits(&self, model: &str) -> Option<ModelLimits> {
        self.engine.model_limits(model).map(|i| ModelLimits {
            max_context: i.max_context,
            vocab_size: i.vocab_size,
        })
    }

    fn models(&self) -> Vec<ModelInfo> {
        self.engine
            .deployments()
            .into_iter()
            .map(|m| ModelInfo {
                ready: self.engine.model_ready(&m.model),
                version: m.active.unwrap_or_default(),
                name: m.model,
            })
            .collect()
    }

    fn is_ready(&self) -> bool {
        self.engine.is_ready() && !self.restoring.load(Ordering::SeqCst)
    }

    fn not_ready_reasons(&self, model: Option<&str>) -> Vec<String> {
        let mut reasons = Vec::new();
        for m in self.engine.deployments() {
            if model.is_some_and(|n| n != m.model) || self.engine.model_ready(&m.model) {
                continue;
            }
            // A model being added at run time holds no server readiness
            // until its first version is active.
            if model.is_none() && m.active.is_none() {
                continue;
            }
            let name = &m.model;
            let why = match m.active.as_deref() {
                None => format!("model `{name}` has no active version"),
                Some(v) => match m.version(v).map(|s| &s.state) {
                    Some(VersionState::Failed(e)) => {
                        format!("model `{name}` version `{v}` failed to load: {e}")
                    }
                    Some(VersionState::Ready) => {
                        format!("model `{name}` version `{v}` has no ready replica")
                    }
                    Some(state) => format!("model `{name}` version `{v}` is {state}"),
                    None => format!("model `{name}` version `{v}` is not listed"),
                },
            };
            reasons.push(why);
        }
        if model.is_none() {
            reasons.extend(self.engine.load_errors());
        }
        if self.restoring.load(Ordering::SeqCst) {
            reasons.push("the persisted routing (routing.json) is being restored".into());
        }
        reasons
    }
}
