//! inferd: an actor-system LLM serving engine whose workers run LLaMA- and
//! GPT-family models through libtorch (tch).
//!
//! Crate map:
//! - [`model`]: everything that turns files into a runnable model — loaders
//!   (GGUF, safetensors), the architecture config, tokenizer and chat
//!   template, the layers, the LLaMA and GPT-2 model code and the paged KV
//!   cache they read and write.
//! - [`exec`]: what runs on a worker around the model — sampling and
//!   incremental detokenization.
//! - [`generate`]: the single-sequence generation loop behind `inferd generate`.
//! - [`models_cli`]: `inferd models ...`, the admin API from the command line.
//!
//! The actor system itself (supervisor, router, batcher, worker) and the plain
//! state it drives (scheduler, block manager) live in the `inferd-actors` crate,
//! which does not depend on libtorch.

pub mod api;
pub mod bench;
pub mod config;
pub mod exec;
pub mod generate;
pub mod model;
pub mod models_cli;
pub mod ops_config;
pub mod serve_ops;
pub mod ui;
