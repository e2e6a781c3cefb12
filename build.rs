//! Link-time glue for libtorch.
//!
//! torch-sys links libtorch, but the linker's `--as-needed` drops
//! libtorch_cuda.so because nothing references it directly, and then CUDA is
//! never available even on a GPU machine. We force it in, and add an rpath to
//! torch/lib so the binary (and the tests) find libtorch at run time without
//! LD_LIBRARY_PATH. `$ORIGIN/lib` is also on the rpath for relocatable bundles.
//!
//! It also compiles small C++ shims against libtorch's headers and sets
//! `cfg(inferd_torch_shim)` when it did: `src/model/packed_linear.cpp`
//! (libtorch's oneDNN packed-linear ops, which tch has no binding for),
//! `src/model/fused_cpu.cpp` (fused CPU loops for a layer's element-wise
//! steps) and `src/model/inference_mode.cpp` (libtorch's InferenceMode).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(inferd_torch_shim)");
    let Some(dir) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run `make setup` (no rpath to torch/lib, no C++ shims)");
        return;
    };
    let torch = PathBuf::from(dir);
    compile_shims(&torch);
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
    const SRCS: [&str; 3] = ["src/model/packed_linear.cpp", "src/model/fused_cpu.cpp", "src/model/inference_mode.cpp"];
    for src in SRCS {
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
        // fused_cpu.cpp reproduces libtorch's roundings; a fused multiply-add
        // would skip one.
        .flag("-ffp-contract=off")
        // at::parallel_for in fused_cpu.cpp is OpenMP inline code; it must
        // run on libtorch's own OpenMP runtime (linked below), not a second one.
        .flag("-fopenmp")
        .opt_level(3)
        .compile("inferd_torch_shim");
    println!("cargo:rustc-cfg=inferd_torch_shim");
    println!("cargo:rustc-link-arg=-L{}", torch.join("lib").display());
    println!("cargo:rustc-link-arg=-l:libgomp.so.1");
}
