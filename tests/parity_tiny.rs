//! Architecture parity on tiny random models written by transformers
//! (weights/fixtures_tiny.py): full-sequence logits equal transformers' to
//! 1e-4 in f32; prefill + paged step-by-step decode, chunked prefill after a
//! cached prefix, and batched decode all reproduce the full forward.

mod common;

use common::*;
use inferd::model::{LogitsFor, Model};
use tch::{Kind, Tensor};

const MODELS: [&str; 3] = ["tiny/tiny-llama", "tiny/tiny-qwen2", "tiny/tiny-gpt2"];
const BLOCK: i64 = 4;
const F32_TOL: f64 = 1e-4;

fn reference(name: &str) -> (Vec<i64>, Tensor, Tensor) {
    let path = fixture(&format!("{name}/reference.safetensors"));
    let named = Tensor::read_safetensors(&path).expect("reference");
    let get = |k: &str| named.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone()).expect(k);
    (to_vec_i64(&get("input_ids")), get("logits_f32"), get("logits_bf16"))
}

fn full_forward(model: &Model, ids: &[i64]) -> Tensor {
    let mut cache = model.new_cache(64, BLOCK).unwrap();
    let mut blocks = Blocks::new(64);
    let mut table = Vec::new();
    blocks.cover(&mut table, ids.len() as i64, BLOCK);
    model.forward(&[seq(ids, 0, &table)], &mut cache, LogitsFor::AllTokens).unwrap()
}

#[test]
fn full_sequence_logits_match_transformers_f32() {
    for name in MODELS {
        let model = load_hf(name, Kind::Float);
        let (ids, want, _) = reference(name);
        let got = full_forward(&model, &ids);
        let diff = max_abs_diff(&got, &want);
        println!("{name}: f32 max|diff| = {diff:.2e}");
        assert!(diff <= F32_TOL, "{name}: f32 logits differ from transformers by {diff}");
    }
}

#[test]
fn bf16_is_as_close_to_f32_truth_as_transformers_bf16() {
    for name in MODELS {
        let model = load_hf(name, Kind::BFloat16);
        let (ids, f32_ref, bf16_ref) = reference(name);
        let got = full_forward(&model, &ids);
        let ours = max_abs_diff(&got, &f32_ref);
        let theirs = max_abs_diff(&bf16_ref, &f32_ref);
        let vs = max_abs_diff(&got, &bf16_ref);
        println!("{name}: bf16 vs f32 truth: ours {ours:.3e}, transformers {theirs:.3e}; ours vs theirs {vs:.3e}");
        assert!(ours <= 2.0 * theirs + 0.02, "{name}: bf16 error {ours} vs transformers' own {theirs}");
    }
}

#[test]
fn paged_decode_matches_full_forward() {
    for name in MODELS {
        let model = load_hf(name, Kind::Float);
        let (ids, _, _) = reference(name);
        let full = full_forward(&model, &ids);
        let mut cache = model.new_cache(64, BLOCK).unwrap();
        let mut blocks = Blocks::new(64);
        let mut table = Vec::new();
        let prompt = 9; // not a block multiple
        blocks.cover(&mut table, prompt, BLOCK);
        let first = model.forward(&[seq(&ids[..prompt as usize], 0, &table)], &mut cache, LogitsFor::LastToken).unwrap();
        let mut worst = max_abs_diff(&first.get(0), &full.get(prompt - 1));
        for p in prompt..ids.len() as i64 {
            blocks.cover(&mut table, p + 1, BLOCK);
            let l = model.forward(&[seq(&ids[p as usize..p as usize + 1], p, &table)], &mut cache, LogitsFor::LastToken).unwrap();
            worst = worst.max(max_abs_diff(&l.get(0), &full.get(p)));
        }
        println!("{name}: paged decode vs full forward max|diff| = {worst:.2e}");
        assert!(worst <= F32_TOL, "{name}: paged decode differs by {worst}");
    }
}

#[test]
fn chunked_prefill_after_cached_prefix_matches_full_forward() {
    for name in MODELS {
        let model = load_hf(name, Kind::Float);
        let (ids, _, _) = reference(name);
        let full = full_forward(&model, &ids);
        let mut cache = model.new_cache(64, BLOCK).unwrap();
        let mut blocks = Blocks::new(64);
        let mut table = Vec::new();
        // Three chunks: [0,12) fresh, [12,25) after a block-aligned prefix, [25,40) unaligned.
        let mut worst: f64 = 0.0;
        for (a, b) in [(0usize, 12usize), (12, 25), (25, ids.len())] {
            blocks.cover(&mut table, b as i64, BLOCK);
            let l = model.forward(&[seq(&ids[a..b], a as i64, &table)], &mut cache, LogitsFor::AllTokens).unwrap();
            worst = worst.max(max_abs_diff(&l, &full.narrow(0, a as i64, (b - a) as i64)));
        }
        println!("{name}: chunked prefill max|diff| = {worst:.2e}");
        assert!(worst <= F32_TOL, "{name}: chunked prefill differs by {worst}");
    }
}

#[test]
fn mixed_batch_of_prefills_and_decodes_matches_each_alone() {
    for name in MODELS {
        let model = load_hf(name, Kind::Float);
        let (ids, _, _) = reference(name);
        let full = full_forward(&model, &ids);
        let mut cache = model.new_cache(128, BLOCK).unwrap();
        let mut blocks = Blocks::new(128);
        // Sequences are prefixes of `ids` of different lengths, so the full
        // forward gives each one's expected logits.
        let lens = [5usize, 9, 13, 3, 17, 8];
        let mut tables: Vec<Vec<i64>> = vec![Vec::new(); lens.len()];
        let mut pos = vec![0usize; lens.len()];
        // Step 1: prefill the first three, others wait.
        let mut worst: f64 = 0.0;
        for step in 0..12 {
            let mut inputs = Vec::new();
            let mut who = Vec::new();
            // Decodes first (running sequences), then prefills, as the scheduler orders them.
            for i in 0..lens.len() {
                if pos[i] > 0 && pos[i] < ids.len() {
                    blocks.cover(&mut tables[i], pos[i] as i64 + 1, BLOCK);
                    inputs.push(seq(&ids[pos[i]..pos[i] + 1], pos[i] as i64, &tables[i]));
                    who.push((i, pos[i] + 1));
                }
            }
            for i in 0..lens.len() {
                if pos[i] == 0 && step >= i / 2 {
                    blocks.cover(&mut tables[i], lens[i] as i64, BLOCK);
                    inputs.push(seq(&ids[..lens[i]], 0, &tables[i]));
                    who.push((i, lens[i]));
                }
            }
            if inputs.is_empty() {
                continue;
            }
            let l = model.forward(&inputs, &mut cache, LogitsFor::LastToken).unwrap();
            for (row, &(i, new_pos)) in who.iter().enumerate() {
                worst = worst.max(max_abs_diff(&l.get(row as i64), &full.get(new_pos as i64 - 1)));
                pos[i] = new_pos;
            }
        }
        println!("{name}: mixed batch max|diff| = {worst:.2e}");
        assert!(worst <= F32_TOL, "{name}: mixed batch differs by {worst}");
    }
}
