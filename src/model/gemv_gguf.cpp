// Products of bf16 rows against a GGUF weight kept in its quantized blocks
// (Q4_0, Q4_1 or Q8_0), on CPUs with AVX512_BF16; gemv_gguf.rs builds the
// layouts below from the file's blocks.
//
// Why: a decode step at one stream streams every weight once, so its time is
// the weights' bytes over the memory bandwidth. bf16 weights are 2 bytes a
// parameter; the file's own blocks are 0.625 (Q4) or 1.0625 (Q8_0) with
// their scales, and multiplying them directly gives the file's weights
// exactly (Q4: d q + m with the block's f16 scale d and minimum m, Q4_0's m
// being -8 d; Q8_0: d q), with no second rounding to bf16.
//
// How: every quantized value is turned into an exact bf16 before
// VDPBF16PS sums it against the inputs in f32:
// - Q4: a nibble q becomes 128 + q with one OR (0x4300 is bf16 128.0 and its
//   7 mantissa bits hold q), and per block of 32 inputs
//     sum w x = d * sum (128 + q) x + (m - 128 d) * sum x,
//   with the block sums of x computed once per row;
// - Q8_0: a byte q in [-128, 127] through f32 (exact) to bf16 (exact: 8
//   significant bits), and per block sum w x = d * sum q x.
// Every output is summed in one fixed order (blocks in order; inside a block
// the 16 input pairs in the layout's order into a fresh f32 accumulator),
// whatever the number of rows or the tile that computes it, so a row gets
// the same bits alone as in any batch: batched greedy decoding gives a
// sequence the tokens it gets alone.
//
// Tiles of four or more rows do the same sums with f32 FMAs (`ftile`):
// VDPBF16PS adds a pair's odd product, rounds, then adds its even product
// and rounds, treating denormals as zero (DAZ) and flushing them (FTZ); a
// product of two bf16 values is exact in f32, so an FMA of the odd input
// then one of the even input, with MXCSR's DAZ and FTZ set, rounds the same
// way at every step and gives the same bits. On the AMX Xeon a VDPBF16PS
// (32 products) issues once every ~1.3 ns against ~0.33 ns for an FMA (16),
// so eight rows against one line went 383 -> 286 us (576 x 576, 16 rows,
// L2-resident) with the same outputs bit for bit.
//
// Work: groups of 8 lines. In a decode step (the pool active) each thread
// owns a contiguous run of groups (owned_chunks.h), and a worker streams
// the start of its run of the next product's blocks into its cache while
// the caller does the layer's serial work; elsewhere at::parallel_for.
//
// Layouts, per line of 16 outputs and block of 32 inputs (a line's blocks
// follow each other, lines follow each other):
// - Q4 (320 bytes): 8 chunks of 32 bytes, then 16 f16 d, then 16 f16 m. In
//   chunk c, byte 2i + h holds input 2c + h of output i in its low nibble and
//   input 16 + 2c + h in its high one: widened to 16-bit words, the low
//   nibbles are input pair c of the 16 outputs as one vector of bf16 pairs,
//   the high nibbles pair 8 + c.
// - Q8_0 (544 bytes): 16 chunks of 32 bytes, then 16 f16 d. Chunk p holds
//   input pair p: bytes 2i, 2i + 1 are inputs 2p, 2p + 1 of output i for
//   outputs 0-7, then the same for outputs 8-15 (the order in which
//   VCVTNE2PS2BF16 packs two f32 vectors into one of pairs).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "owned_chunks.h"
#include "row_kernels.h"
#include "shim_error.h"

namespace {

constexpr int64_t kLine = 16;     // outputs per line
constexpr int64_t kBlockIn = 32;  // inputs per block
constexpr int64_t kGroup = 8;     // lines per work item

// A chunk's 32 bytes as two vectors of bf16 pairs: (byte & 0xF) | 0x4300
// and (byte >> 4) | 0x4300 in 16-bit words (0xEA is vpternlog's "a & b | c").
struct Q4 {
    static constexpr int64_t kBlockBytes = 320;
    static constexpr int kChunks = 8;
    static constexpr int kVectors = 2;  // per chunk
    static constexpr bool kMin = true;
    // Input pair (within the block) of a chunk's vector v.
    static constexpr int pair(int c, int v) { return c + 8 * v; }
    INFERD_BF16_TARGET static inline void widen(const uint8_t* chunk, __m512bh* out) {
        const __m512i low4 = _mm512_set1_epi16(0x000F), one28 = _mm512_set1_epi16(0x4300);
        const __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk)));
        out[0] = (__m512bh)_mm512_ternarylogic_epi32(words, low4, one28, 0xEA);
        out[1] = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(words, 4), one28);
    }
};

// A chunk's 32 signed bytes as one vector of bf16 pairs, through f32.
struct Q8 {
    static constexpr int64_t kBlockBytes = 544;
    static constexpr int kChunks = 16;
    static constexpr int kVectors = 1;
    static constexpr bool kMin = false;
    static constexpr int pair(int c, int) { return c; }
    INFERD_BF16_TARGET static inline void widen(const uint8_t* chunk, __m512bh* out) {
        // maskz forms with every lane: the plain intrinsics trip GCC 12's
        // -Wmaybe-uninitialized on their undefined pass-through operand.
        const __m512 lo = _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk))));
        const __m512 hi = _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 16))));
        out[0] = _mm512_cvtne2ps_pbh(hi, lo);  // lo's 16 values, then hi's
    }
};

struct Problem {
    const uint16_t* x;  // [rows, k] bf16
    const float* xsum;  // [rows, blocks]: each block's sum of x (Q4 only)
    const float* xf;    // [rows, k]: x in f32, for ftile (rows >= 4 only)
    const uint8_t* w;   // a layout above
    uint16_t* y;        // [rows, n] bf16
    int64_t k, n, blocks;
};

// A block's end, the same in both kinds of tile: each (row, line)'s block
// sum times the block's scale d into its running total, plus, for Q4,
// (m - 128 d) times the block's sum of x.
template <class F, int R, int G>
INFERD_BF16_TARGET inline void scale_block(const Problem& pb, const uint8_t* const (&base)[G], int64_t b, int64_t row,
                                           const __m512 (&acc)[R][G], __m512 (&total)[R][G]) {
    for (int g = 0; g < G; ++g) {
        const uint8_t* s = base[g] + b * F::kBlockBytes + F::kChunks * 32;
        // maskz with all lanes: the plain intrinsic trips GCC 12's
        // -Wmaybe-uninitialized on its undefined pass-through operand.
        const __m512 d = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
        for (int r = 0; r < R; ++r) total[r][g] = _mm512_fmadd_ps(acc[r][g], d, total[r][g]);
        if constexpr (F::kMin) {
            const __m512 m = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32)));
            const __m512 corr = _mm512_fnmadd_ps(_mm512_set1_ps(128.0f), d, m);  // m - 128 d
            for (int r = 0; r < R; ++r)
                total[r][g] = _mm512_fmadd_ps(corr, _mm512_set1_ps(pb.xsum[(row + r) * pb.blocks + b]), total[r][g]);
        }
    }
}

// The totals rounded to bf16 (to nearest even) into y.
template <int R, int G>
INFERD_BF16_TARGET inline void store_totals(const Problem& pb, int64_t row, int64_t line0, const __m512 (&total)[R][G]) {
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) {
            const __m256bh v = _mm512_cvtneps_pbh(total[r][g]);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb.y + (row + r) * pb.n + (line0 + g) * kLine), (__m256i)v);
        }
}

// R rows x G lines. Each (row, line) keeps a running f32 total and a block
// accumulator; a chunk's vectors are widened per line just before use, so
// 2 R G + a few registers are live (R G <= 8 fits in 32).
template <class F, int R, int G>
INFERD_BF16_TARGET inline void tile(const Problem& pb, int64_t row, int64_t line0) {
    __m512 total[R][G];
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) total[r][g] = _mm512_setzero_ps();
    const uint8_t* base[G];
    for (int g = 0; g < G; ++g) base[g] = pb.w + (line0 + g) * pb.blocks * F::kBlockBytes;
    for (int64_t b = 0; b < pb.blocks; ++b) {
        if constexpr (R <= 2) {
            // The next block of each line into L1: with eight lines in
            // flight the hardware prefetchers alone leave a one-row tile
            // waiting on memory (one thread streaming 53 MB: 6.4-6.8 GB/s
            // without, 7.5-7.7 with; two or more blocks ahead was slower).
            for (int g = 0; g < G; ++g)
                for (int64_t off = 0; off < F::kBlockBytes; off += 64)
                    _mm_prefetch(reinterpret_cast<const char*>(base[g] + (b + 1) * F::kBlockBytes + off), _MM_HINT_T0);
        }
        __m512 acc[R][G];
        for (int r = 0; r < R; ++r)
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
        for (int c = 0; c < F::kChunks; ++c) {
            __m512bh xv[F::kVectors][R];
            for (int v = 0; v < F::kVectors; ++v)
                for (int r = 0; r < R; ++r) {
                    int pair;  // two bf16 inputs, read as one 32-bit lane
                    std::memcpy(&pair, pb.x + (row + r) * pb.k + b * kBlockIn + 2 * F::pair(c, v), sizeof pair);
                    xv[v][r] = (__m512bh)_mm512_set1_epi32(pair);
                }
            for (int g = 0; g < G; ++g) {
                __m512bh wv[F::kVectors];
                F::widen(base[g] + b * F::kBlockBytes + c * 32, wv);
                for (int r = 0; r < R; ++r)
                    for (int v = 0; v < F::kVectors; ++v) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], xv[v][r], wv[v]);
            }
        }
        scale_block<F, R, G>(pb, base, b, row, acc, total);
    }
    store_totals<R, G>(pb, row, line0, total);
}

// `tile`'s sums as f32 FMAs, the odd input of each pair first (see the top
// of the file): the same bits, for tiles of four or more rows. run_group
// sets MXCSR's DAZ and FTZ (`FlushDenormals`) around both kinds.
template <class F, int R, int G>
INFERD_BF16_TARGET inline void ftile(const Problem& pb, int64_t row, int64_t line0) {
    __m512 total[R][G];
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) total[r][g] = _mm512_setzero_ps();
    const uint8_t* base[G];
    for (int g = 0; g < G; ++g) base[g] = pb.w + (line0 + g) * pb.blocks * F::kBlockBytes;
    const __m512i odd_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (int64_t b = 0; b < pb.blocks; ++b) {
        __m512 acc[R][G];
        for (int r = 0; r < R; ++r)
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
        for (int c = 0; c < F::kChunks; ++c)
            for (int g = 0; g < G; ++g) {
                __m512bh wv[F::kVectors];
                F::widen(base[g] + b * F::kBlockBytes + c * 32, wv);
                for (int v = 0; v < F::kVectors; ++v) {
                    // A pair's even input is its low bf16, the odd its high:
                    // as f32, the word shifted up, and the word with its low
                    // half cleared (maskz with every lane: the plain shift
                    // trips GCC 12's -Wmaybe-uninitialized).
                    const __m512 even = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, (__m512i)wv[v], 16));
                    const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512((__m512i)wv[v], odd_half));
                    const float* xp = pb.xf + row * pb.k + b * kBlockIn + 2 * F::pair(c, v);
                    for (int r = 0; r < R; ++r) {
                        acc[r][g] = _mm512_fmadd_ps(_mm512_set1_ps(xp[r * pb.k + 1]), odd, acc[r][g]);
                        acc[r][g] = _mm512_fmadd_ps(_mm512_set1_ps(xp[r * pb.k]), even, acc[r][g]);
                    }
                }
            }
        scale_block<F, R, G>(pb, base, b, row, acc, total);
    }
    store_totals<R, G>(pb, row, line0, total);
}

// MXCSR's DAZ (bit 6) and FTZ (bit 15) for a scope, as VDPBF16PS has them.
struct FlushDenormals {
    unsigned saved = _mm_getcsr();
    FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
    ~FlushDenormals() { _mm_setcsr(saved); }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;
};

// All rows against lines [l0, l0 + count), count <= kGroup. Rows go eight
// at a time against one line (a line's blocks, 5-26 KB for SmolLM2, stay in
// L1 across the passes); the last few rows take several lines at a time so
// that one row still keeps eight accumulators going. (Widening a line once
// into an L2 buffer for all passes measured 1.2x slower at 32 rows, and an
// L1 buffer of eight blocks at a time 1.1x slower at 32 and 512 rows: a
// vector loaded per VDPBF16PS, beside the input broadcast, costs more than
// widening the nibbles in registers once per eight rows.)
template <class F>
INFERD_BF16_TARGET void run_group(const Problem& pb, int64_t rows, int64_t l0, int64_t count) {
    // Every tile's f32 arithmetic in one mode, so the scale steps round the
    // same way in both kinds of tile too.
    const FlushDenormals flush;
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8)
        for (int64_t l = 0; l < count; ++l) ftile<F, 8, 1>(pb, r, l0 + l);
    for (; r + 4 <= rows; r += 4) {
        int64_t l = 0;
        for (; l + 2 <= count; l += 2) ftile<F, 4, 2>(pb, r, l0 + l);
        if (l < count) ftile<F, 4, 1>(pb, r, l0 + l);
    }
    for (; r + 2 <= rows; r += 2) {
        int64_t l = 0;
        for (; l + 4 <= count; l += 4) tile<F, 2, 4>(pb, r, l0 + l);
        for (; l < count; ++l) tile<F, 2, 1>(pb, r, l0 + l);
    }
    if (r < rows) {
        int64_t l = 0;
        for (; l + 8 <= count; l += 8) tile<F, 1, 8>(pb, r, l0 + l);
        for (; l + 4 <= count; l += 4) tile<F, 1, 4>(pb, r, l0 + l);
        for (; l < count; ++l) tile<F, 1, 1>(pb, r, l0 + l);
    }
}

// Each block's sum of x, in f32, in one fixed order (pair sums by
// VDPBF16PS against ones, then the 16 lanes).
INFERD_BF16_TARGET void block_sums(const uint16_t* x, int64_t rows, int64_t k, float* out) {
    const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3F80);
    const int64_t blocks = k / kBlockIn;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < blocks; ++b) {
            const __m512bh v = (__m512bh)_mm512_loadu_si512(x + r * k + b * kBlockIn);
            alignas(64) float lanes[16];
            _mm512_store_ps(lanes, _mm512_dpbf16_ps(_mm512_setzero_ps(), v, ones));
            out[r * blocks + b] = inferd_cpu::lane_sum(lanes);
        }
}

// Work items (groups of kGroup lines) of a product with n outputs.
inline int64_t groups_of(int64_t n) {
    return (n / kLine + kGroup - 1) / kGroup;
}

// A weight as the pool's prefetch sees it: where its bytes start, its shape
// and its block size (the layout's bytes per 16 x 32 block).
struct Weight {
    uintptr_t bytes = 0;
    int64_t n = 0, k = 0, block_bytes = 0;
    int64_t groups() const { return groups_of(n); }
    int64_t line_bytes() const { return k / kBlockIn * block_bytes; }
};
thread_local inferd_pool::Successors<Weight> successors;

// On the pool a group of lines is a chunk (owned_chunks.h): a worker, once
// done, streams the start of its run of the next product into its cache
// while the caller does the layer's serial work.
template <class F>
void product(const Problem& pb, int64_t rows, const Weight& next) {
    const int64_t lines = pb.n / kLine, groups = groups_of(pb.n);
    auto group = [&](int64_t g) {
        const int64_t l0 = g * kGroup;
        run_group<F>(pb, rows, l0, std::min(kGroup, lines - l0));
    };
    if (inferd_pool::active()) {
        inferd_pool::OwnedChunks owned(groups, inferd_pool::threads());
        auto body = [&](int t, int) {
            owned.work(t, group);
            if (next.bytes == 0 || t == 0 || t >= owned.threads()) {
                inferd_pool::prefetch_after(nullptr, nullptr);
                return;
            }
            const int64_t g0 = inferd_pool::first_owned(next.groups(), t, owned.threads());
            const int64_t g1 = inferd_pool::first_owned(next.groups(), t + 1, owned.threads());
            const int64_t l1 = std::min(g1 * kGroup, next.n / kLine);
            const char* begin = reinterpret_cast<const char*>(next.bytes) + g0 * kGroup * next.line_bytes();
            const int64_t bytes = (l1 - g0 * kGroup) * next.line_bytes();
            inferd_pool::prefetch_after(begin, begin + std::min(bytes, inferd_pool::kPrefetchBytes));
        };
        inferd_pool::run(body);
    } else {
        at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
            for (int64_t g = g0; g < g1; ++g) group(g);
        });
    }
}

}  // namespace

void inferd_rows::gemv_gguf(const bf16* x, int64_t rows, const uint8_t* w, int64_t n, int64_t k, int64_t format, bf16* y) {
    if (rows == 0) return;
    const int64_t blocks = k / kBlockIn, block_bytes = format == 4 ? Q4::kBlockBytes : Q8::kBlockBytes;
    const auto* xp = reinterpret_cast<const uint16_t*>(x);
    // Small: rows x blocks floats (64 x 48 at most in a decode step).
    std::vector<float> xsum;
    if (format == 4) {
        xsum.resize(static_cast<size_t>(rows * blocks));
        block_sums(xp, rows, k, xsum.data());
    }
    // x in f32 for the FMA tiles: rows x k floats (512 x 1536, 3 MB, at the
    // most in a prefill chunk), exact (bf16 is f32's upper half).
    std::vector<float> xf;
    if (rows >= 4) {
        xf.resize(static_cast<size_t>(rows * k));
        for (int64_t i = 0; i < rows * k; ++i) {
            const uint32_t bits = static_cast<uint32_t>(xp[i]) << 16;
            std::memcpy(&xf[static_cast<size_t>(i)], &bits, sizeof bits);
        }
    }
    const Problem pb{xp, xsum.data(), xf.data(), w, reinterpret_cast<uint16_t*>(y), k, n, blocks};
    const Weight next = inferd_pool::active() ? successors.after(Weight{reinterpret_cast<uintptr_t>(pb.w), n, k, block_bytes}) : Weight{};
    if (format == 4) {
        product<Q4>(pb, rows, next);
    } else {
        product<Q8>(pb, rows, next);
    }
}

extern "C" {

// x: bf16 [M, K]; w: layout `format` (4: Q4, 8: Q8_0) of an [N, K] weight
// (N % 16 == 0, K % 32 == 0), read-only and alive for the call. Returns
// bf16 [M, N].
at::Tensor* inferd_gemv_gguf(const at::Tensor* x, const at::Tensor* w, int64_t n, int64_t k, int64_t format) {
    return inferd_shim::new_tensor([&] {
        TORCH_CHECK(inferd_cpu::cpu_has_avx512_bf16(), "gemv_gguf: this CPU has no AVX512_BF16");
        TORCH_CHECK(format == 4 || format == 8, "gemv_gguf: unknown layout ", format);
        TORCH_CHECK(x->dim() == 2 && x->scalar_type() == at::kBFloat16 && x->device().is_cpu(),
                    "gemv_gguf: input must be a 2-d bf16 CPU tensor");
        TORCH_CHECK(x->size(1) == k, "gemv_gguf: input has ", x->size(1), " features, the weight ", k);
        TORCH_CHECK(n > 0 && n % kLine == 0 && k > 0 && k % kBlockIn == 0, "gemv_gguf: unsupported shape [", n, ", ", k, "]");
        const int64_t block_bytes = format == 4 ? Q4::kBlockBytes : Q8::kBlockBytes;
        TORCH_CHECK(w->scalar_type() == at::kByte && w->is_contiguous() && w->numel() == n / kLine * (k / kBlockIn) * block_bytes,
                    "gemv_gguf: the weight is not a packed [", n, ", ", k, "] layout ", format);
        const at::Tensor xc = x->contiguous();
        const int64_t rows = xc.size(0);
        at::Tensor y = at::empty({rows, n}, x->options());
        inferd_rows::gemv_gguf(xc.const_data_ptr<c10::BFloat16>(), rows, static_cast<const uint8_t*>(w->const_data_ptr()), n, k, format,
                               y.mutable_data_ptr<c10::BFloat16>());
        return y;
    });
}

}  // extern "C"
