//! [`BatchService`]: the handle the HTTP handlers share (via `web::Data`).
//! `open` opens the store, resumes every unfinished job, and spawns job
//! drivers on the tokio runtime it was called from (the server's main one),
//! whichever worker thread later submits a job.

use std::path::Path;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::error::BatchError;
use super::input::{parse_endpoint, parse_jsonl};
use super::options::BatchOptions;
use super::registry::ActiveJobs;
use super::runner::Runner;
use super::store::{blocking, Store};
use super::types::{
    unix_now, BatchObject, JobRecord, JobStatus, LineExecutor, RequestCounts, CHAT_COMPLETIONS,
};

/// Cheap to clone; all clones share one store, runner and job registry.
#[derive(Clone)]
pub struct BatchService {
    runner: Arc<Runner>,
    active: Arc<ActiveJobs>,
    /// Where job drivers run.
    runtime: Handle,
    max_lines: usize,
}

impl BatchService {
    /// Opens (or creates) the job database at `db_path`, resumes unfinished
    /// jobs, and runs at most `concurrency` lines at a time. Must be called
    /// inside a tokio runtime (e.g. in `#[actix_web::main]` before the server).
    pub fn open(
        db_path: impl AsRef<Path>,
        executor: LineExecutor,
        concurrency: usize,
    ) -> Result<BatchService, BatchError> {
        Self::open_with(
            db_path,
            executor,
            BatchOptions::with_concurrency(concurrency),
        )
    }

    /// [`BatchService::open`] with every tunable given.
    pub fn open_with(
        db_path: impl AsRef<Path>,
        executor: LineExecutor,
        options: BatchOptions,
    ) -> Result<BatchService, BatchError> {
        let runtime = Handle::try_current().map_err(|_| {
            BatchError::Runtime("BatchService::open must be called inside a tokio runtime".into())
        })?;
        let store = Arc::new(Store::open(db_path.as_ref()).map_err(BatchError::storage)?);
        let unfinished = store.unfinished_jobs().map_err(BatchError::storage)?;
        let runner = Runner::new(store, executor, options.concurrency, options.retry);
        let service = BatchService {
            runner,
            active: ActiveJobs::new(options.max_active_jobs.max(1)),
            runtime,
            max_lines: options.max_lines,
        };
        for job in unfinished {
            if job.status == JobStatus::Cancelling {
                // Nothing of it runs any more: it is cancelled.
                service
                    .runner
                    .store
                    .settle(&job.id, unix_now())
                    .map_err(BatchError::storage)?;
            } else {
                let slot = service.active.reserve_resumed(&job.id);
                service.runtime.spawn(service.runner.clone().drive(slot));
            }
        }
        Ok(service)
    }

    /// Validates a JSONL body and starts a job; `endpoint` is the url of
    /// lines that name none (default `/v1/chat/completions`).
    pub async fn submit(
        &self,
        body: impl AsRef<[u8]> + Send + 'static,
        endpoint: Option<&str>,
    ) -> Result<BatchObject, BatchError> {
        let endpoint = parse_endpoint(endpoint.unwrap_or(CHAT_COMPLETIONS)).map_err(|message| {
            BatchError::InvalidInput {
                line: None,
                message,
            }
        })?;
        let id = format!("batch_{:032x}", rand::random::<u128>());
        // Shed before parsing: a full server should answer 429 cheaply.
        let slot = self.active.reserve(&id)?;
        let max_lines = self.max_lines;
        let lines =
            tokio::task::spawn_blocking(move || parse_jsonl(body.as_ref(), endpoint, max_lines))
                .await
                .map_err(|e| BatchError::Runtime(e.to_string()))??;
        let now = unix_now();
        let job = JobRecord {
            id: id.clone(),
            endpoint: endpoint.to_owned(),
            status: JobStatus::InProgress,
            created_at: now,
            in_progress_at: Some(now),
            completed_at: None,
            cancelling_at: None,
            cancelled_at: None,
            failed_at: None,
            request_counts: RequestCounts {
                total: u32::try_from(lines.len()).unwrap_or(u32::MAX),
                completed: 0,
                failed: 0,
            },
        };
        let stored = job.clone();
        blocking(&self.runner.store, move |s| s.create_job(&stored, &lines)).await?;
        self.runtime.spawn(self.runner.clone().drive(slot));
        Ok(job.into())
    }

    /// The job's current state.
    pub async fn get(&self, id: &str) -> Result<BatchObject, BatchError> {
        let key = id.to_owned();
        match blocking(&self.runner.store, move |s| s.job(&key)).await? {
            Some(job) => Ok(job.into()),
            None => Err(BatchError::NotFound(id.to_owned())),
        }
    }

    /// The finished lines' results as JSONL, in input order.
    pub async fn results(&self, id: &str) -> Result<Vec<u8>, BatchError> {
        self.get(id).await?;
        let key = id.to_owned();
        blocking(&self.runner.store, move |s| s.results_jsonl(&key)).await
    }

    /// Stops scheduling the job's lines; it becomes `cancelling`, then
    /// `cancelled` once its running lines finish. Cancelling a cancelled or
    /// cancelling job is a no-op; a completed or failed one is a conflict.
    pub async fn cancel(&self, id: &str) -> Result<BatchObject, BatchError> {
        let key = id.to_owned();
        let job = blocking(&self.runner.store, move |s| {
            s.request_cancel(&key, unix_now())
        })
        .await?
        .ok_or_else(|| BatchError::NotFound(id.to_owned()))?;
        match job.status {
            JobStatus::Completed | JobStatus::Failed => Err(BatchError::Conflict {
                action: "cancel",
                status: job.status.as_str(),
            }),
            JobStatus::Cancelling if !self.active.cancel(id) => {
                // No driver runs it (it ended on a storage error): settle it now.
                let key = id.to_owned();
                let settled =
                    blocking(&self.runner.store, move |s| s.settle(&key, unix_now())).await?;
                Ok(settled.unwrap_or(job).into())
            }
            _ => Ok(job.into()),
        }
    }
}
