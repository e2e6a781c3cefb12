//! The text side of a model at the edge: [`Codec`] turns prompts and chat
//! messages into token ids and token ids into their display text (for
//! logprobs and TGI's token details). The API keeps one per served model,
//! built from the model's own tokenizer; tests use a byte-level fake.

use std::sync::Arc;

use crate::model::chat_template::ChatMessage;
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
