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

/// build.rs links tcmalloc (when installed) so that it, not glibc, serves
/// libtorch's allocations; that only holds if its `malloc` wins symbol lookup.
#[cfg(all(test, inferd_tcmalloc))]
mod tcmalloc_test {
    use std::ffi::{c_char, c_int, c_void, CStr};

    #[repr(C)]
    struct DlInfo {
        fname: *const c_char,
        fbase: *mut c_void,
        sname: *const c_char,
        saddr: *mut c_void,
    }

    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    }

    #[test]
    fn malloc_is_tcmallocs() {
        // RTLD_DEFAULT (null): the process's global lookup order, the one
        // libtorch's calls resolve through.
        let mut info = DlInfo { fname: std::ptr::null(), fbase: std::ptr::null_mut(), sname: std::ptr::null(), saddr: std::ptr::null_mut() };
        // SAFETY: dlsym and dladdr read a NUL-terminated name and fill `info`,
        // whose layout is glibc's Dl_info; fname points into the loader's
        // own strings, valid while the library stays loaded.
        let lib = unsafe {
            let addr = dlsym(std::ptr::null_mut(), c"malloc".as_ptr());
            assert!(!addr.is_null(), "malloc not found");
            assert!(dladdr(addr, &mut info) != 0 && !info.fname.is_null(), "no library for malloc");
            CStr::from_ptr(info.fname).to_string_lossy().into_owned()
        };
        assert!(lib.contains("libtcmalloc"), "malloc comes from {lib}");
    }
}
