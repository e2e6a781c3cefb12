//! A fake executor for the engine tests. Its "model" is deterministic: the
//! next token is a function of the whole context, read back from a simulated
//! paged KV pool where each slot stores (token, fingerprint of the prefix up
//! to it). A wrong block table, a stale or clobbered block, or a sequence that
//! was not recomputed after a restart makes the step fail or changes the
//! tokens. Samplers are the crate's real ones (greedy over a one-hot row), so
//! the `added` / `released` protocol is checked too. Faults (error, fatal
//! error, panic) can be armed for a chosen step.
//!
//! For the model-management tests: with `Control::versioned` each version is
//! a different model (the fingerprint chain starts from a hash of the
//! version, see `reference_v`); a load can be made to fail for a source
//! path or to take a while; live replicas and their bytes are counted
//! (load adds, unload and dropping the executor subtract).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inferd_actors::block_manager::chain_hash;
use inferd_actors::executor::{
    ExecError, Executor, ModelSpec, ReplicaId, ReplicaInfo, StepRequest, StepResult, TextDecoder,
};
use inferd_actors::sampler::Sampler;
use inferd_actors::{BlockHash, SeqId};
use parking_lot::Mutex;

/// Tokens the model produces are `0..VOCAB`.
pub const VOCAB: u32 = 97;
/// The model's EOS id: never produced by the model itself.
pub const EOS: u32 = 1000;

/// Fingerprint of a context extended by one token.
pub fn fp_step(prev: u64, tok: u32) -> u64 {
    chain_hash(Some(BlockHash(prev)), &[tok]).0
}

/// Fingerprint of the empty context.
pub const FP0: u64 = 0;
/// Bytes each loaded replica reports for its weights.
pub const WEIGHT_BYTES: u64 = 1_000_000;
/// Bytes per KV block each loaded replica reports.
pub const KV_BYTES_PER_BLOCK: u64 = 1_000;

/// Fingerprint of the empty context of `version` (with `Control::versioned`).
pub fn version_fp(version: &str) -> u64 {
    let ids: Vec<u32> = version.bytes().map(u32::from).collect();
    chain_hash(None, &ids).0
}

/// What `version` generates, unbatched (with `Control::versioned`).
pub fn reference_v(version: &str, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut fp = prompt
        .iter()
        .fold(version_fp(version), |f, &t| fp_step(f, t));
    let mut out = Vec::new();
    for _ in 0..max_tokens {
        let t = next_token(fp);
        out.push(t);
        fp = fp_step(fp, t);
    }
    out
}

pub fn next_token(fp: u64) -> u32 {
    (fp % VOCAB as u64) as u32
}

/// What an unbatched, uninterrupted run generates.
pub fn reference(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut fp = prompt.iter().fold(FP0, |f, &t| fp_step(f, t));
    let mut out = Vec::new();
    for _ in 0..max_tokens {
        let t = next_token(fp);
        out.push(t);
        fp = fp_step(fp, t);
    }
    out
}

/// Token id -> bytes: ASCII words, multi-byte characters, and an emoji split
/// over two tokens (so text is held back until its second half arrives).
pub struct FakeDecoder;

impl FakeDecoder {
    fn bytes(id: u32) -> Vec<u8> {
        match id % 10 {
            0 => "é".as_bytes().to_vec(),
            1 => "日本".as_bytes().to_vec(),
            2 => vec![0xF0, 0x9F],
            3 => vec![0x98, 0x80],
            _ => format!(" w{id}").into_bytes(),
        }
    }
}

impl TextDecoder for FakeDecoder {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| FakeDecoder::bytes(id)).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

pub fn decode(ids: &[u32]) -> String {
    FakeDecoder.decode(ids).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Error,
    Fatal,
    Panic,
}

/// Shared by the test and every executor the factory builds (restarts too).
#[derive(Default)]
pub struct Control {
    /// Sleep per step, to keep requests in flight.
    pub step_delay_ms: AtomicU64,
    /// Steps run so far (all executors).
    pub steps: AtomicU64,
    pub factory_calls: AtomicU64,
    /// (step number, fault) to inject.
    faults: Mutex<Vec<(u64, Fault)>>,
    /// The sequences of each faulted step.
    pub faulted: Mutex<Vec<Vec<SeqId>>>,
    /// Each version is a different model (tokens depend on the version).
    pub versioned: AtomicBool,
    /// Sleep per load.
    pub load_delay_ms: AtomicU64,
    /// Sources whose load fails.
    failing: Mutex<Vec<PathBuf>>,
    /// Replicas loaded and not unloaded, over all executors, and their bytes.
    pub live_replicas: AtomicU64,
    pub live_bytes: AtomicU64,
}

impl Control {
    /// Injects `fault` into the `n`-th step from now (1 = the next one).
    pub fn arm(&self, n: u64, fault: Fault) {
        let at = self.steps.load(Ordering::SeqCst) + n;
        self.faults.lock().push((at, fault));
    }

    pub fn delay(&self, ms: u64) {
        self.step_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Loads of `source` fail from now on.
    pub fn fail_source(&self, source: &Path) {
        self.failing.lock().push(source.to_path_buf());
    }

    /// (live replicas, their bytes).
    pub fn live(&self) -> (u64, u64) {
        (
            self.live_replicas.load(Ordering::SeqCst),
            self.live_bytes.load(Ordering::SeqCst),
        )
    }
}

/// A loaded replica of the fake.
struct Loaded {
    block_size: usize,
    /// Fingerprint of the empty context.
    fp0: u64,
    bytes: u64,
}

pub struct FakeExec {
    ctl: Arc<Control>,
    replicas: HashMap<ReplicaId, Loaded>,
    /// (replica, flat slot) -> (token, fingerprint of the prefix ending there).
    kv: HashMap<(ReplicaId, u64), (u32, u64)>,
    samplers: HashMap<(ReplicaId, SeqId), Sampler>,
}

impl FakeExec {
    pub fn new(ctl: Arc<Control>) -> FakeExec {
        ctl.factory_calls.fetch_add(1, Ordering::SeqCst);
        FakeExec {
            ctl,
            replicas: HashMap::new(),
            kv: HashMap::new(),
            samplers: HashMap::new(),
        }
    }
}

impl FakeExec {
    fn forget(&self, old: Loaded) {
        self.ctl.live_replicas.fetch_sub(1, Ordering::SeqCst);
        self.ctl.live_bytes.fetch_sub(old.bytes, Ordering::SeqCst);
    }
}

/// A replaced (restarted) executor's replicas are gone with it.
impl Drop for FakeExec {
    fn drop(&mut self) {
        for (_, old) in std::mem::take(&mut self.replicas) {
            self.forget(old);
        }
    }
}

impl Executor for FakeExec {
    /// `kv_budget_bytes` is read as a block count.
    fn load(&mut self, replica: ReplicaId, spec: &ModelSpec) -> Result<ReplicaInfo, ExecError> {
        let delay = self.ctl.load_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.ctl.failing.lock().contains(&spec.source) {
            return Err(ExecError::new(format!(
                "cannot read {}: injected load failure",
                spec.source.display()
            )));
        }
        let kv_bytes = spec.kv_budget_bytes * KV_BYTES_PER_BLOCK;
        let fp0 = if self.ctl.versioned.load(Ordering::SeqCst) {
            version_fp(&spec.version)
        } else {
            FP0
        };
        let loaded = Loaded {
            block_size: spec.block_size,
            fp0,
            bytes: WEIGHT_BYTES + kv_bytes,
        };
        self.ctl.live_replicas.fetch_add(1, Ordering::SeqCst);
        self.ctl
            .live_bytes
            .fetch_add(loaded.bytes, Ordering::SeqCst);
        if let Some(old) = self.replicas.insert(replica, loaded) {
            self.forget(old);
        }
        Ok(ReplicaInfo {
            decoder: Arc::new(FakeDecoder),
            num_blocks: spec.kv_budget_bytes as usize,
            block_size: spec.block_size,
            vocab_size: EOS as usize + 1,
            max_context: spec.max_context.unwrap_or(4096),
            eos_token_ids: vec![EOS],
            weight_bytes: WEIGHT_BYTES,
            kv_bytes,
        })
    }

    fn unload(&mut self, replica: ReplicaId) {
        if let Some(old) = self.replicas.remove(&replica) {
            self.forget(old);
        }
        self.kv.retain(|(r, _), _| *r != replica);
        self.samplers.retain(|(r, _), _| *r != replica);
    }

    fn step(&mut self, replica: ReplicaId, req: &StepRequest) -> Result<StepResult, ExecError> {
        let n = self.ctl.steps.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = self.ctl.step_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let fault = self
            .ctl
            .faults
            .lock()
            .iter()
            .find(|(at, _)| *at == n)
            .map(|f| f.1);
        if let Some(fault) = fault {
            self.ctl
                .faulted
                .lock()
                .push(req.seqs.iter().map(|s| s.id).collect());
            match fault {
                Fault::Error => return Err(ExecError::new("injected error")),
                Fault::Fatal => return Err(ExecError::fatal("injected fatal error")),
                Fault::Panic => panic!("injected panic"),
            }
        }
        let (bs, fp0) = self
            .replicas
            .get(&replica)
            .map(|l| (l.block_size, l.fp0))
            .ok_or_else(|| ExecError::new("unknown replica"))?;
        for id in &req.released {
            self.samplers.remove(&(replica, *id));
        }
        for s in &req.added {
            let sampler = Sampler::new(s.sampling.clone(), &s.prompt);
            if self.samplers.insert((replica, s.id), sampler).is_some() {
                return Err(ExecError::new(format!("{} added twice", s.id)));
            }
        }
        let mut out = StepResult::default();
        for s in &req.seqs {
            let slot = |p: usize| -> Result<u64, ExecError> {
                let b = s
                    .block_table
                    .get(p / bs)
                    .ok_or_else(|| ExecError::new("block table too short"))?;
                Ok(b.0 as u64 * bs as u64 + (p % bs) as u64)
            };
            let mut fp = fp0;
            for p in 0..s.start_pos {
                let &(tok, stored) = self
                    .kv
                    .get(&(replica, slot(p)?))
                    .ok_or_else(|| ExecError::new(format!("{} pos {p}: empty KV", s.id)))?;
                fp = fp_step(fp, tok);
                if stored != fp {
                    return Err(ExecError::new(format!("{} pos {p}: stale KV", s.id)));
                }
            }
            for (j, &tok) in s.tokens.iter().enumerate() {
                fp = fp_step(fp, tok);
                self.kv.insert((replica, slot(s.start_pos + j)?), (tok, fp));
            }
            if s.sample {
                let sampler = self
                    .samplers
                    .get_mut(&(replica, s.id))
                    .ok_or_else(|| ExecError::new(format!("{} has no sampler", s.id)))?;
                let mut logits = vec![0.0f32; VOCAB as usize];
                logits[next_token(fp) as usize] = 1.0;
                out.sampled.push((s.id, sampler.sample(&mut logits)));
            }
        }
        Ok(out)
    }
}
