//! Linear layers on a GGUF file's own quantized blocks (`quantization =
//! "gguf"`): Q4_0, Q4_1 and Q8_0.
//!
//! The bf16 path dequantizes the file and streams 2 bytes a parameter every
//! decode step; kept in its blocks a weight is 0.625 bytes a parameter in Q4
//! (nibbles plus each block's f16 scale and minimum) and 1.0625 in Q8_0, so
//! one stream, which is bound by reading the weights, moves 3.2x (Q4) or
//! 1.9x (Q8_0) fewer bytes. `gemv_gguf.cpp` multiplies the blocks as they
//! are (the file's exact weights) by bf16 rows rounded to 12 bits per block
//! of 32 inputs, with AVX512_VNNI's byte dot products, in one summation order
//! at every row count, so a row's result does not depend on its batch. This
//! module re-lays the blocks out for the kernel once, at load time.

use std::ffi::c_void;

use half::f16;
use tch::{Kind, TchError, Tensor};

use super::loader::dequant::GgmlType;
use super::loader::QuantRows;

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_gemv_gguf(x: *const c_void, w: *const c_void, n: i64, k: i64, format: i64) -> *mut c_void;
}

/// Outputs per line and inputs per block of the kernel's layouts.
const LINE: i64 = 16;
const BLOCK: i64 = 32;
/// Bytes of one line's block: Q4: 16 x 32 nibbles, 16 f16 scales, 16 f16
/// minimums; Q8_0: 16 x 32 bytes, 16 f16 scales.
const Q4_BLOCK_BYTES: usize = 320;
const Q8_BLOCK_BYTES: usize = 544;

/// Whether this build and CPU run the kernel (it needs AVX512_BF16 and
/// AVX512_VNNI).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemv_bf16::available() && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A quantized weight [n, k] in the kernel's layout.
#[derive(Debug)]
pub struct GgufWeight {
    packed: Tensor,
    n: i64,
    k: i64,
    /// The kernel's layout: 4 (Q4_0 and Q4_1) or 8 (Q8_0).
    format: i64,
}

impl GgufWeight {
    /// Re-lay `rows` out for the kernel; `None` for types and shapes it does
    /// not take (n not a multiple of 16), which then load dequantized.
    pub fn pack(rows: &QuantRows) -> Result<Option<GgufWeight>, TchError> {
        let (n, k) = (rows.n, rows.k);
        if n <= 0 || k <= 0 || n % LINE != 0 || k % BLOCK != 0 || rows.data.len() != n as usize * rows.row_bytes() {
            return Ok(None);
        }
        let (format, block_bytes) = match rows.ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => (4, Q4_BLOCK_BYTES),
            GgmlType::Q8_0 => (8, Q8_BLOCK_BYTES),
            _ => return Ok(None),
        };
        let blocks = (k / BLOCK) as usize;
        let tsz = rows.ty.type_size() as usize;
        let mut out = vec![0u8; (n / LINE) as usize * blocks * block_bytes];
        for (line, dst_line) in out.chunks_exact_mut(blocks * block_bytes).enumerate() {
            for (b, dst) in dst_line.chunks_exact_mut(block_bytes).enumerate() {
                for i in 0..LINE as usize {
                    let row = line * LINE as usize + i;
                    let at = row * rows.row_bytes() + b * tsz;
                    let src = &rows.data[at..at + tsz];
                    match rows.ty {
                        GgmlType::Q8_0 => {
                            // Vector v: input 4v + j of output i at 4i + j, as
                            // q + 128 (the kernel's weights are unsigned).
                            for v in 0..8 {
                                for j in 0..4 {
                                    dst[v * 64 + 4 * i + j] = src[2 + 4 * v + j] ^ 0x80;
                                }
                            }
                            dst[512 + 2 * i..514 + 2 * i].copy_from_slice(&src[0..2]);
                        }
                        _ => {
                            let (d, m, qs) = if rows.ty == GgmlType::Q4_1 {
                                ([src[0], src[1]], [src[2], src[3]], &src[4..20])
                            } else {
                                // Q4_0: value = (q - 8) d = q d + (-8 d); -8 d is exact in f16.
                                let m = f16::from_f32(-8.0 * f16::from_le_bytes([src[0], src[1]]).to_f32());
                                ([src[0], src[1]], m.to_le_bytes(), &src[2..18])
                            };
                            let q = |e: usize| if e < 16 { qs[e] & 0x0F } else { qs[e - 16] >> 4 };
                            // Vector v: input 8v + j of output i in the low
                            // nibble of byte 4i + j, input 8v + 4 + j in its high one.
                            for v in 0..4 {
                                for j in 0..4 {
                                    dst[v * 64 + 4 * i + j] = q(8 * v + j) | q(8 * v + 4 + j) << 4;
                                }
                            }
                            dst[256 + 2 * i..258 + 2 * i].copy_from_slice(&d);
                            dst[288 + 2 * i..290 + 2 * i].copy_from_slice(&m);
                        }
                    }
                }
            }
        }
        let packed = Tensor::f_from_slice(&out)?;
        Ok(Some(GgufWeight { packed, n, k, format }))
    }

    /// The weight as `decode_stack` hands it to the kernel: the layout's
    /// bytes (alive as long as `self`), n, k and the layout.
    pub(crate) fn stack_product(&self) -> super::decode_stack::Product {
        super::decode_stack::Product::gguf(self.packed.data_ptr() as usize, self.n, self.k, self.format)
    }

    /// `x W^T` for bf16 x [rows, k] -> bf16 [rows, n].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        if x.kind() != Kind::BFloat16 {
            return Err(TchError::Kind(format!("gemv_gguf: input is {:?}, the kernel takes bf16", x.kind())));
        }
        // SAFETY: both are live tensors for the call; the shim checks shapes,
        // kinds and the layout's size, and returns a new owned tensor or null.
        wrap(unsafe { ffi_gemv(x, &self.packed, self.n, self.k, self.format) })
    }
}

#[cfg(inferd_torch_shim)]
unsafe fn ffi_gemv(x: &Tensor, w: &Tensor, n: i64, k: i64, format: i64) -> *mut c_void {
    inferd_gemv_gguf(x.as_ptr().cast(), w.as_ptr().cast(), n, k, format)
}

#[cfg(not(inferd_torch_shim))]
unsafe fn ffi_gemv(_: &Tensor, _: &Tensor, _: i64, _: i64, _: i64) -> *mut c_void {
    std::ptr::null_mut()
}

fn wrap(ptr: *mut c_void) -> Result<Tensor, TchError> {
    super::packed_linear::take_tensor(ptr, "gemv_gguf")
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use crate::model::cpu_pool::PoolScope;

    use super::*;

    /// Random rows: f16 scales around 0.01, Q4_1 minimums around -0.08.
    fn random_rows(ty: GgmlType, n: i64, k: i64, seed: u64) -> QuantRows {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut data = Vec::new();
        for _ in 0..n * k / 32 {
            let d = f16::from_f32(0.002 + (next() % 1000) as f32 * 2e-5);
            data.extend_from_slice(&d.to_le_bytes());
            if ty == GgmlType::Q4_1 {
                let m = f16::from_f32(-0.16 + (next() % 1000) as f32 * 1.6e-4);
                data.extend_from_slice(&m.to_le_bytes());
            }
            let bytes = if ty == GgmlType::Q8_0 { 32 } else { 16 };
            for _ in 0..bytes {
                data.push((next() & 0xFF) as u8);
            }
        }
        QuantRows { ty, n, k, data }
    }

    /// The inputs as `quantize_rows` rounds them, x ~ s T per block of 32
    /// with s = max|x| / 2047 and T rounded to nearest even, in f64; and
    /// their magnitudes.
    fn rounded_inputs(x: &Tensor) -> (Tensor, Tensor) {
        let (rows, k) = x.size2().unwrap();
        let values = Vec::<f32>::try_from(x.to_kind(Kind::Float).flatten(0, 1)).unwrap();
        let mut out = vec![0f64; values.len()];
        for (block, rounded) in values.chunks(32).zip(out.chunks_mut(32)) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                continue;
            }
            let (inv, unit) = (2047f32 / amax, amax / 2047f32);
            for (v, r) in block.iter().zip(rounded.iter_mut()) {
                *r = f64::from(unit) * f64::from((v * inv).round_ties_even().clamp(-2047.0, 2047.0));
            }
        }
        let rounded = Tensor::from_slice(&out).reshape([rows, k]);
        let magnitude = rounded.abs();
        (rounded, magnitude)
    }

    #[test]
    fn products_match_the_dequantized_weight_and_do_not_depend_on_the_batch() {
        if !available() {
            eprintln!("no AVX512_BF16 on this CPU: the kernel does not run here");
            return;
        }
        tch::manual_seed(3);
        let cases = [(GgmlType::Q4_1, 576, 576), (GgmlType::Q4_0, 192, 1536), (GgmlType::Q4_1, 3072, 576), (GgmlType::Q4_1, 48, 64), (GgmlType::Q8_0, 1024, 576), (GgmlType::Q8_0, 32, 1536)];
        for (ty, n, k) in cases {
            let rows = random_rows(ty, n, k, n as u64 ^ k as u64);
            let w = GgufWeight::pack(&rows).unwrap().expect("the shape packs");
            let per_block = if ty == GgmlType::Q8_0 { Q8_BLOCK_BYTES } else { Q4_BLOCK_BYTES };
            assert_eq!(w.packed.numel(), n as usize * k as usize / 512 * per_block);
            let dense = rows.dequantize().unwrap();
            let x = Tensor::randn([67, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let all = w.forward(&x).unwrap();
            assert_eq!(all.size(), [67, n]);
            assert_eq!(all.kind(), Kind::BFloat16);
            // Against f64 on the same bf16 inputs: the kernel rounds the
            // inputs to 12 bits of their block's largest, then sums in f32
            // and rounds the result to bf16.
            let want = x.to_kind(Kind::Double).mm(&dense.to_kind(Kind::Double).tr());
            let err = (all.to_kind(Kind::Double) - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(err <= scale / 128.0, "{ty:?} [{n}, {k}]: max error {err} against a max magnitude {scale}");
            // Against f64 on the inputs as the kernel rounds them (12 bits
            // of their block's largest, `quantize_rows`): only the f32 sums
            // and the bf16 result round, so this catches a lost or misplaced
            // low part of an input that the bound above would not.
            let (rounded, magnitude) = rounded_inputs(&x);
            let dense = dense.to_kind(Kind::Double);
            let want = rounded.mm(&dense.tr());
            let slack = magnitude.mm(&dense.abs().tr()) * 1e-5 + want.abs() / 256.0;
            let over = ((all.to_kind(Kind::Double) - &want).abs() - slack).max().double_value(&[]);
            assert!(over <= 0.0, "{ty:?} [{n}, {k}]: off the rounded inputs' product by {over} beyond bf16's rounding");
            // Every tile shape (16-row AMX tiles where the CPU has
            // AMX-INT8, then rows 8 at a time, 4, 2, 1) must give a row the
            // same bits.
            for (start, count) in [(0, 1), (5, 1), (0, 2), (3, 3), (1, 4), (0, 8), (3, 16), (9, 17), (60, 7)] {
                let part = w.forward(&x.narrow(0, start, count)).unwrap();
                assert!(part.equal(&all.narrow(0, start, count)), "{ty:?} [{n}, {k}]: rows {start}..+{count} differ alone and in a batch");
            }
            // On the decode pool (owned runs of groups, a worker prefetching
            // the next product's): the same bits, every time.
            let _pool = PoolScope::enter();
            for _ in 0..3 {
                for (start, count) in [(0, 1), (0, 67)] {
                    let part = w.forward(&x.narrow(0, start, count)).unwrap();
                    assert!(part.equal(&all.narrow(0, start, count)), "{ty:?} [{n}, {k}]: rows {start}..+{count} differ on the pool");
                }
            }
        }
    }

    #[test]
    fn a_wrong_input_is_an_error() {
        if !available() {
            return;
        }
        let w = GgufWeight::pack(&random_rows(GgmlType::Q4_1, 16, 64, 1)).unwrap().unwrap();
        let bf16 = |shape: &[i64]| Tensor::zeros(shape, (Kind::BFloat16, Device::Cpu));
        assert!(w.forward(&bf16(&[2, 32])).unwrap_err().to_string().contains("features"));
        assert!(w.forward(&Tensor::zeros([2, 64], (Kind::Float, Device::Cpu))).is_err());
        assert_eq!(w.forward(&bf16(&[0, 64])).unwrap().size(), [0, 16]);
        // 24 outputs is not whole lines: the model keeps such a weight dequantized.
        assert!(GgufWeight::pack(&random_rows(GgmlType::Q4_1, 24, 64, 1)).unwrap().is_none());
    }
}
