//! What runs on a worker around the model forward: [`executor::TchExecutor`],
//! the tch implementation of the actors' `Executor` (weights, paged KV pools
//! and per-sequence samplers of every replica on one device). Sampling,
//! incremental detokenization and stop strings are plain Rust and live in
//! `inferd-actors` (the batcher needs them without libtorch); they are
//! re-exported here.

pub use inferd_actors::{detok, sampler, stop};

pub mod executor;
