//! The plain data of batch jobs: what one input line asks for ([`BatchLine`]),
//! what running it gave ([`LineOutcome`]), the injected executor type
//! ([`LineExecutor`]), and the job record kept on disk ([`JobRecord`]) with its
//! OpenAI-shaped view ([`BatchObject`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The two endpoints a batch line may target.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// See [`CHAT_COMPLETIONS`].
pub const COMPLETIONS: &str = "/v1/completions";

/// One request of a batch job, as handed to the [`LineExecutor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchLine {
    /// The caller's id for this line; unique within its job.
    pub custom_id: String,
    /// [`CHAT_COMPLETIONS`] or [`COMPLETIONS`].
    pub url: String,
    /// The OpenAI request body, as submitted (a JSON object).
    pub body: Value,
}

/// What running one line gave: an HTTP status and the JSON body the endpoint
/// would have answered (an OpenAI error object when the status is not 2xx).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineOutcome {
    pub status_code: u16,
    pub body: Value,
}

impl LineOutcome {
    /// True for a 2xx status: the line counts as completed, else as failed.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

/// Runs one line to completion (non-streaming). The HTTP layer supplies one
/// that submits the request to the engine at batch priority; tests supply fakes.
/// A 429 or 503 outcome is retried by the runner with backoff (the engine
/// sheds batch work first under interactive load), any other is recorded.
pub type LineExecutor = Arc<dyn Fn(BatchLine) -> BoxFuture<'static, LineOutcome> + Send + Sync>;

/// Where a job is in its life. `validating` is part of OpenAI's vocabulary but
/// never stored: lines are validated before the job is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Validating,
    InProgress,
    Cancelling,
    Completed,
    Cancelled,
    Failed,
}

impl JobStatus {
    /// A terminal job is never resumed and never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Cancelled | JobStatus::Failed
        )
    }

    /// The snake_case name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Validating => "validating",
            JobStatus::InProgress => "in_progress",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Completed => "completed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Failed => "failed",
        }
    }
}

/// Lines finished so far; `completed + failed == total` once all ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u32,
    pub completed: u32,
    pub failed: u32,
}

impl RequestCounts {
    /// Lines with a recorded result.
    pub fn finished(&self) -> u32 {
        self.completed + self.failed
    }
}

/// A job as stored (JSON in the jobs table). Timestamps are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The default url of lines that named none.
    pub endpoint: String,
    pub status: JobStatus,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub request_counts: RequestCounts,
}

/// The job as `GET /v1/batches/{id}` shows it (OpenAI's batch object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchObject {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub status: JobStatus,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub request_counts: RequestCounts,
}

impl From<JobRecord> for BatchObject {
    fn from(r: JobRecord) -> Self {
        BatchObject {
            id: r.id,
            object: "batch".to_owned(),
            endpoint: r.endpoint,
            status: r.status,
            created_at: r.created_at,
            in_progress_at: r.in_progress_at,
            completed_at: r.completed_at,
            cancelling_at: r.cancelling_at,
            cancelled_at: r.cancelled_at,
            failed_at: r.failed_at,
            request_counts: r.request_counts,
        }
    }
}

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
