//! The `inferd` command line: `inferd serve` runs the HTTP API over the
//! actor engine (config in TOML, see `config/default.toml`); `inferd
//! generate` runs one prompt through a model and streams the text to stdout.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use inferd::api::codec::{Codec, Codecs, TokenizerCodec};
use inferd::api::engine_backend::EngineBackend;
use inferd::api::model_manager::ModelManager;
use inferd::api::AppState;
use inferd::config::Config;
use inferd::exec::executor::TchExecutor;
use inferd::exec::sampler::SamplingParams;
use inferd::generate::{generate, GenerateRequest};
use inferd::model::chat_template::ChatMessage;
use inferd::model::{source, Model, Placement};
use tch::{Device, Kind};

mod logits_cli;

#[derive(Parser)]
#[command(
    name = "inferd",
    version,
    about = "An actor-system LLM serving engine on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (OpenAI, TGI, WebSocket) over the engine.
    Serve(ServeArgs),
    /// Generate text for one prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Benchmark an OpenAI-compatible server (throughput, TTFT, TPOT, ITL, goodput).
    Bench(inferd::bench::BenchArgs),
    /// Manage the models of a running server (list, load, activate, rollback, canary, unload, remove).
    Models(inferd::models_cli::ModelsArgs),
    /// API keys: print the hash of a key for the keys file, or make a new key.
    Keys(inferd::serve_ops::KeysArgs),
    /// Write a model's logits for token id prompts (parity checks, scripts/gpu/parity.py).
    #[command(hide = true)]
    Logits(logits_cli::LogitsArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The server config (TOML).
    #[arg(long, default_value = "config/default.toml")]
    config: PathBuf,
    /// Overrides [server] host.
    #[arg(long)]
    host: Option<String>,
    /// Overrides [server] port (0 = any free port; the bound address is printed).
    #[arg(long)]
    port: Option<u16>,
    /// Serve without API keys on a non-loopback host (overrides
    /// [auth] allow_unauthenticated; the server still warns at start).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Exit when stdin reaches end of file (tests: the server dies with its parent).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
        }
    }
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A .gguf file or a Hugging Face folder (config.json + safetensors + tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Raw prompt text (no chat template).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// Optional system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// cpu or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DType,
    /// Keep a GGUF file's Q4_0/Q4_1/Q8_0 weights in their blocks (`quantization
    /// = "gguf"` in a config; bf16 on a CPU with AVX512_BF16).
    #[arg(long)]
    gguf_blocks: bool,
}

fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        let n: usize = n
            .parse()
            .with_context(|| format!("--device: bad CUDA index in {s:?}"))?;
        if !tch::Cuda::is_available() {
            bail!("--device {s}: CUDA is not available on this machine");
        }
        if n as i64 >= tch::Cuda::device_count() {
            bail!(
                "--device {s}: only {} CUDA device(s)",
                tch::Cuda::device_count()
            );
        }
        return Ok(Device::Cuda(n));
    }
    bail!("--device must be cpu or cuda:N, got {s:?}")
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    if a.gguf_blocks && (a.dtype.kind() != Kind::BFloat16 || device != Device::Cpu) {
        bail!("--gguf-blocks runs on the CPU in bf16: pass --dtype bf16 --device cpu");
    }
    let t0 = Instant::now();
    let files = source::open(&a.model)?;
    let model = Model::from_source(
        &files.config,
        files.weights.as_ref(),
        Placement {
            device,
            kind: a.dtype.kind(),
            gguf_blocks: a.gguf_blocks,
        },
        None,
    )?;
    drop(files.weights);
    let tok = files.tokenizer;
    if a.gguf_blocks {
        let (kept, all) = model.quantized_projections();
        eprintln!("{kept} of {all} projections kept in their GGUF blocks");
    }
    eprintln!(
        "loaded {} ({:?}, {} layers) on {} in {:.2}s",
        a.model.display(),
        model.config().arch,
        model.config().num_layers,
        a.device,
        t0.elapsed().as_secs_f64()
    );
    let prompt_ids = match (&a.prompt, &a.chat) {
        (Some(p), _) => tok.encode(p, true)?,
        (None, Some(c)) => {
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(ChatMessage::new("system", s.clone()));
            }
            msgs.push(ChatMessage::new("user", c.clone()));
            let text = tok.apply_chat_template(&msgs, true)?;
            tok.encode(&text, false)?
        }
        (None, None) => bail!("give --prompt or --chat"),
    };
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            seed: a.seed,
            ..SamplingParams::default()
        },
        ignore_eos: false,
        stop: a.stop,
    };
    let mut stdout = std::io::stdout();
    let out = generate(&model, &tok, &req, |piece| {
        // A closed stdout (e.g. `| head`) is not worth a panic; ignore it.
        let _ = stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush());
    })?;
    println!();
    println!(
        "[prompt {} tokens, generated {} tokens ({:?}), first token {:.0} ms, decode {:.1} tokens/s, seed {}]",
        out.prompt_tokens,
        out.tokens.len(),
        out.finish,
        out.prefill.as_secs_f64() * 1e3,
        out.decode_tokens_per_sec(),
        out.seed
    );
    Ok(())
}

/// How long `serve` waits for the models to load before reporting it.
const LOAD_REPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

fn run_serve(a: ServeArgs) -> Result<()> {
    let mut cfg = Config::load(&a.config)?;
    cfg.apply_env(|k| std::env::var(k).ok())?;
    if a.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    if let Some(h) = a.host {
        cfg.server.host = h;
    }
    if let Some(p) = a.port {
        cfg.server.port = p;
    }
    cfg.auth.allow_unauthenticated |= a.allow_unauthenticated;
    inferd::serve_ops::init_logs(&cfg.log);
    let access = inferd::serve_ops::access(&mut cfg)?;
    // The edge tokenizes prompts itself: one tokenizer per served model
    // (models added at run time get theirs from the model manager).
    let mut codecs: HashMap<String, Arc<dyn Codec>> = HashMap::new();
    for (name, version, v) in cfg.active() {
        let codec = TokenizerCodec::open(&v.source).map_err(|e| {
            anyhow::anyhow!("model `{name}` ({version}): opening {}: {e}", v.source.display())
        })?;
        codecs.insert(name.to_string(), Arc::new(codec));
    }
    let codecs = Arc::new(Codecs::new(codecs));
    let config_dir = a.config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let listener = TcpListener::bind((cfg.server.host.as_str(), cfg.server.port))
        .with_context(|| format!("binding {}:{}", cfg.server.host, cfg.server.port))?;
    let engine_config = cfg.engine_config();
    let default_model = cfg.default_model().map(str::to_string);
    let max_body = cfg.server.max_body_bytes;
    let opts = inferd::api::ServeOptions {
        data_dir: cfg.server.data_dir.clone(),
        batch_concurrency: cfg.server.batch_concurrency,
        access,
        shutdown_grace: std::time::Duration::from_secs_f64(cfg.server.shutdown_grace_secs),
    };
    let default_timeout = cfg.request_timeout();
    let response_cache_bytes = cfg.server.response_cache_mb << 20;
    // Before the engine starts, so the first replica's series are recorded.
    if let Err(e) = inferd::api::metrics::install() {
        tracing::warn!("/metrics disabled: {e}");
    }
    actix_rt::System::new().block_on(async move {
        let factory: inferd_actors::engine::ExecutorFactory<TchExecutor> =
            Arc::new(|device: &str| TchExecutor::new(device));
        let engine = inferd_actors::engine::Engine::start(engine_config, factory);
        engine.set_response_cache_bytes(response_cache_bytes as usize);
        let manager = Arc::new(ModelManager::new(
            engine.clone(),
            codecs.clone(),
            &cfg,
            &config_dir,
        ));
        manager.register_configured();
        let watcher = engine.clone();
        let restorer = manager.clone();
        actix_rt::spawn(async move {
            let t0 = Instant::now();
            match watcher.wait_ready(LOAD_REPORT_AFTER).await {
                Ok(()) => tracing::info!("models ready in {:.1}s", t0.elapsed().as_secs_f64()),
                Err(e) => tracing::error!("models failed to load: {e}"),
            }
            // The persisted active versions and canaries (routing.json).
            restorer.restore_persisted().await;
        });
        let backend = Arc::new(EngineBackend::new(engine, manager.restoring_flag()));
        let mut state = AppState::with_codecs(backend, codecs, default_model, max_body);
        state.default_timeout = default_timeout;
        inferd::api::serve(listener, state, manager, opts).await
    })?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => run_serve(a),
        Command::Generate(a) => run_generate(a),
        Command::Bench(a) => inferd::bench::run(a),
        Command::Models(a) => inferd::models_cli::run(a),
        Command::Logits(a) => logits_cli::run(a),
        Command::Keys(a) => inferd::serve_ops::run_keys(a),
    }
}
