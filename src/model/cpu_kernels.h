// Helpers shared by the fused CPU kernels (fused_cpu.cpp, decode_attention.cpp,
// chunk_attention.cpp, gemv_bf16.cpp): the exception guard's status code,
// libtorch's rounding, input checks, the per-ISA clones, the AVX512-BF16
// check, the fixed-order partial sums that let the loops vectorize without
// reassociating, a vectorizable e^x, and the loop that spreads work items
// over the decode pool or libtorch's threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu_pool.h"
#include "shim_error.h"

namespace inferd_cpu {

// 0 when `f` returned, 1 when it threw (see shim_error.h).
template <typename F>
int guarded(F&& f) {
    return inferd_shim::run(std::forward<F>(f)) ? 0 : 1;
}

// T(v), rounded as libtorch rounds a result it stores. For bf16 this is
// c10's round-to-nearest-even without its branch on NaN (a select instead):
// the branch keeps the loops around it from vectorizing.
template <typename T>
inline T to_t(float v) {
    return static_cast<T>(v);
}

template <>
inline c10::BFloat16 to_t<c10::BFloat16>(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    const auto rounded = static_cast<uint16_t>((u + ((u >> 16) & 1u) + 0x7FFFu) >> 16);
    return c10::BFloat16(v != v ? static_cast<uint16_t>(0x7FC0) : rounded, c10::BFloat16::from_bits());
}

// v rounded to T and back.
template <typename T>
inline float rounded(float v) {
    return static_cast<float>(to_t<T>(v));
}

inline void check_cpu_kind(const at::Tensor& t, const char* what, at::ScalarType kind) {
    TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU");
    TORCH_CHECK(t.scalar_type() == kind, what, " is ", t.scalar_type(), ", expected ", kind);
}

// The loops are compiled for AVX-512, AVX2 and plain x86-64, chosen at load
// time (no fast-math: the compiler may not reassociate, so sums that should
// vectorize keep explicit partial sums).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define INFERD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define INFERD_CLONES
#endif

#define INFERD_INLINE inline __attribute__((always_inline))

// The target of the functions written with AVX512-BF16's vdpbf16ps (the
// bf16 row product and the chunk attention kernel), called only where
// cpu_has_avx512_bf16().
#define INFERD_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Whether this CPU has AVX512-BF16.
inline bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

// Sums sixteen partial sums as a fixed tree (halves, then quarters, ...):
// four dependent adds where a left-to-right sum is a chain of sixteen.
INFERD_INLINE float lane_sum(const float* p) {
    const float a0 = p[0] + p[8], a1 = p[1] + p[9], a2 = p[2] + p[10], a3 = p[3] + p[11];
    const float a4 = p[4] + p[12], a5 = p[5] + p[13], a6 = p[6] + p[14], a7 = p[7] + p[15];
    const float b0 = a0 + a4, b1 = a1 + a5, b2 = a2 + a6, b3 = a3 + a7;
    return (b0 + b2) + (b1 + b3);
}

// Inlined into the cloned loops below, so they get each clone's vector ISA.
// Sixteen partial sums: vector lanes without reassociation.
INFERD_INLINE float dot(const float* q, const float* k, int64_t d) {
    float part[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
        for (int l = 0; l < 16; ++l) part[l] += q[i + l] * k[i + l];
    }
    for (; i < d; ++i) part[i & 15] += q[i] * k[i];
    return lane_sum(part);
}

// e^x in f32, written so the loops around it vectorize: Cephes' expf (range
// reduction by ln 2 in two parts, a degree-6 polynomial, 2^n put into the
// exponent bits), within about 1 ulp of std::exp. Below ln(FLT_MIN) it
// returns 0 (the true value is subnormal) and above ln(FLT_MAX) infinity.
INFERD_INLINE float exp_f32(float x) {
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const bool under = x < -87.33654f, over = x > 88.72283f;
    x = std::min(std::max(x, -87.33654f), 88.72283f);
    const float n = (x * 1.44269504088896341f + shifter) - shifter;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * (r * r) + r + 1.0f;
    // n is in -126 ..= 128: 2^n as two normal powers of two (the products are
    // exact unless the result is subnormal).
    const int32_t n1 = static_cast<int32_t>(n) / 2, n2 = static_cast<int32_t>(n) - n1;
    const int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    float s1, s2;
    std::memcpy(&s1, &b1, sizeof s1);
    std::memcpy(&s2, &b2, sizeof s2);
    const float y = e * s1 * s2;
    return over ? __builtin_inff() : (under ? 0.0f : y);
}

// Runs items 0 .. count on the decode pool or libtorch's threads, each thread
// taking the next item when it is done (items differ in cost: contexts
// differ in length).
template <typename F>
void for_items(int64_t count, F&& one) {
    if (count == 0) return;
    if (inferd_pool::active()) {
        std::atomic<int64_t> next{0};
        auto body = [&](int, int) {
            std::vector<float> buf;
            for (int64_t item; (item = next.fetch_add(1, std::memory_order_relaxed)) < count;) one(item, buf);
        };
        inferd_pool::run(body);
    } else {
        // One claimant per thread: a static split of a causal chunk's tiles
        // (the later ones see more keys) left a thread idle for up to half
        // the call.
        std::atomic<int64_t> next{0};
        at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
            std::vector<float> buf;
            for (int64_t item; (item = next.fetch_add(1, std::memory_order_relaxed)) < count;) one(item, buf);
        });
    }
}

// Sixteen f32 lanes as one GCC vector: a zmm register in AVX-512 code,
// two ymm or four xmm in the others. Written out because the compiler, not
// allowed to reassociate, spills and shuffles the equivalent scalar arrays.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

// The lane sums of sixteen vectors at once: lane j of the result sums
// v[j]'s lanes in decode_attention.cpp's hsum16 tree,
// pairing the same lanes in the same tree (a + b and b + a are the same
// bits), in 15 two-source shuffle pairs and adds instead of 64 shuffles and
// adds.
INFERD_INLINE f32x16 hsum16x16(const f32x16* v) {
    const i32x16 lo1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const i32x16 hi1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const i32x16 lo2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const i32x16 hi2 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const i32x16 lo3 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const i32x16 hi3 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    const i32x16 lo4 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const i32x16 hi4 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    // Level 1: two vectors' lanes i + (i + 8) side by side; 2: four vectors'
    // (i) + (i + 4); 3: eight vectors' (i) + (i + 2); 4: sixteen (0) + (1).
    f32x16 a[8], b[4], c[2];
    for (int j = 0; j < 8; ++j)
        a[j] = __builtin_shuffle(v[2 * j], v[2 * j + 1], lo1) + __builtin_shuffle(v[2 * j], v[2 * j + 1], hi1);
    for (int j = 0; j < 4; ++j)
        b[j] = __builtin_shuffle(a[2 * j], a[2 * j + 1], lo2) + __builtin_shuffle(a[2 * j], a[2 * j + 1], hi2);
    for (int j = 0; j < 2; ++j)
        c[j] = __builtin_shuffle(b[2 * j], b[2 * j + 1], lo3) + __builtin_shuffle(b[2 * j], b[2 * j + 1], hi3);
    return __builtin_shuffle(c[0], c[1], lo4) + __builtin_shuffle(c[0], c[1], hi4);
}

template <typename F>
inline void by_kind(at::ScalarType kind, F&& f) {
    switch (kind) {
        case at::kBFloat16: f(c10::BFloat16{}); break;
        case at::kHalf: f(c10::Half{}); break;
        case at::kFloat: f(float{}); break;
        default: TORCH_CHECK(false, "fused CPU kernels take bf16, f16 or f32, not ", kind);
    }
}

}  // namespace inferd_cpu
