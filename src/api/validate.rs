//! Parse, don't validate: raw JSON bodies become a typed [`GenJob`] here,
//! once, or an [`ApiError`] naming the field and its limit. Deeper layers
//! never re-check. The prompt is tokenized here too (chat template for
//! messages), because the context check needs its length.

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd_actors::request::GenerateRequest;
use inferd_actors::sampler::{SamplingParams, MAX_LOGPROBS};
use inferd_actors::sequence::Priority;
use serde::de::DeserializeOwned;

use super::backend::ModelLimits;
use super::codec::Codec;
use super::errors::ApiError;
use super::openai_types::{ContentField, LogprobsField, PromptField, RawRequest, StopField};
use crate::model::chat_template::ChatMessage;

/// Most completions per prompt (`n`).
pub const MAX_N: usize = 16;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most prompts in one completions request.
pub const MAX_PROMPTS: usize = 64;
/// Default `max_tokens` on `/v1/completions` (OpenAI's).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// Which OpenAI route a body came to (they differ in prompt and logprobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Completions,
    Chat,
}

/// A served model as validation needs it.
#[derive(Clone)]
pub struct ModelCtx {
    pub codec: Arc<dyn Codec>,
    pub limits: ModelLimits,
}

/// A validated generation request: `prompts.len() * n` engine submissions.
#[derive(Debug, Clone)]
pub struct GenJob {
    pub model: String,
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Interactive for HTTP callers, Batch for batch-job lines.
    pub priority: Priority,
    /// The request's own time limit (`timeout`); the server default applies
    /// when absent (see `with_defaults`).
    pub timeout: Option<Duration>,
    /// Deterministic requests may be answered from the response cache
    /// (off with the `x-inferd-cache: bypass` header).
    pub use_cache: bool,
}

impl GenJob {
    /// The engine requests, prompt-major: choice `i * n + j` is prompt `i`,
    /// sample `j`, seeded `seed + j` when a seed was given.
    pub fn requests(&self, request_id: &str) -> Vec<GenerateRequest> {
        let mut out = Vec::with_capacity(self.prompts.len() * self.n);
        // One deadline for every choice: the request as a whole is timed.
        let deadline = self.timeout.map(|t| Instant::now() + t);
        for prompt in &self.prompts {
            for j in 0..self.n {
                let mut sampling = self.sampling.clone();
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(j as u64));
                out.push(GenerateRequest {
                    model: self.model.clone(),
                    prompt: prompt.clone(),
                    max_tokens: self.max_tokens,
                    sampling,
                    stop: self.stop.clone(),
                    stop_token_ids: Vec::new(),
                    ignore_eos: self.ignore_eos,
                    priority: self.priority,
                    request_id: request_id.to_string(),
                    deadline,
                    use_cache: self.use_cache,
                });
            }
        }
        out
    }
}

/// JSON into `T`, naming the path of a mistyped field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::BadJson {
                param: None,
                message: format!("invalid JSON body: {inner}"),
            }
        } else {
            ApiError::BadJson {
                message: format!("invalid value for `{path}`: {inner}"),
                param: Some(path),
            }
        }
    })
}

fn int_in(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(
            field,
            format!("{field} must be in [{lo}, {hi}], got {v}"),
        ))
    }
}

/// The model name, checked against the served ones.
pub fn model_name(
    raw: Option<&str>,
    lookup: &dyn Fn(&str) -> Result<ModelCtx, ApiError>,
) -> Result<(String, ModelCtx), ApiError> {
    let name = raw.ok_or_else(|| ApiError::invalid("model", "model is required"))?;
    Ok((name.to_string(), lookup(name)?))
}

/// An OpenAI body into a [`GenJob`].
pub fn openai(
    raw: RawRequest,
    route: Route,
    lookup: &dyn Fn(&str) -> Result<ModelCtx, ApiError>,
) -> Result<GenJob, ApiError> {
    let (model, ctx) = model_name(raw.model.as_deref(), lookup)?;
    let (prompts, prompt_field) = match route {
        Route::Completions => (completion_prompts(raw.prompt.as_ref(), &ctx)?, "prompt"),
        Route::Chat => (
            vec![chat_prompt(raw.messages.as_deref(), &ctx)?],
            "messages",
        ),
    };
    let n = int_in("n", raw.n.unwrap_or(1), 1, MAX_N as i64)? as usize;
    let logprobs = logprobs(&raw, route)?;
    if raw.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    let top_k = match raw.top_k {
        None | Some(-1) => None,
        Some(k) => Some(int_in("top_k", k, 1, u32::MAX as i64)? as u32),
    };
    let mut logit_bias = Vec::new();
    for (key, &bias) in raw.logit_bias.iter().flatten() {
        let id = key.parse::<u32>().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias keys must be token ids, got {key:?}"),
            )
        })?;
        logit_bias.push((id, bias as f32));
    }
    let sampling = SamplingParams {
        temperature: raw.temperature.unwrap_or(1.0) as f32,
        top_k,
        top_p: raw.top_p.unwrap_or(1.0) as f32,
        min_p: raw.min_p.unwrap_or(0.0) as f32,
        repetition_penalty: raw.repetition_penalty.unwrap_or(1.0) as f32,
        presence_penalty: raw.presence_penalty.unwrap_or(0.0) as f32,
        frequency_penalty: raw.frequency_penalty.unwrap_or(0.0) as f32,
        logit_bias,
        seed: raw.seed.map(|s| s as u64),
        logprobs,
    };
    sampling
        .validate(ctx.limits.vocab_size)
        .map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    let stop = stops(raw.stop.as_ref())?;
    let requested = match route {
        Route::Completions => raw.max_tokens,
        Route::Chat => raw.max_completion_tokens.or(raw.max_tokens),
    };
    let field = if route == Route::Chat && raw.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_tokens = max_tokens(
        requested,
        field,
        route,
        longest,
        prompt_field,
        ctx.limits.max_context,
    )?;
    let stream = raw.stream.unwrap_or(false);
    let include_usage = stream
        && raw
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(GenJob {
        model,
        prompts,
        n,
        max_tokens,
        sampling,
        stop,
        ignore_eos: raw.ignore_eos.unwrap_or(false),
        stream,
        include_usage,
        priority: Priority::Interactive,
        timeout: timeout(raw.timeout)?,
        use_cache: true,
    })
}

/// Longest `timeout` a request may ask for (a day).
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// The `timeout` field: positive seconds, at most [`MAX_TIMEOUT_SECS`].
pub fn timeout(secs: Option<f64>) -> Result<Option<Duration>, ApiError> {
    match secs {
        None => Ok(None),
        Some(s) if s > 0.0 && s <= MAX_TIMEOUT_SECS => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(ApiError::invalid(
            "timeout",
            format!("timeout must be in (0, {MAX_TIMEOUT_SECS}] seconds, got {s}"),
        )),
    }
}

/// `max_tokens` checked against the context left after the longest prompt.
pub fn max_tokens(
    requested: Option<i64>,
    field: &str,
    route: Route,
    prompt: usize,
    prompt_field: &'static str,
    limit: usize,
) -> Result<usize, ApiError> {
    let max = match requested {
        Some(v) => int_in(field, v, 1, limit as i64)? as usize,
        None if route == Route::Completions => DEFAULT_COMPLETION_TOKENS,
        None => limit.saturating_sub(prompt).max(1),
    };
    if prompt + max > limit {
        return Err(ApiError::ContextLength {
            param: prompt_field,
            prompt,
            max_tokens: max,
            limit,
        });
    }
    Ok(max)
}

fn logprobs(raw: &RawRequest, route: Route) -> Result<Option<u32>, ApiError> {
    let max = MAX_LOGPROBS as i64;
    match (route, raw.logprobs) {
        (Route::Completions, None) => Ok(None),
        (Route::Completions, Some(LogprobsField::Count(n))) => {
            Ok(Some(int_in("logprobs", n, 0, max)? as u32))
        }
        (Route::Completions, Some(LogprobsField::Flag(_))) => Err(ApiError::invalid(
            "logprobs",
            "logprobs must be an integer in [0, 20] on /v1/completions",
        )),
        (Route::Chat, Some(LogprobsField::Count(_))) => Err(ApiError::invalid(
            "logprobs",
            "logprobs must be a boolean on /v1/chat/completions",
        )),
        (Route::Chat, flag) => {
            let on = matches!(flag, Some(LogprobsField::Flag(true)));
            match raw.top_logprobs {
                Some(_) if !on => Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs requires logprobs: true",
                )),
                Some(k) => Ok(Some(int_in("top_logprobs", k, 0, max)? as u32)),
                None if on => Ok(Some(0)),
                None => Ok(None),
            }
        }
    }
}

fn stops(raw: Option<&StopField>) -> Result<Vec<String>, ApiError> {
    let stop = match raw {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop takes at most {MAX_STOP} sequences, got {}",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(stop)
}

fn token_ids(ids: &[i64], vocab: usize) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&id| {
            if id >= 0 && (id as usize) < vocab {
                Ok(id as u32)
            } else {
                Err(ApiError::invalid(
                    "prompt",
                    format!("prompt token ids must be in [0, {vocab}), got {id}"),
                ))
            }
        })
        .collect()
}

fn completion_prompts(
    raw: Option<&PromptField>,
    ctx: &ModelCtx,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |s: &str| {
        ctx.codec
            .encode(s)
            .map_err(|e| ApiError::invalid("prompt", e))
    };
    let vocab = ctx.limits.vocab_size;
    let prompts = match raw.ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))? {
        PromptField::Text(s) => vec![encode(s)?],
        PromptField::Texts(v) => v.iter().map(|s| encode(s)).collect::<Result<_, _>>()?,
        PromptField::Tokens(ids) => vec![token_ids(ids, vocab)?],
        PromptField::TokenLists(v) => v
            .iter()
            .map(|ids| token_ids(ids, vocab))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt must hold 1 to {MAX_PROMPTS} prompts, got {}",
                prompts.len()
            ),
        ));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    Ok(prompts)
}

/// Messages into the chat template's input.
pub fn chat_messages(
    raw: Option<&[super::openai_types::RawMessage]>,
) -> Result<Vec<ChatMessage>, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::invalid("messages", "messages is required"))?;
    if raw.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must hold at least 1 message",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, m)| {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(ApiError::invalid(format!("messages[{i}].role"), format!("messages[{i}].role must be system, developer, user, assistant or tool, got {:?}", m.role)));
            }
            let content = match &m.content {
                None => String::new(),
                Some(ContentField::Text(s)) => s.clone(),
                Some(ContentField::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            _ => return Err(ApiError::invalid(format!("messages[{i}].content"), format!("only text content parts are supported, got {:?}", p.kind))),
                        }
                    }
                    text
                }
            };
            let role = if m.role == "developer" { "system" } else { m.role.as_str() };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn chat_prompt(
    raw: Option<&[super::openai_types::RawMessage]>,
    ctx: &ModelCtx,
) -> Result<Vec<u32>, ApiError> {
    let messages = chat_messages(raw)?;
    let ids = ctx
        .codec
        .encode_chat(&messages)
        .map_err(|e| ApiError::invalid("messages", e))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages render to an empty prompt",
        ));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::FakeCodec;

    fn lookup(name: &str) -> Result<ModelCtx, ApiError> {
        if name == "m" {
            Ok(ModelCtx {
                codec: Arc::new(FakeCodec),
                limits: ModelLimits {
                    max_context: 64,
                    vocab_size: 300,
                },
            })
        } else {
            Err(ApiError::UnknownModel(name.to_string()))
        }
    }

    fn job(body: &str, route: Route) -> Result<GenJob, ApiError> {
        openai(parse_json(body.as_bytes())?, route, &lookup)
    }

    #[test]
    fn completion_defaults() {
        let j = job(r#"{"model":"m","prompt":"abc"}"#, Route::Completions).unwrap();
        assert_eq!(j.prompts, vec![vec![97, 98, 99]]);
        assert_eq!((j.n, j.max_tokens), (1, DEFAULT_COMPLETION_TOKENS));
        assert_eq!(j.sampling.temperature, 1.0);
    }

    #[test]
    fn seeds_follow_n() {
        let j = job(
            r#"{"model":"m","prompt":["a","b"],"n":2,"seed":7}"#,
            Route::Completions,
        )
        .unwrap();
        let seeds: Vec<_> = j
            .requests("r")
            .iter()
            .map(|r| (r.prompt.clone(), r.sampling.seed))
            .collect();
        assert_eq!(
            seeds,
            vec![
                (vec![97], Some(7)),
                (vec![97], Some(8)),
                (vec![98], Some(7)),
                (vec![98], Some(8))
            ]
        );
    }

    #[test]
    fn errors_name_field_and_limit() {
        let cases = [
            (
                r#"{"model":"m","prompt":"a","temperature":3}"#,
                "temperature",
                "[0, 2]",
            ),
            (r#"{"model":"m","prompt":"a","n":99}"#, "n", "[1, 16]"),
            (r#"{"model":"m","prompt":"a","top_p":0}"#, "top_p", "(0, 1]"),
            (
                r#"{"model":"m","prompt":"a","logprobs":21}"#,
                "logprobs",
                "[0, 20]",
            ),
            (
                r#"{"model":"m","prompt":"a","stop":["a","b","c","d","e"]}"#,
                "stop",
                "at most 4",
            ),
            (
                r#"{"model":"m","prompt":"a","logit_bias":{"999":1}}"#,
                "logit_bias token id",
                "300",
            ),
            (
                r#"{"model":"m","prompt":"a","max_tokens":0}"#,
                "max_tokens",
                "[1, 64]",
            ),
            (
                r#"{"model":"m","prompt":"a","temperature":"hot"}"#,
                "temperature",
                "invalid",
            ),
        ];
        for (body, field, limit) in cases {
            let e = job(body, Route::Completions).unwrap_err();
            let b = e.body(crate::api::errors::Dialect::OpenAi);
            assert_eq!(b["error"]["param"], field, "{body}: {b}");
            assert!(
                b["error"]["message"].as_str().unwrap().contains(limit),
                "{body}: {b}"
            );
        }
    }

    #[test]
    fn context_overflow_names_both_numbers() {
        let e = job(
            r#"{"model":"m","prompt":"0123456789","max_tokens":60}"#,
            Route::Completions,
        )
        .unwrap_err();
        assert_eq!(
            e,
            ApiError::ContextLength {
                param: "prompt",
                prompt: 10,
                max_tokens: 60,
                limit: 64
            }
        );
    }

    #[test]
    fn chat_fields() {
        let j = job(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":2,"max_completion_tokens":5}"#, Route::Chat).unwrap();
        assert_eq!(j.sampling.logprobs, Some(2));
        assert_eq!(j.max_tokens, 5);
        let e = job(
            r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#,
            Route::Chat,
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::Invalid { ref field, .. } if field == "messages[0].role"));
        let e = job(r#"{"model":"x","messages":[]}"#, Route::Chat).unwrap_err();
        assert_eq!(e, ApiError::UnknownModel("x".into()));
    }
}
