// Fused CPU kernels for the element-wise steps of a LLaMA layer.
//
// In a one-stream decode step each of these steps touches a few hundred
// values, so libtorch's per-op cost (dispatch, TensorIterator set-up, an
// output allocation) is most of their time: a bf16 RMSNorm is eight ops, a
// residual add one more, rotary five. These loops do each step in one pass
// and reproduce libtorch's rounding: every bf16/f16 result of an eager op is
// rounded where the op would round it. Only the order of the f32 sum of
// squares differs from libtorch's, which can move a norm's result by an ulp.
//
// Each row is computed on its own, so a row's result does not depend on the
// rows beside it (batched greedy decoding relies on that), whichever thread
// computes it. Rows are split over libtorch's OpenMP threads when a step has
// enough of them (a prefill chunk); a decode step's few rows run inline.
//
// Tensors cross the boundary as `at::Tensor*` (tch's handles); returned
// pointers are owned by the caller. Errors come back as null / nonzero plus a
// thread-local message.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "row_kernels.h"
#include "softmax_bf16.h"

namespace {

using namespace inferd_cpu;

// Rows a parallel chunk takes at least: below it a step runs inline.
constexpr int64_t kParallelElems = 16384;

inline int64_t row_grain(int64_t row_elems) {
    return std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, row_elems));
}

// x [T, H] (+ delta [T, H]) -> (sum, weight * norm(sum)), as
// transformers' LlamaRMSNorm computes it for a bf16/f16 input.
template <typename T>
INFERD_CLONES void add_rms_norm(const T* x, const T* delta, const T* w, T* sum, T* out, int64_t begin, int64_t end, int64_t h, float eps) {
    std::vector<float> v(static_cast<size_t>(h));
    for (int64_t r = begin; r < end; ++r) {
        const T* xr = x + r * h;
        if (delta) {
            // bf16 + bf16 is computed in f32 and stored in bf16.
            const T* dr = delta + r * h;
            T* sr = sum + r * h;
            for (int64_t i = 0; i < h; ++i) {
                sr[i] = to_t<T>(static_cast<float>(xr[i]) + static_cast<float>(dr[i]));
                v[i] = static_cast<float>(sr[i]);
            }
        } else {
            for (int64_t i = 0; i < h; ++i) v[i] = static_cast<float>(xr[i]);
        }
        const float ss = dot(v.data(), v.data(), h);
        // mean, + eps, rsqrt: each an f32 op in the eager path.
        const float inv = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
        T* orow = out + r * h;
        for (int64_t j = 0; j < h; ++j) {
            orow[j] = to_t<T>(static_cast<float>(w[j]) * rounded<T>(v[j] * inv));
        }
    }
}

// In place on the first `heads` heads of x [T, all heads, D] (rows may be
// strided), with cos and sin [T, D] in x's dtype: transformers'
// `x * cos + rotate_half(x) * sin`, each product and the sum rounded to T.
template <typename T>
INFERD_CLONES void rotary(T* x, int64_t row_stride, const T* cos, const T* sin, int64_t begin, int64_t end, int64_t heads, int64_t d) {
    const int64_t half = d / 2;
    for (int64_t r = begin; r < end; ++r) {
        const T* c = cos + r * d;
        const T* s = sin + r * d;
        for (int64_t hd = 0; hd < heads; ++hd) {
            T* v = x + r * row_stride + hd * d;
            for (int64_t i = 0; i < half; ++i) {
                float x1 = static_cast<float>(v[i]);
                float x2 = static_cast<float>(v[i + half]);
                float lo = rounded<T>(x1 * static_cast<float>(c[i])) + rounded<T>(-x2 * static_cast<float>(s[i]));
                float hi = rounded<T>(x2 * static_cast<float>(c[i + half])) + rounded<T>(x1 * static_cast<float>(s[i + half]));
                v[i] = to_t<T>(lo);
                v[i + half] = to_t<T>(hi);
            }
        }
    }
}

// gu [T, 2I] = [gate | up] -> silu(gate) * up [T, I], as the eager
// `gate.silu() * up` computes it for bf16/f16: silu in f32 (x / (1 + e^-x))
// rounded to T, then the product in f32 rounded to T. e^x is exp_f32 (within
// about an ulp of libtorch's), so a result can differ from the eager ops'
// by an ulp of T; both the layer's tensor path and decode_stack.cpp use
// this loop, so a row gets the same bits through either.
template <typename T>
INFERD_CLONES void silu_mul(const T* gu, T* out, int64_t begin, int64_t end, int64_t inter) {
    for (int64_t r = begin; r < end; ++r) {
        const T* gate = gu + r * 2 * inter;
        const T* up = gate + inter;
        T* o = out + r * inter;
        for (int64_t i = 0; i < inter; ++i) {
            const float g = static_cast<float>(gate[i]);
            const float s = rounded<T>(g / (1.0f + exp_f32(-g)));
            o[i] = to_t<T>(s * static_cast<float>(up[i]));
        }
    }
}

// bf16 lanes [16] widened to f32 (exact), and f32 lanes rounded to bf16
// bits as to_t rounds them (to nearest even, NaN to 0x7FC0) in the low half
// of each 32-bit lane. (maskz forms with every lane: the plain intrinsics
// trip GCC 12's -Wmaybe-uninitialized on their undefined pass-through.)
INFERD_BF16_TARGET inline __m512 widen_bf16(const uint16_t* p) {
    const __m512i w = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, w, 16));
}

INFERD_BF16_TARGET inline __m512i round_bf16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_maskz_srli_epi32(0xFFFF, _mm512_add_epi32(_mm512_add_epi32(u, lsb), _mm512_set1_epi32(0x7FFF)), 16);
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}

// silu_mul<bf16>'s row on sixteen lanes at a time with AVX-512: the scalar
// loop's operations in its order (e^-g is exp16<false>, exp_f32's own steps,
// plus exp_f32's infinity above its range), so the same bits; 3-4x faster
// than what GCC makes of the scalar loop.
INFERD_BF16_TARGET void silu_mul_row_avx512(const c10::BFloat16* gate, const c10::BFloat16* up, c10::BFloat16* out, int64_t inter) {
    const auto* g16 = reinterpret_cast<const uint16_t*>(gate);
    const auto* u16 = reinterpret_cast<const uint16_t*>(up);
    auto* o16 = reinterpret_cast<uint16_t*>(out);
    const __m512i sign = _mm512_set1_epi32(static_cast<int32_t>(0x80000000u));
    const __m512 one = _mm512_set1_ps(1.0f), hi = _mm512_set1_ps(88.72283f);
    int64_t i = 0;
    for (; i + 16 <= inter; i += 16) {
        const __m512 g = widen_bf16(g16 + i);
        const __m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), sign));
        const __m512 e = _mm512_mask_mov_ps(exp16<false>(neg), _mm512_cmp_ps_mask(neg, hi, _CMP_GT_OQ), _mm512_set1_ps(__builtin_inff()));
        const __m512 silu = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, round_bf16(_mm512_div_ps(g, _mm512_add_ps(one, e))), 16));
        const __m512i y = round_bf16(_mm512_mul_ps(silu, widen_bf16(u16 + i)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o16 + i), _mm512_maskz_cvtepi32_epi16(0xFFFF, y));
    }
    for (; i < inter; ++i) {
        const float g = static_cast<float>(gate[i]);
        const float s = rounded<c10::BFloat16>(g / (1.0f + exp_f32(-g)));
        out[i] = to_t<c10::BFloat16>(s * static_cast<float>(up[i]));
    }
}

// Rows [begin, end) of silu_mul: bf16 on AVX512-BF16 CPUs takes the
// intrinsics above, everything else the scalar loop.
template <typename T>
void silu_mul_rows(const T* gu, T* out, int64_t begin, int64_t end, int64_t inter) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
        static const bool avx512 = cpu_has_avx512_bf16();
        if (avx512) {
            for (int64_t r = begin; r < end; ++r) silu_mul_row_avx512(gu + r * 2 * inter, gu + r * 2 * inter + inter, out + r * inter, inter);
            return;
        }
    }
    silu_mul<T>(gu, out, begin, end, inter);
}

}  // namespace

void inferd_rows::add_rms_norm(const bf16* x, const bf16* delta, const bf16* w, bf16* sum, bf16* out, int64_t rows, int64_t h, float eps) {
    ::add_rms_norm<bf16>(x, delta, w, sum, out, 0, rows, h, eps);
}

void inferd_rows::rotary(bf16* x, int64_t row_stride, const bf16* cos, const bf16* sin, int64_t rows, int64_t heads, int64_t d) {
    ::rotary<bf16>(x, row_stride, cos, sin, 0, rows, heads, d);
}

void inferd_rows::silu_mul(const bf16* gu, bf16* out, int64_t rows, int64_t inter) {
    silu_mul_rows<bf16>(gu, out, 0, rows, inter);
}

extern "C" {

// x [T, H], delta [T, H] or null, w [H], all contiguous, one dtype.
// Writes a new norm tensor to *out and, when delta is given, the new
// residual x + delta to *sum.
int inferd_fused_add_rms_norm(const at::Tensor* x, const at::Tensor* delta, const at::Tensor* w, double eps,
                              at::Tensor** sum, at::Tensor** out) {
    return guarded([&] {
        const auto kind = x->scalar_type();
        check_cpu_kind(*x, "rms norm input", kind);
        check_cpu_kind(*w, "rms norm weight", kind);
        TORCH_CHECK(x->dim() == 2 && x->is_contiguous(), "rms norm input must be a contiguous [T, H]");
        const int64_t rows = x->size(0), h = x->size(1);
        TORCH_CHECK(w->dim() == 1 && w->size(0) == h && w->is_contiguous(), "rms norm weight must be [", h, "]");
        if (delta) {
            check_cpu_kind(*delta, "residual delta", kind);
            TORCH_CHECK(delta->sizes() == x->sizes() && delta->is_contiguous(), "residual delta must be a contiguous ",
                        x->sizes(), ", not ", delta->sizes());
        }
        at::Tensor s = delta ? at::empty_like(*x) : at::Tensor();
        at::Tensor o = at::empty_like(*x);
        by_kind(kind, [&](auto tag) {
            using T = decltype(tag);
            const T* xp = x->data_ptr<T>();
            const T* dp = delta ? delta->data_ptr<T>() : nullptr;
            const T* wp = w->data_ptr<T>();
            T* sp = delta ? s.data_ptr<T>() : nullptr;
            T* op = o.data_ptr<T>();
            at::parallel_for(0, rows, row_grain(h), [&](int64_t begin, int64_t end) {
                add_rms_norm<T>(xp, dp, wp, sp, op, begin, end, h, static_cast<float>(eps));
            });
        });
        *out = new at::Tensor(std::move(o));
        *sum = delta ? new at::Tensor(std::move(s)) : nullptr;
    });
}

// x [T, heads_total, D] with contiguous rows (a view of a fused qkv output),
// cos and sin [T, 1, D] or [T, D] contiguous, same dtype. Rotates the first
// `heads` heads in place.
int inferd_fused_rotary_(const at::Tensor* x, const at::Tensor* cos, const at::Tensor* sin, int64_t heads) {
    return guarded([&] {
        const auto kind = x->scalar_type();
        check_cpu_kind(*x, "rotary input", kind);
        check_cpu_kind(*cos, "rotary cos", kind);
        check_cpu_kind(*sin, "rotary sin", kind);
        TORCH_CHECK(x->dim() == 3 && x->stride(2) == 1 && x->stride(1) == x->size(2),
                    "rotary input must be [T, heads, D] with contiguous rows");
        const int64_t rows = x->size(0), d = x->size(2);
        TORCH_CHECK(heads >= 0 && heads <= x->size(1), "rotary heads ", heads, " out of range");
        TORCH_CHECK(d % 2 == 0, "rotary head dim must be even, not ", d);
        for (const at::Tensor* t : {cos, sin}) {
            TORCH_CHECK(t->is_contiguous() && t->numel() == rows * d, "rotary cos/sin must hold [", rows, ", ", d, "]");
        }
        by_kind(kind, [&](auto tag) {
            using T = decltype(tag);
            T* xp = x->data_ptr<T>();
            const T* cp = cos->data_ptr<T>();
            const T* sp = sin->data_ptr<T>();
            at::parallel_for(0, rows, row_grain(heads * d), [&](int64_t begin, int64_t end) {
                rotary<T>(xp, x->stride(0), cp, sp, begin, end, heads, d);
            });
        });
    });
}

// Copy row t of k and v ([T, kvh, D], contiguous rows) into row slots[t] of
// the pools ([blocks, block size, kvh, D], contiguous). The slots are
// bounds-checked.
int inferd_fused_write_kv(const at::Tensor* k_pool, const at::Tensor* v_pool, const at::Tensor* slots,
                          const at::Tensor* k, const at::Tensor* v) {
    return guarded([&] {
        TORCH_CHECK(slots->device().is_cpu() && slots->scalar_type() == at::kLong && slots->dim() == 1 && slots->is_contiguous(),
                    "slots must be a contiguous CPU int64 [T]");
        const int64_t rows = slots->size(0);
        const auto kind = k_pool->scalar_type();
        const int64_t row_elems = k_pool->dim() == 4 ? k_pool->size(2) * k_pool->size(3) : -1;
        const int64_t pool_rows = k_pool->dim() == 4 ? k_pool->size(0) * k_pool->size(1) : 0;
        for (const at::Tensor* pool : {k_pool, v_pool}) {
            check_cpu_kind(*pool, "KV pool", kind);
            TORCH_CHECK(pool->dim() == 4 && pool->is_contiguous() && pool->sizes() == k_pool->sizes(),
                        "KV pools must be contiguous [blocks, block size, kv heads, head dim]");
        }
        for (const at::Tensor* t : {k, v}) {
            check_cpu_kind(*t, "new K/V", kind);
            TORCH_CHECK(t->dim() == 3 && t->size(0) == rows && t->size(1) * t->size(2) == row_elems &&
                            t->stride(2) == 1 && t->stride(1) == t->size(2),
                        "new K/V must be [", rows, ", kv heads, head dim] with contiguous rows");
        }
        const int64_t* s = slots->data_ptr<int64_t>();
        for (int64_t r = 0; r < rows; ++r) {
            TORCH_CHECK(s[r] >= 0 && s[r] < pool_rows, "KV slot ", s[r], " outside the pool's ", pool_rows, " rows");
        }
        const size_t bytes = static_cast<size_t>(row_elems) * k_pool->element_size();
        auto* kp = static_cast<char*>(k_pool->data_ptr());
        auto* vp = static_cast<char*>(v_pool->data_ptr());
        const auto* kr = static_cast<const char*>(k->data_ptr());
        const auto* vr = static_cast<const char*>(v->data_ptr());
        const int64_t ks = k->stride(0) * k->element_size(), vs = v->stride(0) * v->element_size();
        for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(kp + s[r] * bytes, kr + r * ks, bytes);
            std::memcpy(vp + s[r] * bytes, vr + r * vs, bytes);
        }
    });
}

// gu [T, 2I] contiguous ([gate | up], bf16 or f16) -> silu(gate) * up [T, I].
at::Tensor* inferd_fused_silu_mul(const at::Tensor* gu, int64_t inter) {
    return inferd_shim::new_tensor([&] {
        const auto kind = gu->scalar_type();
        check_cpu_kind(*gu, "SwiGLU input", kind);
        TORCH_CHECK(gu->dim() == 2 && gu->is_contiguous() && inter > 0 && gu->size(1) == 2 * inter,
                    "SwiGLU input must be a contiguous [T, ", 2 * inter, "], not ", gu->sizes());
        const int64_t rows = gu->size(0);
        at::Tensor out = at::empty({rows, inter}, gu->options());
        by_kind(kind, [&](auto tag) {
            using T = decltype(tag);
            const T* gp = gu->data_ptr<T>();
            T* op = out.data_ptr<T>();
            at::parallel_for(0, rows, row_grain(2 * inter), [&](int64_t begin, int64_t end) { silu_mul_rows<T>(gp, op, begin, end, inter); });
        });
        return out;
    });
}

// The message of the last failed call on this thread.
const char* inferd_fused_cpu_last_error() {
    return inferd_shim::last_error.c_str();
}

}  // extern "C"
