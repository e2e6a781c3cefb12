//! Fused CPU kernels for a layer's small steps: residual add plus RMSNorm,
//! rotary in place, SwiGLU's product, the K/V write into the paged pools,
//! and decode attention read straight from the pools.
//!
//! In a decode step these steps touch a few hundred values per row, so
//! libtorch's cost per op (dispatch, iterator set-up, an output allocation)
//! is most of their time: a bf16 RMSNorm alone is eight ops. `fused_cpu.cpp`
//! (compiled by build.rs) does each step in one loop, rounding where the
//! eager ops round, so results match the eager path bit for bit except where
//! the order of a norm's f32 sum of squares moves the result by an ulp.
//! `chunk_attention.cpp` attends a prefill chunk over its cached prefix in
//! the pools (bf16 with AVX512-BF16; its products on AMX tiles where the CPU
//! has them, unless `INFERD_AMX=off`). `decode_attention.cpp` attends one query per sequence from the pools,
//! one kv head's query heads over 256 positions per thread item (longer
//! contexts combined per head), within 0.02 of SDPA.
//! The layers use it on CPU for bf16 and f16; f32 (whose parity with
//! transformers is checked to 1e-5) and CUDA keep libtorch's ops, except
//! that decode attention serves f32 on CPU too (see `attention_applies`).

use std::ffi::c_void;
#[cfg(inferd_torch_shim)]
use std::ffi::CStr;

use tch::{Device, Kind, TchError, Tensor};

/// Whether `x` (an activation) takes the fused path: on CPU, in bf16 or f16,
/// with the shim built.
pub fn applies(x: &Tensor) -> bool {
    cfg!(inferd_torch_shim) && x.device() == Device::Cpu && matches!(x.kind(), Kind::BFloat16 | Kind::Half)
}

/// Whether decode attention on `q` takes the paged CPU kernel: on CPU with the
/// shim built, in f32 as well. Unlike the element-wise kernels it replaces no
/// single eager op whose bits f32 parity relies on, only SDPA over a padded
/// gather, and it stays within 1e-6 of SDPA in f32.
pub fn attention_applies(q: &Tensor) -> bool {
    cfg!(inferd_torch_shim) && q.device() == Device::Cpu && matches!(q.kind(), Kind::BFloat16 | Kind::Half | Kind::Float)
}

/// Whether a prefill chunk's attention over its cached prefix takes
/// `chunk_attention.cpp`: bf16 on a CPU with AVX512-BF16, head dim 64 or 128,
/// with the shim built. Elsewhere it stays SDPA over a gathered copy.
pub fn chunk_attention_applies(q: &Tensor, head_dim: i64) -> bool {
    // SAFETY: a pure query of the CPU's features.
    cfg!(inferd_torch_shim) && q.device() == Device::Cpu && q.kind() == Kind::BFloat16 && matches!(head_dim, 64 | 128) && unsafe { ffi::chunk_attention_available() } == 1
}

/// Causal attention of a prefill chunk q [len, heads, D] (rows contiguous),
/// the queries of positions `ctx - len .. ctx`, over positions `0 .. ctx` of
/// its sequence in the pools ([blocks, block size, kv heads, D], already
/// holding the chunk's K/V), found through `table` (int64 block ids).
/// Returns [len, heads, D], within 0.02 of SDPA.
pub fn chunk_attention(q: &Tensor, k_pool: &Tensor, v_pool: &Tensor, table: &Tensor, ctx: i64, scale: f64) -> Result<Tensor, TchError> {
    chunk_attention_on(q, k_pool, v_pool, table, ctx, scale, chunk_attention_amx())
}

/// Whether chunk attention's products run on AMX tiles: the CPU has them and
/// `INFERD_AMX=off` does not keep the AVX-512 kernels (read once).
fn chunk_attention_amx() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: a pure query of the CPU's features.
    *AMX.get_or_init(|| super::amx_bf16::wanted() && unsafe { ffi::chunk_attention_amx_available() } == 1)
}

/// `chunk_attention` on the AMX tiles (`amx`, an error where the CPU lacks
/// them) or the AVX-512 products.
fn chunk_attention_on(q: &Tensor, k_pool: &Tensor, v_pool: &Tensor, table: &Tensor, ctx: i64, scale: f64, amx: bool) -> Result<Tensor, TchError> {
    // SAFETY: live handles for the whole call; the shim checks kinds, shapes,
    // the length and every block id it reads before it reads the pools.
    let ptr = unsafe { ffi::chunk_attention(q.as_ptr().cast(), k_pool.as_ptr().cast(), v_pool.as_ptr().cast(), table.as_ptr().cast(), ctx, scale, i64::from(amx)) };
    if ptr.is_null() {
        return Err(last_error());
    }
    // SAFETY: a non-null return is a fresh `new at::Tensor`, now owned here.
    Ok(unsafe { Tensor::from_ptr(ptr.cast()) })
}

/// `weight * rms_norm(x)` for x [T, H]; one dtype, contiguous.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor, TchError> {
    Ok(norm_call(x, None, weight, eps)?.1)
}

/// `(x + delta, weight * rms_norm(x + delta))` for x, delta [T, H]; one
/// dtype, contiguous.
pub fn add_rms_norm(x: &Tensor, delta: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor), TchError> {
    let (sum, out) = norm_call(x, Some(delta), weight, eps)?;
    match sum {
        Some(sum) => Ok((sum, out)),
        None => Err(TchError::Torch("fused CPU kernel: add + norm returned no sum".to_string())),
    }
}

/// The shim's norm, with or without the residual add before it.
fn norm_call(x: &Tensor, delta: Option<&Tensor>, weight: &Tensor, eps: f64) -> Result<(Option<Tensor>, Tensor), TchError> {
    let mut sum: *mut c_void = std::ptr::null_mut();
    let mut out: *mut c_void = std::ptr::null_mut();
    let d = delta.map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: every pointer is a live tensor handle (or null for "no delta")
    // for the whole call; on success the shim stores fresh owned handles.
    check(unsafe { ffi::add_rms_norm(x.as_ptr().cast(), d, weight.as_ptr().cast(), eps, &mut sum, &mut out) })?;
    // SAFETY: after a successful call `out` is a fresh `new at::Tensor`, and
    // `sum` is one too when a delta was given (null otherwise).
    let out = unsafe { Tensor::from_ptr(out.cast()) };
    let sum = (!sum.is_null()).then(|| unsafe { Tensor::from_ptr(sum.cast()) });
    Ok((sum, out))
}

/// Rotate, in place, the first `heads` heads of x [T, all heads, D] (rows
/// contiguous, e.g. a fused qkv output) with cos, sin [T, 1, D] in x's dtype.
pub fn rotary_(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: i64) -> Result<(), TchError> {
    // SAFETY: live handles for the whole call; the shim checks shapes and
    // strides before it writes through x's storage.
    check(unsafe { ffi::rotary_(x.as_ptr().cast(), cos.as_ptr().cast(), sin.as_ptr().cast(), heads) })
}

/// Copy row t of k and v ([T, kv heads, D], rows contiguous) into row
/// `slots[t]` of the pools ([blocks, block size, kv heads, D]).
pub fn write_kv(k_pool: &Tensor, v_pool: &Tensor, slots: &Tensor, k: &Tensor, v: &Tensor) -> Result<(), TchError> {
    // SAFETY: live handles for the whole call; the shim checks kinds, shapes
    // and every slot against the pool before it writes.
    check(unsafe { ffi::write_kv(k_pool.as_ptr().cast(), v_pool.as_ptr().cast(), slots.as_ptr().cast(), k.as_ptr().cast(), v.as_ptr().cast()) })
}

/// SwiGLU's `silu(gate) * up` for gu [T, 2 * inter] = [gate | up]
/// (contiguous, bf16 or f16) -> [T, inter], rounded where the eager ops
/// round (silu's result, then the product), e^x within about an ulp of
/// libtorch's. `decode_stack` runs the same loop.
pub fn silu_mul(gu: &Tensor, inter: i64) -> Result<Tensor, TchError> {
    // SAFETY: a live handle for the whole call; the shim checks its kind,
    // shape and layout and returns a fresh owned tensor or null.
    let ptr = unsafe { ffi::silu_mul(gu.as_ptr().cast(), inter) };
    if ptr.is_null() {
        return Err(last_error());
    }
    // SAFETY: a non-null return is a fresh `new at::Tensor`, now owned here.
    Ok(unsafe { Tensor::from_ptr(ptr.cast()) })
}

/// Decode attention straight from the paged pools: q [n, heads, D] (rows
/// contiguous), pools [blocks, block size, kv heads, D], `tables` int64
/// [n * nb] (sequence i's blocks at i * nb), `ctx_lens` int64 [n]. Returns
/// [n, heads, D]. Mirrors libtorch's CPU flash attention for one query
/// (probabilities rounded to the dtype before they weight V), without
/// gathering K/V into a padded copy first.
pub fn decode_attention(q: &Tensor, k_pool: &Tensor, v_pool: &Tensor, tables: &Tensor, ctx_lens: &Tensor, scale: f64) -> Result<Tensor, TchError> {
    // SAFETY: live handles for the whole call; the shim checks kinds, shapes,
    // every block id and every length before it reads the pools.
    let ptr = unsafe { ffi::decode_attention(q.as_ptr().cast(), k_pool.as_ptr().cast(), v_pool.as_ptr().cast(), tables.as_ptr().cast(), ctx_lens.as_ptr().cast(), scale) };
    if ptr.is_null() {
        return Err(last_error());
    }
    // SAFETY: a non-null return is a fresh `new at::Tensor`, now owned here.
    Ok(unsafe { Tensor::from_ptr(ptr.cast()) })
}

#[cfg(inferd_torch_shim)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        #[link_name = "inferd_fused_add_rms_norm"]
        pub fn add_rms_norm(x: *const c_void, delta: *const c_void, w: *const c_void, eps: f64, sum: *mut *mut c_void, out: *mut *mut c_void) -> c_int;
        #[link_name = "inferd_fused_rotary_"]
        pub fn rotary_(x: *const c_void, cos: *const c_void, sin: *const c_void, heads: i64) -> c_int;
        #[link_name = "inferd_fused_write_kv"]
        pub fn write_kv(k_pool: *const c_void, v_pool: *const c_void, slots: *const c_void, k: *const c_void, v: *const c_void) -> c_int;
        #[link_name = "inferd_fused_decode_attention"]
        pub fn decode_attention(q: *const c_void, k_pool: *const c_void, v_pool: *const c_void, tables: *const c_void, ctx_lens: *const c_void, scale: f64) -> *mut c_void;
        #[link_name = "inferd_fused_silu_mul"]
        pub fn silu_mul(gu: *const c_void, inter: i64) -> *mut c_void;
        #[link_name = "inferd_chunk_attention_available"]
        pub fn chunk_attention_available() -> c_int;
        #[link_name = "inferd_chunk_attention_amx_available"]
        pub fn chunk_attention_amx_available() -> c_int;
        #[link_name = "inferd_chunk_attention"]
        pub fn chunk_attention(q: *const c_void, k_pool: *const c_void, v_pool: *const c_void, table: *const c_void, ctx: i64, scale: f64, amx: i64) -> *mut c_void;
        #[link_name = "inferd_fused_cpu_last_error"]
        pub fn last_error() -> *const c_char;
    }
}

/// Without the shim, `applies` is false and these are never reached.
#[cfg(not(inferd_torch_shim))]
mod ffi {
    use std::ffi::{c_int, c_void};
    pub unsafe fn add_rms_norm(_: *const c_void, _: *const c_void, _: *const c_void, _: f64, _: *mut *mut c_void, _: *mut *mut c_void) -> c_int {
        1
    }
    pub unsafe fn rotary_(_: *const c_void, _: *const c_void, _: *const c_void, _: i64) -> c_int {
        1
    }
    pub unsafe fn write_kv(_: *const c_void, _: *const c_void, _: *const c_void, _: *const c_void, _: *const c_void) -> c_int {
        1
    }
    pub unsafe fn decode_attention(_: *const c_void, _: *const c_void, _: *const c_void, _: *const c_void, _: *const c_void, _: f64) -> *mut c_void {
        std::ptr::null_mut()
    }
    pub unsafe fn silu_mul(_: *const c_void, _: i64) -> *mut c_void {
        std::ptr::null_mut()
    }
    pub unsafe fn chunk_attention_available() -> c_int {
        0
    }
    pub unsafe fn chunk_attention_amx_available() -> c_int {
        0
    }
    pub unsafe fn chunk_attention(_: *const c_void, _: *const c_void, _: *const c_void, _: *const c_void, _: i64, _: f64, _: i64) -> *mut c_void {
        std::ptr::null_mut()
    }
}

fn check(status: i32) -> Result<(), TchError> {
    match status {
        0 => Ok(()),
        _ => Err(last_error()),
    }
}

/// The shim's message for the last failed call on this thread.
fn last_error() -> TchError {
    #[cfg(inferd_torch_shim)]
    // SAFETY: a pointer into the shim's thread-local message, valid until the
    // next failing call on this thread; copied out at once.
    let msg = unsafe { CStr::from_ptr(ffi::last_error()) }.to_string_lossy().into_owned();
    #[cfg(not(inferd_torch_shim))]
    let msg = "this build has no C++ shim (LIBTORCH was not set at build time)".to_string();
    TchError::Torch(format!("fused CPU kernel: {msg}"))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    fn rand(shape: &[i64], kind: Kind) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind)
    }

    /// The eager ops the fused loops stand for (as in layers.rs).
    fn eager_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        w * (xf * (var + eps).rsqrt()).to_kind(x.kind())
    }

    fn eager_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[2] / 2;
        let rotated = Tensor::cat(&[&x.narrow(-1, half, half).neg(), &x.narrow(-1, 0, half)], -1);
        x * cos + rotated * sin
    }

    /// Elements of two same-kind tensors that differ, and the largest
    /// difference in units of the larger magnitude.
    fn ulp_diffs(a: &Tensor, b: &Tensor) -> (i64, f64) {
        let diff = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs();
        let n = diff.gt(0.0).sum(Kind::Int64).int64_value(&[]);
        let rel = (&diff / (a.to_kind(Kind::Float).abs() + 1e-3)).max().double_value(&[]);
        (n, rel)
    }

    #[test]
    fn this_build_has_the_shim() {
        assert!(applies(&Tensor::zeros([1], (Kind::BFloat16, Device::Cpu))), "fused CPU shim missing (LIBTORCH unset at build time?)");
        assert!(!applies(&Tensor::zeros([1], (Kind::Float, Device::Cpu))), "f32 keeps libtorch's element-wise ops");
        assert!(attention_applies(&Tensor::zeros([1], (Kind::Float, Device::Cpu))), "f32 decode attention takes the kernel");
    }

    #[test]
    fn add_rms_norm_matches_the_eager_ops() {
        tch::manual_seed(3);
        for kind in [Kind::BFloat16, Kind::Half] {
            let (x, d, w) = (rand(&[33, 576], kind), rand(&[33, 576], kind), rand(&[576], kind));
            let (sum, out) = add_rms_norm(&x, &d, &w, 1e-5).unwrap();
            let want_sum = &x + &d;
            assert!(sum.equal(&want_sum), "{kind:?}: residual sum differs from bf16 add");
            let want = eager_norm(&want_sum, &w, 1e-5);
            // Only the sum of squares is ordered differently: at most a
            // handful of one-ulp differences.
            let (n, rel) = ulp_diffs(&out, &want);
            assert!(n * 100 <= want.numel() as i64 && rel < 0.01, "{kind:?}: {n} differ, largest relative {rel}");
            let alone = rms_norm(&x, &w, 1e-5).unwrap();
            let (n, rel) = ulp_diffs(&alone, &eager_norm(&x, &w, 1e-5));
            assert!(n * 100 <= x.numel() as i64 && rel < 0.01, "{kind:?} without delta: {n} differ, largest relative {rel}");
            // A row does not depend on the rows beside it.
            let (_, one) = add_rms_norm(&x.narrow(0, 5, 1).contiguous(), &d.narrow(0, 5, 1).contiguous(), &w, 1e-5).unwrap();
            assert!(one.equal(&out.narrow(0, 5, 1)), "{kind:?}: a row alone differs from the same row in a batch");
        }
    }

    #[test]
    fn rotary_in_place_matches_the_eager_ops_bit_for_bit() {
        tch::manual_seed(4);
        // 64 rows: enough to be split over threads.
        let (t, heads, kv, d) = (64, 9, 3, 64);
        for kind in [Kind::BFloat16, Kind::Half] {
            let qkv = rand(&[t, heads + 2 * kv, d], kind);
            let (cos, sin) = (rand(&[t, 1, d], kind), rand(&[t, 1, d], kind));
            let want = eager_rotary(&qkv.narrow(1, 0, heads + kv), &cos, &sin);
            let untouched = qkv.narrow(1, heads + kv, kv).copy();
            rotary_(&qkv, &cos, &sin, heads + kv).unwrap();
            assert!(qkv.narrow(1, 0, heads + kv).equal(&want), "{kind:?}: rotated heads differ");
            assert!(qkv.narrow(1, heads + kv, kv).equal(&untouched), "{kind:?}: v heads were touched");
        }
    }

    #[test]
    fn silu_mul_matches_the_eager_ops() {
        tch::manual_seed(5);
        // 40 rows of SmolLM2's 1536: enough to be split over threads; inputs
        // up to +-12 reach where e^-x is large and where silu(x) is x.
        let (t, inter) = (40, 1536);
        for kind in [Kind::BFloat16, Kind::Half] {
            let gu = (rand(&[t, 2 * inter], Kind::Float) * 4.0).to_kind(kind);
            let got = silu_mul(&gu, inter).unwrap();
            let want = gu.narrow(1, 0, inter).silu() * gu.narrow(1, inter, inter);
            assert_eq!(got.size(), [t, inter]);
            // e^x within about an ulp of libtorch's: a result differs at most
            // where silu lands next to a rounding boundary of the dtype.
            let (n, rel) = ulp_diffs(&got, &want);
            assert!(n * 1000 <= want.numel() as i64 && rel < 0.01, "{kind:?}: {n} differ, largest relative {rel}");
            // A row does not depend on the rows beside it.
            let one = silu_mul(&gu.narrow(0, 7, 1).contiguous(), inter).unwrap();
            assert!(one.equal(&got.narrow(0, 7, 1)), "{kind:?}: a row alone differs from the same row in a batch");
        }
        let odd = Tensor::zeros([2, 5], (Kind::BFloat16, Device::Cpu));
        assert!(silu_mul(&odd, 3).is_err(), "a width other than 2 * inter is an error, not a read past the row");
    }

    #[test]
    fn write_kv_matches_index_copy_and_checks_slots() {
        let kind = Kind::BFloat16;
        let (t, heads, kv, d) = (5, 9, 3, 64);
        let qkv = rand(&[t, heads + 2 * kv, d], kind);
        let (k, v) = (qkv.narrow(1, heads, kv), qkv.narrow(1, heads + kv, kv));
        let slots = Tensor::from_slice(&[3i64, 17, 0, 63, 40]);
        let (kp, vp) = (Tensor::zeros([4, 16, kv, d], (kind, Device::Cpu)), Tensor::zeros([4, 16, kv, d], (kind, Device::Cpu)));
        write_kv(&kp, &vp, &slots, &k, &v).unwrap();
        let want_k = Tensor::zeros([64, kv, d], (kind, Device::Cpu)).index_copy(0, &slots, &k);
        let want_v = Tensor::zeros([64, kv, d], (kind, Device::Cpu)).index_copy(0, &slots, &v);
        assert!(kp.view([64, kv, d]).equal(&want_k) && vp.view([64, kv, d]).equal(&want_v));
        let err = write_kv(&kp, &vp, &Tensor::from_slice(&[0i64, 1, 2, 3, 64]), &k, &v).unwrap_err();
        assert!(err.to_string().contains("KV slot 64 outside the pool's 64 rows"), "{err}");
    }

    #[test]
    fn decode_attention_matches_sdpa_over_gathered_keys() {
        // bf16 and f32 at head dims 64 and 128 take the vector loops (128 is
        // LLaMA's); head dim 40 and f16 the scalar ones.
        // Blocks of 16 positions are a compile-time constant in the bf16
        // kernel; 8 takes its general lookups.
        for (kind, d, bs) in [
            (Kind::BFloat16, 64, 16),
            (Kind::BFloat16, 64, 8),
            (Kind::BFloat16, 128, 16),
            (Kind::BFloat16, 40, 16),
            (Kind::Half, 64, 16),
            (Kind::Float, 64, 16),
            (Kind::Float, 40, 16),
        ] {
            decode_attention_matches_sdpa(kind, d, bs);
        }
    }

    fn decode_attention_matches_sdpa(kind: Kind, d: i64, bs: i64) {
        tch::manual_seed(5);
        // 608 positions per sequence's table, over a few more blocks.
        let (heads, kv, nb) = (9, 3, 608 / bs);
        let blocks = nb + 2;
        let k_pool = rand(&[blocks, bs, kv, d], kind);
        let v_pool = rand(&[blocks, bs, kv, d], kind);
        // Sequences of different lengths over scattered blocks: within one
        // partition of 256 positions, exactly one, one and one position, two,
        // and more than 512 positions (past the flash kernel's first key block).
        // Seven rounds of them make 70 partitions, enough for items of every kv
        // head of one partition on up to 17 threads; a sequence alone has items
        // of one kv head, so the bit check below compares the two splits.
        let lens = [1i64, 37, 256, 257, 512, 600].repeat(7);
        let mut tables = vec![0i64; lens.len() * nb as usize];
        for (i, len) in lens.iter().enumerate() {
            for b in 0..(len + bs - 1) / bs {
                tables[i * nb as usize + b as usize] = (b * 7 + i as i64 * 3) % blocks;
            }
        }
        let n = lens.len() as i64;
        let qkv = rand(&[n, heads + 2 * kv, d], kind);
        let q = qkv.narrow(1, 0, heads);
        let scale = 1.0 / (d as f64).sqrt();
        let (tab, ctx) = (Tensor::from_slice(&tables), Tensor::from_slice(&lens));
        let got = decode_attention(&q, &k_pool, &v_pool, &tab, &ctx, scale).unwrap();
        assert_eq!(got.size(), [n, heads, d]);
        // The decode pool's threads give the same bits as libtorch's.
        let pooled = {
            let _pool = crate::model::cpu_pool::PoolScope::enter();
            decode_attention(&q, &k_pool, &v_pool, &tab, &ctx, scale).unwrap()
        };
        assert!(pooled.equal(&got), "{kind:?} d={d}: the decode pool's result differs");
        for (i, &len) in lens.iter().enumerate() {
            let rows = tab.narrow(0, i as i64 * nb, nb);
            let keys = |pool: &Tensor| pool.index_select(0, &rows).view([-1, kv, d]).narrow(0, 0, len).transpose(0, 1).unsqueeze(0);
            let qi = q.narrow(0, i as i64, 1).reshape([1, kv, heads / kv, d]);
            let want = Tensor::scaled_dot_product_attention(&qi, &keys(&k_pool), &keys(&v_pool), None::<Tensor>, 0.0, false, scale, false).reshape([heads, d]);
            let diff = (got.get(i as i64).to_kind(Kind::Float) - want.to_kind(Kind::Float)).abs().max().double_value(&[]);
            let tol = if kind == Kind::Float { 1e-6 } else { 0.02 };
            assert!(diff <= tol, "{kind:?} d={d} bs={bs}, sequence {i} (ctx {len}): max difference {diff} from SDPA");
            // A sequence alone gives the same bits as in the batch.
            let alone = decode_attention(&q.narrow(0, i as i64, 1), &k_pool, &v_pool, &rows, &ctx.narrow(0, i as i64, 1), scale).unwrap();
            assert!(alone.equal(&got.narrow(0, i as i64, 1)), "{kind:?} d={d} bs={bs}: sequence {i} alone differs from the batch");
        }
        let mut bad = lens.clone();
        if let Some(last) = bad.last_mut() {
            *last = 609;
        }
        let bad = Tensor::from_slice(&bad);
        let err = decode_attention(&q, &k_pool, &v_pool, &tab, &bad, scale).unwrap_err();
        assert!(err.to_string().contains("context length 609 outside 1..=608"), "{err}");
    }

    #[test]
    fn chunk_attention_matches_sdpa_over_the_masked_prefix() {
        let probe = rand(&[1, 1, 64], Kind::BFloat16);
        if !chunk_attention_applies(&probe, 64) {
            eprintln!("no AVX512-BF16 on this CPU (or no shim): chunk attention is not used, SDPA is");
            return;
        }
        // Both kernels where the CPU has AMX: the tiles and the AVX-512 products.
        // SAFETY: a pure query of the CPU's features.
        let paths: &[bool] = if unsafe { ffi::chunk_attention_amx_available() } == 1 { &[true, false] } else { &[false] };
        for (&amx, d) in paths.iter().flat_map(|amx| [64i64, 128].map(|d| (amx, d))) {
            tch::manual_seed(11);
            let (heads, kv, bs, blocks) = (9, 3, 16, 80);
            let k_pool = rand(&[blocks, bs, kv, d], Kind::BFloat16);
            let v_pool = rand(&[blocks, bs, kv, d], Kind::BFloat16);
            // (chunk, context): a whole prompt (no prefix), one token, a
            // chunk that ends mid-block, chunks longer than a query tile
            // over prefixes that are not a multiple of 32.
            for (len, ctx) in [(37i64, 37i64), (1, 300), (130, 642), (16, 16), (50, 1000), (17, 49)] {
                let nb = (ctx + bs - 1) / bs;
                let table = Tensor::from_slice(&(0..nb).map(|b| (b * 13 + 5) % blocks).collect::<Vec<_>>());
                let prompt = rand(&[ctx, heads + 2 * kv, d], Kind::BFloat16).narrow(1, 0, heads);
                let q = prompt.narrow(0, ctx - len, len);
                let scale = 1.0 / (d as f64).sqrt();
                let got = chunk_attention_on(&q, &k_pool, &v_pool, &table, ctx, scale, amx).unwrap();
                assert_eq!(got.size(), [len, heads, d]);
                let pooled = {
                    let _pool = crate::model::cpu_pool::PoolScope::enter();
                    chunk_attention_on(&q, &k_pool, &v_pool, &table, ctx, scale, amx).unwrap()
                };
                assert!(pooled.equal(&got), "amx={amx} d={d} len={len} ctx={ctx}: the decode pool's result differs");
                // The chunk's rows are the whole prompt's last rows, bit for
                // bit: prefix reuse and chunked prefill do not change them.
                let whole = chunk_attention_on(&prompt, &k_pool, &v_pool, &table, ctx, scale, amx).unwrap();
                assert!(whole.narrow(0, ctx - len, len).equal(&got), "amx={amx} d={d} len={len} ctx={ctx}: the chunk differs from the whole prompt");
                let keys = |pool: &Tensor| pool.index_select(0, &table).view([-1, kv, d]).narrow(0, 0, ctx).transpose(0, 1).unsqueeze(0).repeat_interleave_self_int(heads / kv, 1, None);
                let qpos = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(1) + (ctx - len);
                let mask = Tensor::arange(ctx, (Kind::Int64, Device::Cpu)).unsqueeze(0).le_tensor(&qpos).view([1, 1, len, ctx]);
                let want = Tensor::scaled_dot_product_attention(&q.transpose(0, 1).unsqueeze(0), &keys(&k_pool), &keys(&v_pool), Some(&mask), 0.0, false, scale, false)
                    .squeeze_dim(0)
                    .transpose(0, 1);
                let diff = (got.to_kind(Kind::Float) - want.to_kind(Kind::Float)).abs().max().double_value(&[]);
                assert!(diff <= 0.02, "amx={amx} d={d} len={len} ctx={ctx}: max difference {diff} from SDPA");
                // The last query sees the whole context: a later key must matter.
                assert!(got.abs().sum(Kind::Float).double_value(&[]) > 0.0);
            }
            let table = Tensor::from_slice(&[0i64, 1]);
            let q = rand(&[4, heads, d], Kind::BFloat16);
            let err = chunk_attention_on(&q, &k_pool, &v_pool, &table, 33, 0.1, amx).unwrap_err();
            assert!(err.to_string().contains("chunk of 4 over context 33 outside 1..=32"), "{err}");
            let err = chunk_attention_on(&q, &k_pool, &v_pool, &Tensor::from_slice(&[0i64, 80]), 32, 0.1, amx).unwrap_err();
            assert!(err.to_string().contains("block 80 outside the pool's 80"), "{err}");
        }
    }

    #[test]
    fn a_bad_input_is_an_error_not_an_abort() {
        let x = rand(&[2, 8], Kind::BFloat16);
        let err = rms_norm(&x, &rand(&[7], Kind::BFloat16), 1e-5).unwrap_err();
        assert!(err.to_string().contains("rms norm weight must be [8]"), "{err}");
        let err = rms_norm(&x, &rand(&[8], Kind::Float), 1e-5).unwrap_err();
        assert!(err.to_string().contains("rms norm weight is Float"), "{err}");
    }
}
