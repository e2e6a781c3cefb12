//! The supervisor: starts one worker per configured device, loads every
//! model deployment onto its devices (one replica each, `ReplicaId`s unique
//! in the process), builds a batcher per replica and registers it with the
//! router; it owns readiness and the load errors. When a batcher reports a
//! fatal worker failure it restarts that device's worker (the factory runs
//! again on the new thread), reloads the device's replicas under the same
//! ids and hands the new worker to their batchers. Reports from an older
//! incarnation of a worker (several batchers sharing the dead device) are
//! recognised by the generation number and ignored.
//!
//! Model management: `LoadVersion` loads one more version on its devices
//! (all or nothing) and `UnloadVersion` stops a drained version's batchers
//! and releases its replicas; the version states themselves live in the
//! router's deployments (see `manage`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::Mutex;

use crate::batcher::{Batcher, BatcherSetup, SetWorker, Shutdown, WorkerLink, WorkerLost};
use crate::deployment::VersionState;
use crate::engine::{EngineConfig, ModelDeployment};
use crate::executor::{ExecError, Executor, ReplicaId, ReplicaInfo};
use crate::router::{Replica, ReplicaLoad, Router};
use crate::worker::{ExecutorFactory, Load, Unload, Worker};

/// Readiness, load errors and restarts, read by the `Engine` handle.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    load_errors: Mutex<Vec<String>>,
    restarts: AtomicU64,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn load_errors(&self) -> Vec<String> {
        self.load_errors.lock().clone()
    }

    pub fn worker_restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    pub(crate) fn error(&self, message: String) {
        self.load_errors.lock().push(message);
    }
}

/// From a batcher: a step failed fatally on `device`'s worker `generation`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerFailed {
    pub device: String,
    pub generation: u64,
}

struct Device<E: Executor> {
    worker: Addr<Worker<E>>,
    generation: u64,
}

/// One (model version, device) replica.
struct Slot {
    dep: Arc<ModelDeployment>,
    device: String,
    /// Set once loaded: the info its batcher was sized from, and the batcher.
    loaded: Option<(ReplicaInfo, Addr<Batcher>)>,
}

/// A configured version's start-up loads.
#[derive(Default)]
struct StartupLoad {
    left: usize,
    error: Option<String>,
}

/// From the engine: load one more version on its devices, build and
/// register its batchers. Replies with the replica ids, or why it failed
/// (then nothing of it stays loaded or registered).
#[derive(Debug)]
pub struct LoadVersion {
    pub dep: ModelDeployment,
}

impl Message for LoadVersion {
    type Result = Result<Vec<ReplicaId>, String>;
}

/// From the engine: a drained (already unregistered) version's batchers
/// stop and its replicas are unloaded from their workers; replies once the
/// workers have released the memory.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnloadVersion {
    pub model: String,
    pub version: String,
}

pub struct Supervisor<E: Executor> {
    config: EngineConfig,
    factory: ExecutorFactory<E>,
    router: Arc<Router>,
    health: Arc<Health>,
    devices: HashMap<String, Device<E>>,
    /// Ordered, so a restart reloads in load order.
    slots: BTreeMap<ReplicaId, Slot>,
    /// The last `ReplicaId` handed out (ids are never reused).
    last_id: u64,
    /// Initial loads not yet answered.
    loads_left: usize,
    /// Per configured (model, version).
    startup: HashMap<(String, String), StartupLoad>,
}

impl<E: Executor> Supervisor<E> {
    pub fn new(
        config: EngineConfig,
        factory: ExecutorFactory<E>,
        router: Arc<Router>,
        health: Arc<Health>,
    ) -> Self {
        Supervisor {
            config,
            factory,
            router,
            health,
            devices: HashMap::new(),
            slots: BTreeMap::new(),
            last_id: 0,
            loads_left: 0,
            startup: HashMap::new(),
        }
    }

    fn link(&self, device: &str) -> Option<WorkerLink> {
        let d = self.devices.get(device)?;
        Some(WorkerLink {
            step: d.worker.clone().recipient(),
            generation: d.generation,
        })
    }

    fn new_slot(&mut self, dep: Arc<ModelDeployment>, device: &str) -> ReplicaId {
        self.last_id += 1;
        let id = ReplicaId(self.last_id);
        let device = device.to_string();
        self.slots.insert(
            id,
            Slot {
                dep,
                device,
                loaded: None,
            },
        );
        id
    }

    /// Sends `Load` for replica `id` to its device's current worker.
    fn load(&self, id: ReplicaId) -> Option<Request<Worker<E>, Load>> {
        let slot = self.slots.get(&id)?;
        let device = self.devices.get(&slot.device)?;
        Some(device.worker.send(Load {
            replica: id,
            spec: slot.dep.spec.clone(),
        }))
    }

    /// Start-up or restart load of replica `id`, answered to `on_loaded` /
    /// `on_reloaded`.
    fn spawn_load(&mut self, id: ReplicaId, ctx: &mut Context<Self>, restart: bool) {
        let Some(fut) = self.load(id) else {
            return;
        };
        let fut = fut.into_actor(self).map(move |res, act, ctx| {
            let res = flatten(res);
            if restart {
                act.on_reloaded(id, res);
            } else {
                act.on_loaded(id, res, ctx);
            }
        });
        ctx.spawn(fut);
    }

    fn name(&self, id: ReplicaId) -> String {
        match self.slots.get(&id) {
            Some(s) => format!(
                "model `{}` {} on {}",
                s.dep.spec.name, s.dep.spec.version, s.device
            ),
            None => format!("replica {}", id.0),
        }
    }

    /// Builds the batcher of a loaded replica and registers it.
    fn start_replica(
        &mut self,
        id: ReplicaId,
        info: ReplicaInfo,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        let name = self.name(id);
        let Some(slot) = self.slots.get(&id) else {
            return Err(format!("{name}: unloaded while loading"));
        };
        let (dep, device) = (slot.dep.clone(), slot.device.clone());
        let Some(worker) = self.link(&device) else {
            return Err(format!("{name}: device gone"));
        };
        let gauge = Arc::new(ReplicaLoad::default());
        let setup = BatcherSetup {
            replica: id,
            model: dep.spec.name.clone(),
            version: dep.spec.version.clone(),
            device: device.clone(),
            info: info.clone(),
            max_num_seqs: dep.max_num_seqs,
            max_batched_tokens: dep.max_batched_tokens,
            enable_prefix_caching: dep.enable_prefix_caching,
            worker,
            supervisor: ctx.address().recipient(),
            gauge: gauge.clone(),
            index: self.router.index(),
        };
        let batcher = Batcher::new(setup)
            .map_err(|e| format!("{name}: {e}"))?
            .start();
        let replica = Replica {
            id,
            device,
            version: dep.spec.version.clone(),
            info: info.clone(),
            gauge,
            batcher: batcher.clone(),
        };
        self.router.register(&dep.spec.name, replica);
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.loaded = Some((info, batcher));
        }
        Ok(())
    }

    fn on_loaded(
        &mut self,
        id: ReplicaId,
        res: Result<ReplicaInfo, ExecError>,
        ctx: &mut Context<Self>,
    ) {
        self.loads_left -= 1;
        let name = self.name(id);
        let result = match res {
            Ok(info) => self.start_replica(id, info, ctx),
            Err(e) => Err(format!("{name}: load failed: {}", e.message)),
        };
        if let Err(message) = &result {
            self.health.error(message.clone());
        }
        if let Some(slot) = self.slots.get(&id) {
            let (model, version) = (slot.dep.spec.name.clone(), slot.dep.spec.version.clone());
            self.startup_answered(model, version, result.err());
        }
        if self.loads_left == 0 && self.health.load_errors.lock().is_empty() {
            self.health.ready.store(true, Ordering::SeqCst);
        }
    }

    /// Once all of a configured version's replicas answered, it is ready
    /// (or failed with the first error).
    fn startup_answered(&mut self, model: String, version: String, error: Option<String>) {
        let key = (model, version);
        let Some(st) = self.startup.get_mut(&key) else {
            return;
        };
        st.left = st.left.saturating_sub(1);
        if st.error.is_none() {
            st.error = error;
        }
        if st.left > 0 {
            return;
        }
        let error = st.error.take();
        let (model, version) = key;
        // The router knows every configured version (Engine::start).
        let _ = self.router.update(&model, |d| match error {
            None => d.finish_load(&version).map(|_| ()),
            Some(e) => d.set_state(&version, VersionState::Failed(e)),
        });
    }

    fn on_reloaded(&mut self, id: ReplicaId, res: Result<ReplicaInfo, ExecError>) {
        let Some(slot) = self.slots.get(&id) else {
            return;
        };
        let Some((old, batcher)) = &slot.loaded else {
            return;
        };
        let err = match res {
            // The batcher's scheduler is sized from the first load.
            Ok(info) if info.num_blocks < old.num_blocks || info.block_size != old.block_size => {
                Some(format!(
                    "reload on {} changed the KV pool shape",
                    slot.device
                ))
            }
            Ok(_) => None,
            Err(e) => Some(format!("reload on {} failed: {}", slot.device, e.message)),
        };
        match (err, self.link(&slot.device)) {
            (None, Some(link)) => batcher.do_send(SetWorker(link)),
            (err, _) => {
                let message = err.unwrap_or_else(|| "device gone".into());
                self.health.error(message.clone());
                batcher.do_send(WorkerLost { message });
            }
        }
    }

    /// Removes the slots, stops their batchers and unloads them from their
    /// workers; the returned requests answer once the memory is released.
    fn drop_slots(&mut self, ids: &[ReplicaId]) -> Vec<Request<Worker<E>, Unload>> {
        let mut waits = Vec::new();
        for id in ids {
            let Some(slot) = self.slots.remove(id) else {
                continue;
            };
            if let Some((_, batcher)) = slot.loaded {
                batcher.do_send(Shutdown);
            }
            if let Some(d) = self.devices.get(&slot.device) {
                waits.push(d.worker.send(Unload { replica: *id }));
            }
        }
        waits
    }

    /// A managed load answered on every device: all replicas started, or
    /// none kept.
    fn on_version_loaded(
        &mut self,
        model: &str,
        results: Vec<(ReplicaId, Result<ReplicaInfo, ExecError>)>,
        ctx: &mut Context<Self>,
    ) -> Result<Vec<ReplicaId>, String> {
        let ids: Vec<ReplicaId> = results.iter().map(|r| r.0).collect();
        let mut errors = Vec::new();
        for (id, res) in results {
            let device = self
                .slots
                .get(&id)
                .map(|s| s.device.clone())
                .unwrap_or_default();
            let res = match res {
                Ok(info) => self.start_replica(id, info, ctx),
                Err(e) => Err(format!("on {device}: {}", e.message)),
            };
            if let Err(e) = res {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            return Ok(ids);
        }
        self.router.unregister(model, &ids);
        for w in self.drop_slots(&ids) {
            // Fire and forget: the load already failed.
            drop(w);
        }
        Err(errors.join("; "))
    }
}

/// A worker that is gone is a fatal load error.
fn flatten(
    res: Result<Result<ReplicaInfo, ExecError>, MailboxError>,
) -> Result<ReplicaInfo, ExecError> {
    res.unwrap_or_else(|e| Err(ExecError::fatal(format!("worker unreachable: {e}"))))
}

impl<E: Executor> Actor for Supervisor<E> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for device in self.config.devices.clone() {
            if !self.devices.contains_key(&device) {
                let worker = Worker::start(&device, self.factory.clone());
                self.devices.insert(
                    device,
                    Device {
                        worker,
                        generation: 0,
                    },
                );
            }
        }
        let mut ids = Vec::new();
        for model in self.config.models.clone() {
            let key = (model.spec.name.clone(), model.spec.version.clone());
            let dep = Arc::new(model);
            self.startup.entry(key.clone()).or_default();
            for device in &dep.devices {
                if !self.devices.contains_key(device) {
                    let msg = format!(
                        "model `{}`: device {device} is not configured",
                        dep.spec.name
                    );
                    self.health.error(msg.clone());
                    self.startup.entry(key.clone()).or_default().error = Some(msg);
                    continue;
                }
                ids.push(self.new_slot(dep.clone(), device));
                self.startup.entry(key.clone()).or_default().left += 1;
            }
        }
        // A version none of whose devices exists has no load to wait for.
        let done: Vec<(String, String)> = self
            .startup
            .iter()
            .filter(|(_, st)| st.left == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for (model, version) in done {
            if let Some(st) = self.startup.get_mut(&(model.clone(), version.clone())) {
                st.left = 1;
            }
            self.startup_answered(model, version, None);
        }
        self.loads_left = ids.len();
        if self.loads_left == 0 && self.health.load_errors.lock().is_empty() {
            self.health.ready.store(true, Ordering::SeqCst);
        }
        for id in ids {
            self.spawn_load(id, ctx, false);
        }
    }
}

impl<E: Executor> Handler<WorkerFailed> for Supervisor<E> {
    type Result = ();

    fn handle(&mut self, msg: WorkerFailed, ctx: &mut Self::Context) {
        let Some(device) = self.devices.get_mut(&msg.device) else {
            return;
        };
        if device.generation != msg.generation {
            return; // already restarted since that step was sent
        }
        self.health.restarts.fetch_add(1, Ordering::SeqCst);
        // The old worker's thread ends once its last address is dropped
        // (the batchers drop theirs on SetWorker).
        device.worker = Worker::start(&msg.device, self.factory.clone());
        device.generation += 1;
        let affected: Vec<ReplicaId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.device == msg.device && s.loaded.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in affected {
            self.spawn_load(id, ctx, true);
        }
    }
}

impl<E: Executor> Handler<LoadVersion> for Supervisor<E> {
    type Result = ResponseActFuture<Self, Result<Vec<ReplicaId>, String>>;

    fn handle(&mut self, msg: LoadVersion, _: &mut Self::Context) -> Self::Result {
        let dep = Arc::new(msg.dep);
        let missing: Vec<&String> = dep
            .devices
            .iter()
            .filter(|d| !self.devices.contains_key(*d))
            .collect();
        if dep.devices.is_empty() || !missing.is_empty() {
            let why = if dep.devices.is_empty() {
                "no devices given".to_string()
            } else {
                format!("devices not configured: {missing:?}")
            };
            return Box::pin(fut::ready(Err(why)));
        }
        let mut pending = Vec::new();
        for device in &dep.devices {
            let id = self.new_slot(dep.clone(), device);
            // The slot and its device were just checked.
            if let Some(req) = self.load(id) {
                pending.push((id, req));
            }
        }
        let model = dep.spec.name.clone();
        // The loads are already queued on their workers: they run in
        // parallel across devices while this waits for each in turn.
        let wait = async move {
            let mut out = Vec::new();
            for (id, req) in pending {
                out.push((id, flatten(req.await)));
            }
            out
        };
        Box::pin(
            wait.into_actor(self)
                .map(move |results, act, ctx| act.on_version_loaded(&model, results, ctx)),
        )
    }
}

impl<E: Executor> Handler<UnloadVersion> for Supervisor<E> {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: UnloadVersion, _: &mut Self::Context) -> Self::Result {
        let ids: Vec<ReplicaId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dep.spec.name == msg.model && s.dep.spec.version == msg.version)
            .map(|(&id, _)| id)
            .collect();
        let waits = self.drop_slots(&ids);
        Box::pin(
            async move {
                for w in waits {
                    // A worker gone has released everything anyway.
                    let _ = w.await;
                }
            }
            .into_actor(self),
        )
    }
}
