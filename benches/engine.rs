//! The serving benchmark, in process: SmolLM2-135M in bf16 on the CPU behind
//! the whole engine (router, batcher, worker, `TchExecutor`), 128-token
//! prompts and 128 output tokens each (ignore_eos), at 1, 4, 16 and 64
//! concurrent requests. Reports output tokens/s (prefill included, as a
//! client sees it), mean time to first token, and at batch 64 the fraction
//! of step time spent outside the model forward (the engine's own overhead:
//! scheduling, sampling, messages). Prints a table and writes
//! benches/results/engine-<dtype>.json (INFERD_BENCH_DTYPE, default f32 as in config/default.toml;
//! INFERD_BENCH_LEVELS=1,4 runs a subset); benches/transformers_engine.py runs the same
//! workload through transformers for the ratios.
//!
//! A plain `main` (harness = false): one run per level is long enough on 2
//! cores, and criterion's repetitions would take many minutes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use inferd::exec::executor::TchExecutor;
use inferd_actors::engine::{
    Engine, EngineConfig, ExecutorFactory, ModelDeployment, RequestHandle,
};
use inferd_actors::executor::{ModelSpec, Quantization};
use inferd_actors::request::{Event, GenerateRequest, ReplicaStats};
use inferd_actors::sampler::SamplingParams;
use inferd_actors::sequence::Priority;
use serde_json::json;

const GGUF: &str = "weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL: &str = "smollm2";
const PROMPT_TOKENS: usize = 128;
const OUTPUT_TOKENS: usize = 128;
const LEVELS: [usize; 4] = [1, 4, 16, 64];
/// 64 sequences of 256 positions hold 16k positions of 30 layers x 2 x 3 KV
/// heads x 64: 377 MiB in bf16, 754 MiB in f32. Room to spare, so nothing is
/// preempted and both dtypes do the same work.
const KV_BUDGET_BYTES: u64 = 1 << 30;

struct Level {
    concurrency: usize,
    wall_secs: f64,
    tokens_per_sec: f64,
    mean_ttft_secs: f64,
    steps: u64,
    step_secs: f64,
    forward_secs: f64,
}

/// Distinct prompts (no shared prefix, so the prefix cache never helps):
/// pseudo-random ids in the ordinary-word range of the vocabulary.
fn prompt(n: usize) -> Vec<u32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (0..PROMPT_TOKENS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1000 + (x % 30_000) as u32
        })
        .collect()
}

fn request(n: usize, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        model: MODEL.into(),
        prompt: prompt(n),
        max_tokens,
        sampling: SamplingParams::default(),
        stop: vec![],
        stop_token_ids: vec![],
        ignore_eos: true,
        priority: Priority::Interactive,
        request_id: format!("bench-{n}"),
        deadline: None,
        use_cache: false,
    }
}

/// Returns (output tokens, time to first token).
async fn drain(mut h: RequestHandle, start: Instant) -> Result<(usize, f64), String> {
    let mut tokens = 0;
    let mut ttft = 0.0;
    while let Some(ev) = h.events.recv().await {
        match ev {
            Event::Token { .. } => {
                if tokens == 0 {
                    ttft = start.elapsed().as_secs_f64();
                }
                tokens += 1;
            }
            Event::Done { .. } => return Ok((tokens, ttft)),
            Event::Error { message } => return Err(message),
        }
    }
    Err("stream closed without Done".into())
}

async fn stats(engine: &Engine) -> ReplicaStats {
    engine
        .stats()
        .await
        .into_iter()
        .find(|s| s.model == MODEL)
        .unwrap_or_default()
}

async fn level(engine: &Engine, concurrency: usize, first_prompt: usize) -> Result<Level, String> {
    let before = stats(engine).await;
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..concurrency {
        handles.push(
            engine
                .submit(request(first_prompt + i, OUTPUT_TOKENS))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let outs = join_all(handles.into_iter().map(|h| drain(h, start))).await;
    let wall_secs = start.elapsed().as_secs_f64();
    let after = stats(engine).await;
    let mut tokens = 0;
    let mut ttft = 0.0;
    for o in outs {
        let (n, t) = o?;
        tokens += n;
        ttft += t;
    }
    Ok(Level {
        concurrency,
        wall_secs,
        tokens_per_sec: tokens as f64 / wall_secs,
        mean_ttft_secs: ttft / concurrency as f64,
        steps: after.steps - before.steps,
        step_secs: after.step_secs - before.step_secs,
        forward_secs: after.forward_secs - before.forward_secs,
    })
}

/// The served dtype: f32 (config/default.toml's) unless `INFERD_BENCH_DTYPE` says otherwise.
fn dtype() -> String {
    std::env::var("INFERD_BENCH_DTYPE").unwrap_or_else(|_| "f32".into())
}

/// The concurrency levels: `INFERD_BENCH_LEVELS=1,4` runs a subset.
fn levels() -> Vec<usize> {
    std::env::var("INFERD_BENCH_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| LEVELS.to_vec())
}

async fn bench() -> Result<Vec<Level>, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let deployment = ModelDeployment {
        spec: ModelSpec {
            name: MODEL.into(),
            version: "v1".into(),
            source: root.join(GGUF),
            dtype: dtype(),
            kv_budget_bytes: KV_BUDGET_BYTES,
            block_size: 16,
            max_context: Some(2048),
            quantization: Quantization::None,
        },
        devices: vec!["cpu".into()],
        max_num_seqs: 64,
        max_batched_tokens: 2048,
        enable_prefix_caching: true,
        max_queue_requests: 1024,
        max_queue_tokens: 1 << 20,
    };
    let factory: ExecutorFactory<TchExecutor> = Arc::new(|device: &str| TchExecutor::new(device));
    let engine = Engine::start(
        EngineConfig {
            devices: vec!["cpu".into()],
            models: vec![deployment],
        },
        factory,
    );
    engine.wait_ready(Duration::from_secs(300)).await?;
    // Warm-up: libtorch's first calls allocate and pick kernels.
    level(&engine, 2, 10_000).await?;
    let mut results = Vec::new();
    let mut next_prompt = 0;
    for c in levels() {
        let l = level(&engine, c, next_prompt).await?;
        next_prompt += c;
        println!(
            "{:>11} {:>9.1} {:>13.1} {:>10.3} {:>7} {:>10.1} {:>10.1}",
            l.concurrency,
            l.wall_secs,
            l.tokens_per_sec,
            l.mean_ttft_secs,
            l.steps,
            1000.0 * l.step_secs / l.steps.max(1) as f64,
            1000.0 * l.forward_secs / l.steps.max(1) as f64
        );
        results.push(l);
    }
    Ok(results)
}

fn main() {
    println!(
        "SmolLM2-135M {} on CPU ({} threads), {PROMPT_TOKENS} prompt + {OUTPUT_TOKENS} output tokens per request",
        dtype(),
        tch::get_num_threads()
    );
    println!(
        "{:>11} {:>9} {:>13} {:>10} {:>7} {:>10} {:>10}",
        "concurrency", "wall (s)", "output tok/s", "TTFT (s)", "steps", "step (ms)", "fwd (ms)"
    );
    let results = match actix_rt::System::new().block_on(bench()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    };
    let Some(b64) = results.iter().find(|l| l.concurrency == 64) else {
        return;
    };
    let outside_forward = if b64.step_secs > 0.0 {
        1.0 - b64.forward_secs / b64.step_secs
    } else {
        f64::NAN
    };
    let outside_steps = 1.0 - b64.step_secs / b64.wall_secs;
    println!(
        "batch 64: {:.1}% of step time outside the model forward (forward {:.2}s of {:.2}s in steps); {:.1}% of wall time between steps",
        100.0 * outside_forward,
        b64.forward_secs,
        b64.step_secs,
        100.0 * outside_steps
    );
    let report = json!({
        "engine": "inferd",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
        "dtype": dtype(),
        "device": "cpu",
        "threads": tch::get_num_threads(),
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "levels": results.iter().map(|l| json!({
            "concurrency": l.concurrency,
            "wall_secs": l.wall_secs,
            "output_tokens_per_sec": l.tokens_per_sec,
            "mean_ttft_secs": l.mean_ttft_secs,
            "steps": l.steps,
            "step_secs": l.step_secs,
            "forward_secs": l.forward_secs,
        })).collect::<Vec<_>>(),
        "batch64_step_fraction_outside_forward": outside_forward,
        "batch64_wall_fraction_between_steps": outside_steps,
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(dir.join(format!("engine-{}.json", dtype())), format!("{report:#}\n")));
    let file = dir.join(format!("engine-{}.json", dtype()));
    match written {
        Ok(()) => println!("wrote {}", file.display()),
        Err(e) => eprintln!("could not write {}: {e}", file.display()),
    }
}
