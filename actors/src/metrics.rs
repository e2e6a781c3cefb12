//! The engine's Prometheus metrics, recorded through the `metrics` facade (the
//! root crate installs the Prometheus recorder and serves `/metrics`; without
//! a recorder every call is a no-op, so unit tests pay nothing). The names are
//! a contract with dashboards, autoscalers and alerts: deploy/metrics.txt is
//! the canonical list, and tests/deploy_static.rs checks it against this file.
//!
//! Every series is labelled `model` and `version`; the replica gauges and
//! the step histograms add `device` (one replica per device). Handles are resolved once per replica,
//! so the per-token cost is an atomic add, not a registry lookup.

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::recent::{Recent, RecentStats};
use crate::request::Finish;

pub const TTFT: &str = "inferd_time_to_first_token_seconds";
pub const ITL: &str = "inferd_inter_token_latency_seconds";
pub const E2E: &str = "inferd_e2e_request_latency_seconds";
pub const QUEUE: &str = "inferd_request_queue_seconds";
pub const PROMPT_TOKENS: &str = "inferd_request_prompt_tokens";
pub const GENERATION_TOKENS: &str = "inferd_request_generation_tokens";
pub const REQUESTS: &str = "inferd_requests_total";
pub const ERRORS: &str = "inferd_request_errors_total";
pub const PROMPT_TOKENS_TOTAL: &str = "inferd_prompt_tokens_total";
pub const GENERATION_TOKENS_TOTAL: &str = "inferd_generation_tokens_total";
pub const PREFIX_QUERIES: &str = "inferd_prefix_cache_queries_total";
pub const PREFIX_HITS: &str = "inferd_prefix_cache_hits_total";
pub const PREEMPTIONS: &str = "inferd_preemptions_total";
pub const RUNNING: &str = "inferd_requests_running";
pub const WAITING: &str = "inferd_requests_waiting";
pub const KV_USAGE: &str = "inferd_kv_cache_usage_ratio";
pub const BATCH_SIZE: &str = "inferd_batch_size";
pub const MODELS_LOADED: &str = "inferd_models_loaded";
pub const RESPONSE_CACHE_HITS: &str = "inferd_response_cache_hits_total";
pub const STEP_FORWARD: &str = "inferd_step_forward_seconds";
pub const STEP_SAMPLE: &str = "inferd_step_sample_seconds";

/// The latency histograms' buckets, in seconds (a CPU token can take a
/// second at batch 64, a GPU one a few milliseconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// The step histograms' buckets, in seconds: sampling one sequence takes
/// tens of microseconds, a CPU forward of 64 sequences a second.
pub const STEP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2,
    2.5, 5.0, 10.0,
];
/// The length histograms' buckets, in tokens.
pub const LENGTH_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    32768.0, 65536.0, 131072.0,
];

/// Why a request ended without a result (`type` of the error counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Refused at admission: the model's queue was full (HTTP 429).
    Rejected,
    /// Refused at admission: the request broke a limit (HTTP 400).
    Invalid,
    /// Cancelled by the caller (or a WebSocket cancel).
    Cancelled,
    /// The client went away mid-generation.
    Disconnected,
    /// Its deadline passed.
    Timeout,
    /// A step failed, the replica was lost or unloaded.
    Failed,
}

impl ErrorType {
    pub fn label(self) -> &'static str {
        match self {
            ErrorType::Rejected => "rejected",
            ErrorType::Invalid => "invalid",
            ErrorType::Cancelled => "cancelled",
            ErrorType::Disconnected => "disconnected",
            ErrorType::Timeout => "timeout",
            ErrorType::Failed => "failed",
        }
    }
}

/// Count one refused or failed request of `model`/`version`.
pub fn count_error(model: &str, version: &str, kind: ErrorType) {
    counter!(ERRORS, "model" => model.to_string(), "version" => version.to_string(), "type" => kind.label())
        .increment(1);
}

/// Count a request of `model`/`version` answered from the response cache.
pub fn count_cache_hit(model: &str, version: &str) {
    counter!(RESPONSE_CACHE_HITS, "model" => model.to_string(), "version" => version.to_string()).increment(1);
}

fn finish_label(f: Finish) -> &'static str {
    match f {
        Finish::Eos => "eos",
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// One replica's resolved handles.
pub struct ReplicaMetrics {
    model: String,
    version: String,
    device: String,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prompt_len: Histogram,
    generation_len: Histogram,
    step_forward: Histogram,
    step_sample: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    prefix_queries: Counter,
    prefix_hits: Counter,
    preemptions: Counter,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    batch_size: Gauge,
    loaded: Gauge,
    /// The same events, kept for `/stats` (totals and windowed percentiles).
    recent: parking_lot::Mutex<Recent>,
}

impl ReplicaMetrics {
    pub fn new(model: &str, version: &str, device: &str) -> ReplicaMetrics {
        let (m, v, d) = (model.to_string(), version.to_string(), device.to_string());
        let mv = [("model", m.clone()), ("version", v.clone())];
        let mvd = [("model", m.clone()), ("version", v.clone()), ("device", d.clone())];
        ReplicaMetrics {
            ttft: histogram!(TTFT, &mv),
            itl: histogram!(ITL, &mv),
            e2e: histogram!(E2E, &mv),
            queue: histogram!(QUEUE, &mv),
            prompt_len: histogram!(PROMPT_TOKENS, &mv),
            generation_len: histogram!(GENERATION_TOKENS, &mv),
            step_forward: histogram!(STEP_FORWARD, &mvd),
            step_sample: histogram!(STEP_SAMPLE, &mvd),
            prompt_tokens: counter!(PROMPT_TOKENS_TOTAL, &mv),
            generation_tokens: counter!(GENERATION_TOKENS_TOTAL, &mv),
            prefix_queries: counter!(PREFIX_QUERIES, &mv),
            prefix_hits: counter!(PREFIX_HITS, &mv),
            preemptions: counter!(PREEMPTIONS, &mv),
            running: gauge!(RUNNING, &mvd),
            waiting: gauge!(WAITING, &mvd),
            kv_usage: gauge!(KV_USAGE, &mvd),
            batch_size: gauge!(BATCH_SIZE, &mvd),
            loaded: gauge!(MODELS_LOADED, &mvd),
            recent: parking_lot::Mutex::new(Recent::default()),
            model: m,
            version: v,
            device: d,
        }
    }

    pub fn set_loaded(&self, loaded: bool) {
        self.loaded.set(if loaded { 1.0 } else { 0.0 });
    }

    pub fn set_load(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.running.set(running as f64);
        self.waiting.set(waiting as f64);
        self.kv_usage.set(kv_usage);
    }

    /// A step of `seqs` sequences started; the block manager's running
    /// totals grew by these deltas since the last step.
    pub fn step(&self, seqs: usize, prefix_queries: u64, prefix_hits: u64, preemptions: u64) {
        self.batch_size.set(seqs as f64);
        self.prefix_queries.increment(prefix_queries);
        self.prefix_hits.increment(prefix_hits);
        self.preemptions.increment(preemptions);
    }

    /// A step's time on its worker: the model forward (with the logits'
    /// copy to the host) and the sampling of its sequences.
    pub fn step_timed(&self, forward_secs: f64, sample_secs: f64) {
        self.step_forward.record(forward_secs);
        self.step_sample.record(sample_secs);
    }

    pub fn queued(&self, waited: Duration) {
        self.queue.record(waited.as_secs_f64());
    }

    pub fn first_token(&self, ttft: Duration) {
        self.ttft.record(ttft.as_secs_f64());
        self.recent.lock().first_token(ttft);
    }

    pub fn next_token(&self, gap: Duration) {
        self.itl.record(gap.as_secs_f64());
        self.recent.lock().next_token(gap);
    }

    /// Totals since start and percentiles over the last minute.
    pub fn recent(&self) -> RecentStats {
        self.recent.lock().snapshot(std::time::Instant::now())
    }

    /// A request finished with a result.
    pub fn finished(&self, finish: Finish, e2e: Duration, prompt: usize, generated: usize) {
        self.e2e.record(e2e.as_secs_f64());
        self.recent.lock().finished(e2e, prompt, generated);
        self.prompt_len.record(prompt as f64);
        self.generation_len.record(generated as f64);
        self.prompt_tokens.increment(prompt as u64);
        self.generation_tokens.increment(generated as u64);
        counter!(REQUESTS, "model" => self.model.clone(), "version" => self.version.clone(), "finish_reason" => finish_label(finish))
            .increment(1);
    }

    /// A request of this replica ended with an error; its tokens so far
    /// still count as generated work.
    pub fn failed(&self, kind: ErrorType, prompt: usize, generated: usize) {
        self.prompt_tokens.increment(prompt as u64);
        self.generation_tokens.increment(generated as u64);
        self.recent.lock().failed(prompt, generated);
        count_error(&self.model, &self.version, kind);
    }

    pub fn device(&self) -> &str {
        &self.device
    }
}
