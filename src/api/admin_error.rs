//! Errors of the admin API, in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`): 400 for a bad body
//! (`param` names the field), 404 for an unknown model or version, 409 for
//! a conflict with the current state (unloading the active version,
//! activating a version that is still loading, ...), 500 when a load fails.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use inferd_actors::deployment::ManageError;
use serde_json::json;

use super::errors::{ApiError, Dialect};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    pub code: &'static str,
}

impl AdminError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        param: Option<&str>,
        message: impl Into<String>,
    ) -> AdminError {
        AdminError {
            status,
            message: message.into(),
            param: param.map(str::to_string),
            code,
        }
    }

    /// 400: `field` is missing or outside its limits.
    pub fn invalid(field: &str, message: impl Into<String>) -> AdminError {
        AdminError::new(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            Some(field),
            message,
        )
    }

    /// 500: the change was refused by the server itself (e.g. a load).
    pub fn internal(param: Option<&str>, message: impl Into<String>) -> AdminError {
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            param,
            message,
        )
    }
}

impl From<ManageError> for AdminError {
    fn from(e: ManageError) -> AdminError {
        use ManageError as M;
        use StatusCode as S;
        let (status, code, param) = match &e {
            M::UnknownModel(_) => (S::NOT_FOUND, "model_not_found", Some("model")),
            M::UnknownVersion { .. } => (S::NOT_FOUND, "version_not_found", Some("version")),
            M::AlreadyLoaded { .. } => (S::CONFLICT, "already_loaded", Some("version")),
            M::NotReady { .. } => (S::CONFLICT, "not_ready", Some("version")),
            M::IsActive { .. } => (S::CONFLICT, "is_active", Some("version")),
            M::IsCanary { .. } => (S::CONFLICT, "is_canary", Some("version")),
            M::NoPrevious(_) | M::PreviousUnloaded { .. } => (S::CONFLICT, "no_previous", None),
            M::NoActive(_) => (S::CONFLICT, "no_active", None),
            M::Busy { .. } => (S::CONFLICT, "busy", Some("version")),
            M::InvalidWeight(_) => (S::BAD_REQUEST, "invalid_value", Some("weight")),
            M::LoadFailed { .. } => (S::INTERNAL_SERVER_ERROR, "load_failed", Some("source")),
            M::PartialRestore(_) => (S::INTERNAL_SERVER_ERROR, "partial_restore", None),
        };
        AdminError::new(status, code, param, e.to_string())
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> AdminError {
        let status = e.status(Dialect::OpenAi);
        let body = e.body(Dialect::OpenAi);
        let param = body["error"]["param"].as_str().map(str::to_string);
        AdminError {
            status,
            message: e.to_string(),
            param,
            code: "invalid_request",
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        HttpResponse::build(self.status).json(json!({"error": {
            "message": self.message, "type": kind, "param": self.param, "code": self.code,
        }}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manage_errors_map_to_statuses_naming_the_field() {
        let conflict = ManageError::IsActive {
            model: "m".into(),
            version: "v1".into(),
        };
        let e = AdminError::from(conflict);
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (409, Some("version"))
        );
        assert!(e.message.contains("`v1`"), "{}", e.message);
        let e = AdminError::from(ManageError::UnknownModel("x".into()));
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (404, Some("model"))
        );
        let e = AdminError::from(ManageError::InvalidWeight(101));
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("weight"))
        );
        let failed = ManageError::LoadFailed {
            model: "m".into(),
            version: "v9".into(),
            reason: "bad magic".into(),
        };
        let e = AdminError::from(failed);
        assert_eq!(e.status.as_u16(), 500);
        let res = e.error_response();
        assert_eq!(res.status().as_u16(), 500);
    }
}
