//! The tch implementation of the worker's [`Executor`]: one device, several
//! model replicas on it, each with its weights, its paged KV pool and one
//! [`Sampler`] per live sequence. A step is one batched forward, one copy of
//! the sampled rows' logits to the host, and a per-sequence sampling pass.
//!
//! Every libtorch failure comes back as an [`ExecError`], never a panic:
//! ordinary errors (a bad shape, a CUDA out-of-memory) leave the device usable
//! and are non-fatal; CUDA errors that poison the context (illegal access,
//! device-side assert, ...) are fatal so the supervisor restarts the worker.
//! A [`FaultInjector`] lets tests make the next step fail or panic.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use inferd_actors::executor::{
    ExecError, Executor, ModelSpec, Quantization, ReplicaId, ReplicaInfo, StepRequest, StepResult, TextDecoder,
};
use inferd_actors::ids::SeqId;
use inferd_actors::sampler::{Sampled, Sampler};
use tch::{Device, Kind, TchError, Tensor};

use crate::generate::eos_ids;
use crate::model::loader::{LoadError, QuantRows, WeightSource};
use crate::model::tokenizer::Tokenizer;
use crate::model::{gemv_bf16, parallel_for, source, KvCache, LogitsFor, Model, Placement, SeqInput};

/// Substrings of libtorch messages after which a CUDA context cannot be
/// trusted any more (errors are sticky there: every later call fails too).
const FATAL_CUDA_MARKERS: [&str; 5] = [
    "illegal memory access",
    "device-side assert",
    "CUDA error: unspecified launch failure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "an illegal instruction",
];

/// The tokenizer as the batcher's text decoder (special tokens skipped, as
/// the generated text a client sees never contains chat markup).
pub struct TokenizerDecoder(pub Arc<Tokenizer>);

impl TextDecoder for TokenizerDecoder {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.0.decode(ids, true).map_err(|e| e.to_string())
    }
}

/// What the next step should do instead of running (tests).
const FAULT_NONE: u8 = 0;
const FAULT_ERROR: u8 = 1;
const FAULT_FATAL: u8 = 2;
const FAULT_PANIC: u8 = 3;

#[derive(Default)]
struct FaultState {
    next: AtomicU8,
    fired: AtomicU64,
    last_step_seqs: AtomicUsize,
}

/// Test hook shared between a test and every executor its factory builds
/// (clones share state), so a fault armed once fires once even across a
/// worker restart. A fault fires on the next step that has sequences.
#[derive(Clone, Default)]
pub struct FaultInjector(Arc<FaultState>);

impl FaultInjector {
    pub fn new() -> FaultInjector {
        FaultInjector::default()
    }

    /// The next step returns an error (fatal: the device is declared lost).
    pub fn fail_next_step(&self, fatal: bool) {
        let kind = if fatal { FAULT_FATAL } else { FAULT_ERROR };
        self.0.next.store(kind, Ordering::SeqCst);
    }

    /// The next step panics (as a bug in the executor would).
    pub fn panic_next_step(&self) {
        self.0.next.store(FAULT_PANIC, Ordering::SeqCst);
    }

    /// How many faults have fired so far.
    pub fn fired(&self) -> u64 {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Number of sequences in the last step a fault hit.
    pub fn last_fault_seqs(&self) -> usize {
        self.0.last_step_seqs.load(Ordering::SeqCst)
    }

    /// Takes the armed fault, if any, for a step of `n_seqs` sequences.
    fn take(&self, n_seqs: usize) -> Result<(), ExecError> {
        if n_seqs == 0 {
            return Ok(());
        }
        let kind = self.0.next.swap(FAULT_NONE, Ordering::SeqCst);
        if kind == FAULT_NONE {
            return Ok(());
        }
        self.0.fired.fetch_add(1, Ordering::SeqCst);
        self.0.last_step_seqs.store(n_seqs, Ordering::SeqCst);
        match kind {
            FAULT_ERROR => Err(ExecError::new("injected step failure")),
            FAULT_FATAL => Err(ExecError::fatal("injected fatal step failure")),
            _ => panic!("injected executor panic"),
        }
    }
}

/// One loaded model version on this device.
struct Replica {
    model: Model,
    cache: KvCache,
    samplers: HashMap<SeqId, Sampler>,
}

/// The executor of one device ("cpu" or "cuda:N").
pub struct TchExecutor {
    device: Device,
    replicas: HashMap<ReplicaId, Replica>,
    faults: FaultInjector,
    /// Host copy of the sampled rows' logits, reused across steps (64 rows of
    /// a 49k vocabulary is 12 MiB: not worth reallocating every step).
    logits_buf: Vec<f32>,
}

impl TchExecutor {
    /// An executor for `device`: "cpu" or "cuda:N" (N must exist here).
    pub fn new(device: &str) -> Result<TchExecutor, ExecError> {
        Ok(TchExecutor {
            device: parse_device(device)?,
            replicas: HashMap::new(),
            faults: FaultInjector::default(),
            logits_buf: Vec::new(),
        })
    }

    /// Share `faults` with this executor (tests).
    pub fn with_faults(mut self, faults: FaultInjector) -> TchExecutor {
        self.faults = faults;
        self
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn load_replica(&self, spec: &ModelSpec) -> Result<(Replica, ReplicaInfo), ExecError> {
        let kind = parse_dtype(&spec.dtype)?;
        if self.device == Device::Cpu && kind != Kind::Float && cfg!(target_arch = "x86_64") && !gemv_bf16::available() {
            // Without AVX512_BF16 none of the row kernels run and prefill
            // and batched steps take libtorch's reference paths: on an
            // AVX2-only Zen 3, bf16 against f32 took 5.6 s against 1.0 s
            // to a first token at 4 streams of 128-token prompts and made
            // 16.9 against 64.9 tok/s at 16 streams (one stream alone
            // decoded 2x faster, reading half the bytes).
            tracing::warn!(model = %spec.name, version = %spec.version, dtype = %spec.dtype, "dtype: no AVX512_BF16 here, so the bf16 row kernels are off and bf16/f16 prefill and batched steps run on libtorch's slow reference paths; under load dtype = \"f32\" is several times faster here");
        }
        let at = Placement {
            device: self.device,
            kind,
            gguf_blocks: spec.quantization == Quantization::Gguf,
        };
        let files = source::open(&spec.source).map_err(load_error)?;
        let counting = CountingSource {
            inner: files.weights.as_ref(),
            numel: Cell::new(0),
            quantized_bytes: Cell::new(0),
        };
        let max_context = spec.max_context.map(|n| n as i64);
        let model =
            Model::from_source(&files.config, &counting, at, max_context).map_err(load_error)?;
        let weight_bytes = counting.numel.get() * kind.elt_size_in_bytes() as u64 + counting.quantized_bytes.get();
        // The weight source may hold a whole mapped file; the model owns its copies now.
        drop(files.weights);
        if spec.quantization == Quantization::Gguf {
            let (kept, all) = model.quantized_projections();
            if kept == 0 {
                tracing::warn!(model = %spec.name, version = %spec.version, "quantization = \"gguf\": no projection kept in GGUF blocks (the file has no Q4_0/Q4_1/Q8_0 weights, or this CPU lacks AVX512_BF16); serving them dequantized");
            } else {
                tracing::info!(model = %spec.name, version = %spec.version, kept, all, "quantization = \"gguf\": projections kept in their GGUF blocks");
            }
        }

        let block_size = spec.block_size as i64;
        if block_size <= 0 {
            return Err(ExecError::new("block_size must be at least 1"));
        }
        let per_block = KvCache::bytes_per_block(&files.config, block_size, kind);
        let num_blocks = KvCache::blocks_for_budget(
            &files.config,
            block_size,
            kind,
            spec.kv_budget_bytes.min(i64::MAX as u64) as i64,
        );
        if num_blocks < 1 {
            return Err(ExecError::new(format!(
                "kv_budget_bytes: {} bytes hold no KV block of {per_block} bytes",
                spec.kv_budget_bytes
            )));
        }
        let cache = model.new_cache(num_blocks, block_size).map_err(tch_error)?;
        let tokenizer = Arc::new(files.tokenizer);
        let info = ReplicaInfo {
            decoder: Arc::new(TokenizerDecoder(tokenizer.clone())),
            num_blocks: num_blocks as usize,
            block_size: spec.block_size,
            vocab_size: files.config.vocab_size as usize,
            max_context: model.max_context() as usize,
            eos_token_ids: eos_ids(&model, &tokenizer),
            weight_bytes,
            kv_bytes: (num_blocks * per_block) as u64,
        };
        Ok((
            Replica {
                model,
                cache,
                samplers: HashMap::new(),
            },
            info,
        ))
    }

    /// The forward and sampling of one step (the part that can fail in libtorch).
    fn run_step(
        device: Device,
        buf: &mut Vec<f32>,
        r: &mut Replica,
        req: &StepRequest,
    ) -> Result<StepResult, ExecError> {
        let inputs: Vec<SeqInput> = req
            .seqs
            .iter()
            .map(|s| SeqInput {
                tokens: s.tokens.iter().map(|&t| i64::from(t)).collect(),
                start_pos: s.start_pos as i64,
                block_table: s.block_table.iter().map(|b| i64::from(b.0)).collect(),
            })
            .collect();
        let rows: Vec<i64> = req
            .seqs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sample)
            .map(|(i, _)| i as i64)
            .collect();

        let t0 = Instant::now();
        let logits = r
            .model
            .forward(&inputs, &mut r.cache, LogitsFor::LastToken)
            .map_err(tch_error)?;
        let vocab = copy_rows(&logits, &rows, device, buf).map_err(tch_error)?;
        let forward_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let ids: Vec<SeqId> = req.seqs.iter().filter(|s| s.sample).map(|s| s.id).collect();
        let sampled = sample_rows(&mut r.samplers, &ids, buf.chunks_exact_mut(vocab.max(1)))?;
        let sample_secs = t1.elapsed().as_secs_f64();
        Ok(StepResult {
            sampled,
            forward_secs,
            sample_secs,
        })
    }
}

impl Executor for TchExecutor {
    fn load(&mut self, replica: ReplicaId, spec: &ModelSpec) -> Result<ReplicaInfo, ExecError> {
        if self.replicas.contains_key(&replica) {
            return Err(ExecError::new(format!(
                "replica {} is already loaded",
                replica.0
            )));
        }
        let _guard = tch::no_grad_guard();
        let (r, info) = self.load_replica(spec)?;
        self.replicas.insert(replica, r);
        Ok(info)
    }

    fn unload(&mut self, replica: ReplicaId) {
        // Dropping the replica frees its weights and KV pool.
        self.replicas.remove(&replica);
    }

    fn step(&mut self, replica: ReplicaId, req: &StepRequest) -> Result<StepResult, ExecError> {
        let r = self
            .replicas
            .get_mut(&replica)
            .ok_or_else(|| ExecError::new(format!("replica {} is not loaded", replica.0)))?;
        // Released first: an id released and added in the same step starts afresh.
        for id in &req.released {
            r.samplers.remove(id);
        }
        for s in &req.added {
            // An id added twice keeps its sampler, so its RNG stream never restarts.
            r.samplers
                .entry(s.id)
                .or_insert_with(|| Sampler::new(s.sampling.clone(), &s.prompt));
        }
        self.faults.take(req.seqs.len())?;
        if req.seqs.is_empty() {
            return Ok(StepResult::default());
        }
        let (device, buf) = (self.device, &mut self.logits_buf);
        // A panic inside tch or the model code must not take the worker
        // thread down with it; the device state is then unknown, so fatal.
        match catch_unwind(AssertUnwindSafe(|| Self::run_step(device, buf, r, req))) {
            Ok(result) => result,
            Err(panic) => Err(ExecError::fatal(format!(
                "executor panicked: {}",
                panic_message(&panic)
            ))),
        }
    }
}

/// Sampling is split over libtorch's threads only in steps that sample more
/// than this many sequences (at::parallel_for's grain). Smaller steps sample
/// on the worker thread: their sampling takes well under a millisecond, and
/// a step of up to `cpu_pool::MAX_ROWS` rows leaves the decode pool's worker
/// spinning for a while, with which libtorch's threads would contend.
const SAMPLING_GRAIN: usize = 8;

/// Samples one token for each of `ids` from its logits row (`rows`, in the
/// same order) with the sequence's own sampler. Every sampler keeps its own
/// RNG stream and reads only its row, so splitting the sequences over
/// threads gives the same tokens as one after another.
fn sample_rows<'a>(
    samplers: &mut HashMap<SeqId, Sampler>,
    ids: &[SeqId],
    rows: impl Iterator<Item = &'a mut [f32]>,
) -> Result<Vec<(SeqId, Sampled)>, ExecError> {
    let missing = |id: &SeqId| ExecError::new(format!("{id}: no sampler (never added)"));
    if let Some(id) = ids.iter().find(|id| !samplers.contains_key(*id)) {
        return Err(missing(id));
    }
    // Taken out of the map for the loop (a step never holds an id twice)
    // and put back after it.
    let mut work: Vec<(SeqId, Option<Sampler>, &mut [f32], Option<Sampled>)> = ids
        .iter()
        .zip(rows)
        .map(|(id, row)| (*id, samplers.remove(id), row, None))
        .collect();
    parallel_for::for_each_mut(&mut work, SAMPLING_GRAIN, |(_, sampler, row, out)| {
        if let Some(sampler) = sampler {
            *out = Some(sampler.sample(row));
        }
    });
    // Every sampler goes back before any error is returned.
    let mut sampled = Vec::with_capacity(work.len());
    let mut unsampled = None;
    for (id, sampler, _, out) in work {
        if let Some(sampler) = sampler {
            samplers.insert(id, sampler);
        }
        match out {
            Some(s) => sampled.push((id, s)),
            None => {
                unsampled.get_or_insert(id);
            }
        }
    }
    match unsampled {
        Some(id) => Err(missing(&id)),
        None => Ok(sampled),
    }
}

/// Copies the logits rows `rows` of `logits` [num_seqs, vocab] to `buf` in one
/// device-to-host transfer; returns the vocabulary size.
fn copy_rows(
    logits: &Tensor,
    rows: &[i64],
    device: Device,
    buf: &mut Vec<f32>,
) -> Result<usize, TchError> {
    let size = logits.size();
    let vocab = size.last().copied().unwrap_or(0) as usize;
    if rows.is_empty() {
        // Nothing to copy, but wait for the device so the forward is timed
        // and its errors surface in this step.
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        buf.clear();
        return Ok(vocab);
    }
    let picked = if rows.len() as i64 == size.first().copied().unwrap_or(0) {
        logits.shallow_clone()
    } else {
        let idx = Tensor::f_from_slice(rows)?.f_to_device(logits.device())?;
        logits.f_index_select(0, &idx)?
    };
    let picked = picked.f_to_kind(Kind::Float)?;
    let numel = rows.len() * vocab;
    buf.resize(numel, 0.0);
    picked.f_copy_data(buf, numel)?;
    Ok(vocab)
}

/// Counts the elements of every tensor the model loads, for `weight_bytes`.
struct CountingSource<'a> {
    inner: &'a (dyn WeightSource + Send + Sync),
    numel: Cell<u64>,
    /// Bytes of weights kept quantized.
    quantized_bytes: Cell<u64>,
}

impl WeightSource for CountingSource<'_> {
    fn load(&self, name: &str) -> Result<Tensor, LoadError> {
        let t = self.inner.load(name)?;
        self.numel.set(self.numel.get() + t.numel() as u64);
        Ok(t)
    }
    fn load_quant(&self, name: &str) -> Result<Option<QuantRows>, LoadError> {
        let rows = self.inner.load_quant(name)?;
        if let Some(r) = &rows {
            self.quantized_bytes.set(self.quantized_bytes.get() + r.data.len() as u64);
        }
        Ok(rows)
    }
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.inner.shape(name)
    }
    fn origin(&self) -> PathBuf {
        self.inner.origin()
    }
}

fn parse_device(s: &str) -> Result<Device, ExecError> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(n) = s.strip_prefix("cuda:") else {
        return Err(ExecError::new(format!(
            "device: expected cpu or cuda:N, got {s:?}"
        )));
    };
    let n: usize = n
        .parse()
        .map_err(|_| ExecError::new(format!("device: bad CUDA index in {s:?}")))?;
    if !tch::Cuda::is_available() {
        return Err(ExecError::new(format!(
            "device {s}: CUDA is not available on this machine"
        )));
    }
    if n as i64 >= tch::Cuda::device_count() {
        return Err(ExecError::new(format!(
            "device {s}: only {} CUDA device(s)",
            tch::Cuda::device_count()
        )));
    }
    Ok(Device::Cuda(n))
}

fn parse_dtype(s: &str) -> Result<Kind, ExecError> {
    match s {
        "f32" => Ok(Kind::Float),
        "bf16" => Ok(Kind::BFloat16),
        "f16" => Ok(Kind::Half),
        other => Err(ExecError::new(format!(
            "dtype: expected f32, bf16 or f16, got {other:?}"
        ))),
    }
}

/// Maps a libtorch error: fatal only when the CUDA context is poisoned.
fn tch_error(e: TchError) -> ExecError {
    let message = e.to_string();
    if FATAL_CUDA_MARKERS.iter().any(|m| message.contains(m)) {
        ExecError::fatal(message)
    } else {
        ExecError::new(message)
    }
}

fn load_error(e: LoadError) -> ExecError {
    let message = e.to_string();
    if FATAL_CUDA_MARKERS.iter().any(|m| message.contains(m)) {
        ExecError::fatal(message)
    } else {
        ExecError::new(message)
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_actors::executor::{NewSeq, StepSeq};
    use inferd_actors::ids::BlockId;
    use inferd_actors::sampler::SamplingParams;
    use serde_json::Value;

    const GGUF: &str = "weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
    const NEAR_TIE: f64 = 0.02;

    fn spec(dtype: &str, kv_budget_bytes: u64) -> ModelSpec {
        ModelSpec {
            name: "smollm2".into(),
            version: "v1".into(),
            source: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(GGUF),
            dtype: dtype.into(),
            kv_budget_bytes,
            block_size: 16,
            max_context: Some(2048),
            quantization: Quantization::None,
        }
    }

    /// (prompt ids, reference greedy ids, reference top-2 margins) of the fixtures.
    fn fixture_cases() -> Vec<(Vec<u32>, Vec<u32>, Vec<f64>)> {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/fixtures/smollm2/greedy.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ids = |v: &Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect::<Vec<u32>>()
        };
        v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    ids(&c["prompt_ids"]),
                    ids(&c["output_ids"]),
                    c["margins"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_f64().unwrap())
                        .collect(),
                )
            })
            .collect()
    }

    fn blocks(range: std::ops::Range<u32>) -> Vec<BlockId> {
        range.map(BlockId).collect()
    }

    fn step_seq(
        id: u64,
        tokens: &[u32],
        start_pos: usize,
        table: &[BlockId],
        sample: bool,
    ) -> StepSeq {
        StepSeq {
            id: SeqId(id),
            tokens: tokens.to_vec(),
            start_pos,
            block_table: table.to_vec(),
            sample,
        }
    }

    /// Two fixture prompts batched through the executor, one of them prefilled
    /// in two chunks across steps, decode greedily like the reference.
    #[test]
    fn batched_chunked_steps_match_the_greedy_reference() {
        let mut ex = TchExecutor::new("cpu").unwrap();
        let r = ReplicaId(1);
        let info = ex.load(r, &spec("f32", 64 << 20)).unwrap();
        assert_eq!(
            (info.block_size, info.vocab_size, info.max_context),
            (16, 49152, 2048)
        );
        assert!(info.eos_token_ids.contains(&2), "{:?}", info.eos_token_ids);
        assert!(
            info.weight_bytes > 400 << 20 && info.weight_bytes < 800 << 20,
            "{}",
            info.weight_bytes
        );
        assert_eq!(info.kv_bytes, info.num_blocks as u64 * 737_280);
        assert_eq!(
            info.decoder
                .decode(&[504, 3575, 282, 4649, 314, 7042, 30, 2])
                .unwrap(),
            "The capital of France is Paris."
        );

        let cases = fixture_cases();
        let (pa, wa, ma) = &cases[0];
        let (pb, wb, mb) = &cases[2];
        let (ta, tb) = (blocks(0..8), blocks(8..16));
        let added = [pa, pb]
            .iter()
            .enumerate()
            .map(|(i, p)| NewSeq {
                id: SeqId(i as u64),
                sampling: SamplingParams::default(),
                prompt: p.to_vec(),
            })
            .collect();
        let split = 20;
        let first = StepRequest {
            added,
            released: vec![],
            seqs: vec![
                step_seq(0, pa, 0, &ta, true),
                step_seq(1, &pb[..split], 0, &tb, false),
            ],
        };
        let res = ex.step(r, &first).unwrap();
        assert_eq!(
            res.sampled.len(),
            1,
            "only the sequence at its prompt's end samples"
        );
        assert!(res.forward_secs > 0.0 && res.sample_secs >= 0.0);
        let mut out: Vec<Vec<u32>> = vec![vec![res.sampled[0].1.token], vec![]];
        let mut seqs = vec![
            step_seq(0, &out[0], pa.len(), &ta, true),
            step_seq(1, &pb[split..], split, &tb, true),
        ];
        for _ in 0..8 {
            let res = ex
                .step(
                    r,
                    &StepRequest {
                        seqs: seqs.clone(),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(res.sampled.len(), 2);
            for (id, s) in res.sampled {
                let i = id.0 as usize;
                out[i].push(s.token);
                let prompt_len = if i == 0 { pa.len() } else { pb.len() };
                let table = if i == 0 { &ta } else { &tb };
                seqs[i] = step_seq(
                    i as u64,
                    &[s.token],
                    prompt_len + out[i].len() - 1,
                    table,
                    true,
                );
            }
        }
        for (got, want, margins) in [(&out[0], wa, ma), (&out[1], wb, mb)] {
            let n = margins
                .iter()
                .position(|&m| m < NEAR_TIE)
                .unwrap_or(margins.len())
                .min(want.len())
                .min(got.len());
            assert!(n >= 1, "nothing comparable");
            assert_eq!(&got[..n], &want[..n]);
        }

        // A released sequence has no sampler any more: a non-fatal error.
        let res = ex.step(
            r,
            &StepRequest {
                released: vec![SeqId(0)],
                seqs: vec![seqs[0].clone()],
                ..Default::default()
            },
        );
        let e = res.unwrap_err();
        assert!(!e.fatal && e.message.contains("no sampler"), "{e:?}");

        // Ordinary libtorch errors (a block outside the pool) are non-fatal.
        let bad = step_seq(1, &[42], 60, &blocks(100_000..100_004), true);
        let e = ex
            .step(
                r,
                &StepRequest {
                    seqs: vec![bad],
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(!e.fatal, "{e:?}");

        ex.unload(r);
        assert!(ex
            .step(
                r,
                &StepRequest {
                    seqs: vec![seqs[1].clone()],
                    ..Default::default()
                }
            )
            .is_err());
    }

    #[test]
    fn load_errors_name_the_field() {
        let mut ex = TchExecutor::new("cpu").unwrap();
        let e = ex.load(ReplicaId(1), &spec("int4", 1 << 20)).unwrap_err();
        assert!(e.message.starts_with("dtype:"), "{e:?}");
        let e = ex.load(ReplicaId(1), &spec("bf16", 1000)).unwrap_err();
        assert!(e.message.starts_with("kv_budget_bytes:"), "{e:?}");
        let mut missing = spec("bf16", 1 << 20);
        missing.source = PathBuf::from("/nonexistent/model.gguf");
        assert!(ex
            .load(ReplicaId(2), &missing)
            .unwrap_err()
            .message
            .contains("/nonexistent/model.gguf"));
    }

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu")
            .unwrap_err()
            .message
            .starts_with("device:"));
        assert!(parse_device("cuda:x")
            .unwrap_err()
            .message
            .contains("bad CUDA index"));
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        let e = parse_dtype("int8").unwrap_err();
        assert!(e.message.starts_with("dtype:") && !e.fatal, "{e:?}");
    }

    #[test]
    fn cuda_context_errors_are_fatal_others_not() {
        assert!(
            tch_error(TchError::Torch(
                "CUDA error: an illegal memory access was encountered".into()
            ))
            .fatal
        );
        assert!(
            !tch_error(TchError::Torch(
                "CUDA out of memory. Tried to allocate 2.00 GiB".into()
            ))
            .fatal
        );
        assert!(!tch_error(TchError::Shape("bad".into())).fatal);
    }

    #[test]
    fn a_fault_fires_once_on_a_step_with_sequences() {
        let f = FaultInjector::new();
        assert!(f.take(3).is_ok());
        f.fail_next_step(true);
        assert!(
            f.take(0).is_ok(),
            "an empty step does not consume the fault"
        );
        let e = f.clone().take(2).unwrap_err();
        assert!(e.fatal);
        assert_eq!((f.fired(), f.last_fault_seqs()), (1, 2));
        assert!(f.take(2).is_ok());
    }

    #[test]
    fn sampling_split_over_threads_gives_the_tokens_of_one_after_another() {
        let params = |i: u64| SamplingParams {
            temperature: 0.8,
            top_k: if i % 2 == 0 { Some(40) } else { None },
            top_p: 0.95,
            seed: Some(100 + i),
            ..SamplingParams::default()
        };
        let make = || -> HashMap<SeqId, Sampler> { (0..12u64).map(|i| (SeqId(i), Sampler::new(params(i), &[1, 2, 3]))).collect() };
        let row = |i: usize| -> Vec<f32> { (0..4096).map(|t| ((t * 31 + i * 7) % 97) as f32 / 9.0).collect() };
        // Every step below samples 12 sequences (over SAMPLING_GRAIN, so
        // split over threads), in an order that is not the ids' own.
        let ids: Vec<SeqId> = [5u64, 0, 11, 3, 8, 1, 9, 2, 10, 4, 7, 6].into_iter().map(SeqId).collect();
        assert!(ids.len() > SAMPLING_GRAIN);
        let (mut split, mut serial) = (make(), make());
        for step in 0..4 {
            let mut rows: Vec<Vec<f32>> = (0..ids.len()).map(|i| row(i + step)).collect();
            let got = sample_rows(&mut split, &ids, rows.iter_mut().map(|r| r.as_mut_slice())).unwrap();
            let want: Vec<(SeqId, u32)> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, serial.get_mut(id).unwrap().sample(&mut row(i + step)).token))
                .collect();
            assert_eq!(got.iter().map(|(id, s)| (*id, s.token)).collect::<Vec<_>>(), want, "step {step}");
            assert_eq!(split.len(), 12, "every sampler is back in the map");
        }
        // An id without a sampler fails the step and leaves the others in place.
        let mut bad = ids.clone();
        bad[3] = SeqId(99);
        let mut rows: Vec<Vec<f32>> = (0..bad.len()).map(row).collect();
        let e = sample_rows(&mut split, &bad, rows.iter_mut().map(|r| r.as_mut_slice())).unwrap_err();
        assert!(e.message.contains("no sampler"), "{}", e.message);
        assert_eq!(split.len(), 12);
    }
}
