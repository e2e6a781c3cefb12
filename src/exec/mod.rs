//! What runs on a worker around the model forward: sampling and incremental
//! detokenization.

pub mod detok;
pub mod sampler;
pub mod stop;
