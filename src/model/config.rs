//! The architecture description every model is built from, whatever its file
//! format: read from a Hugging Face `config.json` or from GGUF metadata.

use serde::{Deserialize, Serialize};

/// Which family of model code runs the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// LLaMA 2/3, Mistral, SmolLM2 (RMSNorm, rope, SwiGLU, GQA).
    Llama,
    /// Qwen2: LLaMA with biases on the q/k/v projections.
    Qwen2,
    /// GPT-2: learned positions, LayerNorm, gelu_new, fused qkv.
    Gpt2,
}

/// Rope frequency scaling (Hugging Face `rope_scaling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// LLaMA 3.x: long wavelengths divided by `factor`, short kept, smooth in between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

/// Shape and numerics of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// Longest context the model was trained for (positions table size for GPT-2).
    pub max_position_embeddings: i64,
    /// RMSNorm / LayerNorm epsilon.
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// lm_head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<i64>,
    /// All token ids that end a generation.
    pub eos_token_ids: Vec<i64>,
}

impl ModelConfig {
    /// Size of one token's K (or V) in one layer, in elements.
    pub fn kv_dim(&self) -> i64 {
        self.num_kv_heads * self.head_dim
    }
}
