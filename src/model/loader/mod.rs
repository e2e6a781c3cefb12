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
