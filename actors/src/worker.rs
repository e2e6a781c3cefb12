//! The worker: one per device, on its own OS thread (an actix `SyncArbiter`
//! of one thread), owning that device's [`Executor`]. Executor calls block
//! (libtorch), so they must never run on the async arbiter. The mailbox is
//! FIFO, so steps from the several batchers sharing a device run in arrival
//! order. A panic inside the executor is caught and turned into a fatal
//! [`ExecError`] (actix does not catch panics), after which the executor is
//! dropped and every later call fails fatally until the supervisor replaces
//! the worker.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};

use crate::executor::{
    ExecError, Executor, ModelSpec, ReplicaId, ReplicaInfo, StepRequest, StepResult,
};

/// Builds the executor of one device, on that device's worker thread (called
/// again on restart). Re-exported by `engine` as part of the engine API.
pub type ExecutorFactory<E> = Arc<dyn Fn(&str) -> Result<E, ExecError> + Send + Sync>;

/// Load a model replica onto the device.
#[derive(Debug)]
pub struct Load {
    pub replica: ReplicaId,
    pub spec: ModelSpec,
}

impl Message for Load {
    type Result = Result<ReplicaInfo, ExecError>;
}

/// Drop a replica's weights, KV pool and samplers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unload {
    pub replica: ReplicaId,
}

/// Run one step of one replica.
#[derive(Debug)]
pub struct Step {
    pub replica: ReplicaId,
    pub req: StepRequest,
}

impl Message for Step {
    type Result = Result<StepResult, StepError>;
}

/// Why a step has no result.
#[derive(Debug, Clone)]
pub enum StepError {
    /// The executor ran the step and failed (fatal or not).
    Failed(ExecError),
    /// The worker was already down (earlier panic or fatal factory error):
    /// the step never ran, so its requests can simply recompute elsewhere.
    Down(ExecError),
}

/// The actor owning one device's executor.
pub struct Worker<E: Executor> {
    device: String,
    /// `Err` when the factory failed or the executor panicked: the device
    /// state is unknown, so every call fails fatally with this error. Boxed
    /// so the actor is `Unpin` (actix needs it) whatever `E` is.
    exec: Result<Box<E>, ExecError>,
}

impl<E: Executor> Worker<E> {
    /// Starts the worker thread of `device`; the executor is built there.
    pub fn start(device: &str, factory: ExecutorFactory<E>) -> Addr<Worker<E>> {
        let device = device.to_string();
        SyncArbiter::start(1, move || {
            let exec = guarded(|| factory(&device)).and_then(|r| r.map(Box::new).map_err(as_fatal));
            Worker {
                device: device.clone(),
                exec,
            }
        })
    }

    /// Runs `f` on the executor; a panic poisons the worker.
    fn call<T>(&mut self, f: impl FnOnce(&mut E) -> Result<T, ExecError>) -> Result<T, StepError> {
        let exec = match &mut self.exec {
            Ok(exec) => exec,
            Err(e) => return Err(StepError::Down(e.clone())),
        };
        match guarded(|| f(&mut **exec)) {
            Ok(result) => result.map_err(StepError::Failed),
            Err(poison) => {
                self.exec = Err(ExecError::fatal(format!(
                    "worker {} is down: {}",
                    self.device, poison.message
                )));
                Err(StepError::Failed(poison))
            }
        }
    }
}

/// A factory error makes the device unusable: restarting is the only way out.
fn as_fatal(e: ExecError) -> ExecError {
    ExecError::fatal(e.message)
}

/// Runs `f`, turning a panic into a fatal error.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, ExecError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        ExecError::fatal(format!("executor panicked: {what}"))
    })
}

impl<E: Executor> Actor for Worker<E> {
    type Context = SyncContext<Self>;
}

impl<E: Executor> Handler<Load> for Worker<E> {
    type Result = Result<ReplicaInfo, ExecError>;

    fn handle(&mut self, msg: Load, _: &mut Self::Context) -> Self::Result {
        self.call(|exec| exec.load(msg.replica, &msg.spec))
            .map_err(|e| match e {
                StepError::Failed(e) | StepError::Down(e) => e,
            })
    }
}

impl<E: Executor> Handler<Unload> for Worker<E> {
    type Result = ();

    fn handle(&mut self, msg: Unload, _: &mut Self::Context) {
        // Nothing to report: a failure here already poisoned the worker.
        let _ = self.call(|exec| {
            exec.unload(msg.replica);
            Ok(())
        });
    }
}

impl<E: Executor> Handler<Step> for Worker<E> {
    type Result = Result<StepResult, StepError>;

    fn handle(&mut self, msg: Step, _: &mut Self::Context) -> Self::Result {
        self.call(|exec| exec.step(msg.replica, &msg.req))
    }
}
