//! Every shipped config (config/*.toml) loads with `Config::load`; the
//! multi-model one serves at least three models, GPT-2 and LLaMA family
//! alike, and its local sources exist once `make setup` has run; an invalid
//! config fails naming the key.

mod common;

use inferd::config::Config;

#[test]
fn every_shipped_config_parses() {
    let dir = common::root().join("config");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().to_string();
        if name.starts_with("keys") && name.ends_with(".toml") {
            // An API-keys file, not a server config.
            let keys = inferd::ops_config::load_keys(Some(&path), None, None).unwrap_or_else(|e| panic!("{e}"));
            inferd::api::auth::KeyStore::new(&keys, true, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(keys.len() >= 2, "{}", path.display());
            names.push(name);
        } else if path.extension().is_some_and(|e| e == "toml") {
            let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!cfg.engine_config().models.is_empty(), "{}", path.display());
            names.push(
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string(),
            );
        }
    }
    names.sort();
    assert_eq!(
        names,
        ["default.toml", "keys.example.toml", "multi-model.toml", "production.toml"]
    );
}

#[test]
fn multi_model_serves_several_families_from_local_files() {
    let cfg =
        Config::load(&common::root().join("config/multi-model.toml")).expect("multi-model.toml");
    assert!(cfg.models.len() >= 3, "{:?}", cfg.models.keys());
    let mut archs = Vec::new();
    for (name, m) in &cfg.models {
        for (v, c) in &m.versions {
            assert!(
                c.source.exists(),
                "models.{name}.versions.{v}.source: {} is missing — run `make setup`",
                c.source.display()
            );
            if c.source.is_dir() {
                let text =
                    std::fs::read_to_string(c.source.join("config.json")).expect("config.json");
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                archs.push(v["model_type"].as_str().unwrap_or("").to_string());
            }
        }
    }
    for family in ["gpt2", "qwen2", "llama"] {
        assert!(
            archs.iter().any(|a| a == family),
            "no {family} model: {archs:?}"
        );
    }
    let smollm2 = &cfg.models["smollm2"];
    assert!(
        smollm2.versions.len() >= 2,
        "smollm2 has a second version to swap to"
    );
}

#[test]
fn an_invalid_config_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    let text = "[server]\ndevices = [\"tpu:0\"]\n[models.m]\nactive = \"v1\"\n[models.m.versions.v1]\nsource = \"x.gguf\"\n";
    std::fs::write(&path, text).expect("write");
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("server.devices") && err.contains("tpu:0"),
        "{err}"
    );
}
