//! Link-time glue for libtorch.
//!
//! torch-sys links libtorch, but the linker's `--as-needed` drops
//! libtorch_cuda.so because nothing references it directly, and then CUDA is
//! never available even on a GPU machine. We force it in, and add an rpath to
//! torch/lib so the binary (and the tests) find libtorch at run time without
//! LD_LIBRARY_PATH. `$ORIGIN/lib` is also on the rpath for relocatable bundles.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(dir) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run `make setup` (no rpath to torch/lib)");
        return;
    };
    let lib = PathBuf::from(dir).join("lib");
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
