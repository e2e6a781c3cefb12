//! Weight loaders: GGUF files and Hugging Face safetensors folders.
//!
//! Both present the same [`WeightSource`] to the model code: tensors are asked
//! for by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`)
//! and come back as CPU tensors in a float kind (quantized GGUF blocks are
//! dequantized, llama.cpp's Q/K row permutation is undone). The model code then
//! casts and moves them to the run dtype and device. Every failure is a
//! [`LoadError`] that names the file and, where there is one, the tensor.

pub mod dequant;
pub mod gguf;
pub mod gguf_weights;
pub mod safetensors;

use std::path::PathBuf;

/// A loaded-on-demand collection of named tensors, in Hugging Face naming.
pub trait WeightSource {
    /// Load a tensor as a CPU float tensor (F32/F16/BF16; quantized data is
    /// dequantized to F32). Errors name the file and the tensor.
    fn load(&self, name: &str) -> Result<tch::Tensor, LoadError>;
    /// Shape of a tensor without loading it, `None` when absent.
    fn shape(&self, name: &str) -> Option<Vec<i64>>;
    /// Whether a tensor is present.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
    /// The file (or folder) the weights come from, for error messages.
    fn origin(&self) -> PathBuf;

    /// A 2-d weight's raw GGUF blocks (Q4_0, Q4_1 or Q8_0), rows in Hugging
    /// Face order, for `quantization = "gguf"`; `None` when the tensor is
    /// stored any other way (the model then loads it with [`load`]).
    ///
    /// [`load`]: WeightSource::load
    fn load_quant(&self, _name: &str) -> Result<Option<QuantRows>, LoadError> {
        Ok(None)
    }

    /// Load a tensor and check its shape.
    fn load_shaped(&self, name: &str, expected: &[i64]) -> Result<tch::Tensor, LoadError> {
        let t = self.load(name)?;
        if t.size() != expected {
            return Err(LoadError::Shape {
                path: self.origin(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: t.size(),
            });
        }
        Ok(t)
    }
}

/// A weight [n, k] as GGUF stores it in Q4_0, Q4_1 or Q8_0: row r is `k / 32`
/// blocks of `ty.type_size()` bytes at `r * row_bytes()`.
#[derive(Debug, Clone)]
pub struct QuantRows {
    pub ty: dequant::GgmlType,
    pub n: i64,
    pub k: i64,
    pub data: Vec<u8>,
}

impl QuantRows {
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        (self.k as usize / 32) * self.ty.type_size() as usize
    }

    /// The weight dequantized to f32 [n, k] (tests and references).
    pub fn dequantize(&self) -> Result<tch::Tensor, String> {
        let mut out = vec![0f32; (self.n * self.k) as usize];
        dequant::dequantize_into(self.ty, &self.data, &mut out).map_err(|e| format!("{e:?}"))?;
        tch::Tensor::f_from_slice(&out)
            .and_then(|t| t.f_reshape([self.n, self.k]))
            .map_err(|e| e.to_string())
    }

    /// Rows of several weights with the same k and type, stacked in order;
    /// `None` when they differ.
    pub fn stack(parts: Vec<QuantRows>) -> Option<QuantRows> {
        let first = parts.first()?;
        let (ty, k) = (first.ty, first.k);
        if parts.iter().any(|p| p.ty != ty || p.k != k) {
            return None;
        }
        let n = parts.iter().map(|p| p.n).sum();
        let data = parts.into_iter().flat_map(|p| p.data).collect();
        Some(QuantRows { ty, n, k, data })
    }
}

/// Everything that can go wrong while reading model files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a {format} file: {reason}")]
    Format {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: file is truncated: {what} needs bytes up to offset {needed} but the file has {len}")]
    Truncated {
        path: PathBuf,
        what: String,
        needed: u64,
        len: u64,
    },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype}")]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}`: {reason}")]
    BadKey {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: unsupported model: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: libtorch: {source}")]
    Torch {
        path: PathBuf,
        source: tch::TchError,
    },
}
