//! Health probes. `GET /health/live` (and `/health`): 200 while the
//! process is up. `GET /health/ready` (and `/ready`): 200 when every
//! configured model has a ready active version, else 503 with the reasons.
//! A draining server (SIGTERM) is not ready.
//! `GET /v1/models/{id}/ready`: the same answer for one model (404 if it is
//! not served). Bodies: `{"status": "ready" | "not ready", "ready": bool,
//! "reasons": [...], "models": [{"model", "version", "ready"}]}`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::drain::Drain;
use super::errors::{ApiError, OpenAiError};
use super::request_id::VERSION_HEADER;
use super::AppState;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<AppState>, drain: Option<web::Data<Drain>>) -> HttpResponse {
    let b = &state.backend;
    let models: Vec<_> = b
        .models()
        .into_iter()
        .map(|m| json!({"model": m.name, "version": m.version, "ready": m.ready}))
        .collect();
    let mut reasons = b.not_ready_reasons(None);
    let draining = drain.is_some_and(|d| d.is_draining());
    if draining {
        reasons.insert(0, "the server is shutting down".to_string());
    }
    let ok = b.is_ready() && !draining;
    if !ok && reasons.is_empty() {
        reasons.push("the models are loading".to_string());
    }
    answer(ok, reasons, json!(models))
}

/// `GET /v1/models/{id}/ready`.
pub async fn model_ready(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, OpenAiError> {
    let name = path.into_inner();
    let b = &state.backend;
    let m = b
        .models()
        .into_iter()
        .find(|m| m.name == name)
        .ok_or(ApiError::UnknownModel(name.clone()))?;
    let reasons = b.not_ready_reasons(Some(&name));
    let ok = m.ready && reasons.is_empty();
    let version = m.version.clone();
    let body = json!([{"model": m.name, "version": m.version, "ready": m.ready}]);
    let mut res = answer(ok, reasons, body);
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&version) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(VERSION_HEADER),
            v,
        );
    }
    Ok(res)
}

fn answer(ok: bool, reasons: Vec<String>, models: serde_json::Value) -> HttpResponse {
    let status = if ok { "ready" } else { "not ready" };
    let body = json!({"status": status, "ready": ok, "reasons": reasons, "models": models});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
