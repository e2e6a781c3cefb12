//! The on-disk state of batch jobs, in one redb file (ACID, crash-safe,
//! pure Rust). Three tables:
//! - `batch_jobs`:    job id -> [`JobRecord`] as JSON (status, timestamps, counts);
//! - `batch_inputs`:  (job id, line index) -> [`BatchLine`] as JSON, written once at submission;
//! - `batch_results`: (job id, line index) -> the OpenAI result line, written once per line.
//!
//! A result and the job's counts change in one write transaction, and a line
//! whose result key exists is never recorded again, so each line has exactly
//! one recorded result however often it was executed. All methods block
//! (redb commits fsync): call them from a blocking thread.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::output::ResultLine;
use super::types::{BatchLine, JobRecord, JobStatus};

const JOBS: TableDefinition<&str, &str> = TableDefinition::new("batch_jobs");
const INPUTS: TableDefinition<(&str, u32), &str> = TableDefinition::new("batch_inputs");
const RESULTS: TableDefinition<(&str, u32), &str> = TableDefinition::new("batch_results");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch database: {0}")]
    Db(#[from] redb::Error),
    #[error("batch database holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// redb has one error type per operation; all become [`StoreError::Db`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What [`Store::record_result`] did.
#[derive(Debug)]
pub enum Recorded {
    /// The result was stored and counted.
    New,
    /// The line already had a result; nothing changed.
    Duplicate,
    /// No such job (never happens unless the file was edited).
    UnknownJob,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (creating if needed) the database file and its tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(JOBS)?;
        txn.open_table(INPUTS)?;
        txn.open_table(RESULTS)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// Stores a new job and all its input lines in one transaction.
    pub fn create_job(&self, job: &JobRecord, lines: &[BatchLine]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut inputs = txn.open_table(INPUTS)?;
            for (index, line) in (0u32..).zip(lines) {
                inputs.insert(
                    (job.id.as_str(), index),
                    serde_json::to_string(line)?.as_str(),
                )?;
            }
            let mut jobs = txn.open_table(JOBS)?;
            jobs.insert(job.id.as_str(), serde_json::to_string(job)?.as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        let found = jobs.get(id)?;
        Ok(match found {
            Some(json) => Some(serde_json::from_str(json.value())?),
            None => None,
        })
    }

    /// Every job not in a terminal state (to resume after a restart).
    pub fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let jobs = txn.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in jobs.iter()? {
            let (_, json) = entry?;
            let job: JobRecord = serde_json::from_str(json.value())?;
            if !job.status.is_terminal() {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Indices of the job's lines that have no result yet, in input order.
    pub fn pending_lines(&self, id: &str) -> Result<Vec<u32>, StoreError> {
        let txn = self.db.begin_read()?;
        let inputs = txn.open_table(INPUTS)?;
        let results = txn.open_table(RESULTS)?;
        let mut pending = Vec::new();
        for entry in inputs.range((id, 0u32)..=(id, u32::MAX))? {
            let (key, _) = entry?;
            let index = key.value().1;
            if results.get((id, index))?.is_none() {
                pending.push(index);
            }
        }
        Ok(pending)
    }

    pub fn line(&self, id: &str, index: u32) -> Result<Option<BatchLine>, StoreError> {
        let txn = self.db.begin_read()?;
        let inputs = txn.open_table(INPUTS)?;
        let found = inputs.get((id, index))?;
        Ok(match found {
            Some(json) => Some(serde_json::from_str(json.value())?),
            None => None,
        })
    }

    /// Records line `index`'s result and updates the job's counts atomically;
    /// the job becomes `completed` when its last line is recorded while in progress.
    pub fn record_result(
        &self,
        id: &str,
        index: u32,
        result: &ResultLine,
        now: u64,
    ) -> Result<Recorded, StoreError> {
        let txn = self.db.begin_write()?;
        let recorded = {
            let mut results = txn.open_table(RESULTS)?;
            let mut jobs = txn.open_table(JOBS)?;
            let already = results.get((id, index))?.is_some();
            let job = match jobs.get(id)? {
                Some(json) => Some(serde_json::from_str::<JobRecord>(json.value())?),
                None => None,
            };
            match job {
                _ if already => Recorded::Duplicate,
                None => Recorded::UnknownJob,
                Some(mut job) => {
                    results.insert((id, index), result.json.as_str())?;
                    let counts = &mut job.request_counts;
                    if result.succeeded {
                        counts.completed += 1;
                    } else {
                        counts.failed += 1;
                    }
                    if counts.finished() >= counts.total && job.status == JobStatus::InProgress {
                        job.status = JobStatus::Completed;
                        job.completed_at = Some(now);
                    }
                    jobs.insert(id, serde_json::to_string(&job)?.as_str())?;
                    Recorded::New
                }
            }
        };
        match recorded {
            Recorded::New => txn.commit()?,
            Recorded::Duplicate | Recorded::UnknownJob => txn.abort()?,
        }
        Ok(recorded)
    }

    /// The job's recorded result lines in input order, one JSON per line.
    pub fn results_jsonl(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let txn = self.db.begin_read()?;
        let results = txn.open_table(RESULTS)?;
        let mut out = Vec::new();
        for entry in results.range((id, 0u32)..=(id, u32::MAX))? {
            let (_, json) = entry?;
            out.extend_from_slice(json.value().as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Moves an in-progress job to `cancelling`; other states are left as
    /// they are. Returns the job as it now is, `None` if unknown.
    pub fn request_cancel(&self, id: &str, now: u64) -> Result<Option<JobRecord>, StoreError> {
        self.update(id, |job| {
            if job.status == JobStatus::InProgress {
                job.status = JobStatus::Cancelling;
                job.cancelling_at = Some(now);
            }
        })
    }

    /// Settles a job whose runner has nothing left in flight: `cancelling`
    /// becomes `cancelled`; `in_progress` becomes `completed` if every line
    /// has a result, else `failed` (the runner gave up on some line).
    pub fn settle(&self, id: &str, now: u64) -> Result<Option<JobRecord>, StoreError> {
        self.update(id, |job| match job.status {
            JobStatus::Cancelling => {
                job.status = JobStatus::Cancelled;
                job.cancelled_at = Some(now);
            }
            JobStatus::InProgress | JobStatus::Validating => {
                if job.request_counts.finished() >= job.request_counts.total {
                    job.status = JobStatus::Completed;
                    job.completed_at = Some(now);
                } else {
                    job.status = JobStatus::Failed;
                    job.failed_at = Some(now);
                }
            }
            JobStatus::Completed | JobStatus::Cancelled | JobStatus::Failed => {}
        })
    }

    /// Read-modify-write of one job record in one transaction.
    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<Option<JobRecord>, StoreError> {
        let txn = self.db.begin_write()?;
        let updated = {
            let mut jobs = txn.open_table(JOBS)?;
            let job = match jobs.get(id)? {
                Some(json) => Some(serde_json::from_str::<JobRecord>(json.value())?),
                None => None,
            };
            match job {
                Some(mut job) => {
                    let before = job.clone();
                    change(&mut job);
                    if job != before {
                        jobs.insert(id, serde_json::to_string(&job)?.as_str())?;
                    }
                    Some(job)
                }
                None => None,
            }
        };
        txn.commit()?;
        Ok(updated)
    }
}

/// Runs a store operation on tokio's blocking pool (redb commits fsync).
pub async fn blocking<T, F>(
    store: &std::sync::Arc<Store>,
    op: F,
) -> Result<T, super::error::BatchError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(&store))
        .await
        .map_err(|e| super::error::BatchError::Runtime(e.to_string()))?
        .map_err(super::error::BatchError::storage)
}
