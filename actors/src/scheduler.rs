//! Continuous-batching scheduler (vLLM-style) over one model replica's KV pool.
//!
//! Every step fills a token budget (`max_batched_tokens`, `max_num_seqs`):
//! first one token for each running sequence that is decoding, then chunks of
//! running sequences still in prefill, then new sequences admitted from the
//! waiting queues (interactive strictly before batch; within a priority the
//! longest cached prefix first, FCFS among equals, SGLang's "lpm" order with
//! bounded overtaking; a prefix-cache lookup at admission skips the cached
//! part of the prompt, and a prompt sharing blocks that a running prefill is
//! still computing waits until they are cached rather than computing them a
//! second time, while more of them are missing than it has tokens of its
//! own).
//! A prompt longer than the budget left is split across steps (chunked
//! prefill), so one long prompt never stalls the decodes of everyone else.
//!
//! Blocks for a whole prompt are taken at admission; a decode takes one more
//! block when it crosses a block boundary. When none is left, the newest
//! running sequence (lowest priority first) is preempted: its blocks are
//! freed, it goes back to the front of its waiting queue and recomputes its
//! prompt and output later (its full blocks usually survive in the prefix
//! cache, so recomputing is mostly a cache hit). Blocks are freed in the same
//! call that finishes, aborts or fails a sequence.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::block_manager::BlockManager;
use crate::errors::{AddError, ConfigError};
use crate::ids::{BlockId, SeqId};
use crate::sequence::{FinishReason, Priority, SeqStatus, Sequence};

#[cfg(test)]
mod tests;

/// Default cap on sequences in one batch.
pub const DEFAULT_MAX_NUM_SEQS: usize = 256;
/// Default token budget of one step (prefill chunks plus decodes).
pub const DEFAULT_MAX_BATCHED_TOKENS: usize = 2048;
/// Default tokens per KV block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;
/// Waiting sequences (from the head of a queue) compared for admission.
const ADMIT_WINDOW: usize = 32;
/// Admissions that may overtake a waiting sequence before it goes first.
const MAX_OVERTAKEN: u32 = 32;

/// Limits of one scheduler (one model replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub block_size: usize,
    /// Size of the KV pool, usually from `block_manager::num_blocks_for_budget`.
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
}

impl SchedulerConfig {
    /// Defaults for everything but the pool size.
    pub fn with_blocks(num_blocks: usize) -> Self {
        SchedulerConfig {
            max_num_seqs: DEFAULT_MAX_NUM_SEQS,
            max_batched_tokens: DEFAULT_MAX_BATCHED_TOKENS,
            block_size: DEFAULT_BLOCK_SIZE,
            num_blocks,
            enable_prefix_caching: true,
        }
    }
}

/// One sequence's share of a step: what the executor feeds and where the
/// new K/V go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// Token ids fed this step (a prefill chunk, or the one decode token).
    pub tokens: Vec<u32>,
    /// Position of `tokens[0]` in the sequence (= tokens already in the cache).
    pub start_pos: usize,
    pub block_table: Vec<BlockId>,
    /// Flat KV slot of each fed token (`block * block_size + offset`).
    pub slot_mapping: Vec<u64>,
    /// Tokens in the cache after this step (`start_pos + tokens.len()`).
    pub context_len: usize,
    /// Whether this step samples a token for the sequence (the chunk reaches
    /// the end of its tokens); a mid-prompt chunk samples nothing.
    pub sample: bool,
}

/// All sequences of one step, decodes first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduledBatch {
    pub seqs: Vec<ScheduledSeq>,
}

impl ScheduledBatch {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Tokens fed this step (never above `max_batched_tokens`).
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

/// A sequence that left the scheduler, with what it generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedSeq {
    pub id: SeqId,
    pub reason: FinishReason,
    pub output: Vec<u32>,
}

/// What the last `schedule` fed one sequence, applied by `on_step_done`.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: SeqId,
    num_tokens: usize,
    sample: bool,
}

/// Waiting and running sets plus the KV pool of one model replica.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    /// One arrival-ordered queue per priority (see `next_to_admit`); preempted sequences re-enter at the front.
    waiting: [VecDeque<Sequence>; Priority::COUNT],
    /// Kept sorted by (priority, arrival): the tail is the preemption victim.
    running: Vec<Sequence>,
    /// Ids of all waiting and running sequences, to refuse duplicates.
    live: HashSet<SeqId>,
    in_flight: Vec<InFlight>,
    next_arrival: u64,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, ConfigError> {
        if config.max_num_seqs == 0 {
            return Err(ConfigError::ZeroMaxNumSeqs);
        }
        if config.max_batched_tokens == 0 {
            return Err(ConfigError::ZeroMaxBatchedTokens);
        }
        if config.max_batched_tokens < config.max_num_seqs {
            return Err(ConfigError::BudgetBelowMaxNumSeqs {
                tokens: config.max_batched_tokens,
                seqs: config.max_num_seqs,
            });
        }
        let mut blocks = BlockManager::new(config.num_blocks, config.block_size)?;
        blocks.set_prefix_caching(config.enable_prefix_caching);
        Ok(Scheduler {
            config,
            blocks,
            waiting: Default::default(),
            running: Vec::new(),
            live: HashSet::new(),
            in_flight: Vec::new(),
            next_arrival: 0,
            preemptions: 0,
        })
    }

    /// Queues a sequence; refuses one that this pool could never complete.
    pub fn add(&mut self, mut seq: Sequence) -> Result<(), AddError> {
        if seq.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if seq.max_tokens == 0 {
            return Err(AddError::ZeroMaxTokens);
        }
        // The last sampled token is never fed, so it needs no slot.
        let needed = self.blocks.blocks_needed(seq.len() + seq.max_tokens - 1);
        if needed > self.blocks.num_total() {
            return Err(AddError::TooLong {
                needed,
                total: self.blocks.num_total(),
            });
        }
        if !self.live.insert(seq.id) {
            return Err(AddError::DuplicateId(seq.id.0));
        }
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        seq.status = SeqStatus::Waiting;
        seq.num_computed = 0;
        self.waiting[seq.priority.index()].push_back(seq);
        Ok(())
    }

    /// Plans the next step. Call `on_step_done` (or `on_step_failed`) with
    /// its outcome before the next `schedule`.
    pub fn schedule(&mut self) -> ScheduledBatch {
        let mut budget = self.config.max_batched_tokens;
        let mut plan = Vec::new();
        let preempted = self.schedule_decodes(&mut budget, &mut plan);
        self.schedule_prefills(&mut budget, &mut plan);
        // After a preemption memory is short: admitting now would only
        // preempt again next step.
        if !preempted {
            self.admit_waiting(&mut budget, &mut plan);
        }
        self.build_batch(plan)
    }

    /// One token for each decoding running sequence, preempting from the
    /// tail when blocks run out. Returns whether anything was preempted.
    fn schedule_decodes(&mut self, budget: &mut usize, plan: &mut Vec<(SeqId, usize)>) -> bool {
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            if !self.running[i].is_decoding() {
                i += 1;
                continue;
            }
            let (got_slot, victims) = self.reserve_decode_slot(i);
            preempted |= victims > 0;
            if got_slot {
                plan.push((self.running[i].id, 1));
                *budget -= 1;
                i += 1;
            } // else running[i] itself was preempted: index i now holds the next one
        }
        preempted
    }

    /// Makes room for `running[i]`'s next token, preempting the tail of
    /// `running` (newest, lowest priority) until it fits or `running[i]` was
    /// the tail itself. Returns (whether running[i] got its slot, preemptions).
    fn reserve_decode_slot(&mut self, i: usize) -> (bool, usize) {
        let mut victims = 0;
        loop {
            let seq = &mut self.running[i];
            let len = seq.len();
            if self.blocks.append_slot(&mut seq.blocks, len).is_ok() {
                return (true, victims);
            }
            // i < running.len(), so the tail exists and is at or after i:
            // sequences before i, already in this batch, are never victims.
            let tail = self.running.len() - 1;
            self.preempt(tail);
            victims += 1;
            if tail == i {
                return (false, victims);
            }
        }
    }

    /// Frees `running[idx]`'s blocks and requeues it at the front of its
    /// priority, to recompute its prompt and output from scratch.
    fn preempt(&mut self, idx: usize) {
        let mut seq = self.running.remove(idx);
        self.blocks.free(&mut seq.blocks);
        seq.num_computed = 0;
        seq.status = SeqStatus::Waiting;
        self.preemptions += 1;
        self.waiting[seq.priority.index()].push_front(seq);
    }

    /// Preempts every running sequence back to the front of its waiting
    /// queue (running order kept) and forgets the prefix cache, for when the
    /// device lost its KV cache (worker restart): everything recomputes, and
    /// no cached block may be served since its K/V are gone. Drops the plan
    /// of the step in flight. Prefix-cache hit counters restart from zero.
    pub fn preempt_all(&mut self) {
        self.in_flight.clear();
        // Tail first, each to the front: the queues end up in running order.
        while let Some(last) = self.running.len().checked_sub(1) {
            self.preempt(last);
        }
        // No sequence holds a block now (waiting ones never do), so a fresh
        // pool of the same shape is equivalent minus the stale cache.
        let mut fresh = BlockManager::new(self.config.num_blocks, self.config.block_size)
            .unwrap_or_else(|_| unreachable!("this shape was accepted by Scheduler::new"));
        fresh.set_prefix_caching(self.config.enable_prefix_caching);
        self.blocks = fresh;
    }

    /// Chunks for running sequences still in prefill (their blocks were all
    /// taken at admission), in running order, within the budget left.
    fn schedule_prefills(&mut self, budget: &mut usize, plan: &mut Vec<(SeqId, usize)>) {
        for seq in &self.running {
            if *budget == 0 {
                break;
            }
            if seq.is_decoding() {
                continue; // scheduled by schedule_decodes, or out of budget there
            }
            let chunk = seq.num_uncomputed().min(*budget);
            plan.push((seq.id, chunk));
            *budget -= chunk;
        }
    }

    /// Admits waiting sequences, highest priority first (see
    /// `next_to_admit` for the order within one), while budget,
    /// `max_num_seqs` and blocks allow. A sequence whose blocks do not fit
    /// stops admission for this step: nothing smaller slips past it, so a
    /// long prompt is not starved by short ones.
    fn admit_waiting(&mut self, budget: &mut usize, plan: &mut Vec<(SeqId, usize)>) {
        let mut admitted = false;
        let mut hits = HashMap::new();
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(p) = self.waiting.iter().position(|q| !q.is_empty()) else {
                break;
            };
            let Some(j) = self.next_to_admit(p, &mut hits) else { break };
            let queue = &mut self.waiting[p];
            let Some(seq) = queue.get_mut(j) else { break }; // j < queue.len()
            let (seq_blocks, tokens) = seq.blocks_and_tokens();
            let Ok(cached) = self.blocks.allocate_prompt(seq_blocks, tokens) else {
                break;
            };
            seq.num_computed = cached;
            let Some(mut seq) = queue.remove(j) else {
                break;
            }; // get_mut(j) was Some
            for ahead in queue.iter_mut().take(j) {
                ahead.overtaken += 1;
            }
            seq.status = SeqStatus::Running;
            let chunk = seq.num_uncomputed().min(*budget);
            plan.push((seq.id, chunk));
            *budget -= chunk;
            self.running.push(seq);
            admitted = true;
        }
        if admitted {
            // Re-admitted preempted sequences are older than the newest runners.
            self.running.sort_by_key(|s| (s.priority, s.arrival));
        }
    }

    /// Index in `waiting[p]` of the sequence to admit next, or None to
    /// admit nothing more this step.
    ///
    /// With prefix caching, the one among the first `ADMIT_WINDOW` with the
    /// longest cached prefix, the earliest among equals (SGLang's "lpm"): a
    /// mostly cached prompt costs a few tokens of prefill, so serving it
    /// first cuts mean time to first token, and it keeps the blocks it hits
    /// from being evicted before it runs. A sequence waiting for a running
    /// prefill's blocks is skipped until they are cached. Overtaking is
    /// bounded: once the head has been overtaken `MAX_OVERTAKEN` times it
    /// goes next (or, if it waits for blocks, holds the queue). Without
    /// prefix caching every hit is zero and this is FCFS.
    ///
    /// `hits` memoizes each candidate's cached prefix for one step, so a
    /// prompt is hashed once per step however many admissions it sits
    /// through. Admissions in the step can only evict, which makes a memo
    /// optimistic, never wrong: `allocate_prompt` returns the true hit.
    fn next_to_admit(&self, p: usize, hits: &mut HashMap<SeqId, usize>) -> Option<usize> {
        let queue = &self.waiting[p];
        let head = queue.front()?;
        let held = |s: &Sequence| self.config.enable_prefix_caching && awaits_shared_prefill(&self.running, &self.blocks, s);
        if !self.config.enable_prefix_caching || head.overtaken >= MAX_OVERTAKEN {
            return (!held(head)).then_some(0);
        }
        queue
            .iter()
            .take(ADMIT_WINDOW)
            .enumerate()
            .filter(|(_, s)| !held(s))
            .map(|(j, s)| {
                let hit = *hits.entry(s.id).or_insert_with(|| self.blocks.cached_prefix_tokens(s.all_tokens()));
                (hit, std::cmp::Reverse(j))
            })
            .max()
            .map(|(_, std::cmp::Reverse(j))| j)
    }

    /// Turns the plan into the executor's batch and remembers it for
    /// `on_step_done`.
    fn build_batch(&mut self, plan: Vec<(SeqId, usize)>) -> ScheduledBatch {
        let index: HashMap<SeqId, usize> = self
            .running
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let bs = self.config.block_size;
        let mut batch = ScheduledBatch::default();
        self.in_flight.clear();
        for (id, n) in plan {
            // Every planned id is running: preemption only removes sequences
            // not yet planned (the tail at or after the current one).
            let Some(&i) = index.get(&id) else { continue };
            let seq = &self.running[i];
            let start = seq.num_computed;
            let end = start + n;
            // Slots exist: admission allocated the whole sequence and each
            // decode reserved its slot in reserve_decode_slot.
            let slot_mapping: Vec<u64> = (start..end)
                .filter_map(|p| seq.blocks.slot(p, bs))
                .collect();
            debug_assert_eq!(slot_mapping.len(), n, "{id} lacks slots for its tokens");
            let sample = end == seq.len();
            self.in_flight.push(InFlight {
                id,
                num_tokens: n,
                sample,
            });
            batch.seqs.push(ScheduledSeq {
                id,
                tokens: seq.all_tokens()[start..end].to_vec(),
                start_pos: start,
                block_table: seq.blocks.table().to_vec(),
                slot_mapping,
                context_len: end,
                sample,
            });
        }
        batch
    }

    /// Applies the last step: advances the computed tokens, appends sampled
    /// tokens, registers newly full blocks in the prefix cache, and finishes
    /// sequences that reached `max_tokens` (their blocks are freed now).
    /// A sequence that should have sampled but has no token in `results`
    /// fails. Ids not in the last batch (or gone since) are ignored.
    pub fn on_step_done(&mut self, results: &[(SeqId, Option<u32>)]) -> Vec<FinishedSeq> {
        let sampled: HashMap<SeqId, u32> = results
            .iter()
            .filter_map(|&(id, tok)| tok.map(|t| (id, t)))
            .collect();
        let mut done = Vec::new();
        for step in std::mem::take(&mut self.in_flight) {
            let Some(seq) = self.running.iter_mut().find(|s| s.id == step.id) else {
                continue; // aborted or finished since the step was planned
            };
            seq.num_computed += step.num_tokens;
            if step.sample {
                match sampled.get(&step.id) {
                    Some(&tok) => seq.push_output(tok),
                    None => {
                        done.push((step.id, FinishReason::Failed));
                        continue;
                    }
                }
            }
            let n = seq.num_computed;
            let (seq_blocks, tokens) = seq.blocks_and_tokens();
            self.blocks.mark_full_blocks(seq_blocks, &tokens[..n]);
            if seq.reached_max_tokens() {
                done.push((step.id, FinishReason::Length));
            }
        }
        done.into_iter()
            .filter_map(|(id, why)| self.remove(id, why))
            .collect()
    }

    /// Frees and removes exactly the sequences of a failed step.
    pub fn on_step_failed(&mut self, ids: &[SeqId]) -> Vec<FinishedSeq> {
        self.in_flight.retain(|f| !ids.contains(&f.id));
        ids.iter()
            .filter_map(|&id| self.remove(id, FinishReason::Failed))
            .collect()
    }

    /// The caller saw a stop condition (EOS, stop string): frees it now.
    pub fn finish(&mut self, id: SeqId) -> Option<FinishedSeq> {
        self.remove(id, FinishReason::Stop)
    }

    /// Cancels a waiting or running sequence and frees its blocks now.
    /// Returns false if the id is unknown (already finished).
    pub fn abort(&mut self, id: SeqId) -> bool {
        self.remove(id, FinishReason::Aborted).is_some()
    }

    fn remove(&mut self, id: SeqId, reason: FinishReason) -> Option<FinishedSeq> {
        let mut seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let (qi, i) = self
                .waiting
                .iter()
                .enumerate()
                .find_map(|(qi, q)| q.iter().position(|s| s.id == id).map(|i| (qi, i)))?;
            self.waiting[qi].remove(i)?
        };
        self.blocks.free(&mut seq.blocks);
        self.live.remove(&id);
        seq.status = SeqStatus::Finished(reason);
        Some(FinishedSeq {
            id,
            reason,
            output: seq.output().to_vec(),
        })
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    /// Nothing waiting or running.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.num_waiting() == 0
    }

    /// Fraction of KV blocks referenced by sequences.
    pub fn kv_usage(&self) -> f64 {
        self.blocks.usage()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The KV pool, read-only (free counts, prefix-cache hit counters).
    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }

    /// Checks the pool against every live block table, that waiting
    /// sequences hold no blocks, and the running limits. For tests and
    /// debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        let tables: Vec<_> = self.running.iter().map(|s| &s.blocks).collect();
        self.blocks.check_invariants(&tables)?;
        if let Some(s) = self
            .waiting
            .iter()
            .flatten()
            .find(|s| s.blocks.num_blocks() > 0)
        {
            return Err(format!("waiting {} holds blocks", s.id));
        }
        if self.running.len() > self.config.max_num_seqs {
            return Err(format!("{} running > max_num_seqs", self.running.len()));
        }
        let bs = self.config.block_size;
        for s in &self.running {
            if s.num_computed >= s.len() || s.blocks.capacity(bs) < s.num_computed {
                return Err(format!(
                    "{}: computed {} of {}",
                    s.id,
                    s.num_computed,
                    s.len()
                ));
            }
        }
        if self.live.len() != self.running.len() + self.num_waiting() {
            return Err("live id set out of sync".into());
        }
        Ok(())
    }
}

/// Whether `seq` shares full blocks, beyond those cached now, with a running
/// sequence that has not computed them yet. Admitting it now would compute
/// the same K/V twice in parallel (a burst of requests with one system
/// prompt would each prefill it); held back, it finds them cached a step or
/// two later, once the other's prefill has registered them. It holds the
/// queue behind it only while that prefill runs, which makes progress every
/// step (prefills are planned before admission), so nothing starves.
/// Only with prefix caching on: without it the blocks are never shared.
///
/// Waiting costs at least a step, so it is worth it only while the shared
/// part still missing is larger than `seq`'s own part: once the other
/// prefill has most of the shared blocks cached (its last chunk straddles a
/// step), `seq` is admitted with that partial hit and computes the few
/// missing shared tokens itself, at most doubling its own prefill (the
/// cache keeps one of the two copies of those blocks).
fn awaits_shared_prefill(running: &[Sequence], blocks: &BlockManager, seq: &Sequence) -> bool {
    let bs = blocks.block_size();
    let tokens = seq.all_tokens();
    // A prompt never hits its last token (see allocate_prompt).
    let hittable = tokens.len().saturating_sub(1) / bs * bs;
    let mut cached = None;
    running.iter().filter(|r| !r.is_decoding()).any(|r| {
        let common = r.all_tokens().iter().zip(tokens).take_while(|(a, b)| a == b).count();
        let shared = common.min(hittable) / bs * bs;
        if shared == 0 || r.num_computed >= shared {
            return false;
        }
        let cached = *cached.get_or_insert_with(|| blocks.cached_prefix_tokens(tokens));
        shared.saturating_sub(cached) > tokens.len() - shared
    })
}
