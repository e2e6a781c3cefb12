//! bf16 products on AMX tiles (`amx_bf16.cpp`), for CPUs with AMX-BF16
//! (Intel Sapphire Rapids and later).
//!
//! oneDNN's own AMX kernels sum a row in an order that depends on the row
//! count, so inferd caps oneDNN below AMX (`packed_linear.cpp`) and the
//! AVX-512 row kernel (`gemv_bf16`) reproduces its bits for decode rows,
//! leaving prefill chunks on oneDNN's slower AVX-512 path. This kernel sums
//! every row the same way at any row count (one tile of fewer than 16 rows,
//! or 16-row tiles with the last padded; one f32 accumulator tile per 16
//! outputs over all of K), so it can take
//! every product of a bf16 weight, prefill and decode alike, and a sequence
//! still gets the same bits alone, in a batch, from the prefix cache or
//! recomputed after preemption. It reads the bytes oneDNN packed for the
//! AVX-512 kernels, which are AMX's B operand as they are.
//!
//! `INFERD_AMX=off` keeps the AVX-512 kernels on an AMX CPU (for A/B
//! measurements).

use std::ffi::c_void;
#[cfg(inferd_torch_shim)]
use std::ffi::c_int;

use tch::{Device, Kind, TchError, Tensor};

use super::gemv_bf16::RowKernel;

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_amx_bf16_available() -> c_int;
    fn inferd_amx_bf16(x: *const c_void, w: usize, n: i64, k: i64) -> *mut c_void;
}

/// Whether this build has the kernel, the CPU has AMX-BF16 and Linux lets
/// this process use the tile registers.
pub fn available() -> bool {
    #[cfg(inferd_torch_shim)]
    {
        // SAFETY: no arguments; reads CPUID and XCR0, and asks Linux once for
        // the tile data permission.
        unsafe { inferd_amx_bf16_available() == 1 }
    }
    #[cfg(not(inferd_torch_shim))]
    {
        false
    }
}

/// Whether bf16 products should run on AMX: available, and not turned off
/// with `INFERD_AMX=off` (or `0`).
pub fn wanted() -> bool {
    let off = std::env::var("INFERD_AMX").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false" | "no"));
    !off && available()
}

/// `x W^T` for x [rows, k] bf16 against the packed bf16 [n, k] weight at `w`
/// (n % 64 == 0, k % 32 == 0); the caller keeps the bytes alive.
pub(crate) fn forward(x: &Tensor, w: usize, n: i64, k: i64) -> Result<Tensor, TchError> {
    // SAFETY: the caller (a `RowKernel`) keeps the n*k packed values at `w`
    // alive and unwritten; the shim checks x's shape and dtype and returns a
    // new owned tensor or null.
    super::gemv_bf16::wrap(unsafe { ffi_amx(x, w, n, k) })
}

/// Whether the AMX kernel reads `packed` as oneDNN does: a few random rows
/// through both must agree to within bf16 rounding of differently ordered
/// f32 sums. Another layout (oneDNN uncapped packs AB16b32a2b for its own AMX
/// kernels, the same size) gives unrelated values.
pub(crate) fn reads_as_onednn(packed: &Tensor, kernel: &RowKernel) -> Result<bool, TchError> {
    let k = kernel.shape().1;
    let x = Tensor::f_randn([3, k], (Kind::Float, Device::Cpu))?.f_to_kind(Kind::BFloat16)?;
    let ours = super::gemv_bf16::forward(&x, kernel)?.f_to_kind(Kind::Float)?;
    let want = super::packed_linear::linear_onednn(&x, packed, None)?.f_to_kind(Kind::Float)?;
    let err = (&ours - &want).f_abs()?.f_max()?.f_double_value(&[])?;
    let scale = want.f_abs()?.f_max()?.f_double_value(&[])?;
    Ok(err <= 0.02 * scale)
}

#[cfg(inferd_torch_shim)]
unsafe fn ffi_amx(x: &Tensor, w: usize, n: i64, k: i64) -> *mut c_void {
    inferd_amx_bf16(x.as_ptr().cast(), w, n, k)
}

#[cfg(not(inferd_torch_shim))]
unsafe fn ffi_amx(_: &Tensor, _: usize, _: i64, _: i64) -> *mut c_void {
    std::ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gemv_bf16::{for_packed, Sums};
    use crate::model::packed_linear::pack_onednn;

    /// The AMX kernel for a random bf16 weight, or None (with a note) on a CPU without AMX.
    fn amx_for(w: &Tensor) -> Option<RowKernel> {
        if !available() {
            eprintln!("no AMX-BF16 on this CPU (or Linux refused the tile state): the AMX kernel is off");
            return None;
        }
        let packed = pack_onednn(w, 16).unwrap();
        let (n, k) = (w.size()[0], w.size()[1]);
        let kernel = for_packed(&packed, n, k).unwrap().expect("a kernel for a 64 x 32 multiple");
        assert_eq!(kernel.sums(), Sums::Amx, "for_packed did not pick AMX on an AMX CPU for [{n}, {k}]");
        Some(kernel)
    }

    fn weight(n: i64, k: i64) -> Tensor {
        (Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16)
    }

    #[test]
    fn products_match_the_f64_product() {
        tch::manual_seed(31);
        for (n, k) in [(960, 576), (576, 1536), (3072, 576), (64, 32)] {
            let w = weight(n, k);
            let Some(kernel) = amx_for(&w) else { return };
            for rows in [1, 5, 16, 40] {
                let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
                let got = crate::model::gemv_bf16::forward(&x, &kernel).unwrap();
                assert_eq!(got.size(), [rows, n]);
                assert_eq!(got.kind(), Kind::BFloat16);
                let want = x.to_kind(Kind::Double).mm(&w.to_kind(Kind::Double).tr());
                // bf16 keeps 8 bits: a rounded result is within 2^-8 of its
                // magnitude, plus the f32 sums' own error (far smaller).
                let err = (got.to_kind(Kind::Double) - &want).abs();
                let bound = want.abs() * (1.0 / 256.0) + 1e-3;
                let over = err.gt_tensor(&bound).sum(Kind::Int64).int64_value(&[]);
                assert_eq!(over, 0, "[{n}, {k}] {rows} rows: {over} outputs off by more than a bf16 rounding");
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_at_every_row_count_and_position() {
        tch::manual_seed(32);
        for (n, k) in [(960, 576), (576, 1536), (4096, 576)] {
            let w = weight(n, k);
            let Some(kernel) = amx_for(&w) else { return };
            // Leaves NaN in this thread's padding rows: the later calls' outputs
            // must not see them (a C row depends on its own A row only).
            let nan = Tensor::full([15, k], f64::NAN, (Kind::BFloat16, Device::Cpu));
            assert!(crate::model::gemv_bf16::forward(&nan, &kernel).unwrap().isnan().all().int64_value(&[]) == 1);
            let x = Tensor::randn([300, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let batch = crate::model::gemv_bf16::forward(&x, &kernel).unwrap();
            assert_eq!(batch.isnan().sum(Kind::Int64).int64_value(&[]), 0);
            for (start, rows) in [(0, 1), (5, 1), (299, 1), (10, 2), (3, 15), (0, 16), (1, 17), (7, 64), (100, 200)] {
                // On libtorch's threads, then on the decode pool's.
                for pooled in [false, true] {
                    let _pool = pooled.then(crate::model::cpu_pool::PoolScope::enter);
                    let got = crate::model::gemv_bf16::forward(&x.narrow(0, start, rows), &kernel).unwrap();
                    let differ = got.ne_tensor(&batch.narrow(0, start, rows)).sum(Kind::Int64).int64_value(&[]);
                    assert_eq!(differ, 0, "[{n}, {k}] rows {start}..+{rows} pool {pooled}: {differ} outputs differ from the batch of 300");
                }
            }
        }
    }

    #[test]
    fn another_layout_is_refused() {
        // A plain [n, k] weight's bytes read as if packed: the check must
        // catch it, as it would oneDNN's AMX layout.
        let w = weight(128, 64);
        let Some(kernel) = amx_for(&w) else { return };
        let plain = w.contiguous();
        let fake = RowKernel::for_test(&plain, plain.data_ptr() as usize, 128, 64, Sums::Amx);
        assert!(reads_as_onednn(&pack_onednn(&w, 16).unwrap(), &kernel).unwrap());
        assert!(!reads_as_onednn(&pack_onednn(&w, 16).unwrap(), &fake).unwrap(), "a plain layout passed the check");
    }

    #[test]
    fn a_bad_input_is_an_error_not_an_abort() {
        let w = weight(64, 32);
        let Some(kernel) = amx_for(&w) else { return };
        let err = crate::model::gemv_bf16::forward(&Tensor::ones([1, 48], (Kind::BFloat16, Device::Cpu)), &kernel).unwrap_err();
        assert!(err.to_string().contains("48 features"), "{err}");
        let err = crate::model::gemv_bf16::forward(&Tensor::ones([1, 32], (Kind::Float, Device::Cpu)), &kernel).unwrap_err();
        assert!(err.to_string().contains("bf16"), "{err}");
    }
}
