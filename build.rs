//! Link-time glue for libtorch.
//!
//! torch-sys links libtorch, but the linker's `--as-needed` drops
//! libtorch_cuda.so because nothing references it directly, and then CUDA is
//! never available even on a GPU machine. We force it in, and add an rpath to
//! torch/lib so the binary (and the tests) find libtorch at run time without
//! LD_LIBRARY_PATH. `$ORIGIN/lib` is also on the rpath for relocatable bundles.
//!
//! It links tcmalloc when installed (see `link_tcmalloc`).
//!
//! It also compiles small C++ shims against libtorch's headers and sets
//! `cfg(inferd_torch_shim)` when it did: `src/model/packed_linear.cpp`
//! (libtorch's oneDNN packed-linear ops, which tch has no binding for),
//! `src/model/gemv_bf16.cpp` (decode-row bf16 products on those packed bytes),
//! `src/model/amx_bf16.cpp` (bf16 products on AMX tiles at every row count,
//! on the same bytes),
//! `src/model/gemv_gguf.cpp` (products on a GGUF file's own Q4/Q8_0 blocks),
//! `src/model/cpu_pool.cpp` (the decode steps' own worker threads),
//! `src/model/fused_cpu.cpp` (fused CPU loops for a layer's element-wise
//! steps), `src/model/decode_attention.cpp` (paged decode attention on CPU;
//! its bf16 work item with AVX512-BF16 in `decode_attention_bf16.cpp`),
//! `src/model/chunk_attention.cpp` (a prefill chunk's attention over its
//! cached prefix, bf16 on AVX512-BF16; both bf16 attention kernels share
//! `softmax_bf16.h`),
//! `src/model/inference_mode.cpp` (libtorch's InferenceMode),
//! `src/model/parallel_for.cpp` (Rust loops on libtorch's threads) and
//! `src/model/decode_stack.cpp` (a few-row decode step in one call, on the
//! kernels' raw-row entries declared in `src/model/row_kernels.h`).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(inferd_torch_shim)");
    println!("cargo::rustc-check-cfg=cfg(inferd_tcmalloc)");
    let Some(dir) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run `make setup` (no rpath to torch/lib, no C++ shims)");
        return;
    };
    let torch = PathBuf::from(dir);
    compile_shims(&torch);
    link_tcmalloc();
    let lib = torch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/lib");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Build the C++ shims against libtorch's headers.
fn compile_shims(torch: &Path) {
    const SRCS: [&str; 12] = [
        "src/model/packed_linear.cpp",
        "src/model/amx_bf16.cpp",
        "src/model/cpu_pool.cpp",
        "src/model/gemv_bf16.cpp",
        "src/model/gemv_gguf.cpp",
        "src/model/fused_cpu.cpp",
        "src/model/decode_attention.cpp",
        "src/model/decode_attention_bf16.cpp",
        "src/model/chunk_attention.cpp",
        "src/model/inference_mode.cpp",
        "src/model/parallel_for.cpp",
        "src/model/decode_stack.cpp",
    ];
    for src in SRCS.iter().chain(&["src/model/shim_error.h", "src/model/cpu_kernels.h", "src/model/boxed_op.h", "src/model/cpu_pool.h", "src/model/decode_attention_bf16.h", "src/model/softmax_bf16.h", "src/model/owned_chunks.h", "src/model/row_kernels.h", "src/model/amx_tiles.h"]) {
        println!("cargo:rerun-if-changed={src}");
    }
    let include = torch.join("include");
    if !include.join("ATen/core/dispatch/Dispatcher.h").exists() {
        println!("cargo:warning=no libtorch headers under {}; CPU linears run unpacked, element-wise steps unfused", include.display());
        return;
    }
    cc::Build::new()
        .cpp(true)
        .files(SRCS)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .std("c++17")
        // The pinned torch wheel (2.11) is built with the C++11 string ABI; a
        // mismatch would fail to link, not misbehave.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        // decode_attention.cpp passes 64-byte vectors between always-inlined
        // functions of one file; no such value crosses an ABI boundary.
        .flag_if_supported("-Wno-psabi")
        // The fused CPU kernels reproduce libtorch's roundings; a fused multiply-add
        // would skip one.
        .flag("-ffp-contract=off")
        // No FP exception is ever inspected, and with traps assumed GCC will
        // not vectorize a loop whose exp has range checks. Results are unchanged
        // (no reassociation, no new rounding).
        .flag("-fno-trapping-math")
        // at::parallel_for in the fused CPU kernels is OpenMP inline code; it must
        // run on libtorch's own OpenMP runtime (linked below), not a second one.
        .flag("-fopenmp")
        .opt_level(3)
        .compile("inferd_torch_shim");
    println!("cargo:rustc-cfg=inferd_torch_shim");
    println!("cargo:rustc-link-arg=-L{}", torch.join("lib").display());
    println!("cargo:rustc-link-arg=-l:libgomp.so.1");
}

/// Where Debian's libtcmalloc-minimal4 (scripts/setup-system.sh) puts the
/// library.
const TCMALLOC_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"];
const TCMALLOC: &str = "libtcmalloc_minimal.so.4";

/// Link gperftools' tcmalloc when it is installed, so it serves every
/// malloc in the process, libtorch's and oneDNN's included: a CPU decode
/// step allocates and frees hundreds of small tensors and oneDNN
/// descriptors, and glibc's malloc spent ~9% of the step thread in
/// free/consolidate. As a NEEDED library ahead of libc, its malloc wins
/// symbol lookup everywhere (the tcmalloc test checks it).
/// INFERD_NO_TCMALLOC=1 builds without it.
fn link_tcmalloc() {
    println!("cargo:rerun-if-env-changed=INFERD_NO_TCMALLOC");
    if std::env::var_os("INFERD_NO_TCMALLOC").is_some_and(|v| v == "1") {
        return;
    }
    let Some(dir) = TCMALLOC_DIRS.iter().map(Path::new).find(|d| d.join(TCMALLOC).exists()) else {
        println!("cargo:warning={TCMALLOC} not found (scripts/setup-system.sh installs it); glibc malloc serves libtorch");
        return;
    };
    println!("cargo:rerun-if-changed={}", dir.join(TCMALLOC).display());
    // A link-lib (not a link-arg) so it lands ahead of libc on the command
    // line: the linker then binds malloc to it and keeps it as needed.
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib:+verbatim={TCMALLOC}");
    println!("cargo:rustc-cfg=inferd_tcmalloc");
}
