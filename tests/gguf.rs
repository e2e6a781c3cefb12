//! GGUF loader against gguf-py's own files and the real SmolLM2 GGUF.
//!
//! Fixtures come from `weights/fixtures_gguf.py` (build with
//! `weights/make_fixtures.py --out weights/fixtures --only gguf`): metadata of
//! every value type, one tensor per ggml type with gguf-py's dequantized
//! values, and tiny llama / gpt2 models whose expected HF tensors are known.
//! Error cases work on corrupted copies in a tempdir; none may panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use inferd::model::config::{Arch, RopeScaling};
use inferd::model::loader::dequant::GgmlType;
use inferd::model::loader::gguf::{GgufFile, GgufValue};
use inferd::model::loader::gguf_weights::{
    model_config, permute_rows, unpermute_rows, GgufWeights,
};
use inferd::model::loader::{LoadError, WeightSource};
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    let p = root().join("weights/fixtures/gguf").join(name);
    assert!(
        p.exists(),
        "{} missing: run ~/.cache/inferd/venv/bin/python weights/make_fixtures.py --out weights/fixtures --only gguf",
        p.display()
    );
    p
}

fn smollm2() -> PathBuf {
    let p = root().join("weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing (scripts/setup.sh fetches it)",
        p.display()
    );
    p
}

/// All float32 tensors of a safetensors file.
fn expected(path: &Path) -> BTreeMap<String, (Vec<i64>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let shape = view.shape().iter().map(|&d| d as i64).collect();
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (shape, data))
        })
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("metadata.json")).unwrap()).unwrap()
}

#[test]
fn metadata_values_equal_what_gguf_py_wrote() {
    let g = GgufFile::open(&fixture("types.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.architecture().unwrap(), "test");
    let meta = json()["metadata"].as_object().unwrap().clone();
    assert!(meta.len() >= 14);
    for (key, spec) in &meta {
        let v = g.meta(key).unwrap_or_else(|e| panic!("{e}"));
        let want = &spec["value"];
        match (spec["type"].as_str().unwrap(), v) {
            ("u8", GgufValue::U8(x)) => assert_eq!(*x as u64, want.as_u64().unwrap()),
            ("i8", GgufValue::I8(x)) => assert_eq!(*x as i64, want.as_i64().unwrap()),
            ("u16", GgufValue::U16(x)) => assert_eq!(*x as u64, want.as_u64().unwrap()),
            ("i16", GgufValue::I16(x)) => assert_eq!(*x as i64, want.as_i64().unwrap()),
            ("u32", GgufValue::U32(x)) => assert_eq!(*x as u64, want.as_u64().unwrap()),
            ("i32", GgufValue::I32(x)) => assert_eq!(*x as i64, want.as_i64().unwrap()),
            ("u64", GgufValue::U64(x)) => assert_eq!(*x, want.as_u64().unwrap()),
            ("i64", GgufValue::I64(x)) => assert_eq!(*x, want.as_i64().unwrap()),
            ("f32", GgufValue::F32(x)) => assert_eq!(*x, want.as_f64().unwrap() as f32),
            ("f64", GgufValue::F64(x)) => assert_eq!(*x, want.as_f64().unwrap()),
            ("bool", GgufValue::Bool(x)) => assert_eq!(*x, want.as_bool().unwrap()),
            ("string", GgufValue::String(x)) => assert_eq!(x, want.as_str().unwrap()),
            ("array_string", GgufValue::Array(items)) => {
                let want = want.as_array().unwrap();
                assert_eq!(items.len(), want.len());
                for (a, b) in items.iter().zip(want) {
                    assert_eq!(a.as_str(), b.as_str());
                }
            }
            ("array_i32", GgufValue::Array(items)) => {
                let got: Vec<i64> = items.iter().map(|v| v.as_i64().unwrap()).collect();
                let want: Vec<i64> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                assert_eq!(got, want);
            }
            (ty, v) => panic!("{key}: expected a {ty}, parsed {v:?}"),
        }
    }
    // Typed accessors and their errors.
    assert_eq!(g.meta_u64("test.u16").unwrap(), 60000);
    assert_eq!(g.meta_f64("test.u8").unwrap(), 200.0);
    assert_eq!(g.meta_f64("test.f32").unwrap(), 0.15625);
    assert_eq!(g.meta_str("test.string").unwrap(), "héllo, wörld ✓");
    assert!(matches!(
        g.meta_u64("test.i8"),
        Err(LoadError::BadKey { .. })
    ));
    assert!(matches!(
        g.meta_str("test.u8"),
        Err(LoadError::BadKey { .. })
    ));
    match g.meta_u64("no.such.key") {
        Err(LoadError::MissingKey { key, .. }) => assert_eq!(key, "no.such.key"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_type_dequantizes_to_gguf_py_values() {
    let path = fixture("types.gguf");
    let g = GgufFile::open(&path).unwrap();
    let want = expected(&fixture("types_expected.safetensors"));
    let specs = json()["tensors"].as_object().unwrap().clone();
    assert_eq!(g.tensor_infos().count(), specs.len());
    for (name, spec) in &specs {
        let info = g.tensor_info(name).unwrap();
        let shape: Vec<i64> = spec["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let gguf_dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(info.dims, gguf_dims, "{name}");
        assert_eq!(
            info.ggml_type.name(),
            spec["type"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            info.offset % 64,
            0,
            "{name} not aligned to general.alignment"
        );
        assert_eq!(g.tensor_bytes(name).unwrap().len() as u64, info.n_bytes);

        let t = g.load_tensor(name).unwrap();
        let kind = match info.ggml_type {
            GgmlType::F16 => Kind::Half,
            GgmlType::BF16 => Kind::BFloat16,
            _ => Kind::Float,
        };
        assert_eq!(t.kind(), kind, "{name}");
        assert_eq!(t.size(), shape, "{name}");
        let (wshape, wvals) = &want[name.as_str()];
        assert_eq!(wshape, &shape);
        let d = max_diff(&values(&t), wvals);
        // Same arithmetic as ggml / gguf-py (f32 multiply, then add), so the
        // values agree bit for bit; the brief's bound is 1e-6.
        assert!(d == 0.0, "{name} ({}): max |diff| {d}", info.ggml_type);
    }
}

#[test]
fn llama_q_k_permutation_is_undone() {
    let path = fixture("llama.gguf");
    let w = GgufWeights::open(&path).unwrap();
    let want = expected(&fixture("llama_expected.safetensors"));
    let names: Vec<&str> = w.hf_names().collect();
    assert_eq!(
        names,
        want.keys().map(|s| s.as_str()).collect::<Vec<_>>(),
        "rope_freqs must not be mapped"
    );
    for (name, (shape, vals)) in &want {
        assert_eq!(w.shape(name).as_ref(), Some(shape), "{name}");
        let t = w.load_shaped(name, shape).unwrap();
        assert_eq!(values(&t), *vals, "{name} differs from the HF tensor");
    }
    // The permutation really moved rows (else the test above proves nothing).
    let raw = w.file().load_tensor("blk.0.attn_q.weight").unwrap();
    assert_ne!(
        values(&raw),
        want["model.layers.0.self_attn.q_proj.weight"].1
    );

    let x = Tensor::arange(6 * 16 * 3, (Kind::Float, tch::Device::Cpu)).view([96, 3]);
    let y = unpermute_rows(&permute_rows(&x, 6).unwrap(), 6).unwrap();
    assert_eq!(values(&x), values(&y));

    let c = model_config(w.file()).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (c.hidden_size, c.num_layers, c.intermediate_size),
        (32, 1, 48)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (4, 2, 8));
    assert_eq!((c.vocab_size, c.max_position_embeddings), (10, 256));
    assert_eq!(c.rope_theta, 50000.0);
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    assert_eq!(c.norm_eps, 1e-5f32 as f64);
    assert!(!c.tie_word_embeddings);
    assert!(c.attention_bias);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2, 7]);
}

#[test]
fn gpt2_conv1d_weights_come_back_in_hf_layout() {
    let w = GgufWeights::open(&fixture("gpt2.gguf")).unwrap();
    let want = expected(&fixture("gpt2_expected.safetensors"));
    assert_eq!(w.hf_names().count(), want.len());
    for (name, (shape, vals)) in &want {
        assert_eq!(w.shape(name).as_ref(), Some(shape), "{name}");
        let t = w.load_shaped(name, shape).unwrap();
        assert!(t.is_contiguous(), "{name}");
        assert_eq!(values(&t), *vals, "{name}");
    }
    let c = w.config().unwrap();
    assert_eq!(c.arch, Arch::Gpt2);
    assert_eq!(
        (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim),
        (16, 2, 2, 8)
    );
    assert_eq!(
        (c.vocab_size, c.max_position_embeddings, c.intermediate_size),
        (12, 20, 64)
    );
    assert!(c.tie_word_embeddings);
    assert!(c.attention_bias);
    assert_eq!(c.bos_token_id, None);
}

fn smollm2_expected_shapes() -> Vec<(String, Vec<i64>)> {
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![49152, 576]),
        ("model.norm.weight".to_string(), vec![576]),
    ];
    for l in 0..30 {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![576]),
            ("post_attention_layernorm.weight", vec![576]),
            ("self_attn.q_proj.weight", vec![576, 576]),
            ("self_attn.k_proj.weight", vec![192, 576]),
            ("self_attn.v_proj.weight", vec![192, 576]),
            ("self_attn.o_proj.weight", vec![576, 576]),
            ("mlp.gate_proj.weight", vec![1536, 576]),
            ("mlp.up_proj.weight", vec![1536, 576]),
            ("mlp.down_proj.weight", vec![576, 1536]),
        ] {
            v.push((format!("{p}.{n}"), s));
        }
    }
    v
}

#[test]
fn smollm2_config_and_every_tensor() {
    let t0 = Instant::now();
    let w = GgufWeights::open(&smollm2()).unwrap();
    let open = t0.elapsed();
    let c = w.config().unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.num_layers, c.num_heads, c.num_kv_heads), (30, 9, 3));
    assert_eq!(
        (c.hidden_size, c.head_dim, c.intermediate_size),
        (576, 64, 1536)
    );
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rope_scaling, None);
    assert!(c.tie_word_embeddings);
    assert!(!c.attention_bias);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(
        w.file()
            .meta("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        49152
    );
    assert!(!w.contains("lm_head.weight"));

    let shapes = smollm2_expected_shapes();
    assert_eq!(w.hf_names().count(), shapes.len());
    let t1 = Instant::now();
    let mut n = 0i64;
    for (name, shape) in &shapes {
        let t = w.load_shaped(name, shape).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.kind(), Kind::Float, "{name}");
        n += t.numel() as i64;
    }
    let load = t1.elapsed();
    println!(
        "SmolLM2 Q4_1: open {:.1} ms, load+dequantize {} tensors ({n} values) {:.0} ms",
        open.as_secs_f64() * 1e3,
        shapes.len(),
        load.as_secs_f64() * 1e3
    );
    // A dequantized Q4_1 matrix has sane magnitudes (catches a wrong layout).
    let q = w.load("model.layers.0.self_attn.q_proj.weight").unwrap();
    let amax = q.abs().max().double_value(&[]);
    assert!(amax > 0.01 && amax < 100.0, "q_proj max |w| {amax}");
}

// ---- errors: every corrupt input is an error naming what failed, never a panic.

fn copy_to(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn missing_file_is_io_naming_the_path() {
    let p = root().join("weights/fixtures/gguf/no-such-file.gguf");
    match GgufFile::open(&p) {
        Err(e @ LoadError::Io { .. }) => {
            assert!(e.to_string().contains("no-such-file.gguf"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_magic_and_bad_version_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("types.gguf")).unwrap();
    bytes[..4].copy_from_slice(b"GGML");
    let p = copy_to(dir.path(), "magic.gguf", &bytes);
    match GgufFile::open(&p) {
        Err(e @ LoadError::Format { .. }) => assert!(e.to_string().contains("magic"), "{e}"),
        other => panic!("{other:?}"),
    }
    bytes[..4].copy_from_slice(b"GGUF");
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let p = copy_to(dir.path(), "v1.gguf", &bytes);
    assert!(matches!(GgufFile::open(&p), Err(LoadError::Format { .. })));
    let p = copy_to(dir.path(), "empty.gguf", &[]);
    assert!(matches!(
        GgufFile::open(&p),
        Err(LoadError::Truncated { .. })
    ));
}

#[test]
fn truncated_header_and_truncated_data_are_truncated_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("types.gguf")).unwrap();
    let g = GgufFile::open(&fixture("types.gguf")).unwrap();
    let first_data = g.tensor_infos().map(|t| t.offset).min().unwrap() as usize;

    // Cut inside the metadata (the big string array).
    let p = copy_to(dir.path(), "header.gguf", &bytes[..1000]);
    match GgufFile::open(&p) {
        Err(e @ LoadError::Truncated { .. }) => {
            assert!(e.to_string().contains("test.strings"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Every cut of the header is a Truncated error.
    for cut in (0..first_data - 64).step_by(53) {
        let p = copy_to(dir.path(), "cut.gguf", &bytes[..cut]);
        match GgufFile::open(&p) {
            Err(LoadError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Cut in the middle of the last tensor's data: the error names it.
    let last = g.tensor_infos().max_by_key(|t| t.offset).unwrap();
    let cut = (last.offset + last.n_bytes / 2) as usize;
    let p = copy_to(dir.path(), "data.gguf", &bytes[..cut]);
    match GgufFile::open(&p) {
        Err(e @ LoadError::Truncated { .. }) => {
            assert!(e.to_string().contains(&format!("`{}`", last.name)), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_tensor_is_missing_tensor() {
    let g = GgufFile::open(&fixture("types.gguf")).unwrap();
    assert!(
        matches!(g.load_tensor("nope"), Err(LoadError::MissingTensor { ref tensor, .. }) if tensor == "nope")
    );
    assert!(matches!(
        g.tensor_bytes("nope"),
        Err(LoadError::MissingTensor { .. })
    ));
    let w = GgufWeights::open(&fixture("llama.gguf")).unwrap();
    let err = w
        .load("model.layers.7.self_attn.q_proj.weight")
        .unwrap_err();
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("model.layers.7.self_attn.q_proj.weight"));
    assert_eq!(w.shape("model.layers.7.self_attn.q_proj.weight"), None);
    // Not a supported architecture.
    assert!(matches!(
        GgufWeights::open(&fixture("types.gguf")),
        Err(LoadError::Unsupported { .. })
    ));
}

#[test]
fn unsupported_ggml_type_names_the_tensor() {
    // Retag the Q4_0 tensor as IQ4_NL (same block and byte size, so the
    // layout stays valid) by patching its tensor info.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("types.gguf")).unwrap();
    let mut pat = Vec::new();
    pat.extend_from_slice(&4u64.to_le_bytes());
    pat.extend_from_slice(b"q4_0");
    pat.extend_from_slice(&2u32.to_le_bytes());
    pat.extend_from_slice(&96u64.to_le_bytes());
    pat.extend_from_slice(&64u64.to_le_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap()
        + pat.len();
    assert_eq!(&bytes[at..at + 4], &2u32.to_le_bytes());
    bytes[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
    let p = copy_to(dir.path(), "iq4.gguf", &bytes);
    let g = GgufFile::open(&p).unwrap();
    match g.load_tensor("q4_0") {
        Err(e @ LoadError::UnsupportedType { .. }) => {
            let s = e.to_string();
            assert!(s.contains("q4_0") && s.contains("IQ4_NL"), "{s}")
        }
        other => panic!("{other:?}"),
    }
    // An id ggml never defined fails at open, naming the tensor.
    bytes[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
    let p = copy_to(dir.path(), "id4.gguf", &bytes);
    match GgufFile::open(&p) {
        Err(e @ LoadError::UnsupportedType { .. }) => {
            assert!(e.to_string().contains("q4_0"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn random_header_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("llama.gguf")).unwrap();
    let g = GgufFile::open(&fixture("llama.gguf")).unwrap();
    let header_len = g.tensor_infos().map(|t| t.offset).min().unwrap() as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let p = dir.path().join("fuzz.gguf");
    let mut errors = 0;
    for _ in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..header_len);
            bytes[i] = rng.random();
        }
        std::fs::write(&p, &bytes).unwrap();
        // Whatever happens must be a value, not a panic; loading every tensor
        // of a file that still opens must not panic either.
        match GgufWeights::open(&p) {
            Ok(w) => {
                let _ = w.config();
                let names: Vec<String> = w.hf_names().map(String::from).collect();
                for n in names {
                    let _ = w.load(&n);
                }
            }
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0, "corruption was never noticed");
}
