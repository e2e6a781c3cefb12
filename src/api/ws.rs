//! `GET /v1/ws`: a WebSocket on which one client runs several generations
//! at once. Client -> server (text frames, JSON):
//! - `{"type":"generate","id":ID,"model":M,"prompt":"..." | "messages":[...], ...}`
//!   with the OpenAI sampling fields (`max_tokens`, `temperature`, `top_p`,
//!   `top_k`, `seed`, `stop`, `logprobs`/`top_logprobs`, ...); `id` is any
//!   JSON string or number, unique among the socket's live generations.
//! - `{"type":"cancel","id":ID}`.
//!
//! Server -> client:
//! - `{"type":"token","id":ID,"text":"...","token_id":N,"logprob":X}`
//!   (`text` may be empty while a character or stop string is pending);
//! - `{"type":"done","id":ID,"finish_reason":"stop"|"length"|"cancelled","usage":{...}|null}`;
//! - `{"type":"error","id":ID|null,"error":{"message","type","param","code"}}`.
//!
//! `x-session-id` on the upgrade request pins the socket's generations to
//! one side of a canary split. The socket is one audited request: its
//! generations' tokens are summed and charged to the API key when it closes.
//!
//! Heartbeats: the server pings every [`HEARTBEAT`] and closes a socket that
//! has shown no sign of life for [`CLIENT_TIMEOUT`]. A closed socket cancels
//! all its generations (each runs in a task owning its `Generation`;
//! aborting the task drops it, which cancels the sequence).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, Session};
use futures_util::StreamExt;
use inferd_actors::deployment::RouteHints;
use inferd_actors::request::Event;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::audit::{current_ledger, LEDGER};
use super::errors::{ApiError, Dialect};
use super::openai_types::RawRequest;
use super::request_id::RequestId;
use super::validate::{self, Route};
use super::{openai_finish, route_hints, submit_all_with, AppState};

pub const HEARTBEAT: Duration = Duration::from_secs(10);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most generations one socket may run at once.
pub const MAX_LIVE: usize = 64;

/// A server message for the socket, and whether it ends generation `key`.
struct Outgoing {
    key: String,
    text: String,
    last: bool,
}

fn error_msg(id: &Value, e: &ApiError) -> String {
    json!({"type": "error", "id": id, "error": e.body(Dialect::OpenAi)["error"]}).to_string()
}

pub async fn socket(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // A browser that sends its key as the `bearer.<key>` subprotocol also
    // offers "inferd", which the handshake selects (it must select one).
    let (res, session, msgs) = actix_ws::handle_with_protocols(&req, body, &[WS_PROTOCOL])?;
    let msgs = msgs
        .max_frame_size(state.max_body_bytes)
        .aggregate_continuations()
        .max_continuation_size(state.max_body_bytes);
    // `x-session-id` on the upgrade request keeps the socket's generations
    // on one side of a canary split, as on the HTTP routes.
    let hints = route_hints(&req);
    let task = run(state, rid, hints, session, msgs);
    // The socket's generations report to the request's audit ledger, so
    // their tokens are audited and charged to the key when the socket closes.
    match current_ledger() {
        Some(ledger) => actix_rt::spawn(LEDGER.scope(ledger, task)),
        None => actix_rt::spawn(task),
    };
    Ok(res)
}

/// The subprotocol the console offers beside its `bearer.<key>` entry.
pub const WS_PROTOCOL: &str = "inferd";

async fn run(
    state: web::Data<AppState>,
    rid: RequestId,
    hints: RouteHints,
    mut session: Session,
    mut msgs: actix_ws::AggregatedMessageStream,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut live: HashMap<String, (Value, JoinHandle<()>)> = HashMap::new();
    let mut last_seen = Instant::now();
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            msg = msgs.next() => {
                let Some(Ok(msg)) = msg else { break };
                last_seen = Instant::now();
                let reply = match msg {
                    AggregatedMessage::Text(text) => on_text(&state, &rid, &hints, &text, &mut live, &tx).await,
                    AggregatedMessage::Ping(bytes) => { if session.pong(&bytes).await.is_err() { break } None }
                    AggregatedMessage::Close(_) => break,
                    AggregatedMessage::Binary(_) => Some(error_msg(&Value::Null, &ApiError::BadJson { param: None, message: "send JSON text frames".into() })),
                    AggregatedMessage::Pong(_) => None,
                };
                if let Some(text) = reply {
                    if session.text(text).await.is_err() { break }
                }
            }
            Some(out) = rx.recv() => {
                // Messages of a generation cancelled meanwhile are dropped.
                let known = if out.last { live.remove(&out.key).is_some() } else { live.contains_key(&out.key) };
                if !known { continue }
                if session.text(out.text).await.is_err() { break }
            }
            _ = beat.tick() => {
                if last_seen.elapsed() > CLIENT_TIMEOUT || session.ping(b"").await.is_err() { break }
            }
        }
    }
    for (_, (_, task)) in live.drain() {
        task.abort();
    }
    let _ = session.close(None).await;
}

/// Handle one client message; returns an immediate reply, if any.
async fn on_text(
    state: &AppState,
    rid: &RequestId,
    hints: &RouteHints,
    text: &str,
    live: &mut HashMap<String, (Value, JoinHandle<()>)>,
    tx: &mpsc::UnboundedSender<Outgoing>,
) -> Option<String> {
    let msg: Value = match validate::parse_json(text.as_bytes()) {
        Ok(v) => v,
        Err(e) => return Some(error_msg(&Value::Null, &e)),
    };
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let key = id.to_string();
    match msg.get("type").and_then(Value::as_str) {
        Some("generate") if id.is_null() => {
            Some(error_msg(&id, &ApiError::invalid("id", "id is required")))
        }
        Some("generate") if live.contains_key(&key) => Some(error_msg(
            &id,
            &ApiError::invalid("id", format!("id {key} is already running")),
        )),
        Some("generate") if live.len() >= MAX_LIVE => Some(error_msg(
            &id,
            &ApiError::invalid("id", format!("at most {MAX_LIVE} generations per socket")),
        )),
        Some("generate") => match start(state, rid, hints, msg, key.clone(), tx.clone()).await {
            Ok(task) => {
                live.insert(key, (id, task));
                None
            }
            Err(e) => Some(error_msg(&id, &e)),
        },
        Some("cancel") => {
            match live.remove(&key) {
                Some((id, task)) => {
                    task.abort();
                    Some(json!({"type": "done", "id": id, "finish_reason": "cancelled", "usage": null}).to_string())
                }
                None => Some(error_msg(
                    &id,
                    &ApiError::invalid("id", format!("no running generation with id {key}")),
                )),
            }
        }
        other => Some(error_msg(
            &id,
            &ApiError::invalid(
                "type",
                format!("type must be \"generate\" or \"cancel\", got {other:?}"),
            ),
        )),
    }
}

/// Validate and submit one generation; its events are forwarded by a task.
async fn start(
    state: &AppState,
    rid: &RequestId,
    hints: &RouteHints,
    msg: Value,
    key: String,
    tx: mpsc::UnboundedSender<Outgoing>,
) -> Result<JoinHandle<()>, ApiError> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let route = if msg.get("messages").is_some() {
        Route::Chat
    } else {
        Route::Completions
    };
    let raw: RawRequest = serde_path_to_error::deserialize(msg).map_err(|e| {
        let path = e.path().to_string();
        ApiError::BadJson {
            message: format!("invalid value for `{path}`: {}", e.into_inner()),
            param: Some(path),
        }
    })?;
    if raw.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "n must be 1 on the WebSocket"));
    }
    let job = validate::openai(raw, route, &|m| state.model_ctx(m))?;
    let mut gens = submit_all_with(state.backend.as_ref(), state.requests(&job, &rid.0, None), hints.clone()).await?;
    let mut g = gens
        .pop()
        .ok_or_else(|| ApiError::Generation("no generation was started".into()))?;
    Ok(actix_rt::spawn(async move {
        while let Some(ev) = g.next().await {
            let (text, last) = match ev {
                Event::Token {
                    token,
                    text,
                    logprob,
                    top_logprobs,
                } => {
                    let mut m = json!({"type": "token", "id": id, "text": text, "token_id": token, "logprob": logprob});
                    if !top_logprobs.is_empty() {
                        m["top_logprobs"] = top_logprobs
                            .iter()
                            .map(|&(t, l)| json!({"token_id": t, "logprob": l}))
                            .collect();
                    }
                    (m.to_string(), false)
                }
                Event::Done {
                    finish,
                    usage,
                    seed,
                    version,
                    ..
                } => {
                    let usage = json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.prompt_tokens + usage.completion_tokens});
                    (json!({"type": "done", "id": id, "finish_reason": openai_finish(finish), "usage": usage, "seed": seed, "version": version}).to_string(), true)
                }
                Event::Error { message } => (error_msg(&id, &ApiError::from_engine(message)), true),
            };
            if tx
                .send(Outgoing {
                    key: key.clone(),
                    text,
                    last,
                })
                .is_err()
            {
                break;
            }
        }
    }))
}
