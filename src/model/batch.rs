//! One forward step's input: several sequences, each feeding a contiguous run
//! of new tokens (a prefill chunk, possibly after cached prefix blocks, or a
//! single decode token), and the device tensors every layer shares.
//!
//! Sequences are grouped for attention: consecutive single-token (decode)
//! sequences share one padded, masked attention call; each multi-token chunk
//! gets its own (causal, offset by its cached prefix). Linear layers run on
//! all tokens of the step packed together.

use tch::{Device, Kind, TchError, Tensor};

/// What one sequence feeds in this step.
#[derive(Debug, Clone)]
pub struct SeqInput {
    /// The new tokens (not yet in the KV cache).
    pub tokens: Vec<i64>,
    /// Position of `tokens[0]`: the number of tokens already in the cache.
    pub start_pos: i64,
    /// Blocks holding positions `0 .. start_pos + tokens.len()`.
    pub block_table: Vec<i64>,
}

impl SeqInput {
    pub fn context_len(&self) -> i64 {
        self.start_pos + self.tokens.len() as i64
    }
}

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// The last fed token of each sequence: [num_seqs, vocab].
    LastToken,
    /// Every fed token: [total_tokens, vocab] (parity tests).
    AllTokens,
}

/// An attention group over a contiguous range of packed tokens.
pub(crate) enum AttnGroup {
    /// `n` sequences of one token each, starting at packed row `row`.
    /// `tables` is flat, [n * nb] with nb = max_ctx / block_size: entries i * nb .. (i + 1) * nb
    /// hold sequence i's blocks, padded with block 0 (the mask hides those keys).
    /// `ctx_lens` [n] holds each sequence's context length, on the CPU (the
    /// fused CPU kernel's input; on other devices it is not read).
    Decode { row: i64, n: i64, tables: Tensor, key_mask: Tensor, max_ctx: i64, ctx_lens: Tensor },
    /// One chunk with no cached prefix: plain causal attention on its own K/V.
    /// `table` (on the CPU) holds its blocks, for the CPU chunk kernel, which
    /// reads the chunk's K/V back from the pools.
    Prefill { row: i64, len: i64, table: Tensor },
    /// One chunk after `start` cached tokens: gathered K/V, offset causal mask.
    PrefixPrefill { row: i64, len: i64, ctx: i64, table: Tensor, mask: Tensor },
}

/// Device tensors for one step, built once and shared by all layers.
pub struct StepTensors {
    pub tokens: Tensor,
    pub positions: Tensor,
    /// Slot of each token in the flattened pool.
    pub slots: Tensor,
    pub(crate) groups: Vec<AttnGroup>,
    /// Packed rows whose logits are wanted (LastToken mode), else None.
    pub last_rows: Option<Tensor>,
    pub block_size: i64,
}

fn to_dev(v: &[i64], device: Device) -> Result<Tensor, TchError> {
    Tensor::f_from_slice(v)?.f_to_device(device)
}

impl StepTensors {
    pub fn build(seqs: &[SeqInput], block_size: i64, logits: LogitsFor, device: Device) -> Result<StepTensors, TchError> {
        let total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let mut tokens = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(total);
        let mut last_rows = Vec::with_capacity(seqs.len());
        for s in seqs {
            if s.tokens.is_empty() || s.block_table.len() as i64 * block_size < s.context_len() {
                return Err(TchError::Torch(format!(
                    "sequence input needs >= 1 token and blocks for {} positions (has {} tokens, {} blocks)",
                    s.context_len(),
                    s.tokens.len(),
                    s.block_table.len()
                )));
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                let p = s.start_pos + i as i64;
                tokens.push(t);
                positions.push(p);
                slots.push(s.block_table[(p / block_size) as usize] * block_size + p % block_size);
            }
            last_rows.push(tokens.len() as i64 - 1);
        }
        let mut groups = Vec::new();
        let mut row = 0i64;
        let mut i = 0;
        while i < seqs.len() {
            let s = &seqs[i];
            let len = s.tokens.len() as i64;
            if len == 1 {
                let mut j = i;
                while j < seqs.len() && seqs[j].tokens.len() == 1 {
                    j += 1;
                }
                groups.push(decode_group(&seqs[i..j], row, block_size, device)?);
                row += (j - i) as i64;
                i = j;
                continue;
            }
            if s.start_pos == 0 {
                let table = Tensor::f_from_slice(&s.block_table[..blocks_for(len, block_size) as usize])?;
                groups.push(AttnGroup::Prefill { row, len, table });
            } else {
                groups.push(prefix_group(s, row, block_size, device)?);
            }
            row += len;
            i += 1;
        }
        Ok(StepTensors {
            tokens: to_dev(&tokens, device)?,
            positions: to_dev(&positions, device)?,
            slots: to_dev(&slots, device)?,
            groups,
            last_rows: match logits {
                LogitsFor::LastToken => Some(to_dev(&last_rows, device)?),
                LogitsFor::AllTokens => None,
            },
            block_size,
        })
    }
}

/// Blocks needed to hold `ctx` positions.
fn blocks_for(ctx: i64, block_size: i64) -> i64 {
    (ctx + block_size - 1) / block_size
}

fn decode_group(seqs: &[SeqInput], row: i64, block_size: i64, device: Device) -> Result<AttnGroup, TchError> {
    let max_ctx = seqs.iter().map(|s| s.context_len()).max().unwrap_or(1);
    let nb = blocks_for(max_ctx, block_size);
    let padded = nb * block_size;
    let mut tables = Vec::with_capacity(seqs.len() * nb as usize);
    let mut mask = Vec::with_capacity(seqs.len() * padded as usize);
    for s in seqs {
        let used = blocks_for(s.context_len(), block_size) as usize;
        tables.extend_from_slice(&s.block_table[..used]);
        // Padding rows point at block 0; the mask hides them.
        tables.extend(std::iter::repeat(0).take(nb as usize - used));
        mask.extend((0..padded).map(|j| j < s.context_len()));
    }
    let n = seqs.len() as i64;
    // Flat [n * nb]: every layer gathers with it as is.
    let tables = to_dev(&tables, device)?;
    let key_mask = Tensor::f_from_slice(&mask)?.f_view([n, 1, 1, padded])?.f_to_device(device)?;
    let ctx_lens = Tensor::f_from_slice(&seqs.iter().map(|s| s.context_len()).collect::<Vec<_>>())?;
    Ok(AttnGroup::Decode { row, n, tables, key_mask, max_ctx: padded, ctx_lens })
}

fn prefix_group(s: &SeqInput, row: i64, block_size: i64, device: Device) -> Result<AttnGroup, TchError> {
    let len = s.tokens.len() as i64;
    let ctx = s.context_len();
    let nb = blocks_for(ctx, block_size) as usize;
    let table = to_dev(&s.block_table[..nb], device)?;
    // Query i sits at absolute position start + i and sees keys 0..=start+i.
    let q = Tensor::f_arange(len, (Kind::Int64, device))?.f_add_scalar(s.start_pos)?.f_unsqueeze(1)?;
    let k = Tensor::f_arange(ctx, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let mask = k.f_le_tensor(&q)?.f_view([1, 1, len, ctx])?;
    Ok(AttnGroup::PrefixPrefill { row, len, ctx, table, mask })
}
