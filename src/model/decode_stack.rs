//! A LLaMA-family decode step of a few rows in one native call
//! (`decode_stack.cpp`): every layer's norms, products, rotary, K/V write,
//! attention and SwiGLU, then the final norm, with no tch op in between.
//!
//! Why: at one stream a SmolLM2 step is 121 products with about ten small
//! ops between each pair, and through tch and libtorch's dispatcher each
//! small op costs microseconds (an FFI call, a tensor, an allocation,
//! iterator set-up) while it moves a few KB, time in which memory, the
//! one-stream bound, sits idle. The native loop runs the same kernels in the
//! same order as [`Llama::forward_hidden`](super::llama::Llama)'s tensor
//! path, so a row gets the same bits either way (`tests/decode_stack.rs`).
//!
//! It applies on CPU in bf16 when every projection has a row kernel
//! (`gemv_bf16` on AVX512_BF16, or the file's GGUF blocks) and no bias, to
//! steps of decode rows only, up to [`cpu_pool::MAX_ROWS`] of them (the steps
//! that run on the decode pool, where the small ops weigh most).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tch::{TchError, Tensor};

use super::attention::AttnShape;
use super::cpu_pool;

/// A projection's weight as its row kernel reads it. The bytes belong to the
/// `Linear` it came from, which must outlive every call that uses it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Product {
    kind: i64,
    bytes: usize,
    n: i64,
    k: i64,
    /// bf16 rows: inputs per fresh accumulator; GGUF: the layout (4 or 8);
    /// bf16 on AMX: unused.
    param: i64,
}

const BF16_ROWS: i64 = 1;
const GGUF: i64 = 2;
const BF16_AMX: i64 = 3;

impl Product {
    pub(crate) fn bf16_rows(bytes: usize, n: i64, k: i64, step: i64) -> Product {
        Product { kind: BF16_ROWS, bytes, n, k, param: step }
    }

    pub(crate) fn bf16_amx(bytes: usize, n: i64, k: i64) -> Product {
        Product { kind: BF16_AMX, bytes, n, k, param: 0 }
    }

    pub(crate) fn gguf(bytes: usize, n: i64, k: i64, format: i64) -> Product {
        Product { kind: GGUF, bytes, n, k, param: format }
    }
}

/// `decode_stack.cpp`'s `Layer`.
#[repr(C)]
struct Layer {
    qkv: Product,
    o: Product,
    gate_up: Product,
    down: Product,
    input_norm: *const c_void,
    post_norm: *const c_void,
    k_pool: *const c_void,
    v_pool: *const c_void,
}

/// One layer as the stack takes it: the four projections ([qkv, o,
/// gate_up, down]), the two norms' weights and the layer's K/V pools, which
/// the call writes this step's rows into.
pub struct LayerWeights<'a> {
    pub products: [Product; 4],
    pub input_norm: &'a Tensor,
    pub post_norm: &'a Tensor,
    pub k_pool: &'a mut Tensor,
    pub v_pool: &'a mut Tensor,
}

/// The step's shared inputs.
pub struct StepInputs<'a> {
    /// Embedded tokens, bf16 [T, H].
    pub x: &'a Tensor,
    /// Rotary cos and sin for the rows' positions, bf16, T x head_dim values.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// Each row's KV slot, context length and block table (int64, CPU).
    pub slots: &'a Tensor,
    pub ctx_lens: &'a Tensor,
    pub tables: &'a Tensor,
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static STEPS_RUN: AtomicU64 = AtomicU64::new(0);

/// Turn the native step on or off for the whole process (tests and
/// benchmarks compare it with the tensor path; on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// How many steps the native call has completed in this process (tests
/// check that it served the steps they meant it to).
pub fn steps_run() -> u64 {
    STEPS_RUN.load(Ordering::Relaxed)
}

/// Whether a step of `rows` decode rows takes the native call (the model's
/// own conditions aside).
pub fn applies(rows: i64) -> bool {
    cfg!(inferd_torch_shim) && ENABLED.load(Ordering::Relaxed) && rows >= 1 && rows <= cpu_pool::MAX_ROWS
}

/// Run every layer and the final norm. Returns final_norm(hidden), bf16
/// [T, H].
pub fn run(step: &StepInputs, layers: &mut [LayerWeights], final_norm: &Tensor, eps: f64, shape: AttnShape, intermediate: i64) -> Result<Tensor, TchError> {
    let raw: Vec<Layer> = layers
        .iter_mut()
        .map(|l| Layer {
            qkv: l.products[0],
            o: l.products[1],
            gate_up: l.products[2],
            down: l.products[3],
            input_norm: l.input_norm.as_ptr().cast(),
            post_norm: l.post_norm.as_ptr().cast(),
            k_pool: l.k_pool.as_mut_ptr().cast_const().cast(),
            v_pool: l.v_pool.as_mut_ptr().cast_const().cast(),
        })
        .collect();
    if raw.is_empty() {
        return Err(TchError::Torch("decode stack: a model without layers".into()));
    }
    let scale = 1.0 / (shape.head_dim as f64).sqrt();
    // SAFETY: every tensor handle is live for the call (borrowed by `step`,
    // `layers` and `final_norm`; the pools by the caller's cache); each
    // Product's bytes belong to a Linear the caller's model owns. The shim
    // checks kinds, shapes, every slot, length and block id before it reads
    // or writes, and returns a fresh owned tensor or null.
    let ptr = unsafe {
        ffi::decode_stack(
            step.x.as_ptr().cast(),
            raw.as_ptr(),
            raw.len() as i64,
            final_norm.as_ptr().cast(),
            eps,
            step.cos.as_ptr().cast(),
            step.sin.as_ptr().cast(),
            step.slots.as_ptr().cast(),
            step.tables.as_ptr().cast(),
            step.ctx_lens.as_ptr().cast(),
            shape.num_heads,
            shape.num_kv_heads,
            shape.head_dim,
            intermediate,
            scale,
        )
    };
    let out = super::packed_linear::take_tensor(ptr, "decode stack")?;
    STEPS_RUN.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

#[cfg(inferd_torch_shim)]
mod ffi {
    use std::ffi::c_void;

    use super::Layer;

    extern "C" {
        #[link_name = "inferd_decode_stack"]
        pub fn decode_stack(
            x: *const c_void,
            layers: *const Layer,
            count: i64,
            final_norm: *const c_void,
            eps: f64,
            cos: *const c_void,
            sin: *const c_void,
            slots: *const c_void,
            tables: *const c_void,
            ctx_lens: *const c_void,
            heads: i64,
            kv_heads: i64,
            head_dim: i64,
            inter: i64,
            scale: f64,
        ) -> *mut c_void;
    }
}

/// Without the shim `applies` is false and this is never reached.
#[cfg(not(inferd_torch_shim))]
mod ffi {
    use std::ffi::c_void;

    use super::Layer;

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn decode_stack(
        _: *const c_void,
        _: *const Layer,
        _: i64,
        _: *const c_void,
        _: f64,
        _: *const c_void,
        _: *const c_void,
        _: *const c_void,
        _: *const c_void,
        _: *const c_void,
        _: i64,
        _: i64,
        _: i64,
        _: i64,
        _: f64,
    ) -> *mut c_void {
        std::ptr::null_mut()
    }
}
