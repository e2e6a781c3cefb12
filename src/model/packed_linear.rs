//! oneDNN pre-packed linear layers for CPU.
//!
//! A CPU matmul against a plain weight makes oneDNN copy the weight into its
//! blocked layout on every call; at the 1-16 rows of a decode step, reading
//! and writing that copy costs more than the product itself. libtorch can
//! pack the weight once (`mkldnn::_reorder_linear_weight`, what
//! torch.compile's weight freezing uses) and multiply against the packed
//! form (`mkldnn::_linear_pointwise`). tch has no binding for these two ops,
//! so `packed_linear.cpp` (compiled by build.rs) calls them by name.
//!
//! Measured with torch 2.11 on a 2-core Zen 4 (bf16, all 30 SmolLM2 layers
//! plus the LM head, weights not in cache): one row 7.7 ms per step packed
//! against 11.4 ms with the [out, in] weight and 18.9 ms with [in, out].
//!
//! For bf16 on CPUs with AVX512_BF16, decode-sized inputs (up to
//! `gemv_bf16::MAX_ROWS` rows) go to `gemv_bf16`'s kernel instead, which
//! reads the same packed bytes without oneDNN's per-call set-up and gives
//! the same bits; prefill chunks, biases and other dtypes stay with oneDNN.
//! On CPUs with AMX-BF16 the AMX kernel (`amx_bf16`) takes every bf16 product
//! without a bias, at any row count.

use std::ffi::c_void;
#[cfg(inferd_torch_shim)]
use std::ffi::{c_char, c_int, CStr};

use tch::{Kind, TchError, Tensor};

use super::gemv_bf16::{self, RowKernel};

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_packed_linear_available() -> c_int;
    fn inferd_pack_linear_weight(w: *const c_void, batch: i64) -> *mut c_void;
    fn inferd_packed_linear(x: *const c_void, w: *const c_void, bias: *const c_void) -> *mut c_void;
    fn inferd_packed_linear_last_error() -> *const c_char;
}

/// Whether this build and this libtorch can pack linear weights.
pub fn available() -> bool {
    #[cfg(inferd_torch_shim)]
    {
        // SAFETY: takes no arguments; only looks operators up in libtorch's registry.
        unsafe { inferd_packed_linear_available() == 1 }
    }
    #[cfg(not(inferd_torch_shim))]
    {
        false
    }
}

/// A weight in oneDNN's blocked layout; only `linear` can read it. For bf16 on
/// CPUs with AVX512_BF16 it also carries the kernel that reads the same bytes
/// for decode-sized batches (`gemv_bf16`).
#[derive(Debug)]
pub struct PackedWeight {
    packed: Tensor,
    rows: Option<RowKernel>,
}

/// Pack a dense [out, in] CPU weight, tuned for inputs of about `rows` rows
/// (any row count works).
pub fn pack(w: &Tensor, rows: i64) -> Result<PackedWeight, TchError> {
    let packed = pack_onednn(w, rows)?;
    let kernel = match (w.kind(), w.size().as_slice()) {
        // oneDNN alone still serves every row count if the probe fails.
        (Kind::BFloat16, &[n, k]) => gemv_bf16::for_packed(&packed, n, k).unwrap_or_else(|e| {
            tracing::warn!(error = %e, n, k, "decode-row kernel unavailable; oneDNN serves every row count");
            None
        }),
        _ => None,
    };
    Ok(PackedWeight { packed, rows: kernel })
}

impl PackedWeight {
    /// The row kernel's view of the packed bytes, when this weight has one.
    pub(crate) fn row_kernel(&self) -> Option<&RowKernel> {
        self.rows.as_ref()
    }

    /// Rows up to which `linear` (without bias) runs on the row kernel; 0
    /// when this weight has none.
    pub fn row_kernel_rows(&self) -> i64 {
        self.rows.as_ref().map_or(0, RowKernel::max_rows)
    }
}

/// `x W^T (+ bias)`, x [rows, in] -> [rows, out], in x's dtype.
pub fn linear(x: &Tensor, w: &PackedWeight, bias: Option<&Tensor>) -> Result<Tensor, TchError> {
    match (&w.rows, bias) {
        (Some(kernel), None) if x.size().first().is_some_and(|r| *r <= w.row_kernel_rows()) => gemv_bf16::forward(x, kernel),
        _ => linear_onednn(x, &w.packed, bias),
    }
}

/// oneDNN's packing alone, as an opaque tensor (for `gemv_bf16`'s probe and
/// the benchmarks).
pub fn pack_onednn(w: &Tensor, rows: i64) -> Result<Tensor, TchError> {
    let w = w.f_contiguous()?;
    // SAFETY: `w` is a live tensor for the whole call; the shim returns a new
    // owned at::Tensor* or null.
    wrap(unsafe { ffi_pack(&w, rows) })
}

/// oneDNN's product against `pack_onednn`'s tensor.
pub fn linear_onednn(x: &Tensor, packed: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, TchError> {
    // SAFETY: as in `pack_onednn`; null stands for "no bias".
    wrap(unsafe { ffi_linear(x, packed, bias) })
}

#[cfg(inferd_torch_shim)]
unsafe fn ffi_pack(w: &Tensor, rows: i64) -> *mut c_void {
    inferd_pack_linear_weight(w.as_ptr().cast(), rows)
}

#[cfg(inferd_torch_shim)]
unsafe fn ffi_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> *mut c_void {
    let b = bias.map_or(std::ptr::null(), |b| b.as_ptr().cast());
    inferd_packed_linear(x.as_ptr().cast(), w.as_ptr().cast(), b)
}

#[cfg(not(inferd_torch_shim))]
unsafe fn ffi_pack(_: &Tensor, _: i64) -> *mut c_void {
    std::ptr::null_mut()
}

#[cfg(not(inferd_torch_shim))]
unsafe fn ffi_linear(_: &Tensor, _: &Tensor, _: Option<&Tensor>) -> *mut c_void {
    std::ptr::null_mut()
}

/// Take ownership of a tensor the shim returned, or read its error.
fn wrap(ptr: *mut c_void) -> Result<Tensor, TchError> {
    take_tensor(ptr, "packed linear")
}

/// Take ownership of a tensor a shim returned, or read its error, prefixed
/// with `what` (the shims of `gemv_gguf` share this).
pub(super) fn take_tensor(ptr: *mut c_void, what: &str) -> Result<Tensor, TchError> {
    if ptr.is_null() {
        return Err(TchError::Torch(format!("{what}: {}", last_error())));
    }
    // SAFETY: a non-null return is a fresh `new at::Tensor`, which is what tch's
    // handles are; the Tensor now owns it and frees it on drop.
    Ok(unsafe { Tensor::from_ptr(ptr.cast()) })
}

pub(super) fn last_error() -> String {
    #[cfg(inferd_torch_shim)]
    {
        // SAFETY: the shim returns a pointer into a thread-local std::string that
        // lives until the next failing call on this thread; we copy it out now.
        unsafe { CStr::from_ptr(inferd_packed_linear_last_error()) }.to_string_lossy().into_owned()
    }
    #[cfg(not(inferd_torch_shim))]
    {
        "this build has no packed-linear shim (LIBTORCH was not set at build time)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    fn rand(shape: &[i64], kind: Kind) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind)
    }

    #[test]
    fn this_build_packs() {
        // build.rs compiles the shim whenever LIBTORCH is set, which every
        // build through `make` does; a silent fallback would cost 1.5-2x.
        assert!(available(), "packed linear shim missing or libtorch lacks the oneDNN ops");
    }

    #[test]
    fn packed_matches_the_dense_product_and_is_batch_invariant() {
        tch::manual_seed(7);
        let (out_dim, in_dim) = (96, 64);
        for kind in [Kind::BFloat16, Kind::Half] {
            let w = rand(&[out_dim, in_dim], kind);
            let bias = rand(&[out_dim], kind);
            let p = match pack(&w, 16) {
                Ok(p) => p,
                // Linear falls back to the plain layout then; nothing to check.
                Err(e) if e.to_string().contains("cpu support") => {
                    eprintln!("{kind:?}: no oneDNN kernel on this CPU: {e}");
                    continue;
                }
                Err(e) => panic!("{kind:?}: {e}"),
            };
            let x = rand(&[64, in_dim], kind);
            let all = linear(&x, &p, Some(&bias)).unwrap();
            assert_eq!(all.size(), [64, out_dim]);
            assert_eq!(all.kind(), kind);
            let dense = x.to_kind(Kind::Float).mm(&w.to_kind(Kind::Float).tr()) + bias.to_kind(Kind::Float);
            let err = (all.to_kind(Kind::Float) - &dense).abs().max().double_value(&[]);
            let scale = dense.abs().max().double_value(&[]);
            assert!(err <= 0.02 * scale, "{kind:?}: max error {err} against a max magnitude {scale}");
            // A row's result must not depend on the rows beside it: batched
            // greedy decoding relies on it.
            for rows in [1, 3, 16] {
                let part = linear(&x.narrow(0, 0, rows), &p, Some(&bias)).unwrap();
                assert!(part.equal(&all.narrow(0, 0, rows)), "{kind:?}: {rows} rows differ from the same rows in a batch of 64");
            }
        }
    }

    #[test]
    fn f32_packed_matches_the_dense_product_at_every_row_count() {
        // Packed f32 serves CPUs without AVX-512 (layers.rs); one row takes
        // oneDNN's one-row kernel unpadded, so check it and batches alike.
        tch::manual_seed(5);
        let (out_dim, in_dim) = (96, 1536);
        let w = rand(&[out_dim, in_dim], Kind::Float) * 0.05;
        let bias = rand(&[out_dim], Kind::Float);
        let p = match pack(&w, 16) {
            Ok(p) => p,
            Err(e) => panic!("f32 does not pack: {e}"),
        };
        let x = rand(&[64, in_dim], Kind::Float);
        for rows in [1, 2, 3, 64] {
            let xs = x.narrow(0, 0, rows);
            let got = linear(&xs, &p, Some(&bias)).unwrap();
            assert_eq!(got.size(), [rows, out_dim]);
            assert_eq!(got.kind(), Kind::Float);
            let dense = xs.to_kind(Kind::Double).mm(&w.to_kind(Kind::Double).tr()) + bias.to_kind(Kind::Double);
            let err = (got.to_kind(Kind::Double) - &dense).abs().max().double_value(&[]);
            assert!(err <= 1e-4, "{rows} rows: max error {err} against the f64 product");
        }
    }

    #[test]
    fn one_row_alone_gives_the_bits_it_gives_in_a_batch_at_a_long_reduction() {
        // SmolLM2's down projection (in = 1536): oneDNN's one-row kernel sums
        // in another order, which without the shim's two-row padding changed
        // 6 of 3200 rows here (torch 2.11, Zen 4).
        tch::manual_seed(11);
        let (out_dim, in_dim, rows) = (576, 1536, 256);
        let w = (Tensor::randn([out_dim, in_dim], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16);
        let p = match pack(&w, 16) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("bf16 does not pack on this CPU: {e}");
                return;
            }
        };
        let x = rand(&[rows, in_dim], Kind::BFloat16);
        let all = linear(&x, &p, None).unwrap();
        let mut differ = 0;
        for r in 0..rows {
            let one = linear(&x.narrow(0, r, 1), &p, None).unwrap();
            assert_eq!(one.size(), [1, out_dim]);
            differ += i64::from(!one.equal(&all.narrow(0, r, 1)));
        }
        assert_eq!(differ, 0, "{differ} of {rows} rows differ alone and in a batch");
    }

    #[test]
    fn a_bad_input_is_an_error_not_an_abort() {
        // f32 packs on every x86-64 CPU.
        let p = pack(&rand(&[8, 4], Kind::Float), 1).unwrap();
        let err = linear(&rand(&[2, 5], Kind::Float), &p, None).unwrap_err();
        assert!(err.to_string().contains("packed linear"), "{err}");
    }
}

