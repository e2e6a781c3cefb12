//! A GGUF file seen through Hugging Face names, and its [`ModelConfig`].
//!
//! llama.cpp renames every tensor (`blk.0.attn_q.weight`) and, for the LLaMA
//! architecture, permutes the rows of the Q and K projections to suit its rope
//! kernel; GPT-2's Conv1D weights are stored as plain linear `[out, in]`
//! matrices. [`GgufWeights`] undoes all of this so the model code receives
//! exactly what it would from the model's safetensors: HF names, HF layouts,
//! HF rope order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::gguf::GgufFile;
use super::dequant::GgmlType;
use super::{LoadError, QuantRows, WeightSource};
use crate::model::config::{Arch, ModelConfig, RopeScaling};

/// What to do to a GGUF tensor to get the HF one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fixup {
    None,
    /// Undo llama.cpp's rope permutation with this many heads.
    Unpermute(i64),
    /// GPT-2 Conv1D: GGUF `[out, in]` -> HF `[in, out]`.
    Transpose,
}

/// HF-named, HF-shaped access to the tensors of a GGUF file.
pub struct GgufWeights {
    file: GgufFile,
    arch: Arch,
    /// HF name -> (GGUF name, fixup).
    names: BTreeMap<String, (String, Fixup)>,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("file", &self.file)
            .field("arch", &self.arch)
            .finish()
    }
}

fn arch_of(gguf: &GgufFile) -> Result<Arch, LoadError> {
    match gguf.architecture()? {
        "llama" => Ok(Arch::Llama),
        "qwen2" => Ok(Arch::Qwen2),
        "gpt2" => Ok(Arch::Gpt2),
        other => Err(LoadError::Unsupported {
            path: gguf.path.clone(),
            reason: format!("GGUF architecture `{other}` (supported: llama, qwen2, gpt2)"),
        }),
    }
}

/// Per-layer GGUF tensor stem -> HF module path, for LLaMA and Qwen2.
const LLAMA_LAYER: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Per-layer GGUF tensor stem -> (HF module path, is a Conv1D), for GPT-2.
const GPT2_LAYER: &[(&str, &str, bool)] = &[
    ("attn_norm", "ln_1", false),
    ("attn_qkv", "attn.c_attn", true),
    ("attn_output", "attn.c_proj", true),
    ("ffn_norm", "ln_2", false),
    ("ffn_up", "mlp.c_fc", true),
    ("ffn_down", "mlp.c_proj", true),
];

/// The HF name and fixup of one GGUF tensor, `None` for tensors the HF model
/// has no counterpart for (such as llama.cpp's `rope_freqs.weight`).
fn hf_name(arch: Arch, gguf_name: &str, n_head: i64, n_kv_head: i64) -> Option<(String, Fixup)> {
    let (stem, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match (arch, stem) {
        (Arch::Gpt2, "token_embd") => Some("transformer.wte"),
        (Arch::Gpt2, "position_embd") => Some("transformer.wpe"),
        (Arch::Gpt2, "output_norm") => Some("transformer.ln_f"),
        (_, "token_embd") => Some("model.embed_tokens"),
        (_, "output_norm") => Some("model.norm"),
        (_, "output") => Some("lm_head"),
        _ => None,
    };
    if let Some(top) = top {
        return Some((format!("{top}.{suffix}"), Fixup::None));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    match arch {
        Arch::Gpt2 => {
            let &(_, module, conv) = GPT2_LAYER.iter().find(|e| e.0 == part)?;
            let fix = if conv && suffix == "weight" {
                Fixup::Transpose
            } else {
                Fixup::None
            };
            Some((format!("transformer.h.{layer}.{module}.{suffix}"), fix))
        }
        Arch::Llama | Arch::Qwen2 => {
            let &(_, module) = LLAMA_LAYER.iter().find(|e| e.0 == part)?;
            // llama.cpp's converter permutes Q/K (weights and biases) of the
            // llama architecture only; Qwen2 is stored in HF order.
            let fix = match (arch, part) {
                (Arch::Llama, "attn_q") => Fixup::Unpermute(n_head),
                (Arch::Llama, "attn_k") => Fixup::Unpermute(n_kv_head),
                _ => Fixup::None,
            };
            Some((format!("model.layers.{layer}.{module}.{suffix}"), fix))
        }
    }
}

/// Undo llama.cpp's `reshape(n_head, 2, d/n_head/2, *rest).swapaxes(1, 2)`
/// on the first dim of `w` (torch order, `[out, ...]`).
pub fn unpermute_rows(w: &Tensor, n_head: i64) -> Result<Tensor, tch::TchError> {
    let shape = w.size();
    let mut split = vec![n_head, shape[0] / n_head / 2, 2];
    split.extend_from_slice(&shape[1..]);
    w.f_reshape(split.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(shape.as_slice())
}

/// Apply llama.cpp's permutation (the converter's direction); the inverse of
/// [`unpermute_rows`], used by tests.
pub fn permute_rows(w: &Tensor, n_head: i64) -> Result<Tensor, tch::TchError> {
    let shape = w.size();
    let mut split = vec![n_head, 2, shape[0] / n_head / 2];
    split.extend_from_slice(&shape[1..]);
    w.f_reshape(split.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(shape.as_slice())
}

impl GgufWeights {
    /// Open a GGUF file and index its tensors by HF name.
    pub fn open(path: &Path) -> Result<GgufWeights, LoadError> {
        GgufWeights::new(GgufFile::open(path)?)
    }

    pub fn new(file: GgufFile) -> Result<GgufWeights, LoadError> {
        let arch = arch_of(&file)?;
        let (n_head, n_kv_head) = match arch {
            Arch::Gpt2 => (1, 1),
            _ => {
                let key = format!("{}.attention.head_count", file.architecture()?);
                let h = file.meta_u64(&key)? as i64;
                let kv_key = format!("{key}_kv");
                let kv = if file.metadata.contains_key(&kv_key) {
                    file.meta_u64(&kv_key)? as i64
                } else {
                    h
                };
                (h, kv)
            }
        };
        let mut names = BTreeMap::new();
        for info in file.tensor_infos() {
            if let Some((hf, fix)) = hf_name(arch, &info.name, n_head, n_kv_head) {
                // Check now that the permutation can be undone, so load() never
                // reshapes into a bad split.
                if let Fixup::Unpermute(h) = fix {
                    let rows = info.dims.last().copied().unwrap_or(0) as i64;
                    if h <= 0 || rows == 0 || rows % (2 * h) != 0 {
                        return Err(LoadError::Format {
                            path: file.path.clone(),
                            format: "GGUF",
                            reason: format!(
                                "tensor `{}`: {rows} rows do not split into {h} heads of rope pairs",
                                info.name
                            ),
                        });
                    }
                }
                if matches!(fix, Fixup::Transpose) && info.dims.len() != 2 {
                    return Err(LoadError::Format {
                        path: file.path.clone(),
                        format: "GGUF",
                        reason: format!(
                            "tensor `{}`: Conv1D weight has dims {:?}, expected 2",
                            info.name, info.dims
                        ),
                    });
                }
                names.insert(hf, (info.name.clone(), fix));
            }
        }
        Ok(GgufWeights { file, arch, names })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The model's configuration from the file's metadata.
    pub fn config(&self) -> Result<ModelConfig, LoadError> {
        model_config(&self.file)
    }

    /// All HF tensor names present, sorted.
    pub fn hf_names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(|s| s.as_str())
    }

    /// The GGUF name behind an HF name.
    pub fn gguf_name(&self, hf: &str) -> Option<&str> {
        self.names.get(hf).map(|(g, _)| g.as_str())
    }
}

impl WeightSource for GgufWeights {
    fn load(&self, name: &str) -> Result<Tensor, LoadError> {
        let (gguf_name, fix) = self
            .names
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.file.path.clone(),
                tensor: name.to_string(),
            })?;
        let t = self.file.load_tensor(gguf_name)?;
        let torch = |source| LoadError::Torch {
            path: self.file.path.clone(),
            source,
        };
        match *fix {
            Fixup::None => Ok(t),
            Fixup::Unpermute(h) => unpermute_rows(&t, h).map_err(torch),
            Fixup::Transpose => t.f_tr().and_then(|t| t.f_contiguous()).map_err(torch),
        }
    }

    fn load_quant(&self, name: &str) -> Result<Option<QuantRows>, LoadError> {
        let Some((gguf_name, fix)) = self.names.get(name) else {
            return Err(LoadError::MissingTensor { path: self.file.path.clone(), tensor: name.to_string() });
        };
        let info = self.file.tensor_info(gguf_name).ok_or_else(|| LoadError::MissingTensor {
            path: self.file.path.clone(),
            tensor: name.to_string(),
        })?;
        let ty = info.ggml_type;
        let shape = info.torch_shape();
        if !matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) || shape.len() != 2 || *fix == Fixup::Transpose {
            return Ok(None);
        }
        let (n, k) = (shape[0], shape[1]);
        let mut rows = QuantRows { ty, n, k, data: self.file.tensor_bytes(gguf_name)?.to_vec() };
        if rows.data.len() != n as usize * rows.row_bytes() {
            return Err(LoadError::Format {
                path: self.file.path.clone(),
                format: "GGUF",
                reason: format!("tensor `{gguf_name}`: {} bytes do not hold {n} rows of {k} {ty} values", rows.data.len()),
            });
        }
        if let Fixup::Unpermute(h) = *fix {
            // The permutation moves whole rows, so it applies to the blocks as
            // bytes just as to the values.
            let torch = |source| LoadError::Torch { path: self.file.path.clone(), source };
            let bytes = Tensor::f_from_slice(&rows.data)
                .and_then(|t| t.f_reshape([n, rows.row_bytes() as i64]))
                .and_then(|t| unpermute_rows(&t, h))
                .and_then(|t| t.f_contiguous())
                .map_err(torch)?;
            bytes.f_copy_data_u8(&mut rows.data, bytes.numel()).map_err(torch)?;
        }
        Ok(Some(rows))
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        let (gguf_name, fix) = self.names.get(name)?;
        let mut shape = self.file.tensor_info(gguf_name)?.torch_shape();
        if *fix == Fixup::Transpose {
            shape.reverse();
        }
        Some(shape)
    }

    fn origin(&self) -> PathBuf {
        self.file.path.clone()
    }
}

/// Read [`ModelConfig`] from GGUF metadata (`{arch}.embedding_length`, ...).
pub fn model_config(gguf: &GgufFile) -> Result<ModelConfig, LoadError> {
    let arch = arch_of(gguf)?;
    let p = gguf.architecture()?;
    let key = |k: &str| format!("{p}.{k}");
    let has = |k: &str| gguf.metadata.contains_key(k);
    let int = |k: &str| -> Result<i64, LoadError> {
        let v = gguf.meta_u64(k)?;
        i64::try_from(v).map_err(|_| LoadError::BadKey {
            path: gguf.path.clone(),
            key: k.to_string(),
            reason: format!("{v} is too large"),
        })
    };
    let bad = |k: &str, reason: String| LoadError::BadKey {
        path: gguf.path.clone(),
        key: k.to_string(),
        reason,
    };

    let hidden_size = int(&key("embedding_length"))?;
    let num_layers = int(&key("block_count"))?;
    let intermediate_size = int(&key("feed_forward_length"))?;
    let heads_key = key("attention.head_count");
    let num_heads = int(&heads_key)?;
    if num_heads == 0 || hidden_size % num_heads != 0 && !has(&key("attention.key_length")) {
        return Err(bad(
            &heads_key,
            format!("{num_heads} heads do not divide the hidden size {hidden_size}"),
        ));
    }
    let kv_key = key("attention.head_count_kv");
    let num_kv_heads = if has(&kv_key) {
        int(&kv_key)?
    } else {
        num_heads
    };
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(bad(
            &kv_key,
            format!("{num_kv_heads} kv heads do not divide {num_heads} heads"),
        ));
    }
    let hd_key = key("attention.key_length");
    let head_dim = if has(&hd_key) {
        int(&hd_key)?
    } else {
        hidden_size / num_heads
    };
    let max_position_embeddings = int(&key("context_length"))?;
    let norm_eps = match arch {
        Arch::Gpt2 => gguf.meta_f64(&key("attention.layer_norm_epsilon"))?,
        _ => gguf.meta_f64(&key("attention.layer_norm_rms_epsilon"))?,
    };
    let theta_key = key("rope.freq_base");
    let rope_theta = if has(&theta_key) {
        gguf.meta_f64(&theta_key)?
    } else {
        10000.0
    };
    let scaling_key = key("rope.scaling.type");
    let rope_scaling = if has(&scaling_key) {
        match gguf.meta_str(&scaling_key)? {
            "none" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: gguf.meta_f64(&key("rope.scaling.factor"))?,
            }),
            other => {
                return Err(LoadError::Unsupported {
                    path: gguf.path.clone(),
                    reason: format!("rope scaling `{other}` ({scaling_key})"),
                })
            }
        }
    } else {
        None
    };

    // token_embd is [hidden, vocab] in GGUF order.
    let vocab_size = match gguf
        .tensor_info("token_embd.weight")
        .and_then(|t| t.dims.get(1))
    {
        Some(&v) => v as i64,
        None => match gguf.meta("tokenizer.ggml.tokens")?.as_array() {
            Some(a) => a.len() as i64,
            None => return Err(bad("tokenizer.ggml.tokens", "expected an array".into())),
        },
    };

    let opt_id = |k: &str| -> Result<Option<i64>, LoadError> {
        match gguf.metadata.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| bad(k, format!("expected an integer, found {v:?}"))),
        }
    };
    let bos_token_id = opt_id("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = opt_id(k)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
        norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
        attention_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some()
            || gguf.tensor_info("blk.0.attn_qkv.bias").is_some(),
        bos_token_id,
        eos_token_ids,
    })
}
