//! One request's sequence as the scheduler sees it: its token ids (prompt then
//! generated output), how many of them already have KV in the cache, the KV
//! blocks holding them, and its priority and arrival rank for ordering.
//!
//! Invariant kept by the scheduler: `num_computed < len()` while the sequence
//! is unfinished, because the last token (the latest sample, or the end of the
//! prompt) still has to be fed to produce the next logits.

use crate::block_manager::SeqBlocks;
use crate::ids::SeqId;

/// Scheduling class: every waiting `Interactive` sequence is admitted before
/// any `Batch` one. The discriminant is the queue index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    Interactive = 0,
    Batch = 1,
}

impl Priority {
    /// Number of priority classes (size of per-priority tables).
    pub const COUNT: usize = 2;

    /// Index into per-priority tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a sequence left the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Generated `max_tokens` tokens.
    Length,
    /// The caller saw a stop condition (EOS, stop string) and called `finish`.
    Stop,
    /// The client went away or the request was cancelled.
    Aborted,
    /// The step running it failed (executor error).
    Failed,
}

/// Where the sequence is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
    Finished(FinishReason),
}

/// A request's sequence: tokens, KV progress and block table.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
    pub priority: Priority,
    /// Rank of arrival, assigned by the scheduler on `add` (FCFS order and
    /// the preemption victim choice: newest first).
    pub arrival: u64,
    /// Prompt then generated tokens; one buffer so `all_tokens` is a slice.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Leading tokens whose K/V are written in the cache (prefix hits count).
    pub num_computed: usize,
    pub blocks: SeqBlocks,
    /// Upper bound on generated tokens; reaching it finishes with `Length`.
    pub max_tokens: usize,
    pub status: SeqStatus,
    /// Times a later arrival of its priority was admitted ahead of it (the
    /// scheduler admits the longest cached prefix first, and caps this).
    pub overtaken: u32,
}

impl Sequence {
    /// A new waiting sequence; `arrival` is set by the scheduler on `add`.
    pub fn new(id: SeqId, priority: Priority, prompt: Vec<u32>, max_tokens: usize) -> Self {
        let prompt_len = prompt.len();
        Sequence {
            id,
            priority,
            arrival: 0,
            tokens: prompt,
            prompt_len,
            num_computed: 0,
            blocks: SeqBlocks::default(),
            max_tokens,
            status: SeqStatus::Waiting,
            overtaken: 0,
        }
    }

    /// Prompt followed by the tokens generated so far.
    pub fn all_tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Total tokens (prompt + output).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens still to feed before the next sample.
    pub fn num_uncomputed(&self) -> usize {
        self.len().saturating_sub(self.num_computed)
    }

    /// True when only the latest token is left to feed (a decode step).
    pub fn is_decoding(&self) -> bool {
        self.num_uncomputed() == 1
    }

    /// The block table and the tokens at once (split borrow for the block manager).
    pub fn blocks_and_tokens(&mut self) -> (&mut SeqBlocks, &[u32]) {
        (&mut self.blocks, &self.tokens)
    }

    /// Appends a sampled token.
    pub fn push_output(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// True once `max_tokens` tokens have been generated.
    pub fn reached_max_tokens(&self) -> bool {
        self.output().len() >= self.max_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_phases() {
        let mut s = Sequence::new(SeqId(1), Priority::Batch, vec![1, 2, 3], 2);
        assert_eq!(s.len(), 3);
        assert!(!s.is_decoding(), "prompt not computed yet");
        s.num_computed = 3;
        s.push_output(9);
        assert_eq!(s.all_tokens(), &[1, 2, 3, 9]);
        assert_eq!(s.prompt(), &[1, 2, 3]);
        assert_eq!(s.output(), &[9]);
        assert!(s.is_decoding());
        assert!(!s.reached_max_tokens());
        s.num_computed = 4;
        s.push_output(10);
        assert!(s.reached_max_tokens());
        assert!(Priority::Interactive < Priority::Batch);
    }
}
