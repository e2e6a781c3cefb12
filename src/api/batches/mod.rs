//! Batch inference jobs (OpenAI's batch API over a JSONL body): submit many
//! requests as one job, poll its progress, fetch its results, cancel it.
//! Jobs, their input lines and their per-line results live in an embedded
//! redb database, so a restarted server resumes unfinished jobs without
//! losing or repeating recorded results. Lines run through an injected
//! [`LineExecutor`] (the server's runs them through the engine at batch
//! priority), at most `concurrency` at a time per process.
//!
//! Plugging in: build a [`BatchService`] with [`BatchService::open`] inside
//! the server's runtime, register it with `App::app_data(web::Data::new(svc))`
//! and the routes with `App::configure(batches::configure)`.
//!
//! Files: `types` (plain data), `input` (JSONL parsing), `output` (result
//! lines), `store` (redb), `registry` (active jobs, cancel signals), `runner`
//! (executing lines), `service` (the shared handle), `handlers` (routes),
//! `options` (tunables), `error` (errors -> OpenAI error replies).

mod error;
mod handlers;
mod input;
mod options;
mod output;
mod registry;
mod runner;
mod service;
mod store;
mod types;

use actix_web::web;

pub use error::BatchError;
pub use options::{
    BatchOptions, RetryPolicy, DEFAULT_MAX_ACTIVE_JOBS, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_LINES,
};
pub use service::BatchService;
pub use store::StoreError;
pub use types::{
    BatchLine, BatchObject, JobStatus, LineExecutor, LineOutcome, RequestCounts, CHAT_COMPLETIONS,
    COMPLETIONS,
};

/// Registers the four batch routes. Needs `web::Data<BatchService>` in the
/// app data (requests answer 500 without it). Bodies over
/// [`DEFAULT_MAX_BODY_BYTES`] are refused with 413.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/batches")
            .app_data(web::PayloadConfig::new(DEFAULT_MAX_BODY_BYTES))
            .route(web::post().to(handlers::submit)),
    )
    .service(web::resource("/v1/batches/{id}").route(web::get().to(handlers::get)))
    .service(web::resource("/v1/batches/{id}/results").route(web::get().to(handlers::results)))
    .service(web::resource("/v1/batches/{id}/cancel").route(web::post().to(handlers::cancel)));
}
