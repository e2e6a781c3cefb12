//! One error enum for the batch API and its single mapping to HTTP statuses
//! and OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`.
//! Storage failures are reported without their inner text to the client
//! (it may name paths); the message says only that storage failed.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// Seconds a client is told to wait after a 429 for too many active jobs.
const RETRY_AFTER_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The submitted JSONL is unusable; `line` is 1-based, `None` for the whole body.
    #[error("{}", invalid_message(*.line, .message))]
    InvalidInput {
        line: Option<usize>,
        message: String,
    },
    #[error("no batch with id '{0}'")]
    NotFound(String),
    /// The job is in a state that does not allow the operation.
    #[error("cannot {action} a batch with status '{status}'")]
    Conflict {
        action: &'static str,
        status: &'static str,
    },
    /// Too many unfinished jobs: shed at the door rather than queue.
    #[error("too many active batch jobs (limit {limit}); retry later")]
    TooManyJobs { limit: usize },
    /// The embedded database failed; the job state on disk is unchanged.
    #[error("batch storage failed")]
    Storage(#[source] anyhow::Error),
    /// Not called from inside a tokio runtime, or a worker task died.
    #[error("batch runtime unavailable: {0}")]
    Runtime(String),
}

fn invalid_message(line: Option<usize>, message: &str) -> String {
    match line {
        Some(n) => format!("line {n}: {message}"),
        None => message.to_owned(),
    }
}

impl BatchError {
    pub(crate) fn invalid(line: usize, message: impl Into<String>) -> Self {
        BatchError::InvalidInput {
            line: Some(line),
            message: message.into(),
        }
    }

    pub(crate) fn storage(e: impl Into<anyhow::Error>) -> Self {
        BatchError::Storage(e.into())
    }

    /// OpenAI's `type` and `code` for this error.
    fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            BatchError::InvalidInput { .. } => ("invalid_request_error", "invalid_batch_input"),
            BatchError::NotFound(_) => ("invalid_request_error", "batch_not_found"),
            BatchError::Conflict { .. } => ("invalid_request_error", "batch_state_conflict"),
            BatchError::TooManyJobs { .. } => ("rate_limit_error", "too_many_batches"),
            BatchError::Storage(_) | BatchError::Runtime(_) => ("server_error", "internal_error"),
        }
    }
}

impl ResponseError for BatchError {
    fn status_code(&self) -> StatusCode {
        match self {
            BatchError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            BatchError::NotFound(_) => StatusCode::NOT_FOUND,
            BatchError::Conflict { .. } => StatusCode::CONFLICT,
            BatchError::TooManyJobs { .. } => StatusCode::TOO_MANY_REQUESTS,
            BatchError::Storage(_) | BatchError::Runtime(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, code) = self.kind_and_code();
        let param = match self {
            BatchError::InvalidInput { line: Some(n), .. } => json!(format!("line {n}")),
            _ => serde_json::Value::Null,
        };
        let mut builder = HttpResponse::build(self.status_code());
        if let BatchError::TooManyJobs { .. } = self {
            builder.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        builder.json(json!({
            "error": { "message": self.to_string(), "type": kind, "param": param, "code": code }
        }))
    }
}
