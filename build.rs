//! Link-time glue for libtorch.
//!
//! torch-sys links libtorch, but the linker's `--as-needed` drops
//! libtorch_cuda.so because nothing references it directly, and then CUDA is
//! never available even on a GPU machine. We force it in, and add an rpath to
//! torch/lib so the binary (and the tests) find libtorch at run time without
//! LD_LIBRARY_PATH. `$ORIGIN/lib` is also on the rpath for relocatable bundles.
//!
//! It also compiles `src/model/packed_linear.cpp`, a small C++ shim over
//! libtorch's oneDNN packed-linear ops that tch has no binding for, and sets
//! `cfg(inferd_packed_linear)` when it did.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(inferd_packed_linear)");
    let Some(dir) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run `make setup` (no rpath to torch/lib, no packed linear)");
        return;
    };
    let torch = PathBuf::from(dir);
    compile_packed_linear(&torch);
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

/// Build the oneDNN packed-linear shim against libtorch's headers.
fn compile_packed_linear(torch: &Path) {
    const SRC: &str = "src/model/packed_linear.cpp";
    println!("cargo:rerun-if-changed={SRC}");
    let include = torch.join("include");
    if !include.join("ATen/core/dispatch/Dispatcher.h").exists() {
        println!("cargo:warning=no libtorch headers under {}; CPU linears run unpacked", include.display());
        return;
    }
    cc::Build::new()
        .cpp(true)
        .file(SRC)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .std("c++17")
        // The pinned torch wheel (2.11) is built with the C++11 string ABI; a
        // mismatch would fail to link, not misbehave.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .compile("inferd_packed_linear");
    println!("cargo:rustc-cfg=inferd_packed_linear");
}
