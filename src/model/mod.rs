//! Model loading and the model code (tch).
//!
//! [`Model`] is what a worker holds: the weights of one model version on one
//! device, and a `forward` that runs one step of several sequences over a
//! paged [`KvCache`]. It is built from a [`WeightSource`] (GGUF file or Hugging
//! Face folder) and a [`ModelConfig`].

pub mod amx_bf16;
pub mod attention;
pub mod batch;
pub mod chat_template;
pub mod config;
pub mod cpu_pool;
pub mod decode_stack;
pub mod fused_cpu;
pub mod gemv_bf16;
pub mod gemv_gguf;
pub mod gpt2;
pub mod hf_config;
pub mod inference_mode;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod source;
pub mod loader;
pub mod packed_linear;
pub mod parallel_for;
pub mod tokenizer;

use tch::{Kind, TchError, Tensor};

pub use batch::{LogitsFor, SeqInput};
pub use config::{Arch, ModelConfig};
pub use kv_cache::KvCache;
pub use layers::Placement;
use loader::{LoadError, WeightSource};

/// The longest context we build position tables for unless asked otherwise;
/// models advertising 128k positions would otherwise cost memory for nothing.
pub const DEFAULT_MAX_CONTEXT: i64 = 32_768;

enum Family {
    Llama(llama::Llama),
    Gpt2(gpt2::Gpt2),
}

/// One model's weights on one device.
pub struct Model {
    config: ModelConfig,
    family: Family,
    placement: Placement,
    max_context: i64,
    /// Steps of up to this many fed tokens run under the decode pool
    /// (`cpu_pool`): every product of such a step goes to the row kernel.
    /// 0 when some product of this model never does.
    pool_rows: i64,
}

impl Model {
    /// Build the model for `cfg` from `ws`, placed at `at`, serving contexts of
    /// up to `max_context` tokens (capped by the model's own limit).
    pub fn from_source(cfg: &ModelConfig, ws: &dyn WeightSource, at: Placement, max_context: Option<i64>) -> Result<Model, LoadError> {
        let max_context = max_context.unwrap_or(DEFAULT_MAX_CONTEXT).min(cfg.max_position_embeddings).max(1);
        let _guard = tch::no_grad_guard();
        let (family, pool_rows) = match cfg.arch {
            Arch::Llama | Arch::Qwen2 => {
                let m = llama::Llama::load(cfg, ws, at, max_context)?;
                let rows = m.row_kernel_rows().min(cpu_pool::MAX_ROWS);
                (Family::Llama(m), rows)
            }
            Arch::Gpt2 => (Family::Gpt2(gpt2::Gpt2::load(cfg, ws, at)?), 0),
        };
        Ok(Model { config: cfg.clone(), family, placement: at, max_context, pool_rows })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// How many projections keep their weight in GGUF blocks
    /// (`quantization = "gguf"`), of how many.
    pub fn quantized_projections(&self) -> (usize, usize) {
        match &self.family {
            Family::Llama(m) => m.quantized_projections(),
            Family::Gpt2(_) => (0, 0),
        }
    }

    /// Longest sequence (prompt + output) this model instance can hold.
    pub fn max_context(&self) -> i64 {
        self.max_context
    }

    /// A KV cache for this model on its device.
    pub fn new_cache(&self, num_blocks: i64, block_size: i64) -> Result<KvCache, TchError> {
        KvCache::new(&self.config, num_blocks, block_size, self.placement.kind, self.placement.device)
    }

    /// Run one step: write the new tokens' K/V into `cache` and return f32
    /// logits on the model's device ([num_seqs, vocab] or [tokens, vocab]).
    pub fn forward(&self, seqs: &[SeqInput], cache: &mut KvCache, logits: LogitsFor) -> Result<Tensor, TchError> {
        let _guard = tch::no_grad_guard();
        // The logits it returns are inference tensors: callers read them.
        let _mode = inference_mode::InferenceMode::enter();
        if let Some(s) = seqs.iter().find(|s| s.context_len() > self.max_context) {
            return Err(TchError::Torch(format!("sequence of {} tokens exceeds the context limit {}", s.context_len(), self.max_context)));
        }
        let fed: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let _pool = (fed > 0 && fed as i64 <= self.pool_rows).then(cpu_pool::PoolScope::enter);
        let step = batch::StepTensors::build(seqs, cache.block_size(), logits, self.placement.device)?;
        let (hidden, head) = match &self.family {
            Family::Llama(m) => (m.forward_hidden(&step, cache)?, m.lm_head()),
            Family::Gpt2(m) => (m.forward_hidden(&step, cache)?, m.lm_head()),
        };
        let hidden = match &step.last_rows {
            Some(rows) => hidden.f_index_select(0, rows)?,
            None => hidden,
        };
        head.forward(&hidden)?.f_to_kind(Kind::Float)
    }
}
