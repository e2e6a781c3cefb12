//! The router: model name -> replicas, and the admission decision for each
//! request. It is shared state behind a lock rather than an actor, because a
//! routing decision is a few comparisons over load gauges that the batchers
//! publish (no message round trip), and the check-then-reserve of admission
//! control must be atomic across concurrent submits. A request is reserved in
//! the chosen replica's gauge before its `Submit` is queued, so a burst can
//! never slip past `max_queue_requests` / `max_queue_tokens`.
//!
//! Replica choice: least loaded (queued + running requests, then KV usage),
//! preferring the replica that last served the same prompt prefix (a hash of
//! the prompt's first full KV block, SGLang-style cache-aware routing) unless
//! it is clearly busier than the least loaded one.
//!
//! Versions: each model's [`Deployment`] (plain state) first picks the
//! version (pin, canary split, active), then the replica is chosen among that
//! version's ready replicas. Both happen under the model's lock, so switching
//! the active version is atomic for routing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::Addr;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::batcher::{Batcher, Submit};
use crate::block_manager::chain_hash;
use crate::deployment::{Deployment, ManageError, RouteHints};
use crate::engine::{ModelDeployment, RequestHandle, RequestId};
use crate::executor::{ReplicaId, ReplicaInfo};
use crate::metrics::{count_error, ErrorType};
use crate::metrics::count_cache_hit;
use crate::request::{Event, GenerateRequest, SubmitError};
use crate::response_cache::{CacheKey, ResponseCache};

/// Prompt prefixes remembered per model for affinity (oldest forgotten first).
pub const AFFINITY_CAPACITY: usize = 4096;
/// Full KV blocks of the prompt hashed into the affinity key: one block is
/// what a shared system prompt or few-shot header has in common.
pub const AFFINITY_PREFIX_BLOCKS: usize = 1;
/// How many more requests (queued + running) the affinity replica may carry
/// than the least loaded one and still be preferred.
pub const AFFINITY_SLACK: usize = 4;
/// `retry_after` reported with `Overloaded` (a queue drains in about a second
/// at the batch sizes served here).
pub const OVERLOAD_RETRY_AFTER_SECS: u64 = 1;

/// Which batcher holds each live request, for `Engine::cancel`. Batchers
/// remove their requests when they end.
pub type RequestIndex = Arc<DashMap<RequestId, Addr<Batcher>>>;

/// One replica's load, written by its batcher and read by the router without
/// a message round trip.
#[derive(Debug, Default)]
pub struct ReplicaLoad {
    /// Routed by the router but not yet received by the batcher.
    pending_requests: AtomicUsize,
    pending_tokens: AtomicUsize,
    /// Received by the batcher, never scheduled yet (the admission queue).
    queued_requests: AtomicUsize,
    queued_tokens: AtomicUsize,
    running: AtomicUsize,
    /// `f64::to_bits` of the KV usage fraction.
    kv_usage_bits: AtomicU64,
    /// False until loaded, and again while the replica's worker is lost.
    ready: AtomicBool,
}

impl ReplicaLoad {
    /// Requests and prompt tokens waiting for their first step.
    pub fn waiting(&self) -> (usize, usize) {
        let reqs = self.pending_requests.load(Ordering::SeqCst)
            + self.queued_requests.load(Ordering::SeqCst);
        let toks =
            self.pending_tokens.load(Ordering::SeqCst) + self.queued_tokens.load(Ordering::SeqCst);
        (reqs, toks)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub fn kv_usage(&self) -> f64 {
        f64::from_bits(self.kv_usage_bits.load(Ordering::SeqCst))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Router: a request is on its way to the batcher.
    fn reserve(&self, tokens: usize) {
        self.pending_requests.fetch_add(1, Ordering::SeqCst);
        self.pending_tokens.fetch_add(tokens, Ordering::SeqCst);
    }

    /// Batcher: the request arrived (call after publishing it as queued, so
    /// the total is never under-counted in between).
    pub(crate) fn arrived(&self, tokens: usize) {
        self.pending_requests.fetch_sub(1, Ordering::SeqCst);
        self.pending_tokens.fetch_sub(tokens, Ordering::SeqCst);
    }

    /// Batcher: its current state.
    pub(crate) fn publish(&self, queued: usize, queued_tokens: usize, running: usize, kv: f64) {
        self.queued_requests.store(queued, Ordering::SeqCst);
        self.queued_tokens.store(queued_tokens, Ordering::SeqCst);
        self.running.store(running, Ordering::SeqCst);
        self.kv_usage_bits.store(kv.to_bits(), Ordering::SeqCst);
    }

    /// Routed here but not yet received by the batcher (a drain waits for 0).
    pub fn pending(&self) -> usize {
        self.pending_requests.load(Ordering::SeqCst)
    }

    /// Requests on this replica, the first ranking key.
    fn load(&self) -> usize {
        self.waiting().0 + self.running()
    }
}

/// A loaded replica as the router sees it.
#[derive(Clone)]
pub struct Replica {
    pub id: ReplicaId,
    pub device: String,
    pub version: String,
    pub info: ReplicaInfo,
    pub gauge: Arc<ReplicaLoad>,
    pub batcher: Addr<Batcher>,
}

/// Per-model admission limits (from the deployment).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queue_requests: usize,
    pub max_queue_tokens: usize,
}

struct ModelEntry {
    limits: QueueLimits,
    /// Every version's replicas.
    replicas: Vec<Replica>,
    affinity: Affinity,
    deployment: Deployment,
}

impl ModelEntry {
    fn new(name: &str, limits: QueueLimits) -> ModelEntry {
        ModelEntry {
            limits,
            replicas: Vec::new(),
            affinity: Affinity::default(),
            deployment: Deployment::new(name),
        }
    }
}

/// Bounded map: prompt-prefix hash -> replica that last served it.
#[derive(Default)]
struct Affinity {
    map: HashMap<u64, ReplicaId>,
    /// Insertion order, to forget the oldest key beyond the capacity.
    order: VecDeque<u64>,
}

impl Affinity {
    fn get(&self, key: u64) -> Option<ReplicaId> {
        self.map.get(&key).copied()
    }

    fn put(&mut self, key: u64, replica: ReplicaId) {
        if self.map.insert(key, replica).is_none() {
            self.order.push_back(key);
            if self.order.len() > AFFINITY_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Model name -> replicas, plus the request index and id counter.
pub struct Router {
    /// Names are known from start (so an unknown model differs from one
    /// still loading); models are added by `begin_load` and removed by
    /// `remove_model`; the replicas inside each entry come and go.
    models: RwLock<HashMap<String, Mutex<ModelEntry>>>,
    /// Model names in configuration (then addition) order.
    names: RwLock<Vec<String>>,
    next_id: AtomicU64,
    index: RequestIndex,
    /// Finished streams of deterministic requests (disabled until sized).
    cache: Arc<Mutex<ResponseCache>>,
}

impl Router {
    pub fn new(models: Vec<(String, QueueLimits)>) -> Router {
        let names = models.iter().map(|(n, _)| n.clone()).collect();
        let models = models
            .into_iter()
            .map(|(name, limits)| {
                let entry = ModelEntry::new(&name, limits);
                (name, Mutex::new(entry))
            })
            .collect();
        Router {
            models: RwLock::new(models),
            names: RwLock::new(names),
            next_id: AtomicU64::new(1),
            index: Arc::new(DashMap::new()),
            cache: Arc::new(Mutex::new(ResponseCache::new(0))),
        }
    }

    /// Sizes the response cache (0 disables it; entries are dropped).
    pub fn set_response_cache_bytes(&self, bytes: usize) {
        *self.cache.lock() = ResponseCache::new(bytes);
    }

    /// (entries, bytes, hits, misses) of the response cache.
    pub fn response_cache_stats(&self) -> (usize, usize, u64, u64) {
        let c = self.cache.lock();
        (c.len(), c.used_bytes(), c.hits(), c.misses())
    }

    pub fn index(&self) -> RequestIndex {
        self.index.clone()
    }

    pub fn models(&self) -> Vec<String> {
        self.names.read().clone()
    }

    /// Adds a loaded replica of `model` (ignored for an unknown model).
    pub fn register(&self, model: &str, replica: Replica) {
        if let Some(entry) = self.models.read().get(model) {
            let mut entry = entry.lock();
            entry.replicas.retain(|r| r.id != replica.id);
            entry.replicas.push(replica);
        }
    }

    /// Every registered replica with its model name.
    pub fn replicas(&self) -> Vec<(String, Replica)> {
        let models = self.models.read();
        let mut out = Vec::new();
        for name in self.names.read().iter() {
            if let Some(entry) = models.get(name) {
                out.extend(
                    entry
                        .lock()
                        .replicas
                        .iter()
                        .map(|r| (name.clone(), r.clone())),
                );
            }
        }
        out
    }

    /// Limits of the first ready replica of `model`'s active version (of
    /// any version while none is active).
    pub fn model_limits(&self, model: &str) -> Option<ReplicaInfo> {
        let models = self.models.read();
        let entry = models.get(model)?.lock();
        let active = entry.deployment.active();
        let ready = |r: &&Replica| r.gauge.is_ready();
        entry
            .replicas
            .iter()
            .filter(ready)
            .find(|r| active.is_none_or(|a| r.version == a))
            .map(|r| r.info.clone())
    }

    /// The batcher holding a live request.
    pub fn batcher_of(&self, id: RequestId) -> Option<Addr<Batcher>> {
        self.index.get(&id).map(|e| e.value().clone())
    }

    /// Admission control and replica choice; queues the request on success.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestHandle, SubmitError> {
        self.submit_with(req, &RouteHints::default())
    }

    /// `submit` with a version pin and/or a session (canary stickiness).
    pub fn submit_with(
        &self,
        req: GenerateRequest,
        hints: &RouteHints,
    ) -> Result<RequestHandle, SubmitError> {
        let models = self.models.read();
        let entry = models
            .get(&req.model)
            .ok_or_else(|| SubmitError::UnknownModel(req.model.clone()))?;
        // Held until the request is reserved: check-then-reserve is atomic,
        // and so is the version choice against an activation or a drain.
        let mut entry = entry.lock();
        let version = entry.deployment.route(hints)?;
        let ready: Vec<&Replica> = entry
            .replicas
            .iter()
            .filter(|r| r.version == version && r.gauge.is_ready() && r.batcher.connected())
            .collect();
        let Some(first) = ready.first() else {
            return Err(SubmitError::NotReady(req.model.clone()));
        };
        let counted = |e: SubmitError| {
            let kind = match e {
                SubmitError::Overloaded { .. } => ErrorType::Rejected,
                _ => ErrorType::Invalid,
            };
            count_error(&req.model, &version, kind);
            e
        };
        validate(&req, &first.info).map_err(counted)?;
        // A cached answer needs no capacity: looked up before the queue check.
        let cache_key = self.cache_key(&req, &version);
        if let Some(key) = &cache_key {
            if let Some(events) = self.cache.lock().get(key) {
                count_cache_hit(&req.model, &version);
                return Ok(self.replay(req.model, version, events));
            }
        }
        check_queue(&req, entry.limits, &ready).map_err(counted)?;
        let key = affinity_key(&req.prompt, first.info.block_size);
        let preferred = key.and_then(|k| entry.affinity.get(k));
        let cands: Vec<Candidate> = ready
            .iter()
            .map(|r| (r.id, r.gauge.load(), r.gauge.kv_usage()))
            .collect();
        let chosen_id = pick(&cands, preferred);
        // `ready` is non-empty, so pick found one of its ids.
        let Some(chosen) = ready
            .iter()
            .find(|r| Some(r.id) == chosen_id)
            .map(|r| (*r).clone())
        else {
            return Err(SubmitError::NotReady(req.model.clone()));
        };
        if let Some(k) = key {
            entry.affinity.put(k, chosen.id);
        }
        chosen.gauge.reserve(req.prompt.len());
        drop(entry);
        let mut handle = self.dispatch(&chosen, req);
        if let Some(key) = cache_key {
            handle.events = record_into(self.cache.clone(), key, handle.events);
        }
        Ok(handle)
    }

    /// Sends an internal request (the warm-up) to one replica whatever its
    /// version's state; only the request itself is validated.
    pub(crate) fn submit_to(
        &self,
        model: &str,
        replica: ReplicaId,
        req: GenerateRequest,
    ) -> Result<RequestHandle, SubmitError> {
        let models = self.models.read();
        let entry = models
            .get(model)
            .ok_or_else(|| SubmitError::UnknownModel(model.to_string()))?
            .lock();
        let Some(chosen) = entry.replicas.iter().find(|r| r.id == replica).cloned() else {
            return Err(SubmitError::NotReady(model.to_string()));
        };
        validate(&req, &chosen.info)?;
        chosen.gauge.reserve(req.prompt.len());
        drop(entry);
        Ok(self.dispatch(&chosen, req))
    }

    /// Queues a reserved request on its replica's batcher.
    /// The cache key of `req` on `version`, when it may use the cache.
    fn cache_key(&self, req: &GenerateRequest, version: &str) -> Option<CacheKey> {
        // A stream is recorded by a task: none outside a runtime (unit tests).
        let usable = req.use_cache
            && self.cache.lock().is_enabled()
            && tokio::runtime::Handle::try_current().is_ok();
        usable.then(|| CacheKey::of(req, version)).flatten()
    }

    /// A handle whose stream is `events`, already complete.
    fn replay(&self, model: String, version: String, events: Vec<Event>) -> RequestHandle {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::SeqCst));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for ev in events {
            // `rx` is held right here, so the send cannot fail.
            let _ = tx.send(ev);
        }
        RequestHandle {
            id,
            model,
            version,
            events: rx,
        }
    }

    fn dispatch(&self, chosen: &Replica, req: GenerateRequest) -> RequestHandle {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::SeqCst));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.index.insert(id, chosen.batcher.clone());
        let model = req.model.clone();
        // The queue bound is the backpressure; the mailbox need not be.
        chosen.batcher.do_send(Submit {
            id,
            req,
            events: tx,
        });
        RequestHandle {
            id,
            model,
            version: chosen.version.clone(),
            events: rx,
        }
    }

    /// Records a version about to load (`Loading`), adding the model if it
    /// is new; `make_active` designates it the active version at once.
    pub fn begin_load(&self, dep: &ModelDeployment, make_active: bool) -> Result<(), ManageError> {
        let name = &dep.spec.name;
        let mut models = self.models.write();
        if !models.contains_key(name) {
            let limits = QueueLimits {
                max_queue_requests: dep.max_queue_requests,
                max_queue_tokens: dep.max_queue_tokens,
            };
            models.insert(name.clone(), Mutex::new(ModelEntry::new(name, limits)));
            self.names.write().push(name.clone());
        }
        // Just ensured.
        let Some(entry) = models.get(name) else {
            return Err(ManageError::UnknownModel(name.clone()));
        };
        let mut entry = entry.lock();
        entry.deployment.begin_load(dep)?;
        if make_active {
            entry.deployment.designate_active(&dep.spec.version);
        }
        Ok(())
    }

    /// Lists a known but unloaded version of a served model (see
    /// `Deployment::register_unloaded`).
    pub fn register_unloaded(&self, dep: &ModelDeployment) -> Result<bool, ManageError> {
        self.update(&dep.spec.name, |d| d.register_unloaded(dep))?
    }

    /// Runs `f` on `model`'s deployment under its lock.
    pub fn update<R>(
        &self,
        model: &str,
        f: impl FnOnce(&mut Deployment) -> R,
    ) -> Result<R, ManageError> {
        let models = self.models.read();
        let entry = models
            .get(model)
            .ok_or_else(|| ManageError::UnknownModel(model.to_string()))?;
        let mut entry = entry.lock();
        Ok(f(&mut entry.deployment))
    }

    /// A copy of each model's deployment with its replicas, in model order.
    pub fn view(&self) -> Vec<(Deployment, Vec<Replica>)> {
        let models = self.models.read();
        let names = self.names.read();
        names
            .iter()
            .filter_map(|n| models.get(n))
            .map(|e| {
                let e = e.lock();
                (e.deployment.clone(), e.replicas.clone())
            })
            .collect()
    }

    /// The registered replicas of one version.
    pub fn replicas_of(&self, model: &str, version: &str) -> Vec<Replica> {
        let models = self.models.read();
        let Some(entry) = models.get(model) else {
            return Vec::new();
        };
        let entry = entry.lock();
        entry
            .replicas
            .iter()
            .filter(|r| r.version == version)
            .cloned()
            .collect()
    }

    /// A model's active version is ready with a ready replica.
    pub fn model_ready(&self, model: &str) -> bool {
        let models = self.models.read();
        let Some(entry) = models.get(model) else {
            return false;
        };
        let entry = entry.lock();
        let d = &entry.deployment;
        d.is_ready()
            && entry
                .replicas
                .iter()
                .any(|r| Some(r.version.as_str()) == d.active() && r.gauge.is_ready())
    }

    /// Every model with a designated active version has it ready (a model
    /// being added at run time, not active yet, does not count).
    pub fn all_ready(&self) -> bool {
        let names = self.models();
        names.iter().all(|n| {
            let designated = self
                .update(n, |d| d.active().is_some() && !d.is_removing())
                .unwrap_or(false);
            !designated || self.model_ready(n)
        })
    }

    /// Unregisters a drained version's replicas (state `Unloaded`) if it is
    /// still draining and nothing is on its way to them; `None` otherwise
    /// (revived, or a request still in flight to a batcher).
    pub fn finish_unload(&self, model: &str, version: &str) -> Option<Vec<Replica>> {
        let models = self.models.read();
        let mut entry = models.get(model)?.lock();
        let mine = |r: &Replica| r.version == version;
        if entry
            .replicas
            .iter()
            .any(|r| mine(r) && r.gauge.pending() > 0)
        {
            return None;
        }
        if !entry.deployment.finish_unload(version) {
            return None;
        }
        let (gone, keep) = std::mem::take(&mut entry.replicas)
            .into_iter()
            .partition(|r| mine(r));
        entry.replicas = keep;
        Some(gone)
    }

    /// Unregisters replicas (a failed load) without touching the deployment.
    pub fn unregister(&self, model: &str, ids: &[ReplicaId]) {
        if let Some(entry) = self.models.read().get(model) {
            entry.lock().replicas.retain(|r| !ids.contains(&r.id));
        }
    }

    /// Forgets a model whose versions are all unloaded.
    pub fn forget_model(&self, model: &str) {
        self.models.write().remove(model);
        self.names.write().retain(|n| n != model);
    }
}

/// Refuses what no replica could ever complete. Sampling parameters are
/// re-checked against this model's vocabulary (cheap, and the edge may not
/// know it).
fn validate(req: &GenerateRequest, info: &ReplicaInfo) -> Result<(), SubmitError> {
    let prompt = req.prompt.len();
    if prompt == 0 {
        return Err(SubmitError::Invalid {
            field: "prompt",
            message: "the prompt is empty".into(),
        });
    }
    if req.max_tokens == 0 {
        return Err(SubmitError::Invalid {
            field: "max_tokens",
            message: "must be at least 1".into(),
        });
    }
    // The last sampled token is never fed, so the pool must hold
    // prompt + max_tokens - 1 positions.
    let pool = info.num_blocks * info.block_size + 1;
    let limit = info.max_context.min(pool);
    if prompt + req.max_tokens > limit {
        let field = if prompt >= limit {
            "prompt"
        } else {
            "max_tokens"
        };
        let message = format!(
            "the prompt has {prompt} tokens and max_tokens is {}; together they exceed the model's \
             context of {limit} tokens",
            req.max_tokens
        );
        return Err(SubmitError::Invalid { field, message });
    }
    req.sampling
        .validate(info.vocab_size)
        .map_err(|e| SubmitError::Invalid {
            field: e.field,
            message: e.to_string(),
        })
}

/// Forwards `from` to a new stream, recording it; a stream that ends in
/// `Done` is stored under `key`. A client that goes away closes `from` too,
/// so the batcher aborts the request as it would without the cache.
fn record_into(
    cache: Arc<Mutex<ResponseCache>>,
    key: CacheKey,
    mut from: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> tokio::sync::mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let ev = tokio::select! {
                ev = from.recv() => ev,
                _ = tx.closed() => return,
            };
            let Some(ev) = ev else { return };
            let last = matches!(ev, Event::Done { .. } | Event::Error { .. });
            seen.push(ev.clone());
            if tx.send(ev).is_err() {
                return;
            }
            if last {
                cache.lock().insert(key, seen);
                return;
            }
        }
    });
    rx
}

fn check_queue(
    req: &GenerateRequest,
    limits: QueueLimits,
    ready: &[&Replica],
) -> Result<(), SubmitError> {
    let (reqs, toks) = ready
        .iter()
        .map(|r| r.gauge.waiting())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    let overloaded = |reason: String| SubmitError::Overloaded {
        model: req.model.clone(),
        reason,
        retry_after_secs: OVERLOAD_RETRY_AFTER_SECS,
    };
    if reqs + 1 > limits.max_queue_requests {
        return Err(overloaded(format!(
            "{reqs} requests queued, limit {}",
            limits.max_queue_requests
        )));
    }
    // A prompt larger than the whole token bound still gets in when nothing
    // is queued, or it could never be served.
    if toks > 0 && toks + req.prompt.len() > limits.max_queue_tokens {
        return Err(overloaded(format!(
            "{toks} prompt tokens queued, limit {}",
            limits.max_queue_tokens
        )));
    }
    Ok(())
}

/// Hash of the prompt's first full block(s); `None` for shorter prompts.
fn affinity_key(prompt: &[u32], block_size: usize) -> Option<u64> {
    let n = (prompt.len() / block_size.max(1)).min(AFFINITY_PREFIX_BLOCKS) * block_size;
    (n > 0).then(|| chain_hash(None, &prompt[..n]).0)
}

/// A replica's ranking inputs: id, requests (queued + running), KV usage.
type Candidate = (ReplicaId, usize, f64);

/// Least loaded (requests, then KV usage; ties to the first), unless the
/// affinity replica is within `AFFINITY_SLACK` requests of it.
fn pick(cands: &[Candidate], preferred: Option<ReplicaId>) -> Option<ReplicaId> {
    let best = cands.iter().copied().reduce(|best, c| {
        if (c.1, c.2).partial_cmp(&(best.1, best.2)) == Some(std::cmp::Ordering::Less) {
            c
        } else {
            best
        }
    })?;
    let aff = preferred.and_then(|p| cands.iter().find(|c| c.0 == p));
    Some(match aff {
        Some(a) if a.1 <= best.1 + AFFINITY_SLACK => a.0,
        _ => best.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_least_loaded_then_lowest_kv_usage() {
        let c = [
            (ReplicaId(1), 3, 0.1),
            (ReplicaId(2), 1, 0.9),
            (ReplicaId(3), 1, 0.2),
        ];
        assert_eq!(pick(&c, None), Some(ReplicaId(3)));
        assert_eq!(pick(&[], None), None);
    }

    #[test]
    fn affinity_wins_within_the_slack_only() {
        let near = [(ReplicaId(1), AFFINITY_SLACK, 0.5), (ReplicaId(2), 0, 0.0)];
        assert_eq!(pick(&near, Some(ReplicaId(1))), Some(ReplicaId(1)));
        let far = [
            (ReplicaId(1), AFFINITY_SLACK + 1, 0.5),
            (ReplicaId(2), 0, 0.0),
        ];
        assert_eq!(pick(&far, Some(ReplicaId(1))), Some(ReplicaId(2)));
        assert_eq!(
            pick(&near, Some(ReplicaId(9))),
            Some(ReplicaId(2)),
            "unknown replica ignored"
        );
    }

    #[test]
    fn affinity_key_needs_a_full_block_and_ignores_the_tail() {
        assert_eq!(affinity_key(&[1, 2, 3], 4), None);
        let a = affinity_key(&[1, 2, 3, 4, 5], 4);
        assert!(a.is_some());
        assert_eq!(a, affinity_key(&[1, 2, 3, 4, 9, 9, 9], 4));
        assert_ne!(a, affinity_key(&[1, 2, 3, 5, 5], 4));
    }

    #[test]
    fn affinity_map_is_bounded() {
        let mut m = Affinity::default();
        for k in 0..(AFFINITY_CAPACITY as u64 + 10) {
            m.put(k, ReplicaId(k));
        }
        assert_eq!(m.map.len(), AFFINITY_CAPACITY);
        assert_eq!(m.get(0), None, "oldest forgotten");
        assert_eq!(
            m.get(AFFINITY_CAPACITY as u64 + 9),
            Some(ReplicaId(AFFINITY_CAPACITY as u64 + 9))
        );
    }
}
