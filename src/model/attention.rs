//! Paged attention: write this step's K/V into the layer's pools by slot, then
//! attend each group of the step (see [`StepTensors`]) with
//! `scaled_dot_product_attention`, gathering K/V from the pools by block table
//! (on CPU, decode and prefix-chunk attention read the pools in place
//! through the kernels of `fused_cpu`).

use tch::{TchError, Tensor};

use super::batch::{AttnGroup, StepTensors};
use super::fused_cpu;

/// Shapes of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
}

/// q: [T, H, D]; k, v: [T, KVH, D]; pools: [blocks, block_size, KVH, D].
/// Returns [T, H * D].
pub fn paged_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    k_pool: &mut Tensor,
    v_pool: &mut Tensor,
    step: &StepTensors,
    shape: AttnShape,
) -> Result<Tensor, TchError> {
    let AttnShape { num_heads: h, num_kv_heads: kvh, head_dim: d } = shape;
    if fused_cpu::applies(k) {
        fused_cpu::write_kv(k_pool, v_pool, &step.slots, k, v)?;
    } else {
        let flat = [-1, kvh, d];
        // index_copy_ writes through the view into the pool; the returned handle is not needed.
        let _ = k_pool.f_view(flat)?.f_index_copy_(0, &step.slots, k)?;
        let _ = v_pool.f_view(flat)?.f_index_copy_(0, &step.slots, v)?;
    }
    let gqa = h != kvh;
    let scale = 1.0 / (d as f64).sqrt();
    let mut outs = Vec::with_capacity(step.groups.len());
    for g in &step.groups {
        let out = match g {
            AttnGroup::Prefill { row, len, table } if fused_cpu::chunk_attention_applies(q, d) => {
                fused_cpu::chunk_attention(&q.f_narrow(0, *row, *len)?, k_pool, v_pool, table, *len, scale)?
            }
            AttnGroup::Prefill { row, len, .. } => {
                // [1, heads, len, d]
                let qg = q.f_narrow(0, *row, *len)?.f_transpose(0, 1)?.f_unsqueeze(0)?;
                let kg = k.f_narrow(0, *row, *len)?.f_transpose(0, 1)?.f_unsqueeze(0)?;
                let vg = v.f_narrow(0, *row, *len)?.f_transpose(0, 1)?.f_unsqueeze(0)?;
                let o = Tensor::f_scaled_dot_product_attention(&qg, &kg, &vg, None::<Tensor>, 0.0, true, scale, gqa)?;
                o.f_squeeze_dim(0)?.f_transpose(0, 1)?
            }
            AttnGroup::PrefixPrefill { row, len, ctx, table, .. } if fused_cpu::chunk_attention_applies(q, d) => {
                fused_cpu::chunk_attention(&q.f_narrow(0, *row, *len)?, k_pool, v_pool, table, *ctx, scale)?
            }
            AttnGroup::PrefixPrefill { row, len, ctx, table, mask } => {
                // The query heads sharing a K/V head stand in for more query
                // rows: q [1, kv_heads, heads / kv_heads * len, d], the mask
                // repeated for each, so SDPA needs no GQA flag. Same result;
                // on CPU the flag with a mask takes SDPA's f32 math path,
                // which made a chunk's attention over 2,500 cached positions
                // cost twice its projections.
                let group = h / kvh;
                let qg = q.f_narrow(0, *row, *len)?.f_transpose(0, 1)?.f_reshape([1, kvh, group * len, d])?;
                let kg = gather(k_pool, table, kvh, d)?.f_narrow(0, 0, *ctx)?;
                let vg = gather(v_pool, table, kvh, d)?.f_narrow(0, 0, *ctx)?;
                let kg = kg.f_transpose(0, 1)?.f_unsqueeze(0)?;
                let vg = vg.f_transpose(0, 1)?.f_unsqueeze(0)?;
                let mask = if group > 1 { mask.f_repeat([1, 1, group, 1])? } else { mask.shallow_clone() };
                let o = Tensor::f_scaled_dot_product_attention(&qg, &kg, &vg, Some(&mask), 0.0, false, scale, false)?;
                // [1, kv_heads, group * len, d] -> [len, heads, d]
                o.f_reshape([h, *len, d])?.f_transpose(0, 1)?
            }
            AttnGroup::Decode { row, n, tables, ctx_lens, .. } if fused_cpu::attention_applies(q) => {
                fused_cpu::decode_attention(&q.f_narrow(0, *row, *n)?, k_pool, v_pool, tables, ctx_lens, scale)?
            }
            AttnGroup::Decode { row, n, tables, key_mask, max_ctx, .. } => {
                // One query per head, so the query heads sharing a K/V head
                // stand in for query positions: q [n, kv_heads, heads / kv_heads, d]
                // against k/v [n, kv_heads, max_ctx, d], without SDPA's GQA
                // flag. Same result; on CPU, with a mask, the flag takes a
                // path that is 5x slower in bf16.
                let qg = q.f_narrow(0, *row, *n)?.f_reshape([*n, kvh, h / kvh, d])?;
                let kg = gather(k_pool, tables, kvh, d)?.f_view([*n, *max_ctx, kvh, d])?.f_transpose(1, 2)?;
                let vg = gather(v_pool, tables, kvh, d)?.f_view([*n, *max_ctx, kvh, d])?.f_transpose(1, 2)?;
                let o = Tensor::f_scaled_dot_product_attention(&qg, &kg, &vg, Some(key_mask), 0.0, false, scale, false)?;
                o.f_reshape([*n, h, d])?
            }
        };
        outs.push(out);
    }
    let out = match outs.len() {
        // swap_remove(0) on a one-element Vec cannot panic.
        1 => outs.swap_remove(0),
        _ => Tensor::f_cat(&outs, 0)?,
    };
    out.f_reshape([-1, h * d])
}

/// Rows of the pool for `table` ([nb] block ids): [nb * block_size, kvh, d].
fn gather(pool: &Tensor, table: &Tensor, kvh: i64, d: i64) -> Result<Tensor, TchError> {
    pool.f_index_select(0, table)?.f_view([-1, kvh, d])
}

