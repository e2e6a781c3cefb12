//! Test doubles for handler unit tests: a byte-level [`FakeCodec`] and a
//! [`FakeBackend`] whose generations answer at once with the letters
//! `a, b, c, ...` (one token each) up to `max_tokens`, or refuse as told.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{self, BoxFuture, FutureExt};
use inferd_actors::request::{Event, Finish, GenerateRequest, ReplicaStats, SubmitError, Usage};

use super::backend::{Backend, Generation, ModelInfo, ModelLimits};
use super::codec::Codec;
use crate::model::chat_template::ChatMessage;

/// One token per byte; chat renders `role: content\n` per message.
pub struct FakeCodec;

impl Codec for FakeCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
        let text: String = messages
            .iter()
            .map(|m| format!("{}: {}\n", m.role, m.content))
            .collect();
        self.encode(&text)
    }
    fn token_text(&self, id: u32) -> String {
        char::from_u32(id).map(String::from).unwrap_or_default()
    }
    fn is_special(&self, id: u32) -> bool {
        id == 0
    }
}

#[derive(Default)]
pub struct FakeBackend {
    pub overloaded: AtomicBool,
    pub submitted: Mutex<Vec<GenerateRequest>>,
    pub cancelled: Arc<AtomicU64>,
    next_id: AtomicU64,
}

pub const FAKE_MODEL: &str = "fake";
pub const FAKE_LIMITS: ModelLimits = ModelLimits {
    max_context: 64,
    vocab_size: 300,
};

impl Backend for FakeBackend {
    fn submit(&self, req: GenerateRequest) -> BoxFuture<'static, Result<Generation, SubmitError>> {
        if self.overloaded.load(Ordering::SeqCst) {
            let e = SubmitError::Overloaded {
                model: req.model,
                reason: "queue full".into(),
                retry_after_secs: 3,
            };
            return future::ready(Err(e)).boxed();
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let want = req.sampling.logprobs.unwrap_or(0) as usize;
        for i in 0..req.max_tokens {
            let token = u32::from(b'a') + (i % 26) as u32;
            let top = (0..want as u32)
                .map(|k| (token + k, -0.5 - k as f32))
                .collect();
            let text = char::from_u32(token).map(String::from).unwrap_or_default();
            let _ = tx.send(Event::Token {
                token,
                text,
                logprob: -0.5,
                top_logprobs: top,
            });
        }
        let usage = Usage {
            prompt_tokens: req.prompt.len(),
            completion_tokens: req.max_tokens,
            cached_tokens: 0,
        };
        let seed = req.sampling.seed.unwrap_or(42);
        let _ = tx.send(Event::Done {
            finish: Finish::Length,
            usage,
            seed,
            model: req.model.clone(),
            version: "v1".into(),
        });
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let cancelled = self.cancelled.clone();
        let g = Generation::new(id, req.model.clone(), "v1".into(), rx, move || {
            cancelled.fetch_add(1, Ordering::SeqCst);
        });
        if let Ok(mut s) = self.submitted.lock() {
            s.push(req);
        }
        future::ready(Ok(g)).boxed()
    }

    fn stats(&self) -> BoxFuture<'static, Vec<ReplicaStats>> {
        future::ready(vec![ReplicaStats {
            model: FAKE_MODEL.into(),
            version: "v1".into(),
            device: "cpu".into(),
            num_blocks: 8,
            free_blocks: 8,
            ..Default::default()
        }])
        .boxed()
    }

    fn limits(&self, model: &str) -> Option<ModelLimits> {
        (model == FAKE_MODEL).then_some(FAKE_LIMITS)
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            name: FAKE_MODEL.into(),
            version: "v1".into(),
            ready: true,
        }]
    }

    fn is_ready(&self) -> bool {
        true
    }
}
