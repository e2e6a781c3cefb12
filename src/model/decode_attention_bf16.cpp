// The bf16 work item of decode attention (decode_attention.cpp) on CPUs with
// AVX512-BF16: one kv head's query heads against positions p0 .. p1 of one
// sequence, read from the paged pools, with `vdpbf16ps` doing the products
// (a pair of bf16 products per f32 lane, each exact, added in f32).
//
// Scores: each key row is loaded once for all the group's heads; a head's
// dot product with sixteen positions is sixteen vectors of pair sums, reduced
// together (hsum16x16, cpu_kernels.h). Softmax in f32 with a vector exp;
// the probabilities are rounded to bf16 (as libtorch's flash attention
// rounds them) and weight V two positions at a time: the two value rows are
// interleaved into (position p, position p + 1) pairs per dimension, and one
// `vdpbf16ps` per sixteen dimensions adds both products. The accumulators hold
// the dimensions in the interleave's order and are put back in order once at
// the end. Against the generic vector loops (widen every bf16 to f32, then
// multiply and add) this is about a third of the instructions.
//
// The order of every sum depends only on p0, p1 and the head dim, never on
// the batch or the thread, so batched greedy decoding stays batch-invariant.

#include "decode_attention_bf16.h"

#include <immintrin.h>

#include <cstring>

#include "cpu_kernels.h"
#include "softmax_bf16.h"

namespace {

using namespace inferd_cpu;

constexpr int64_t kMaxGroup = 16;

// Position p's row of kv head `kv_off` in a paged pool. BS is the block size
// when known at compile time (0: `block_size`), which turns the division per
// row into a shift.
template <int64_t BS>
inline const uint16_t* row_at(const uint16_t* pool, const int64_t* table, int64_t block_size, int64_t rec, int64_t kv_off, int64_t p) {
    const int64_t bs = BS != 0 ? BS : block_size;
    return pool + (table[p / bs] * bs + p % bs) * rec + kv_off;
}

// Positions ahead whose key rows the score loop asks for. A decode step's
// keys and values are usually out of cache (the weights streamed through
// since the last step), and the rows of a block are scattered by the table.
constexpr int64_t kAhead = 32;

// Asks for the cache lines of one row of d bf16 values.
inline void prefetch_row(const uint16_t* row, int64_t d) {
    for (int64_t off = 0; off < d; off += 32) _mm_prefetch(reinterpret_cast<const char*>(row + off), _MM_HINT_T0);
}

// sc[h * len + i] = scale * q_h . k_{p0 + i} for the group's heads (NK key
// vectors of 32 bf16 per row).
template <int NK, int64_t BS>
INFERD_BF16_TARGET void scores(const uint16_t* q, int64_t group, const uint16_t* k_pool, const uint16_t* v_pool, const int64_t* table, int64_t block_size,
                               int64_t rec, int64_t kv_off, int64_t p0, int64_t p1, float scale, float* sc, f32x16* stash) {
    const int64_t len = p1 - p0, d = 32 * NK;
    const __m512 sv = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < len; ++i) {
        const uint16_t* k = row_at<BS>(k_pool, table, block_size, rec, kv_off, p0 + i);
        if (i + kAhead < len) prefetch_row(row_at<BS>(k_pool, table, block_size, rec, kv_off, p0 + i + kAhead), d);
        prefetch_row(row_at<BS>(v_pool, table, block_size, rec, kv_off, p0 + i), d);
        __m512bh kv[NK];
        for (int j = 0; j < NK; ++j) kv[j] = (__m512bh)_mm512_loadu_si512(k + 32 * j);
        const int64_t slot = i & 15;
        for (int64_t h = 0; h < group; ++h) {
            __m512 acc = _mm512_setzero_ps();
            for (int j = 0; j < NK; ++j) acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + h * d + 32 * j), kv[j]);
            stash[h * 16 + slot] = (f32x16)acc;
        }
        if (slot == 15)
            for (int64_t h = 0; h < group; ++h) _mm512_storeu_ps(sc + h * len + i - 15, _mm512_mul_ps((__m512)hsum16x16(stash + h * 16), sv));
    }
    const int64_t tail = len & 15;
    if (tail == 0) return;
    const __mmask16 keep = static_cast<__mmask16>((1u << tail) - 1);
    for (int64_t h = 0; h < group; ++h) {
        // Slots past the tail hold stale vectors: their lanes are not stored.
        _mm512_mask_storeu_ps(sc + h * len + len - tail, keep, _mm512_mul_ps((__m512)hsum16x16(stash + h * 16), sv));
    }
}

// acc[h] (NK * 2 vectors, dimensions in interleave order) += P_h . V over
// positions p0 .. p1, two positions per step, for H heads of probabilities
// prob + h * pstride.
template <int NK, int H, int64_t BS>
INFERD_BF16_TARGET void weigh(const uint16_t* prob, int64_t pstride, int64_t heads, const uint16_t* v_pool, const int64_t* table,
                              int64_t block_size, int64_t rec, int64_t kv_off, int64_t p0, int64_t p1, __m512* out) {
    __m512 acc[H * 2 * NK];
    for (auto& a : acc) a = _mm512_setzero_ps();
    const int64_t len = p1 - p0;
    for (int64_t i = 0; i < len; i += 2) {
        const uint16_t* a = row_at<BS>(v_pool, table, block_size, rec, kv_off, p0 + i);
        const uint16_t* b = i + 1 < len ? row_at<BS>(v_pool, table, block_size, rec, kv_off, p0 + i + 1) : nullptr;

        __m512bh lo[NK], hi[NK];
        for (int j = 0; j < NK; ++j) {
            const __m512i va = _mm512_loadu_si512(a + 32 * j);
            const __m512i vb = b ? _mm512_loadu_si512(b + 32 * j) : _mm512_setzero_si512();
            lo[j] = (__m512bh)_mm512_unpacklo_epi16(va, vb);
            hi[j] = (__m512bh)_mm512_unpackhi_epi16(va, vb);
        }
        for (int h = 0; h < H && h < heads; ++h) {
            uint32_t pair;
            std::memcpy(&pair, prob + h * pstride + i, sizeof pair);
            const __m512bh pw = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
            for (int j = 0; j < NK; ++j) {
                acc[(h * NK + j) * 2] = _mm512_dpbf16_ps(acc[(h * NK + j) * 2], pw, lo[j]);
                acc[(h * NK + j) * 2 + 1] = _mm512_dpbf16_ps(acc[(h * NK + j) * 2 + 1], pw, hi[j]);
            }
        }
    }
    // Back in order: lane i of the unpacklo accumulator is dimension
    // 8 (i / 4) + i % 4 of its 32, of the unpackhi one 4 more.
    const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int h = 0; h < H && h < heads; ++h)
        for (int j = 0; j < NK; ++j) {
            const __m512 l = acc[(h * NK + j) * 2], u = acc[(h * NK + j) * 2 + 1];
            out[(h * NK + j) * 2] = _mm512_permutex2var_ps(l, first, u);
            out[(h * NK + j) * 2 + 1] = _mm512_permutex2var_ps(l, second, u);
        }
}

template <int NK, int64_t BS>
INFERD_BF16_TARGET void attend_nk(const uint16_t* q, int64_t group, const uint16_t* k_pool, const uint16_t* v_pool, int64_t kv_off,
                                  int64_t rec, const int64_t* table, int64_t block_size, int64_t p0, int64_t p1, float scale,
                                  uint16_t* out, float* part, int64_t part_stride, std::vector<float>& buf) {
    constexpr int64_t d = 32 * NK;
    // Heads per pass over V: their accumulators and the interleaved values
    // stay within the 32 registers.
    constexpr int H = NK == 2 ? 4 : 2;
    const int64_t len = p1 - p0, plen = (len + 1) / 2 * 2;
    // Scratch in floats: stash (64-byte aligned), scores, probabilities (bf16
    // pairs), per-head max and sum, one pass's accumulators.
    buf.resize(static_cast<size_t>(16 + 16 * 16 * group + group * len + group * plen / 2 + 2 * group + 16 * 2 * NK * H));
    float* base = buf.data();
    base += (16 - (reinterpret_cast<uintptr_t>(base) / sizeof(float)) % 16) % 16;
    auto* stash = reinterpret_cast<f32x16*>(base);
    float* accs = base + 16 * 16 * group;  // 64-byte aligned: a whole number of vectors
    float* sc = accs + 16 * 2 * NK * H;
    auto* prob = reinterpret_cast<uint16_t*>(sc + group * len);
    float* maxes = sc + group * len + group * plen / 2;
    float* sums = maxes + group;
    scores<NK, BS>(q, group, k_pool, v_pool, table, block_size, rec, kv_off, p0, p1, scale, sc, stash);
    for (int64_t h = 0; h < group; ++h) maxes[h] = softmax<true>(sc + h * len, len, prob + h * plen, sums + h);
    auto* acc = reinterpret_cast<__m512*>(accs);
    for (int64_t h0 = 0; h0 < group; h0 += H) {
        const int64_t hn = std::min<int64_t>(H, group - h0);
        weigh<NK, H, BS>(prob + h0 * plen, plen, hn, v_pool, table, block_size, rec, kv_off, p0, p1, acc);
        for (int64_t h = 0; h < hn; ++h) {
            const __m512* a = acc + h * 2 * NK;
            if (out != nullptr) {
                const __m512 inv = _mm512_set1_ps(sums[h0 + h]);
                for (int v = 0; v < 2 * NK; ++v) {
                    const __m256bh r = _mm512_cvtneps_pbh(_mm512_div_ps(a[v], inv));
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (h0 + h) * d + 16 * v), (__m256i)r);
                }
            } else {
                float* pt = part + (h0 + h) * part_stride;
                pt[0] = maxes[h0 + h];
                pt[1] = sums[h0 + h];
                for (int v = 0; v < 2 * NK; ++v) _mm512_storeu_ps(pt + 2 + 16 * v, a[v]);
            }
        }
    }
}

}  // namespace

namespace inferd_decode_bf16 {

bool applies(int64_t d, int64_t group) {
    return (d == 64 || d == 128) && group >= 1 && group <= kMaxGroup && cpu_has_avx512_bf16();
}

void attend(const uint16_t* q, int64_t d, int64_t group, const uint16_t* k_pool, const uint16_t* v_pool, int64_t kv_off, int64_t rec,
            const int64_t* table, int64_t block_size, int64_t p0, int64_t p1, float scale, uint16_t* out, float* part,
            int64_t part_stride, std::vector<float>& buf) {
    // 16, the default block size, as a constant: the row lookups shift
    // instead of dividing (1-3% at 704 positions from memory, 11-13% with
    // the K/V in L3; benches/kernels.rs).
    if (d == 64 && block_size == 16)
        attend_nk<2, 16>(q, group, k_pool, v_pool, kv_off, rec, table, block_size, p0, p1, scale, out, part, part_stride, buf);
    else if (d == 64)
        attend_nk<2, 0>(q, group, k_pool, v_pool, kv_off, rec, table, block_size, p0, p1, scale, out, part, part_stride, buf);
    else if (block_size == 16)
        attend_nk<4, 16>(q, group, k_pool, v_pool, kv_off, rec, table, block_size, p0, p1, scale, out, part, part_stride, buf);
    else
        attend_nk<4, 0>(q, group, k_pool, v_pool, kv_off, rec, table, block_size, p0, p1, scale, out, part, part_stride, buf);
}

}  // namespace inferd_decode_bf16
