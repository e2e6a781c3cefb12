//! The jobs this process is running, each with its cancel signal. A job
//! takes a [`JobSlot`] (RAII) before it starts and gives it back when its
//! driver ends, so "too many active jobs" is one locked check at submission.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::error::BatchError;

type Signals = HashMap<String, watch::Sender<bool>>;

pub struct ActiveJobs {
    /// job id -> sender of its cancel flag (true = stop scheduling lines).
    jobs: Mutex<Signals>,
    limit: usize,
}

/// A running job's place in [`ActiveJobs`]; dropping it frees the place.
pub struct JobSlot {
    registry: Arc<ActiveJobs>,
    id: String,
    /// Becomes true when the job is cancelled.
    pub cancel: watch::Receiver<bool>,
}

impl ActiveJobs {
    pub fn new(limit: usize) -> Arc<ActiveJobs> {
        Arc::new(ActiveJobs {
            jobs: Mutex::new(HashMap::new()),
            limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Signals> {
        // A panic while holding this lock leaves the map consistent.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a new job, or 429 when `limit` jobs are running.
    pub fn reserve(self: &Arc<Self>, id: &str) -> Result<JobSlot, BatchError> {
        let mut jobs = self.lock();
        if jobs.len() >= self.limit {
            return Err(BatchError::TooManyJobs { limit: self.limit });
        }
        Ok(self.insert(&mut jobs, id))
    }

    /// A slot for a job admitted before a restart: resumed whatever the limit.
    pub fn reserve_resumed(self: &Arc<Self>, id: &str) -> JobSlot {
        let mut jobs = self.lock();
        self.insert(&mut jobs, id)
    }

    fn insert(self: &Arc<Self>, jobs: &mut Signals, id: &str) -> JobSlot {
        let (tx, rx) = watch::channel(false);
        jobs.insert(id.to_owned(), tx);
        JobSlot {
            registry: self.clone(),
            id: id.to_owned(),
            cancel: rx,
        }
    }

    /// Signals the job to stop scheduling; false if it is not running here.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(tx) => {
                tx.send_replace(true);
                true
            }
            None => false,
        }
    }
}

impl JobSlot {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}
