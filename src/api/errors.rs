//! The HTTP layer's one error enum, [`ApiError`], and its one mapping to a
//! status code and to the two wire shapes: OpenAI's
//! `{"error":{"message","type","param","code"}}` on the `/v1` routes and
//! TGI's `{"error","error_type"}` on `/generate*`. Handlers return
//! `Result<_, OpenAiError>` or `Result<_, TgiError>`, thin wrappers that pick
//! the shape.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use inferd_actors::request::SubmitError;
use serde_json::{json, Value};

/// Everything a request can fail with at the edge or in the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or a field has the wrong type (`param` names it).
    #[error("{message}")]
    BadJson {
        param: Option<String>,
        message: String,
    },
    /// A field is present and typed but outside its limit.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Prompt plus requested output exceed the model's context.
    #[error("this model's maximum context length is {limit} tokens, but {prompt} prompt tokens + {max_tokens} max tokens = {} were requested", prompt + max_tokens)]
    ContextLength {
        param: &'static str,
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    NotReady(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request's deadline (its `timeout` or the server default) passed.
    #[error("{0}")]
    Timeout(String),
    /// The engine failed while generating.
    #[error("generation failed: {0}")]
    Generation(String),
}

/// Which wire shape an error takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Tgi,
}

impl ApiError {
    /// The error an engine stream ended with: a timeout when its deadline
    /// passed, a generation failure otherwise.
    pub fn from_engine(message: String) -> ApiError {
        if message.starts_with(inferd_actors::batcher::DEADLINE_EXCEEDED) {
            ApiError::Timeout(message)
        } else {
            ApiError::Generation(message)
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The status code; validation is 400 on OpenAI's routes and 422 on
    /// TGI's, as each of those servers answers.
    pub fn status(&self, dialect: Dialect) -> StatusCode {
        match self {
            ApiError::BadJson { .. }
            | ApiError::Invalid { .. }
            | ApiError::ContextLength { .. } => match dialect {
                Dialect::OpenAi => StatusCode::BAD_REQUEST,
                Dialect::Tgi => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::UnknownModel(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady(_) | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Generation(_) => match dialect {
                Dialect::OpenAi => StatusCode::INTERNAL_SERVER_ERROR,
                Dialect::Tgi => StatusCode::FAILED_DEPENDENCY,
            },
        }
    }

    /// OpenAI's `type`, `param` and `code`.
    fn openai_parts(&self) -> (&'static str, Option<String>, Option<&'static str>) {
        match self {
            ApiError::BadJson { param, .. } => ("invalid_request_error", param.clone(), None),
            ApiError::Invalid { field, .. } => ("invalid_request_error", Some(field.clone()), None),
            ApiError::ContextLength { param, .. } => (
                "invalid_request_error",
                Some(param.to_string()),
                Some("context_length_exceeded"),
            ),
            ApiError::UnknownModel(_) => (
                "invalid_request_error",
                Some("model".to_string()),
                Some("model_not_found"),
            ),
            ApiError::NoRoute(_) => ("invalid_request_error", None, Some("not_found")),
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", None, Some("payload_too_large"))
            }
            ApiError::Overloaded { .. } => ("server_error", None, Some("overloaded")),
            ApiError::NotReady(_) | ApiError::ShuttingDown => {
                ("server_error", None, Some("unavailable"))
            }
            ApiError::Timeout(_) => ("server_error", Some("timeout".to_string()), Some("timeout")),
            ApiError::Generation(_) => ("server_error", None, None),
        }
    }

    /// TGI's `error_type` (the names its Python client recognizes).
    fn tgi_type(&self) -> &'static str {
        match self {
            ApiError::BadJson { .. }
            | ApiError::Invalid { .. }
            | ApiError::ContextLength { .. } => "validation",
            ApiError::UnknownModel(_) | ApiError::NoRoute(_) => "not_found",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::NotReady(_) | ApiError::ShuttingDown => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Generation(_) => "generation",
        }
    }

    /// The JSON body in `dialect`'s shape.
    pub fn body(&self, dialect: Dialect) -> Value {
        match dialect {
            Dialect::OpenAi => {
                let (kind, param, code) = self.openai_parts();
                json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
            }
            Dialect::Tgi => json!({"error": self.to_string(), "error_type": self.tgi_type()}),
        }
    }

    pub fn response(&self, dialect: Dialect) -> HttpResponse {
        let mut res = HttpResponse::build(self.status(dialect)).json(self.body(dialect));
        if let ApiError::Overloaded {
            retry_after_secs, ..
        } = self
        {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        res
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::UnknownModel(m) => ApiError::UnknownModel(m),
            SubmitError::Overloaded {
                retry_after_secs, ..
            } => ApiError::Overloaded {
                message: e.to_string(),
                retry_after_secs: retry_after_secs.max(1),
            },
            SubmitError::NotReady(m) => ApiError::NotReady(format!("model `{m}` is not ready")),
            SubmitError::Invalid { field, message } => ApiError::invalid(field, message),
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
        }
    }
}

macro_rules! dialect_error {
    ($name:ident, $dialect:expr) => {
        /// An [`ApiError`] rendered in this route family's shape.
        #[derive(Debug)]
        pub struct $name(pub ApiError);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<ApiError> for $name {
            fn from(e: ApiError) -> $name {
                $name(e)
            }
        }

        impl ResponseError for $name {
            fn status_code(&self) -> StatusCode {
                self.0.status($dialect)
            }
            fn error_response(&self) -> HttpResponse {
                self.0.response($dialect)
            }
        }
    };
}

dialect_error!(OpenAiError, Dialect::OpenAi);
dialect_error!(TgiError, Dialect::Tgi);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_statuses() {
        let e = ApiError::invalid("temperature", "must be in [0, 2], got 3");
        assert_eq!(e.status(Dialect::OpenAi), StatusCode::BAD_REQUEST);
        assert_eq!(e.status(Dialect::Tgi), StatusCode::UNPROCESSABLE_ENTITY);
        let b = e.body(Dialect::OpenAi);
        assert_eq!(b["error"]["param"], "temperature");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("[0, 2]"));
        let t = e.body(Dialect::Tgi);
        assert_eq!(t["error_type"], "validation");
        let o = ApiError::Overloaded {
            message: "busy".into(),
            retry_after_secs: 2,
        };
        let r = o.response(Dialect::OpenAi);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(RETRY_AFTER).unwrap(), "2");
        let c = ApiError::ContextLength {
            param: "messages",
            prompt: 10,
            max_tokens: 20,
            limit: 16,
        };
        let m = c.to_string();
        assert!(
            m.contains("16") && m.contains("10") && m.contains("20"),
            "{m}"
        );
    }

    #[test]
    fn a_passed_deadline_is_a_timeout_not_a_failure() {
        let msg = format!("{}: the request's deadline passed", inferd_actors::batcher::DEADLINE_EXCEEDED);
        let e = ApiError::from_engine(msg);
        assert_eq!(e.status(Dialect::OpenAi), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.body(Dialect::OpenAi)["error"]["code"], "timeout");
        assert_eq!(e.body(Dialect::Tgi)["error_type"], "timeout");
        let f = ApiError::from_engine("worker lost".into());
        assert_eq!(f.status(Dialect::OpenAi), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
