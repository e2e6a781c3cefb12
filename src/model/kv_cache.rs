//! The paged KV cache: per layer one K pool and one V pool of shape
//! `[num_blocks, block_size, kv_heads, head_dim]` on the model's device.
//!
//! A sequence's tokens live in the blocks its block table names (the block
//! bookkeeping is `inferd-actors`' BlockManager); token position `p` sits in
//! slot `table[p / block_size] * block_size + p % block_size` of the pool
//! seen as `[num_blocks * block_size, kv_heads, head_dim]`.

use tch::{Device, Kind, TchError, Tensor};

use super::config::ModelConfig;

/// Default number of token positions per KV block.
pub const DEFAULT_BLOCK_SIZE: i64 = 16;

pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    block_size: i64,
    num_blocks: i64,
}

impl KvCache {
    /// Allocate zeroed pools for every layer.
    pub fn new(cfg: &ModelConfig, num_blocks: i64, block_size: i64, kind: Kind, device: Device) -> Result<KvCache, TchError> {
        let shape = [num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim];
        let mut k = Vec::with_capacity(cfg.num_layers as usize);
        let mut v = Vec::with_capacity(cfg.num_layers as usize);
        for _ in 0..cfg.num_layers {
            k.push(Tensor::f_zeros(shape, (kind, device))?);
            v.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(KvCache { k, v, block_size, num_blocks })
    }

    /// Bytes one block takes across all layers, K and V.
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: i64, kind: Kind) -> i64 {
        2 * cfg.num_layers * block_size * cfg.kv_dim() * kind.elt_size_in_bytes() as i64
    }

    /// How many blocks fit in `budget_bytes`.
    pub fn blocks_for_budget(cfg: &ModelConfig, block_size: i64, kind: Kind, budget_bytes: i64) -> i64 {
        budget_bytes / Self::bytes_per_block(cfg, block_size, kind).max(1)
    }

    pub fn block_size(&self) -> i64 {
        self.block_size
    }

    pub fn num_blocks(&self) -> i64 {
        self.num_blocks
    }

    /// Every layer's K and V pools, in layer order.
    pub fn layers_mut(&mut self) -> impl Iterator<Item = (&mut Tensor, &mut Tensor)> {
        self.k.iter_mut().zip(self.v.iter_mut())
    }

    /// The K and V pools of one layer.
    pub fn layer(&mut self, layer: usize) -> (&mut Tensor, &mut Tensor) {
        (&mut self.k[layer], &mut self.v[layer])
    }
}
