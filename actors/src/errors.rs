//! Error types of the scheduling state: running out of KV blocks (expected,
//! handled by waiting or preemption), bad configuration, and requests that
//! could never be served by this pool.

use thiserror::Error;

/// Not enough free KV blocks; the operation changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("out of KV cache blocks")]
pub struct NoBlocks;

/// A scheduler or block-manager configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("block_size must be at least 1")]
    ZeroBlockSize,
    #[error("num_blocks must be between 1 and {max}, got {got}")]
    NumBlocks { got: usize, max: usize },
    #[error("max_num_seqs must be at least 1")]
    ZeroMaxNumSeqs,
    #[error("max_batched_tokens must be at least 1")]
    ZeroMaxBatchedTokens,
    /// Otherwise the decodes at the tail of a full batch would never run.
    #[error("max_batched_tokens ({tokens}) must be at least max_num_seqs ({seqs})")]
    BudgetBelowMaxNumSeqs { tokens: usize, seqs: usize },
}

/// A request the scheduler refuses at `add` (it could never complete).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error("prompt plus max_tokens needs {needed} KV blocks, the pool has {total}")]
    TooLong { needed: usize, total: usize },
    #[error("sequence id {0} is already in use")]
    DuplicateId(u64),
}
