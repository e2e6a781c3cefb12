//! Opening a model by path: a `.gguf` file or a Hugging Face folder
//! (config.json + safetensors + tokenizer.json). Returns the architecture
//! config, the weight source and the tokenizer, ready for [`Model::from_source`].
//!
//! [`Model::from_source`]: super::Model::from_source

use std::path::Path;

use super::config::ModelConfig;
use super::hf_config::model_config_from_hf;
use super::loader::gguf::GgufFile;
use super::loader::gguf_weights::{model_config, GgufWeights};
use super::loader::safetensors::SafetensorsWeights;
use super::loader::{LoadError, WeightSource};
use super::tokenizer::Tokenizer;

/// Everything read from a model's files.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub weights: Box<dyn WeightSource + Send + Sync>,
    pub tokenizer: Tokenizer,
}

/// Open a GGUF file or a Hugging Face folder.
pub fn open(path: &Path) -> Result<ModelFiles, LoadError> {
    if path.is_dir() {
        let config = model_config_from_hf(path)?;
        let weights = SafetensorsWeights::open(path)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        return Ok(ModelFiles { config, weights: Box::new(weights), tokenizer });
    }
    if !path.exists() {
        return Err(LoadError::Io { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory") });
    }
    let gguf = GgufFile::open(path)?;
    let config = model_config(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let weights = GgufWeights::new(gguf)?;
    Ok(ModelFiles { config, weights: Box::new(weights), tokenizer })
}
