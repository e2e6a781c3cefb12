//! Paged KV-cache bookkeeping: a fixed pool of blocks of `block_size` token
//! slots, reference-counted, plus a prefix cache of full blocks.
//!
//! A full block whose K/V are computed gets a chained hash (parent hash + its
//! token ids) and is registered in the prefix cache. When its last user frees
//! it, it stays cached (free, but reusable) in least-recently-freed order and
//! is evicted only once no plain free block is left. A new prompt that starts
//! with cached blocks shares them (ref_count + 1) and prefills only the rest.
//! A hit is verified against the stored parent hash and token ids, so a hash
//! collision can never serve another prompt's K/V.
//!
//! This module only does bookkeeping; the K/V tensors live on the model side,
//! addressed by slot `block * block_size + offset` (see [`SeqBlocks::slot`]).

use std::collections::{BTreeMap, HashMap};

use crate::errors::{ConfigError, NoBlocks};
use crate::ids::{BlockHash, BlockId};

/// FNV-1a 64-bit offset basis: the hash state of the first block's (absent) parent.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Deterministic chained hash of one full block: the same tokens after the
/// same parent give the same hash in every run and on every machine.
pub fn chain_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = fnv(FNV_OFFSET, &[u8::from(parent.is_some())]);
    if let Some(p) = parent {
        h = fnv(h, &p.0.to_le_bytes());
    }
    for t in tokens {
        h = fnv(h, &t.to_le_bytes());
    }
    BlockHash(h)
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Bytes of K and V for one block over all layers.
pub fn kv_bytes_per_block(
    block_size: usize,
    num_layers: usize,
    num_kv_heads: usize,
    head_dim: usize,
    dtype_bytes: usize,
) -> u64 {
    // K and V: two tensors per layer.
    (2 * block_size * num_layers * num_kv_heads * head_dim * dtype_bytes) as u64
}

/// How many blocks fit in a memory budget (at least 0, never a partial block).
pub fn num_blocks_for_budget(budget_bytes: u64, bytes_per_block: u64) -> usize {
    budget_bytes.checked_div(bytes_per_block).unwrap_or(0) as usize
}

/// One sequence's blocks: its block table and how far the prefix-cache
/// hashing has got along it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqBlocks {
    table: Vec<BlockId>,
    /// Leading blocks whose chained hash is known (hit or registered);
    /// `mark_full_blocks` resumes from here.
    num_hashed: usize,
    /// Hash of block `num_hashed - 1`: the parent of the next full block.
    last_hash: Option<BlockHash>,
}

impl SeqBlocks {
    /// The block table, in token order.
    pub fn table(&self) -> &[BlockId] {
        &self.table
    }

    pub fn num_blocks(&self) -> usize {
        self.table.len()
    }

    /// Token slots the blocks can hold.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.table.len() * block_size
    }

    pub fn num_hashed(&self) -> usize {
        self.num_hashed
    }

    /// Flat slot of token position `pos` in the paged pool, or None when the
    /// sequence holds no block for it.
    pub fn slot(&self, pos: usize, block_size: usize) -> Option<u64> {
        let block = self.table.get(pos / block_size)?;
        Some(block.index() as u64 * block_size as u64 + (pos % block_size) as u64)
    }
}

#[derive(Debug, Default, Clone)]
struct Block {
    ref_count: u32,
    /// Set once the block is full of computed tokens and registered in the
    /// prefix cache; cleared on eviction.
    hash: Option<BlockHash>,
    /// Parent hash and token ids of a hashed block, compared on every hit so
    /// a hash collision never serves the wrong K/V.
    parent: Option<BlockHash>,
    token_ids: Vec<u32>,
    /// While free and cached: its key in `free_cached` (to unlink on revival).
    free_tick: Option<u64>,
}

/// The pool of KV blocks with reference counts and the prefix cache.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks with nothing reusable in them; handed out first.
    free_plain: Vec<BlockId>,
    /// Free blocks still in the prefix cache, keyed by the tick they were
    /// freed: the first entry is the least recently freed, evicted first.
    free_cached: BTreeMap<u64, BlockId>,
    /// Prefix cache: chained hash -> the block holding those tokens.
    cached: HashMap<BlockHash, BlockId>,
    /// Monotonic counter ordering `free_cached`.
    tick: u64,
    prefix_caching: bool,
    /// Prompt tokens looked up in / served from the prefix cache.
    prefix_query_tokens: u64,
    prefix_hit_tokens: u64,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` slots, prefix cache on.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, ConfigError> {
        if block_size == 0 {
            return Err(ConfigError::ZeroBlockSize);
        }
        let max = u32::MAX as usize;
        if num_blocks == 0 || num_blocks > max {
            return Err(ConfigError::NumBlocks {
                got: num_blocks,
                max,
            });
        }
        // Reversed so that block 0 is handed out first (readable tests and dumps).
        // The cast cannot truncate: num_blocks <= u32::MAX was checked above.
        let free_plain = (0..num_blocks as u32).rev().map(BlockId).collect();
        Ok(BlockManager {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free_plain,
            free_cached: BTreeMap::new(),
            cached: HashMap::new(),
            tick: 0,
            prefix_caching: true,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
        })
    }

    /// Turns the prefix cache on or off (off: no lookups, no registration).
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.prefix_caching = on;
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with no user (plain free plus cached-but-free).
    pub fn num_free(&self) -> usize {
        self.free_plain.len() + self.free_cached.len()
    }

    /// Free blocks that still hold a reusable cached prefix.
    pub fn num_cached_free(&self) -> usize {
        self.free_cached.len()
    }

    /// Fraction of blocks referenced by some sequence.
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free() as f64 / self.num_total() as f64
    }

    pub fn prefix_query_tokens(&self) -> u64 {
        self.prefix_query_tokens
    }

    pub fn prefix_hit_tokens(&self) -> u64 {
        self.prefix_hit_tokens
    }

    /// Blocks needed to hold `n_tokens` tokens.
    pub fn blocks_needed(&self, n_tokens: usize) -> usize {
        n_tokens.div_ceil(self.block_size)
    }

    /// Whether `n_blocks` more blocks could be allocated now.
    pub fn can_allocate(&self, n_blocks: usize) -> bool {
        n_blocks <= self.num_free()
    }

    /// Gives an empty `seq` blocks for all of `tokens`, sharing the longest
    /// cached prefix of full blocks. Returns the number of leading tokens
    /// already computed (a multiple of `block_size`, always < tokens.len(), so
    /// at least the last token is fed to get logits). Atomic: on `NoBlocks`
    /// nothing changed.
    pub fn allocate_prompt(
        &mut self,
        seq: &mut SeqBlocks,
        tokens: &[u32],
    ) -> Result<usize, NoBlocks> {
        debug_assert!(
            seq.table.is_empty(),
            "allocate_prompt on a sequence holding blocks"
        );
        let hits = if self.prefix_caching {
            self.lookup(tokens)
        } else {
            Vec::new()
        };
        let fresh = self.blocks_needed(tokens.len()) - hits.len();
        let revived = hits
            .iter()
            .filter(|(b, _)| self.blocks[b.index()].ref_count == 0)
            .count();
        if fresh + revived > self.num_free() {
            return Err(NoBlocks);
        }
        // Hits first: reviving unlinks them from `free_cached`, so allocating
        // the fresh blocks below cannot evict them.
        for &(b, _) in &hits {
            self.take_ref(b);
        }
        let fresh_blocks = match self.alloc_fresh(fresh) {
            Ok(blocks) => blocks,
            Err(e) => {
                // Unreachable after the check above; undone anyway to stay atomic.
                hits.iter().for_each(|&(b, _)| self.release(b));
                return Err(e);
            }
        };
        seq.table.extend(hits.iter().map(|&(b, _)| b));
        seq.table.extend(fresh_blocks);
        seq.num_hashed = hits.len();
        seq.last_hash = hits.last().map(|&(_, h)| h);
        let cached_tokens = hits.len() * self.block_size;
        if self.prefix_caching {
            self.prefix_query_tokens += tokens.len() as u64;
            self.prefix_hit_tokens += cached_tokens as u64;
        }
        Ok(cached_tokens)
    }

    /// Leading tokens of `tokens` that `allocate_prompt` would find cached
    /// now (0 with prefix caching off). Changes nothing, counts nothing.
    pub fn cached_prefix_tokens(&self, tokens: &[u32]) -> usize {
        if !self.prefix_caching {
            return 0;
        }
        self.lookup(tokens).len() * self.block_size
    }

    /// Makes `seq` hold blocks for at least `n_tokens` tokens (a decode that
    /// crosses a block boundary takes one more). Atomic.
    pub fn append_slot(&mut self, seq: &mut SeqBlocks, n_tokens: usize) -> Result<(), NoBlocks> {
        let more = self.blocks_needed(n_tokens).saturating_sub(seq.table.len());
        let fresh = self.alloc_fresh(more)?;
        seq.table.extend(fresh);
        Ok(())
    }

    /// Registers in the prefix cache every block of `seq` that is now full of
    /// computed tokens; `computed` is the sequence's computed token prefix.
    pub fn mark_full_blocks(&mut self, seq: &mut SeqBlocks, computed: &[u32]) {
        let full = (computed.len() / self.block_size).min(seq.table.len());
        while seq.num_hashed < full {
            let i = seq.num_hashed;
            let ids = &computed[i * self.block_size..(i + 1) * self.block_size];
            let hash = chain_hash(seq.last_hash, ids);
            if self.prefix_caching {
                self.register(seq.table[i], hash, seq.last_hash, ids);
            }
            seq.last_hash = Some(hash);
            seq.num_hashed += 1;
        }
    }

    /// Drops `seq`'s references, tail first, so that among its cached blocks
    /// the tail is the least recently freed and is evicted first.
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        for &b in seq.table.iter().rev() {
            self.release(b);
        }
        *seq = SeqBlocks::default();
    }

    /// Longest verified run of cached full blocks at the start of `tokens`,
    /// leaving at least the last token uncached.
    fn lookup(&self, tokens: &[u32]) -> Vec<(BlockId, BlockHash)> {
        let max_hits = tokens.len().saturating_sub(1) / self.block_size;
        let mut hits = Vec::new();
        let mut parent = None;
        for ids in tokens.chunks_exact(self.block_size).take(max_hits) {
            let hash = chain_hash(parent, ids);
            let Some(&b) = self.cached.get(&hash) else {
                break;
            };
            let block = &self.blocks[b.index()];
            if block.parent != parent || block.token_ids != ids {
                break; // a hash collision: another prompt's block
            }
            hits.push((b, hash));
            parent = Some(hash);
        }
        hits
    }

    fn register(&mut self, b: BlockId, hash: BlockHash, parent: Option<BlockHash>, ids: &[u32]) {
        let block = &mut self.blocks[b.index()];
        if block.hash.is_some() || self.cached.contains_key(&hash) {
            return; // already cached (shared hit), or another copy holds these tokens
        }
        block.hash = Some(hash);
        block.parent = parent;
        block.token_ids = ids.to_vec();
        self.cached.insert(hash, b);
    }

    /// `n` blocks with ref_count 1, plain ones first, then evicting the least
    /// recently freed cached ones. Atomic.
    fn alloc_fresh(&mut self, n: usize) -> Result<Vec<BlockId>, NoBlocks> {
        if n > self.num_free() {
            return Err(NoBlocks);
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = match self.free_plain.pop() {
                Some(b) => b,
                None => match self.free_cached.pop_first() {
                    Some((_, b)) => self.evict(b),
                    None => {
                        // Unreachable (n <= num_free); undone anyway to stay atomic.
                        out.into_iter().for_each(|b| self.release(b));
                        return Err(NoBlocks);
                    }
                },
            };
            self.blocks[b.index()].ref_count = 1;
            out.push(b);
        }
        Ok(out)
    }

    /// Drops a free cached block's prefix-cache entry so it can be reused.
    fn evict(&mut self, b: BlockId) -> BlockId {
        let block = &mut self.blocks[b.index()];
        block.free_tick = None;
        block.parent = None;
        block.token_ids.clear();
        if let Some(h) = block.hash.take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
            }
        }
        b
    }

    fn take_ref(&mut self, b: BlockId) {
        let block = &mut self.blocks[b.index()];
        if let Some(tick) = block.free_tick.take() {
            self.free_cached.remove(&tick);
        }
        block.ref_count += 1;
    }

    fn release(&mut self, b: BlockId) {
        let block = &mut self.blocks[b.index()];
        block.ref_count = block.ref_count.saturating_sub(1);
        if block.ref_count > 0 {
            return;
        }
        if block.hash.is_some() {
            self.tick += 1;
            block.free_tick = Some(self.tick);
            self.free_cached.insert(self.tick, b);
        } else {
            self.free_plain.push(b);
        }
    }

    /// Checks the pool against the block tables of every live sequence:
    /// each ref_count equals the block's uses, each free block is in exactly
    /// one free list, and the prefix-cache map points at matching blocks.
    /// For tests and debug assertions.
    pub fn check_invariants(&self, tables: &[&SeqBlocks]) -> Result<(), String> {
        let mut uses = vec![0u32; self.blocks.len()];
        for t in tables {
            for b in &t.table {
                uses[b.index()] += 1;
            }
        }
        let mut in_free = vec![0u32; self.blocks.len()];
        for b in self.free_plain.iter().chain(self.free_cached.values()) {
            in_free[b.index()] += 1;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            if block.ref_count != uses[i] {
                return Err(format!(
                    "block {i}: ref_count {} but {} uses",
                    block.ref_count, uses[i]
                ));
            }
            let want_free = u32::from(block.ref_count == 0);
            if in_free[i] != want_free {
                return Err(format!(
                    "block {i}: ref_count {} but in {} free lists",
                    block.ref_count, in_free[i]
                ));
            }
        }
        for (tick, b) in &self.free_cached {
            let block = &self.blocks[b.index()];
            if block.free_tick != Some(*tick) || block.hash.is_none() {
                return Err(format!(
                    "{b} in the cached free list without a hash or tick"
                ));
            }
        }
        for (h, b) in &self.cached {
            if self.blocks[b.index()].hash != Some(*h) {
                return Err(format!(
                    "prefix cache entry for {b} does not match its hash"
                ));
            }
        }
        let used = self.blocks.iter().filter(|b| b.ref_count > 0).count();
        if used + self.num_free() != self.num_total() {
            return Err(format!(
                "{used} used + {} free != {} total",
                self.num_free(),
                self.num_total()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    /// Allocates `tokens`, pretends all are computed, registers full blocks.
    fn run_prompt(bm: &mut BlockManager, tokens: &[u32]) -> (SeqBlocks, usize) {
        let mut s = SeqBlocks::default();
        let cached = bm
            .allocate_prompt(&mut s, tokens)
            .expect("test pool is large enough");
        bm.mark_full_blocks(&mut s, tokens);
        (s, cached)
    }

    #[test]
    fn config_is_checked_and_budget_sizing() {
        assert_eq!(
            BlockManager::new(4, 0).unwrap_err(),
            ConfigError::ZeroBlockSize
        );
        assert!(matches!(
            BlockManager::new(0, 4),
            Err(ConfigError::NumBlocks { .. })
        ));
        let per_block = kv_bytes_per_block(16, 30, 3, 64, 2);
        assert_eq!(per_block, 2 * 16 * 30 * 3 * 64 * 2);
        assert_eq!(num_blocks_for_budget(per_block * 10 + 5, per_block), 10);
        assert_eq!(num_blocks_for_budget(100, 0), 0);
    }

    #[test]
    fn chain_hash_is_deterministic_and_chained() {
        let a = chain_hash(None, &[1, 2, 3, 4]);
        assert_eq!(a, chain_hash(None, &[1, 2, 3, 4]));
        assert_ne!(a, chain_hash(None, &[1, 2, 3, 5]));
        assert_ne!(chain_hash(Some(a), &[5]), chain_hash(None, &[5]));
        // Fixed value: the hash must not change between runs or builds.
        assert_eq!(chain_hash(None, &[]), BlockHash(fnv(FNV_OFFSET, &[0])));
    }

    #[test]
    fn slots_follow_the_block_table() {
        let mut bm = BlockManager::new(8, BS).unwrap();
        let (_, _) = run_prompt(&mut bm, &toks(0..3)); // takes block 0
        let mut s = SeqBlocks::default();
        bm.allocate_prompt(&mut s, &toks(100..106)).unwrap();
        assert_eq!(s.table(), &[BlockId(1), BlockId(2)]);
        assert_eq!(s.slot(0, BS), Some(4));
        assert_eq!(s.slot(5, BS), Some(9));
        assert_eq!(s.slot(8, BS), None);
    }

    #[test]
    fn append_slot_crosses_block_boundaries_only() {
        let mut bm = BlockManager::new(3, BS).unwrap();
        let mut s = SeqBlocks::default();
        bm.allocate_prompt(&mut s, &toks(0..4)).unwrap();
        assert_eq!(s.num_blocks(), 1);
        bm.append_slot(&mut s, 4).unwrap();
        assert_eq!(s.num_blocks(), 1);
        bm.append_slot(&mut s, 5).unwrap();
        assert_eq!(s.num_blocks(), 2);
        assert_eq!(
            bm.append_slot(&mut s, 13),
            Err(NoBlocks),
            "needs 2 more, 1 free"
        );
        assert_eq!(s.num_blocks(), 2, "failed append changed nothing");
        assert_eq!(bm.num_free(), 1);
    }

    #[test]
    fn prefix_hit_miss_and_partial_hit() {
        let mut bm = BlockManager::new(16, BS).unwrap();
        let (a, cached) = run_prompt(&mut bm, &toks(0..10));
        assert_eq!(cached, 0, "cold cache: miss");
        // Same first 8 tokens, different tail: both full blocks hit.
        let mut b_tokens = toks(0..8);
        b_tokens.extend([50, 51]);
        let (b, cached) = run_prompt(&mut bm, &b_tokens);
        assert_eq!(cached, 8);
        assert_eq!(&b.table()[..2], &a.table()[..2]);
        assert_ne!(b.table()[2], a.table()[2]);
        // Partial: first block matches, second differs.
        let mut c_tokens = toks(0..4);
        c_tokens.extend([9, 9, 9, 9, 9]);
        let (c, cached) = run_prompt(&mut bm, &c_tokens);
        assert_eq!(cached, 4);
        assert_eq!(c.table()[0], a.table()[0]);
        assert_ne!(c.table()[1], a.table()[1]);
        // Miss: different first token.
        let (_, cached) = run_prompt(&mut bm, &toks(1..10));
        assert_eq!(cached, 0);
        assert_eq!(bm.prefix_hit_tokens(), 12);
        assert_eq!(bm.prefix_query_tokens(), 10 + 10 + 9 + 9);
    }

    #[test]
    fn whole_prompt_cached_still_computes_its_last_block() {
        let mut bm = BlockManager::new(8, BS).unwrap();
        let (a, _) = run_prompt(&mut bm, &toks(0..8));
        let (b, cached) = run_prompt(&mut bm, &toks(0..8));
        assert_eq!(cached, 4, "the last block is recomputed to get logits");
        assert_eq!(b.table()[0], a.table()[0]);
        assert_ne!(b.table()[1], a.table()[1]);
    }

    #[test]
    fn refcounts_with_a_shared_prefix() {
        let mut bm = BlockManager::new(8, BS).unwrap();
        let (mut a, _) = run_prompt(&mut bm, &toks(0..9));
        let (mut b, cached) = run_prompt(&mut bm, &toks(0..9));
        assert_eq!(cached, 8);
        let shared = a.table()[0];
        assert_eq!(bm.blocks[shared.index()].ref_count, 2);
        assert_eq!(bm.num_free(), 8 - 4, "3 for a, 1 fresh for b");
        bm.check_invariants(&[&a, &b]).unwrap();
        bm.free(&mut a);
        assert_eq!(bm.blocks[shared.index()].ref_count, 1);
        assert_eq!(bm.num_free(), 8 - 3);
        bm.check_invariants(&[&b]).unwrap();
        bm.free(&mut b);
        assert_eq!(bm.num_free(), bm.num_total());
        assert_eq!(
            bm.num_cached_free(),
            2,
            "full blocks stay cached after the end"
        );
        bm.check_invariants(&[]).unwrap();
        // A free cached block is revived by a hit.
        let (c, cached) = run_prompt(&mut bm, &toks(0..9));
        assert_eq!(cached, 8);
        assert_eq!(c.table()[0], shared);
        assert_eq!(bm.blocks[shared.index()].ref_count, 1);
        bm.check_invariants(&[&c]).unwrap();
    }

    #[test]
    fn hash_collision_is_a_miss() {
        let mut bm = BlockManager::new(8, BS).unwrap();
        let (mut a, _) = run_prompt(&mut bm, &toks(0..5));
        bm.free(&mut a);
        // Make the cached block claim the hash of [0..4] while holding other
        // ids: exactly what a collision looks like to the lookup.
        let b = a_block_with_hash(&bm, chain_hash(None, &toks(0..4)));
        bm.blocks[b.index()].token_ids = vec![7, 7, 7, 7];
        let (_, cached) = run_prompt(&mut bm, &toks(0..5));
        assert_eq!(cached, 0, "ids differ: the hit is refused");
    }

    fn a_block_with_hash(bm: &BlockManager, h: BlockHash) -> BlockId {
        *bm.cached.get(&h).expect("block registered by run_prompt")
    }

    #[test]
    fn lru_evicts_least_recently_freed_and_tails_first() {
        let mut bm = BlockManager::new(4, BS).unwrap();
        let (mut a, _) = run_prompt(&mut bm, &toks(0..9)); // 2 full + 1 partial
        bm.free(&mut a);
        let (mut b, _) = run_prompt(&mut bm, &toks(20..21)); // 1 partial block
        bm.free(&mut b);
        assert_eq!(bm.num_cached_free(), 2);
        // 2 plain blocks are free: using them evicts nothing.
        let mut c = SeqBlocks::default();
        bm.allocate_prompt(&mut c, &toks(40..48)).unwrap();
        assert_eq!(bm.num_cached_free(), 2);
        // One more: evicts a's tail block (freed first), keeping its head.
        let mut d = SeqBlocks::default();
        bm.allocate_prompt(&mut d, &toks(60..61)).unwrap();
        assert_eq!(bm.num_cached_free(), 1);
        bm.free(&mut c);
        bm.free(&mut d);
        let (_, cached) = run_prompt(&mut bm, &toks(0..9));
        assert_eq!(cached, 4, "head block survived, tail was evicted");
    }

    #[test]
    fn allocate_prompt_is_atomic() {
        let mut bm = BlockManager::new(3, BS).unwrap();
        let (mut a, _) = run_prompt(&mut bm, &toks(0..5));
        bm.free(&mut a);
        let (_, _) = run_prompt(&mut bm, &toks(100..101)); // 1 block in use
                                                           // 0..13 needs 4 blocks (1 hit + 3 fresh), only 2 free + the hit.
        let mut s = SeqBlocks::default();
        assert_eq!(bm.allocate_prompt(&mut s, &toks(0..13)), Err(NoBlocks));
        assert!(s.table().is_empty());
        assert_eq!(bm.num_cached_free(), 1, "the hit block was not revived");
        assert_eq!(bm.num_free(), 2);
        assert_eq!(
            bm.prefix_query_tokens(),
            5 + 1,
            "failed attempts are not counted"
        );
    }

    #[test]
    fn prefix_caching_off_never_hits() {
        let mut bm = BlockManager::new(8, BS).unwrap();
        bm.set_prefix_caching(false);
        let (mut a, _) = run_prompt(&mut bm, &toks(0..9));
        bm.free(&mut a);
        assert_eq!(bm.num_cached_free(), 0);
        let (_, cached) = run_prompt(&mut bm, &toks(0..9));
        assert_eq!(cached, 0);
    }
}
