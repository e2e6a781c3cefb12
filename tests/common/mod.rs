//! Helpers shared by the integration tests: fixture paths, loading, and a
//! block allocator that hands out scattered block ids so paging is exercised.
#![allow(dead_code)]

pub mod admin;
pub mod server;

use std::path::PathBuf;

use inferd::model::{loader::safetensors::SafetensorsWeights, hf_config, Model, Placement, SeqInput};
use tch::{Device, Kind, Tensor};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    let p = root().join("weights/fixtures").join(rel);
    assert!(p.exists(), "missing fixture {} — run `make setup`", p.display());
    p
}

pub fn cpu(kind: Kind) -> Placement {
    Placement { device: Device::Cpu, kind, gguf_blocks: false }
}

/// Load a Hugging Face folder fixture.
pub fn load_hf(rel: &str, kind: Kind) -> Model {
    let dir = fixture(rel);
    let cfg = hf_config::model_config_from_hf(&dir).expect("config");
    let ws = SafetensorsWeights::open(&dir).expect("weights");
    Model::from_source(&cfg, &ws, cpu(kind), None).expect("model")
}

/// Hands out block ids in a scattered order (stride through the pool) so a
/// sequence's blocks are never contiguous.
pub struct Blocks {
    next: i64,
    pub total: i64,
}

impl Blocks {
    pub fn new(total: i64) -> Blocks {
        Blocks { next: 0, total }
    }
    pub fn take(&mut self) -> i64 {
        // 7 is coprime with the pool sizes used in tests.
        let id = (self.next * 7) % self.total;
        self.next += 1;
        assert!(self.next <= self.total, "test pool exhausted");
        id
    }
    /// Extend `table` so it covers `ctx` positions.
    pub fn cover(&mut self, table: &mut Vec<i64>, ctx: i64, block_size: i64) {
        while (table.len() as i64) * block_size < ctx {
            table.push(self.take());
        }
    }
}

/// Feed `tokens` after `start` cached positions for one sequence.
pub fn seq(tokens: &[i64], start: i64, table: &[i64]) -> SeqInput {
    SeqInput { tokens: tokens.to_vec(), start_pos: start, block_table: table.to_vec() }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

pub fn to_vec_i64(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1).to_kind(Kind::Int64)).expect("ids")
}
