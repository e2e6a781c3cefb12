//! The text side of a model at the edge: [`Codec`] turns prompts and chat
//! messages into token ids and token ids into their display text (for
//! logprobs and TGI's token details). The API keeps one per served model
//! in [`Codecs`], built from the model's own tokenizer (models loaded at run
//! time are added there); tests use a byte-level fake.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use crate::model::chat_template::ChatMessage;
use crate::model::loader::gguf::GgufFile;
use crate::model::tokenizer::Tokenizer;

pub trait Codec: Send + Sync + 'static {
    /// Token ids of raw prompt text (with the model's special tokens, e.g. BOS).
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Token ids of a conversation rendered with the chat template, ready
    /// for the assistant's answer.
    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String>;
    /// The text of one token (special tokens included).
    fn token_text(&self, id: u32) -> String;
    /// Whether `id` is a special (end-of-sequence) token.
    fn is_special(&self, id: u32) -> bool;
}

/// A model's real tokenizer.
pub struct TokenizerCodec(pub Arc<Tokenizer>);

impl TokenizerCodec {
    /// The tokenizer of a model source (a .gguf file or a Hugging Face
    /// folder), read without loading the weights. Blocking: file I/O.
    pub fn open(source: &Path) -> Result<TokenizerCodec, String> {
        let tok = if source.is_dir() {
            Tokenizer::from_hf_dir(source).map_err(|e| e.to_string())?
        } else {
            let gguf = GgufFile::open(source).map_err(|e| e.to_string())?;
            Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())?
        };
        Ok(TokenizerCodec(Arc::new(tok)))
    }
}

impl Codec for TokenizerCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.0.encode(text, true).map_err(|e| e.to_string())
    }

    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
        let text = self
            .0
            .apply_chat_template(messages, true)
            .map_err(|e| e.to_string())?;
        self.0.encode(&text, false).map_err(|e| e.to_string())
    }

    fn token_text(&self, id: u32) -> String {
        self.0.decode(&[id], false).unwrap_or_default()
    }

    fn is_special(&self, id: u32) -> bool {
        self.0.eos_ids().contains(&id)
    }
}

/// The codec of each served model name. Read on every request, written
/// when the admin API adds or removes a model. A model's versions share its
/// codec: they must use the same tokenizer.
#[derive(Default)]
pub struct Codecs(RwLock<HashMap<String, Arc<dyn Codec>>>);

impl Codecs {
    pub fn new(map: HashMap<String, Arc<dyn Codec>>) -> Codecs {
        Codecs(RwLock::new(map))
    }

    pub fn get(&self, model: &str) -> Option<Arc<dyn Codec>> {
        // A poisoned lock only means a writer panicked mid-insert of a
        // whole Arc: the map itself is consistent, so keep using it.
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(model).cloned()
    }

    pub fn contains(&self, model: &str) -> bool {
        self.get(model).is_some()
    }

    pub fn insert(&self, model: &str, codec: Arc<dyn Codec>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(model.to_string(), codec);
    }

    pub fn remove(&self, model: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(model);
    }
}
