//! `inferd bench`: a serving benchmark client for any OpenAI-compatible
//! server (inferd, vLLM, SGLang, llama-server...). It builds a workload
//! ([`workload`]), streams it through [`client`] at a pace set by
//! [`schedule`] — fixed concurrency or a constant/Poisson request rate, one
//! run per value when a list is given (a sweep) — turns the per-request
//! records into numbers ([`metrics`]) and writes a table, `bench.json` and PNG
//! plots ([`report`]).
//!
//! [`run`] is the CLI entry point; [`execute`] does the same and also returns
//! the results, for tests and for callers that check them.

pub mod cli;
pub mod client;
pub mod metrics;
pub mod report;
pub mod schedule;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

pub use cli::BenchArgs;
use client::{Client, ClientConfig};
use report::RunResult;
use schedule::Plan;
use workload::{TextMaker, WorkloadSpec};

/// Everything one `inferd bench` invocation produced.
pub struct BenchOutcome {
    pub runs: Vec<RunResult>,
    /// The document written to `json_path`.
    pub json: serde_json::Value,
    pub json_path: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Run the benchmark, print the table, write the JSON and plots.
pub fn run(args: BenchArgs) -> Result<()> {
    let outcome = execute(args)?;
    eprintln!("wrote {}", outcome.json_path.display());
    for p in &outcome.plots {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Like [`run`], returning the results. Builds its own tokio runtime, so it
/// must not be called from inside one.
pub fn execute(args: BenchArgs) -> Result<BenchOutcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(execute_async(args))
}

/// The sweep points: (concurrency, rate) per run, and the swept axis.
fn plans(args: &BenchArgs) -> Result<(Vec<(Option<usize>, Option<f64>)>, Option<&'static str>)> {
    if args.concurrency.contains(&0) {
        bail!("--concurrency must be at least 1");
    }
    if args
        .request_rate
        .iter()
        .any(|r| !(r.is_finite() && *r > 0.0))
    {
        bail!("--request-rate values must be positive numbers");
    }
    match (args.concurrency.as_slice(), args.request_rate.as_slice()) {
        ([], []) => Ok((vec![(Some(1), None)], None)),
        (cs, []) => Ok((
            cs.iter().map(|c| (Some(*c), None)).collect(),
            Some("concurrency"),
        )),
        ([], rs) => Ok((
            rs.iter().map(|r| (None, Some(*r))).collect(),
            Some("request_rate"),
        )),
        ([c], rs) => Ok((
            rs.iter().map(|r| (Some(*c), Some(*r))).collect(),
            Some("request_rate"),
        )),
        (cs, [r]) => Ok((
            cs.iter().map(|c| (Some(*c), Some(*r))).collect(),
            Some("concurrency"),
        )),
        _ => bail!("sweep either --concurrency or --request-rate, not both"),
    }
}

async fn execute_async(args: BenchArgs) -> Result<BenchOutcome> {
    if args.num_requests == 0 {
        bail!("--num-requests must be at least 1");
    }
    let (points, axis) = plans(&args)?;
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("INFERD_API_KEY").ok())
        .or_else(|| std::env::var("OPENAI_API_KEY").ok());
    let model = match &args.model {
        Some(m) => m.clone(),
        None => client::discover_model(&args, api_key.as_deref()).await?,
    };

    let maker = match &args.tokenizer {
        Some(p) => TextMaker::from_path(p)?,
        None => TextMaker::new(None),
    };
    let spec = WorkloadSpec {
        num_prompts: args.num_requests,
        input_len: args.input_len,
        output_len: args.output_len,
        shared_prefix_groups: args.shared_prefix_groups,
        shared_prefix_len: args.shared_prefix_len,
        seed: args.seed,
    };
    let prompts = Arc::new(match &args.dataset {
        Some(path) => workload::dataset(path, &spec, &maker)?,
        None => workload::synthetic(&spec, &maker),
    });

    let client = Arc::new(Client::new(ClientConfig {
        base_url: args.base_url.clone(),
        api: args.api,
        model: model.clone(),
        api_key,
        ignore_eos: !args.no_ignore_eos,
        stream_usage: !args.no_stream_usage,
        one_connection_per_request: args.one_connection_per_request,
        temperature: args.temperature,
        timeout: args.timeout,
    })?);

    let mut runs = Vec::with_capacity(points.len());
    for (concurrency, rate) in points {
        let plan = Plan {
            concurrency,
            rate,
            arrival: args.arrival,
            num_requests: args.num_requests,
            duration: args.duration,
            seed: args.seed,
        };
        let bar = progress_bar(&args, &plan);
        let out = schedule::run_plan(client.clone(), prompts.clone(), &plan, &bar).await;
        bar.finish_and_clear();
        let stats = metrics::compute(
            &out.records,
            out.wall_s,
            concurrency,
            rate,
            args.slo.as_ref(),
        );
        runs.push(RunResult {
            stats,
            records: out.records,
        });
    }

    print!("{}", report::table(&runs));
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("creating {}", args.output_dir.display()))?;
    let plots = if args.no_plots {
        Vec::new()
    } else {
        report::write_plots(&args.output_dir, &runs, axis)?
    };
    let json = document(&args, &model, axis, &runs, &plots);
    let json_path = report::write_json(&args.output_dir, &json)?;
    Ok(BenchOutcome {
        runs,
        json,
        json_path,
        plots,
    })
}

fn progress_bar(args: &BenchArgs, plan: &Plan) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(plan.num_requests as u64);
    // The template is a constant known to parse; fall back to the default style if not.
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(report::run_name(plan.concurrency, plan.rate));
    bar
}

/// The bench.json document (schema `inferd-bench/1`).
fn document(
    args: &BenchArgs,
    model: &str,
    axis: Option<&str>,
    runs: &[RunResult],
    plots: &[PathBuf],
) -> serde_json::Value {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "schema": "inferd-bench/1",
        "label": args.label,
        "finished_at_unix": started,
        "config": {
            "base_url": args.base_url,
            "api": args.api,
            "model": model,
            "arrival": args.arrival,
            "num_requests": args.num_requests,
            "duration_s": args.duration.map(|d| d.as_secs_f64()),
            "input_len": args.input_len,
            "output_len": args.output_len,
            "dataset": args.dataset.as_ref().map(|p| p.display().to_string()),
            "tokenizer": args.tokenizer.as_ref().map(|p| p.display().to_string()),
            "shared_prefix_groups": args.shared_prefix_groups,
            "shared_prefix_len": args.shared_prefix_len,
            "seed": args.seed,
            "temperature": args.temperature,
            "ignore_eos": !args.no_ignore_eos,
            "stream_usage": !args.no_stream_usage,
            "one_connection_per_request": args.one_connection_per_request,
            "slo": args.slo,
        },
        "sweep": axis,
        "runs": runs.iter().map(|r| {
            let mut v = serde_json::to_value(&r.stats).unwrap_or_default();
            v["name"] = json!(r.name());
            if args.save_detailed {
                v["requests"] = serde_json::to_value(&r.records).unwrap_or_default();
            }
            v
        }).collect::<Vec<_>>(),
        "plots": plots.iter().filter_map(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>(),
    })
}
