//! ggml tensor types and the dequantization of the block formats we load.
//!
//! Every ggml type is recognised by its id so a file's layout (bytes per
//! tensor) can be checked whatever it holds; only Q4_0, Q4_1 and Q8_0 are
//! dequantized (to f32, bit for bit as ggml's `dequantize_row_*` does), the
//! float types are handed to libtorch as they are. Anything else is reported
//! by the caller as an unsupported type naming the tensor.

use half::f16;

/// A ggml tensor type, by its on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, id, elements per block, bytes per block), from ggml's type traits.
const TABLE: &[(GgmlType, u32, u64, u64)] = &[
    (GgmlType::F32, 0, 1, 4),
    (GgmlType::F16, 1, 1, 2),
    (GgmlType::Q4_0, 2, 32, 18),
    (GgmlType::Q4_1, 3, 32, 20),
    (GgmlType::Q5_0, 6, 32, 22),
    (GgmlType::Q5_1, 7, 32, 24),
    (GgmlType::Q8_0, 8, 32, 34),
    (GgmlType::Q8_1, 9, 32, 36),
    (GgmlType::Q2_K, 10, 256, 84),
    (GgmlType::Q3_K, 11, 256, 110),
    (GgmlType::Q4_K, 12, 256, 144),
    (GgmlType::Q5_K, 13, 256, 176),
    (GgmlType::Q6_K, 14, 256, 210),
    (GgmlType::Q8_K, 15, 256, 292),
    (GgmlType::IQ2_XXS, 16, 256, 66),
    (GgmlType::IQ2_XS, 17, 256, 74),
    (GgmlType::IQ3_XXS, 18, 256, 98),
    (GgmlType::IQ1_S, 19, 256, 50),
    (GgmlType::IQ4_NL, 20, 32, 18),
    (GgmlType::IQ3_S, 21, 256, 110),
    (GgmlType::IQ2_S, 22, 256, 82),
    (GgmlType::IQ4_XS, 23, 256, 136),
    (GgmlType::I8, 24, 1, 1),
    (GgmlType::I16, 25, 1, 2),
    (GgmlType::I32, 26, 1, 4),
    (GgmlType::I64, 27, 1, 8),
    (GgmlType::F64, 28, 1, 8),
    (GgmlType::IQ1_M, 29, 256, 56),
    (GgmlType::BF16, 30, 1, 2),
    (GgmlType::TQ1_0, 34, 256, 54),
    (GgmlType::TQ2_0, 35, 256, 66),
    (GgmlType::MXFP4, 39, 32, 17),
];

impl GgmlType {
    /// The type with this on-disk id, `None` for ids ggml does not define.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, u64, u64) {
        // Every variant has a row in TABLE (checked by a unit test).
        TABLE.iter().find(|e| e.0 == self).unwrap_or(&TABLE[0])
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.entry().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().3
    }

    /// ggml's name of the type (`Q4_1`).
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_dequantizable(self) -> bool {
        matches!(self, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DequantError {
    /// The type is not one of the block formats handled here.
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    PartialBlock {
        n_elements: usize,
        block_size: usize,
    },
    /// The byte buffer does not hold exactly the blocks the elements need.
    Length { expected: usize, found: usize },
}

impl std::fmt::Display for DequantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DequantError::Unsupported(t) => write!(f, "type {t} cannot be dequantized"),
            DequantError::PartialBlock {
                n_elements,
                block_size,
            } => {
                write!(
                    f,
                    "{n_elements} elements is not a multiple of the block size {block_size}"
                )
            }
            DequantError::Length { expected, found } => {
                write!(f, "expected {expected} bytes of blocks, found {found}")
            }
        }
    }
}

/// Dequantize `n_elements` values of a Q4_0 / Q4_1 / Q8_0 buffer to f32.
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    let mut out = vec![0f32; n_elements];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// Below this many blocks a tensor is dequantized on the calling thread.
const PARALLEL_MIN_BLOCKS: usize = 1 << 15;

/// Dequantize a Q4_0 / Q4_1 / Q8_0 buffer into `out` (one value per element).
/// Large tensors are split over a few scoped threads at block boundaries;
/// every value is computed the same way whatever the split.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    if !ty.is_dequantizable() {
        return Err(DequantError::Unsupported(ty));
    }
    let block = ty.block_size() as usize;
    let type_size = ty.type_size() as usize;
    if out.len() % block != 0 {
        return Err(DequantError::PartialBlock {
            n_elements: out.len(),
            block_size: block,
        });
    }
    let n_blocks = out.len() / block;
    if data.len() != n_blocks * type_size {
        return Err(DequantError::Length {
            expected: n_blocks * type_size,
            found: data.len(),
        });
    }
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::Q4_0 => dequantize_q4_0,
        GgmlType::Q4_1 => dequantize_q4_1,
        _ => dequantize_q8_0,
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads <= 1 || n_blocks < PARALLEL_MIN_BLOCKS {
        kernel(data, out);
        return Ok(());
    }
    let per = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (d, o) in data
            .chunks(per * type_size)
            .zip(out.chunks_mut(per * block))
        {
            s.spawn(move || kernel(d, o));
        }
    });
    Ok(())
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0 block: f16 scale `d`, 16 bytes of nibbles; value = (nibble - 8) * d.
/// Byte j holds element j in its low nibble and element j + 16 in its high one.
/// `data` and `out` must hold the same number of blocks (extra is ignored).
pub fn dequantize_q4_0(data: &[u8], out: &mut [f32]) {
    for (blk, y) in data.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        let qs = &blk[2..18];
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = qs[j];
            lo[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1 block: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles;
/// value = nibble * d + m (same nibble order as Q4_0).
pub fn dequantize_q4_1(data: &[u8], out: &mut [f32]) {
    for (blk, y) in data.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qs = &blk[4..20];
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = qs[j];
            // Separate multiply and add, as ggml's scalar code: no fused
            // multiply-add, so the result matches it bit for bit.
            lo[j] = (q & 0x0F) as f32 * d + m;
            hi[j] = (q >> 4) as f32 * d + m;
        }
    }
}

/// Q8_0 block: f16 scale `d`, 32 signed bytes; value = q * d.
pub fn dequantize_q8_0(data: &[u8], out: &mut [f32]) {
    for (blk, y) in data.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        let qs = &blk[2..34];
        for j in 0..32 {
            y[j] = (qs[j] as i8) as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_variant_with_unique_ids() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(GgmlType::from_id(e.1), Some(e.0));
            assert_eq!(e.0.id(), e.1);
            assert!(TABLE[i + 1..].iter().all(|o| o.0 != e.0 && o.1 != e.1));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_1.block_size(), 32);
        assert_eq!(GgmlType::Q8_0.type_size(), 34);
    }

    #[test]
    fn q4_0_nibble_order_and_offset() {
        let mut blk = vec![0u8; 18];
        blk[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk[2] = 0xF0; // element 0 -> 0 - 8, element 16 -> 15 - 8
        let v = dequantize(GgmlType::Q4_0, &blk, 32).unwrap();
        assert_eq!(v[0], -4.0);
        assert_eq!(v[16], 3.5);
        assert_eq!(v[1], -4.0);
    }

    #[test]
    fn q4_1_and_q8_0_values() {
        let mut blk = vec![0u8; 20];
        blk[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        blk[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        blk[19] = 0x3A; // element 15 -> 10, element 31 -> 3
        let v = dequantize(GgmlType::Q4_1, &blk, 32).unwrap();
        assert_eq!((v[15], v[31], v[0]), (19.0, 5.0, -1.0));

        let mut blk = vec![0u8; 34];
        blk[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        blk[2] = (-128i8) as u8;
        blk[33] = 127;
        let v = dequantize(GgmlType::Q8_0, &blk, 32).unwrap();
        assert_eq!((v[0], v[31], v[1]), (-32.0, 31.75, 0.0));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[0u8; 33], 32),
            Err(DequantError::Length {
                expected: 34,
                found: 33
            })
        );
        assert!(matches!(
            dequantize(GgmlType::Q4_0, &[0u8; 18], 31),
            Err(DequantError::PartialBlock { .. })
        ));
        assert_eq!(
            dequantize(GgmlType::Q4_K, &[], 0),
            Err(DequantError::Unsupported(GgmlType::Q4_K))
        );
    }
}
