//! Tokenizer and chat template against transformers' own output.
//!
//! `weights/fixtures/tokenizer/reference.json` (from
//! `weights/fixtures_tokenizer.py`) holds what transformers produces with the
//! SmolLM2 GGUF tokenizer: ids with and without special tokens, their decodes
//! and chat-template renders. Both loaders — from the GGUF and from the
//! `save_pretrained` folder — must reproduce every one of them exactly.

use std::path::{Path, PathBuf};

use inferd::model::chat_template::{ChatMessage, ChatTemplate, TemplateError};
use inferd::model::loader::gguf::GgufFile;
use inferd::model::loader::LoadError;
use inferd::model::tokenizer::{Tokenizer, TokenizerError};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    gguf: String,
    vocab_size: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    token_to_id: std::collections::BTreeMap<String, u32>,
    corpus: Vec<CorpusItem>,
    chats: Vec<Chat>,
}

#[derive(Deserialize)]
struct CorpusItem {
    text: String,
    with_special: Encoded,
    without_special: Encoded,
}

#[derive(Deserialize)]
struct Encoded {
    ids: Vec<u32>,
    decode: String,
    decode_skip_special: String,
}

#[derive(Deserialize)]
struct Chat {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir() -> PathBuf {
    root().join("weights/fixtures/tokenizer")
}

fn reference() -> Reference {
    let path = fixture_dir().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `~/.cache/inferd/venv/bin/python weights/make_fixtures.py --out weights/fixtures --only tokenizer`",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference.json parses")
}

fn gguf_tokenizer(r: &Reference) -> Tokenizer {
    let gguf = GgufFile::open(&root().join(&r.gguf)).expect("open GGUF");
    Tokenizer::from_gguf(&gguf).expect("tokenizer from GGUF")
}

fn hf_tokenizer() -> Tokenizer {
    Tokenizer::from_hf_dir(&fixture_dir().join("hf-tokenizer")).expect("tokenizer from HF folder")
}

/// Every corpus item: ids (with/without specials) and both decodes.
fn check_corpus(name: &str, tok: &Tokenizer, r: &Reference) {
    let mut failures = Vec::new();
    for item in &r.corpus {
        for (special, want) in [(true, &item.with_special), (false, &item.without_special)] {
            let ids = tok.encode(&item.text, special).expect("encode");
            if ids != want.ids {
                failures.push(format!(
                    "encode({:?}, special={special}): got {ids:?}, want {:?}",
                    item.text, want.ids
                ));
            }
            let dec = tok.decode(&want.ids, false).expect("decode");
            if dec != want.decode {
                failures.push(format!(
                    "decode({:?}): got {dec:?}, want {:?}",
                    want.ids, want.decode
                ));
            }
            let dec = tok.decode(&want.ids, true).expect("decode skip special");
            if dec != want.decode_skip_special {
                failures.push(format!(
                    "decode_skip({:?}): got {dec:?}, want {:?}",
                    want.ids, want.decode_skip_special
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_chats(name: &str, tok: &Tokenizer, r: &Reference) {
    for chat in &r.chats {
        let got = tok
            .apply_chat_template(&chat.messages, chat.add_generation_prompt)
            .expect("render");
        assert_eq!(
            got, chat.rendered,
            "{name}: chat `{}` gen={}",
            chat.name, chat.add_generation_prompt
        );
    }
}

fn check_specials(name: &str, tok: &Tokenizer, r: &Reference) {
    assert_eq!(tok.vocab_size(), r.vocab_size, "{name}: vocab size");
    assert_eq!(tok.bos_id(), r.bos_token_id, "{name}: bos id");
    assert_eq!(tok.bos_token(), r.bos_token.as_deref(), "{name}: bos token");
    assert_eq!(tok.eos_token(), r.eos_token.as_deref(), "{name}: eos token");
    assert_eq!(
        tok.eos_ids().first().copied(),
        r.eos_token_id,
        "{name}: eos id"
    );
    for (t, id) in &r.token_to_id {
        assert_eq!(tok.token_to_id(t), Some(*id), "{name}: token_to_id({t})");
        assert_eq!(
            tok.id_to_token(*id).as_deref(),
            Some(t.as_str()),
            "{name}: id_to_token({id})"
        );
    }
}

#[test]
fn reference_is_not_trivial() {
    let r = reference();
    assert!(r.corpus.len() >= 20 && r.chats.len() >= 8);
    // The markup item must stay whole: that is what the added special tokens are for.
    let markup = r
        .corpus
        .iter()
        .find(|c| c.text.starts_with("<|im_start|>user"))
        .expect("markup item");
    assert_eq!(markup.without_special.ids[0], r.token_to_id["<|im_start|>"]);
}

#[test]
fn gguf_tokenizer_matches_transformers() {
    let r = reference();
    let tok = gguf_tokenizer(&r);
    check_specials("gguf", &tok, &r);
    check_corpus("gguf", &tok, &r);
    check_chats("gguf", &tok, &r);
}

#[test]
fn hf_dir_tokenizer_matches_transformers() {
    let r = reference();
    let tok = hf_tokenizer();
    check_specials("hf", &tok, &r);
    check_corpus("hf", &tok, &r);
    check_chats("hf", &tok, &r);
}

#[test]
fn decode_rejects_out_of_vocab_ids() {
    let tok = hf_tokenizer();
    let n = tok.vocab_size() as u32;
    match tok.decode(&[1, n], false) {
        Err(TokenizerError::UnknownId { id, .. }) => assert_eq!(id, n),
        other => panic!("expected UnknownId, got {other:?}"),
    }
}

fn copy_hf_dir(to: &Path) {
    for entry in std::fs::read_dir(fixture_dir().join("hf-tokenizer")).expect("read hf-tokenizer") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn broken_tokenizer_json_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_hf_dir(dir.path());
    let file = dir.path().join("tokenizer.json");
    std::fs::write(
        &file,
        "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", \"vocab\": 3",
    )
    .expect("write");
    match Tokenizer::from_hf_dir(dir.path()) {
        Err(e @ LoadError::Tokenizer { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&file.display().to_string()),
                "message does not name the file: {msg}"
            );
        }
        other => panic!("expected LoadError::Tokenizer, got {other:?}"),
    }
}

#[test]
fn missing_tokenizer_json_is_an_io_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    match Tokenizer::from_hf_dir(dir.path()) {
        Err(LoadError::Io { path, .. }) => assert_eq!(path, dir.path().join("tokenizer.json")),
        other => panic!("expected LoadError::Io, got {other:?}"),
    }
}

#[test]
fn broken_chat_template_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_hf_dir(dir.path());
    let file = dir.path().join("chat_template.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m.content }}").expect("write");
    let err = Tokenizer::from_hf_dir(dir.path()).expect_err("unclosed for loop must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("chat_template"),
        "{msg}"
    );
}

#[test]
fn add_bos_token_in_config_prepends_bos() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_hf_dir(dir.path());
    let cfg_path = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");
    cfg["add_bos_token"] = serde_json::Value::Bool(true);
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let tok = Tokenizer::from_hf_dir(dir.path()).expect("load");
    let bos = tok.bos_id().expect("bos");
    let plain = tok.encode("Hello world", false).expect("encode");
    let with = tok.encode("Hello world", true).expect("encode");
    assert_eq!(with[0], bos);
    assert_eq!(&with[1..], &plain[..]);
}

#[test]
fn template_hf_conventions() {
    // trim_blocks/lstrip_blocks, python string methods, raise_exception, loop controls, tojson.
    let src = "{% for m in messages %}\n  {% if m.role == 'skip' %}{% continue %}{% endif %}\n\
               [{{ m.role | upper }}:{{ m.content.strip() }}]{{ m | tojson }}\n{% endfor %}\n\
               {% if add_generation_prompt %}{{ bos_token }}>{% endif %}\n";
    let t = ChatTemplate::new(src).expect("compile");
    let msgs = vec![
        ChatMessage::new("user", "  hi \"x\"  "),
        ChatMessage::new("skip", "no"),
    ];
    let out = t.render(&msgs, true, "<s>", "</s>").expect("render");
    assert_eq!(
        out,
        "[USER:hi \"x\"]{\"role\": \"user\", \"content\": \"  hi \\\"x\\\"  \"}\n<s>>"
    );

    let t = ChatTemplate::new(
        "{% if messages[0].role != 'system' %}{{ raise_exception('need system') }}{% endif %}",
    )
    .expect("compile");
    match t.render(&msgs, false, "", "") {
        Err(TemplateError::Raised(m)) => assert_eq!(m, "need system"),
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(matches!(
        ChatTemplate::new("{{ unclosed"),
        Err(TemplateError::Compile(_))
    ));
}

#[test]
fn no_chat_template_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_hf_dir(dir.path());
    std::fs::remove_file(dir.path().join("chat_template.jinja")).expect("rm");
    let tok = Tokenizer::from_hf_dir(dir.path()).expect("load");
    assert!(tok.chat_template().is_none());
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .expect_err("no template");
    assert!(matches!(err, TokenizerError::NoChatTemplate));
}
