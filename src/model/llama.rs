//! The LLaMA family: LLaMA 2/3 (llama3 rope scaling), Mistral, SmolLM2 and
//! Qwen2 (q/k/v biases). RMSNorm, rotary positions, SwiGLU MLP, grouped-query
//! attention over the paged KV cache. Weights in Hugging Face naming.

use tch::{TchError, Tensor};

use super::attention::{paged_attention, AttnShape};
use super::batch::StepTensors;
use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::layers::{Embedding, Linear, Placement, RmsNorm, Rotary};
use super::loader::{LoadError, WeightSource};

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    shape: AttnShape,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

pub struct Llama {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Rotary,
    placement: Placement,
}

impl Llama {
    pub fn load(cfg: &ModelConfig, ws: &dyn WeightSource, at: Placement, max_pos: i64) -> Result<Llama, LoadError> {
        let (hd, nh, nkv, h) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size);
        let embed = Embedding::load(ws, &at, "model.embed_tokens.weight", cfg.vocab_size, h)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            let attn = Attention {
                q: Linear::load(ws, &at, &format!("{p}.self_attn.q_proj"), h, nh * hd, bias)?,
                k: Linear::load(ws, &at, &format!("{p}.self_attn.k_proj"), h, nkv * hd, bias)?,
                v: Linear::load(ws, &at, &format!("{p}.self_attn.v_proj"), h, nkv * hd, bias)?,
                o: Linear::load(ws, &at, &format!("{p}.self_attn.o_proj"), nh * hd, h, false)?,
                shape: AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: hd },
            };
            let mlp = Mlp {
                gate: Linear::load(ws, &at, &format!("{p}.mlp.gate_proj"), h, cfg.intermediate_size, false)?,
                up: Linear::load(ws, &at, &format!("{p}.mlp.up_proj"), h, cfg.intermediate_size, false)?,
                down: Linear::load(ws, &at, &format!("{p}.mlp.down_proj"), cfg.intermediate_size, h, false)?,
            };
            blocks.push(Block {
                input_norm: RmsNorm::load(ws, &at, &format!("{p}.input_layernorm.weight"), h, cfg.norm_eps)?,
                attn,
                post_norm: RmsNorm::load(ws, &at, &format!("{p}.post_attention_layernorm.weight"), h, cfg.norm_eps)?,
                mlp,
            });
        }
        let norm = RmsNorm::load(ws, &at, "model.norm.weight", h, cfg.norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings || !ws.contains("lm_head.weight") {
            embed.weight.shallow_clone()
        } else {
            at.load(ws, "lm_head.weight", &[cfg.vocab_size, h])?
        };
        let rotary = Rotary::new(cfg, max_pos, at.device).map_err(|source| LoadError::Torch { path: ws.origin(), source })?;
        Ok(Llama { embed, blocks, norm, lm_head, rotary, placement: at })
    }

    /// Hidden states after the final norm for every fed token: [T, hidden].
    pub fn forward_hidden(&self, step: &StepTensors, cache: &mut KvCache) -> Result<Tensor, TchError> {
        let (cos, sin) = self.rotary.select(&step.positions, self.placement.kind)?;
        let mut x = self.embed.forward(&step.tokens)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let (k_pool, v_pool) = cache.layer(i);
            let h = b.input_norm.forward(&x)?;
            let a = &b.attn;
            let t = h.size()[0];
            let q = a.q.forward(&h)?.f_view([t, a.shape.num_heads, a.shape.head_dim])?;
            let k = a.k.forward(&h)?.f_view([t, a.shape.num_kv_heads, a.shape.head_dim])?;
            let v = a.v.forward(&h)?.f_view([t, a.shape.num_kv_heads, a.shape.head_dim])?;
            let q = self.rotary.apply(&q, &cos, &sin)?;
            let k = self.rotary.apply(&k, &cos, &sin)?;
            let attn = paged_attention(&q, &k, &v, k_pool, v_pool, step, a.shape)?;
            x = x.f_add(&a.o.forward(&attn)?)?;
            let h = b.post_norm.forward(&x)?;
            let m = &b.mlp;
            let act = m.gate.forward(&h)?.f_silu()?.f_mul(&m.up.forward(&h)?)?;
            x = x.f_add(&m.down.forward(&act)?)?;
        }
        self.norm.forward(&x)
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}
