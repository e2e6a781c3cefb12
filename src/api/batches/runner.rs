//! Running a job's lines: one driver task per job walks the lines without a
//! result, in input order, and starts each when a permit of the process-wide
//! semaphore (`concurrency` permits) is free, so at most `concurrency` lines
//! run at once over all jobs and nothing queues beyond one waiter per job.
//! Each line's result is recorded by the store exactly once.
//!
//! Delivery: a recorded line is never run again, also after a restart. A
//! line that was executing when the process died has no result and is run
//! again when the job resumes (at-least-once execution for unfinished lines,
//! exactly-once recorded results).
//!
//! Cancel stops scheduling new lines; the lines already running finish and
//! are recorded, then the job settles as `cancelled`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::options::RetryPolicy;
use super::output::result_line;
use super::registry::JobSlot;
use super::store::{blocking, Store};
use super::types::{unix_now, BatchLine, LineExecutor, LineOutcome};

pub struct Runner {
    pub store: Arc<Store>,
    executor: LineExecutor,
    /// Bounds the lines in flight in this process.
    permits: Arc<Semaphore>,
    retry: RetryPolicy,
}

impl Runner {
    pub fn new(
        store: Arc<Store>,
        executor: LineExecutor,
        concurrency: usize,
        retry: RetryPolicy,
    ) -> Arc<Runner> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        Arc::new(Runner {
            store,
            executor,
            permits,
            retry,
        })
    }

    /// Runs the job's remaining lines, then settles its status. Holds the
    /// slot until the end so the job counts as active while it runs.
    pub async fn drive(self: Arc<Self>, mut slot: JobSlot) {
        let id = slot.id().to_owned();
        let pending = {
            let id = id.clone();
            blocking(&self.store, move |s| s.pending_lines(&id)).await
        };
        let mut in_flight = JoinSet::new();
        for index in pending.unwrap_or_default() {
            let permit = tokio::select! {
                biased;
                _ = slot.cancel.wait_for(|cancelled| *cancelled) => break,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // closed: never happens, the semaphore lives in self
                },
            };
            in_flight.spawn(self.clone().run_line(id.clone(), index, permit));
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
        // A failure here leaves the job unsettled; it is settled on the next start.
        let _ = blocking(&self.store, move |s| s.settle(&id, unix_now())).await;
        drop(slot);
    }

    /// Executes one line and records its result; the permit is held throughout.
    async fn run_line(self: Arc<Self>, id: String, index: u32, _permit: OwnedSemaphorePermit) {
        let line = {
            let id = id.clone();
            blocking(&self.store, move |s| s.line(&id, index)).await
        };
        // Unreadable input: the line stays without a result and the job settles as failed.
        let Ok(Some(line)) = line else { return };
        let custom_id = line.custom_id.clone();
        let outcome = self.execute(line).await;
        let result = result_line(&id, index, &custom_id, outcome.as_ref());
        // A store failure leaves the line pending (it is not counted).
        let _ = blocking(&self.store, move |s| {
            s.record_result(&id, index, &result, unix_now())
        })
        .await;
    }

    /// Runs the executor, retrying 429/503 with backoff; `None` if it panicked.
    async fn execute(&self, line: BatchLine) -> Option<LineOutcome> {
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let call = AssertUnwindSafe(|| (self.executor)(line.clone()));
            let future = std::panic::catch_unwind(call).ok()?;
            let outcome = AssertUnwindSafe(future).catch_unwind().await.ok()?;
            if !matches!(outcome.status_code, 429 | 503) || attempt >= self.retry.max_attempts {
                return Some(outcome);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }
}
