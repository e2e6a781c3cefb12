//! The supervisor: starts one worker per configured device, loads every
//! model deployment onto its devices (one replica each, `ReplicaId`s unique
//! in the process), builds a batcher per replica and registers it with the
//! router; it owns readiness and the load errors. When a batcher reports a
//! fatal worker failure it restarts that device's worker (the factory runs
//! again on the new thread), reloads the device's replicas under the same
//! ids and hands the new worker to their batchers. Reports from an older
//! incarnation of a worker (several batchers sharing the dead device) are
//! recognised by the generation number and ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::Mutex;

use crate::batcher::{Batcher, BatcherSetup, SetWorker, WorkerLink, WorkerLost};
use crate::engine::EngineConfig;
use crate::executor::{ExecError, Executor, ReplicaId, ReplicaInfo};
use crate::router::{Replica, ReplicaLoad, Router};
use crate::worker::{ExecutorFactory, Load, Worker};

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

    fn error(&self, message: String) {
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

/// One (model, device) replica.
struct Slot {
    id: ReplicaId,
    /// Index into `EngineConfig::models`.
    model: usize,
    device: String,
    /// Set once loaded: the info its batcher was sized from, and the batcher.
    loaded: Option<(ReplicaInfo, Addr<Batcher>)>,
}

pub struct Supervisor<E: Executor> {
    config: EngineConfig,
    factory: ExecutorFactory<E>,
    router: Arc<Router>,
    health: Arc<Health>,
    devices: HashMap<String, Device<E>>,
    slots: Vec<Slot>,
    /// Initial loads not yet answered.
    loads_left: usize,
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
            slots: Vec::new(),
            loads_left: 0,
        }
    }

    fn link(&self, device: &str) -> Option<WorkerLink> {
        let d = self.devices.get(device)?;
        Some(WorkerLink {
            step: d.worker.clone().recipient(),
            generation: d.generation,
        })
    }

    /// Sends `Load` for slot `idx` to its device's current worker.
    fn load(&mut self, idx: usize, ctx: &mut Context<Self>, restart: bool) {
        let slot = &self.slots[idx];
        let Some(device) = self.devices.get(&slot.device) else {
            return;
        };
        let spec = self.config.models[slot.model].spec.clone();
        let fut = device.worker.send(Load {
            replica: slot.id,
            spec,
        });
        let fut = fut.into_actor(self).map(move |res, act, ctx| {
            let res =
                res.unwrap_or_else(|e| Err(ExecError::fatal(format!("worker unreachable: {e}"))));
            if restart {
                act.on_reloaded(idx, res);
            } else {
                act.on_loaded(idx, res, ctx);
            }
        });
        ctx.spawn(fut);
    }

    fn on_loaded(
        &mut self,
        idx: usize,
        res: Result<ReplicaInfo, ExecError>,
        ctx: &mut Context<Self>,
    ) {
        self.loads_left -= 1;
        let (model, device, id) = {
            let s = &self.slots[idx];
            (&self.config.models[s.model], s.device.clone(), s.id)
        };
        let name = format!(
            "model `{}` {} on {device}",
            model.spec.name, model.spec.version
        );
        let info = match res {
            Ok(info) => info,
            Err(e) => {
                return self
                    .health
                    .error(format!("{name}: load failed: {}", e.message))
            }
        };
        let Some(worker) = self.link(&device) else {
            return;
        };
        let gauge = Arc::new(ReplicaLoad::default());
        let setup = BatcherSetup {
            replica: id,
            model: model.spec.name.clone(),
            version: model.spec.version.clone(),
            device: device.clone(),
            info: info.clone(),
            max_num_seqs: model.max_num_seqs,
            max_batched_tokens: model.max_batched_tokens,
            enable_prefix_caching: model.enable_prefix_caching,
            worker,
            supervisor: ctx.address().recipient(),
            gauge: gauge.clone(),
            index: self.router.index(),
        };
        let batcher = match Batcher::new(setup) {
            Ok(b) => b.start(),
            Err(e) => return self.health.error(format!("{name}: {e}")),
        };
        let replica = Replica {
            id,
            device,
            version: model.spec.version.clone(),
            info: info.clone(),
            gauge,
            batcher: batcher.clone(),
        };
        self.router.register(&model.spec.name, replica);
        self.slots[idx].loaded = Some((info, batcher));
        if self.loads_left == 0 && self.health.load_errors.lock().is_empty() {
            self.health.ready.store(true, Ordering::SeqCst);
        }
    }

    fn on_reloaded(&mut self, idx: usize, res: Result<ReplicaInfo, ExecError>) {
        let slot = &self.slots[idx];
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
        let mut next_id = 0;
        for (mi, model) in self.config.models.clone().iter().enumerate() {
            for device in &model.devices {
                if !self.devices.contains_key(device) {
                    let msg = format!(
                        "model `{}`: device {device} is not configured",
                        model.spec.name
                    );
                    self.health.error(msg);
                    continue;
                }
                next_id += 1;
                self.slots.push(Slot {
                    id: ReplicaId(next_id),
                    model: mi,
                    device: device.clone(),
                    loaded: None,
                });
            }
        }
        self.loads_left = self.slots.len();
        if self.loads_left == 0 && self.health.load_errors.lock().is_empty() {
            self.health.ready.store(true, Ordering::SeqCst);
        }
        for idx in 0..self.slots.len() {
            self.load(idx, ctx, false);
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
        let affected: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].device == msg.device && self.slots[i].loaded.is_some())
            .collect();
        for idx in affected {
            self.load(idx, ctx, true);
        }
    }
}
