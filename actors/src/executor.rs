//! The contract between the actor system and the model side: a worker drives
//! an [`Executor`] that owns the weights, KV tensors and per-sequence samplers
//! of every model replica on its device. The tch implementation lives in the
//! `inferd` crate; tests here use fakes, so the actors build and test without
//! libtorch.

use std::path::PathBuf;
use std::sync::Arc;

use crate::ids::{BlockId, SeqId};
use crate::sampler::{Sampled, SamplingParams};

/// A model replica loaded on a worker (unique across the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u64);

/// What to load onto a device.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The name clients ask for (e.g. "smollm2").
    pub name: String,
    /// The version label (e.g. "v1").
    pub version: String,
    /// A .gguf file or a Hugging Face folder.
    pub source: PathBuf,
    /// "f32", "bf16" or "f16".
    pub dtype: String,
    /// Bytes of device memory for this replica's KV pool.
    pub kv_budget_bytes: u64,
    /// Token positions per KV block.
    pub block_size: usize,
    /// Longest prompt + output served, capped by the model's own limit.
    pub max_context: Option<usize>,
    /// How quantized weights are kept.
    pub quantization: Quantization,
}

/// How a replica keeps a quantized file's weights (a version's
/// `quantization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Dequantized to the run dtype at load.
    #[default]
    None,
    /// A GGUF file's Q4_0/Q4_1 linear weights stay in their 4-bit blocks
    /// (CPU, bf16, AVX512_BF16; other weights load as with `None`).
    Gguf,
}

/// What a loaded replica offers; the batcher sizes its block manager from it.
#[derive(Clone)]
pub struct ReplicaInfo {
    /// The model's tokenizer, for the batcher's incremental detokenization.
    pub decoder: Arc<dyn TextDecoder>,
    pub num_blocks: usize,
    pub block_size: usize,
    pub vocab_size: usize,
    pub max_context: usize,
    pub eos_token_ids: Vec<u32>,
    /// Bytes the weights take on the device.
    pub weight_bytes: u64,
    /// Bytes the KV pool takes on the device.
    pub kv_bytes: u64,
}

impl std::fmt::Debug for ReplicaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaInfo")
            .field("num_blocks", &self.num_blocks)
            .field("block_size", &self.block_size)
            .field("vocab_size", &self.vocab_size)
            .field("max_context", &self.max_context)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("weight_bytes", &self.weight_bytes)
            .field("kv_bytes", &self.kv_bytes)
            .finish()
    }
}

/// One sequence's share of a step (mirrors the scheduler's `ScheduledSeq`).
#[derive(Debug, Clone)]
pub struct StepSeq {
    pub id: SeqId,
    /// New tokens fed this step.
    pub tokens: Vec<u32>,
    /// Position of `tokens[0]` (tokens already in the cache).
    pub start_pos: usize,
    /// Blocks holding positions `0 .. start_pos + tokens.len()`.
    pub block_table: Vec<BlockId>,
    /// Sample a token after this step (the chunk reaches the sequence's end).
    pub sample: bool,
}

/// A sequence joining a replica: its sampler is created from these.
#[derive(Debug, Clone)]
pub struct NewSeq {
    pub id: SeqId,
    pub sampling: SamplingParams,
    /// Prompt tokens (repetition penalty context).
    pub prompt: Vec<u32>,
}

/// One step for one replica.
#[derive(Debug, Clone, Default)]
pub struct StepRequest {
    /// Sequences whose samplers must exist before this step runs.
    pub added: Vec<NewSeq>,
    /// Sequences that ended since the last step: drop their samplers.
    pub released: Vec<SeqId>,
    pub seqs: Vec<StepSeq>,
}

/// The tokens sampled by a step, for the sequences with `sample == true`.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    pub sampled: Vec<(SeqId, Sampled)>,
    /// Time spent in the model forward (the rest of the step is overhead).
    pub forward_secs: f64,
    /// Time spent sampling.
    pub sample_secs: f64,
}

/// A failed executor call. `fatal` means the device state can no longer be
/// trusted (the supervisor restarts the worker and reloads its models).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub message: String,
    pub fatal: bool,
}

impl ExecError {
    pub fn new(message: impl Into<String>) -> ExecError {
        ExecError { message: message.into(), fatal: false }
    }
    pub fn fatal(message: impl Into<String>) -> ExecError {
        ExecError { message: message.into(), fatal: true }
    }
}

/// The model side of one device. Called from the worker's own OS thread only.
pub trait Executor: Send + 'static {
    fn load(&mut self, replica: ReplicaId, spec: &ModelSpec) -> Result<ReplicaInfo, ExecError>;
    fn unload(&mut self, replica: ReplicaId);
    fn step(&mut self, replica: ReplicaId, req: &StepRequest) -> Result<StepResult, ExecError>;
}

/// Turns generated token ids into text (the model's tokenizer). The batcher
/// uses it for incremental detokenization and stop strings.
pub trait TextDecoder: Send + Sync + 'static {
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
}
