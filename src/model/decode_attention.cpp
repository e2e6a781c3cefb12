// Decode attention for the CPU, read straight from the paged KV pools: one
// query per sequence against its cached positions, found by block table, with
// no gathered copy of K/V. A work item is one kv head's query heads (GQA's
// group) against one partition of 256 positions, so each key and value is
// read and widened once for the whole group, and a long context spreads over
// every thread; a context of several partitions is then combined per head
// (flash decoding). With items to spare (a batch), one item takes every kv
// head of its partition in turn, which reads each position's record of all
// kv heads from one place (see attend_all). Items run on the decode pool or
// libtorch's threads, and neither the batch nor the thread changes a result
// (batched greedy decoding relies on that). bf16 on CPUs with AVX512-BF16 at
// head dims 64 and 128 takes decode_attention_bf16.cpp's item (vdpbf16ps
// products). Otherwise, for bf16 and f32 with head dims 64 and 128 the loops
// are written with explicit 16-lane vectors, sixteen positions' dot products
// reduced at once; other shapes and f16 take scalar loops that compute the
// same sums in the same order.
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
#include "decode_attention_bf16.h"
#include "row_kernels.h"

namespace {

using namespace inferd_cpu;

template <typename T>
INFERD_INLINE void widen(const T* src, float* dst, int64_t d) {
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<float>(src[i]);
}

// f32x16 and i32x16 (cpu_kernels.h): sixteen lanes as one GCC vector.
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

// Calls f(position, record) for positions p0 .. p1 of one head in a paged
// pool, block by block (no division per position), prefetching the next
// block's records a block ahead.
template <typename T, typename F>
INFERD_INLINE void walk_pool(const T* pool, const int64_t* table, int64_t block_size, int64_t p0, int64_t p1, int64_t rec,
                             int64_t kv_off, F&& f) {
    const int64_t line = 64 / static_cast<int64_t>(sizeof(T));
    int64_t b = p0 / block_size;
    for (int64_t start = p0; start < p1; ++b) {
        const int64_t first = start - b * block_size;  // offset of `start` in block b
        const int64_t n = std::min(block_size - first, p1 - start);
        const T* base = pool + table[b] * block_size * rec + kv_off;
        const T* next = start + n < p1 ? pool + table[b + 1] * block_size * rec + kv_off : nullptr;
        for (int64_t o = 0; o < n; ++o) {
            if (next) {
                __builtin_prefetch(next + o * rec);
                __builtin_prefetch(next + o * rec + line);
            }
            f(start + o, base + (first + o) * rec);
        }
        start += n;
    }
}

// Positions per work item. Longer contexts are split (flash decoding), so
// one long sequence still spreads over every thread; the split depends only
// on the position, never on the batch or the thread count.
constexpr int64_t kPartition = 256;
// Most query heads per item for the vector score loops: the size of their
// stash of per-position dot products.
constexpr int64_t kMaxGroup = 16;

// What an item leaves for each head when the context spans several
// partitions (a "partial", d + 2 floats): the partition's score max, its sum
// of exp(score - max), and the f32 probability-weighted sum of V, not yet
// divided.
INFERD_INLINE int64_t partial_floats(int64_t d) {
    return d + 2;
}

// Scores of `group` query heads of one kv head (qf: [group][d], widened)
// against positions p0 .. p1: sc[h * len + p - p0] = q_h . k_p * scale. Each
// key is widened once for all the heads; sixteen positions' dot products are
// reduced together (hsum16x16), with the same bits as dot_widen.
template <int NV, typename T>
INFERD_INLINE void group_scores(const float* qf, int64_t group, const T* k_pool, const int64_t* table, int64_t block_size,
                                int64_t p0, int64_t p1, int64_t rec, int64_t kv_off, float scale, float* sc, f32x16* stash) {
    const int64_t len = p1 - p0;
    // stash: [group][16] dot-product vectors of the current sixteen positions.
    walk_pool(k_pool, table, block_size, p0, p1, rec, kv_off, [&](int64_t p, const T* k) {
        f32x16 kw[NV];
        for (int j = 0; j < NV; ++j) kw[j] = widen16(k + 16 * j);
        const int64_t slot = (p - p0) & 15;
        for (int64_t h = 0; h < group; ++h) {
            const float* q = qf + h * NV * 16;
            f32x16 acc = {};
            for (int j = 0; j < NV; ++j) acc += load16(q + 16 * j) * kw[j];
            stash[h * 16 + slot] = acc;
        }
        if (slot == 15) {
            const f32x16 sv = {scale, scale, scale, scale, scale, scale, scale, scale,
                               scale, scale, scale, scale, scale, scale, scale, scale};
            for (int64_t h = 0; h < group; ++h) store16(sc + h * len + (p - 15 - p0), hsum16x16(stash + h * 16) * sv);
        }
    });
    const int64_t tail = len & 15;  // positions after the last full sixteen
    for (int64_t h = 0; h < group; ++h)
        for (int64_t t = 0; t < tail; ++t) sc[h * len + len - tail + t] = hsum16(stash[h * 16 + t]) * scale;
}

// acc[h][0 .. 16 * NV) = sum over positions of probs[h][p] * V[p] for
// `heads` heads (heads * NV <= 16 accumulators in registers), each value
// widened once. Per lane the same operations in the same order as axpy_widen.
template <int NV, int H, typename T>
INFERD_INLINE void weigh_values(const float* probs, int64_t len, int64_t heads, const T* v_pool, const int64_t* table,
                                int64_t block_size, int64_t p0, int64_t p1, int64_t rec, int64_t kv_off, float* acc,
                                int64_t acc_stride) {
    f32x16 a[H][NV] = {};
    walk_pool(v_pool, table, block_size, p0, p1, rec, kv_off, [&](int64_t p, const T* v) {
        f32x16 vw[NV];
        for (int j = 0; j < NV; ++j) vw[j] = widen16(v + 16 * j);
        for (int h = 0; h < H; ++h) {
            if (h >= heads) break;
            const float w = probs[h * len + p - p0];
            for (int j = 0; j < NV; ++j) a[h][j] += w * vw[j];
        }
    });
    for (int h = 0; h < H && h < heads; ++h)
        for (int j = 0; j < NV; ++j) store16(acc + h * acc_stride + 16 * j, a[h][j]);
}

// One work item: the `group` query heads of one kv head (q: the first of
// them, [group][d] contiguous) against positions p0 .. p1. Mirrors libtorch's
// CPU flash attention for one query: f32 scores, softmax with an f32 sum,
// probabilities rounded to T before they weight V, f32 accumulation, one
// division at the end. When p0 .. p1 is the whole context the result goes
// straight to out ([group][d]); otherwise head h's partial goes to
// part + h * part_stride, for combine().
template <typename T>
INFERD_CLONES void attend_part(const T* q, int64_t d, int64_t group, const T* k_pool, const T* v_pool, int64_t kv_off,
                               int64_t rec, const int64_t* table, int64_t block_size, int64_t p0, int64_t p1, float scale,
                               T* out, float* part, int64_t part_stride, std::vector<float>& buf) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
        if (inferd_decode_bf16::applies(d, group)) {
            static_assert(sizeof(T) == sizeof(uint16_t), "bf16 is 16 bits");
            inferd_decode_bf16::attend(reinterpret_cast<const uint16_t*>(q), d, group, reinterpret_cast<const uint16_t*>(k_pool),
                                       reinterpret_cast<const uint16_t*>(v_pool), kv_off, rec, table, block_size, p0, p1, scale,
                                       reinterpret_cast<uint16_t*>(out), part, part_stride, buf);
            return;
        }
    }
    const int64_t len = p1 - p0;
    buf.resize(static_cast<size_t>(group * (d + len + d + 2) + 16 * 16 * kMaxGroup + 16));
    // 64-byte aligned scratch: the stash holds whole vectors.
    float* base = buf.data();
    base += (16 - (reinterpret_cast<uintptr_t>(base) / sizeof(float)) % 16) % 16;
    f32x16* stash = reinterpret_cast<f32x16*>(base);  // [kMaxGroup][16]
    float* qf = base + 16 * 16 * kMaxGroup;           // [group][d]
    float* sc = qf + group * d;                       // [group][len]: scores, then probabilities
    float* acc = sc + group * len;                    // [group][d]
    float* maxes = acc + group * d;                   // [group]
    float* sums = maxes + group;                      // [group]
    for (int64_t h = 0; h < group; ++h) widen(q + h * d, qf + h * d, d);
    // 4 or 8: the vector loops for head dim 64 or 128; 0: the scalar ones.
    int nv = 0;
    if constexpr (kVectorKind<T>) {
        if ((d == 64 || d == 128) && group <= kMaxGroup) nv = static_cast<int>(d / 16);
        if (nv == 4) group_scores<4>(qf, group, k_pool, table, block_size, p0, p1, rec, kv_off, scale, sc, stash);
        if (nv == 8) group_scores<8>(qf, group, k_pool, table, block_size, p0, p1, rec, kv_off, scale, sc, stash);
    }
    if (nv == 0) {
        for (int64_t h = 0; h < group; ++h) {
            float* s = sc + h * len;
            const float* qh = qf + h * d;
            walk_pool(k_pool, table, block_size, p0, p1, rec, kv_off,
                      [&](int64_t p, const T* k) { s[p - p0] = dot_widen(qh, k, d) * scale; });
        }
    }
    for (int64_t h = 0; h < group; ++h) {
        float* s = sc + h * len;
        // Max and sum in sixteen lanes (exact for the max; see dot() for the sum).
        float lane_max[16];
        std::fill(lane_max, lane_max + 16, s[0]);
        int64_t p = 0;
        for (; p + 16 <= len; p += 16) {
            for (int l = 0; l < 16; ++l) lane_max[l] = std::max(lane_max[l], s[p + l]);
        }
        for (; p < len; ++p) lane_max[p & 15] = std::max(lane_max[p & 15], s[p]);
        const float m = *std::max_element(lane_max, lane_max + 16);
        float lanes[16] = {0};
        p = 0;
        for (; p + 16 <= len; p += 16) {
            for (int l = 0; l < 16; ++l) {
                const float e = exp_f32(s[p + l] - m);
                lanes[l] += e;
                s[p + l] = rounded<T>(e);
            }
        }
        for (; p < len; ++p) {
            const float e = exp_f32(s[p] - m);
            lanes[p & 15] += e;
            s[p] = rounded<T>(e);
        }
        maxes[h] = m;
        sums[h] = lane_sum(lanes);
    }
    if constexpr (kVectorKind<T>) {
        // Heads per pass over V: 16 accumulators in registers.
        const int64_t per_pass = nv == 4 ? 4 : 2;
        for (int64_t h0 = 0; nv != 0 && h0 < group; h0 += per_pass) {
            const int64_t hn = std::min(per_pass, group - h0);
            if (nv == 4)
                weigh_values<4, 4>(sc + h0 * len, len, hn, v_pool, table, block_size, p0, p1, rec, kv_off, acc + h0 * d, d);
            else
                weigh_values<8, 2>(sc + h0 * len, len, hn, v_pool, table, block_size, p0, p1, rec, kv_off, acc + h0 * d, d);
        }
    }
    if (nv == 0) {
        for (int64_t h = 0; h < group; ++h) {
            float* a = acc + h * d;
            const float* pr = sc + h * len;
            std::fill(a, a + d, 0.0f);
            walk_pool(v_pool, table, block_size, p0, p1, rec, kv_off,
                      [&](int64_t p, const T* v) { axpy_widen(pr[p - p0], v, a, d); });
        }
    }
    for (int64_t h = 0; h < group; ++h) {
        const float* a = acc + h * d;
        if (out != nullptr) {
            for (int64_t i = 0; i < d; ++i) out[h * d + i] = to_t<T>(a[i] / sums[h]);
        } else {
            float* pt = part + h * part_stride;
            pt[0] = maxes[h];
            pt[1] = sums[h];
            std::copy(a, a + d, pt + 2);
        }
    }
}

// One head's output from its partitions' partials, in partition order: each
// rescaled to the largest max, then one division.
template <typename T>
INFERD_CLONES void combine(const float* part, int64_t parts, int64_t stride, int64_t d, T* out, std::vector<float>& buf) {
    buf.resize(static_cast<size_t>(d));
    float* acc = buf.data();
    float m = part[0];
    for (int64_t j = 1; j < parts; ++j) m = std::max(m, part[j * stride]);
    float sum = 0.0f;
    std::fill(acc, acc + d, 0.0f);
    for (int64_t j = 0; j < parts; ++j) {
        const float* pt = part + j * stride;
        const float w = exp_f32(pt[0] - m);
        sum += pt[1] * w;
        for (int64_t i = 0; i < d; ++i) acc[i] += pt[2 + i] * w;
    }
    for (int64_t i = 0; i < d; ++i) out[i] = to_t<T>(acc[i] / sum);
}

// Partials of the current call; kept per calling thread so that a decode
// step does not fault fresh pages in on every layer.
thread_local std::vector<float> partials;

// Every sequence's attention (see inferd_fused_decode_attention, which
// checks the arguments first): q row i at qp + i * qs, out [n, heads, d].
template <typename T>
void attend_all(const T* qp, int64_t qs, int64_t n, int64_t heads, int64_t d, const T* kp, const T* vp, int64_t block_size, int64_t kvh,
                const int64_t* tab, int64_t nb, const int64_t* lens, float sc, T* op) {
    const int64_t group = heads / kvh, rec = kvh * d, stride = partial_floats(d);
    // Items: (sequence, partition, kv head), sequence by sequence. A
    // sequence of one partition writes `out`; a longer one its partials,
    // from part_at[i]: head h's for partition j at (h * parts + j) * stride.
    auto parts_of = [&](int64_t i) { return (lens[i] + kPartition - 1) / kPartition; };
    std::vector<int64_t> first_item(static_cast<size_t>(n + 1), 0), part_at(static_cast<size_t>(n), -1);
    int64_t floats = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t parts = parts_of(i);
        first_item[i + 1] = first_item[i] + parts * kvh;
        if (parts > 1) {
            part_at[i] = floats;
            floats += heads * parts * stride;
        }
    }
    // Too few items to keep every thread busy (one short sequence): one
    // item per query head instead, except for decode_attention_bf16's
    // item, which reads each key and value row once for the whole group:
    // split per head it re-reads every row per head, and measured 1.6-1.9x
    // slower at one sequence (SmolLM2: 3 kv heads of 3 query heads, contexts of
    // 64-512, two threads) despite the evener split. Only the work split
    // changes, not a bit.
    const int threads = inferd_pool::active() ? inferd_pool::threads() : at::get_num_threads();
    const bool whole_groups = std::is_same_v<T, c10::BFloat16> && inferd_decode_bf16::applies(d, group);
    const int64_t per_item = first_item[n] < 4 * threads && !whole_groups ? 1 : group, splits = group / per_item;
    // Enough items (a batch, or long contexts): one item takes every kv head
    // of its partition, one after the other. A position's rows of all kv
    // heads are one contiguous record, and the hardware prefetcher, which
    // runs ahead within a page, most likely fetches the other heads' lines
    // while the first head reads its own: they are then read from L2 instead
    // of memory. Items of one kv head each read two lines of every six
    // (SmolLM2 in bf16), and the record's other lines were fetched again by
    // whichever thread took their item. 16 sequences at 704 positions
    // (benches/kernels.rs, decode_attention_*_ctx704_30_layers, bf16, with
    // the bf16 kernel's shift for 16-position blocks): 12.5-12.8 -> 15.4-16.0
    // GiB/s. The work split only; no sum changes.
    const int64_t kv_per_item = splits == 1 && first_item[n] / kvh >= 4 * threads ? kvh : 1;
    partials.resize(static_cast<size_t>(floats));
    float* pp = partials.data();
    for_items(first_item[n] / kv_per_item * splits, [&](int64_t item, std::vector<float>& buf) {
        const int64_t split_of = item % splits;
        item = item / splits * kv_per_item;
        const int64_t i = std::upper_bound(first_item.begin(), first_item.end(), item) - first_item.begin() - 1;
        const int64_t local = item - first_item[i], j = local / kvh, g0 = local % kvh;
        const int64_t parts = parts_of(i);
        const int64_t p0 = j * kPartition, p1 = std::min(lens[i], p0 + kPartition);
        for (int64_t g = g0; g < g0 + kv_per_item; ++g) {
            const int64_t h0 = g * group + split_of * per_item;
            T* o = parts == 1 ? op + (i * heads + h0) * d : nullptr;
            float* pt = parts == 1 ? nullptr : pp + part_at[i] + (h0 * parts + j) * stride;
            attend_part<T>(qp + i * qs + h0 * d, d, per_item, kp, vp, g * d, rec, tab + i * nb, block_size, p0, p1, sc, o, pt,
                           parts * stride, buf);
        }
    });
    // Heads of sequences that were split: one item per (sequence, head).
    std::vector<int64_t> split;
    for (int64_t i = 0; i < n; ++i)
        if (part_at[i] >= 0) split.push_back(i);
    for_items(static_cast<int64_t>(split.size()) * heads, [&](int64_t item, std::vector<float>& buf) {
        const int64_t i = split[item / heads], h = item % heads;
        const int64_t parts = parts_of(i);
        combine<T>(pp + part_at[i] + h * parts * stride, parts, stride, d, op + (i * heads + h) * d, buf);
    });
}

}  // namespace

void inferd_rows::decode_attention(const bf16* q, int64_t q_stride, int64_t n, int64_t heads, int64_t d, const bf16* k_pool,
                                   const bf16* v_pool, int64_t block_size, int64_t kvh, const int64_t* tables, int64_t nb,
                                   const int64_t* ctx_lens, float scale, bf16* out) {
    attend_all<bf16>(q, q_stride, n, heads, d, k_pool, v_pool, block_size, kvh, tables, nb, ctx_lens, scale, out);
}

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
        by_kind(kind, [&](auto tag) {
            using T = decltype(tag);
            attend_all<T>(q->data_ptr<T>(), q->stride(0), n, heads, d, k_pool->data_ptr<T>(), v_pool->data_ptr<T>(), block_size, kvh, tab, nb,
                          lens, static_cast<float>(scale), out.data_ptr<T>());
        });
        return out;
    });
}

}  // extern "C"
