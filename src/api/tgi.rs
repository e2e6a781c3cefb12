//! TGI-compatible handlers, in text-generation-inference's shapes so its
//! `text-generation` Python client works unchanged: `POST /generate`
//! (`{"generated_text", "details"}`), `POST /generate_stream` (SSE of
//! `{"index","token","top_tokens","generated_text","details"}`, the last
//! event carrying the full text and details), `POST /` (what the client
//! calls: dispatches on `stream`, and answers a list when not streaming)
//! and `GET /info`. Errors are `{"error","error_type"}`, validation 422.
//! TGI requests name no model: the server's default model answers, unless
//! the body carries a `model` field (an extension).

use std::sync::Arc;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::stream::{self, Stream};
use inferd_actors::request::{Event, Finish};
use inferd_actors::sampler::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use super::backend::Generation;
use super::codec::Codec;
use super::errors::{ApiError, Dialect, TgiError};
use super::request_id::{RequestId, VERSION_HEADER};
use super::sse::push_event;
use super::validate::{self, GenJob, Route};
use super::{collect, read_body, route_hints, submit_all_with, AppState, Collected};

/// TGI's default `max_new_tokens` when the body gives none.
const DEFAULT_MAX_NEW_TOKENS: i64 = 100;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TgiParams {
    pub do_sample: Option<bool>,
    pub max_new_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub details: Option<bool>,
    pub return_full_text: Option<bool>,
    pub top_n_tokens: Option<i64>,
    pub best_of: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TgiRequest {
    pub inputs: Option<String>,
    #[serde(default)]
    pub parameters: TgiParams,
    #[serde(default)]
    pub stream: bool,
    pub model: Option<String>,
}

/// A validated TGI request.
struct TgiJob {
    job: GenJob,
    codec: Arc<dyn Codec>,
    details: bool,
    /// `return_full_text`: the input text, prepended to the output.
    prefix: Option<String>,
}

fn positive(field: &str, v: Option<f64>) -> Result<(), ApiError> {
    match v {
        Some(x) if x <= 0.0 => Err(ApiError::invalid(
            field,
            format!("{field} must be strictly positive, got {x}"),
        )),
        _ => Ok(()),
    }
}

fn validate(state: &AppState, raw: TgiRequest) -> Result<TgiJob, ApiError> {
    let name = raw.model.clone().or_else(|| state.default_model.clone());
    let (model, ctx) = validate::model_name(name.as_deref(), &|m| state.model_ctx(m))?;
    let inputs = raw
        .inputs
        .ok_or_else(|| ApiError::invalid("inputs", "inputs is required"))?;
    if inputs.is_empty() {
        return Err(ApiError::invalid("inputs", "inputs must not be empty"));
    }
    let p = raw.parameters;
    positive("temperature", p.temperature)?;
    positive("repetition_penalty", p.repetition_penalty)?;
    if p.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "best_of must be 1"));
    }
    let top_n = p
        .top_n_tokens
        .map(|k| {
            if (0..=20).contains(&k) {
                Ok(k as u32)
            } else {
                Err(ApiError::invalid(
                    "top_n_tokens",
                    format!("top_n_tokens must be in [0, 20], got {k}"),
                ))
            }
        })
        .transpose()?;
    let top_k = p
        .top_k
        .map(|k| {
            if k >= 1 && k <= u32::MAX as i64 {
                Ok(k as u32)
            } else {
                Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be strictly positive, got {k}"),
                ))
            }
        })
        .transpose()?;
    let sample = p.do_sample.unwrap_or(false)
        || p.temperature.is_some()
        || p.top_k.is_some()
        || p.top_p.is_some();
    let sampling = SamplingParams {
        temperature: if sample {
            p.temperature.unwrap_or(1.0) as f32
        } else {
            0.0
        },
        top_k,
        top_p: p.top_p.unwrap_or(1.0) as f32,
        repetition_penalty: p.repetition_penalty.unwrap_or(1.0) as f32,
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        seed: p.seed.map(|s| s as u64),
        logprobs: Some(top_n.unwrap_or(0)),
        ..SamplingParams::default()
    };
    sampling
        .validate(ctx.limits.vocab_size)
        .map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    let stop = p.stop.unwrap_or_default();
    if stop.len() > validate::MAX_STOP || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop takes at most {} non-empty sequences",
                validate::MAX_STOP
            ),
        ));
    }
    let prompt = ctx
        .codec
        .encode(&inputs)
        .map_err(|e| ApiError::invalid("inputs", e))?;
    if prompt.is_empty() {
        return Err(ApiError::invalid("inputs", "inputs must not be empty"));
    }
    let requested = Some(p.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS));
    let max_tokens = validate::max_tokens(
        requested,
        "max_new_tokens",
        Route::Completions,
        prompt.len(),
        "inputs",
        ctx.limits.max_context,
    )?;
    let job = GenJob {
        model,
        prompts: vec![prompt],
        n: 1,
        max_tokens,
        sampling,
        stop,
        ignore_eos: false,
        stream: raw.stream,
        include_usage: false,
        priority: inferd_actors::sequence::Priority::Interactive,
        timeout: None,
        use_cache: true,
    };
    let prefix = p.return_full_text.unwrap_or(false).then_some(inputs);
    Ok(TgiJob {
        job,
        codec: ctx.codec,
        details: p.details.unwrap_or(false),
        prefix,
    })
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos => "eos_token",
        Finish::Stop => "stop_sequence",
        Finish::Length => "length",
    }
}

fn token_json(codec: &dyn Codec, id: u32, logprob: f32) -> Value {
    json!({"id": id, "text": codec.token_text(id), "logprob": logprob, "special": codec.is_special(id)})
}

fn response_json(t: &TgiJob, r: Collected) -> Value {
    let text = format!("{}{}", t.prefix.as_deref().unwrap_or(""), r.text);
    if !t.details {
        return json!({"generated_text": text});
    }
    let c = t.codec.as_ref();
    let tokens: Vec<Value> = r
        .tokens
        .iter()
        .map(|k| token_json(c, k.id, k.logprob))
        .collect();
    let mut details = json!({"finish_reason": finish_reason(r.finish), "generated_tokens": r.usage.completion_tokens, "seed": r.seed, "prefill": [], "tokens": tokens});
    if t.job.sampling.logprobs.is_some_and(|n| n > 0) {
        let top: Vec<Value> = r
            .tokens
            .iter()
            .map(|k| k.top.iter().map(|&(id, l)| token_json(c, id, l)).collect())
            .collect();
        details["top_tokens"] = Value::Array(top);
    }
    json!({"generated_text": text, "details": details})
}

async fn parse(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<TgiJob, ApiError> {
    let body = read_body(req, payload, state.max_body_bytes).await?;
    let raw: TgiRequest = validate::parse_json(&body)?;
    validate(state, raw)
}

async fn start(state: &AppState, rid: &RequestId, req: &HttpRequest, t: &TgiJob) -> Result<Generation, ApiError> {
    let hints = route_hints(req);
    let mut gens = submit_all_with(state.backend.as_ref(), state.requests(&t.job, &rid.0, Some(req.headers())), hints).await?;
    gens.pop()
        .ok_or_else(|| ApiError::Generation("no generation was started".to_string()))
}

async fn run_json(
    state: &AppState,
    rid: &RequestId,
    req: &HttpRequest,
    t: TgiJob,
    as_list: bool,
) -> Result<HttpResponse, ApiError> {
    let g = start(state, rid, req, &t).await?;
    let version = g.version.clone();
    let body = response_json(&t, collect(g).await?);
    let body = if as_list {
        Value::Array(vec![body])
    } else {
        body
    };
    Ok(HttpResponse::Ok()
        .insert_header((VERSION_HEADER, version))
        .json(body))
}

async fn run_stream(
    state: &AppState,
    rid: &RequestId,
    req: &HttpRequest,
    t: TgiJob,
) -> Result<HttpResponse, ApiError> {
    let g = start(state, rid, req, &t).await?;
    let version = g.version.clone();
    Ok(super::sse::response(stream_body(t, g), &version))
}

/// The held-back last token (TGI attaches the final text to it).
struct Pending {
    index: usize,
    id: u32,
    logprob: f32,
    top: Vec<(u32, f32)>,
}

fn stream_body(t: TgiJob, g: Generation) -> impl Stream<Item = Bytes> + 'static {
    let text = t.prefix.clone().unwrap_or_default();
    stream::unfold(
        Some((g, t, text, None::<Pending>, 0usize)),
        |state| async move {
            let (mut g, t, mut text, pending, count) = state?;
            let c = t.codec.as_ref();
            let event = |p: &Pending, generated: Value, details: Value| {
                let top: Value = if t.job.sampling.logprobs.is_some_and(|n| n > 0) {
                    p.top.iter().map(|&(id, l)| token_json(c, id, l)).collect()
                } else {
                    Value::Null
                };
                json!({"index": p.index, "token": token_json(c, p.id, p.logprob), "top_tokens": top, "generated_text": generated, "details": details})
            };
            let mut out = Vec::new();
            match g.next().await {
                Some(Event::Token {
                    token,
                    text: piece,
                    logprob,
                    top_logprobs,
                }) => {
                    if let Some(p) = &pending {
                        push_event(&mut out, &event(p, Value::Null, Value::Null));
                    }
                    text.push_str(&piece);
                    let next = Pending {
                        index: count,
                        id: token,
                        logprob,
                        top: top_logprobs,
                    };
                    Some((Bytes::from(out), Some((g, t, text, Some(next), count + 1))))
                }
                Some(Event::Done {
                    finish,
                    usage,
                    seed,
                    ..
                }) => {
                    let p = pending.unwrap_or(Pending {
                        index: 0,
                        id: 0,
                        logprob: 0.0,
                        top: Vec::new(),
                    });
                    let details = json!({"finish_reason": finish_reason(finish), "generated_tokens": usage.completion_tokens, "seed": seed, "input_length": usage.prompt_tokens});
                    push_event(&mut out, &event(&p, Value::String(text), details));
                    Some((Bytes::from(out), None))
                }
                Some(Event::Error { message }) => {
                    push_event(&mut out, &ApiError::from_engine(message).body(Dialect::Tgi));
                    Some((Bytes::from(out), None))
                }
                None => None,
            }
        },
    )
}

pub async fn generate(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, TgiError> {
    let t = parse(&state, &req, payload).await?;
    Ok(run_json(&state, &rid, &req, t, false).await?)
}

pub async fn generate_stream(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, TgiError> {
    let t = parse(&state, &req, payload).await?;
    Ok(run_stream(&state, &rid, &req, t).await?)
}

/// `POST /`: TGI's compat route, which the `text-generation` client calls.
pub async fn compat(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, TgiError> {
    let t = parse(&state, &req, payload).await?;
    if t.job.stream {
        Ok(run_stream(&state, &rid, &req, t).await?)
    } else {
        Ok(run_json(&state, &rid, &req, t, true).await?)
    }
}

/// `GET /info`: the default model, in TGI's shape (a subset).
pub async fn info(state: web::Data<AppState>) -> HttpResponse {
    let name = state.default_model.clone().unwrap_or_default();
    let limits = state.backend.limits(&name);
    let version = state
        .backend
        .models()
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.version)
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({
        "model_id": name, "model_sha": version, "router": "inferd", "version": env!("CARGO_PKG_VERSION"),
        "max_input_tokens": limits.map(|l| l.max_context.saturating_sub(1)), "max_total_tokens": limits.map(|l| l.max_context),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use actix_web::test;

    use super::*;
    use crate::api::fake::{FakeBackend, FakeCodec, FAKE_MODEL};

    async fn post(path: &str, body: Value) -> (u16, Vec<u8>) {
        let mut codecs: HashMap<String, Arc<dyn Codec>> = HashMap::new();
        codecs.insert(FAKE_MODEL.into(), Arc::new(FakeCodec));
        let state = web::Data::new(AppState::new(
            Arc::new(FakeBackend::default()),
            codecs,
            Some(FAKE_MODEL.into()),
            4096,
        ));
        let app = test::init_service(crate::api::app(state)).await;
        let res = test::call_service(
            &app,
            test::TestRequest::post()
                .uri(path)
                .set_json(body)
                .to_request(),
        )
        .await;
        (res.status().as_u16(), test::read_body(res).await.to_vec())
    }

    #[actix_rt::test]
    async fn compat_returns_a_list_with_details() {
        let (status, body) = post(
            "/",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 2, "details": true}}),
        )
        .await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["generated_text"], "ab");
        assert_eq!(v[0]["details"]["finish_reason"], "length");
        assert_eq!(v[0]["details"]["tokens"][1]["text"], "b");
    }

    #[actix_rt::test]
    async fn stream_puts_text_on_last_event() {
        let (status, body) = post(
            "/generate_stream",
            json!({"inputs": "hi", "parameters": {"max_new_tokens": 3}}),
        )
        .await;
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["generated_text"], Value::Null);
        assert_eq!(events[2]["generated_text"], "abc");
        assert_eq!(events[2]["details"]["generated_tokens"], 3);
    }

    #[actix_rt::test]
    async fn validation_is_422_in_tgi_shape() {
        let (status, body) = post(
            "/generate",
            json!({"inputs": "hi", "parameters": {"temperature": 0}}),
        )
        .await;
        assert_eq!(status, 422);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error_type"], "validation");
        assert!(v["error"].as_str().unwrap().contains("temperature"));
    }
}
