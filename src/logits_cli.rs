//! `inferd logits` (hidden): run prompts given as token ids through a model
//! and write every position's logits as f32, so another program can compare
//! them with a reference (scripts/gpu/parity.py checks them against
//! transformers on the same device and dtype).
//!
//! The prompts come from a JSON file `{"prompts": [[1, 2, 3], ...]}` and run
//! three ways, each written to its own file:
//! - `batched`: all prompts prefilled together in one forward step;
//! - `single`: each prompt prefilled alone;
//! - `decode`: the first half of each prompt prefilled in one step, then the
//!   rest fed one token per step with all prompts batched (the decode path).
//!
//! Every file holds the rows of all prompts one after another
//! (`[sum of lengths, vocab]`, prompt `i` starting at `offsets[i]`), as a
//! `.npy` file or as raw little-endian f32 (`.f32`), and `meta.json` says
//! what is where, how long each mode took and how far the modes differ from
//! each other.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use inferd::model::loader::safetensors::SafetensorsWeights;
use inferd::model::{hf_config, source, KvCache, LogitsFor, Model, Placement, SeqInput};
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DType {
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

/// How the prompts are fed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    Batched,
    Single,
    Decode,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Single => "single",
            Mode::Decode => "decode",
        }
    }
}

/// Output file format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// NumPy `.npy` (version 1.0, `<f4`, C order).
    Npy,
    /// Raw little-endian f32 (`.f32`); the shape is in meta.json.
    Raw,
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// A .gguf file or a Hugging Face folder (config.json + safetensors; no tokenizer needed).
    #[arg(long)]
    model: PathBuf,
    /// JSON file `{"prompts": [[token ids], ...]}`.
    #[arg(long)]
    prompts: PathBuf,
    /// Folder for `<mode>.npy` (or `.f32`) and meta.json; created if missing.
    #[arg(long)]
    out: PathBuf,
    /// cpu or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DType,
    #[arg(long, value_enum, default_value = "npy")]
    format: Format,
    /// Which ways to run the prompts (comma list).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "batched,single,decode")]
    modes: Vec<Mode>,
    /// Token positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: i64,
}

fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(n) = s.strip_prefix("cuda:") else {
        bail!("--device must be cpu or cuda:N, got {s:?}");
    };
    let n: usize = n.parse().with_context(|| format!("--device: bad CUDA index in {s:?}"))?;
    ensure!(tch::Cuda::is_available(), "--device {s}: CUDA is not available (is libtorch_cuda.so on LD_LIBRARY_PATH?)");
    ensure!((n as i64) < tch::Cuda::device_count(), "--device {s}: only {} CUDA device(s)", tch::Cuda::device_count());
    Ok(Device::Cuda(n))
}

fn load_model(path: &Path, at: Placement) -> Result<Model> {
    // A Hugging Face folder needs no tokenizer here (the tiny parity models have none).
    if path.is_dir() {
        let cfg = hf_config::model_config_from_hf(path)?;
        let ws = SafetensorsWeights::open(path)?;
        return Ok(Model::from_source(&cfg, &ws, at, None)?);
    }
    let files = source::open(path)?;
    Ok(Model::from_source(&files.config, files.weights.as_ref(), at, None)?)
}

fn read_prompts(path: &Path, vocab: i64, max_context: i64) -> Result<Vec<Vec<i64>>> {
    #[derive(serde::Deserialize)]
    struct File {
        prompts: Vec<Vec<i64>>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: File = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(!file.prompts.is_empty(), "{}: no prompts", path.display());
    for (i, p) in file.prompts.iter().enumerate() {
        ensure!(!p.is_empty(), "prompt {i} is empty");
        ensure!(p.len() as i64 <= max_context, "prompt {i}: {} tokens exceed the context limit {max_context}", p.len());
        // An out-of-range id is a device-side assert on CUDA, which poisons the context.
        if let Some(t) = p.iter().find(|&&t| t < 0 || t >= vocab) {
            bail!("prompt {i}: token id {t} is outside the vocabulary of {vocab}");
        }
    }
    Ok(file.prompts)
}

/// Block tables for all prompts from one pool, handed out in descending order
/// so no table is a run of ascending ids.
fn block_tables(lens: &[usize], block_size: i64) -> (i64, Vec<Vec<i64>>) {
    let need: Vec<i64> = lens.iter().map(|&l| (l as i64 + block_size - 1) / block_size).collect();
    let total: i64 = need.iter().sum();
    let mut next = total;
    let tables = need
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    next -= 1;
                    next
                })
                .collect()
        })
        .collect();
    (total, tables)
}

fn seq(tokens: &[i64], start: usize, table: &[i64]) -> SeqInput {
    SeqInput { tokens: tokens.to_vec(), start_pos: start as i64, block_table: table.to_vec() }
}

/// Runs the prompts one way; returns one `[len, vocab]` f32 tensor per prompt on the CPU.
struct Runner<'a> {
    model: &'a Model,
    prompts: &'a [Vec<i64>],
    block_size: i64,
}

impl Runner<'_> {
    fn cache(&self) -> Result<(KvCache, Vec<Vec<i64>>)> {
        let lens: Vec<usize> = self.prompts.iter().map(Vec::len).collect();
        let (blocks, tables) = block_tables(&lens, self.block_size);
        let cache = self.model.new_cache(blocks, self.block_size).context("allocating the KV cache")?;
        Ok((cache, tables))
    }

    fn run(&self, mode: Mode) -> Result<Vec<Tensor>> {
        let out = match mode {
            Mode::Batched => self.batched(),
            Mode::Single => self.single(),
            Mode::Decode => self.decode(),
        }?;
        out.iter().map(|t| Ok(t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?)).collect()
    }

    fn batched(&self) -> Result<Vec<Tensor>> {
        let (mut cache, tables) = self.cache()?;
        let seqs: Vec<SeqInput> = self.prompts.iter().zip(&tables).map(|(p, t)| seq(p, 0, t)).collect();
        let all = self.model.forward(&seqs, &mut cache, LogitsFor::AllTokens)?;
        let mut rows = Vec::with_capacity(self.prompts.len());
        let mut at = 0i64;
        for p in self.prompts {
            rows.push(all.f_narrow(0, at, p.len() as i64)?);
            at += p.len() as i64;
        }
        Ok(rows)
    }

    fn single(&self) -> Result<Vec<Tensor>> {
        let (mut cache, tables) = self.cache()?;
        let mut rows = Vec::with_capacity(self.prompts.len());
        for (p, t) in self.prompts.iter().zip(&tables) {
            rows.push(self.model.forward(&[seq(p, 0, t)], &mut cache, LogitsFor::AllTokens)?);
        }
        Ok(rows)
    }

    fn decode(&self) -> Result<Vec<Tensor>> {
        let (mut cache, tables) = self.cache()?;
        let split: Vec<usize> = self.prompts.iter().map(|p| (p.len() / 2).max(1)).collect();
        let seqs: Vec<SeqInput> =
            self.prompts.iter().zip(&tables).zip(&split).map(|((p, t), &k)| seq(&p[..k], 0, t)).collect();
        let first = self.model.forward(&seqs, &mut cache, LogitsFor::AllTokens)?;
        let mut parts: Vec<Vec<Tensor>> = Vec::with_capacity(self.prompts.len());
        let mut at = 0i64;
        for &k in &split {
            parts.push(vec![first.f_narrow(0, at, k as i64)?]);
            at += k as i64;
        }
        let longest = self.prompts.iter().map(Vec::len).max().unwrap_or(0);
        for pos in split.iter().copied().min().unwrap_or(0)..longest {
            // Every prompt that has a token at `pos` and is past its prefill.
            let who: Vec<usize> =
                (0..self.prompts.len()).filter(|&i| pos >= split[i] && pos < self.prompts[i].len()).collect();
            if who.is_empty() {
                continue;
            }
            let step: Vec<SeqInput> =
                who.iter().map(|&i| seq(&self.prompts[i][pos..pos + 1], pos, &tables[i])).collect();
            let l = self.model.forward(&step, &mut cache, LogitsFor::LastToken)?;
            for (row, &i) in who.iter().enumerate() {
                parts[i].push(l.f_narrow(0, row as i64, 1)?);
            }
        }
        parts.iter().map(|p| Ok(Tensor::f_cat(p, 0)?)).collect()
    }
}

/// Write `[rows, vocab]` f32 as `.npy` (v1.0) or raw little-endian f32.
fn write_f32(path: &Path, data: &[f32], rows: usize, vocab: usize, format: Format) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    if let Format::Npy = format {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {vocab}), }}");
        // Magic (6) + version (2) + length (2) + dict, padded so the data starts 64-aligned.
        let unpadded = 10 + dict.len() + 1;
        let header = format!("{dict}{}\n", " ".repeat((64 - unpadded % 64) % 64));
        f.write_all(b"\x93NUMPY\x01\x00")?;
        f.write_all(&(header.len() as u16).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
    }
    for v in data {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()?;
    Ok(())
}

fn max_abs_diff(a: &[Tensor], b: &[Tensor]) -> Result<f64> {
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(b) {
        worst = worst.max(x.f_sub(y)?.f_abs()?.f_max()?.f_double_value(&[])?);
    }
    Ok(worst)
}

pub fn run(a: LogitsArgs) -> Result<()> {
    ensure!(a.block_size > 0, "--block-size must be at least 1");
    let device = parse_device(&a.device)?;
    let t0 = Instant::now();
    let model = load_model(&a.model, Placement { device, kind: a.dtype.kind(), gguf_blocks: false })
        .with_context(|| format!("loading {}", a.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size;
    let prompts = read_prompts(&a.prompts, vocab, model.max_context())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let offsets: Vec<usize> = lens.iter().scan(0, |acc, &l| { let o = *acc; *acc += l; Some(o) }).collect();
    let rows: usize = lens.iter().sum();
    let runner = Runner { model: &model, prompts: &prompts, block_size: a.block_size };
    let mut modes = a.modes.clone();
    modes.sort();
    modes.dedup();
    let ext = match a.format { Format::Npy => "npy", Format::Raw => "f32" };
    let mut results: BTreeMap<&str, Vec<Tensor>> = BTreeMap::new();
    let mut files = serde_json::Map::new();
    for mode in modes {
        let t = Instant::now();
        let out = runner.run(mode).with_context(|| format!("running the prompts ({})", mode.name()))?;
        let secs = t.elapsed().as_secs_f64();
        let all = Tensor::f_cat(&out, 0)?.f_contiguous()?;
        let data = Vec::<f32>::try_from(&all.f_flatten(0, -1)?)?;
        let file = format!("{}.{ext}", mode.name());
        write_f32(&a.out.join(&file), &data, rows, vocab as usize, a.format)?;
        files.insert(mode.name().into(), json!({ "file": file, "seconds": secs }));
        results.insert(mode.name(), out);
    }
    // How far the ways of feeding the prompts differ from each other.
    let mut agreement = serde_json::Map::new();
    let names: Vec<&str> = results.keys().copied().collect();
    for (i, x) in names.iter().enumerate() {
        for y in &names[i + 1..] {
            agreement.insert(format!("{x}_vs_{y}"), json!(max_abs_diff(&results[x], &results[y])?));
        }
    }
    let meta = json!({
        "model": a.model,
        "arch": format!("{:?}", model.config().arch),
        "device": a.device,
        "dtype": format!("{:?}", a.dtype).to_lowercase(),
        "format": ext,
        "element": "<f4",
        "shape": [rows, vocab],
        "vocab": vocab,
        "lengths": lens,
        "offsets": offsets,
        "block_size": a.block_size,
        "load_seconds": load_s,
        "modes": files,
        "max_abs_diff_between_modes": agreement,
    });
    let meta_path = a.out.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?).with_context(|| format!("writing {}", meta_path.display()))?;
    eprintln!(
        "logits: {} prompts ({rows} rows x {vocab}) on {} {:?} -> {}",
        prompts.len(),
        a.device,
        a.dtype,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_64_aligned_and_data_follows() {
        let dir = std::env::temp_dir().join(format!("inferd-logits-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        write_f32(&path, &[1.0, -2.5, 3.0, 0.5, 7.0, 8.0], 2, 3, Format::Npy).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'), "{header}");
        let data = &bytes[10 + hlen..];
        assert_eq!(data.len(), 6 * 4);
        assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), -2.5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn block_tables_cover_each_prompt_without_sharing() {
        let (total, tables) = block_tables(&[40, 1, 16, 17], 16);
        assert_eq!(total, 3 + 1 + 1 + 2);
        let mut all: Vec<i64> = tables.iter().flatten().copied().collect();
        assert_eq!(tables.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1, 1, 2]);
        all.sort();
        assert_eq!(all, (0..total).collect::<Vec<_>>());
    }
}
