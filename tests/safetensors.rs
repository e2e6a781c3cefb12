//! Hugging Face folders: safetensors weights (single file, sharded index,
//! legacy GPT-2 names) and config.json parsing, against files written by the
//! Python `safetensors` package and transformers' `save_pretrained`
//! (weights/fixtures_safetensors.py), plus hand-made broken files for every
//! error path. Expected values are compared bit for bit.

use std::fs;
use std::path::{Path, PathBuf};

use inferd::model::config::{Arch, ModelConfig, RopeScaling};
use inferd::model::hf_config::model_config_from_hf;
use inferd::model::loader::safetensors::SafetensorsWeights;
use inferd::model::loader::{LoadError, WeightSource};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/fixtures/safetensors")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `~/.cache/inferd/venv/bin/python weights/make_fixtures.py --out weights/fixtures --only safetensors`",
        p.display()
    );
    p
}

fn expected(dir: &Path) -> serde_json::Map<String, Value> {
    let text = fs::read_to_string(dir.join("expected.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// Bit patterns of the first `n` elements, widened to u64.
fn bits(t: &Tensor, n: usize) -> Vec<u64> {
    let flat = t.flatten(0, -1);
    let n = n.min(flat.size()[0] as usize) as i64;
    let flat = flat.narrow(0, 0, n);
    match t.kind() {
        Kind::Float => Vec::<i32>::try_from(flat.view_dtype(Kind::Int))
            .unwrap()
            .iter()
            .map(|&b| b as u32 as u64)
            .collect(),
        Kind::Half | Kind::BFloat16 => Vec::<i16>::try_from(flat.view_dtype(Kind::Int16))
            .unwrap()
            .iter()
            .map(|&b| b as u16 as u64)
            .collect(),
        k => panic!("unexpected kind {k:?}"),
    }
}

fn want_bits(e: &Value) -> Vec<u64> {
    e["bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect()
}

fn want_shape(e: &Value) -> Vec<i64> {
    e["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect()
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// A safetensors file by hand: tensors in the given order, F32 zeros.
fn write_f32_file(path: &Path, tensors: &[(&str, Vec<i64>)]) -> Vec<(String, u64, u64)> {
    let mut header = serde_json::Map::new();
    let mut ranges = Vec::new();
    let mut off = 0u64;
    for (name, shape) in tensors {
        let bytes = 4 * shape.iter().product::<i64>() as u64;
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + bytes]}),
        );
        ranges.push((name.to_string(), off, off + bytes));
        off += bytes;
    }
    let h = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend(std::iter::repeat(0u8).take(off as usize));
    fs::write(path, out).unwrap();
    ranges
}

fn write_raw_header(path: &Path, header: Value, data_len: usize) {
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend(std::iter::repeat(0u8).take(data_len));
    fs::write(path, out).unwrap();
}

#[test]
fn float_dtypes_round_trip_exactly() {
    let dir = fixture("dtypes");
    let w = SafetensorsWeights::open(&dir).unwrap();
    let exp = expected(&dir);
    for (name, kind) in [
        ("w.f32", Kind::Float),
        ("w.f16", Kind::Half),
        ("w.bf16", Kind::BFloat16),
        ("w.special_f32", Kind::Float),
        ("w.special_bf16", Kind::BFloat16),
        ("w.scalar", Kind::Float),
    ] {
        let t = w.load(name).unwrap();
        assert_eq!(t.kind(), kind, "{name}");
        assert_eq!(t.device(), tch::Device::Cpu);
        assert_eq!(t.size(), want_shape(&exp[name]), "{name}");
        assert_eq!(w.shape(name).unwrap(), want_shape(&exp[name]), "{name}");
        assert_eq!(bits(&t, 8), want_bits(&exp[name]), "{name}");
    }
    // F64 comes back as F32, rounded once.
    let t = w.load("w.f64").unwrap();
    assert_eq!(t.kind(), Kind::Float);
    assert_eq!(t.size(), vec![2, 2]);
    let want: Vec<u64> = want_bits(&exp["w.f64"])
        .iter()
        .map(|&b| (f64::from_bits(b) as f32).to_bits() as u64)
        .collect();
    assert_eq!(bits(&t, 8), want);
}

#[test]
fn single_file_path_opens_too() {
    let file = fixture("dtypes").join("model.safetensors");
    let w = SafetensorsWeights::open(&file).unwrap();
    assert_eq!(w.origin(), file);
    assert!(w.contains("w.f32"));
    assert!(!w.contains("w.nope"));
    assert_eq!(w.names().len(), 8);
    assert_eq!(w.dtype("ids.i32"), Some("I32"));
}

#[test]
fn integer_tensor_asked_as_weight_is_a_clear_error() {
    let w = SafetensorsWeights::open(&fixture("dtypes")).unwrap();
    assert_eq!(w.shape("ids.i32"), Some(vec![2, 3]));
    match w.load("ids.i32") {
        Err(e @ LoadError::UnsupportedType { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("ids.i32") && msg.contains("I32") && msg.contains("model.safetensors"),
                "{msg}"
            );
        }
        other => panic!(
            "expected UnsupportedType, got {:?}",
            other.map(|t| t.size())
        ),
    }
}

#[test]
fn missing_tensor_and_wrong_shape_are_errors() {
    let w = SafetensorsWeights::open(&fixture("dtypes")).unwrap();
    assert!(
        matches!(w.load("w.nope"), Err(LoadError::MissingTensor { tensor, .. }) if tensor == "w.nope")
    );
    match w.load_shaped("w.f32", &[5, 3]) {
        Err(LoadError::Shape {
            expected, found, ..
        }) => {
            assert_eq!(expected, vec![5, 3]);
            assert_eq!(found, vec![3, 5]);
        }
        other => panic!("expected Shape, got {:?}", other.map(|t| t.size())),
    }
}

#[test]
fn sharded_checkpoint_finds_every_tensor_in_its_shard() {
    let dir = fixture("llama_sharded");
    let w = SafetensorsWeights::open(&dir).unwrap();
    let exp = expected(&dir);
    assert_eq!(w.names().len(), exp.len());
    assert!(exp.len() > 10);
    for (name, e) in &exp {
        let t = w.load(name).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(t.size(), want_shape(e), "{name}");
        assert_eq!(bits(&t, 8), want_bits(e), "{name}");
    }
    assert_eq!(w.origin(), dir);
}

#[test]
fn gpt2_names_without_transformer_prefix_are_found() {
    let dir = fixture("gpt2_legacy");
    let w = SafetensorsWeights::open(&dir).unwrap();
    let exp = expected(&dir);
    // Stored names are exposed as they are, buffers included.
    assert!(w.names().contains(&"h.0.attn.bias".to_string()));
    assert!(!w.names().iter().any(|n| n.starts_with("transformer.")));
    let e = &exp["h.1.attn.c_attn.weight"];
    for name in [
        "transformer.h.1.attn.c_attn.weight",
        "h.1.attn.c_attn.weight",
    ] {
        assert_eq!(w.shape(name), Some(want_shape(e)), "{name}");
        assert_eq!(bits(&w.load(name).unwrap(), 8), want_bits(e), "{name}");
    }
    assert!(w.contains("transformer.wte.weight"));
    assert!(matches!(
        w.load("transformer.h.9.mlp.c_fc.weight"),
        Err(LoadError::MissingTensor { .. })
    ));
}

#[test]
fn configs_parse_like_transformers() {
    let llama = model_config_from_hf(&fixture("llama_sharded")).unwrap();
    assert_eq!(
        llama,
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 32,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            max_position_embeddings: 256,
            norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0
            }),
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: Some(1),
            // 2 from config.json, 7 added by generation_config.json.
            eos_token_ids: vec![2, 7],
        }
    );

    let qwen = model_config_from_hf(&fixture("qwen2")).unwrap();
    assert_eq!(
        qwen,
        ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: 151936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            max_position_embeddings: 32768,
            norm_eps: 1e-6,
            rope_theta: 1e6,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: true,
            bos_token_id: Some(151643),
            eos_token_ids: vec![151645],
        }
    );

    let gpt2 = model_config_from_hf(&fixture("gpt2")).unwrap();
    assert_eq!(
        gpt2,
        ModelConfig {
            arch: Arch::Gpt2,
            vocab_size: 50257,
            hidden_size: 768,
            intermediate_size: 3072,
            num_layers: 12,
            num_heads: 12,
            num_kv_heads: 12,
            head_dim: 64,
            max_position_embeddings: 1024,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: true,
            bos_token_id: Some(50256),
            eos_token_ids: vec![50256],
        }
    );

    let mistral = model_config_from_hf(&fixture("mistral")).unwrap();
    assert_eq!(mistral.arch, Arch::Llama);
    assert_eq!(
        (mistral.num_heads, mistral.num_kv_heads, mistral.head_dim),
        (8, 2, 32)
    );
    assert_eq!(mistral.max_position_embeddings, 131072);
    assert_eq!(mistral.eos_token_ids, vec![2]);

    // transformers 4 layout: top-level rope_theta, legacy rope_scaling "type".
    let v4 = model_config_from_hf(&fixture("llama_v4")).unwrap();
    assert_eq!(v4.rope_theta, 100000.0);
    assert_eq!(v4.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    assert_eq!((v4.num_heads, v4.num_kv_heads, v4.head_dim), (9, 3, 64));
    assert!(v4.tie_word_embeddings);
}

/// Write `config` into a fresh folder and parse it.
fn parse(config: Value) -> Result<ModelConfig, LoadError> {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    model_config_from_hf(tmp.path())
}

fn base_llama() -> Value {
    json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2})
}

#[test]
fn minimal_llama_config_takes_transformers_defaults() {
    let c = parse(base_llama()).unwrap();
    assert_eq!(
        (c.num_kv_heads, c.head_dim, c.max_position_embeddings),
        (2, 4, 2048)
    );
    assert_eq!((c.rope_theta, c.norm_eps), (10000.0, 1e-6));
    assert!(!c.tie_word_embeddings && !c.attention_bias);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (None, vec![]));
}

#[test]
fn config_errors_name_the_key() {
    let mut cfg = base_llama();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    match parse(cfg) {
        Err(e @ LoadError::MissingKey { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("hidden_size") && msg.contains("config.json"),
                "{msg}"
            );
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }

    let mut cfg = base_llama();
    cfg["num_attention_heads"] = json!("two");
    assert!(
        matches!(parse(cfg), Err(LoadError::BadKey { key, .. }) if key == "num_attention_heads")
    );

    let mut cfg = base_llama();
    cfg["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0});
    assert!(
        matches!(parse(cfg), Err(LoadError::MissingKey { key, .. }) if key == "rope_parameters.low_freq_factor")
    );

    let mut cfg = base_llama();
    cfg["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
    assert!(
        matches!(parse(cfg), Err(LoadError::Unsupported { reason, .. }) if reason.contains("yarn"))
    );

    let mut cfg = base_llama();
    cfg["model_type"] = json!("bert");
    assert!(
        matches!(parse(cfg), Err(LoadError::Unsupported { reason, .. }) if reason.contains("bert"))
    );

    let mut cfg = base_llama();
    cfg["num_key_value_heads"] = json!(3);
    assert!(
        matches!(parse(cfg), Err(LoadError::BadKey { key, .. }) if key == "num_key_value_heads")
    );

    let mut cfg = base_llama();
    cfg["eos_token_id"] = json!([1, "x"]);
    assert!(matches!(parse(cfg), Err(LoadError::BadKey { key, .. }) if key == "eos_token_id"));

    let mut cfg = base_llama();
    cfg["mlp_bias"] = json!(true);
    assert!(matches!(parse(cfg), Err(LoadError::Unsupported { .. })));

    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        model_config_from_hf(tmp.path()),
        Err(LoadError::Format { .. })
    ));
}

#[test]
fn missing_folder_is_an_io_error_naming_it() {
    let missing = Path::new("/definitely/not/here");
    match SafetensorsWeights::open(missing) {
        Err(LoadError::Io { path, .. }) => assert_eq!(path, missing),
        Err(e) => panic!("expected Io, got {e}"),
        Ok(_) => panic!("opened a missing folder"),
    }
    assert!(
        matches!(model_config_from_hf(missing), Err(LoadError::Io { path, .. }) if path.starts_with(missing))
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        SafetensorsWeights::open(empty.path()),
        Err(LoadError::Format { .. })
    ));
}

fn open_err(path: &Path) -> LoadError {
    match SafetensorsWeights::open(path) {
        Err(e) => e,
        Ok(w) => panic!("{} opened, with {:?}", path.display(), w.names()),
    }
}

#[test]
fn corrupt_header_is_a_format_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.safetensors");
    // Garbage whose first 8 bytes read as a huge header length.
    fs::write(&file, b"\xde\xad\xbe\xef garbage garbage garbage").unwrap();
    assert!(matches!(open_err(tmp.path()), LoadError::Format { path, .. } if path == file));
    // A plausible length followed by non-JSON bytes.
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{{{{not json}}}}");
    fs::write(&file, &bytes).unwrap();
    assert!(matches!(open_err(tmp.path()), LoadError::Format { path, .. } if path == file));
    // Too short for the length itself.
    fs::write(&file, b"abc").unwrap();
    assert!(matches!(open_err(tmp.path()), LoadError::Format { .. }));
    // Shape and data_offsets disagree.
    write_raw_header(
        &file,
        json!({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}),
        12,
    );
    assert!(matches!(open_err(&file), LoadError::Format { reason, .. } if reason.contains("`x`")));
    // Header length runs past the end of the file.
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    fs::write(&file, &bytes).unwrap();
    assert!(matches!(open_err(&file), LoadError::Truncated { .. }));
}

#[test]
fn truncated_file_names_the_cut_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.safetensors");
    let ranges = write_f32_file(&file, &[("a.weight", vec![4, 4]), ("b.weight", vec![8, 4])]);
    let full = fs::read(&file).unwrap();
    // Cut in the middle of b's data: a is intact, b is not.
    let b_mid = (full.len() as u64 - (ranges[1].2 - ranges[1].1) / 2) as usize;
    fs::write(&file, &full[..b_mid]).unwrap();
    match open_err(&file) {
        LoadError::Truncated {
            path, what, len, ..
        } => {
            assert_eq!(path, file);
            assert!(what.contains("b.weight"), "{what}");
            assert_eq!(len, b_mid as u64);
        }
        e => panic!("expected Truncated, got {e}"),
    }

    // A real shard of the sharded checkpoint, cut short.
    let dir = copy_dir(&fixture("llama_sharded"));
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    match open_err(dir.path()) {
        LoadError::Truncated { path, what, .. } => {
            assert_eq!(path, shard);
            assert!(what.starts_with("tensor `model."), "{what}");
        }
        e => panic!("expected Truncated, got {e}"),
    }
}

#[test]
fn index_problems_are_reported() {
    // Index names a shard that is not there.
    let dir = copy_dir(&fixture("llama_sharded"));
    let gone = dir.path().join("model-00003-of-00003.safetensors");
    fs::remove_file(&gone).unwrap();
    assert!(matches!(open_err(dir.path()), LoadError::Io { path, .. } if path == gone));

    // Index promises a tensor its shard does not hold.
    let dir = copy_dir(&fixture("llama_sharded"));
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.ghost.weight"] = json!("model-00001-of-00003.safetensors");
    fs::write(&index_path, index.to_string()).unwrap();
    assert!(
        matches!(open_err(dir.path()), LoadError::MissingTensor { tensor, .. } if tensor == "model.ghost.weight")
    );

    // Index that escapes the folder.
    index["weight_map"]["model.ghost.weight"] = json!("../elsewhere.safetensors");
    fs::write(&index_path, index.to_string()).unwrap();
    assert!(matches!(open_err(dir.path()), LoadError::Format { path, .. } if path == index_path));

    // Index that is not JSON.
    fs::write(&index_path, "garbage").unwrap();
    assert!(matches!(open_err(dir.path()), LoadError::Format { path, .. } if path == index_path));
}
