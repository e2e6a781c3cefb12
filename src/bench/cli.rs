//! The `inferd bench` command line: what to send (workload), how fast
//! (concurrency or request rate, bounded by a count and a duration), to whom
//! (any OpenAI-compatible server) and where to write the results. The small
//! value parsers (length ranges, durations, SLOs) live here too, because they
//! are only ever fed from flags.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

/// Which OpenAI endpoint to stream from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// POST /v1/completions with a text prompt.
    Completions,
    /// POST /v1/chat/completions with messages.
    Chat,
}

/// How request start times are spread when a rate is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly spaced, 1/rate apart.
    Constant,
    /// Exponential gaps (a Poisson process), seeded.
    Poisson,
}

/// `inferd bench`: load-test an OpenAI-compatible server.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Server base URL (without /v1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// Endpoint to stream from.
    #[arg(long, value_enum, default_value_t = Api::Completions)]
    pub api: Api,
    /// Model name sent in each request; asked from GET /v1/models when absent.
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token; OPENAI_API_KEY / INFERD_API_KEY are read when absent.
    #[arg(long)]
    pub api_key: Option<String>,

    /// Concurrent requests in flight; a comma list (1,4,16) makes a sweep.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Requests per second; a comma list (2,4,8) makes a sweep. With a single
    /// --concurrency it is also capped by that.
    #[arg(long, value_delimiter = ',')]
    pub request_rate: Vec<f64>,
    /// Arrival process for --request-rate.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// Requests per run (the run stops earlier if --duration passes).
    #[arg(long, default_value_t = 100)]
    pub num_requests: usize,
    /// Stop sending new requests after this long (e.g. 60s, 2m); in-flight ones finish.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "600s")]
    pub timeout: Duration,

    /// Prompt length in tokens: `128` or a uniform range `64..256`.
    #[arg(long, value_parser = parse_len, default_value = "128")]
    pub input_len: LenSpec,
    /// Output length (max_tokens): `128` or a uniform range `32..256`.
    #[arg(long, value_parser = parse_len, default_value = "128")]
    pub output_len: LenSpec,
    /// JSONL of prompts: {"prompt": ..} or {"messages": [..]} or ShareGPT
    /// {"conversations": [..]}, with optional "max_tokens"/"output_len".
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// A .gguf file or Hugging Face folder whose tokenizer sizes prompts exactly.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Number of groups sharing a system prompt (0 = no shared prefix).
    #[arg(long, default_value_t = 0)]
    pub shared_prefix_groups: usize,
    /// Length in tokens of each group's shared prefix.
    #[arg(long, default_value_t = 512)]
    pub shared_prefix_len: usize,
    /// Seed for prompts, lengths and Poisson arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature sent with every request.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,

    /// Do not send `ignore_eos: true` (for servers that reject unknown fields).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Do not ask for `stream_options.include_usage`; tokens are then counted as chunks.
    #[arg(long)]
    pub no_stream_usage: bool,
    /// Open a fresh connection for every request (no keep-alive reuse);
    /// llama-server drops reused keep-alive connections under load.
    #[arg(long)]
    pub one_connection_per_request: bool,

    /// Goodput SLOs, e.g. `ttft=100ms,tpot=20ms,e2e=500ms`.
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<Slo>,
    /// Folder for bench.json and the PNG plots.
    #[arg(long, default_value = "bench-results")]
    pub output_dir: PathBuf,
    /// Free-form label stored in the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Skip the PNG plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Also write every request (send time, TTFT, E2E, inter-token gaps,
    /// token counts, prefix group) into bench.json under `runs[].requests`.
    #[arg(long)]
    pub save_detailed: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// A length in tokens: fixed, or uniform within inclusive bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LenSpec {
    pub min: usize,
    pub max: usize,
}

impl LenSpec {
    pub fn fixed(n: usize) -> LenSpec {
        LenSpec { min: n, max: n }
    }
}

/// Parse `128`, `64..256` or `64-256`.
pub fn parse_len(s: &str) -> Result<LenSpec> {
    let s = s.trim();
    let split = s.split_once("..").or_else(|| s.split_once('-'));
    let spec = match split {
        Some((a, b)) => LenSpec {
            min: a
                .trim()
                .parse()
                .with_context(|| format!("bad length `{a}`"))?,
            max: b
                .trim()
                .trim_start_matches('=')
                .parse()
                .with_context(|| format!("bad length `{b}`"))?,
        },
        None => LenSpec::fixed(s.parse().with_context(|| format!("bad length `{s}`"))?),
    };
    if spec.min > spec.max {
        bail!("length range `{s}` has min > max");
    }
    Ok(spec)
}

/// Parse `250ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().with_context(|| format!("bad duration `{s}`"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => bail!("bad duration unit `{u}` in `{s}` (use ms, s, m, h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration `{s}`");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Service-level objectives a request must all meet to count for goodput,
/// in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

/// Parse `ttft=100ms,tpot=20ms,e2e=500ms` (a bare number means ms).
pub fn parse_slo(s: &str) -> Result<Slo> {
    let mut slo = Slo::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("SLO `{part}` is not key=value"))?;
        let v = v.trim();
        // A bare number is read as milliseconds, the unit every SLO is quoted in.
        let ms = if v.chars().all(|c| c.is_ascii_digit() || c == '.') {
            v.parse::<f64>()
                .with_context(|| format!("bad SLO value `{v}`"))?
        } else {
            parse_duration(v)?.as_secs_f64() * 1e3
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "ttft" => slo.ttft_ms = Some(ms),
            "tpot" => slo.tpot_ms = Some(ms),
            "e2e" | "e2el" => slo.e2e_ms = Some(ms),
            other => bail!("unknown SLO `{other}` (use ttft, tpot, e2e)"),
        }
    }
    Ok(slo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lengths_durations_and_slos() {
        assert_eq!(parse_len("128").unwrap(), LenSpec::fixed(128));
        assert_eq!(parse_len("64..256").unwrap(), LenSpec { min: 64, max: 256 });
        assert_eq!(parse_len("64-256").unwrap(), LenSpec { min: 64, max: 256 });
        assert!(parse_len("9..3").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
        let slo = parse_slo("ttft=100ms,e2e=0.5s,tpot=20").unwrap();
        assert_eq!(
            slo,
            Slo {
                ttft_ms: Some(100.0),
                tpot_ms: Some(20.0),
                e2e_ms: Some(500.0)
            }
        );
        assert!(parse_slo("latency=3ms").is_err());
    }
}
