//! Per-sequence sampling over one row of f32 logits: logit bias, repetition /
//! presence / frequency penalties, then greedy argmax or temperature, top-k,
//! top-p and min-p followed by a draw from the sequence's own seeded RNG, so a
//! seeded request yields the same tokens whatever else shares its batch. The
//! sampled token's logprob and the top alternatives are the log-softmax of the
//! model's raw logits (before any processing), as vLLM reports them by default.
//!
//! The hot loops work on fixed-width lanes with a branch-free `exp`, so LLVM
//! vectorizes them: a vocab of 49,152 is scanned a few times per call at most,
//! and nothing vocab-sized is allocated after the first call.

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Temperatures below this are treated as greedy (as vLLM does): dividing by
/// them would only push every non-maximal logit to zero probability anyway.
const GREEDY_BELOW: f32 = 1e-5;
/// Width of the manual lanes in the vectorizable loops.
const LANES: usize = 16;
/// Most alternatives a request may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: u32 = 20;

/// What a request asks of the sampler. `Default` is greedy with nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_k: Option<u32>,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off; HF semantics over prompt and output tokens.
    pub repetition_penalty: f32,
    /// OpenAI semantics over output tokens.
    pub presence_penalty: f32,
    /// OpenAI semantics over output tokens.
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Number of top alternatives to return, 0..=20.
    pub logprobs: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
        }
    }
}

/// A parameter outside its allowed range, e.g.
/// "temperature must be in [0, 2], got 3.5".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} must be {limit}, got {got}")]
pub struct SamplingError {
    pub field: &'static str,
    pub limit: String,
    pub got: String,
}

fn check(
    ok: bool,
    field: &'static str,
    limit: &str,
    got: impl ToString,
) -> Result<(), SamplingError> {
    if ok {
        Ok(())
    } else {
        Err(SamplingError {
            field,
            limit: limit.to_string(),
            got: got.to_string(),
        })
    }
}

impl SamplingParams {
    /// Checks every field against its range; NaN fails every range check.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplingError> {
        let t = self.temperature;
        check((0.0..=2.0).contains(&t), "temperature", "in [0, 2]", t)?;
        if let Some(k) = self.top_k {
            check(k >= 1, "top_k", "at least 1", k)?;
        }
        let p = self.top_p;
        check(p > 0.0 && p <= 1.0, "top_p", "in (0, 1]", p)?;
        check(
            (0.0..=1.0).contains(&self.min_p),
            "min_p",
            "in [0, 1]",
            self.min_p,
        )?;
        let r = self.repetition_penalty;
        check(r > 0.0 && r <= 10.0, "repetition_penalty", "in (0, 10]", r)?;
        let pp = self.presence_penalty;
        check(
            (-2.0..=2.0).contains(&pp),
            "presence_penalty",
            "in [-2, 2]",
            pp,
        )?;
        let fp = self.frequency_penalty;
        check(
            (-2.0..=2.0).contains(&fp),
            "frequency_penalty",
            "in [-2, 2]",
            fp,
        )?;
        for &(id, bias) in &self.logit_bias {
            let limit = format!("below the vocabulary size {vocab_size}");
            check(
                (id as usize) < vocab_size,
                "logit_bias token id",
                &limit,
                id,
            )?;
            let got = format!("{bias} for token {id}");
            check(
                (-100.0..=100.0).contains(&bias),
                "logit_bias value",
                "in [-100, 100]",
                got,
            )?;
        }
        if let Some(n) = self.logprobs {
            check(n <= MAX_LOGPROBS, "logprobs", "in [0, 20]", n)?;
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW
    }
}

/// One sampled token with its raw-logit log-probability and, when asked for,
/// the top alternatives (sorted by descending logprob, ties by lower id).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The sampler of one sequence: its parameters, RNG, penalty state and
/// scratch buffers reused across calls.
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: ChaCha8Rng,
    /// Prompt and output tokens, for the repetition penalty (only kept when
    /// that penalty is on).
    seen: HashSet<u32>,
    /// Output token counts, for presence / frequency penalties (only kept
    /// when one of them is on).
    counts: HashMap<u32, u32>,
    /// Raw logits of the entries that bias and penalties changed, so the
    /// sampled token's logprob can use its raw value.
    undo: Vec<(u32, f32)>,
    /// Candidates as `rank_key`s, ordered by descending logit once selected.
    idx: Vec<u64>,
    weights: Vec<f32>,
}

impl Sampler {
    /// A sampler seeded from `params.seed`, or from a fresh random seed that
    /// `seed()` reports. `params` is assumed validated.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let seed = params.seed.unwrap_or_else(rand::random);
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            HashSet::new()
        };
        Sampler {
            params,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seen,
            counts: HashMap::new(),
            undo: Vec::new(),
            idx: Vec::new(),
            weights: Vec::new(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from this sequence's logits row (may modify the
    /// row in place as scratch). Records the token for penalties. An empty
    /// row (a caller bug) yields token 0 with logprob -inf.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        if logits.is_empty() {
            return Sampled {
                token: 0,
                logprob: f32::NEG_INFINITY,
                top_logprobs: Vec::new(),
            };
        }
        let (raw_argmax, raw_max) = argmax(logits);
        let lse = raw_max + sum_exp(logits, raw_max, 1.0).ln();
        let top_logprobs = match self.params.logprobs {
            Some(n) if n > 0 => top_n(logits, n as usize)
                .into_iter()
                .map(|(id, x)| (id, x - lse))
                .collect(),
            _ => Vec::new(),
        };
        let changed = self.process(logits);
        let token = if self.params.is_greedy() {
            if changed {
                argmax(logits).0
            } else {
                raw_argmax
            }
        } else {
            self.draw(logits)
        };
        let raw = match self.undo.iter().find(|(id, _)| *id == token) {
            Some(&(_, x)) => x,
            None => logits
                .get(token as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY),
        };
        self.record(token);
        Sampled {
            token,
            logprob: raw - lse,
            top_logprobs,
        }
    }

    /// Logit bias, then the repetition penalty, then presence / frequency
    /// penalties, in place. Returns whether anything changed.
    fn process(&mut self, row: &mut [f32]) -> bool {
        self.undo.clear();
        let undo = &mut self.undo;
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(x) = row.get_mut(id as usize) {
                undo.push((id, *x));
                *x += bias;
            }
        }
        let r = p.repetition_penalty;
        for &id in &self.seen {
            if let Some(x) = row.get_mut(id as usize) {
                undo.push((id, *x));
                *x = if *x > 0.0 { *x / r } else { *x * r };
            }
        }
        for (&id, &count) in &self.counts {
            if let Some(x) = row.get_mut(id as usize) {
                undo.push((id, *x));
                *x -= p.frequency_penalty * count as f32 + p.presence_penalty;
            }
        }
        !undo.is_empty()
    }

    fn record(&mut self, token: u32) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            *self.counts.entry(token).or_insert(0) += 1;
        }
    }

    /// Temperature, top-k, top-p, min-p, then one draw from the RNG.
    fn draw(&mut self, row: &[f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        // Exactly one draw per call on every path keeps the stream aligned.
        let u: f64 = self.rng.random();
        match self.select(row, inv_t) {
            Selection::All { max } => {
                let min_p_floor = ln_min_p(self.params.min_p);
                self.weights.resize(row.len(), 0.0);
                let total = fill_weights(row, max, inv_t, min_p_floor, &mut self.weights);
                let target = u * f64::from(total);
                let mut acc = 0.0f64;
                let mut last_positive = 0u32;
                for (id, &w) in self.weights.iter().enumerate() {
                    if w > 0.0 {
                        acc += f64::from(w);
                        last_positive = id as u32;
                        if acc > target {
                            return id as u32;
                        }
                    }
                }
                // Only rounding between the lane sum and this walk gets here.
                last_positive
            }
            Selection::Prefix { max, keep } => {
                let kept = &self.idx[..keep];
                let weight = |key: u64| f64::from(exp_fast((row[id_of(key)] - max) * inv_t));
                let total: f64 = kept.iter().map(|&key| weight(key)).sum();
                let target = u * total;
                let mut acc = 0.0f64;
                for &key in kept {
                    acc += weight(key);
                    if acc > target {
                        return id_of(key) as u32;
                    }
                }
                kept.last().map_or(0, |&key| id_of(key) as u32)
            }
        }
    }

    /// Narrows the candidates. Either every token stays (temperature and
    /// min-p only: no ordering needed), or `self.idx[..keep]` holds the kept
    /// ids by descending logit. Top-k, top-p and min-p each keep a prefix of
    /// that order, so their combination is the shortest of the three.
    fn select(&mut self, row: &[f32], inv_t: f32) -> Selection {
        let v = row.len();
        let top_k = self
            .params
            .top_k
            .map(|k| k as usize)
            .filter(|&k| k >= 1 && k < v);
        let top_p = self.params.top_p;
        if top_k.is_none() && top_p >= 1.0 {
            return Selection::All { max: argmax(row).1 };
        }
        let idx = &mut self.idx;
        idx.clear();
        idx.extend(row.iter().enumerate().map(|(id, &x)| rank_key(id, x)));
        // How many leading entries of `idx` are known sorted, and the mass
        // that top-p is relative to (top-p applies after top-k's masking).
        let (mut sorted, max, total) = match top_k {
            Some(k) => {
                idx.select_nth_unstable(k - 1);
                idx.truncate(k);
                idx.sort_unstable();
                let max = row[id_of(idx[0])];
                let total: f32 = idx
                    .iter()
                    .map(|&key| exp_fast((row[id_of(key)] - max) * inv_t))
                    .sum();
                (k, max, total)
            }
            None => {
                let max = argmax(row).1;
                (0, max, sum_exp(row, max, inv_t))
            }
        };
        let mut keep = idx.len();
        if top_p < 1.0 {
            let target = top_p * total;
            let mut cum = 0.0f32;
            let mut i = 0;
            keep = loop {
                if i == sorted {
                    if sorted == idx.len() {
                        break idx.len();
                    }
                    // The nucleus is usually small: sort a growing head
                    // instead of the whole vocabulary.
                    let next = (sorted.max(16) * 4).min(idx.len());
                    if next < idx.len() {
                        idx.select_nth_unstable(next - 1);
                    }
                    idx[..next].sort_unstable();
                    sorted = next;
                }
                cum += exp_fast((row[id_of(idx[i])] - max) * inv_t);
                i += 1;
                if cum >= target {
                    break i;
                }
            };
        }
        let floor = ln_min_p(self.params.min_p);
        if floor > f32::NEG_INFINITY {
            // The first entry is the maximum, which always passes.
            let below = idx[1..keep]
                .iter()
                .position(|&key| (row[id_of(key)] - max) * inv_t < floor);
            if let Some(pos) = below {
                keep = pos + 1;
            }
        }
        Selection::Prefix { max, keep }
    }
}

enum Selection {
    All { max: f32 },
    Prefix { max: f32, keep: usize },
}

/// min-p keeps tokens with p >= min_p * p_max, i.e. a scaled logit at least
/// ln(min_p) below the maximum.
fn ln_min_p(min_p: f32) -> f32 {
    if min_p > 0.0 {
        min_p.ln()
    } else {
        f32::NEG_INFINITY
    }
}

/// Sort key whose ascending order is descending logit, ties by ascending id,
/// NaN ranking as -inf: plain u64 comparisons sort several times faster
/// than an indirect float comparator.
fn rank_key(id: usize, x: f32) -> u64 {
    let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
    let bits = x.to_bits();
    // Order-preserving map of f32 onto u32 (negatives reversed), inverted so
    // that larger logits come first.
    let ordered = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(!ordered) << 32) | (id as u64 & 0xFFFF_FFFF)
}

fn id_of(key: u64) -> usize {
    (key & 0xFFFF_FFFF) as usize
}

/// e^x, accurate to a few ulp over (-87, 88]; exactly 0 below (so masked
/// -inf logits get no mass) and for NaN; clamped above. Branch-free so loops
/// calling it vectorize: Cody-Waite reduction to |r| <= ln2/2, then a
/// degree-7 Taylor polynomial.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer that sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let live = x > -87.0;
    let x = if live { x } else { -87.0 };
    let x = if x < 88.0 { x } else { 88.0 };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if live {
        p * scale
    } else {
        0.0
    }
}

/// Defines each row kernel as a function that runs the `#[inline(always)]`
/// body compiled for AVX2 when the CPU has it (the default x86_64 target only
/// assumes SSE2). Without FMA contraction and with a fixed lane order, both
/// builds give bit-identical results, so a seeded request samples the same
/// tokens on any x86 machine.
macro_rules! row_kernels {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident;)*) => {$(
        $(#[$doc])*
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    )*};
}

row_kernels! {
    /// (index, value) of the maximum; ties and an all -inf/NaN row go to the
    /// lowest id.
    fn argmax(row: &[f32]) -> (u32, f32) = argmax_lanes;
    /// Sum of e^((x - max) * scale) over the row.
    fn sum_exp(row: &[f32], max: f32, scale: f32) -> f32 = sum_exp_lanes;
    /// Writes unnormalized probabilities (zero below the min-p floor) into
    /// `out` and returns their sum.
    fn fill_weights(row: &[f32], max: f32, scale: f32, floor: f32, out: &mut [f32]) -> f32 = fill_weights_lanes;
}

#[inline(always)]
fn argmax_lanes(row: &[f32]) -> (u32, f32) {
    // A branch-free lane maximum first (NaN never wins a `>`), then the
    // first chunk holding it: both passes vectorize, unlike a running argmax.
    let mut best = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            best[i] = if chunk[i] > best[i] {
                chunk[i]
            } else {
                best[i]
            };
        }
    }
    let max = best
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let first = row
        .chunks(LANES)
        .position(|chunk| chunk.iter().fold(false, |hit, &x| hit | (x == max)))
        .and_then(|c| {
            let base = c * LANES;
            row[base..].iter().position(|&x| x == max).map(|i| base + i)
        });
    match first {
        Some(id) => (id as u32, max),
        // Only an all-NaN row has no entry equal to its maximum (-inf).
        None => (0, max),
    }
}

#[inline(always)]
fn sum_exp_lanes(row: &[f32], max: f32, scale: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] += exp_fast((chunk[i] - max) * scale);
        }
    }
    acc.iter().sum::<f32>()
        + tail
            .iter()
            .map(|&x| exp_fast((x - max) * scale))
            .sum::<f32>()
}

#[inline(always)]
fn fill_weights_lanes(row: &[f32], max: f32, scale: f32, floor: f32, out: &mut [f32]) -> f32 {
    let weight = |x: f32| {
        let s = (x - max) * scale;
        if s >= floor {
            exp_fast(s)
        } else {
            0.0
        }
    };
    let mut acc = [0.0f32; LANES];
    let split = row.len() - row.len() % LANES;
    for (chunk, o) in row[..split]
        .chunks_exact(LANES)
        .zip(out[..split].chunks_exact_mut(LANES))
    {
        for i in 0..LANES {
            let w = weight(chunk[i]);
            o[i] = w;
            acc[i] += w;
        }
    }
    let mut total: f32 = acc.iter().sum();
    for (&x, o) in row[split..].iter().zip(out[split..].iter_mut()) {
        *o = weight(x);
        total += *o;
    }
    total
}

/// The `n` largest (id, logit) pairs, descending, ties to the lower id; one
/// pass that mostly costs a single comparison per entry.
fn top_n(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &x) in row.iter().enumerate() {
        let not_better = out.len() == n && out.last().is_some_and(|&(_, last)| x <= last);
        if x.is_nan() || not_better {
            continue;
        }
        let pos = out.partition_point(|&(_, v)| v >= x);
        out.insert(pos, (i as u32, x));
        out.truncate(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    fn sampled(p: SamplingParams, row: &[f32]) -> u32 {
        Sampler::new(p, &[]).sample(&mut row.to_vec()).token
    }

    fn seeded(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(seed),
            ..params()
        }
    }

    /// A row of `v` pseudo-random logits in [-4, 4).
    fn noisy_row(v: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..v).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect()
    }

    #[test]
    fn exp_fast_matches_std() {
        for i in -8699..=8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp_fast(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(f32::NAN), 0.0);
    }

    #[test]
    fn rank_key_orders_by_descending_logit_then_id() {
        let xs = [
            0.5f32,
            -0.0,
            f32::NAN,
            3.0,
            -7.5,
            f32::NEG_INFINITY,
            3.0,
            -0.25,
        ];
        let mut keys: Vec<u64> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| rank_key(i, x))
            .collect();
        keys.sort_unstable();
        let ids: Vec<usize> = keys.iter().map(|&k| id_of(k)).collect();
        assert_eq!(ids, vec![3, 6, 0, 1, 7, 4, 2, 5]);
    }

    #[test]
    fn dispatched_kernels_match_the_portable_ones_bit_for_bit() {
        for len in [1usize, 15, 16, 17, 1000, 4099] {
            let row = noisy_row(len, len as u64);
            assert_eq!(argmax(&row), argmax_lanes(&row));
            let (a, b) = (sum_exp(&row, 4.0, 1.3), sum_exp_lanes(&row, 4.0, 1.3));
            assert_eq!(a.to_bits(), b.to_bits());
            let (mut wa, mut wb) = (vec![0.0; len], vec![0.0; len]);
            let ta = fill_weights(&row, 4.0, 0.7, -2.0, &mut wa);
            let tb = fill_weights_lanes(&row, 4.0, 0.7, -2.0, &mut wb);
            assert_eq!((ta.to_bits(), wa), (tb.to_bits(), wb));
        }
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        let mut row = noisy_row(1000, 1);
        row[777] = 9.0;
        assert_eq!(sampled(params(), &row), 777);
        row[40] = 9.0; // tie in another lane, lower id
        row[999] = 9.0; // tie in the tail
        assert_eq!(sampled(params(), &row), 40);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), (1, 1.0));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]).0, 0);
    }

    #[test]
    fn tiny_temperature_and_top_k_1_equal_greedy() {
        for seed in 0..20 {
            let mut row = noisy_row(300, seed);
            let greedy = sampled(params(), &row);
            // A clear margin, so temperature 0.01 is practically greedy.
            row[greedy as usize] += 0.5;
            assert_eq!(sampled(seeded(1e-6, seed), &row), greedy);
            assert_eq!(sampled(seeded(0.01, seed), &row), greedy);
            let k1 = SamplingParams {
                top_k: Some(1),
                ..seeded(1.5, seed)
            };
            assert_eq!(sampled(k1, &row), greedy);
        }
    }

    #[test]
    fn logprobs_are_raw_log_softmax() {
        let row = [1.0f32, 3.0, 2.0, 3.0];
        let lse = row.iter().map(|x| x.exp()).sum::<f32>().ln();
        // The bias changes the pick, not the reported (raw) logprobs.
        let p = SamplingParams {
            logprobs: Some(3),
            logit_bias: vec![(0, 50.0)],
            ..params()
        };
        let s = Sampler::new(p, &[]).sample(&mut row.to_vec());
        assert_eq!(s.token, 0);
        assert!((s.logprob - (1.0 - lse)).abs() < 1e-5, "{}", s.logprob);
        let ids: Vec<u32> = s.top_logprobs.iter().map(|p| p.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((s.top_logprobs[0].1 - (3.0 - lse)).abs() < 1e-5);
        assert!((s.top_logprobs[2].1 - (2.0 - lse)).abs() < 1e-5);
        let none = Sampler::new(params(), &[]).sample(&mut row.to_vec());
        assert!(none.top_logprobs.is_empty());
    }

    #[test]
    fn logit_bias_forces_and_bans() {
        let row = noisy_row(500, 3);
        let p = SamplingParams {
            logit_bias: vec![(123, 100.0)],
            ..seeded(1.0, 3)
        };
        let mut s = Sampler::new(p, &[]);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut row.clone()).token, 123);
        }
        let best = sampled(params(), &row);
        let ban = SamplingParams {
            logit_bias: vec![(best, -100.0)],
            ..params()
        };
        assert_ne!(sampled(ban, &row), best);
    }

    #[test]
    fn repetition_penalty_covers_prompt_and_output() {
        // Positive logits are divided, negative ones multiplied.
        let row = [2.0f32, 1.5, -1.0, -1.2];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params()
        };
        assert_eq!(
            Sampler::new(p.clone(), &[0])
                .sample(&mut row.to_vec())
                .token,
            1
        );
        let mut s = Sampler::new(p.clone(), &[0, 1]);
        assert_eq!(s.sample(&mut row.to_vec()).token, 0); // 1.0 vs 0.75
        let neg = [-1.0f32, -1.2];
        assert_eq!(
            Sampler::new(p.clone(), &[0])
                .sample(&mut neg.to_vec())
                .token,
            1
        );
        // The sampled token is penalized on the next step.
        let mut s = Sampler::new(p, &[]);
        assert_eq!(s.sample(&mut row.to_vec()).token, 0);
        assert_eq!(s.sample(&mut row.to_vec()).token, 1);
    }

    #[test]
    fn presence_and_frequency_penalties_count_output_only() {
        let row = [3.0f32, 2.5, 0.0];
        let pres = SamplingParams {
            presence_penalty: 1.0,
            ..params()
        };
        let mut s = Sampler::new(pres, &[0, 0, 0]);
        assert_eq!(s.sample(&mut row.to_vec()).token, 0); // prompt is not counted
        assert_eq!(s.sample(&mut row.to_vec()).token, 1); // 2.0 vs 2.5
        assert_eq!(s.sample(&mut row.to_vec()).token, 0); // 2.0 vs 1.5
        assert_eq!(s.sample(&mut row.to_vec()).token, 0); // presence is flat: 2.0 vs 1.5
        let freq = SamplingParams {
            frequency_penalty: 0.4,
            ..params()
        };
        let mut s = Sampler::new(freq, &[]);
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&mut row.to_vec()).token).collect();
        // 3.0 -> 2.6 -> 2.2 (< 2.5) ; then 2.1 < 2.2
        assert_eq!(picks, vec![0, 0, 1, 0]);
    }

    #[test]
    fn same_seed_same_stream_other_seed_differs() {
        let rows: Vec<Vec<f32>> = (0..200).map(|i| noisy_row(2000, 100 + i)).collect();
        let run = |seed: u64| -> Vec<u32> {
            let p = SamplingParams {
                top_p: 0.95,
                top_k: Some(500),
                ..seeded(1.0, seed)
            };
            let mut s = Sampler::new(p, &[]);
            rows.iter()
                .map(|r| s.sample(&mut r.clone()).token)
                .collect()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // Without a seed one is drawn and reported; replaying it reproduces.
        let p = SamplingParams {
            temperature: 1.0,
            ..params()
        };
        let mut a = Sampler::new(p.clone(), &[]);
        let mut b = Sampler::new(
            SamplingParams {
                seed: Some(a.seed()),
                ..p
            },
            &[],
        );
        for r in &rows[..50] {
            assert_eq!(
                a.sample(&mut r.clone()).token,
                b.sample(&mut r.clone()).token
            );
        }
    }

    fn frequencies(p: SamplingParams, row: &[f32], n: usize) -> Vec<f64> {
        let mut s = Sampler::new(p, &[]);
        let mut hits = vec![0usize; row.len()];
        for _ in 0..n {
            hits[s.sample(&mut row.to_vec()).token as usize] += 1;
        }
        hits.iter().map(|&h| h as f64 / n as f64).collect()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.01, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn empirical_frequencies_follow_softmax() {
        let row = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let want = [0.5, 0.3, 0.2];
        assert_close(&frequencies(seeded(1.0, 11), &row, 20_000), &want);
        // Filters that keep everything must not change the distribution.
        let all = SamplingParams {
            top_k: Some(3),
            top_p: 0.99,
            min_p: 0.1,
            ..seeded(1.0, 12)
        };
        assert_close(&frequencies(all, &row, 20_000), &want);
        // Temperature 2 flattens: p ~ sqrt(p_i).
        let sq: Vec<f64> = want.iter().map(|p: &f64| p.sqrt()).collect();
        let z: f64 = sq.iter().sum();
        let flat: Vec<f64> = sq.iter().map(|p| p / z).collect();
        assert_close(&frequencies(seeded(2.0, 13), &row, 20_000), &flat);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        let row = [0.1f32.ln(), 0.5f32.ln(), 0.15f32.ln(), 0.25f32.ln()];
        // 0.5 + 0.25 = 0.75 >= 0.7: keeps {1, 3}, renormalized.
        let p = SamplingParams {
            top_p: 0.7,
            ..seeded(1.0, 21)
        };
        assert_close(
            &frequencies(p, &row, 20_000),
            &[0.0, 2.0 / 3.0, 0.0, 1.0 / 3.0],
        );
        let p = SamplingParams {
            top_p: 0.45,
            ..seeded(1.0, 22)
        };
        assert_close(&frequencies(p, &row, 2_000), &[0.0, 1.0, 0.0, 0.0]);
        // With top-k 2 first, p is relative to the top-2 mass (0.75):
        // 0.5 / 0.75 = 0.67 < 0.7, so both stay.
        let p = SamplingParams {
            top_k: Some(2),
            top_p: 0.7,
            ..seeded(1.0, 23)
        };
        assert_close(
            &frequencies(p, &row, 20_000),
            &[0.0, 2.0 / 3.0, 0.0, 1.0 / 3.0],
        );
    }

    #[test]
    fn top_p_on_a_large_vocab_matches_a_full_sort() {
        for (seed, top_p) in [(31u64, 0.3f32), (32, 0.9), (33, 0.999)] {
            let row = noisy_row(5000, seed);
            let mut s = Sampler::new(
                SamplingParams {
                    top_p,
                    ..seeded(0.7, seed)
                },
                &[],
            );
            let keep = match s.select(&row, 1.0 / 0.7) {
                Selection::Prefix { keep, .. } => keep,
                Selection::All { .. } => panic!("top-p must sort"),
            };
            let mut order: Vec<u32> = (0..row.len() as u32).collect();
            order.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
            let probs: Vec<f64> = order
                .iter()
                .map(|&i| (f64::from(row[i as usize]) / 0.7).exp())
                .collect();
            let total: f64 = probs.iter().sum();
            let mut cum = 0.0;
            let want = 1 + probs
                .iter()
                .position(|p| {
                    cum += p;
                    cum >= f64::from(top_p) * total
                })
                .unwrap_or(probs.len() - 1);
            assert!(
                keep.abs_diff(want) <= 1,
                "top_p {top_p}: kept {keep}, want {want}"
            );
            let ids: Vec<u32> = s.idx[..keep.min(want)]
                .iter()
                .map(|&k| id_of(k) as u32)
                .collect();
            assert_eq!(ids, &order[..keep.min(want)]);
        }
    }

    #[test]
    fn top_k_and_min_p_cut_the_tail() {
        let row = [0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let p = SamplingParams {
            top_k: Some(2),
            ..seeded(1.0, 41)
        };
        assert_close(
            &frequencies(p, &row, 20_000),
            &[4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0],
        );
        // min_p 0.4: keeps p >= 0.16, i.e. {0, 1, 2}.
        let p = SamplingParams {
            min_p: 0.4,
            ..seeded(1.0, 42)
        };
        assert_close(
            &frequencies(p, &row, 20_000),
            &[4.0 / 9.0, 3.0 / 9.0, 2.0 / 9.0, 0.0],
        );
        // The same cut on the sorted path (with a no-op top-k).
        let p = SamplingParams {
            min_p: 0.4,
            top_k: Some(3),
            ..seeded(1.0, 43)
        };
        assert_close(
            &frequencies(p, &row, 20_000),
            &[4.0 / 9.0, 3.0 / 9.0, 2.0 / 9.0, 0.0],
        );
    }

    #[test]
    fn degenerate_rows_do_not_panic() {
        let p = SamplingParams {
            top_p: 0.9,
            top_k: Some(2),
            min_p: 0.1,
            ..seeded(1.0, 5)
        };
        let mut s = Sampler::new(p, &[]);
        assert_eq!(s.sample(&mut []).token, 0);
        let _ = s.sample(&mut [f32::NAN, f32::NAN, f32::NAN]);
        let _ = s.sample(&mut [f32::NEG_INFINITY; 4]);
        let _ = s.sample(&mut [f32::INFINITY, 0.0, 1.0]);
        let mut s = Sampler::new(seeded(1.0, 6), &[]);
        assert!(
            s.sample(&mut [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY])
                .token
                == 1
        );
    }

    #[test]
    fn validate_names_field_and_limit() {
        let v = 100;
        assert_eq!(params().validate(v), Ok(()));
        let msg = |p: SamplingParams| p.validate(v).map_err(|e| e.to_string()).err();
        let bad = |p: SamplingParams, want: &str| assert_eq!(msg(p).as_deref(), Some(want));
        bad(
            SamplingParams {
                temperature: 3.5,
                ..params()
            },
            "temperature must be in [0, 2], got 3.5",
        );
        bad(
            SamplingParams {
                temperature: f32::NAN,
                ..params()
            },
            "temperature must be in [0, 2], got NaN",
        );
        bad(
            SamplingParams {
                top_k: Some(0),
                ..params()
            },
            "top_k must be at least 1, got 0",
        );
        bad(
            SamplingParams {
                top_p: 0.0,
                ..params()
            },
            "top_p must be in (0, 1], got 0",
        );
        bad(
            SamplingParams {
                min_p: 1.5,
                ..params()
            },
            "min_p must be in [0, 1], got 1.5",
        );
        bad(
            SamplingParams {
                repetition_penalty: 0.0,
                ..params()
            },
            "repetition_penalty must be in (0, 10], got 0",
        );
        bad(
            SamplingParams {
                presence_penalty: -2.5,
                ..params()
            },
            "presence_penalty must be in [-2, 2], got -2.5",
        );
        bad(
            SamplingParams {
                frequency_penalty: 2.5,
                ..params()
            },
            "frequency_penalty must be in [-2, 2], got 2.5",
        );
        bad(
            SamplingParams {
                logit_bias: vec![(100, 1.0)],
                ..params()
            },
            "logit_bias token id must be below the vocabulary size 100, got 100",
        );
        bad(
            SamplingParams {
                logit_bias: vec![(5, 101.0)],
                ..params()
            },
            "logit_bias value must be in [-100, 100], got 101 for token 5",
        );
        bad(
            SamplingParams {
                logprobs: Some(21),
                ..params()
            },
            "logprobs must be in [0, 20], got 21",
        );
        let ok = SamplingParams {
            temperature: 2.0,
            top_k: Some(1_000_000),
            top_p: 1.0,
            min_p: 1.0,
            repetition_penalty: 1.3,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            logit_bias: vec![(99, -100.0)],
            seed: Some(1),
            logprobs: Some(20),
        };
        assert_eq!(ok.validate(v), Ok(()));
    }
}
