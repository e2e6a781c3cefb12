//! Single-sequence generation: the loop behind `inferd generate`, also used by
//! the end-to-end parity tests. Prefill the prompt into a paged KV cache, then
//! decode one token per step, sampling with the sequence's own sampler,
//! detokenizing incrementally and holding back stop strings.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

use crate::exec::detok::{Decode, IncrementalDecoder};
use crate::exec::sampler::{Sampler, SamplingParams};
use crate::exec::stop::StopMatcher;
use crate::model::tokenizer::Tokenizer;
use crate::model::{LogitsFor, Model, SeqInput};

/// Block size of the private KV cache used here.
const BLOCK_SIZE: i64 = 16;

/// Lets the incremental decoder call the real tokenizer.
pub struct TextDecoder<'a>(pub &'a Tokenizer);

impl Decode for TextDecoder<'_> {
    fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        self.0.decode(ids, true).map_err(|e| e.to_string())
    }
}

/// One generation.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    pub stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Time to the first generated token (prefill + first sample).
    pub prefill: Duration,
    /// Time spent on all later tokens.
    pub decode: Duration,
    pub seed: u64,
}

impl GenerateOutput {
    /// Decode speed over the tokens after the first.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1) as f64;
        if self.decode.is_zero() { 0.0 } else { n / self.decode.as_secs_f64() }
    }
}

fn logits_row(logits: &Tensor) -> Result<Vec<f32>> {
    let row = logits.f_get(0)?.f_to_device(Device::Cpu)?;
    Ok(Vec::<f32>::try_from(&row)?)
}

/// Generate for `req`, calling `on_text` with each piece of text as soon as it
/// is complete (UTF-8 safe, stop strings held back).
pub fn generate(model: &Model, tok: &Tokenizer, req: &GenerateRequest, mut on_text: impl FnMut(&str)) -> Result<GenerateOutput> {
    if req.prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let limit = model.max_context() as usize;
    if req.prompt_ids.len() >= limit {
        bail!("prompt of {} tokens does not fit the context limit {limit}", req.prompt_ids.len());
    }
    req.sampling.validate(model.config().vocab_size as usize)?;
    let total = (req.prompt_ids.len() + req.max_tokens).min(limit);
    let num_blocks = (total as i64 + BLOCK_SIZE - 1) / BLOCK_SIZE;
    let mut cache = model.new_cache(num_blocks, BLOCK_SIZE).context("allocating the KV cache")?;
    let table: Vec<i64> = (0..num_blocks).collect();
    let eos: Vec<u32> = if req.ignore_eos { Vec::new() } else { eos_ids(model, tok) };

    let mut sampler = Sampler::new(req.sampling.clone(), &req.prompt_ids);
    let mut detok = IncrementalDecoder::new(&req.prompt_ids[req.prompt_ids.len().saturating_sub(4)..]);
    let mut stops = StopMatcher::new(req.stop.iter().cloned());
    let decoder = TextDecoder(tok);

    let start = Instant::now();
    let prompt: Vec<i64> = req.prompt_ids.iter().map(|&t| t as i64).collect();
    let mut logits = model.forward(&[SeqInput { tokens: prompt, start_pos: 0, block_table: table.clone() }], &mut cache, LogitsFor::LastToken)?;
    let mut tokens = Vec::new();
    let mut prefill = Duration::ZERO;
    let mut finish = FinishReason::Length;
    loop {
        let mut row = logits_row(&logits)?;
        let next = sampler.sample(&mut row).token;
        if tokens.is_empty() {
            prefill = start.elapsed();
        }
        tokens.push(next);
        if eos.contains(&next) {
            finish = FinishReason::Eos;
            break;
        }
        let piece = detok.push(&decoder, next).map_err(anyhow::Error::msg)?;
        let out = stops.push(&piece);
        on_text(&out.text);
        if out.stop.is_some() {
            finish = FinishReason::Stop;
            break;
        }
        let pos = req.prompt_ids.len() + tokens.len() - 1;
        if tokens.len() >= req.max_tokens || pos + 1 >= total {
            break;
        }
        let step = SeqInput { tokens: vec![next as i64], start_pos: pos as i64, block_table: table.clone() };
        logits = model.forward(&[step], &mut cache, LogitsFor::LastToken)?;
    }
    if finish != FinishReason::Stop {
        let rest = detok.flush(&decoder).map_err(anyhow::Error::msg)?;
        let out = stops.push(&rest);
        on_text(&out.text);
        on_text(&stops.finish());
    }
    let decode = start.elapsed().saturating_sub(prefill);
    Ok(GenerateOutput { tokens, finish, prompt_tokens: req.prompt_ids.len(), prefill, decode, seed: sampler.seed() })
}

/// End-of-sequence ids from the model config and the tokenizer.
pub fn eos_ids(model: &Model, tok: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = model.config().eos_token_ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
    for &i in tok.eos_ids() {
        if !ids.contains(&i) {
            ids.push(i);
        }
    }
    ids
}
