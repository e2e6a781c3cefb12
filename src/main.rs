//! The `inferd` command line: `inferd generate` runs one prompt through a
//! model and streams the text to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use inferd::exec::sampler::SamplingParams;
use inferd::generate::{generate, GenerateRequest};
use inferd::model::chat_template::ChatMessage;
use inferd::model::{source, Model, Placement};
use tch::{Device, Kind};

#[derive(Parser)]
#[command(name = "inferd", version, about = "An actor-system LLM serving engine on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt, streaming it to stdout.
    Generate(GenerateArgs),
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
}

fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        let n: usize = n.parse().with_context(|| format!("--device: bad CUDA index in {s:?}"))?;
        if !tch::Cuda::is_available() {
            bail!("--device {s}: CUDA is not available on this machine");
        }
        if n as i64 >= tch::Cuda::device_count() {
            bail!("--device {s}: only {} CUDA device(s)", tch::Cuda::device_count());
        }
        return Ok(Device::Cuda(n));
    }
    bail!("--device must be cpu or cuda:N, got {s:?}")
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let t0 = Instant::now();
    let files = source::open(&a.model)?;
    let model = Model::from_source(&files.config, files.weights.as_ref(), Placement { device, kind: a.dtype.kind() }, None)?;
    drop(files.weights);
    let tok = files.tokenizer;
    eprintln!("loaded {} ({:?}, {} layers) on {} in {:.2}s", a.model.display(), model.config().arch, model.config().num_layers, a.device, t0.elapsed().as_secs_f64());
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
        sampling: SamplingParams { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, seed: a.seed, ..SamplingParams::default() },
        ignore_eos: false,
        stop: a.stop,
    };
    let mut stdout = std::io::stdout();
    let out = generate(&model, &tok, &req, |piece| {
        // A closed stdout (e.g. `| head`) is not worth a panic; ignore it.
        let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(a) => run_generate(a),
    }
}
