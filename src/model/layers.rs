//! The building blocks shared by the model families: linear projections,
//! RMSNorm, LayerNorm, embeddings and the rotary position table.
//!
//! Each layer is loaded by name from a [`WeightSource`] (Hugging Face naming),
//! shape-checked, cast to the run dtype and moved to the run device once, at
//! load time. Forward calls use tch's fallible `f_*` API so a libtorch error
//! (a CUDA OOM included) comes back as an error, never a process abort.

use tch::{Device, Kind, TchError, Tensor};

use super::config::{ModelConfig, RopeScaling};
use super::fused_cpu;
use super::loader::{LoadError, WeightSource};
use super::gemv_gguf::GgufWeight;
use super::loader::QuantRows;
use super::packed_linear::{self, PackedWeight};

/// Where and in which float kind the model runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub kind: Kind,
    /// Keep a GGUF file's Q4_0/Q4_1/Q8_0 linear weights in their blocks and
    /// multiply them there (`quantization = "gguf"`; CPU, bf16, AVX512_BF16 and AVX512_VNNI).
    pub gguf_blocks: bool,
}

impl Placement {
    /// Load `name` with shape `shape`, cast and move it.
    pub fn load(&self, ws: &dyn WeightSource, name: &str, shape: &[i64]) -> Result<Tensor, LoadError> {
        let t = ws.load_shaped(name, shape)?;
        self.place(ws, t)
    }

    /// Cast and move a CPU tensor to the run kind and device.
    pub fn place(&self, ws: &dyn WeightSource, t: Tensor) -> Result<Tensor, LoadError> {
        t.f_to_kind(self.kind)
            .and_then(|t| t.f_to_device(self.device))
            .and_then(|t| t.f_contiguous())
            .map_err(|source| LoadError::Torch { path: ws.origin(), source })
    }
}

/// `y = x W^T + b`, with W held in whichever form multiplies fastest where
/// the model runs (see [`WeightForm`]).
#[derive(Debug)]
pub struct Linear {
    weight: WeightForm,
    bias: Option<Tensor>,
}

/// How a [`Linear`] keeps W ([out, in] in the checkpoint).
///
/// Why these layouts: on CPU, libtorch's f32 GEMM (MKL) is fastest with a plain
/// [in, out] weight, 3-6x faster than the transposed-B GEMM for the 4-48 row
/// batches that decode steps make (576x1536 at 16 rows, torch 2.11, 2
/// threads: 143 us vs 815 us), and MKL gives the same bits for a row whatever
/// the batch, which keeps f32 greedy outputs batch-invariant; on x86 CPUs
/// without AVX-512 MKL takes a generic path that is neither, and f32 is
/// packed for oneDNN as below (see `mkl_lacks_its_fast_path`). In bf16 and f16
/// the GEMM is oneDNN's, which re-lays a plain weight out on every call;
/// packing it once is 1.4-2.5x faster (see `packed_linear`) and still gives
/// the same bits per row whatever the batch; in bf16 with AVX512_BF16 the
/// decode-sized products read the packed bytes with `gemv_bf16`'s kernel. On CUDA, cuBLAS reads either
/// layout at the same speed, so W stays as loaded and costs no copy.
#[derive(Debug)]
enum WeightForm {
    /// W^T [in, out] for `x.mm(w_t)`: contiguous for CPU f32; elsewhere a
    /// transposed view of W [out, in] as loaded (CUDA, and CPU bf16/f16
    /// where oneDNN cannot pack).
    Mm(Tensor),
    /// oneDNN's blocked layout, CPU bf16/f16 (and f32 without AVX-512).
    Packed(PackedWeight),
    /// A GGUF file's quantized blocks, multiplied by `gemv_gguf`'s kernel
    /// at every row count (CPU bf16 with `gguf_blocks`).
    Quant(GgufWeight),
}

/// Rows the packed layout is tuned for: a decode step's batch. Any row count
/// works; prefill chunks of 512 rows ran as fast as with a 512-row packing.
const PACK_ROWS: i64 = 16;

impl Linear {
    /// Load `{prefix}.weight` [out, in] and, when `bias`, `{prefix}.bias` [out].
    pub fn load(ws: &dyn WeightSource, at: &Placement, prefix: &str, in_dim: i64, out_dim: i64, bias: bool) -> Result<Linear, LoadError> {
        Self::load_fused(ws, at, &[(prefix, out_dim)], in_dim, bias)
    }

    /// Several projections of the same input as one: their [out_i, in]
    /// weights stacked into [sum out_i, in] (and their biases), so one GEMM
    /// replaces several. The output's columns follow `parts`' order.
    pub fn load_fused(ws: &dyn WeightSource, at: &Placement, parts: &[(&str, i64)], in_dim: i64, bias: bool) -> Result<Linear, LoadError> {
        let torch = |source| LoadError::Torch { path: ws.origin(), source };
        let bias = if bias {
            let biases = parts.iter().map(|(prefix, out_dim)| ws.load_shaped(&format!("{prefix}.bias"), &[*out_dim])).collect::<Result<Vec<_>, _>>()?;
            Some(at.place(ws, Tensor::f_cat(&biases, 0).map_err(torch)?)?)
        } else {
            None
        };
        if let Some(weight) = Self::load_quant(ws, at, parts, in_dim)? {
            return Ok(Linear { weight: WeightForm::Quant(weight), bias });
        }
        let weights = parts.iter().map(|(prefix, out_dim)| ws.load_shaped(&format!("{prefix}.weight"), &[*out_dim, in_dim])).collect::<Result<Vec<_>, _>>()?;
        let w = Tensor::f_cat(&weights, 0).map_err(torch)?;
        Ok(Linear { bias, ..Self::from_placed(ws, &at.place(ws, w)?, at)? })
    }

    /// `{prefix}.weight` [out, in] kept in its GGUF blocks, without bias
    /// (a tied LM head read from the embedding's blocks); `None` where
    /// [`load_fused`](Self::load_fused) would dequantize it.
    pub fn load_blocks(ws: &dyn WeightSource, at: &Placement, prefix: &str, in_dim: i64, out_dim: i64) -> Result<Option<Linear>, LoadError> {
        Ok(Self::load_quant(ws, at, &[(prefix, out_dim)], in_dim)?.map(|w| Linear { weight: WeightForm::Quant(w), bias: None }))
    }

    /// The parts' weights kept in their GGUF blocks, when `at` asks for that,
    /// the kernel runs here and every part is Q4_0, Q4_1 or Q8_0, all of one
    /// type, with the expected shape; `None` sends the caller down the
    /// dequantizing path.
    fn load_quant(ws: &dyn WeightSource, at: &Placement, parts: &[(&str, i64)], in_dim: i64) -> Result<Option<GgufWeight>, LoadError> {
        if !at.gguf_blocks || at.device != Device::Cpu || at.kind != Kind::BFloat16 || !super::gemv_gguf::available() {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(parts.len());
        for (prefix, out_dim) in parts {
            match ws.load_quant(&format!("{prefix}.weight"))? {
                Some(r) if r.n == *out_dim && r.k == in_dim => rows.push(r),
                _ => return Ok(None),
            }
        }
        let Some(rows) = QuantRows::stack(rows) else { return Ok(None) };
        GgufWeight::pack(&rows).map_err(|source| LoadError::Torch { path: ws.origin(), source })
    }

    /// A projection, without bias, from an already placed [out, in] weight
    /// (a tied LM head, or the weights `load_fused` stacked).
    pub fn from_placed(ws: &dyn WeightSource, weight: &Tensor, at: &Placement) -> Result<Linear, LoadError> {
        let weight = WeightForm::new(weight, at).map_err(|source| LoadError::Torch { path: ws.origin(), source })?;
        Ok(Linear { weight, bias: None })
    }

    /// GPT-2's Conv1D stores W as [in, out].
    pub fn load_conv1d(ws: &dyn WeightSource, at: &Placement, prefix: &str, in_dim: i64, out_dim: i64) -> Result<Linear, LoadError> {
        let w_t = at.load(ws, &format!("{prefix}.weight"), &[in_dim, out_dim])?;
        let bias = Some(at.load(ws, &format!("{prefix}.bias"), &[out_dim])?);
        let torch = |source| LoadError::Torch { path: ws.origin(), source };
        let weight = WeightForm::new(&w_t.f_transpose(0, 1).map_err(torch)?, at).map_err(torch)?;
        Ok(Linear { weight, bias })
    }

    /// Rows up to which `forward` runs on the row kernel (`gemv_bf16`); 0 when
    /// it never does (no kernel for this weight, or a bias).
    pub fn row_kernel_rows(&self) -> i64 {
        match (&self.weight, &self.bias) {
            (WeightForm::Packed(p), None) => p.row_kernel_rows(),
            (WeightForm::Quant(_), _) => i64::MAX,
            _ => 0,
        }
    }

    /// The weight as `decode_stack` reads it: a bf16 row kernel's or GGUF
    /// blocks' bytes, without bias; `None` for any other form.
    pub fn stack_product(&self) -> Option<super::decode_stack::Product> {
        match (&self.weight, &self.bias) {
            (WeightForm::Packed(p), None) => p.row_kernel().map(|k| k.stack_product()),
            (WeightForm::Quant(w), None) => Some(w.stack_product()),
            _ => None,
        }
    }

    /// Whether the weight is kept in GGUF blocks (`gemv_gguf`).
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, WeightForm::Quant(_))
    }

    /// x: [T, in] -> [T, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        match (&self.weight, &self.bias) {
            (WeightForm::Packed(p), bias) => packed_linear::linear(x, p, bias.as_ref()),
            (WeightForm::Quant(w), None) => w.forward(x),
            (WeightForm::Quant(w), Some(b)) => w.forward(x)?.f_add(b),
            (WeightForm::Mm(w_t), Some(b)) => b.f_addmm(x, w_t),
            (WeightForm::Mm(w_t), None) => x.f_mm(w_t),
        }
    }
}

impl WeightForm {
    /// W [out, in] (possibly a view) in the form for `at`.
    fn new(w: &Tensor, at: &Placement) -> Result<WeightForm, TchError> {
        if at.device != Device::Cpu {
            return Ok(WeightForm::Mm(w.f_transpose(0, 1)?));
        }
        match at.kind {
            Kind::BFloat16 | Kind::Half => {
                if packed_linear::available() {
                    match packed_linear::pack(w, PACK_ROWS) {
                        Ok(p) => return Ok(WeightForm::Packed(p)),
                        // oneDNN has no kernel for this dtype on this CPU
                        // (bf16 wants AVX-512 BW/VL/DQ): the plain layout works.
                        Err(e) => tracing::debug!(error = %e, "linear weight left unpacked"),
                    }
                }
                Ok(WeightForm::Mm(w.f_contiguous()?.f_transpose(0, 1)?))
            }
            Kind::Float if mkl_lacks_its_fast_path() && packed_linear::available() => match packed_linear::pack(w, PACK_ROWS) {
                Ok(p) => Ok(WeightForm::Packed(p)),
                Err(e) => {
                    tracing::debug!(error = %e, "f32 linear weight left unpacked");
                    Ok(WeightForm::Mm(w.f_transpose(0, 1)?.f_contiguous()?))
                }
            },
            _ => Ok(WeightForm::Mm(w.f_transpose(0, 1)?.f_contiguous()?)),
        }
    }
}

/// Whether this is an x86 CPU without AVX-512, where MKL's f32 GEMM takes its
/// generic path: on an AVX2-only Zen 3 (torch 2.11, 2 threads) it copied the
/// whole weight on every decode-sized call (`mkl_blas_def_sgemm_scopy_down16_bdz`
/// 41% of a served step's samples), and one SmolLM2 layer plus the LM head
/// took 46.4 ms at 4 rows and 54.9 ms at 16 against 15.8 and 21.8 ms with
/// oneDNN's packed weight (1 row 8.1 against 7.4; 512 rows, one layer, 46.0
/// against 39.6). There MKL is not batch-invariant either (a row's bits
/// changed from 4 rows up), so packing costs no guarantee; on CPUs with
/// AVX-512, where MKL kept a row's bits whatever the batch, f32 stays on it.
fn mkl_lacks_its_fast_path() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Root-mean-square norm, computed in f32 as transformers does, then cast back.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(ws: &dyn WeightSource, at: &Placement, name: &str, dim: i64, eps: f64) -> Result<RmsNorm, LoadError> {
        Ok(RmsNorm { weight: at.load(ws, name, &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let kind = x.kind();
        if fused_cpu::applies(x) {
            return fused_cpu::rms_norm(x, &self.weight, self.eps);
        }
        if kind == Kind::Float {
            // One libtorch call instead of six; in f32 it gave the same bits as
            // the steps below (torch 2.11), and parity_tiny checks it.
            return x.f_rms_norm([self.weight.size()[0]], Some(&self.weight), self.eps);
        }
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = xf.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        // transformers multiplies the weight with the input-dtype tensor.
        self.weight.f_mul(&normed.f_to_kind(kind)?)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The residual add before a norm, fused with it where the CPU kernels
    /// apply: returns `(x + delta, norm(x + delta))`.
    pub fn forward_residual(&self, x: &Tensor, delta: &Tensor) -> Result<(Tensor, Tensor), TchError> {
        if fused_cpu::applies(x) {
            return fused_cpu::add_rms_norm(x, delta, &self.weight, self.eps);
        }
        let sum = x.f_add(delta)?;
        let normed = self.forward(&sum)?;
        Ok((sum, normed))
    }
}

/// LayerNorm with weight and bias (GPT-2).
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn load(ws: &dyn WeightSource, at: &Placement, prefix: &str, dim: i64, eps: f64) -> Result<LayerNorm, LoadError> {
        let weight = at.load(ws, &format!("{prefix}.weight"), &[dim])?;
        let bias = at.load(ws, &format!("{prefix}.bias"), &[dim])?;
        Ok(LayerNorm { weight, bias, eps, dim })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, false)
    }
}

/// A token (or position) embedding table [rows, dim].
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn load(ws: &dyn WeightSource, at: &Placement, name: &str, rows: i64, dim: i64) -> Result<Embedding, LoadError> {
        Ok(Embedding { weight: at.load(ws, name, &[rows, dim])? })
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, TchError> {
        self.weight.f_index_select(0, ids)
    }
}

/// Rotary position embedding tables (cos and sin, [max_pos, head_dim], f32),
/// built exactly as transformers builds them so f32 logits match to 1e-5.
#[derive(Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    half: i64,
}

impl Rotary {
    pub fn new(cfg: &ModelConfig, max_pos: i64, device: Device) -> Result<Rotary, TchError> {
        let dim = cfg.head_dim;
        // base ** (arange(0, dim, 2) / dim), in f32 like transformers.
        let exps = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))?.f_to_kind(Kind::Float)?.f_div_scalar(dim as f64)?;
        let base = Tensor::f_from_slice(&[cfg.rope_theta as f32])?;
        let mut inv_freq = base.f_pow(&exps)?.f_reciprocal()?;
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq = inv_freq.f_div_scalar(*factor)?,
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                inv_freq = llama3_inv_freq(&inv_freq, *factor, *low_freq_factor, *high_freq_factor, *original_max_position_embeddings)?;
            }
        }
        let pos = Tensor::f_arange(max_pos, (Kind::Float, Device::Cpu))?;
        let freqs = pos.f_unsqueeze(1)?.f_mul(&inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok(Rotary { cos: emb.f_cos()?.f_to_device(device)?, sin: emb.f_sin()?.f_to_device(device)?, half: dim / 2 })
    }

    /// cos and sin rows for `positions` ([T] int64), cast to `kind`: [T, 1, head_dim].
    pub fn select(&self, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor), TchError> {
        let cos = self.cos.f_index_select(0, positions)?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let sin = self.sin.f_index_select(0, positions)?.f_to_kind(kind)?.f_unsqueeze(1)?;
        Ok((cos, sin))
    }

    /// The first `heads` heads of qkv [T, all heads, head_dim], rotated:
    /// in place where the fused CPU kernel applies (the returned tensor is
    /// then a view of qkv), else as a new tensor.
    pub fn rotate_heads(&self, qkv: &Tensor, heads: i64, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TchError> {
        if fused_cpu::applies(qkv) {
            fused_cpu::rotary_(qkv, cos, sin, heads)?;
            return qkv.f_narrow(1, 0, heads);
        }
        self.apply(&qkv.f_narrow(1, 0, heads)?, cos, sin)
    }

    /// Apply to x [T, heads, head_dim] (transformers' rotate_half layout).
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TchError> {
        let x1 = x.f_narrow(-1, 0, self.half)?;
        let x2 = x.f_narrow(-1, self.half, self.half)?;
        let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
        x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)
    }
}

/// transformers' `_compute_llama3_parameters`.
fn llama3_inv_freq(inv_freq: &Tensor, factor: f64, low: f64, high: f64, old_ctx: f64) -> Result<Tensor, TchError> {
    let low_freq_wavelen = old_ctx / low;
    let high_freq_wavelen = old_ctx / high;
    let wavelen = inv_freq.f_reciprocal()?.f_mul_scalar(2.0 * std::f64::consts::PI)?;
    let scaled = inv_freq.f_div_scalar(factor)?;
    let long = wavelen.f_gt(low_freq_wavelen)?;
    let inv_llama = scaled.f_where_self(&long, inv_freq)?;
    let smooth = wavelen.f_reciprocal()?.f_mul_scalar(old_ctx)?.f_sub_scalar(low)?.f_div_scalar(high - low)?;
    let one_minus = smooth.f_neg()?.f_add_scalar(1.0)?;
    // Same operation order as transformers, so f32 results are bit-identical.
    let smoothed = one_minus.f_mul(&inv_llama)?.f_div_scalar(factor)?.f_add(&smooth.f_mul(&inv_llama)?)?;
    let medium = wavelen.f_ge(high_freq_wavelen)?.f_logical_and(&wavelen.f_le(low_freq_wavelen)?)?;
    smoothed.f_where_self(&medium, &inv_llama)
}
