// Decode attention for the CPU, read straight from the paged KV pools: one
// query per sequence against its cached positions, found by block table, with
// no gathered copy of K/V. Each (sequence, head) pair is one work item over
// libtorch's OpenMP threads, so a single sequence's heads still use every
// core, and an item's result does not depend on the batch or thread (batched
// greedy decoding relies on that). For bf16 and f32 with head dims 64 and
// 128 the loops are written with explicit 16-lane vectors; other shapes and
// f16 take scalar loops that compute the same sums in the same order.
//
// Called through fused_cpu.rs, which declares this file's extern "C" entry.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_pool.h"

namespace {

using namespace inferd_cpu;

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

template <typename T>
INFERD_INLINE void widen(const T* src, float* dst, int64_t d) {
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<float>(src[i]);
}

// Sixteen f32 lanes as one GCC vector: a zmm register in the AVX-512 clone,
// two ymm or four xmm in the others. Written out because the compiler, not
// allowed to reassociate, spills and shuffles the equivalent scalar arrays.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

INFERD_INLINE f32x16 load16(const float* p) {
    f32x16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

INFERD_INLINE void store16(float* p, f32x16 v) {
    std::memcpy(p, &v, sizeof v);
}

// Sixteen bf16 values widened to f32 (exact: a bf16 is the top half of an f32).
INFERD_INLINE f32x16 widen16(const c10::BFloat16* p) {
    u16x16 raw;
    std::memcpy(&raw, p, sizeof raw);
    const u32x16 bits = __builtin_convertvector(raw, u32x16) << 16;
    f32x16 v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

INFERD_INLINE f32x16 widen16(const float* p) {
    return load16(p);
}

// Whether T has the vector loops (with a head dim that is a multiple of 16).
template <typename T>
constexpr bool kVectorKind = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>;

// lane_sum of a vector's lanes, in the same tree order.
INFERD_INLINE float hsum16(f32x16 v) {
    v += __builtin_shuffle(v, i32x16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v += __builtin_shuffle(v, i32x16{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
    v += __builtin_shuffle(v, i32x16{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
    v += __builtin_shuffle(v, i32x16{1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
    return v[0];
}

// dot(q, k) with k widened from T on the fly: lane l sums the products at
// l, l + 16, ... in order, then lane_sum; the vector and scalar forms give
// the same bits.
template <typename T>
INFERD_INLINE float dot_widen(const float* q, const T* k, int64_t d) {
    if constexpr (kVectorKind<T>) {
        if (d % 16 == 0) {
            f32x16 acc = {};
            for (int64_t i = 0; i < d; i += 16) acc += load16(q + i) * widen16(k + i);
            return hsum16(acc);
        }
    }
    float part[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
        for (int l = 0; l < 16; ++l) part[l] += q[i + l] * static_cast<float>(k[i + l]);
    }
    for (; i < d; ++i) part[i & 15] += q[i] * static_cast<float>(k[i]);
    return lane_sum(part);
}

// acc += w * v with v widened from T.
template <typename T>
INFERD_INLINE void axpy_widen(float w, const T* v, float* acc, int64_t d) {
    if constexpr (kVectorKind<T>) {
        if (d % 16 == 0) {
            for (int64_t i = 0; i < d; i += 16) store16(acc + i, load16(acc + i) + w * widen16(v + i));
            return;
        }
    }
    for (int64_t i = 0; i < d; ++i) acc[i] += w * static_cast<float>(v[i]);
}

// Calls f(position, record) for positions 0 .. ctx of one head in a paged
// pool, block by block (no division per position), prefetching the next
// block's records a block ahead.
template <typename T, typename F>
INFERD_INLINE void walk_pool(const T* pool, const int64_t* table, int64_t block_size, int64_t ctx, int64_t rec,
                             int64_t kv_off, F&& f) {
    const int64_t line = 64 / static_cast<int64_t>(sizeof(T));
    for (int64_t start = 0, b = 0; start < ctx; start += block_size, ++b) {
        const T* base = pool + table[b] * block_size * rec + kv_off;
        const int64_t n = std::min(block_size, ctx - start);
        const T* next = start + block_size < ctx ? pool + table[b + 1] * block_size * rec + kv_off : nullptr;
        for (int64_t o = 0; o < n; ++o) {
            if (next) {
                __builtin_prefetch(next + o * rec);
                __builtin_prefetch(next + o * rec + line);
            }
            f(start + o, base + o * rec);
        }
    }
}

// acc[0 .. 16 * NV) = sum over positions of probs[p] * V[p], the sums kept in
// registers. Per lane the same operations in the same order as axpy_widen.
template <int NV, typename T>
INFERD_INLINE void weigh_values(const float* probs, const T* v_pool, const int64_t* table, int64_t block_size,
                                int64_t ctx, int64_t rec, int64_t kv_off, float* acc) {
    f32x16 a[NV] = {};
    walk_pool(v_pool, table, block_size, ctx, rec, kv_off, [&](int64_t p, const T* v) {
        for (int j = 0; j < NV; ++j) a[j] += probs[p] * widen16(v + 16 * j);
    });
    for (int j = 0; j < NV; ++j) store16(acc + 16 * j, a[j]);
}

// One decode query head against its kv head's first `ctx` cached positions.
// q and out: [D]; `kv_off` is the kv head's offset in a pool record of `rec`
// values. Mirrors libtorch's CPU flash attention for one query: f32 scores,
// softmax with an f32 sum, probabilities rounded to T before they weight V,
// f32 accumulation, one division at the end. Each head is its own work item,
// so one sequence's heads spread over the threads, and a head's result does
// not depend on which thread or batch computes it.
template <typename T>
INFERD_CLONES void attend_head(const T* q, int64_t d, const T* k_pool, const T* v_pool, int64_t kv_off, int64_t rec,
                               const int64_t* table, int64_t block_size, int64_t ctx, float scale, T* out,
                               std::vector<float>& buf) {
    buf.resize(static_cast<size_t>(d + ctx + d));
    float* qf = buf.data();      // [d]
    float* sc = qf + d;          // [ctx]: scores, then probabilities
    float* acc = sc + ctx;       // [d]
    widen(q, qf, d);
    walk_pool(k_pool, table, block_size, ctx, rec, kv_off,
              [&](int64_t p, const T* k) { sc[p] = dot_widen(qf, k, d) * scale; });
    // Max and sum in sixteen lanes (exact for the max; see dot() for the sum).
    float lane_max[16];
    std::fill(lane_max, lane_max + 16, sc[0]);
    int64_t p = 0;
    for (; p + 16 <= ctx; p += 16) {
        for (int l = 0; l < 16; ++l) lane_max[l] = std::max(lane_max[l], sc[p + l]);
    }
    for (; p < ctx; ++p) lane_max[p & 15] = std::max(lane_max[p & 15], sc[p]);
    const float m = *std::max_element(lane_max, lane_max + 16);
    float part[16] = {0};
    p = 0;
    for (; p + 16 <= ctx; p += 16) {
        for (int l = 0; l < 16; ++l) {
            const float e = exp_f32(sc[p + l] - m);
            part[l] += e;
            sc[p + l] = rounded<T>(e);
        }
    }
    for (; p < ctx; ++p) {
        const float e = exp_f32(sc[p] - m);
        part[p & 15] += e;
        sc[p] = rounded<T>(e);
    }
    const float sum = lane_sum(part);
    bool done = false;
    if constexpr (kVectorKind<T>) {
        done = true;
        switch (d) {
            case 64: weigh_values<4>(sc, v_pool, table, block_size, ctx, rec, kv_off, acc); break;
            case 128: weigh_values<8>(sc, v_pool, table, block_size, ctx, rec, kv_off, acc); break;
            default: done = false;
        }
    }
    if (!done) {
        std::fill(acc, acc + d, 0.0f);
        walk_pool(v_pool, table, block_size, ctx, rec, kv_off,
                  [&](int64_t p, const T* v) { axpy_widen(sc[p], v, acc, d); });
    }
    for (int64_t i = 0; i < d; ++i) out[i] = to_t<T>(acc[i] / sum);
}

}  // namespace

extern "C" {

// Decode attention over the paged pools. q: [n, heads, D] with contiguous
// rows (a view of the fused qkv output); pools [blocks, block size, kvh, D]
// contiguous; tables: int64 [n * nb], sequence i's blocks at i * nb;
// ctx_lens: int64 [n], each in 1 ..= nb * block size. Returns [n, heads, D].
at::Tensor* inferd_fused_decode_attention(const at::Tensor* q, const at::Tensor* k_pool, const at::Tensor* v_pool,
                                          const at::Tensor* tables, const at::Tensor* ctx_lens, double scale) {
    return inferd_shim::new_tensor([&] {
        const auto kind = q->scalar_type();
        check_cpu_kind(*q, "decode query", kind);
        check_cpu_kind(*k_pool, "K pool", kind);
        check_cpu_kind(*v_pool, "V pool", kind);
        TORCH_CHECK(q->dim() == 3 && q->stride(2) == 1 && q->stride(1) == q->size(2), "decode query must be [n, heads, D] with contiguous rows");
        TORCH_CHECK(k_pool->dim() == 4 && k_pool->is_contiguous() && v_pool->sizes() == k_pool->sizes() && v_pool->is_contiguous(),
                    "KV pools must be contiguous [blocks, block size, kv heads, head dim]");
        const int64_t n = q->size(0), heads = q->size(1), d = q->size(2);
        const int64_t blocks = k_pool->size(0), block_size = k_pool->size(1), kvh = k_pool->size(2);
        TORCH_CHECK(k_pool->size(3) == d, "KV pool head dim ", k_pool->size(3), " != query head dim ", d);
        TORCH_CHECK(kvh > 0 && heads % kvh == 0, heads, " query heads do not split over ", kvh, " kv heads");
        for (const at::Tensor* t : {tables, ctx_lens}) {
            TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous(),
                        "block tables and context lengths must be contiguous CPU int64");
        }
        TORCH_CHECK(ctx_lens->size(0) == n && n > 0 && tables->size(0) % n == 0, "block tables and context lengths must cover ", n, " sequences");
        const int64_t nb = tables->size(0) / n;
        const int64_t* tab = tables->data_ptr<int64_t>();
        const int64_t* lens = ctx_lens->data_ptr<int64_t>();
        for (int64_t i = 0; i < n; ++i) {
            TORCH_CHECK(lens[i] >= 1 && lens[i] <= nb * block_size, "context length ", lens[i], " outside 1..=", nb * block_size);
            for (int64_t b = 0; b < nb; ++b) {
                TORCH_CHECK(tab[i * nb + b] >= 0 && tab[i * nb + b] < blocks, "block ", tab[i * nb + b], " outside the pool's ", blocks);
            }
        }
        at::Tensor out = at::empty({n, heads, d}, q->options().memory_format(at::MemoryFormat::Contiguous));
        const float sc = static_cast<float>(scale);
        by_kind(kind, [&](auto tag) {
            using T = decltype(tag);
            const T* qp = q->data_ptr<T>();
            const T* kp = k_pool->data_ptr<T>();
            const T* vp = v_pool->data_ptr<T>();
            T* op = out.data_ptr<T>();
            const int64_t qs = q->stride(0);
            const int64_t group = heads / kvh, rec = kvh * d;
            // One item per (sequence, head); each writes its own row of out.
            auto one = [&](int64_t item, std::vector<float>& buf) {
                const int64_t i = item / heads, h = item % heads;
                attend_head<T>(qp + i * qs + h * d, d, kp, vp, (h / group) * d, rec, tab + i * nb, block_size, lens[i],
                               sc, op + item * d, buf);
            };
            if (inferd_pool::active()) {
                // Threads take items one at a time (contexts differ in length).
                std::atomic<int64_t> next{0};
                auto body = [&](int, int) {
                    std::vector<float> buf;
                    for (int64_t item; (item = next.fetch_add(1, std::memory_order_relaxed)) < n * heads;) one(item, buf);
                };
                inferd_pool::run(body);
            } else {
                at::parallel_for(0, n * heads, 1, [&](int64_t begin, int64_t end) {
                    std::vector<float> buf;
                    for (int64_t item = begin; item < end; ++item) one(item, buf);
                });
            }
        });
        return out;
    });
}

}  // extern "C"
