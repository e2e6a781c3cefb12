//! `GET /metrics`: the Prometheus text exposition of every metric the engine
//! records (see `inferd_actors::metrics` for the names and labels, and
//! deploy/metrics.txt for the contract). The recorder is process-global:
//! [`install`] sets it up once, with the histogram buckets, before the engine
//! starts; the route renders whatever has been recorded since.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use inferd_actors::metrics::{
    E2E, GENERATION_TOKENS, ITL, LATENCY_BUCKETS, LENGTH_BUCKETS, PROMPT_TOKENS, QUEUE, STEP_BUCKETS, STEP_FORWARD,
    STEP_SAMPLE, TTFT,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (idempotent: the first call wins). A
/// failure (another recorder already set) leaves `/metrics` empty rather
/// than stopping the server, and is returned for the caller to log.
pub fn install() -> Result<(), String> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let mut builder = PrometheusBuilder::new();
    for name in [TTFT, ITL, E2E, QUEUE] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), LATENCY_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    for name in [PROMPT_TOKENS, GENERATION_TOKENS] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), LENGTH_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    for name in [STEP_FORWARD, STEP_SAMPLE] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), STEP_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    let _ = HANDLE.set(handle);
    Ok(())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(render));
}

async fn render() -> HttpResponse {
    let body = match HANDLE.get() {
        Some(h) => {
            // Upkeep drains histogram shards; doing it per scrape keeps memory flat.
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
