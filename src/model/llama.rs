//! The LLaMA family: LLaMA 2/3 (llama3 rope scaling), Mistral, SmolLM2 and
//! Qwen2 (q/k/v biases). RMSNorm, rotary positions, SwiGLU MLP, grouped-query
//! attention over the paged KV cache. Weights in Hugging Face naming.
//!
//! A step runs layer by layer through tch ops, except that on CPU in bf16 a
//! step of at most a few decode rows runs in one native call
//! (`decode_stack`) with the same kernels, for the same bits.

use tch::{Device, Kind, TchError, Tensor};

use super::attention::{paged_attention, AttnShape};
use super::batch::{AttnGroup, StepTensors};
use super::decode_stack::{self, LayerWeights, Product, StepInputs};
use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::fused_cpu;
use super::layers::{Embedding, Linear, Placement, RmsNorm, Rotary};
use super::loader::{LoadError, WeightSource};

struct Attention {
    /// q, k and v projections fused: output columns [q | k | v].
    qkv: Linear,
    o: Linear,
    shape: AttnShape,
}

struct Mlp {
    /// gate and up projections fused: output columns [gate | up].
    gate_up: Linear,
    down: Linear,
    intermediate: i64,
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
    lm_head: Linear,
    rotary: Rotary,
    placement: Placement,
    /// Each layer's [qkv, o, gate_up, down] as `decode_stack` reads them,
    /// when every one has a row kernel and no bias (CPU, bf16).
    stack: Option<Vec<[Product; 4]>>,
}

impl Llama {
    pub fn load(cfg: &ModelConfig, ws: &dyn WeightSource, at: Placement, max_pos: i64) -> Result<Llama, LoadError> {
        let (hd, nh, nkv, h) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size);
        let embed = Embedding::load(ws, &at, "model.embed_tokens.weight", cfg.vocab_size, h)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            let (q, k, v) = (format!("{p}.self_attn.q_proj"), format!("{p}.self_attn.k_proj"), format!("{p}.self_attn.v_proj"));
            let attn = Attention {
                qkv: Linear::load_fused(ws, &at, &[(&q, nh * hd), (&k, nkv * hd), (&v, nkv * hd)], h, bias)?,
                o: Linear::load(ws, &at, &format!("{p}.self_attn.o_proj"), nh * hd, h, false)?,
                shape: AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: hd },
            };
            let (gate, up) = (format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj"));
            let i_dim = cfg.intermediate_size;
            let mlp = Mlp {
                gate_up: Linear::load_fused(ws, &at, &[(&gate, i_dim), (&up, i_dim)], h, false)?,
                down: Linear::load(ws, &at, &format!("{p}.mlp.down_proj"), i_dim, h, false)?,
                intermediate: i_dim,
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
            match Linear::load_blocks(ws, &at, "model.embed_tokens", h, cfg.vocab_size)? {
                // The table's own blocks (quantization = "gguf"); the lookup
                // above keeps its bf16 copy.
                Some(head) => head,
                // On CPU this is a transposed copy of the table (see Linear).
                None => Linear::from_placed(ws, &embed.weight, &at)?,
            }
        } else {
            Linear::load(ws, &at, "lm_head", h, cfg.vocab_size, false)?
        };
        let rotary = Rotary::new(cfg, max_pos, at.device).map_err(|source| LoadError::Torch { path: ws.origin(), source })?;
        let stack = if at.device == Device::Cpu && at.kind == Kind::BFloat16 {
            let products = |b: &Block| Some([b.attn.qkv.stack_product()?, b.attn.o.stack_product()?, b.mlp.gate_up.stack_product()?, b.mlp.down.stack_product()?]);
            blocks.iter().map(products).collect::<Option<Vec<_>>>()
        } else {
            None
        };
        Ok(Llama { embed, blocks, norm, lm_head, rotary, placement: at, stack })
    }

    /// Hidden states after the final norm for every fed token: [T, hidden].
    pub fn forward_hidden(&self, step: &StepTensors, cache: &mut KvCache) -> Result<Tensor, TchError> {
        let (cos, sin) = self.rotary.select(&step.positions, self.placement.kind)?;
        let mut x = self.embed.forward(&step.tokens)?;
        if let Some(out) = self.native_step(step, cache, &x, &cos, &sin)? {
            return Ok(out);
        }
        // Each residual add is done by the norm after it (fused on CPU), so
        // the last block's MLP output waits here for the next norm.
        let mut pending: Option<Tensor> = None;
        for (i, b) in self.blocks.iter().enumerate() {
            let (k_pool, v_pool) = cache.layer(i);
            let h = match pending.take() {
                None => b.input_norm.forward(&x)?,
                Some(delta) => {
                    let (sum, h) = b.input_norm.forward_residual(&x, &delta)?;
                    x = sum;
                    h
                }
            };
            let a = &b.attn;
            let (nh, nkv, hd) = (a.shape.num_heads, a.shape.num_kv_heads, a.shape.head_dim);
            let t = h.size()[0];
            // [T, q heads | k heads | v heads, D]; rotary turns q and k in one call.
            let qkv = a.qkv.forward(&h)?.f_view([t, nh + 2 * nkv, hd])?;
            let qk = self.rotary.rotate_heads(&qkv, nh + nkv, &cos, &sin)?;
            let q = qk.f_narrow(1, 0, nh)?;
            let k = qk.f_narrow(1, nh, nkv)?;
            let v = qkv.f_narrow(1, nh + nkv, nkv)?;
            let attn = paged_attention(&q, &k, &v, k_pool, v_pool, step, a.shape)?;
            let (sum, h) = b.post_norm.forward_residual(&x, &a.o.forward(&attn)?)?;
            x = sum;
            let m = &b.mlp;
            let gu = m.gate_up.forward(&h)?;
            let act = if fused_cpu::applies(&gu) {
                fused_cpu::silu_mul(&gu, m.intermediate)?
            } else {
                gu.f_narrow(1, 0, m.intermediate)?.f_silu()?.f_mul(&gu.f_narrow(1, m.intermediate, m.intermediate)?)?
            };
            pending = Some(m.down.forward(&act)?);
        }
        match pending {
            None => self.norm.forward(&x),
            Some(delta) => Ok(self.norm.forward_residual(&x, &delta)?.1),
        }
    }

    /// The step in one native call (`decode_stack`) where it applies: a
    /// step of decode rows only, few enough, and every projection on a row
    /// kernel (`stack`). `None` sends the caller down the tensor path.
    fn native_step(&self, step: &StepTensors, cache: &mut KvCache, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>, TchError> {
        let Some(stack) = &self.stack else { return Ok(None) };
        let rows = x.size().first().copied().unwrap_or(0);
        let (tables, ctx_lens) = match step.groups.as_slice() {
            [AttnGroup::Decode { row: 0, n, tables, ctx_lens, .. }] if *n == rows && decode_stack::applies(rows) => (tables, ctx_lens),
            _ => return Ok(None),
        };
        let (Some(first), true) = (self.blocks.first(), cache.layers_mut().count() == self.blocks.len()) else {
            return Err(TchError::Torch(format!("KV cache has {} layers, the model {}", cache.layers_mut().count(), self.blocks.len())));
        };
        let (shape, intermediate) = (first.attn.shape, first.mlp.intermediate);
        let mut layers: Vec<LayerWeights> = self
            .blocks
            .iter()
            .zip(stack)
            .zip(cache.layers_mut())
            .map(|((b, products), (k_pool, v_pool))| LayerWeights {
                products: *products,
                input_norm: b.input_norm.weight(),
                post_norm: b.post_norm.weight(),
                k_pool,
                v_pool,
            })
            .collect();
        let inputs = StepInputs { x, cos, sin, slots: &step.slots, ctx_lens, tables };
        decode_stack::run(&inputs, &mut layers, self.norm.weight(), self.norm.eps(), shape, intermediate).map(Some)
    }

    /// Steps of up to this many tokens run every product on the row kernel
    /// (0: some product never does).
    pub fn row_kernel_rows(&self) -> i64 {
        let blocks = self.blocks.iter().flat_map(|b| [&b.attn.qkv, &b.attn.o, &b.mlp.gate_up, &b.mlp.down]);
        blocks.chain([&self.lm_head]).map(Linear::row_kernel_rows).min().unwrap_or(0)
    }

    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// How many projections keep their weight in GGUF blocks, of how many.
    pub fn quantized_projections(&self) -> (usize, usize) {
        let blocks = self.blocks.iter().flat_map(|b| [&b.attn.qkv, &b.attn.o, &b.mlp.gate_up, &b.mlp.down]);
        let all: Vec<&Linear> = blocks.chain([&self.lm_head]).collect();
        (all.iter().filter(|l| l.is_quantized()).count(), all.len())
    }
}
