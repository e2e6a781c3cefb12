//! What the HTTP handlers need from the engine, as a trait: [`Backend`]
//! (submit with routing hints, cancel, stats, per-model limits, readiness
//! and why not). The real engine is
//! adapted in `engine_backend.rs`; handler unit tests use the fake in
//! `fake.rs`. A submission yields a [`Generation`]: the event stream of one
//! sequence, which cancels that sequence when dropped before its end (a
//! client that disconnects drops it with its response body).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, Stream, StreamExt};
use inferd_actors::deployment::RouteHints;
use inferd_actors::request::{Event, GenerateRequest, ReplicaStats, SubmitError};
use tokio::sync::mpsc::UnboundedReceiver;

use super::audit::{current_ledger, Ledger};

/// Limits the edge validates against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Longest prompt + output, in tokens.
    pub max_context: usize,
    pub vocab_size: usize,
}

/// A served model, for `/v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    /// The active version label.
    pub version: String,
    pub ready: bool,
}

/// The engine as the handlers see it.
pub trait Backend: Send + Sync + 'static {
    fn submit(&self, req: GenerateRequest) -> BoxFuture<'static, Result<Generation, SubmitError>>;
    fn stats(&self) -> BoxFuture<'static, Vec<ReplicaStats>>;
    /// None for an unknown model or one whose limits are not known yet.
    fn limits(&self, model: &str) -> Option<ModelLimits>;
    fn models(&self) -> Vec<ModelInfo>;
    fn is_ready(&self) -> bool;

    /// `submit` with routing hints: a session id keeps a session on one
    /// side of a canary split, a version pins the request to that version.
    /// The default ignores them (one version only).
    fn submit_with(
        &self,
        req: GenerateRequest,
        hints: RouteHints,
    ) -> BoxFuture<'static, Result<Generation, SubmitError>> {
        let _ = hints;
        self.submit(req)
    }

    /// Why the server (`model: None`) or one model is not ready to serve;
    /// empty when it is.
    fn not_ready_reasons(&self, model: Option<&str>) -> Vec<String> {
        self.models()
            .into_iter()
            .filter(|m| model.is_none_or(|n| n == m.name) && !m.ready)
            .map(|m| format!("model `{}` version `{}` is not ready", m.name, m.version))
            .collect()
    }
}

/// Runs once if a [`Generation`] is dropped before its last event.
type CancelFn = Box<dyn FnOnce() + Send>;

/// One submitted sequence: `Event::Token*` then one `Done` or `Error`.
pub struct Generation {
    pub id: u64,
    pub model: String,
    pub version: String,
    events: UnboundedReceiver<Event>,
    /// Taken (disarmed) once the final event has been read.
    cancel: Option<CancelFn>,
    /// The audit ledger of the HTTP request that made this generation
    /// (picked up from the task-local at creation), told how it ended.
    ledger: Option<Arc<Ledger>>,
}

impl Generation {
    pub fn new(
        id: u64,
        model: String,
        version: String,
        events: UnboundedReceiver<Event>,
        cancel: impl FnOnce() + Send + 'static,
    ) -> Generation {
        Generation {
            id,
            model,
            version,
            events,
            cancel: Some(Box::new(cancel)),
            ledger: current_ledger(),
        }
    }

    /// The next event; a stream that closes without a final event yields an
    /// `Error` so callers always see an end.
    pub async fn next(&mut self) -> Option<Event> {
        self.cancel.as_ref()?;
        let ev = self.events.recv().await.unwrap_or_else(|| Event::Error {
            message: "the engine closed the stream".to_string(),
        });
        match &ev {
            Event::Done { usage, .. } => {
                self.cancel = None;
                if let Some(l) = &self.ledger {
                    l.done(&self.model, &self.version, usage.prompt_tokens, usage.completion_tokens);
                }
            }
            Event::Error { .. } => {
                self.cancel = None;
                if let Some(l) = &self.ledger {
                    l.failed();
                }
            }
            Event::Token { .. } => {}
        }
        Some(ev)
    }

    /// The events as a stream, tagged with `index`.
    pub fn into_stream(self, index: usize) -> impl Stream<Item = (usize, Event)> + Send + 'static {
        stream::unfold(self, move |mut g| async move {
            g.next().await.map(|ev| ((index, ev), g))
        })
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

/// Events of several generations, interleaved as they arrive, each tagged
/// with its position in `gens`. Dropping the stream cancels the unfinished.
pub fn merge(gens: Vec<Generation>) -> Pin<Box<dyn Stream<Item = (usize, Event)> + Send>> {
    stream::select_all(
        gens.into_iter()
            .enumerate()
            .map(|(i, g)| g.into_stream(i).boxed()),
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_actors::request::{Finish, Usage};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn generation(
        cancels: &Arc<AtomicUsize>,
    ) -> (tokio::sync::mpsc::UnboundedSender<Event>, Generation) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let c = cancels.clone();
        (
            tx,
            Generation::new(1, "m".into(), "v1".into(), rx, move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[actix_rt::test]
    async fn drop_before_end_cancels_once() {
        let cancels = Arc::new(AtomicUsize::new(0));
        let (tx, mut g) = generation(&cancels);
        tx.send(Event::Token {
            token: 1,
            text: "a".into(),
            logprob: 0.0,
            top_logprobs: vec![],
        })
        .unwrap();
        assert!(matches!(g.next().await, Some(Event::Token { .. })));
        drop(g);
        assert_eq!(cancels.load(Ordering::SeqCst), 1);
    }

    #[actix_rt::test]
    async fn finished_generation_does_not_cancel() {
        let cancels = Arc::new(AtomicUsize::new(0));
        let (tx, mut g) = generation(&cancels);
        tx.send(Event::Done {
            finish: Finish::Eos,
            usage: Usage::default(),
            seed: 0,
            model: "m".into(),
            version: "v1".into(),
        })
        .unwrap();
        assert!(matches!(g.next().await, Some(Event::Done { .. })));
        assert!(g.next().await.is_none());
        drop(g);
        assert_eq!(cancels.load(Ordering::SeqCst), 0);
    }

    #[actix_rt::test]
    async fn closed_stream_ends_with_error() {
        let cancels = Arc::new(AtomicUsize::new(0));
        let (tx, mut g) = generation(&cancels);
        drop(tx);
        assert!(matches!(g.next().await, Some(Event::Error { .. })));
        assert!(g.next().await.is_none());
    }
}
