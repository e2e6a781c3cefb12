//! The HTTP side of the benchmark: one streaming request to an
//! OpenAI-compatible /v1/completions or /v1/chat/completions endpoint, read as
//! Server-Sent Events, timing the first content chunk and every chunk after it.
//! Token counts come from the stream's usage chunk when the server sends one
//! (`stream_options.include_usage`), else each content chunk counts as a token.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::cli::{Api, BenchArgs};
use super::workload::Prompt;

/// What happened to one request; times are seconds since the request was sent.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RequestRecord {
    /// Seconds from the start of the run to when this request was sent.
    pub start_s: f64,
    pub ok: bool,
    pub error: Option<String>,
    /// Time to first content chunk.
    pub ttft_s: f64,
    /// Time to the end of the stream.
    pub e2e_s: f64,
    /// Gaps between consecutive content chunks.
    pub itl_s: Vec<f64>,
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Whether the token counts came from the server's usage chunk.
    pub usage_reported: bool,
    /// Shared-prefix group of the prompt, when any.
    pub group: Option<usize>,
}

/// Settings for building requests, taken from the flags.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub base_url: String,
    pub api: Api,
    pub model: String,
    pub api_key: Option<String>,
    pub ignore_eos: bool,
    pub stream_usage: bool,
    pub one_connection_per_request: bool,
    pub temperature: f64,
    pub timeout: Duration,
}

/// A shareable client: reqwest's pool (or none) plus the request settings.
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    url: String,
}

/// Build the reqwest client. With one connection per request the pool keeps no
/// idle connection, so every request dials anew, and `Connection: close` asks
/// the server not to hold the socket either.
fn http_client(one_per_request: bool, timeout: Duration) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(30));
    if one_per_request {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().context("building the HTTP client")
}

/// Ask GET /v1/models for the first model's id (used when --model is absent).
pub async fn discover_model(args: &BenchArgs, api_key: Option<&str>) -> Result<String> {
    let http = http_client(true, Duration::from_secs(30))?;
    let url = format!("{}/v1/models", args.base_url.trim_end_matches('/'));
    let mut req = http.get(&url);
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let v: Value = req
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("GET {url} lists no model; pass --model"))
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client> {
        let http = http_client(cfg.one_connection_per_request, cfg.timeout)?;
        let path = match cfg.api {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        };
        let url = format!("{}{}", cfg.base_url.trim_end_matches('/'), path);
        Ok(Client { http, cfg, url })
    }

    /// The JSON body for one prompt.
    pub fn body(&self, p: &Prompt) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "max_tokens": p.max_tokens,
            "temperature": self.cfg.temperature,
            "stream": true,
        });
        match self.cfg.api {
            Api::Completions => body["prompt"] = json!(p.text()),
            Api::Chat => body["messages"] = json!(p.messages),
        }
        if self.cfg.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if self.cfg.stream_usage {
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    /// Send one prompt and time its stream. Never fails: errors are recorded.
    pub async fn send(&self, p: &Prompt, run_start: Instant) -> RequestRecord {
        let sent = Instant::now();
        let mut rec = RequestRecord {
            start_s: sent.duration_since(run_start).as_secs_f64(),
            input_tokens: p.input_tokens,
            group: p.group,
            ..Default::default()
        };
        if let Err(e) = self.stream(p, sent, &mut rec).await {
            rec.ok = false;
            rec.error = Some(format!("{e:#}"));
        }
        // `stream` sets E2E at `[DONE]`; a stream that just ends (or fails) ends now.
        if rec.e2e_s == 0.0 {
            rec.e2e_s = sent.elapsed().as_secs_f64();
        }
        rec
    }

    async fn stream(&self, p: &Prompt, sent: Instant, rec: &mut RequestRecord) -> Result<()> {
        let mut req = self.http.post(&self.url).json(&self.body(p));
        if let Some(k) = &self.cfg.api_key {
            req = req.bearer_auth(k);
        }
        if self.cfg.one_connection_per_request {
            req = req.header(reqwest::header::CONNECTION, "close");
        }
        let resp = req.send().await.context("sending")?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            );
        }
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunks = 0usize;
        let mut last: Option<Instant> = None;
        let mut done = false;
        while let Some(piece) = body.next().await {
            let piece = piece.context("reading the stream")?;
            let now = Instant::now();
            buf.extend_from_slice(&piece);
            // Events end with a blank line; a network read may hold several or half of one.
            while let Some((end, sep)) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end + sep).collect();
                match parse_event(&event[..end])? {
                    Event::Done if !done => {
                        done = true;
                        rec.e2e_s = now.duration_since(sent).as_secs_f64();
                    }
                    Event::Done => {}
                    Event::Ignore => {}
                    Event::Data { has_content, usage } => {
                        if has_content {
                            chunks += 1;
                            match last {
                                None => rec.ttft_s = now.duration_since(sent).as_secs_f64(),
                                Some(prev) => {
                                    rec.itl_s.push(now.duration_since(prev).as_secs_f64())
                                }
                            }
                            last = Some(now);
                        }
                        if let Some((prompt, completion)) = usage {
                            rec.input_tokens = prompt;
                            rec.output_tokens = completion;
                            rec.usage_reported = true;
                        }
                    }
                }
            }
            // After `[DONE]` the body is still read to its end: dropping it early
            // would make the client close the connection instead of reusing it.
        }
        if !rec.usage_reported {
            rec.output_tokens = chunks;
        }
        if chunks == 0 {
            anyhow::bail!("the stream carried no content");
        }
        rec.ok = true;
        Ok(())
    }
}

/// Where the first event in `buf` ends: (index of the blank line, its length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

enum Event {
    Done,
    Ignore,
    Data {
        has_content: bool,
        usage: Option<(usize, usize)>,
    },
}

/// Read one SSE event: its `data:` lines joined, `[DONE]` ends the stream, an
/// `error` object fails the request.
fn parse_event(raw: &[u8]) -> Result<Event> {
    let text = String::from_utf8_lossy(raw);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return Ok(Event::Ignore);
    }
    let data = data.join("\n");
    if data.trim() == "[DONE]" {
        return Ok(Event::Done);
    }
    let v: Value = serde_json::from_str(&data).with_context(|| format!("bad SSE data: {data}"))?;
    if let Some(err) = v.get("error") {
        anyhow::bail!("server error in stream: {err}");
    }
    let choice = v.pointer("/choices/0");
    let content = choice.and_then(|c| {
        c.get("text")
            .or_else(|| c.pointer("/delta/content"))
            .or_else(|| c.pointer("/delta/reasoning_content"))
            .and_then(Value::as_str)
    });
    let usage = v.get("usage").filter(|u| !u.is_null()).and_then(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).map(|x| x as usize);
        Some((n("prompt_tokens")?, n("completion_tokens")?))
    });
    Ok(Event::Data {
        has_content: content.is_some_and(|s| !s.is_empty()),
        usage,
    })
}
