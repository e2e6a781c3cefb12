//! The real [`Backend`]: the actor engine of `inferd-actors`. A request
//! handle becomes a [`Generation`] whose early drop calls `Engine::cancel`
//! (besides dropping the receiver), so a sequence is freed even while it
//! still waits in the queue.

use std::collections::HashMap;

use futures_util::future::{BoxFuture, FutureExt};
use inferd_actors::engine::Engine;
use inferd_actors::request::{GenerateRequest, ReplicaStats, SubmitError};

use super::backend::{Backend, Generation, ModelInfo, ModelLimits};

pub struct EngineBackend {
    engine: Engine,
    /// Active version per model name (from the config).
    versions: HashMap<String, String>,
}

impl EngineBackend {
    pub fn new(engine: Engine, versions: HashMap<String, String>) -> EngineBackend {
        EngineBackend { engine, versions }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Backend for EngineBackend {
    fn submit(&self, req: GenerateRequest) -> BoxFuture<'static, Result<Generation, SubmitError>> {
        let engine = self.engine.clone();
        async move {
            let h = engine.submit(req).await?;
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
            .models()
            .into_iter()
            .map(|name| {
                let version = self.versions.get(&name).cloned().unwrap_or_default();
                let ready = self.engine.model_limits(&name).is_some();
                ModelInfo {
                    name,
                    version,
                    ready,
                }
            })
            .collect()
    }

    fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }
}
