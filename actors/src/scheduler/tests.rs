//! Scheduler tests against a fake executor that simulates the paged KV pool:
//! each slot stores a fingerprint of the token prefix its K/V were computed
//! for, so a step that reads stale, clobbered or wrongly shared K/V fails,
//! and sampled tokens depend only on the context (as with greedy decoding),
//! so preemption, chunking and prefix hits must not change any output.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::block_manager::chain_hash;

const BS: usize = 4;

fn cfg(num_blocks: usize, max_batched_tokens: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_batched_tokens,
        block_size: BS,
        num_blocks,
        enable_prefix_caching: true,
    }
}

/// What the K/V at the last position of `ctx` depend on: the whole prefix.
fn fingerprint(ctx: &[u32]) -> u64 {
    chain_hash(None, ctx).0
}

/// The "model": the next token is a function of the context alone.
fn next_token(ctx: &[u32]) -> u32 {
    (fingerprint(ctx) % 1000) as u32
}

/// What an unbatched, never-preempted run would generate.
fn reference(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut all = prompt.to_vec();
    for _ in 0..max_tokens {
        all.push(next_token(&all));
    }
    all.split_off(prompt.len())
}

#[derive(Default)]
struct FakeModel {
    /// Simulated KV pool: slot -> fingerprint of the prefix written there.
    kv: HashMap<u64, u64>,
    /// The test's own copy of each live sequence's tokens.
    tokens: HashMap<SeqId, Vec<u32>>,
    prompts: HashMap<SeqId, (Vec<u32>, usize)>,
}

impl FakeModel {
    fn add(&mut self, s: &mut Scheduler, id: u64, prio: Priority, prompt: Vec<u32>, max: usize) {
        let id = SeqId(id);
        s.add(Sequence::new(id, prio, prompt.clone(), max))
            .expect("valid test request");
        self.tokens.insert(id, prompt.clone());
        self.prompts.insert(id, (prompt, max));
    }

    fn assert_cached_prefixes(&self, batch: &ScheduledBatch) {
        for s in &batch.seqs {
            let all = &self.tokens[&s.id];
            for p in 0..s.context_len {
                let slot = s.block_table[p / BS].0 as u64 * BS as u64 + (p % BS) as u64;
                let want = fingerprint(&all[..=p]);
                assert_eq!(
                    self.kv.get(&slot),
                    Some(&want),
                    "{} pos {p}: wrong K/V",
                    s.id
                );
            }
        }
    }

    /// Runs one step: checks what is fed and read, writes K/V, samples.
    fn step(&mut self, batch: &ScheduledBatch) -> Vec<(SeqId, Option<u32>)> {
        let mut written = HashSet::new();
        for s in &batch.seqs {
            let all = &self.tokens[&s.id];
            assert_eq!(
                &all[s.start_pos..s.context_len],
                &s.tokens[..],
                "{} fed wrong tokens",
                s.id
            );
            assert_eq!(s.slot_mapping.len(), s.tokens.len());
            for (j, &slot) in s.slot_mapping.iter().enumerate() {
                assert!(
                    written.insert(slot),
                    "slot {slot} written twice in one step"
                );
                self.kv.insert(slot, fingerprint(&all[..=s.start_pos + j]));
            }
        }
        // After all writes: every sequence still sees its whole context.
        self.assert_cached_prefixes(batch);
        let mut out = Vec::new();
        for s in &batch.seqs {
            let tok = s.sample.then(|| {
                let all = self.tokens.get_mut(&s.id).expect("scheduled ids are live");
                assert_eq!(s.context_len, all.len(), "samples only at the end");
                let t = next_token(all);
                all.push(t);
                t
            });
            out.push((s.id, tok));
        }
        out
    }

    /// Checks a finished sequence's output against the reference run.
    fn check_finished(&mut self, f: &FinishedSeq) {
        let (prompt, max) = self.prompts.remove(&f.id).expect("finished once");
        self.tokens.remove(&f.id);
        let want = reference(&prompt, max);
        match f.reason {
            FinishReason::Length => assert_eq!(f.output, want, "{} output", f.id),
            _ => assert_eq!(
                &want[..f.output.len()],
                &f.output[..],
                "{} partial output",
                f.id
            ),
        }
    }
}

/// One full step: schedule, check limits, execute, apply, check invariants.
fn step(s: &mut Scheduler, m: &mut FakeModel) -> (ScheduledBatch, Vec<FinishedSeq>) {
    let batch = s.schedule();
    assert!(batch.num_tokens() <= s.config().max_batched_tokens);
    assert!(batch.seqs.len() <= s.config().max_num_seqs);
    let results = m.step(&batch);
    let finished = s.on_step_done(&results);
    finished.iter().for_each(|f| m.check_finished(f));
    s.check_invariants().expect("invariants after a step");
    (batch, finished)
}

fn run_until_idle(s: &mut Scheduler, m: &mut FakeModel) -> Vec<FinishedSeq> {
    let mut all = Vec::new();
    for _ in 0..10_000 {
        if s.is_idle() {
            return all;
        }
        all.extend(step(s, m).1);
    }
    panic!("scheduler did not drain");
}

fn ids_and_lens(batch: &ScheduledBatch) -> Vec<(u64, usize, usize, bool)> {
    batch
        .seqs
        .iter()
        .map(|s| (s.id.0, s.start_pos, s.tokens.len(), s.sample))
        .collect()
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| seed * 1000 + i).collect()
}

#[test]
fn budget_takes_decodes_first_then_prefill_chunks() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(64, 10, 8)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 3), 5);
    m.add(&mut s, 2, Priority::Batch, prompt(2, 3), 5);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 0, 3, true), (2, 0, 3, true)]);
    m.add(&mut s, 3, Priority::Interactive, prompt(3, 20), 5);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(
        ids_and_lens(&b),
        vec![(1, 3, 1, true), (2, 3, 1, true), (3, 0, 8, false)]
    );
    assert_eq!(b.num_tokens(), 10, "the budget is filled");
}

#[test]
fn long_prompt_is_prefilled_in_chunks_across_steps() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(64, 10, 8)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 25), 2);
    let chunks: Vec<_> = (0..4)
        .map(|_| ids_and_lens(&step(&mut s, &mut m).0))
        .collect();
    assert_eq!(
        chunks,
        vec![
            vec![(1, 0, 10, false)],
            vec![(1, 10, 10, false)],
            vec![(1, 20, 5, true)],
            vec![(1, 25, 1, true)]
        ]
    );
    assert!(s.is_idle(), "finished after max_tokens");
    assert_eq!(s.block_manager().num_free(), 64);
}

#[test]
fn max_num_seqs_is_respected() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(64, 100, 2)).unwrap(),
        FakeModel::default(),
    );
    for id in 1..=3 {
        m.add(&mut s, id, Priority::Batch, prompt(id as u32, 2), 3);
    }
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(b.seqs.len(), 2);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
    let done = run_until_idle(&mut s, &mut m);
    assert_eq!(done.len(), 3);
}

#[test]
fn interactive_is_admitted_before_batch_and_fcfs_within_priority() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(64, 100, 1)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 2), 2);
    m.add(&mut s, 2, Priority::Batch, prompt(2, 2), 2);
    m.add(&mut s, 3, Priority::Interactive, prompt(3, 2), 2);
    m.add(&mut s, 4, Priority::Interactive, prompt(4, 2), 2);
    let order: Vec<u64> = run_until_idle(&mut s, &mut m)
        .iter()
        .map(|f| f.id.0)
        .collect();
    assert_eq!(order, vec![3, 4, 1, 2]);
}

#[test]
fn batch_waits_while_an_interactive_head_does_not_fit() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(6, 100, 8)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 12), 4); // 3 blocks now, 4 at most
    step(&mut s, &mut m);
    m.add(&mut s, 2, Priority::Interactive, prompt(2, 16), 1); // 4 blocks: does not fit
    m.add(&mut s, 3, Priority::Batch, prompt(3, 2), 1); // would fit, must wait
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 12, 1, true)]);
    let order: Vec<u64> = run_until_idle(&mut s, &mut m)
        .iter()
        .map(|f| f.id.0)
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
}

#[test]
fn exhaustion_preempts_the_newest_and_all_complete() {
    let (mut s, mut m) = (Scheduler::new(cfg(6, 64, 8)).unwrap(), FakeModel::default());
    for id in 1..=3 {
        m.add(&mut s, id, Priority::Batch, prompt(id as u32, 4), 10); // 4 blocks each at most
    }
    let mut first_victim = None;
    let mut done = Vec::new();
    while !s.is_idle() {
        let before: HashSet<SeqId> = s.running.iter().map(|q| q.id).collect();
        let preempted_before = s.num_preemptions();
        let (b, fin) = step(&mut s, &mut m);
        if first_victim.is_none() && s.num_preemptions() > preempted_before {
            let fed: HashSet<SeqId> = b.seqs.iter().map(|q| q.id).collect();
            first_victim = before.difference(&fed).next().copied();
        }
        done.extend(fin);
    }
    assert_eq!(
        first_victim,
        Some(SeqId(3)),
        "the newest running sequence is preempted"
    );
    assert!(s.num_preemptions() >= 1);
    assert_eq!(done.len(), 3);
    assert!(done
        .iter()
        .all(|f| f.reason == FinishReason::Length && f.output.len() == 10));
    assert!(
        s.block_manager().prefix_hit_tokens() > 0,
        "recompute reused its cached blocks"
    );
    assert_eq!(s.block_manager().num_free(), 6);
}

#[test]
fn prefix_hits_at_admission_skip_the_cached_tokens() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(32, 100, 8)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 10), 3);
    step(&mut s, &mut m);
    // While 1 runs, 2 shares its two full blocks (refcount 2, checked by invariants).
    let mut p2 = prompt(1, 8);
    p2.extend([7, 7, 7]);
    m.add(&mut s, 2, Priority::Batch, p2, 2);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 10, 1, true), (2, 8, 3, true)]);
    assert_eq!(b.seqs[0].block_table[..2], b.seqs[1].block_table[..2]);
    run_until_idle(&mut s, &mut m);
    // After both ended: a miss, then a hit on freed-but-cached blocks. The
    // hit is admitted first (longest cached prefix first).
    m.add(&mut s, 3, Priority::Batch, prompt(9, 10), 1);
    m.add(&mut s, 4, Priority::Batch, prompt(1, 10), 1);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(4, 8, 2, true), (3, 0, 10, true)]);
}

#[test]
fn the_longest_cached_prefix_is_admitted_first() {
    // Budget 5: after the hit's 2 new tokens, the older miss gets a 3-token chunk.
    let (mut s, mut m) = (Scheduler::new(cfg(32, 5, 4)).unwrap(), FakeModel::default());
    m.add(&mut s, 1, Priority::Batch, prompt(1, 10), 1);
    run_until_idle(&mut s, &mut m);
    m.add(&mut s, 2, Priority::Batch, prompt(9, 10), 1);
    m.add(&mut s, 3, Priority::Batch, prompt(1, 10), 1);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(3, 8, 2, true), (2, 0, 3, false)]);
    run_until_idle(&mut s, &mut m);
}

#[test]
fn overtaking_a_waiting_sequence_is_bounded() {
    // One sequence at a time, so the finish order is the admission order. A
    // miss (2) waits behind nothing but 40 later cache hits: it lets
    // MAX_OVERTAKEN of them go first, then goes itself.
    let (mut s, mut m) = (Scheduler::new(cfg(64, 100, 1)).unwrap(), FakeModel::default());
    m.add(&mut s, 1, Priority::Batch, prompt(1, 10), 1);
    run_until_idle(&mut s, &mut m);
    m.add(&mut s, 2, Priority::Batch, prompt(9, 10), 1);
    for id in 10..50 {
        m.add(&mut s, id, Priority::Batch, prompt(1, 10), 1);
    }
    let order: Vec<u64> = run_until_idle(&mut s, &mut m).iter().map(|f| f.id.0).collect();
    let limit = MAX_OVERTAKEN as usize;
    let mut want: Vec<u64> = (10..10 + limit as u64).collect();
    want.push(2);
    want.extend(10 + limit as u64..50);
    assert_eq!(order, want);
}

#[test]
fn a_burst_sharing_a_prefix_computes_it_once() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(64, 100, 8)).unwrap(),
        FakeModel::default(),
    );
    // 1 and 3 share three full blocks; 2 shares nothing; all arrive at once.
    let shared = prompt(1, 12);
    let mut p3 = shared.clone();
    p3.extend([5, 5]);
    let mut p1 = shared;
    p1.extend([6, 6, 6]);
    m.add(&mut s, 1, Priority::Batch, p1, 2);
    m.add(&mut s, 2, Priority::Batch, prompt(50, 6), 2);
    m.add(&mut s, 3, Priority::Batch, p3, 2);
    let (b, _) = step(&mut s, &mut m);
    // 3 waits while 1 computes the shared blocks; next step they are hits.
    assert_eq!(ids_and_lens(&b), vec![(1, 0, 15, true), (2, 0, 6, true)]);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 15, 1, true), (2, 6, 1, true), (3, 12, 2, true)]);
    assert_eq!(b.seqs[0].block_table[..3], b.seqs[2].block_table[..3]);
    run_until_idle(&mut s, &mut m);
}

/// Budget 10: sequence 1's 16-token prompt takes two steps. After the
/// first, 2 arrives with the same first 12 tokens and `own` more: two of
/// the three shared blocks are cached then, the third is still being
/// computed.
fn a_follower_arrives_mid_prefill(own: &[u32]) -> (Scheduler, FakeModel) {
    let (mut s, mut m) = (Scheduler::new(cfg(64, 10, 8)).unwrap(), FakeModel::default());
    let mut p1 = prompt(1, 12);
    p1.extend([6, 6, 6, 6]);
    m.add(&mut s, 1, Priority::Batch, p1, 2);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 0, 10, false)]);
    let mut p2 = prompt(1, 12);
    p2.extend(own);
    m.add(&mut s, 2, Priority::Batch, p2, 1);
    (s, m)
}

#[test]
fn a_shared_prefix_split_over_chunks_is_waited_for_to_the_end() {
    // 2 has one token of its own, fewer than the four shared ones missing,
    // so it waits one more step for the third block.
    let (mut s, mut m) = a_follower_arrives_mid_prefill(&[7]);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 10, 6, true)]);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 16, 1, true), (2, 12, 1, true)]);
    run_until_idle(&mut s, &mut m);
}

#[test]
fn a_shared_prefix_nearly_cached_is_not_waited_for() {
    // 2 has 8 tokens of its own, more than the four shared ones missing, so
    // it is admitted with the two cached blocks and computes the third
    // itself beside 1's last chunk; the cache keeps one copy of it.
    let (mut s, mut m) = a_follower_arrives_mid_prefill(&[7; 8]);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(1, 10, 6, true), (2, 8, 4, false)]);
    assert_eq!(b.seqs[0].block_table[..2], b.seqs[1].block_table[..2]);
    assert_ne!(b.seqs[0].block_table[2], b.seqs[1].block_table[2], "2 computes its own copy of the third block");
    let finished = run_until_idle(&mut s, &mut m);
    assert_eq!(finished.len(), 2);
    // The cache kept one copy of the shared blocks: a third prompt hits all three.
    let mut p3 = prompt(1, 12);
    p3.extend([8]);
    m.add(&mut s, 3, Priority::Batch, p3, 1);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(3, 12, 1, true)]);
    run_until_idle(&mut s, &mut m);
}

#[test]
fn prefix_caching_disabled_recomputes_everything() {
    let config = SchedulerConfig {
        enable_prefix_caching: false,
        ..cfg(32, 100, 8)
    };
    let (mut s, mut m) = (Scheduler::new(config).unwrap(), FakeModel::default());
    m.add(&mut s, 1, Priority::Batch, prompt(1, 10), 1);
    run_until_idle(&mut s, &mut m);
    m.add(&mut s, 2, Priority::Batch, prompt(1, 10), 1);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(2, 0, 10, true)]);
    // Nothing can be shared, so a burst with one prefix is admitted at once.
    m.add(&mut s, 3, Priority::Batch, prompt(1, 10), 1);
    m.add(&mut s, 4, Priority::Batch, prompt(1, 10), 1);
    let (b, _) = step(&mut s, &mut m);
    assert_eq!(ids_and_lens(&b), vec![(3, 0, 10, true), (4, 0, 10, true)]);
}

#[test]
fn abort_frees_blocks_of_waiting_and_running_sequences() {
    let (mut s, mut m) = (Scheduler::new(cfg(8, 6, 4)).unwrap(), FakeModel::default());
    for id in 1..=4 {
        m.add(&mut s, id, Priority::Batch, prompt(id as u32, 7), 5);
    }
    step(&mut s, &mut m);
    step(&mut s, &mut m);
    assert!(s.num_running() > 0 && s.num_waiting() > 0);
    assert!(s.block_manager().num_free() < 8);
    for id in 1..=4 {
        assert!(s.abort(SeqId(id)));
    }
    assert!(!s.abort(SeqId(1)), "already gone");
    assert!(s.is_idle());
    assert_eq!(s.block_manager().num_free(), s.block_manager().num_total());
    s.check_invariants().unwrap();
    assert!(s.schedule().is_empty());
}

#[test]
fn failed_step_frees_exactly_its_sequences() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(16, 100, 8)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 5), 4);
    m.add(&mut s, 2, Priority::Batch, prompt(2, 5), 4);
    step(&mut s, &mut m);
    let batch = s.schedule();
    assert_eq!(batch.seqs.len(), 2);
    let failed = s.on_step_failed(&[SeqId(1)]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].reason, FinishReason::Failed);
    s.check_invariants().unwrap();
    assert_eq!(s.num_running(), 1);
    m.tokens.remove(&SeqId(1));
    let done = run_until_idle(&mut s, &mut m);
    assert_eq!(done.len(), 1);
    assert_eq!(s.block_manager().num_free(), s.block_manager().num_total());
}

#[test]
fn missing_sample_fails_the_sequence_and_finish_frees_it() {
    let (mut s, mut m) = (
        Scheduler::new(cfg(16, 100, 8)).unwrap(),
        FakeModel::default(),
    );
    m.add(&mut s, 1, Priority::Batch, prompt(1, 5), 4);
    m.add(&mut s, 2, Priority::Batch, prompt(2, 5), 4);
    let batch = s.schedule();
    let done = s.on_step_done(&[(SeqId(2), Some(5))]); // nothing for 1
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].id, done[0].reason),
        (SeqId(1), FinishReason::Failed)
    );
    assert_eq!(batch.seqs.len(), 2);
    let stopped = s.finish(SeqId(2)).expect("2 is running");
    assert_eq!(
        (stopped.reason, stopped.output),
        (FinishReason::Stop, vec![5])
    );
    assert_eq!(s.block_manager().num_free(), 16);
    s.check_invariants().unwrap();
}

#[test]
fn add_refuses_requests_that_can_never_run() {
    let mut s = Scheduler::new(cfg(4, 100, 8)).unwrap();
    let seq = |id, len, max| Sequence::new(SeqId(id), Priority::Batch, prompt(1, len), max);
    assert_eq!(s.add(seq(1, 0, 1)), Err(AddError::EmptyPrompt));
    assert_eq!(s.add(seq(1, 3, 0)), Err(AddError::ZeroMaxTokens));
    assert_eq!(
        s.add(seq(1, 16, 2)),
        Err(AddError::TooLong {
            needed: 5,
            total: 4
        })
    );
    assert_eq!(
        s.add(seq(1, 16, 1)),
        Ok(()),
        "the last sample needs no slot"
    );
    assert_eq!(s.add(seq(1, 2, 1)), Err(AddError::DuplicateId(1)));
    assert!(Scheduler::new(cfg(4, 0, 8)).is_err());
    assert!(Scheduler::new(cfg(4, 8, 0)).is_err());
    assert!(matches!(
        Scheduler::new(cfg(4, 4, 8)),
        Err(ConfigError::BudgetBelowMaxNumSeqs { .. })
    ));
}

/// Minimal deterministic generator (Knuth's MMIX LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One random round: maybe add, maybe abort or stop one, then a step that
/// sometimes fails for some of its sequences.
fn random_round(s: &mut Scheduler, m: &mut FakeModel, rng: &mut Lcg, next_id: &mut u64) {
    if rng.next(2) == 0 {
        // Few shared prefixes so that prefix hits, sharing and eviction happen.
        let mut p = prompt(rng.next(3) as u32, rng.next(14) as usize);
        p.extend((0..1 + rng.next(12)).map(|_| rng.next(5) as u32));
        let prio = if rng.next(2) == 0 {
            Priority::Interactive
        } else {
            Priority::Batch
        };
        *next_id += 1;
        m.add(s, *next_id, prio, p, 1 + rng.next(20) as usize);
    }
    let live: Vec<SeqId> = m.prompts.keys().copied().collect();
    if !live.is_empty() && rng.next(10) == 0 {
        let id = live[rng.next(live.len() as u64) as usize];
        let f = if rng.next(2) == 0 {
            s.finish(id)
        } else {
            s.abort(id).then(|| partial(m, id))
        };
        if let Some(f) = f {
            m.check_finished(&f);
        }
    }
    s.check_invariants().expect("invariants after abort/finish");
    if rng.next(12) == 0 {
        let batch = s.schedule();
        let ids: Vec<SeqId> = batch
            .seqs
            .iter()
            .map(|q| q.id)
            .filter(|_| rng.next(2) == 0)
            .collect();
        for f in s.on_step_failed(&ids) {
            m.check_finished(&f);
        }
        s.check_invariants()
            .expect("invariants after a failed step");
    } else {
        step(s, m);
    }
}

/// A FinishedSeq for an aborted id, built from the model's copy (abort returns bool).
fn partial(m: &FakeModel, id: SeqId) -> FinishedSeq {
    let (prompt, _) = &m.prompts[&id];
    let output = m.tokens[&id][prompt.len()..].to_vec();
    FinishedSeq {
        id,
        reason: FinishReason::Aborted,
        output,
    }
}

/// Small enough that decodes run out of blocks and preempt.
const POOL: usize = 16;

#[test]
fn randomized_rounds_keep_invariants_and_outputs() {
    for seed in 0..8 {
        let mut rng = Lcg(seed);
        let (mut s, mut m) = (
            Scheduler::new(cfg(POOL, 16, 8)).unwrap(),
            FakeModel::default(),
        );
        let mut next_id = 0;
        for _ in 0..400 {
            random_round(&mut s, &mut m, &mut rng, &mut next_id);
        }
        run_until_idle(&mut s, &mut m);
        eprintln!(
            "seed {seed}: {next_id} seqs, {} preemptions, {} hit tokens",
            s.num_preemptions(),
            s.block_manager().prefix_hit_tokens()
        );
        assert!(m.prompts.is_empty(), "seed {seed}: every sequence finished");
        assert_eq!(s.block_manager().num_free(), POOL, "seed {seed}: leak");
        assert!(
            s.num_preemptions() > 0,
            "seed {seed}: the pool is meant to run out"
        );
        assert!(
            s.block_manager().prefix_hit_tokens() > 0,
            "seed {seed}: prefixes are meant to hit"
        );
    }
}

/// A worker restart loses the device's KV: `preempt_all` must requeue every
/// running sequence (in running order, ahead of older waiters), free all
/// blocks, and forget the prefix cache so nothing stale is served; a fresh
/// simulated pool then still yields every reference output.
#[test]
fn preempt_all_requeues_everything_and_forgets_the_prefix_cache() {
    let mut s = Scheduler::new(cfg(64, 32, 2)).unwrap();
    let mut m = FakeModel::default();
    let shared = prompt(7, 9);
    m.add(&mut s, 1, Priority::Batch, shared.clone(), 6);
    m.add(&mut s, 2, Priority::Batch, prompt(2, 5), 6);
    m.add(&mut s, 3, Priority::Batch, prompt(3, 5), 6);
    for _ in 0..4 {
        step(&mut s, &mut m);
    }
    assert_eq!(s.num_running(), 2);
    let before = s.num_preemptions();

    s.preempt_all();
    s.check_invariants().expect("invariants after preempt_all");
    assert_eq!(s.num_running(), 0);
    assert_eq!(s.num_waiting(), 3);
    assert_eq!(s.num_preemptions(), before + 2);
    assert_eq!(s.block_manager().num_free(), 64, "every block is free");
    assert_eq!(
        s.block_manager().num_cached_free(),
        0,
        "no cached prefix survives"
    );

    // The device lost its KV: a fresh simulated pool.
    m.kv.clear();
    let b = s.schedule();
    let ids: Vec<u64> = b.seqs.iter().map(|q| q.id.0).collect();
    assert_eq!(ids, vec![1, 2], "the preempted run first, in running order");
    assert!(
        b.seqs.iter().all(|q| q.start_pos == 0),
        "no prefix hit on lost KV"
    );
    let results = m.step(&b);
    s.on_step_done(&results)
        .iter()
        .for_each(|f| m.check_finished(f));
    let finished = run_until_idle(&mut s, &mut m);
    assert_eq!(finished.len(), 3);
    assert!(finished.iter().all(|f| f.reason == FinishReason::Length));
}
