//! What runs on a worker around the model forward. Sampling, incremental
//! detokenization and stop strings are plain Rust and live in `inferd-actors`
//! (the batcher needs them without libtorch); they are re-exported here.

pub use inferd_actors::{detok, sampler, stop};
