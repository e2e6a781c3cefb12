//! GPT-2: learned absolute positions, pre-LayerNorm blocks, fused q/k/v
//! projection (Conv1D weights, already [in, out] as Linear keeps them), gelu_new MLP, lm_head tied
//! to the token embedding. Multi-head attention over the paged KV cache.

use tch::{TchError, Tensor};

use super::attention::{paged_attention, AttnShape};
use super::batch::StepTensors;
use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::layers::{Embedding, LayerNorm, Linear, Placement};
use super::loader::{LoadError, WeightSource};

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

pub struct Gpt2 {
    wte: Embedding,
    /// Tied to `wte`; on CPU a transposed copy (see Linear).
    lm_head: Linear,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    shape: AttnShape,
    hidden: i64,
}

impl Gpt2 {
    pub fn load(cfg: &ModelConfig, ws: &dyn WeightSource, at: Placement) -> Result<Gpt2, LoadError> {
        let h = cfg.hidden_size;
        let eps = cfg.norm_eps;
        let wte = Embedding::load(ws, &at, "transformer.wte.weight", cfg.vocab_size, h)?;
        let wpe = Embedding::load(ws, &at, "transformer.wpe.weight", cfg.max_position_embeddings, h)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: LayerNorm::load(ws, &at, &format!("{p}.ln_1"), h, eps)?,
                c_attn: Linear::load_conv1d(ws, &at, &format!("{p}.attn.c_attn"), h, 3 * h)?,
                c_proj: Linear::load_conv1d(ws, &at, &format!("{p}.attn.c_proj"), h, h)?,
                ln_2: LayerNorm::load(ws, &at, &format!("{p}.ln_2"), h, eps)?,
                c_fc: Linear::load_conv1d(ws, &at, &format!("{p}.mlp.c_fc"), h, cfg.intermediate_size)?,
                mlp_proj: Linear::load_conv1d(ws, &at, &format!("{p}.mlp.c_proj"), cfg.intermediate_size, h)?,
            });
        }
        let ln_f = LayerNorm::load(ws, &at, "transformer.ln_f", h, eps)?;
        let lm_head = Linear::from_placed(ws, &wte.weight, &at)?;
        let shape = AttnShape { num_heads: cfg.num_heads, num_kv_heads: cfg.num_heads, head_dim: cfg.head_dim };
        Ok(Gpt2 { wte, lm_head, wpe, blocks, ln_f, shape, hidden: h })
    }

    /// Hidden states after the final LayerNorm for every fed token: [T, hidden].
    pub fn forward_hidden(&self, step: &StepTensors, cache: &mut KvCache) -> Result<Tensor, TchError> {
        let mut x = self.wte.forward(&step.tokens)?.f_add(&self.wpe.forward(&step.positions)?)?;
        let (nh, hd) = (self.shape.num_heads, self.shape.head_dim);
        for (i, b) in self.blocks.iter().enumerate() {
            let (k_pool, v_pool) = cache.layer(i);
            let t = x.size()[0];
            let qkv = b.c_attn.forward(&b.ln_1.forward(&x)?)?;
            let q = qkv.f_narrow(1, 0, self.hidden)?.f_reshape([t, nh, hd])?;
            let k = qkv.f_narrow(1, self.hidden, self.hidden)?.f_reshape([t, nh, hd])?;
            let v = qkv.f_narrow(1, 2 * self.hidden, self.hidden)?.f_reshape([t, nh, hd])?;
            let attn = paged_attention(&q, &k, &v, k_pool, v_pool, step, self.shape)?;
            x = x.f_add(&b.c_proj.forward(&attn)?)?;
            let m = b.c_fc.forward(&b.ln_2.forward(&x)?)?.f_gelu("tanh")?;
            x = x.f_add(&b.mlp_proj.forward(&m)?)?;
        }
        self.ln_f.forward(&x)
    }

    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
}
