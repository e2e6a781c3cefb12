//! [`ModelConfig`] from a Hugging Face model folder: `config.json` (as
//! transformers' `save_pretrained` writes it, versions 4 and 5) plus the extra
//! end-of-sequence ids of `generation_config.json` when that file exists.
//!
//! Supported `model_type`s: `llama` (SmolLM2 included), `mistral` (run as
//! LLaMA; its `sliding_window` is ignored, which is exact for contexts up to
//! the window), `qwen2` and `gpt2`. Settings that would change the math in a
//! way the model code does not implement (other activations, MLP biases,
//! partial rotary, unknown rope types) are refused rather than ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config::{Arch, ModelConfig, RopeScaling};
use super::loader::LoadError;

const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";

/// Read `dir/config.json` (and `dir/generation_config.json` if present).
pub fn model_config_from_hf(dir: &Path) -> Result<ModelConfig, LoadError> {
    let cfg = JsonFile::read(&dir.join(CONFIG))?;
    let model_type = cfg.req_str("model_type")?;
    let mut config = match model_type {
        "llama" | "mistral" => llama_like(&cfg, Arch::Llama)?,
        "qwen2" => llama_like(&cfg, Arch::Qwen2)?,
        "gpt2" => gpt2(&cfg)?,
        other => {
            return Err(LoadError::Unsupported {
                path: cfg.path.clone(),
                reason: format!("model_type `{other}` (supported: llama, mistral, qwen2, gpt2)"),
            })
        }
    };
    let gen_path = dir.join(GENERATION_CONFIG);
    if gen_path.is_file() {
        let gen = JsonFile::read(&gen_path)?;
        // generation_config.json often lists more stop ids (LLaMA 3 chat:
        // <|eot_id|>) than config.json does; generation must stop on all.
        for id in gen.token_ids("eos_token_id")? {
            if !config.eos_token_ids.contains(&id) {
                config.eos_token_ids.push(id);
            }
        }
        if config.bos_token_id.is_none() {
            config.bos_token_id = gen.opt_i64("bos_token_id")?;
        }
    }
    Ok(config)
}

/// LLaMA, Mistral and Qwen2 share key names; they differ in defaults.
fn llama_like(cfg: &JsonFile, arch: Arch) -> Result<ModelConfig, LoadError> {
    cfg.expect_str("hidden_act", "silu")?;
    if cfg.opt_bool("mlp_bias")?.unwrap_or(false) {
        return Err(cfg.unsupported("mlp_bias = true (MLP projections with biases)"));
    }
    if arch == Arch::Qwen2 && cfg.opt_bool("use_sliding_window")?.unwrap_or(false) {
        return Err(cfg.unsupported("use_sliding_window = true"));
    }
    let hidden_size = cfg.req_pos("hidden_size")?;
    let num_heads = cfg.req_pos("num_attention_heads")?;
    let num_kv_heads = cfg.opt_pos("num_key_value_heads")?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(cfg.bad(
            "num_key_value_heads",
            format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
        ));
    }
    let head_dim = match cfg.opt_pos("head_dim")? {
        Some(d) => d,
        None => split_heads(cfg, hidden_size, num_heads, "hidden_size")?,
    };
    let (rope_theta, rope_scaling) = rope(cfg)?;
    let default_max_pos = if arch == Arch::Qwen2 { 32768 } else { 2048 };
    Ok(ModelConfig {
        arch,
        vocab_size: cfg.req_pos("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.req_pos("intermediate_size")?,
        num_layers: cfg.req_pos("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings: cfg
            .opt_pos("max_position_embeddings")?
            .unwrap_or(default_max_pos),
        norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        rope_scaling,
        tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        // Qwen2's q/k/v projections always carry biases (no config switch).
        attention_bias: arch == Arch::Qwen2 || cfg.opt_bool("attention_bias")?.unwrap_or(false),
        bos_token_id: cfg.opt_i64("bos_token_id")?,
        eos_token_ids: cfg.token_ids("eos_token_id")?,
    })
}

fn gpt2(cfg: &JsonFile) -> Result<ModelConfig, LoadError> {
    cfg.expect_str("activation_function", "gelu_new")?;
    if cfg
        .opt_bool("scale_attn_by_inverse_layer_idx")?
        .unwrap_or(false)
    {
        return Err(cfg.unsupported("scale_attn_by_inverse_layer_idx = true"));
    }
    if !cfg.opt_bool("scale_attn_weights")?.unwrap_or(true) {
        return Err(cfg.unsupported("scale_attn_weights = false"));
    }
    let hidden_size = cfg.req_pos("n_embd")?;
    let num_heads = cfg.req_pos("n_head")?;
    let head_dim = split_heads(cfg, hidden_size, num_heads, "n_embd")?;
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        vocab_size: cfg.req_pos("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.opt_pos("n_inner")?.unwrap_or(4 * hidden_size),
        num_layers: cfg.req_pos("n_layer")?,
        num_heads,
        num_kv_heads: num_heads,
        head_dim,
        max_position_embeddings: cfg.opt_pos("n_positions")?.unwrap_or(1024),
        norm_eps: cfg.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        // GPT-2 has learned positions; these two are never used.
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        // GPT-2's fused c_attn (and every other linear) has a bias.
        attention_bias: true,
        bos_token_id: cfg.opt_i64("bos_token_id")?,
        eos_token_ids: cfg.token_ids("eos_token_id")?,
    })
}

fn split_heads(
    cfg: &JsonFile,
    hidden: i64,
    heads: i64,
    hidden_key: &str,
) -> Result<i64, LoadError> {
    if hidden % heads != 0 {
        return Err(cfg.bad(
            hidden_key,
            format!("{hidden} is not a multiple of the {heads} attention heads"),
        ));
    }
    Ok(hidden / heads)
}

/// Rope base and scaling. transformers 4 writes `rope_theta` and
/// `rope_scaling` at the top level; transformers 5 writes one
/// `rope_parameters` object holding both. Like transformers, a legacy
/// `rope_scaling` wins over `rope_parameters`.
fn rope(cfg: &JsonFile) -> Result<(f64, Option<RopeScaling>), LoadError> {
    let (key, params) = match (
        cfg.opt_obj("rope_scaling")?,
        cfg.opt_obj("rope_parameters")?,
    ) {
        (Some(p), _) => ("rope_scaling", Some(p)),
        (None, Some(p)) => ("rope_parameters", Some(p)),
        (None, None) => ("rope_parameters", None),
    };
    let empty = Map::new();
    let p = Nested {
        file: cfg,
        prefix: key,
        map: params.unwrap_or(&empty),
    };
    let theta = match p.opt_f64("rope_theta")? {
        Some(t) => t,
        None => cfg.opt_f64("rope_theta")?.unwrap_or(10000.0),
    };
    let partial = match p.opt_f64("partial_rotary_factor")? {
        Some(f) => Some(f),
        None => cfg.opt_f64("partial_rotary_factor")?,
    };
    if let Some(f) = partial.filter(|&f| f != 1.0) {
        return Err(cfg.unsupported(&format!(
            "partial_rotary_factor = {f} (rope on part of each head)"
        )));
    }
    let rope_type = match p.opt_str("rope_type")? {
        Some(t) => Some(t),
        None => p.opt_str("type")?,
    };
    let scaling = match rope_type.unwrap_or("default") {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: p.req_f64("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: p.req_f64("factor")?,
            low_freq_factor: p.req_f64("low_freq_factor")?,
            high_freq_factor: p.req_f64("high_freq_factor")?,
            original_max_position_embeddings: p.req_f64("original_max_position_embeddings")?,
        }),
        other => {
            return Err(cfg.unsupported(&format!(
                "{key}.rope_type `{other}` (supported: default, linear, llama3)"
            )))
        }
    };
    Ok((theta, scaling))
}

/// A parsed JSON object plus its path, for error messages.
struct JsonFile {
    path: PathBuf,
    map: Map<String, Value>,
}

impl JsonFile {
    fn read(path: &Path) -> Result<JsonFile, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| LoadError::Format {
            path: path.to_path_buf(),
            format: "JSON",
            reason: e.to_string(),
        })?;
        match value {
            Value::Object(map) => Ok(JsonFile {
                path: path.to_path_buf(),
                map,
            }),
            _ => Err(LoadError::Format {
                path: path.to_path_buf(),
                format: "JSON",
                reason: "not an object".into(),
            }),
        }
    }

    fn root(&self) -> Nested<'_> {
        Nested {
            file: self,
            prefix: "",
            map: &self.map,
        }
    }

    fn bad(&self, key: &str, reason: String) -> LoadError {
        LoadError::BadKey {
            path: self.path.clone(),
            key: key.to_string(),
            reason,
        }
    }

    fn unsupported(&self, reason: &str) -> LoadError {
        LoadError::Unsupported {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn req_str(&self, key: &str) -> Result<&str, LoadError> {
        self.root()
            .opt_str(key)?
            .ok_or_else(|| self.root().missing(key))
    }
    fn req_pos(&self, key: &str) -> Result<i64, LoadError> {
        self.opt_pos(key)?.ok_or_else(|| self.root().missing(key))
    }
    fn opt_pos(&self, key: &str) -> Result<Option<i64>, LoadError> {
        match self.opt_i64(key)? {
            Some(v) if v <= 0 => {
                Err(self.bad(key, format!("expected a positive integer, found {v}")))
            }
            v => Ok(v),
        }
    }
    fn opt_i64(&self, key: &str) -> Result<Option<i64>, LoadError> {
        self.root().opt_i64(key)
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        self.root().opt_f64(key)
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.root().get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("expected true or false, found {v}"))),
        }
    }
    fn opt_obj(&self, key: &str) -> Result<Option<&Map<String, Value>>, LoadError> {
        match self.root().get(key) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("expected an object, found {v}"))),
        }
    }
    /// A key that, when present, must hold `want` (an activation name).
    fn expect_str(&self, key: &str, want: &str) -> Result<(), LoadError> {
        match self.root().opt_str(key)? {
            Some(found) if found != want => {
                Err(self.unsupported(&format!("{key} `{found}` (expected `{want}`)")))
            }
            _ => Ok(()),
        }
    }
    /// Token ids written as one integer, a list of integers, or null.
    fn token_ids(&self, key: &str) -> Result<Vec<i64>, LoadError> {
        let bad = |v: &Value| {
            self.bad(
                key,
                format!("expected a token id or a list of them, found {v}"),
            )
        };
        match self.root().get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| bad(v)))
                .collect(),
            Some(v) => Ok(vec![v.as_i64().ok_or_else(|| bad(v))?]),
        }
    }
}

/// A JSON object inside (or at the top of) a file; keys are reported with
/// their dotted prefix (`rope_parameters.factor`).
struct Nested<'a> {
    file: &'a JsonFile,
    prefix: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Nested<'a> {
    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }
    /// A key's value; JSON null counts as absent (save_pretrained writes
    /// `"head_dim": null` for "use the default").
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn missing(&self, key: &str) -> LoadError {
        LoadError::MissingKey {
            path: self.file.path.clone(),
            key: self.full(key),
        }
    }
    fn bad(&self, key: &str, expected: &str, found: &Value) -> LoadError {
        self.file.bad(
            &self.full(key),
            format!("expected {expected}, found {found}"),
        )
    }
    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a string", v)),
        }
    }
    fn opt_i64(&self, key: &str) -> Result<Option<i64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "an integer", v)),
        }
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a number", v)),
        }
    }
    fn req_f64(&self, key: &str) -> Result<f64, LoadError> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }
}
