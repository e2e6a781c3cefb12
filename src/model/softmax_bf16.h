// The softmax of the AVX512-BF16 attention kernels (decode_attention_bf16.cpp,
// chunk_attention.cpp): a sixteen-lane e^x and one row of scores turned into
// bf16 probabilities and their f32 sum. Each lane's sum runs over positions
// l, l + 16, ... in order, then lane_sum: the order depends only on the
// row's length, never on the batch or the thread.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu_kernels.h"

namespace inferd_cpu {

// a * b + c and c - a * b, fused or rounded twice.
template <bool kFused>
INFERD_BF16_TARGET inline __m512 mul_add(__m512 a, __m512 b, __m512 c) {
    if constexpr (kFused) return _mm512_fmadd_ps(a, b, c);
    else return _mm512_add_ps(_mm512_mul_ps(a, b), c);
}

template <bool kFused>
INFERD_BF16_TARGET inline __m512 sub_mul(__m512 c, __m512 a, __m512 b) {
    if constexpr (kFused) return _mm512_fnmadd_ps(a, b, c);
    else return _mm512_sub_ps(c, _mm512_mul_ps(a, b));
}

// e^x on sixteen lanes for x <= 0 (a softmax's shifted scores), exp_f32's
// method (range reduction by ln 2, a degree-6 polynomial, 2^n as two normal
// powers); lanes below ln(FLT_MIN) give 0. kFused: the reduction and the
// polynomial with fused multiply-adds (the decode item). Unfused: exp_f32's
// own operations in its order, so every lane gets exp_f32's bits (n is the
// same integer either way, and 2^n split as floor(n / 2) + the rest gives
// the same product as C's n / 2 for every result down to a subnormal).
template <bool kFused>
INFERD_BF16_TARGET inline __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    const __mmask16 all = 0xFFFF;  // maskz forms: see softmax
    x = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, x, lo), _mm512_set1_ps(88.72283f));
    const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = sub_mul<kFused>(sub_mul<kFused>(x, n, _mm512_set1_ps(0.693359375f)), n, _mm512_set1_ps(-2.12194440e-4f));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = mul_add<kFused>(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = mul_add<kFused>(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = mul_add<kFused>(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = mul_add<kFused>(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = mul_add<kFused>(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_add_ps(mul_add<kFused>(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i ni = _mm512_maskz_cvtps_epi32(all, n);
    const __m512i n1 = _mm512_maskz_srai_epi32(all, ni, 1), n2 = _mm512_sub_epi32(ni, n1);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_add_epi32(n1, _mm512_set1_epi32(127)), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_add_epi32(n2, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), _mm512_mul_ps(e, s1), s2);
}

// Softmax of one head's scores s[0 .. len): returns the max, writes the sum
// of exp(s - max) to *sum and the rounded probabilities to prob[0 .. len),
// zero-padded to an even count. kFused picks exp16's form.
template <bool kFused>
INFERD_BF16_TARGET inline float softmax(const float* s, int64_t len, uint16_t* prob, float* sum) {
    // maskz forms with all lanes: the plain intrinsics (and _mm512_reduce_*)
    // trip GCC 12's -Wmaybe-uninitialized on their undefined pass-through.
    const __mmask16 all = 0xFFFF;
    __m512 mv = _mm512_set1_ps(s[0]);
    int64_t p = 0;
    for (; p + 16 <= len; p += 16) mv = _mm512_maskz_max_ps(all, mv, _mm512_loadu_ps(s + p));
    const __mmask16 tail = static_cast<__mmask16>((1u << (len - p)) - 1);
    if (len > p) mv = _mm512_mask_max_ps(mv, tail, mv, _mm512_maskz_loadu_ps(tail, s + p));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, mv);
    const float m = *std::max_element(lanes, lanes + 16);
    const __m512 mm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (p = 0; p < len; p += 16) {
        const __mmask16 k = len - p >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (len - p)) - 1);
        const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + p), mm);
        const __m512 e = _mm512_maskz_mov_ps(k, exp16<kFused>(x));
        acc = _mm512_add_ps(acc, e);
        _mm256_mask_storeu_epi16(prob + p, k, (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (len & 1) prob[len] = 0;
    _mm512_store_ps(lanes, acc);
    *sum = lane_sum(lanes);
    return m;
}

}  // namespace inferd_cpu
