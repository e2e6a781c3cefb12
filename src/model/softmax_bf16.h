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

// exp of sixteen lanes, exp_f32's method (range reduction by ln 2, a degree-6
// polynomial, 2^n as two normal powers); lanes below ln(FLT_MIN) give 0.
INFERD_BF16_TARGET inline __m512 exp16(__m512 x) {
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
    const __mmask16 all = 0xFFFF;  // maskz forms: see softmax
    x = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.72283f));
    const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i ni = _mm512_maskz_cvtps_epi32(all, n);
    const __m512i n1 = _mm512_maskz_srai_epi32(all, ni, 1), n2 = _mm512_sub_epi32(ni, n1);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_add_epi32(n1, _mm512_set1_epi32(127)), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_add_epi32(n2, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), _mm512_mul_ps(e, s1), s2);
}

// exp_f32 (cpu_kernels.h) on sixteen lanes: the same operations in the same
// order, without exp16's fused multiply-adds, so every lane gets exp_f32's
// bits.
INFERD_BF16_TARGET inline __m512 exp16_unfused(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.72283f);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    const __mmask16 all = 0xFFFF;  // maskz forms: see softmax
    x = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, x, lo), hi);
    const __m512 shifter = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), shifter), shifter);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                   _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0f));
    // n / 2 rounded toward zero, as C's integer division.
    const __m512i ni = _mm512_maskz_cvttps_epi32(all, n);
    const __m512i n1 = _mm512_maskz_srai_epi32(all, _mm512_add_epi32(ni, _mm512_maskz_srli_epi32(all, ni, 31)), 1);
    const __m512i n2 = _mm512_sub_epi32(ni, n1);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_add_epi32(n1, _mm512_set1_epi32(127)), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_add_epi32(n2, _mm512_set1_epi32(127)), 23));
    const __m512 y = _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), _mm512_mul_ps(e, s1), s2);
    return _mm512_mask_mov_ps(y, over, _mm512_set1_ps(__builtin_inff()));
}

// Softmax of one head's scores s[0 .. len): returns the max, writes the sum
// of exp(s - max) to *sum and the rounded probabilities to prob[0 .. len),
// zero-padded to an even count. kUnfused takes exp16_unfused (exp_f32's
// bits), else exp16.
template <bool kUnfused = false>
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
        const __m512 e = _mm512_maskz_mov_ps(k, kUnfused ? exp16_unfused(x) : exp16(x));
        acc = _mm512_add_ps(acc, e);
        _mm256_mask_storeu_epi16(prob + p, k, (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (len & 1) prob[len] = 0;
    _mm512_store_ps(lanes, acc);
    *sum = lane_sum(lanes);
    return m;
}

}  // namespace inferd_cpu
