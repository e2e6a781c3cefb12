// Prefill-chunk attention for bf16 on CPUs with AVX512-BF16: the `len`
// queries of one chunk (positions start .. ctx, start = ctx - len) against
// positions 0 .. ctx of their sequence, causal, read from the paged pools by
// block table. This is the attention of a prompt whose prefix came from the
// prefix cache (or of a later chunk of a long prompt), where SDPA needs a
// gathered copy of K/V and an explicit mask, and its CPU flash kernel then
// runs at about a third of what the cores' bf16 dot products allow.
//
// Per call, each kv head's keys are first repacked as bf16 pairs across the
// head dim, sixteen positions to a vector, and its values as pairs of
// positions; then a work item (one kv head, up to 16 query positions, i.e.
// the group's query heads x 16 rows) computes its f32 scores with
// `vdpbf16ps` (a pair of bf16 products per lane, exact, added in f32),
// takes the softmax per row in f32 (keys past the row's position excluded),
// rounds the probabilities to bf16 as libtorch's flash attention does
// before they weight V, accumulates P.V in f32 with `vdpbf16ps` again, and
// divides once at the end. Within 0.02 of SDPA (tested); every item is
// computed the same way whichever thread runs it, so neither the thread
// count nor the other sequences of a step change a bit, and a query's row
// does not depend on how its prompt was cut into chunks or how much of it
// came from the prefix cache (tested).
//
// On CPUs with AMX-BF16 the two products run on tiles instead (`amx_*`):
// one head's 16 query positions are an A tile at the query's row stride,
// the repacked keys and values are B tiles as they lie, and each score or
// output slice sums its pairs in one fixed order, so the invariances above
// hold there too. The softmax between them is the same code. On the AMX
// Xeon a 512-token chunk's attention took 29% of a bf16 prefill step on
// the AVX-512 products (perf, 2026-12-02).
//
// Called through fused_cpu.rs (`chunk_attention`), which falls back to SDPA
// where this kernel does not apply (another dtype or head dim, a CPU without
// AVX512-BF16).

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_tiles.h"
#include "cpu_kernels.h"
#include "row_kernels.h"
#include "softmax_bf16.h"

namespace {

using namespace inferd_cpu;

// Query positions per work item.
constexpr int64_t kQueryTile = 16;
static_assert(kQueryTile <= inferd_amx::kTileRows, "a head's query positions are one AMX tile");
// Score rows per pass of the QK loop (x 2 key vectors = 12 accumulators).
constexpr int kScoreRows = 6;

// One call's shapes and repacked operands.
struct Chunk {
    int64_t len, ctx, start, d, group, kvh, heads;
    int64_t keys;         // ctx rounded up to 32 (two key vectors; padding keys are zero)
    const uint16_t* q;    // [len][heads][d] rows at stride qs
    int64_t qs;
    const uint32_t* kt;   // per kv head: [d / 2 pairs][keys] pair j of key p
    const uint32_t* vp;   // per kv head: [keys / 2][d] values of positions 2m (low half) and 2m + 1 (high)
    uint16_t* out;        // [len][heads][d]
    float scale;
};

// Where position p's record (all kv heads) starts in a pool, by block table.
inline const uint16_t* key_row(const uint16_t* pool, const int64_t* table, int64_t block_size, int64_t rec, int64_t p) {
    return pool + (table[p / block_size] * block_size + p % block_size) * rec;
}

// Repack kv head g's keys and values at positions [p0, p1) (p0 and p1 even;
// see Chunk): kt and vp are the head's operands.
void pack_range(const Chunk& c, int64_t g, const uint16_t* k_pool, const uint16_t* v_pool, const int64_t* table,
                int64_t block_size, int64_t p0, int64_t p1, uint32_t* kt, uint32_t* vp) {
    const int64_t rec = c.kvh * c.d, pairs = c.d / 2;
    for (int64_t p = p0; p < p1; ++p) {
        if (p < c.ctx) {
            const uint16_t* k = key_row(k_pool, table, block_size, rec, p) + g * c.d;
            for (int64_t j = 0; j < pairs; ++j) {
                uint32_t pair;
                std::memcpy(&pair, k + 2 * j, sizeof pair);
                kt[j * c.keys + p] = pair;
            }
        } else {
            for (int64_t j = 0; j < pairs; ++j) kt[j * c.keys + p] = 0;
        }
    }
    for (int64_t m = p0 / 2; m < p1 / 2; ++m) {
        const int64_t a = 2 * m, b = 2 * m + 1;
        const uint16_t* v0 = a < c.ctx ? key_row(v_pool, table, block_size, rec, a) + g * c.d : nullptr;
        const uint16_t* v1 = b < c.ctx ? key_row(v_pool, table, block_size, rec, b) + g * c.d : nullptr;
        uint32_t* row = vp + m * c.d;
        for (int64_t i = 0; i < c.d; ++i) {
            const uint32_t lo = v0 ? v0[i] : 0, hi = v1 ? v1[i] : 0;
            row[i] = lo | (hi << 16);
        }
    }
}

// Scores of R rows against keys [k0, k0 + 32): rows' query pairs at q[r],
// written (scaled) to sc[r] + k0.
template <int R>
INFERD_BF16_TARGET inline void score_rows(const Chunk& c, const uint32_t* kt, const uint16_t* const* q, int64_t k0,
                                          float* const* sc) {
    __m512 acc[2 * R];  // flat: see weigh_rows
    for (int i = 0; i < 2 * R; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < c.d / 2; ++j) {
        const __m512bh k_lo = (__m512bh)_mm512_loadu_si512(kt + j * c.keys + k0);
        const __m512bh k_hi = (__m512bh)_mm512_loadu_si512(kt + j * c.keys + k0 + 16);
        for (int r = 0; r < R; ++r) {
            int pair;
            std::memcpy(&pair, q[r] + 2 * j, sizeof pair);
            const __m512bh qv = (__m512bh)_mm512_set1_epi32(pair);
            acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], qv, k_lo);
            acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], qv, k_hi);
        }
    }
    const __m512 s = _mm512_set1_ps(c.scale);
    for (int r = 0; r < R; ++r) {
        _mm512_storeu_ps(sc[r] + k0, _mm512_mul_ps(acc[2 * r], s));
        _mm512_storeu_ps(sc[r] + k0 + 16, _mm512_mul_ps(acc[2 * r + 1], s));
    }
}

// out[r] = P[r] . V over key pairs [0, pairs) for R rows, NV vectors of 16
// outputs each (the head dim / 16), divided by sums[r] and rounded to bf16.
template <int R, int NV>
INFERD_BF16_TARGET inline void weigh_rows(const uint32_t* vp, const uint32_t* const* prob, int64_t pairs, int64_t d,
                                          const float* sums, uint16_t* const* out) {
    // One flat array: GCC keeps it in registers (a two-dimensional one it
    // stored back on every pass).
    __m512 acc[R * NV];
    for (int i = 0; i < R * NV; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t m = 0; m < pairs; ++m) {
        __m512bh vv[NV];
        for (int v = 0; v < NV; ++v) vv[v] = (__m512bh)_mm512_loadu_si512(vp + m * d + 16 * v);
        for (int r = 0; r < R; ++r) {
            const __m512bh pv = (__m512bh)_mm512_set1_epi32(static_cast<int>(prob[r][m]));
            for (int v = 0; v < NV; ++v) acc[r * NV + v] = _mm512_dpbf16_ps(acc[r * NV + v], pv, vv[v]);
        }
    }
    // Divided once, rounded to nearest even (vcvtneps2bf16, as to_t).
    for (int r = 0; r < R; ++r) {
        const __m512 inv = _mm512_set1_ps(sums[r]);
        for (int v = 0; v < NV; ++v) {
            const __m256bh b = _mm512_cvtneps_pbh(_mm512_div_ps(acc[r * NV + v], inv));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[r] + 16 * v), (__m256i)b);
        }
    }
}

template <int NV>
INFERD_BF16_TARGET void weigh_all(const uint32_t* vp, const uint32_t* const* prob, int64_t rows, int64_t pairs, int64_t d,
                                  const float* sums, uint16_t* const* out) {
    // Accumulators: R * NV of the 32 registers, NV more for the values
    // (more rows spill them).
    constexpr int R = NV == 4 ? 4 : 2;
    int64_t r = 0;
    for (; r + R <= rows; r += R) weigh_rows<R, NV>(vp, prob + r, pairs, d, sums + r, out + r);
    for (; r < rows; ++r) weigh_rows<1, NV>(vp, prob + r, pairs, d, sums + r, out + r);
}

// Scores of one head's `rows` (<= 16) query positions, the first at q
// (positions qs values apart), against keys [0, keys): written scaled to
// sc ([rows][keys]), each 32 keys scaled while they are still in L1. The
// tiles are configured for `rows` rows.
INFERD_AMX_TARGET void amx_scores(const Chunk& c, const uint32_t* kt, const uint16_t* q, int64_t rows, int64_t keys, float* sc) {
    const __m512 scale = _mm512_set1_ps(c.scale);
    for (int64_t k0 = 0; k0 < keys; k0 += 32) {
        _tile_zero(0);
        _tile_zero(1);
        for (int64_t s = 0; s < c.d / inferd_amx::kTileK; ++s) {
            const uint32_t* b = kt + s * (inferd_amx::kTileK / 2) * c.keys + k0;
            _tile_loadd(4, q + s * inferd_amx::kTileK, c.qs * 2);
            _tile_loadd(5, b, c.keys * 4);
            _tile_dpbf16ps(0, 4, 5);
            _tile_loadd(6, b + 16, c.keys * 4);
            _tile_dpbf16ps(1, 4, 6);
        }
        _tile_stored(0, sc + k0, keys * 4);
        _tile_stored(1, sc + k0 + 16, keys * 4);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t p = k0; p < k0 + 32; p += 16) _mm512_storeu_ps(sc + r * keys + p, _mm512_mul_ps(_mm512_loadu_ps(sc + r * keys + p), scale));
    }
}

// out[r] = P[r] . V / sums[r] for one head's `rows` (<= 16) rows, rounded to
// bf16: prob's rows ([rows][keys / 2] bf16 pairs) are A tiles, the values'
// pairs of positions B tiles; four 16-output slices at a time, each summing
// its key pairs in order.
INFERD_AMX_TARGET void amx_weigh(const Chunk& c, const uint32_t* vp, const uint32_t* prob, int64_t rows, int64_t keys, const float* sums,
                                 uint16_t* const* out) {
    alignas(64) float slice[4][inferd_amx::kTileRows][16];
    for (int64_t v0 = 0; v0 < c.d / 16; v0 += 4) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t m0 = 0; m0 < keys / 2; m0 += 16) {
            const uint32_t* b = vp + m0 * c.d + 16 * v0;
            _tile_loadd(4, prob + m0, keys * 2);
            _tile_loadd(5, b, c.d * 4);
            _tile_dpbf16ps(0, 4, 5);
            _tile_loadd(6, b + 16, c.d * 4);
            _tile_dpbf16ps(1, 4, 6);
            _tile_loadd(5, b + 32, c.d * 4);
            _tile_dpbf16ps(2, 4, 5);
            _tile_loadd(6, b + 48, c.d * 4);
            _tile_dpbf16ps(3, 4, 6);
        }
        _tile_stored(0, slice[0], 64);
        _tile_stored(1, slice[1], 64);
        _tile_stored(2, slice[2], 64);
        _tile_stored(3, slice[3], 64);
        // Divided once, rounded to nearest even, as weigh_rows.
        for (int64_t r = 0; r < rows; ++r) {
            const __m512 inv = _mm512_set1_ps(sums[r]);
            for (int v = 0; v < 4; ++v) {
                const __m256bh b = _mm512_cvtneps_pbh(_mm512_div_ps(_mm512_load_ps(slice[v][r]), inv));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[r] + 16 * (v0 + v)), (__m256i)b);
            }
        }
    }
}

INFERD_AMX_TARGET void amx_config(int64_t rows) {
    _tile_loadconfig(&inferd_amx::kConfigs.of[rows]);
}
INFERD_AMX_TARGET void amx_release() {
    _tile_release();
}

// Scratch of one thread's items, kept across calls: a fresh allocation of
// this size per item would fault its pages in every time.
thread_local std::vector<float> scratch;

// One item: kv head g, query positions [i0, i1) of the chunk (at most
// kQueryTile), on AMX tiles or AVX-512.
INFERD_BF16_TARGET void attend_tile(const Chunk& c, int64_t g, int64_t i0, int64_t i1, bool amx) {
    std::vector<float>& buf = scratch;
    const int64_t rows = c.group * (i1 - i0);
    // Keys any row of the tile may see, rounded up to whole score vectors.
    const int64_t seen = c.start + i1, keys = (seen + 31) / 32 * 32;
    const size_t floats = static_cast<size_t>(rows * keys + rows * keys / 2 + rows);
    buf.resize(floats);
    float* sc = buf.data();                                            // [rows][keys]
    uint32_t* prob = reinterpret_cast<uint32_t*>(sc + rows * keys);    // [rows][keys / 2] bf16 pairs
    float* sums = sc + rows * keys + rows * keys / 2;                  // [rows]
    const uint32_t* kt = c.kt + g * (c.d / 2) * c.keys;
    const uint32_t* vp = c.vp + g * (c.keys / 2) * c.d;
    // Row r = (head h of the group, query i0 + i): r = h * (i1 - i0) + i.
    std::vector<const uint16_t*> qrow(static_cast<size_t>(rows));
    std::vector<float*> srow(static_cast<size_t>(rows));
    std::vector<const uint32_t*> prow(static_cast<size_t>(rows));
    std::vector<uint16_t*> orow(static_cast<size_t>(rows));
    for (int64_t h = 0; h < c.group; ++h)
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t r = h * (i1 - i0) + (i - i0), head = g * c.group + h;
            qrow[r] = c.q + i * c.qs + head * c.d;
            srow[r] = sc + r * keys;
            prow[r] = prob + r * keys / 2;
            orow[r] = c.out + (i * c.heads + head) * c.d;
        }
    // A head's rows, h * (i1 - i0) on, are one tile on AMX.
    const int64_t per_head = i1 - i0;
    if (amx) {
        amx_config(per_head);
        for (int64_t h = 0; h < c.group; ++h) amx_scores(c, kt, qrow[h * per_head], per_head, keys, srow[h * per_head]);
    } else {
        for (int64_t k0 = 0; k0 < keys; k0 += 32) {
            int64_t r = 0;
            for (; r + kScoreRows <= rows; r += kScoreRows) score_rows<kScoreRows>(c, kt, &qrow[r], k0, &srow[r]);
            for (; r < rows; ++r) score_rows<1>(c, kt, &qrow[r], k0, &srow[r]);
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        // Query position start + i sees keys 0 ..= start + i; the rest get
        // probability 0.
        const int64_t allowed = c.start + i0 + r % (i1 - i0) + 1;
        uint16_t* pb = reinterpret_cast<uint16_t*>(prob + r * keys / 2);
        // exp_f32's own bits (softmax_bf16.h): prefills keep the results of
        // the scalar loops this replaced, on which tests/smollm2.rs's bounds
        // were measured (an ulp in one probability can move a bf16 logit
        // by a good part of such a bound).
        softmax<false>(srow[r], allowed, pb, &sums[r]);
        // softmax zero-pads to an even count; P.V reads whole pairs to keys.
        std::fill(pb + (allowed + 1) / 2 * 2, pb + keys, uint16_t{0});
    }
    if (amx) {
        for (int64_t h = 0; h < c.group; ++h)
            amx_weigh(c, vp, prow[h * per_head], per_head, keys, sums + h * per_head, orow.data() + h * per_head);
        amx_release();
    } else if (c.d == 64) {
        weigh_all<4>(vp, prow.data(), rows, keys / 2, c.d, sums, orow.data());
    } else {
        weigh_all<8>(vp, prow.data(), rows, keys / 2, c.d, sums, orow.data());
    }
}

// Repacked keys and values of the current call, kept per calling thread.
thread_local std::vector<uint32_t> packed;

}  // namespace

extern "C" {

// Whether inferd_chunk_attention runs on this CPU (AVX512-BF16).
int inferd_chunk_attention_available() {
    static const bool ok = cpu_has_avx512_bf16();
    return ok ? 1 : 0;
}

// Whether inferd_chunk_attention may be asked for AMX tiles on this CPU.
int inferd_chunk_attention_amx_available() {
    return inferd_chunk_attention_available() && inferd_rows::amx_bf16_usable() ? 1 : 0;
}

// q: [len, heads, D] bf16 with contiguous rows (a view of the fused qkv
// output); pools [blocks, block size, kvh, D] bf16 contiguous, already
// holding the chunk's own K/V; table: int64 [nb] with nb * block size >= ctx;
// D 64 or 128; amx: 1 for the AMX tiles (where available), 0 for AVX-512.
// Returns [len, heads, D].
at::Tensor* inferd_chunk_attention(const at::Tensor* q, const at::Tensor* k_pool, const at::Tensor* v_pool,
                                   const at::Tensor* table, int64_t ctx, double scale, int64_t amx) {
    return inferd_shim::new_tensor([&] {
        TORCH_CHECK(inferd_chunk_attention_available(), "chunk attention needs AVX512-BF16");
        TORCH_CHECK(!amx || inferd_chunk_attention_amx_available(), "chunk attention: this CPU or kernel does not allow AMX-BF16");
        check_cpu_kind(*q, "chunk query", at::kBFloat16);
        check_cpu_kind(*k_pool, "K pool", at::kBFloat16);
        check_cpu_kind(*v_pool, "V pool", at::kBFloat16);
        TORCH_CHECK(q->dim() == 3 && q->stride(2) == 1 && q->stride(1) == q->size(2), "chunk query must be [len, heads, D] with contiguous rows");
        TORCH_CHECK(k_pool->dim() == 4 && k_pool->is_contiguous() && v_pool->sizes() == k_pool->sizes() && v_pool->is_contiguous(),
                    "KV pools must be contiguous [blocks, block size, kv heads, head dim]");
        const int64_t len = q->size(0), heads = q->size(1), d = q->size(2);
        const int64_t blocks = k_pool->size(0), block_size = k_pool->size(1), kvh = k_pool->size(2);
        TORCH_CHECK(d == 64 || d == 128, "chunk attention takes head dim 64 or 128, not ", d);
        TORCH_CHECK(k_pool->size(3) == d, "KV pool head dim ", k_pool->size(3), " != query head dim ", d);
        TORCH_CHECK(kvh > 0 && heads % kvh == 0, heads, " query heads do not split over ", kvh, " kv heads");
        TORCH_CHECK(table->device().is_cpu() && table->scalar_type() == at::kLong && table->dim() == 1 && table->is_contiguous(),
                    "the block table must be contiguous CPU int64");
        const int64_t nb = table->size(0);
        TORCH_CHECK(len >= 1 && ctx >= len && ctx <= nb * block_size, "chunk of ", len, " over context ", ctx, " outside 1..=", nb * block_size);
        const int64_t* tab = table->data_ptr<int64_t>();
        for (int64_t b = 0; b < (ctx + block_size - 1) / block_size; ++b)
            TORCH_CHECK(tab[b] >= 0 && tab[b] < blocks, "block ", tab[b], " outside the pool's ", blocks);
        at::Tensor out = at::empty({len, heads, d}, q->options().memory_format(at::MemoryFormat::Contiguous));
        Chunk c{};
        c.len = len;
        c.ctx = ctx;
        c.start = ctx - len;
        c.d = d;
        c.kvh = kvh;
        c.heads = heads;
        c.group = heads / kvh;
        c.keys = (ctx + 31) / 32 * 32;
        c.q = reinterpret_cast<const uint16_t*>(q->data_ptr<c10::BFloat16>());
        c.qs = q->stride(0);
        c.out = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
        c.scale = static_cast<float>(scale);
        const int64_t per_head = c.keys * d / 2;  // u32 of either repacked operand
        packed.resize(static_cast<size_t>(2 * kvh * per_head));
        uint32_t* kt = packed.data();
        uint32_t* vp = kt + kvh * per_head;
        c.kt = kt;
        c.vp = vp;
        const auto* kp = reinterpret_cast<const uint16_t*>(k_pool->data_ptr<c10::BFloat16>());
        const auto* vpool = reinterpret_cast<const uint16_t*>(v_pool->data_ptr<c10::BFloat16>());
        // Packing items: (kv head, 64 positions), spread over every thread.
        const int64_t ranges = (c.keys + 63) / 64;
        for_items(kvh * ranges, [&](int64_t item, std::vector<float>&) {
            const int64_t g = item / ranges, p0 = item % ranges * 64;
            pack_range(c, g, kp, vpool, tab, block_size, p0, std::min(c.keys, p0 + 64), kt + g * per_head, vp + g * per_head);
        });
        const int64_t tiles = (len + kQueryTile - 1) / kQueryTile;
        for_items(kvh * tiles, [&](int64_t item, std::vector<float>&) {
            // The last tiles (the most keys) first, so the cheap ones fill in
            // at the end.
            const int64_t g = item % kvh, t = tiles - 1 - item / kvh;
            attend_tile(c, g, t * kQueryTile, std::min(len, (t + 1) * kQueryTile), amx != 0);
        });
        return out;
    });
}

}  // extern "C"
