//! The model's tokenizer: text to token ids and back, special tokens, and the
//! chat template, built from a GGUF file or a Hugging Face folder.
//!
//! From GGUF the tokenizer is rebuilt from llama.cpp's metadata exactly as
//! transformers does it (`integrations/gguf/gguf_tokenizer_mapping.py`):
//! byte-level BPE from `tokenizer.ggml.tokens` and `merges` (tokens not
//! written in GPT-2's byte alphabet are respelled into it), control tokens
//! (type 3) added as special tokens and user-defined ones (type 4) as plain
//! added tokens so chat markup like `<|im_start|>` is never split,
//! `tokenizer.ggml.pre` choosing the split regex, and a post-processor that
//! adds BOS/EOS as `tokenizer.ggml.add_bos_token`/`add_eos_token` say. Only
//! byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is supported;
//! SentencePiece vocabularies are refused with a [`LoadError::Tokenizer`].
//! From a Hugging Face folder `tokenizer.json` is used as is, with
//! `tokenizer_config.json` for the special tokens and the chat template.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::chat_template::{ChatMessage, ChatTemplate, TemplateError};
use super::loader::gguf::{GgufFile, GgufValue};
use super::loader::LoadError;

/// Errors while encoding, decoding or rendering a prompt.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer: encode failed: {0}")]
    Encode(String),
    #[error("tokenizer: decode failed: {0}")]
    Decode(String),
    #[error("tokenizer: token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("tokenizer: the model has no chat template")]
    NoChatTemplate,
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// A loaded tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    origin: PathBuf,
    /// `get_vocab_size(true)` rebuilds the whole vocabulary map on every
    /// call (~49k strings), far too slow for each streamed token's decode.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

// Split regexes transformers applies per `tokenizer.ggml.pre` (copied from
// gguf_tokenizer_mapping.py / the qwen2 and qwen3_5 tokenizers). Any other
// value keeps GPT-2's own ByteLevel regex.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_regex_for(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, LoadError> {
        let path = &gguf.path;
        let bad = |key: &str, reason: String| LoadError::BadKey {
            path: path.clone(),
            key: key.to_string(),
            reason,
        };
        let model = gguf.meta_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LoadError::Tokenizer {
                path: path.clone(),
                reason: format!(
                    "tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) vocabularies are supported \
                     (SentencePiece `llama`, `t5` and others are not)"
                ),
            });
        }
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let token_types: Vec<i64> = match gguf.metadata.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| bad("tokenizer.ggml.token_type", "expected an array".into()))?
                .iter()
                .map(|t| {
                    t.as_i64().ok_or_else(|| {
                        bad(
                            "tokenizer.ggml.token_type",
                            format!("not an integer: {t:?}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        // Merges are rebuilt from scores by transformers when absent; no gpt2 file we know lacks them.
        let merges = string_array(gguf, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(bad(
                    "tokenizer.ggml.merges",
                    format!("merge {i} `{m}` is not two tokens"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Tokens not written in the byte alphabet are respelled by their UTF-8 bytes.
        let table = byte_alphabet();
        let alphabet: HashSet<char> = table.iter().copied().collect();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let spelled = if in_alphabet(t) {
                    t.clone()
                } else {
                    t.bytes().map(|b| table[b as usize]).collect()
                };
                (spelled, i as u32)
            })
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LoadError::Tokenizer {
                path: path.clone(),
                reason: format!("BPE from tokens/merges: {e}"),
            })?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = gguf
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .unwrap_or("");
        let pre_tokenizer: PreTokenizerWrapper = match split_regex_for(pre) {
            Some(regex) => {
                let split = Split::new(
                    SplitPattern::Regex(regex.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| {
                    bad(
                        "tokenizer.ggml.pre",
                        format!("split regex for `{pre}`: {e}"),
                    )
                })?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            None => ByteLevel::new(false, true, true).into(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(t, ty)| **ty == TOKEN_CONTROL && in_alphabet(t))
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&control);
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(t, ty)| **ty == TOKEN_USER_DEFINED && inner.token_to_id(t).is_some())
            .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        inner.add_tokens(&user_defined);

        let token_of = |key: &str| -> Result<Option<(String, u32)>, LoadError> {
            let Some(v) = gguf.metadata.get(key) else {
                return Ok(None);
            };
            let id = v
                .as_u64()
                .ok_or_else(|| bad(key, format!("expected a token id, found {v:?}")))?;
            let tok = tokens.get(id as usize).ok_or_else(|| {
                bad(
                    key,
                    format!(
                        "token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                )
            })?;
            Ok(Some((tok.clone(), id as u32)))
        };
        let bos = token_of("tokenizer.ggml.bos_token_id")?;
        let eos = token_of("tokenizer.ggml.eos_token_id")?;
        let flag = |key: &str| {
            gguf.metadata
                .get(key)
                .and_then(GgufValue::as_bool)
                .unwrap_or(false)
        };
        set_bos_eos_processor(
            &mut inner,
            bos.as_ref(),
            eos.as_ref(),
            flag("tokenizer.ggml.add_bos_token"),
            flag("tokenizer.ggml.add_eos_token"),
        )
        .map_err(|reason| LoadError::Tokenizer {
            path: path.clone(),
            reason,
        })?;

        // llama.cpp also stops on end-of-turn / end-of-message tokens.
        let mut eos_ids: Vec<u32> = eos.iter().map(|(_, id)| *id).collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some((_, id)) = token_of(key)? {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        let chat_template = match gguf.metadata.get("tokenizer.chat_template") {
            None => None,
            Some(v) => {
                let src = v
                    .as_str()
                    .ok_or_else(|| bad("tokenizer.chat_template", "expected a string".into()))?;
                Some(
                    ChatTemplate::new(src)
                        .map_err(|e| bad("tokenizer.chat_template", e.to_string()))?,
                )
            }
        };
        Ok(Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos,
            eos_token: eos.map(|(t, _)| t),
            eos_ids,
            chat_template,
            origin: path.clone(),
        })
    }

    /// Load `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`
    /// and `generation_config.json` when present) from a Hugging Face folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, LoadError> {
        let file = dir.join("tokenizer.json");
        let bytes = std::fs::read(&file).map_err(|source| LoadError::Io {
            path: file.clone(),
            source,
        })?;
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| LoadError::Tokenizer {
                path: file.clone(),
                reason: e.to_string(),
            })?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json_if_present(&cfg_path)?.unwrap_or(Json::Null);
        let special = |field: &str| -> Result<Option<(String, u32)>, LoadError> {
            let text = match cfg.get(field) {
                None | Some(Json::Null) => return Ok(None),
                Some(Json::String(s)) => s.clone(),
                Some(v) => match v.get("content").and_then(Json::as_str) {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(tok_err(
                            &cfg_path,
                            format!("`{field}` is neither a string nor {{\"content\": ..}}"),
                        ))
                    }
                },
            };
            let id = inner.token_to_id(&text).ok_or_else(|| {
                tok_err(
                    &cfg_path,
                    format!(
                        "`{field}` `{text}` is not in the vocabulary of {}",
                        file.display()
                    ),
                )
            })?;
            Ok(Some((text, id)))
        };
        let bos = special("bos_token")?;
        let eos = special("eos_token")?;

        // transformers rebuilds the post-processor only when the config states a flag.
        let add_bos = cfg.get("add_bos_token").and_then(Json::as_bool);
        let add_eos = cfg.get("add_eos_token").and_then(Json::as_bool);
        if add_bos.is_some() || add_eos.is_some() {
            set_bos_eos_processor(
                &mut inner,
                bos.as_ref(),
                eos.as_ref(),
                add_bos.unwrap_or(false),
                add_eos.unwrap_or(false),
            )
            .map_err(|reason| tok_err(&cfg_path, reason))?;
        }

        let mut eos_ids: Vec<u32> = eos.iter().map(|(_, id)| *id).collect();
        let gen_path = dir.join("generation_config.json");
        if let Some(gen) = read_json_if_present(&gen_path)? {
            let ids: Vec<&Json> = match gen.get("eos_token_id") {
                Some(Json::Array(a)) => a.iter().collect(),
                Some(v) => vec![v],
                None => vec![],
            };
            for v in ids.into_iter().filter(|v| !v.is_null()) {
                let id = v
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| {
                        tok_err(
                            &gen_path,
                            format!("`eos_token_id` entry {v} is not a token id"),
                        )
                    })?;
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }

        let jinja_path = dir.join("chat_template.jinja");
        let (template_src, template_origin) = if jinja_path.is_file() {
            let src = std::fs::read_to_string(&jinja_path).map_err(|source| LoadError::Io {
                path: jinja_path.clone(),
                source,
            })?;
            (Some(src), jinja_path)
        } else {
            let src = match cfg.get("chat_template") {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) => Some(s.clone()),
                // A list of named templates: the one called "default" is the chat template.
                Some(Json::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Json::as_str))
                    .map(str::to_string),
                Some(_) => {
                    return Err(tok_err(
                        &cfg_path,
                        "`chat_template` is neither a string nor a list".into(),
                    ))
                }
            };
            (src, cfg_path.clone())
        };
        let chat_template = match template_src {
            None => None,
            Some(src) => Some(
                ChatTemplate::new(&src)
                    .map_err(|e| tok_err(&template_origin, format!("chat_template: {e}")))?,
            ),
        };
        Ok(Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos,
            eos_token: eos.map(|(t, _)| t),
            eos_ids,
            chat_template,
            origin: dir.to_path_buf(),
        })
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (BOS/EOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`. Ids outside the vocabulary are an error, not skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TokenizerError::UnknownId { id, vocab_size });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of ids, added tokens included (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(_, id)| *id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(t, _)| t.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Ids that end generation: the EOS token first, then any other the model names.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The file or folder the tokenizer came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The underlying `tokenizers` tokenizer (for incremental decoding).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Render a conversation with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = self
            .chat_template
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let bos = self.bos_token().unwrap_or("");
        let eos = self.eos_token().unwrap_or("");
        Ok(tmpl.render(messages, add_generation_prompt, bos, eos)?)
    }
}

fn tok_err(path: &Path, reason: String) -> LoadError {
    LoadError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    }
}

fn read_json_if_present(path: &Path) -> Result<Option<Json>, LoadError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json =
        serde_json::from_str(&text).map_err(|e| tok_err(path, format!("invalid JSON: {e}")))?;
    Ok(Some(json))
}

/// A string-array metadata key.
fn string_array(gguf: &GgufFile, key: &str) -> Result<Vec<String>, LoadError> {
    let bad = |reason: String| LoadError::BadKey {
        path: gguf.path.clone(),
        key: key.to_string(),
        reason,
    };
    gguf.meta(key)?
        .as_array()
        .ok_or_else(|| bad("expected an array of strings".into()))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("entry {i} is not a string")))
        })
        .collect()
}

/// transformers' `update_post_processor`: `[bos] $A [eos]` as the flags say;
/// a flag without its token is dropped.
fn set_bos_eos_processor(
    inner: &mut tokenizers::Tokenizer,
    bos: Option<&(String, u32)>,
    eos: Option<&(String, u32)>,
    add_bos: bool,
    add_eos: bool,
) -> Result<(), String> {
    let bos = bos.filter(|_| add_bos);
    let eos = eos.filter(|_| add_eos);
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    if let Some((t, id)) = bos {
        single.push(format!("{t}:0"));
        specials.push((t.clone(), *id));
    }
    single.push("$A:0".to_string());
    if let Some((t, id)) = eos {
        single.push(format!("{t}:0"));
        if !specials.iter().any(|(s, _)| s == t) {
            specials.push((t.clone(), *id));
        }
    }
    pair.extend(single.iter().cloned());
    if let Some((t, _)) = bos {
        pair.push(format!("{t}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some((t, _)) = eos {
        pair.push(format!("{t}:1"));
    }
    let processor = TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| format!("post-processor template: {e}"))?
        .try_pair(pair)
        .map_err(|e| format!("post-processor template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("post-processor: {e}"))?;
    inner.with_post_processor(Some(processor));
    Ok(())
}
