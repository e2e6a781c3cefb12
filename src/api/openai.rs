//! OpenAI-compatible handlers: `POST /v1/completions` and
//! `POST /v1/chat/completions`. Body -> [`GenJob`] (validate.rs) -> one
//! engine submission per prompt and per `n` -> either a streamed response
//! (openai_stream.rs) or one JSON body built here. Choice `i * n + j` is
//! prompt `i`, sample `j`. Usage counts each prompt once.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};

use super::codec::Codec;
use inferd_actors::sequence::Priority;

use super::errors::{ApiError, Dialect, OpenAiError};
use super::openai_stream::{self, StreamMeta};
use super::openai_types::{
    ChatBody, ChatChoice, ChatLogprobs, ChatMessageBody, CompletionBody, CompletionChoice,
    CompletionLogprobs, RawRequest, Skip, TokenLogprob, TopLogprob, UsageBody,
};
use super::request_id::{RequestId, VERSION_HEADER};
use super::validate::{self, GenJob, Route};
use super::{
    collect_all, openai_finish, read_body, response_id, route_hints, submit_all_with, unix_now,
    AppState, Collected, TokenOut,
};
use inferd_actors::deployment::RouteHints;

pub async fn completions(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    handle(state, rid, req, payload, Route::Completions).await
}

pub async fn chat_completions(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    handle(state, rid, req, payload, Route::Chat).await
}

async fn handle(
    state: web::Data<AppState>,
    rid: RequestId,
    req: HttpRequest,
    payload: web::Payload,
    route: Route,
) -> Result<HttpResponse, OpenAiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let job = parse_job(&state, &body, route, Priority::Interactive)?;
    let hints = route_hints(&req);
    if job.stream {
        let ctx = state.model_ctx(&job.model)?;
        let gens = submit_all_with(state.backend.as_ref(), state.requests(&job, &rid.0, Some(req.headers())), hints).await?;
        let version = gens.first().map(|g| g.version.clone()).unwrap_or_default();
        let meta = stream_meta(route, &job.model, &version);
        let body = openai_stream::body(route, meta, &job, gens, ctx.codec);
        return Ok(super::sse::response(body, &version));
    }
    let (version, json) = run_to_json(&state, &job, route, &rid.0, hints, Some(req.headers())).await?;
    Ok(HttpResponse::Ok().insert_header((VERSION_HEADER, version)).json(json))
}

fn parse_job(state: &AppState, body: &[u8], route: Route, priority: Priority) -> Result<GenJob, ApiError> {
    let raw: RawRequest = validate::parse_json(body)?;
    let mut job = validate::openai(raw, route, &|m| state.model_ctx(m))?;
    job.priority = priority;
    Ok(job)
}

fn stream_meta(route: Route, model: &str, version: &str) -> StreamMeta {
    StreamMeta {
        id: response_id(if route == Route::Chat { "chatcmpl-" } else { "cmpl-" }),
        created: unix_now(),
        model: model.to_string(),
        fingerprint: format!("inferd-{version}"),
    }
}

/// Run a non-streaming job to its end; returns the serving version and the
/// OpenAI response body.
async fn run_to_json(
    state: &AppState,
    job: &GenJob,
    route: Route,
    request_id: &str,
    hints: RouteHints,
    headers: Option<&actix_web::http::header::HeaderMap>,
) -> Result<(String, serde_json::Value), ApiError> {
    let ctx = state.model_ctx(&job.model)?;
    let gens = submit_all_with(state.backend.as_ref(), state.requests(job, request_id, headers), hints).await?;
    let version = gens.first().map(|g| g.version.clone()).unwrap_or_default();
    let meta = stream_meta(route, &job.model, &version);
    let results = collect_all(gens).await?;
    let usage = usage(job, &results);
    let json = match route {
        Route::Completions => serde_json::to_value(completion_body(meta, job, results, usage, ctx.codec.as_ref())),
        Route::Chat => serde_json::to_value(chat_body(meta, job, results, usage, ctx.codec.as_ref())),
    };
    let json = json.map_err(|e| ApiError::Generation(format!("encoding the response: {e}")))?;
    Ok((version, json))
}

/// One line of a batch job: an OpenAI request body for `url`, run without
/// streaming at batch priority. Returns the HTTP status and the body, errors
/// in OpenAI's shape.
pub async fn run_batch_line(state: &AppState, url: &str, body: &serde_json::Value, request_id: &str) -> (u16, serde_json::Value) {
    let route = match url {
        "/v1/completions" => Route::Completions,
        _ => Route::Chat,
    };
    let outcome = async {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::BadJson { param: None, message: e.to_string() })?;
        let mut job = parse_job(state, &bytes, route, Priority::Batch)?;
        // A batch line always answers with one JSON body.
        job.stream = false;
        run_to_json(state, &job, route, request_id, RouteHints::default(), None).await
    }
    .await;
    match outcome {
        Ok((_, json)) => (200, json),
        Err(e) => (e.status(Dialect::OpenAi).as_u16(), e.body(Dialect::OpenAi)),
    }
}

/// Prompt tokens once per prompt; completion tokens over every choice.
fn usage(job: &GenJob, results: &[Collected]) -> UsageBody {
    let prompt: usize = job.prompts.iter().map(Vec::len).sum();
    let completion: usize = results.iter().map(|r| r.usage.completion_tokens).sum();
    let cached: usize = results
        .iter()
        .step_by(job.n.max(1))
        .map(|r| r.usage.cached_tokens)
        .sum();
    UsageBody::new(prompt, completion, cached)
}

/// Legacy logprobs of one choice (`text_offset` counts characters).
pub fn completion_logprobs(
    tokens: &[TokenOut],
    codec: &dyn Codec,
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    for t in tokens {
        let text = codec.token_text(t.id);
        lp.text_offset.push(*offset);
        *offset += text.chars().count();
        lp.tokens.push(text);
        lp.token_logprobs.push(t.logprob);
        lp.top_logprobs.push(
            t.top
                .iter()
                .map(|&(id, l)| (codec.token_text(id), l))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    lp
}

/// Chat logprobs of some tokens.
pub fn chat_logprobs(tokens: &[TokenOut], codec: &dyn Codec) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let token = codec.token_text(t.id);
            let top_logprobs = t
                .top
                .iter()
                .map(|&(id, logprob)| {
                    let token = codec.token_text(id);
                    TopLogprob {
                        bytes: token.as_bytes().to_vec(),
                        token,
                        logprob,
                    }
                })
                .collect();
            TokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: t.logprob,
                top_logprobs,
            }
        })
        .collect();
    ChatLogprobs {
        content,
        refusal: None,
    }
}

fn completion_body(
    meta: StreamMeta,
    job: &GenJob,
    results: Vec<Collected>,
    usage: UsageBody,
    codec: &dyn Codec,
) -> CompletionBody {
    let want_logprobs = job.sampling.logprobs.is_some();
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let logprobs = want_logprobs.then(|| completion_logprobs(&r.tokens, codec, &mut 0));
            CompletionChoice {
                index,
                text: r.text,
                logprobs,
                finish_reason: Some(openai_finish(r.finish)),
            }
        })
        .collect();
    CompletionBody {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.fingerprint,
        choices,
        usage: Skip::Value(usage),
    }
}

fn chat_body(
    meta: StreamMeta,
    job: &GenJob,
    results: Vec<Collected>,
    usage: UsageBody,
    codec: &dyn Codec,
) -> ChatBody {
    let want_logprobs = job.sampling.logprobs.is_some();
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| ChatChoice {
            index,
            logprobs: want_logprobs.then(|| chat_logprobs(&r.tokens, codec)),
            message: ChatMessageBody {
                role: "assistant",
                content: r.text,
                refusal: None,
            },
            finish_reason: openai_finish(r.finish),
        })
        .collect();
    ChatBody {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.fingerprint,
        choices,
        usage,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use actix_web::http::StatusCode;
    use actix_web::test;
    use serde_json::{json, Value};

    use super::*;
    use crate::api::fake::{FakeBackend, FakeCodec, FAKE_MODEL};

    fn state(backend: Arc<FakeBackend>) -> web::Data<AppState> {
        let mut codecs: HashMap<String, Arc<dyn Codec>> = HashMap::new();
        codecs.insert(FAKE_MODEL.into(), Arc::new(FakeCodec));
        web::Data::new(AppState::new(
            backend,
            codecs,
            Some(FAKE_MODEL.into()),
            4096,
        ))
    }

    async fn post(
        backend: Arc<FakeBackend>,
        path: &str,
        body: Value,
    ) -> (StatusCode, actix_web::http::header::HeaderMap, Vec<u8>) {
        let app = test::init_service(crate::api::app(state(backend))).await;
        let req = test::TestRequest::post()
            .uri(path)
            .insert_header(("x-request-id", "rid-1"))
            .set_json(body)
            .to_request();
        let res = test::call_service(&app, req).await;
        let (status, headers) = (res.status(), res.headers().clone());
        (status, headers, test::read_body(res).await.to_vec())
    }

    #[actix_rt::test]
    async fn completion_with_n_and_logprobs() {
        let (status, headers, body) = post(
            Arc::default(),
            "/v1/completions",
            json!({"model": "fake", "prompt": "hey", "max_tokens": 3, "n": 2, "logprobs": 1}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(headers.get("x-request-id").unwrap(), "rid-1");
        assert_eq!(headers.get(VERSION_HEADER).unwrap(), "v1");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][0]["text"], "abc");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["choices"][0]["logprobs"]["tokens"],
            json!(["a", "b", "c"])
        );
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([0, 1, 2]));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], 6);
        assert_eq!(v["usage"]["total_tokens"], 9);
    }

    #[actix_rt::test]
    async fn chat_stream_shapes() {
        let body = json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}});
        let (status, headers, body) = post(Arc::default(), "/v1/chat/completions", body).await;
        assert_eq!(status, 200);
        assert_eq!(headers.get("content-type").unwrap(), "text/event-stream");
        let text = String::from_utf8(body).unwrap();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "a");
        assert_eq!(chunks[1]["usage"], Value::Null);
        let fin = &chunks[chunks.len() - 2];
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 2);
    }

    #[actix_rt::test]
    async fn errors_in_openai_shape() {
        let (status, _, body) = post(
            Arc::default(),
            "/v1/completions",
            json!({"model": "nope", "prompt": "a"}),
        )
        .await;
        assert_eq!(status, 404);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        let (status, _, body) = post(
            Arc::default(),
            "/v1/completions",
            json!({"model": "fake", "prompt": "a", "top_p": 5}),
        )
        .await;
        assert_eq!(status, 400);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["param"], "top_p");
        let big = "x".repeat(5000);
        let (status, _, _) = post(
            Arc::default(),
            "/v1/completions",
            json!({"model": "fake", "prompt": big}),
        )
        .await;
        assert_eq!(status, 413);
        let backend = Arc::new(FakeBackend::default());
        backend.overloaded.store(true, Ordering::SeqCst);
        let (status, headers, _) = post(
            backend,
            "/v1/completions",
            json!({"model": "fake", "prompt": "a"}),
        )
        .await;
        assert_eq!(status, 429);
        assert_eq!(headers.get("retry-after").unwrap(), "3");
    }
}
