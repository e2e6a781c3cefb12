//! The HTTP API (actix-web): OpenAI-compatible `/v1/completions`,
//! `/v1/chat/completions` and `/v1/models`, TGI-compatible `/generate`,
//! `/generate_stream` (and `POST /`, which the `text-generation` client
//! calls), the `/v1/ws` WebSocket, the health probes (`/health/live`,
//! `/health/ready`, `/v1/models/{id}/ready`), `/stats` and the `/admin`
//! model management routes.
//!
//! Module map: [`backend`] (the engine as handlers see it), [`codec`] (a
//! model's tokenizer at the edge), [`validate`] (raw JSON -> typed request),
//! [`errors`] (one error enum, two wire shapes), [`openai`] / [`tgi`] /
//! [`ws`] (handlers), [`sse`] (event framing), [`request_id`] (middleware),
//! [`health`] (probes), [`admin`] / [`admin_error`] (model management
//! routes) over [`model_manager`], which persists through [`routing_store`].
//! This file holds the shared state, the app builder and the server start.

pub mod admin;
pub mod admin_error;
pub mod access;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod batches;
pub mod codec;
pub mod drain;
pub mod engine_backend;
pub mod errors;
#[cfg(test)]
pub mod fake;
pub mod health;
pub mod metrics;
pub mod model_manager;
pub mod openai;
mod openai_stream;
pub mod openai_types;
pub mod request_id;
pub mod routing_store;
pub mod sse;
pub mod tgi;
pub mod validate;
pub mod ws;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{middleware, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use inferd_actors::deployment::RouteHints;
use inferd_actors::request::{Event, Finish, GenerateRequest, SubmitError, Usage};
use serde_json::json;

use self::backend::{Backend, Generation};
use self::codec::{Codec, Codecs};
use self::errors::{ApiError, OpenAiError};
use self::model_manager::ModelManager;
use self::openai_types::{ModelList, ModelObject};
use self::request_id::VERSION_HEADER;
use self::validate::ModelCtx;

/// What every handler shares.
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    /// Per served model name, its tokenizer (prompts are encoded at the
    /// edge); the admin API adds and removes entries.
    pub codecs: Arc<Codecs>,
    /// The model of routes that name none (TGI's).
    pub default_model: Option<String>,
    pub max_body_bytes: usize,
    /// Unix seconds at start (`created` of `/v1/models`).
    pub started: u64,
    /// Deadline of interactive requests that set no `timeout`.
    pub default_timeout: Option<std::time::Duration>,
}

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, codecs: HashMap<String, Arc<dyn Codec>>, default_model: Option<String>, max_body_bytes: usize) -> AppState {
        AppState::with_codecs(backend, Arc::new(Codecs::new(codecs)), default_model, max_body_bytes)
    }

    /// `new` over a codec registry shared with the model manager.
    pub fn with_codecs(backend: Arc<dyn Backend>, codecs: Arc<Codecs>, default_model: Option<String>, max_body_bytes: usize) -> AppState {
        AppState { backend, codecs, default_model, max_body_bytes, started: unix_now(), default_timeout: None }
    }

    /// The engine requests of `job`: the server's default deadline applies
    /// to interactive requests without a `timeout` of their own (batch-job
    /// lines wait behind interactive traffic by design, so they get none),
    /// and `x-inferd-cache: bypass` keeps the response cache out of it.
    pub fn requests(&self, job: &validate::GenJob, request_id: &str, headers: Option<&actix_web::http::header::HeaderMap>) -> Vec<GenerateRequest> {
        let mut reqs = job.requests(request_id);
        let bypass = headers
            .and_then(|h| h.get(CACHE_HEADER))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("bypass") || v.eq_ignore_ascii_case("no-cache"));
        let default = (job.priority == inferd_actors::sequence::Priority::Interactive && job.timeout.is_none())
            .then_some(self.default_timeout)
            .flatten()
            .map(|t| std::time::Instant::now() + t);
        for r in &mut reqs {
            r.deadline = r.deadline.or(default);
            r.use_cache &= !bypass;
        }
        reqs
    }

    /// The codec and limits of a served model: 404 if unknown, 503 while
    /// its limits are not known (still loading).
    pub fn model_ctx(&self, name: &str) -> Result<ModelCtx, ApiError> {
        let codec = self.codecs.get(name).ok_or_else(|| ApiError::UnknownModel(name.to_string()))?;
        let limits = self.backend.limits(name).ok_or_else(|| ApiError::NotReady(format!("model `{name}` is not ready")))?;
        Ok(ModelCtx { codec, limits })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh response id with OpenAI's prefix (`cmpl-`, `chatcmpl-`).
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

/// The request body, refusing more than `limit` bytes (413) before reading it all.
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson { param: None, message: format!("reading the body failed: {e}") })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Submit every request; if one is refused, the ones already admitted are
/// dropped (which cancels them) and the refusal is returned.
pub async fn submit_all(backend: &dyn Backend, reqs: Vec<GenerateRequest>) -> Result<Vec<Generation>, ApiError> {
    submit_all_with(backend, reqs, RouteHints::default()).await
}

/// `submit_all` with routing hints for the first request; the others are
/// pinned to the version that got the first, so one response (all its
/// prompts and `n` choices) is served wholly by one version. If that
/// version stops taking requests in between (a swap made it drain), the
/// admitted ones are cancelled and all are submitted again.
pub async fn submit_all_with(backend: &dyn Backend, reqs: Vec<GenerateRequest>, hints: RouteHints) -> Result<Vec<Generation>, ApiError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let mut gens: Vec<Generation> = Vec::with_capacity(reqs.len());
        let mut refused = None;
        for r in &reqs {
            let mut h = hints.clone();
            h.version = gens.first().map(|g| g.version.clone()).or(h.version);
            match backend.submit_with(r.clone(), h).await {
                Ok(g) => gens.push(g),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        match refused {
            None => return Ok(gens),
            Some(SubmitError::NotReady(_)) if !gens.is_empty() && attempt < ATTEMPTS => attempt += 1,
            Some(e) => return Err(e.into()),
        }
    }
}

/// The client's routing wishes: `x-session-id` keeps a session on one side
/// of a canary split.
pub fn route_hints(req: &HttpRequest) -> RouteHints {
    let session_id = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()).map(str::to_string);
    RouteHints { session_id, version: None }
}

/// `x-inferd-cache: bypass` (or `no-cache`): never answer from the
/// response cache.
pub const CACHE_HEADER: &str = "x-inferd-cache";

/// The header naming a client session (sticky canary routing).
pub const SESSION_HEADER: &str = "x-session-id";

/// One generated token as the responses report it.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A whole generation, read to its end.
#[derive(Debug, Clone)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenOut>,
    pub finish: Finish,
    pub usage: Usage,
    pub seed: u64,
}

/// Read `g` to its final event.
pub async fn collect(mut g: Generation) -> Result<Collected, ApiError> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(ev) = g.next().await {
        match ev {
            Event::Token { token, text: piece, logprob, top_logprobs } => {
                text.push_str(&piece);
                tokens.push(TokenOut { id: token, text: piece, logprob, top: top_logprobs });
            }
            Event::Done { finish, usage, seed, .. } => return Ok(Collected { text, tokens, finish, usage, seed }),
            Event::Error { message } => return Err(ApiError::from_engine(message)),
        }
    }
    Err(ApiError::Generation("the stream ended without a result".to_string()))
}

/// Read every generation concurrently, in order.
pub async fn collect_all(gens: Vec<Generation>) -> Result<Vec<Collected>, ApiError> {
    futures_util::future::join_all(gens.into_iter().map(collect)).await.into_iter().collect()
}

/// OpenAI's finish_reason.
pub fn openai_finish(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// Engine counters per replica, totals since start and latency percentiles
/// over the last minute (docs/admin-api.md; the console's live page).
async fn stats(state: web::Data<AppState>) -> HttpResponse {
    let replicas: Vec<_> = state
        .backend
        .stats()
        .await
        .into_iter()
        .map(|s| {
            let r = &s.recent;
            json!({"model": s.model, "version": s.version, "device": s.device, "running": s.running, "waiting": s.waiting,
                   "kv_usage": s.kv_usage, "num_blocks": s.num_blocks, "free_blocks": s.free_blocks,
                   "prefix_query_tokens": s.prefix_query_tokens, "prefix_hit_tokens": s.prefix_hit_tokens,
                   "preemptions": s.preemptions, "steps": s.steps, "forward_secs": s.forward_secs, "step_secs": s.step_secs,
                   "requests_total": r.requests_total, "errors_total": r.errors_total,
                   "prompt_tokens_total": r.prompt_tokens_total, "generation_tokens_total": r.generation_tokens_total,
                   "ttft_p50": r.ttft.p50, "ttft_p99": r.ttft.p99, "itl_p50": r.itl.p50, "itl_p99": r.itl.p99,
                   "e2e_p50": r.e2e.p50, "e2e_p99": r.e2e.p99})
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let uptime = now - state.started as f64;
    HttpResponse::Ok().json(json!({"time": now, "uptime_secs": uptime, "replicas": replicas}))
}

fn model_object(state: &AppState, m: backend::ModelInfo) -> ModelObject {
    ModelObject { id: m.name, object: "model", created: state.started, owned_by: "inferd", version: m.version, ready: m.ready }
}

async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    let data = state.backend.models().into_iter().map(|m| model_object(&state, m)).collect();
    HttpResponse::Ok().json(ModelList { object: "list", data })
}

async fn get_model(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, OpenAiError> {
    let name = path.into_inner();
    let m = state.backend.models().into_iter().find(|m| m.name == name).ok_or(ApiError::UnknownModel(name))?;
    let version = m.version.clone();
    Ok(HttpResponse::Ok().insert_header((VERSION_HEADER, version)).json(model_object(&state, m)))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, OpenAiError> {
    Err(ApiError::NoRoute(format!("{} {}", req.method(), req.path())).into())
}

/// Register every route of the API on `cfg`, sharing `state`.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    cfg.app_data(state)
        .route("/health", web::get().to(health::live))
        .route("/health/live", web::get().to(health::live))
        .route("/ready", web::get().to(health::ready))
        .route("/health/ready", web::get().to(health::ready))
        .route("/stats", web::get().to(stats))
        .route("/v1/models", web::get().to(list_models))
        // Before the catch-all below, which would take `{id}/ready` as an id.
        .route("/v1/models/{id:.*}/ready", web::get().to(health::model_ready))
        .route("/v1/models/{id:.*}", web::get().to(get_model))
        .route("/v1/completions", web::post().to(openai::completions))
        .route("/v1/chat/completions", web::post().to(openai::chat_completions))
        .route("/generate", web::post().to(tgi::generate))
        .route("/generate_stream", web::post().to(tgi::generate_stream))
        .route("/", web::post().to(tgi::compat))
        .route("/info", web::get().to(tgi::info))
        .route("/v1/ws", web::get().to(ws::socket));
    // The batch routes use the `web::Data<batches::BatchService>` that
    // `serve` registers.
    batches::configure(cfg);
    // The admin routes use the `web::Data<ModelManager>` that `serve` registers.
    admin::configure(cfg);
    metrics::configure(cfg);
}

/// The app: routes plus the request-id middleware and the JSON 404.
pub fn app(
    state: web::Data<AppState>,
) -> App<impl actix_web::dev::ServiceFactory<actix_web::dev::ServiceRequest, Config = (), Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, Error = actix_web::Error, InitError = ()>> {
    App::new()
        // Registered last, so outermost: the access middleware and the
        // handlers see the request id.
        .wrap(middleware::from_fn(access::access))
        .wrap(middleware::from_fn(request_id::request_id))
        .configure(|cfg| configure(cfg, state))
        .configure(crate::ui::configure)
        .default_service(web::to(not_found))
}

/// Batch-job lines run through the same OpenAI code path as HTTP callers,
/// at batch priority.
fn batch_executor(state: web::Data<AppState>) -> batches::LineExecutor {
    Arc::new(move |line: batches::BatchLine| {
        let state = state.clone();
        Box::pin(async move {
            let request_id = format!("batch-{}", line.custom_id);
            let (status_code, body) = openai::run_batch_line(&state, &line.url, &line.body, &request_id).await;
            batches::LineOutcome { status_code, body }
        })
    })
}

/// How `serve` runs, besides the app state.
pub struct ServeOptions {
    /// Batch jobs are kept in `data_dir/batches.redb`; unfinished ones resume.
    pub data_dir: std::path::PathBuf,
    pub batch_concurrency: usize,
    /// API keys, audit log and the drain state.
    pub access: access::Access,
    /// On SIGTERM / Ctrl-C: how long running requests get to finish.
    pub shutdown_grace: std::time::Duration,
}

/// Serve on `listener` until SIGTERM or Ctrl-C, then drain (see
/// [`drain`]) and return. Prints `listening on http://ADDR` on stdout once
/// bound (tests read it). The admin routes drive `manager`.
pub async fn serve(listener: TcpListener, state: AppState, manager: Arc<ModelManager>, opts: ServeOptions) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let state = web::Data::new(state);
    let manager = web::Data::from(manager);
    std::fs::create_dir_all(&opts.data_dir)?;
    let db = opts.data_dir.join("batches.redb");
    let jobs = batches::BatchService::open(&db, batch_executor(state.clone()), opts.batch_concurrency)
        .map_err(|e| std::io::Error::other(format!("opening {}: {e}", db.display())))?;
    let jobs = web::Data::new(jobs);
    let drain = opts.access.drain.clone();
    let drain_data = web::Data::from(drain.clone());
    let access = web::Data::new(opts.access);
    let server = HttpServer::new(move || {
        app(state.clone()).app_data(jobs.clone()).app_data(manager.clone()).app_data(access.clone()).app_data(drain_data.clone())
    })
    // Signals are ours (below): actix's own handling would stop accepting
    // at once, before readiness could report the drain.
    .disable_signals()
    .shutdown_timeout(opts.shutdown_grace.as_secs() + 1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    let grace = opts.shutdown_grace;
    actix_rt::spawn(async move {
        let signal = shutdown_signal().await;
        drain.begin();
        tracing::info!(signal, in_flight = drain.in_flight(), grace_secs = grace.as_secs_f64(), "draining: readiness is 503, new requests get 503");
        let clean = drain.wait_idle(grace).await;
        if clean {
            tracing::info!("drained: every running request finished");
        } else {
            tracing::warn!(in_flight = drain.in_flight(), "grace period over: stopping with requests still running");
        }
        handle.stop(clean).await;
    });
    println!("listening on http://{addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    server.await
}

/// The first of SIGTERM and Ctrl-C (SIGINT), by name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = ctrl_c() => "SIGINT",
            };
        }
    }
    ctrl_c().await;
    "SIGINT"
}

/// Ctrl-C; never, where it cannot be listened for (rather than at once).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
