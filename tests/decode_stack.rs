//! The one-call decode step (`decode_stack`) against the layer-by-layer
//! tensor path, on SmolLM2-135M in bf16 and with the file's GGUF blocks:
//! steps of 1 to 4 decode rows (the steps it serves), sequences of different
//! lengths, one of them past a 256-position attention partition, must give
//! the same logits bit for bit and write the same K/V into the pools.
//!
//! One test in its own binary: `decode_stack::set_enabled` is process-wide.

mod common;

use common::*;
use inferd::model::kv_cache::KvCache;
use inferd::model::{decode_stack, source, LogitsFor, Model, Placement, SeqInput};
use tch::{Kind, Tensor};

const GGUF: &str = "weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const BS: i64 = 16;

/// Where the stack serves bf16: the row kernel needs AVX512_BF16.
fn row_kernels() -> bool {
    inferd::model::gemv_bf16::available()
}

/// Prompts of 5 .. 300 tokens (ids from a fixed walk over the vocabulary).
fn prompts(n: usize) -> Vec<Vec<i64>> {
    let lens = [5usize, 37, 300, 129];
    (0..n).map(|i| (0..lens[i]).map(|t| ((t * 7919 + i * 131) % 40_000 + 100) as i64).collect()).collect()
}

/// One step on `cache`, with the stack on or off.
fn step(model: &Model, inputs: &[SeqInput], cache: &mut KvCache, stack: bool) -> Tensor {
    decode_stack::set_enabled(stack);
    let logits = model.forward(inputs, cache, LogitsFor::LastToken).expect("step");
    decode_stack::set_enabled(true);
    logits
}

fn check(at: Placement, label: &str) {
    let files = source::open(&root().join(GGUF)).expect("open SmolLM2 (run `make setup`)");
    let model = Model::from_source(&files.config, files.weights.as_ref(), at, Some(2048)).expect("model");
    for rows in 1..=4usize {
        let mut with = model.new_cache(128, BS).expect("cache");
        let mut without = model.new_cache(128, BS).expect("cache");
        let mut blocks = Blocks::new(128);
        let mut tables: Vec<Vec<i64>> = vec![Vec::new(); rows];
        let mut inputs: Vec<SeqInput> = Vec::new();
        for (i, p) in prompts(rows).iter().enumerate() {
            blocks.cover(&mut tables[i], p.len() as i64, BS);
            let prefill = seq(p, 0, &tables[i]);
            // Prefills take the tensor path either way; both caches get them.
            let a = step(&model, std::slice::from_ref(&prefill), &mut with, true);
            let b = step(&model, std::slice::from_ref(&prefill), &mut without, false);
            assert!(a.equal(&b), "{label}: prefill {i} differs");
            let next = a.argmax(-1, false).int64_value(&[0]);
            let pos = prefill.context_len();
            blocks.cover(&mut tables[i], pos + 1, BS);
            inputs.push(seq(&[next], pos, &tables[i]));
        }
        for s in 0..6 {
            let before = decode_stack::steps_run();
            let a = step(&model, &inputs, &mut with, true);
            assert_eq!(decode_stack::steps_run(), before + 1, "{label}, {rows} rows: the one-call step did not run");
            let b = step(&model, &inputs, &mut without, false);
            assert_eq!(decode_stack::steps_run(), before + 1, "{label}, {rows} rows: the one-call step ran while off");
            assert_eq!(a.size(), [rows as i64, model.config().vocab_size]);
            assert!(a.isfinite().all().int64_value(&[]) == 1, "{label}: non-finite logits");
            assert!(a.equal(&b), "{label}, {rows} rows, step {s}: logits differ by up to {}", max_abs_diff(&a, &b));
            for i in 0..rows {
                let next = a.get(i as i64).argmax(-1, false).int64_value(&[]);
                let pos = inputs[i].context_len();
                blocks.cover(&mut tables[i], pos + 1, BS);
                inputs[i] = seq(&[next], pos, &tables[i]);
            }
        }
        for l in 0..model.config().num_layers as usize {
            let (ka, va) = with.layer(l);
            let (ka, va) = (ka.shallow_clone(), va.shallow_clone());
            let (kb, vb) = without.layer(l);
            assert!(ka.equal(kb) && va.equal(vb), "{label}, {rows} rows: layer {l}'s K/V differ");
        }
        println!("{label}: {rows} rows, 6 steps: logits and K/V identical");
    }
    // A step of 5 rows is past the stack's reach: the tensor path serves it.
    assert!(!decode_stack::applies(5));
}

#[test]
fn one_call_step_gives_the_tensor_paths_bits() {
    if !row_kernels() {
        println!("skipped: no AVX512_BF16 here, so no row kernel and no one-call step");
        return;
    }
    check(cpu(Kind::BFloat16), "bf16");
    check(Placement { gguf_blocks: true, ..cpu(Kind::BFloat16) }, "GGUF blocks");
}
