//! Decode-step throughput of SmolLM2-135M on this machine's CPU, at batch 1, 8
//! and 32, in bf16 (the serving dtype) and f32: every sequence holds a
//! 128-token context and each iteration is one batched decode step (the same
//! slot is rewritten, so the context stays fixed). `bf16-ctx4096` repeats
//! bf16 at batch 1 and 8 with 4096-token contexts, where decode attention
//! reads as many bytes per step as the weights. `gguf-blocks` is bf16 with the
//! file's weights kept in their blocks (the layers' Q4_1, the tied head's
//! Q8_0: `quantization = "gguf"`), on CPUs with AVX512_BF16. The
//! `-tensor-path` cases run one-row steps layer by layer through tch instead
//! of in one native call (`decode_stack`), for comparison. Criterion reports
//! elements/s = generated tokens/s. `benches/transformers_decode.py` measures
//! transformers' generate on the same GGUF in the same `make bench` run.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inferd::model::{decode_stack, source, LogitsFor, Model, Placement, SeqInput};
use tch::{Device, Kind};

const CONTEXT: i64 = 128;
const BLOCK: i64 = 16;

fn decode_steps(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let files = source::open(&path).expect("open SmolLM2 (run `make setup`)");
    let mut group = c.benchmark_group("smollm2_decode_step");
    group.sample_size(20);
    // (name, kind, GGUF blocks, context, batches, one-call step on)
    let cases: [(&str, Kind, bool, i64, &[i64], bool); 6] = [
        ("bf16", Kind::BFloat16, false, CONTEXT, &[1, 8, 32], true),
        ("bf16-tensor-path", Kind::BFloat16, false, CONTEXT, &[1], false),
        ("gguf-blocks", Kind::BFloat16, true, CONTEXT, &[1, 8, 32], true),
        ("gguf-blocks-tensor-path", Kind::BFloat16, true, CONTEXT, &[1], false),
        ("bf16-ctx4096", Kind::BFloat16, false, 4096, &[1, 8], true),
        ("f32", Kind::Float, false, CONTEXT, &[1, 8, 32], true),
    ];
    for (name, kind, gguf_blocks, context, batches, stack) in cases {
        if gguf_blocks && !inferd::model::gemv_gguf::available() {
            continue;
        }
        let model = Model::from_source(&files.config, files.weights.as_ref(), Placement { device: Device::Cpu, kind, gguf_blocks }, Some(8192)).expect("model");
        for &batch in batches {
            let per_seq = (context + 1 + BLOCK - 1) / BLOCK;
            let mut cache = model.new_cache(per_seq * batch, BLOCK).expect("cache");
            let seqs: Vec<SeqInput> = (0..batch)
                .map(|b| SeqInput { tokens: (0..context).map(|t| (t * 7 + b) % 1000 + 10).collect(), start_pos: 0, block_table: (b * per_seq..(b + 1) * per_seq).collect() })
                .collect();
            // Prefill in pieces of at most 512 tokens, as the server's step budget would.
            for s in &seqs {
                for start in (0..context).step_by(512) {
                    let end = (start + 512).min(context);
                    let piece = SeqInput { tokens: s.tokens[start as usize..end as usize].to_vec(), start_pos: start, block_table: s.block_table.clone() };
                    let _ = model.forward(&[piece], &mut cache, LogitsFor::LastToken).expect("prefill");
                }
            }
            let step: Vec<SeqInput> = seqs.iter().map(|s| SeqInput { tokens: vec![42], start_pos: context, block_table: s.block_table.clone() }).collect();
            group.throughput(Throughput::Elements(batch as u64));
            decode_stack::set_enabled(stack);
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
                b.iter(|| model.forward(&step, &mut cache, LogitsFor::LastToken).expect("decode"))
            });
            decode_stack::set_enabled(true);
        }
    }
    group.finish();
}

criterion_group!(benches, decode_steps);
criterion_main!(benches);
