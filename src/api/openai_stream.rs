//! OpenAI's streaming shapes over merged generation events. Chat:
//! `chat.completion.chunk`s with a role delta per choice first, content
//! deltas, a final chunk per choice carrying `finish_reason`, then (with
//! `stream_options.include_usage`) a chunk with empty `choices` and the
//! usage, then `data: [DONE]`. Completions: `text_completion` chunks the
//! same way. An engine error becomes a `data: {"error": ...}` event and
//! ends the stream. The body owns the generations: when the client goes
//! away actix drops the body, which cancels them.

use std::sync::Arc;

use actix_web::web::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use inferd_actors::request::Event;

use super::backend::{merge, Generation};
use super::codec::Codec;
use super::errors::{ApiError, Dialect};
use super::openai::{chat_logprobs, completion_logprobs};
use super::openai_types::{
    ChatChunk, ChunkChoice, CompletionBody, CompletionChoice, Delta, Skip, UsageBody,
};
use super::sse::{push_event, DONE};
use super::validate::{GenJob, Route};
use super::{openai_finish, TokenOut};

/// The fields every chunk repeats.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
}

struct StreamState {
    route: Route,
    meta: StreamMeta,
    codec: Arc<dyn Codec>,
    logprobs: bool,
    include_usage: bool,
    /// Characters sent so far per choice (legacy `text_offset`).
    offsets: Vec<usize>,
    n: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
}

impl StreamState {
    fn usage_field(&self) -> Skip<UsageBody> {
        if self.include_usage {
            Skip::Null
        } else {
            Skip::Absent
        }
    }

    fn chat_chunk(&self, out: &mut Vec<u8>, choices: Vec<ChunkChoice>, usage: Skip<UsageBody>) {
        let m = &self.meta;
        let c = ChatChunk {
            id: m.id.clone(),
            object: "chat.completion.chunk",
            created: m.created,
            model: m.model.clone(),
            system_fingerprint: m.fingerprint.clone(),
            choices,
            usage,
        };
        push_event(out, &c);
    }

    fn completion_chunk(
        &self,
        out: &mut Vec<u8>,
        choices: Vec<CompletionChoice>,
        usage: Skip<UsageBody>,
    ) {
        let m = &self.meta;
        let c = CompletionBody {
            id: m.id.clone(),
            object: "text_completion",
            created: m.created,
            model: m.model.clone(),
            system_fingerprint: m.fingerprint.clone(),
            choices,
            usage,
        };
        push_event(out, &c);
    }

    /// The role deltas that open a chat stream.
    fn start(&self) -> Bytes {
        let mut out = Vec::new();
        if self.route == Route::Chat {
            for index in 0..self.offsets.len() {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                self.chat_chunk(
                    &mut out,
                    vec![ChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                    }],
                    self.usage_field(),
                );
            }
        }
        Bytes::from(out)
    }

    /// The bytes for one event, and whether the stream must end (error).
    fn on_event(&mut self, index: usize, ev: Event) -> (Bytes, bool) {
        let mut out = Vec::new();
        let usage = self.usage_field();
        let fatal = match ev {
            Event::Token {
                token,
                text,
                logprob,
                top_logprobs,
            } => {
                if !text.is_empty() || self.logprobs {
                    let t = [TokenOut {
                        id: token,
                        text: String::new(),
                        logprob,
                        top: top_logprobs,
                    }];
                    match self.route {
                        Route::Chat => {
                            let logprobs = self
                                .logprobs
                                .then(|| chat_logprobs(&t, self.codec.as_ref()));
                            let delta = Delta {
                                role: None,
                                content: Some(text),
                            };
                            self.chat_chunk(
                                &mut out,
                                vec![ChunkChoice {
                                    index,
                                    delta,
                                    logprobs,
                                    finish_reason: None,
                                }],
                                usage,
                            );
                        }
                        Route::Completions => {
                            let mut offset = self.offsets[index];
                            let logprobs = self
                                .logprobs
                                .then(|| completion_logprobs(&t, self.codec.as_ref(), &mut offset));
                            self.offsets[index] = offset;
                            self.completion_chunk(
                                &mut out,
                                vec![CompletionChoice {
                                    index,
                                    text,
                                    logprobs,
                                    finish_reason: None,
                                }],
                                usage,
                            );
                        }
                    }
                }
                false
            }
            Event::Done {
                finish, usage: u, ..
            } => {
                self.completion_tokens += u.completion_tokens;
                if index % self.n.max(1) == 0 {
                    self.cached_tokens += u.cached_tokens;
                }
                let finish_reason = Some(openai_finish(finish));
                match self.route {
                    Route::Chat => self.chat_chunk(
                        &mut out,
                        vec![ChunkChoice {
                            index,
                            delta: Delta::default(),
                            logprobs: None,
                            finish_reason,
                        }],
                        usage,
                    ),
                    Route::Completions => self.completion_chunk(
                        &mut out,
                        vec![CompletionChoice {
                            index,
                            text: String::new(),
                            logprobs: None,
                            finish_reason,
                        }],
                        usage,
                    ),
                }
                false
            }
            Event::Error { message } => {
                push_event(
                    &mut out,
                    &ApiError::from_engine(message).body(Dialect::OpenAi),
                );
                true
            }
        };
        (Bytes::from(out), fatal)
    }

    /// The usage chunk (if asked for) and `[DONE]`.
    fn finish(&self) -> Bytes {
        let mut out = Vec::new();
        if self.include_usage {
            let usage = Skip::Value(UsageBody::new(
                self.prompt_tokens,
                self.completion_tokens,
                self.cached_tokens,
            ));
            match self.route {
                Route::Chat => self.chat_chunk(&mut out, Vec::new(), usage),
                Route::Completions => self.completion_chunk(&mut out, Vec::new(), usage),
            }
        }
        out.extend_from_slice(DONE.as_bytes());
        Bytes::from(out)
    }
}

/// The SSE body of a streamed request.
pub fn body(
    route: Route,
    meta: StreamMeta,
    job: &GenJob,
    gens: Vec<Generation>,
    codec: Arc<dyn Codec>,
) -> impl Stream<Item = Bytes> + 'static {
    let st = StreamState {
        route,
        meta,
        codec,
        logprobs: job.sampling.logprobs.is_some(),
        include_usage: job.include_usage,
        offsets: vec![0; gens.len()],
        n: job.n,
        prompt_tokens: job.prompts.iter().map(Vec::len).sum(),
        completion_tokens: 0,
        cached_tokens: 0,
    };
    let first = st.start();
    let rest = stream::unfold(Some((merge(gens), st)), |state| async move {
        let (mut events, mut st) = state?;
        match events.next().await {
            Some((i, ev)) => {
                let (bytes, fatal) = st.on_event(i, ev);
                Some((bytes, if fatal { None } else { Some((events, st)) }))
            }
            None => Some((st.finish(), None)),
        }
    });
    stream::once(futures_util::future::ready(first)).chain(rest)
}
