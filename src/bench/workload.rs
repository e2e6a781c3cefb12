//! The prompts a benchmark run sends. Synthetic prompts are random words
//! sized in tokens: with a tokenizer (`--tokenizer`) they are cut to the exact
//! token count, without one each common word counts as about one token.
//! Optional shared-prefix groups give every request of a group the same system
//! prompt, to exercise prefix KV reuse. A JSONL dataset of chat or text prompts
//! replaces the synthetic ones.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::cli::LenSpec;
use crate::model::loader::gguf::GgufFile;
use crate::model::tokenizer::Tokenizer;

/// One chat message as the OpenAI API takes it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One request's input, ready for either endpoint.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// Chat form; a text prompt is one user message (plus the shared system prompt).
    pub messages: Vec<Message>,
    /// Tokens in the prompt as far as we know (the server's usage wins when sent).
    pub input_tokens: usize,
    /// max_tokens to ask for.
    pub max_tokens: usize,
    /// Shared-prefix group, when groups are used.
    pub group: Option<usize>,
}

impl Prompt {
    /// The text form for /v1/completions: the messages' contents joined, so the
    /// shared system prompt stays a byte-identical prefix.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self.messages.iter().map(|m| m.content.as_str()).collect();
        parts.join("\n\n")
    }
}

/// What to build; mirrors the workload flags.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub num_prompts: usize,
    pub input_len: LenSpec,
    pub output_len: LenSpec,
    pub shared_prefix_groups: usize,
    pub shared_prefix_len: usize,
    pub seed: u64,
}

/// Short, common English words: each is one token with its leading space in
/// the byte-level BPE and SentencePiece vocabularies of the models we serve,
/// which keeps the word count a fair token estimate when no tokenizer is given.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "are", "with", "as", "be", "at",
    "one", "have", "this", "from", "by", "not", "but", "what", "all", "were", "when", "we", "there",
    "can", "an", "your", "which", "their", "said", "if", "will", "each", "about", "how", "up",
    "out", "them", "then", "she", "many", "some", "so", "these", "would", "other", "into", "has",
    "more", "her", "two", "like", "him", "see", "time", "could", "no", "make", "than", "first",
    "been", "its", "who", "now", "people", "my", "made", "over", "did", "down", "only", "way",
    "find", "use", "may", "water", "long", "little", "very", "after", "words", "called", "just",
    "where", "most", "know", "get", "through", "back", "much", "before", "go", "good", "new",
    "write", "our", "used", "me", "man", "too", "any", "day", "same", "right", "look", "think",
    "also", "around", "another", "came", "come", "work", "three", "word", "must", "because", "does",
    "part", "even", "place", "well", "such", "here", "take", "why", "things", "help", "put",
    "years", "different", "away", "again", "off", "went", "old", "number", "great", "tell", "men",
    "say", "small", "every", "found", "still", "between", "name", "should", "home", "big", "give",
    "air", "line", "set", "own", "under", "read", "last", "never", "us", "left", "end", "along",
    "while", "might", "next", "sound", "below", "saw", "something", "thought", "both", "few",
    "those", "always", "show", "large", "often", "together", "asked", "house", "world", "going",
    "want", "school", "important", "until", "form", "food", "keep", "children", "feet", "land",
    "side", "without", "boy", "once", "animals", "life", "enough", "took", "sometimes", "four",
    "head", "above", "kind", "began", "almost", "live", "page", "got", "earth", "need", "far",
    "hand", "high", "year", "mother", "light", "parts", "country", "father", "let", "night",
    "following", "picture", "being", "study", "second", "eyes", "soon", "times", "story", "boys",
    "since", "white", "days", "paper", "hard",
];

/// Makes text of a given token length, exactly with a tokenizer, about right without.
pub struct TextMaker {
    tokenizer: Option<Tokenizer>,
}

impl TextMaker {
    pub fn new(tokenizer: Option<Tokenizer>) -> TextMaker {
        TextMaker { tokenizer }
    }

    /// Load the tokenizer of a .gguf file or a Hugging Face folder. Only the
    /// tokenizer is read: the weights are not needed to size prompts.
    pub fn from_path(path: &Path) -> Result<TextMaker> {
        let tok = if path.is_dir() {
            Tokenizer::from_hf_dir(path)
        } else {
            GgufFile::open(path).and_then(|g| Tokenizer::from_gguf(&g))
        }
        .with_context(|| format!("loading tokenizer from {}", path.display()))?;
        Ok(TextMaker::new(Some(tok)))
    }

    /// Count the tokens of `text` (words when there is no tokenizer).
    pub fn count(&self, text: &str) -> usize {
        match &self.tokenizer {
            Some(t) => t
                .encode(text, false)
                .map(|ids| ids.len())
                .unwrap_or_else(|_| word_count(text)),
            None => word_count(text),
        }
    }

    /// Random words making `n` tokens. With a tokenizer the words are encoded,
    /// cut to `n` ids and decoded; re-encoding that text may differ by a token
    /// at the cut, which is as exact as text round-trips allow.
    pub fn make(&self, rng: &mut ChaCha8Rng, n: usize) -> String {
        if n == 0 {
            return String::new();
        }
        let words = random_words(rng, n);
        let Some(tok) = &self.tokenizer else {
            return words;
        };
        match tok.encode(&words, false) {
            Ok(ids) if ids.len() >= n => tok.decode(&ids[..n], true).unwrap_or(words),
            _ => words,
        }
    }
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

fn random_words(rng: &mut ChaCha8Rng, n: usize) -> String {
    let mut out = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    out
}

fn sample_len(rng: &mut ChaCha8Rng, spec: LenSpec) -> usize {
    rng.random_range(spec.min..=spec.max)
}

/// Synthetic prompts: random lengths within the spec, with optional shared
/// system prompts. Request `i` belongs to group `i % groups`, so groups
/// interleave and a prefix cache has to keep several prefixes alive at once.
pub fn synthetic(spec: &WorkloadSpec, maker: &TextMaker) -> Vec<Prompt> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let prefixes: Vec<String> = (0..spec.shared_prefix_groups)
        .map(|_| maker.make(&mut rng, spec.shared_prefix_len))
        .collect();
    (0..spec.num_prompts)
        .map(|i| {
            let input = sample_len(&mut rng, spec.input_len);
            let max_tokens = sample_len(&mut rng, spec.output_len).max(1);
            let user = maker.make(&mut rng, input);
            let mut messages = Vec::with_capacity(2);
            let mut input_tokens = input;
            let group = (!prefixes.is_empty()).then(|| i % prefixes.len());
            if let Some(g) = group {
                messages.push(Message {
                    role: "system".into(),
                    content: prefixes[g].clone(),
                });
                input_tokens += spec.shared_prefix_len;
            }
            messages.push(Message {
                role: "user".into(),
                content: user,
            });
            Prompt {
                messages,
                input_tokens,
                max_tokens,
                group,
            }
        })
        .collect()
}

/// Read a JSONL dataset. Each line is `{"prompt": "..."}`, `{"messages":
/// [{"role","content"}..]}` or ShareGPT `{"conversations": [{"from","value"}..]}`
/// (only the turns before the last assistant reply are sent); `max_tokens` or
/// `output_len` on the line overrides the output length flag.
pub fn dataset(path: &Path, spec: &WorkloadSpec, maker: &TextMaker) -> Result<Vec<Prompt>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut prompts = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), lineno + 1))?;
        let messages = messages_of(&v).with_context(|| {
            format!(
                "{}:{}: no prompt, messages or conversations",
                path.display(),
                lineno + 1
            )
        })?;
        if messages.is_empty() {
            continue;
        }
        let fixed = ["max_tokens", "output_len"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_u64));
        let max_tokens = match fixed {
            Some(n) => n as usize,
            None => sample_len(&mut rng, spec.output_len),
        }
        .max(1);
        let input_tokens = messages.iter().map(|m| maker.count(&m.content)).sum();
        prompts.push(Prompt {
            messages,
            input_tokens,
            max_tokens,
            group: None,
        });
    }
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

fn messages_of(v: &Value) -> Option<Vec<Message>> {
    if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        return Some(vec![Message {
            role: "user".into(),
            content: p.to_string(),
        }]);
    }
    let (list, role_key, content_key) = if let Some(m) = v.get("messages").and_then(Value::as_array)
    {
        (m, "role", "content")
    } else {
        (
            v.get("conversations").and_then(Value::as_array)?,
            "from",
            "value",
        )
    };
    let mut out: Vec<Message> = list
        .iter()
        .filter_map(|m| {
            let role = match m.get(role_key)?.as_str()? {
                "human" | "user" => "user",
                "gpt" | "assistant" | "chatgpt" | "bard" => "assistant",
                "system" => "system",
                other => other,
            };
            Some(Message {
                role: role.to_string(),
                content: m.get(content_key)?.as_str()?.to_string(),
            })
        })
        .collect();
    // The benchmark asks the server for the final reply, so a recorded one is dropped.
    while out.last().is_some_and(|m| m.role == "assistant") {
        out.pop();
    }
    Some(out)
}
