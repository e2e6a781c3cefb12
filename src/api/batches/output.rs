//! Building one result line in OpenAI's batch output format:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
//! A 2xx outcome has `error: null`; a non-2xx one keeps its response and adds
//! `error: {code, message}` taken from the body's OpenAI error when present;
//! a line whose executor died (panicked) has `response: null`.

use serde_json::{json, Value};

use super::types::LineOutcome;

/// The serialized result line and whether it counts as completed (else failed).
pub struct ResultLine {
    pub json: String,
    pub succeeded: bool,
}

/// Builds the result line for line `index` of `job_id`; `outcome` is `None`
/// when the executor never produced one.
pub fn result_line(
    job_id: &str,
    index: u32,
    custom_id: &str,
    outcome: Option<&LineOutcome>,
) -> ResultLine {
    let request_id = format!("req_{}_{index}", job_suffix(job_id));
    let (response, error, succeeded) = match outcome {
        Some(o) => {
            let response = json!({
                "status_code": o.status_code,
                "request_id": request_id,
                "body": o.body,
            });
            if o.is_success() {
                (response, Value::Null, true)
            } else {
                (response, error_of(o), false)
            }
        }
        None => (
            Value::Null,
            json!({"code": "internal_error", "message": "the request failed inside the server"}),
            false,
        ),
    };
    let line = json!({
        "id": format!("batch_req_{}_{index}", job_suffix(job_id)),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    });
    ResultLine {
        json: line.to_string(),
        succeeded,
    }
}

/// `{code, message}` of a failed outcome, from its OpenAI error body if any.
fn error_of(outcome: &LineOutcome) -> Value {
    let err = outcome.body.get("error");
    let field = |name: &str| {
        err.and_then(|e| e.get(name))
            .filter(|v| !v.is_null())
            .cloned()
    };
    json!({
        "code": field("code")
            .or_else(|| field("type"))
            .unwrap_or_else(|| json!(format!("http_{}", outcome.status_code))),
        "message": field("message")
            .unwrap_or_else(|| json!(format!("request failed with status {}", outcome.status_code))),
    })
}

/// The random part of a job id (`batch_<hex>` -> `<hex>`).
fn job_suffix(job_id: &str) -> &str {
    job_id.strip_prefix("batch_").unwrap_or(job_id)
}
