//! The four HTTP routes of the batch API, thin over [`BatchService`]:
//! - `POST /v1/batches[?endpoint=/v1/completions]`, JSONL body -> the batch object;
//! - `GET  /v1/batches/{id}` -> the batch object;
//! - `GET  /v1/batches/{id}/results` -> JSONL of the finished lines, input order;
//! - `POST /v1/batches/{id}/cancel` -> the batch object (`cancelling`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::error::BatchError;
use super::service::BatchService;

/// Content type of the results.
const JSONL: &str = "application/jsonl";

#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    /// Default url of lines that name none.
    pub endpoint: Option<String>,
}

pub async fn submit(
    service: web::Data<BatchService>,
    query: web::Query<SubmitQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, BatchError> {
    let job = service.submit(body, query.endpoint.as_deref()).await?;
    Ok(HttpResponse::Ok().json(job))
}

pub async fn get(
    service: web::Data<BatchService>,
    id: web::Path<String>,
) -> Result<HttpResponse, BatchError> {
    Ok(HttpResponse::Ok().json(service.get(&id).await?))
}

pub async fn results(
    service: web::Data<BatchService>,
    id: web::Path<String>,
) -> Result<HttpResponse, BatchError> {
    let jsonl = service.results(&id).await?;
    Ok(HttpResponse::Ok().content_type(JSONL).body(jsonl))
}

pub async fn cancel(
    service: web::Data<BatchService>,
    id: web::Path<String>,
) -> Result<HttpResponse, BatchError> {
    Ok(HttpResponse::Ok().json(service.cancel(&id).await?))
}
