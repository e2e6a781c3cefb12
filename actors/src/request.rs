//! The in-process engine API's types: what a caller submits, the events it
//! receives on its stream, and why a submission can be refused.

use std::time::Instant;

use crate::sampler::SamplingParams;
use crate::sequence::Priority;

/// A validated generation request (the HTTP layer parses into this).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Model name as configured (the router picks the version and replica).
    pub model: String,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before them, they are never sent.
    pub stop: Vec<String>,
    /// Extra token ids that end the generation (besides the model's EOS).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
    pub priority: Priority,
    /// Caller-chosen id for logs and tracing (e.g. x-request-id).
    pub request_id: String,
    /// When the request must be over: past it, it ends with a timeout
    /// error and its blocks are freed (checked before every step).
    pub deadline: Option<Instant>,
    /// May be answered from, and stored in, the response cache (when the
    /// engine has one and the request is deterministic).
    pub use_cache: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token or a stop token id.
    Eos,
    /// A stop string.
    Stop,
    /// max_tokens or the context limit.
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// What a request's stream carries.
#[derive(Debug, Clone)]
pub enum Event {
    /// One generated token. `text` is the newly complete text (may be empty
    /// while a multi-byte character or a possible stop string is pending).
    Token { token: u32, text: String, logprob: f32, top_logprobs: Vec<(u32, f32)> },
    /// The last event of a successful generation.
    Done { finish: Finish, usage: Usage, seed: u64, model: String, version: String },
    /// The last event of a failed generation.
    Error { message: String },
}

/// Why the engine refused a request at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("model `{0}` is not served here")]
    UnknownModel(String),
    #[error("model `{model}` is overloaded ({reason}); retry after {retry_after_secs}s")]
    Overloaded { model: String, reason: String, retry_after_secs: u64 },
    #[error("model `{0}` is not ready")]
    NotReady(String),
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Engine-wide or per-model counters for stats endpoints and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaStats {
    pub model: String,
    pub version: String,
    pub device: String,
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub num_blocks: usize,
    pub free_blocks: usize,
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub forward_secs: f64,
    pub step_secs: f64,
    /// Totals since start and latency percentiles of the last minute.
    pub recent: crate::recent::RecentStats,
}
