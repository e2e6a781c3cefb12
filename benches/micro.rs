//! Criterion micro-benchmarks of the engine's hot pure code, the work a
//! batcher does around every model forward:
//! - one scheduler step (schedule + on_step_done) with 256 running decodes;
//! - block manager: allocate a 512-token prompt and free it, cold and with a
//!   full prefix-cache hit;
//! - sampler: greedy, and temperature + top-k + top-p + penalties, over
//!   SmolLM2's 49,152-entry vocabulary;
//! - the incremental detokenizer with SmolLM2's real tokenizer, per token.
//!
//! `cargo bench --bench micro`. The figures put the engine's share of a step
//! in scale: a CPU decode step of SmolLM2 takes 40 ms to 1 s.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use inferd::exec::executor::TokenizerDecoder;
use inferd::model::source;
use inferd_actors::block_manager::{BlockManager, SeqBlocks};
use inferd_actors::detok::{Decode, IncrementalDecoder};
use inferd_actors::executor::TextDecoder;
use inferd_actors::ids::SeqId;
use inferd_actors::sampler::{Sampler, SamplingParams};
use inferd_actors::scheduler::{Scheduler, SchedulerConfig};
use inferd_actors::sequence::{Priority, Sequence};

const VOCAB: usize = 49_152;

/// Deterministic pseudo-random token ids in the vocabulary's word range.
fn ids(seed: u64, n: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1000 + (x % 30_000) as u32
        })
        .collect()
}

fn scheduler_step(c: &mut Criterion) {
    const SEQS: usize = 256;
    const MAX_TOKENS: usize = 256;
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_seqs: SEQS,
        max_batched_tokens: 8192,
        block_size: 16,
        num_blocks: SEQS * 24,
        enable_prefix_caching: true,
    })
    .expect("config");
    let mut next_id = 0u64;
    let mut add = |sched: &mut Scheduler| {
        let seq = Sequence::new(SeqId(next_id), Priority::Interactive, ids(next_id, 32), MAX_TOKENS);
        next_id += 1;
        sched.add(seq).expect("add");
    };
    for _ in 0..SEQS {
        add(&mut sched);
    }
    // Prefill everyone, so later steps are 256 decodes; a sequence that
    // reaches MAX_TOKENS is replaced, as in steady serving.
    let mut step = |sched: &mut Scheduler| {
        let batch = sched.schedule();
        let done: Vec<(SeqId, Option<u32>)> =
            batch.seqs.iter().map(|s| (s.id, s.sample.then_some(7))).collect();
        let finished = sched.on_step_done(&done);
        for _ in &finished {
            add(sched);
        }
        finished.len()
    };
    while sched.num_waiting() > 0 {
        step(&mut sched);
    }
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(SEQS as u64));
    g.bench_function("step_256_running", |b| b.iter(|| step(&mut sched)));
    g.finish();
}

fn block_manager(c: &mut Criterion) {
    let prompt = ids(1, 512);
    let mut g = c.benchmark_group("block_manager");
    g.bench_function("allocate_free_512_cold", |b| {
        let mut bm = BlockManager::new(4096, 16).expect("pool");
        bm.set_prefix_caching(false);
        b.iter(|| {
            let mut seq = SeqBlocks::default();
            bm.allocate_prompt(&mut seq, &prompt).expect("room");
            bm.free(&mut seq);
        })
    });
    g.bench_function("allocate_free_512_prefix_hit", |b| {
        let mut bm = BlockManager::new(4096, 16).expect("pool");
        bm.set_prefix_caching(true);
        let mut first = SeqBlocks::default();
        bm.allocate_prompt(&mut first, &prompt).expect("room");
        bm.mark_full_blocks(&mut first, &prompt);
        bm.free(&mut first);
        b.iter(|| {
            let mut seq = SeqBlocks::default();
            let cached = bm.allocate_prompt(&mut seq, &prompt).expect("room");
            assert_eq!(cached, 496);
            bm.free(&mut seq);
        })
    });
    g.finish();
}

fn logits(seed: u64) -> Vec<f32> {
    ids(seed, VOCAB).into_iter().map(|x| (x % 1000) as f32 / 100.0).collect()
}

fn sampler(c: &mut Criterion) {
    let prompt = ids(3, 128);
    let base = logits(5);
    let mut g = c.benchmark_group("sampler");
    g.throughput(Throughput::Elements(1));
    let cases = [
        ("greedy", SamplingParams::default()),
        (
            "temp_topk_topp_penalties",
            SamplingParams {
                temperature: 0.8,
                top_k: Some(50),
                top_p: 0.95,
                repetition_penalty: 1.1,
                frequency_penalty: 0.2,
                seed: Some(1),
                ..SamplingParams::default()
            },
        ),
        (
            "greedy_logprobs_5",
            SamplingParams {
                logprobs: Some(5),
                ..SamplingParams::default()
            },
        ),
    ];
    for (name, params) in cases {
        let mut s = Sampler::new(params, &prompt);
        g.bench_function(name, |b| {
            b.iter_batched_ref(|| base.clone(), |row| s.sample(row), BatchSize::LargeInput)
        });
    }
    g.finish();
}

struct Real(TokenizerDecoder);

impl Decode for Real {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.0.decode(ids)
    }
}

fn detokenizer(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let files = source::open(&path).expect("open SmolLM2 (run `make setup`)");
    let tok = std::sync::Arc::new(files.tokenizer);
    let text = "The quick brown fox jumps over the lazy dog. Ünïcödé façade — naïve café, 東京 🚀. ".repeat(4);
    let stream = tok.encode(&text, false).expect("encode");
    let d = Real(TokenizerDecoder(tok));
    let mut g = c.benchmark_group("detokenizer");
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("incremental_per_token", |b| {
        b.iter(|| {
            let mut dec = IncrementalDecoder::new(&stream[..2]);
            let mut out = String::new();
            for &id in &stream {
                out.push_str(&dec.push(&d, id).expect("decode"));
            }
            out.push_str(&dec.flush(&d).expect("flush"));
            out
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = scheduler_step, block_manager, sampler, detokenizer
}
criterion_main!(benches);
