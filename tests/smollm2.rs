//! SmolLM2-135M-Instruct from its GGUF against transformers loading the same
//! file (weights/fixtures_smollm2.py): the same prompt ids from our tokenizer
//! and chat template, and token-identical greedy continuations; plus batched
//! decode of 8 sequences of different lengths equal to decoding each alone,
//! and bf16 prefill in chunks after a cached prefix against f32.
//!
//! Near ties: where the reference's top-2 logits differ by less than
//! NEAR_TIE at some step, the two implementations may legitimately pick
//! different tokens, so the comparison stops there and says so.

mod common;

use common::*;
use inferd::exec::sampler::SamplingParams;
use inferd::generate::{generate, GenerateRequest};
use inferd::model::chat_template::ChatMessage;
use inferd::model::tokenizer::Tokenizer;
use inferd::model::{source, LogitsFor, Model, Placement, SeqInput};
use serde_json::Value;
use tch::{Device, Kind};

const NEAR_TIE: f64 = 0.02;
const GGUF: &str = "weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

fn load(kind: Kind) -> (Model, Tokenizer) {
    load_at(cpu(kind))
}

fn load_at(at: Placement) -> (Model, Tokenizer) {
    let files = source::open(&root().join(GGUF)).expect("open SmolLM2 (run `make setup`)");
    let model = Model::from_source(&files.config, files.weights.as_ref(), at, Some(2048)).expect("model");
    (model, files.tokenizer)
}

/// bf16 with the file's Q4_1 layer weights kept in their blocks
/// (`quantization = "gguf"`), where the kernel runs (AVX512_BF16).
fn gguf_blocks() -> Option<Placement> {
    inferd::model::gemv_gguf::available().then_some(Placement { gguf_blocks: true, ..cpu(Kind::BFloat16) })
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("smollm2/greedy.json")).expect("greedy.json");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["cases"].as_array().expect("cases").clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Steps to compare: up to (not including) the first near tie.
fn comparable(margins: &[f64]) -> usize {
    margins.iter().position(|&m| m < NEAR_TIE).unwrap_or(margins.len())
}

#[test]
fn greedy_matches_transformers_on_chat_prompts() {
    let (model, tok) = load(Kind::Float);
    let cases = cases();
    assert!(cases.len() >= 8);
    let mut compared_total = 0;
    for case in &cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want_prompt = ids(&case["prompt_ids"]);
        let rendered = tok.apply_chat_template(&[ChatMessage::new("user", prompt)], true).expect("template");
        assert_eq!(rendered, case["rendered"].as_str().expect("rendered"), "chat template differs for {prompt:?}");
        let got_prompt = tok.encode(&rendered, false).expect("encode");
        assert_eq!(got_prompt, want_prompt, "prompt ids differ for {prompt:?}");

        let want = ids(&case["output_ids"]);
        let margins: Vec<f64> = case["margins"].as_array().expect("margins").iter().map(|m| m.as_f64().expect("margin")).collect();
        let req = GenerateRequest { prompt_ids: got_prompt, max_tokens: want.len(), sampling: SamplingParams::default(), ignore_eos: false, stop: vec![] };
        let out = generate(&model, &tok, &req, |_| {}).expect("generate");
        let n = comparable(&margins).min(want.len());
        if n < want.len() {
            println!("{prompt:?}: near tie at step {n} (margin {:.4}); comparing the first {n} tokens", margins[n]);
        }
        assert_eq!(&out.tokens[..n.min(out.tokens.len())], &want[..n], "greedy tokens differ for {prompt:?}");
        assert!(out.tokens.len() >= n, "{prompt:?}: stopped after {} tokens, reference went on", out.tokens.len());
        compared_total += n;
        println!("{prompt:?}: {n}/{} tokens identical: {:?}", want.len(), tok.decode(&out.tokens, true).unwrap_or_default());
    }
    println!("compared {compared_total} greedy tokens over {} prompts", cases.len());
}

/// The model's greedy answer (up to 24 tokens) to a one-message chat.
fn answer(model: &Model, tok: &Tokenizer, question: &str) -> String {
    let text = tok.apply_chat_template(&[ChatMessage::new("user", question)], true).unwrap();
    let req = GenerateRequest { prompt_ids: tok.encode(&text, false).unwrap(), max_tokens: 24, sampling: SamplingParams::default(), ignore_eos: false, stop: vec![] };
    let mut answer = String::new();
    generate(model, tok, &req, |p| answer.push_str(p)).unwrap();
    answer
}

#[test]
fn capital_of_france_is_paris() {
    let (model, tok) = load(Kind::BFloat16);
    let answer = answer(&model, &tok, "What is the capital of France?");
    println!("bf16 answer: {answer:?}");
    assert!(answer.contains("Paris"), "answer was {answer:?}");
}

/// Greedy decode of several sequences together; returns each one's tokens and
/// top-2 margins.
fn greedy_batch(model: &Model, prompts: &[Vec<u32>], steps: usize) -> Vec<(Vec<u32>, Vec<f64>)> {
    const BS: i64 = 16;
    let mut cache = model.new_cache(256, BS).unwrap();
    let mut blocks = Blocks::new(256);
    let mut tables: Vec<Vec<i64>> = vec![Vec::new(); prompts.len()];
    let mut out: Vec<(Vec<u32>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); prompts.len()];
    let mut inputs: Vec<SeqInput> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        blocks.cover(&mut tables[i], p.len() as i64, BS);
        inputs.push(seq(&p.iter().map(|&t| t as i64).collect::<Vec<_>>(), 0, &tables[i]));
    }
    for _ in 0..steps {
        let logits = model.forward(&inputs, &mut cache, LogitsFor::LastToken).unwrap().to_device(Device::Cpu);
        let (top, idx) = logits.topk(2, -1, true, true);
        for i in 0..prompts.len() {
            let next = idx.int64_value(&[i as i64, 0]) as u32;
            out[i].1.push(top.double_value(&[i as i64, 0]) - top.double_value(&[i as i64, 1]));
            out[i].0.push(next);
            let pos = inputs[i].context_len();
            blocks.cover(&mut tables[i], pos + 1, BS);
            inputs[i] = seq(&[next as i64], pos, &tables[i]);
        }
    }
    out
}

/// Whether this CPU computes in bf16 natively (`avx512_bf16`) and oneDNN
/// packs bf16 weights on it: the configuration whose kernels were checked to
/// give a row the same bits alone and in a batch. Elsewhere oneDNN may pick
/// other kernels per batch size.
fn bf16_packs() -> bool {
    let native = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.split_whitespace().any(|f| f == "avx512_bf16"));
    let w = tch::Tensor::zeros([32, 32], (Kind::BFloat16, Device::Cpu));
    native && inferd::model::packed_linear::available() && inferd::model::packed_linear::pack(&w, 16).is_ok()
}

/// f32 is asserted, and bf16 on CPUs with native bf16 where its weights
/// pack (packed projections, the fused CPU kernels and libtorch's
/// element-wise ops are all batch-invariant there; a single row runs as two
/// for the projections). Elsewhere bf16 is reported only: other GEMM kernels
/// may round differently for different batch sizes, and bf16 logits (steps
/// of 0.125 here) make exact ties common.
#[test]
fn batched_decode_of_8_sequences_equals_each_alone() {
    let bf16_asserted = bf16_packs();
    println!("bf16 {}", if bf16_asserted { "asserted (native bf16, weights pack)" } else { "reported only (no native bf16, or weights do not pack)" });
    let configs = [Some(cpu(Kind::Float)), Some(cpu(Kind::BFloat16)), gguf_blocks()];
    for at in configs.into_iter().flatten() {
        let (kind, q4) = (at.kind, at.gguf_blocks);
        let (model, tok) = load_at(at);
        let prompts: Vec<Vec<u32>> = cases()
            .iter()
            .take(8)
            .enumerate()
            // Vary lengths further: append the first i tokens of the next prompt.
            .map(|(i, c)| {
                let mut p = ids(&c["prompt_ids"]);
                p.extend(ids(&c["output_ids"]).into_iter().take(i * 2));
                p
            })
            .collect();
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let steps = 24;
        let batched = greedy_batch(&model, &prompts, steps);
        let mut agree = 0;
        for (i, p) in prompts.iter().enumerate() {
            let alone = greedy_batch(&model, std::slice::from_ref(p), steps).remove(0);
            let n = comparable(&alone.1);
            let same = batched[i].0.iter().zip(&alone.0).take_while(|(a, b)| a == b).count();
            println!("{kind:?}{} seq {i} (len {}): {same}/{steps} identical; first near tie at step {n}", if q4 { " GGUF blocks" } else { "" }, lens[i]);
            agree += same.min(n);
            if kind == Kind::Float {
                assert_eq!(&batched[i].0[..n], &alone.0[..n], "seq {i} (len {}): batched differs from alone: {:?}", lens[i], tok.decode(&alone.0, true));
            } else if q4 {
                // One summation order per row at every row count (gemv_gguf.cpp);
                // the LM head and the rest as in bf16, asserted where they pack.
                if bf16_asserted {
                    assert_eq!(batched[i].0, alone.0, "GGUF blocks seq {i} (len {}): batched differs from alone", lens[i]);
                }
            } else if bf16_asserted {
                // Identical logits: the same tokens even through near ties.
                assert_eq!(batched[i].0, alone.0, "bf16 seq {i} (len {}): batched differs from alone", lens[i]);
            }
        }
        println!("{kind:?}{}: 8 sequences of lengths {lens:?}: {agree} tokens compared before near ties agree", if q4 { " GGUF blocks" } else { "" });
    }
}

/// All-token logits of `prompt` fed in `chunks` (each after the cached
/// positions of the ones before it), on the CPU in f32.
fn chunked_logits(model: &Model, prompt: &[i64], chunks: &[(usize, usize)]) -> tch::Tensor {
    const BS: i64 = 16;
    let mut cache = model.new_cache(64, BS).unwrap();
    let mut blocks = Blocks::new(64);
    let mut table = Vec::new();
    let mut parts = Vec::new();
    for &(a, b) in chunks {
        blocks.cover(&mut table, b as i64, BS);
        let l = model.forward(&[seq(&prompt[a..b], a as i64, &table)], &mut cache, LogitsFor::AllTokens).unwrap();
        parts.push(l.to_device(Device::Cpu).to_kind(Kind::Float));
    }
    tch::Tensor::cat(&parts, 0)
}

/// Three chat exchanges back to back: some 200 positions of real text.
fn exchanges() -> Vec<i64> {
    cases()[1..4].iter().flat_map(|c| ids(&c["prompt_ids"]).into_iter().chain(ids(&c["output_ids"]))).map(i64::from).collect()
}

/// Whether bf16 prefill chunks are bit-identical to one pass here: the chunk
/// attention kernel runs and the projections are batch-invariant.
fn chunks_are_exact() -> bool {
    bf16_packs() && inferd::model::fused_cpu::chunk_attention_applies(&tch::Tensor::zeros([1, 1, 64], (Kind::BFloat16, Device::Cpu)), 64)
}

/// Whether `got`'s greedy token equals `truth`'s at every position where
/// truth's top-2 margin is over 1; and how many such positions there are.
fn clear_choices_agree(got: &tch::Tensor, truth: &tch::Tensor) -> (bool, i64) {
    let (top, idx) = truth.topk(2, -1, true, true);
    let clear = (top.select(1, 0) - top.select(1, 1)).gt(1.0);
    let agree = got.argmax(-1, false).eq_tensor(&idx.select(1, 0)).logical_or(&clear.logical_not()).all().int64_value(&[]);
    (agree == 1, clear.sum(Kind::Int64).int64_value(&[]))
}

/// bf16 prefill attention (on CPUs with AVX512-BF16 the chunk kernel,
/// `chunk_attention.cpp`; elsewhere SDPA), a whole prompt in one chunk and
/// the same prompt in three chunks after cached prefixes (one block-aligned,
/// one not), against the f32 forward as truth: both as close to it as bf16
/// allows, and the same greedy token wherever f32's choice is clear; with
/// the kernel, the chunks give the one pass's logits bit for bit.
#[test]
fn bf16_prefill_in_chunks_after_a_cached_prefix_stays_with_f32() {
    let prompt = exchanges();
    let n = prompt.len();
    assert!(n > 160, "the cases are too short to split: {n} tokens");
    let (f32_model, _) = load(Kind::Float);
    let truth = chunked_logits(&f32_model, &prompt, &[(0, n)]);
    drop(f32_model);
    let (model, _) = load(Kind::BFloat16);
    let whole = chunked_logits(&model, &prompt, &[(0, n)]);
    let chunked = chunked_logits(&model, &prompt, &[(0, 96), (96, 141), (141, n)]);
    let err_whole = max_abs_diff(&whole, &truth);
    let err_chunked = max_abs_diff(&chunked, &truth);
    println!("{n} positions: bf16 vs f32 max|diff| whole {err_whole:.3}, in chunks {err_chunked:.3}; chunks vs whole {:.3}", max_abs_diff(&chunked, &whole));
    // bf16 logits of this model are tens in size, in steps of 0.125 or 0.25;
    // SDPA's bf16 path strays 1.39 here, the chunk kernel 1.33.
    assert!(err_whole <= 2.0 && err_chunked <= 2.0, "bf16 prefill strays from f32: whole {err_whole}, chunks {err_chunked}");
    if chunks_are_exact() {
        // Every row is computed the same way whatever the chunk, and the
        // packed projections are batch-invariant: prefix caching changes no bit.
        assert!(chunked.equal(&whole), "bf16 prefill in chunks differs from one pass");
    }
    for (name, got) in [("whole", &whole), ("chunks", &chunked)] {
        let (agree, clear) = clear_choices_agree(got, &truth);
        assert!(agree, "bf16 {name}: a greedy token differs from f32 where f32's margin is over 1");
        println!("{clear} of {n} positions have a clear f32 choice");
    }
}

/// `quantization = "gguf"`: the file's blocks multiplied as they are (every
/// layer's Q4_1 projections and the tied head's Q8_0), against the f32 forward
/// on the dequantized file as truth: as close to it as bf16 activations
/// allow, the same greedy token wherever f32's choice is clear, chunks after
/// a cached prefix bit-identical to one pass, and the author of Romeo and
/// Juliet. (Not the capital of France, as the other placements are asked:
/// f32's first answer token there wins by 0.08, a near tie that rounding
/// the inputs may tip either way; greedy.json's margins for this question
/// are 1.88, 0.47, 5.2, ... and f32 names Shakespeare at its ninth token.)
#[test]
fn gguf_blocks_stay_with_f32_and_name_shakespeare() {
    let Some(at) = gguf_blocks() else {
        println!("no AVX512_BF16 here: the GGUF-block kernel does not run; nothing to check");
        return;
    };
    let prompt = exchanges();
    let n = prompt.len();
    let (f32_model, _) = load(Kind::Float);
    let truth = chunked_logits(&f32_model, &prompt, &[(0, n)]);
    drop(f32_model);
    let (model, tok) = load_at(at);
    assert_eq!(model.quantized_projections(), (121, 121), "every projection should be kept in its blocks: the layers' Q4_1, the tied head's Q8_0");
    let whole = chunked_logits(&model, &prompt, &[(0, n)]);
    let chunked = chunked_logits(&model, &prompt, &[(0, 96), (96, 141), (141, n)]);
    let err = max_abs_diff(&whole, &truth);
    println!("{n} positions: GGUF blocks vs f32 max|diff| {err:.3}");
    // The file's exact weights, but inputs rounded to 12 bits of their block
    // of 32's largest (gemv_gguf.cpp) on top of the bf16 activations: 1.5
    // here (2.1 with the 16 bits before), where plain bf16 (weights rounded
    // to bf16) is 1.2-1.3 and one byte an input (llama.cpp's Q8_1) was 2.4.
    assert!(err <= 2.5, "GGUF blocks stray from f32 by {err}");
    if chunks_are_exact() {
        assert!(chunked.equal(&whole), "GGUF blocks prefill in chunks differs from one pass");
    }
    assert!(clear_choices_agree(&whole, &truth).0, "GGUF blocks: a greedy token differs from f32 where f32's margin is over 1");
    let answer = answer(&model, &tok, "Who wrote Romeo and Juliet?");
    println!("GGUF blocks answer: {answer:?}");
    assert!(answer.contains("Shakespeare"), "answer was {answer:?}");
}
