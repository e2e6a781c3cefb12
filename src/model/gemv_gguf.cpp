// Products of bf16 rows against a GGUF weight kept in its quantized blocks
// (Q4_0, Q4_1 or Q8_0), with AVX512_VNNI's byte dot products; gemv_gguf.rs
// builds the layouts below from the file's blocks.
//
// Why: a decode step at one stream streams every weight once, so its time is
// the weights' bytes over the memory bandwidth, as long as the arithmetic
// keeps up. The file's own blocks are 0.625 (Q4) or 1.0625 (Q8_0) bytes a
// parameter with their scales, against bf16's 2. Widening every nibble to a
// bf16 for VDPBF16PS (or to f32 for FMAs) kept the arithmetic behind the
// memory: on the AMX Xeon a VDPBF16PS issues once per ~0.97 ns against
// ~0.24 ns for an FMA, and a one-row Q4 tile ran at ~12.5 G multiply-adds a
// second per thread whether its weights came from L2 or from memory.
//
// How (as llama.cpp multiplies its Q8_1 activations by Q4 and Q8_0
// blocks, with 12 bits an input rather than 8): each row's block of 32
// inputs is quantized to x ~ s T, T an integer in [-2047, 2047] with s =
// max|x| / 2047 (quantize_rows), kept as two bytes, T = 16 xh + xl with xh
// signed and xl in [0, 15]; VPDPBUSD sums four unsigned weight bytes times
// four signed input bytes into each 32-bit lane (64 products an
// instruction), exactly, once against xh and once against xl; then per
// block, with the integer S = sum q T = 16 sum q xh + sum q xl,
//   Q4:   sum w x ~ d s S + m s sum T  (Q4_0's m being -8 d),
//   Q8_0: sum w x ~ d s S, with q stored as q + 128 (VPDPBUSD's weights are
//         unsigned) and 128 sum T taken off S.
// The integer sums are exact, and each (row, line)'s f32 total takes its
// blocks in order with the same two FMAs, whatever the number of rows or
// the tile that computes it: a row gets the same bits alone as in any batch,
// so batched greedy decoding gives a sequence the tokens it gets alone. The
// only rounding beyond f32 sums is the inputs', within s / 2.
//
// Prefill chunks and batches of 16 rows or more, on CPUs with AMX-INT8, go
// 16 rows at a time through TDPBSUD tile products (`amx_line`), which sum
// the same bytes exactly; their block ends are the same ops as `tile`'s, so
// a row gets the same bits from either kernel. Why 12 bits and xl in four:
// a Q4 block's S is then one TDPBSUD over 64 bytes, its xh against 16 q
// (at most 240, still a byte) and its xl against q, where 16 bits (256 xq
// + rq) took two products of 32, two tile stores and twice the block-end
// loads; Q8_0's q + 128 has no room for the 16, so it keeps two.
//
// Work: groups of 8 lines. In a decode step (the pool active) each thread
// owns a contiguous run of groups (owned_chunks.h), and a worker streams
// the start of its run of the next product's blocks into its cache while
// the caller does the layer's serial work; elsewhere at::parallel_for.
//
// Layouts, per line of 16 outputs and block of 32 inputs (a line's blocks
// follow each other, lines follow each other); byte 4i + j of a 64-byte
// vector feeds output i's lane:
// - Q4 (320 bytes): 4 vectors of 64 bytes, then 16 f16 d, then 16 f16 m.
//   In vector v, byte 4i + j holds input 8v + j of output i in its low
//   nibble and input 8v + 4 + j in its high one.
// - Q8_0 (544 bytes): 8 vectors of 64 bytes (byte 4i + j of vector v:
//   input 4v + j of output i, as q + 128), then 16 f16 d.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cpuid.h>
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

// Every CPU with AVX512_BF16 (which the rest of the quantized path needs)
// also has AVX512_VNNI; gemv_gguf_usable() checks both.
#define INFERD_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))
#define INFERD_AMX_INT8_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))

namespace {

constexpr int64_t kLine = 16;     // outputs per line
constexpr int64_t kBlockIn = 32;  // inputs per block
constexpr int64_t kGroup = 8;     // lines per work item

// A vector's 64 bytes as two of nibbles: the low ones, then the high ones.
struct Q4 {
    static constexpr int64_t kBlockBytes = 320;
    static constexpr int kVectors = 4;  // of 64 bytes per block
    static constexpr int kParts = 2;    // byte vectors per loaded vector
    static constexpr bool kMin = true;
    // First input (within the block) of a vector's part.
    static constexpr int input(int v, int part) { return 8 * v + 4 * part; }
    INFERD_VNNI_TARGET static inline void widen(const uint8_t* at, __m512i* out) {
        const __m512i low4 = _mm512_set1_epi8(0x0F);
        const __m512i bytes = _mm512_loadu_si512(at);
        out[0] = _mm512_and_si512(bytes, low4);
        out[1] = _mm512_and_si512(_mm512_maskz_srli_epi16(~0u, bytes, 4), low4);
    }
};

// A vector's 64 bytes as they are (q + 128).
struct Q8 {
    static constexpr int64_t kBlockBytes = 544;
    static constexpr int kVectors = 8;
    static constexpr int kParts = 1;
    static constexpr bool kMin = false;
    static constexpr int input(int v, int) { return 4 * v; }
    INFERD_VNNI_TARGET static inline void widen(const uint8_t* at, __m512i* out) { out[0] = _mm512_loadu_si512(at); }
};

// The rows as bytes, per block of 32 inputs (quantize_rows): x ~ s T, T =
// 16 xh + xl.
constexpr int64_t kRowBlockBytes = 64;  // a row's block: its 32 xh, then its 32 xl
struct Problem {
    const int8_t* x;        // [rows, blocks, 64]: per block 32 xh, then 32 xl
    const float* scale;     // [rows, blocks]: s
    const float* scaled;    // [rows, blocks]: s sum T (Q4's minimum term)
    const int32_t* offset;  // [rows, blocks]: 128 sum T (Q8_0's weight offset)
    const uint8_t* w;       // a layout above
    uint16_t* y;            // [rows, n] bf16
    int64_t k, n, blocks;
    // Where row `row`'s block `b` starts in `x`.
    const int8_t* block(int64_t row, int64_t b) const { return x + (row * blocks + b) * kRowBlockBytes; }
};

// Every lane's max and sum of 16 lanes, by swaps of halves, quarters, pairs
// and neighbours (exact in any order). maskz with all lanes: the plain
// intrinsics (and _mm512_reduce_*) trip GCC 12's -Wmaybe-uninitialized on
// their undefined pass-through operand.
INFERD_VNNI_TARGET inline __m512 all_lanes_max(__m512 v) {
    v = _mm512_maskz_max_ps(0xFFFF, v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_maskz_max_ps(0xFFFF, v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_maskz_max_ps(0xFFFF, v, _mm512_maskz_permute_ps(0xFFFF, v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm512_maskz_max_ps(0xFFFF, v, _mm512_maskz_permute_ps(0xFFFF, v, _MM_SHUFFLE(2, 3, 0, 1)));
}
INFERD_VNNI_TARGET inline __m512i all_lanes_sum(__m512i v) {
    v = _mm512_add_epi32(v, _mm512_maskz_shuffle_i32x4(0xFFFF, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_add_epi32(v, _mm512_maskz_shuffle_i32x4(0xFFFF, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_add_epi32(v, _mm512_maskz_shuffle_epi32(0xFFFF, v, static_cast<_MM_PERM_ENUM>(_MM_SHUFFLE(1, 0, 3, 2))));
    return _mm512_add_epi32(v, _mm512_maskz_shuffle_epi32(0xFFFF, v, static_cast<_MM_PERM_ENUM>(_MM_SHUFFLE(2, 3, 0, 1))));
}

// Each row's blocks to 12 bits an input: with s = max|x| / 2047, T = x /
// s rounded to nearest even (all 0 for an all-zero block), so x ~ s T
// within s / 2, stored as xh = T >> 4 (arithmetic) and xl = T & 15. Twelve
// bits against the block's largest input: one byte (llama.cpp's Q8_1) left
// SmolLM2's logits twice as far from f32 as bf16 weights do.
INFERD_VNNI_TARGET void quantize_rows(const uint16_t* x, int64_t rows, int64_t k, int8_t* xb, float* scale, float* scaled,
                                      int32_t* offset) {
    const int64_t blocks = k / kBlockIn;
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF), top = _mm512_set1_epi32(2047), low4 = _mm512_set1_epi32(15);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t at = r * k + b * kBlockIn;
            int8_t* out = xb + (r * blocks + b) * kRowBlockBytes;
            __m512 half[2];
            for (int h = 0; h < 2; ++h)  // bf16 is f32's upper half
                half[h] = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(
                    0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + at + 16 * h))), 16));
            const float amax = _mm512_cvtss_f32(all_lanes_max(_mm512_maskz_max_ps(
                0xFFFF, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(half[0]), magnitude)),
                _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(half[1]), magnitude)))));
            const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 2047.0f / amax : 0.0f);
            __m512i sums = _mm512_setzero_si512();
            for (int h = 0; h < 2; ++h) {
                // |x| (2047 / amax) may round a hair past 2047; the clamp
                // keeps xh a byte.
                const __m512i t = _mm512_maskz_max_epi32(
                    0xFFFF, _mm512_maskz_min_epi32(0xFFFF, _mm512_maskz_cvtps_epi32(0xFFFF, _mm512_mul_ps(half[h], inv)), top),
                    _mm512_sub_epi32(_mm512_setzero_si512(), top));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * h), _mm512_maskz_cvtsepi32_epi8(0xFFFF, _mm512_maskz_srai_epi32(0xFFFF, t, 4)));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kBlockIn + 16 * h), _mm512_maskz_cvtsepi32_epi8(0xFFFF, _mm512_and_si512(t, low4)));
                sums = _mm512_add_epi32(sums, t);
            }
            // Of T: at most 32 x 2047 in magnitude.
            const int32_t sum = _mm512_cvtsi512_si32(all_lanes_sum(sums));
            const float unit = amax / 2047.0f;
            scale[r * blocks + b] = unit;
            scaled[r * blocks + b] = unit * static_cast<float>(sum);
            offset[r * blocks + b] = 128 * sum;
        }
}

// S = 16 sum q xh + sum q xl from the two integer sums (exact: at most 32
// x 255 x 2047 in magnitude).
// maskz with all lanes: the plain intrinsics trip GCC 12's
// -Wmaybe-uninitialized on their undefined pass-through operand.
INFERD_VNNI_TARGET inline __m512i whole_sum(__m512i coarse, __m512i fine) {
    return _mm512_add_epi32(_mm512_maskz_slli_epi32(0xFFFF, coarse, 4), fine);
}

// A block's end for one (row, line), in `tile` and `amx_line` alike, so a
// row gets the same bits from either: from S (Q8_0's less its 128 offset),
// total += S (d s), and for Q4 total += m s sum T. `sc` is the block's f16
// scales (then, for Q4, its minimums).
template <class F>
INFERD_VNNI_TARGET inline __m512 end_block(const Problem& pb, int64_t at, const uint8_t* sc, __m512i sum, __m512 total) {
    if constexpr (!F::kMin) sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(pb.offset[at]));
    const __m512 d = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
    const __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(pb.scale[at]));
    total = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, sum), ds, total);
    if constexpr (F::kMin) {
        const __m512 m = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 32)));
        total = _mm512_fmadd_ps(m, _mm512_set1_ps(pb.scaled[at]), total);
    }
    return total;
}

// R rows x G lines. Each (row, line) keeps a running f32 total and an
// integer block sum: 2 R G + a few registers live (R G <= 8 fits in 32).
template <class F, int R, int G>
INFERD_VNNI_TARGET inline void tile(const Problem& pb, int64_t row, int64_t line0) {
    __m512 total[R][G];
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) total[r][g] = _mm512_setzero_ps();
    const uint8_t* base[G];
    for (int g = 0; g < G; ++g) base[g] = pb.w + (line0 + g) * pb.blocks * F::kBlockBytes;
    for (int64_t b = 0; b < pb.blocks; ++b) {
        if constexpr (R <= 2) {
            // The next block of each line into L1: with eight lines in
            // flight the hardware prefetchers alone leave a one-row tile
            // waiting on memory.
            for (int g = 0; g < G; ++g)
                for (int64_t off = 0; off < F::kBlockBytes; off += 64)
                    _mm_prefetch(reinterpret_cast<const char*>(base[g] + (b + 1) * F::kBlockBytes + off), _MM_HINT_T0);
        }
        __m512i acc[R][G], fine[R][G];  // sum q xh, sum q xl
        for (int r = 0; r < R; ++r)
            for (int g = 0; g < G; ++g) acc[r][g] = fine[r][g] = _mm512_setzero_si512();
        for (int v = 0; v < F::kVectors; ++v) {
            __m512i xv[F::kParts][R], rv[F::kParts][R];
            for (int p = 0; p < F::kParts; ++p)
                for (int r = 0; r < R; ++r) {
                    const int8_t* in = pb.block(row + r, b) + F::input(v, p);
                    int32_t four;  // four input bytes, read as one 32-bit lane
                    std::memcpy(&four, in, sizeof four);
                    xv[p][r] = _mm512_set1_epi32(four);
                    std::memcpy(&four, in + kBlockIn, sizeof four);
                    rv[p][r] = _mm512_set1_epi32(four);
                }
            for (int g = 0; g < G; ++g) {
                __m512i wv[F::kParts];
                F::widen(base[g] + b * F::kBlockBytes + v * 64, wv);
                for (int r = 0; r < R; ++r)
                    for (int p = 0; p < F::kParts; ++p) {
                        acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], wv[p], xv[p][r]);
                        fine[r][g] = _mm512_dpbusd_epi32(fine[r][g], wv[p], rv[p][r]);
                    }
            }
        }
        for (int g = 0; g < G; ++g) {
            const uint8_t* sc = base[g] + b * F::kBlockBytes + F::kVectors * 64;
            for (int r = 0; r < R; ++r)
                total[r][g] = end_block<F>(pb, (row + r) * pb.blocks + b, sc, whole_sum(acc[r][g], fine[r][g]), total[r][g]);
        }
    }
    // The totals rounded to bf16 (to nearest even) into y.
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) {
            const __m256bh v = _mm512_cvtneps_pbh(total[r][g]);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb.y + (row + r) * pb.n + (line0 + g) * kLine), (__m256i)v);
        }
}

// Rows [r, rows) against lines [l0, l0 + count), count <= kGroup. Rows go eight
// at a time against one line (a line's blocks, 5-26 KB for SmolLM2, stay in
// L1 across the passes); the last few rows take several lines at a time so
// that one row still keeps eight accumulators going.
template <class F>
INFERD_VNNI_TARGET void run_group(const Problem& pb, int64_t r, int64_t rows, int64_t l0, int64_t count) {
    for (; r + 8 <= rows; r += 8)
        for (int64_t l = 0; l < count; ++l) tile<F, 8, 1>(pb, r, l0 + l);
    for (; r + 4 <= rows; r += 4) {
        int64_t l = 0;
        for (; l + 2 <= count; l += 2) tile<F, 4, 2>(pb, r, l0 + l);
        if (l < count) tile<F, 4, 1>(pb, r, l0 + l);
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

// AMX-INT8 (Sapphire Rapids and later): 16 rows against one line per tile
// product. TDPBSUD sums signed input bytes times unsigned weight bytes into
// 32-bit lanes exactly, as VPDPBUSD does, and the block's end is `tile`'s
// (end_block), so a row gets the same bits from either: rows in
// whole 16-row tiles go here, the rest to `run_group`.
constexpr int64_t kTileRows = 16;

// LDTILECFG's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16];
    uint8_t rows[16];
};
// Q4: tmm0 C (S), 16 rows x 16 lanes; tmm2 A (xh then xl), 16 rows x 64
// bytes; tmm4 B, 16 rows of 4 inputs x 16 outputs (16 q against xh, then q
// against xl).
const TileConfig kTilesQ4{1, 0, {}, {64, 0, 64, 0, 64}, {16, 0, 16, 0, 16}};
// Q8_0: tmm0-1 C (sum q xh, sum q xl), 16 rows x 16 lanes; tmm2-3 A (xh,
// xl), 16 rows x 32 bytes; tmm4 B, 8 rows of 4 inputs x 16 outputs.
const TileConfig kTilesQ8{1, 0, {}, {64, 64, 32, 32, 64}, {16, 16, 16, 16, 8}};

// CPUID.(7,0):EDX bit 25: AMX-INT8; amx_bf16_usable() checks the tiles
// themselves and asks Linux for their state.
bool amx_int8_usable() {
#if defined(__x86_64__) && defined(__linux__)
    unsigned a, b, c, d;
    return inferd_rows::amx_bf16_usable() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 25));
#else
    return false;
#endif
}

// A line's B tiles, one per block of 32 inputs. Q4's: its nibbles as bytes
// (vector v's low nibbles are row 2v, its high ones row 2v + 1), times 16 in
// rows 0-7 (against xh) and as they are in rows 8-15 (against xl), widened
// once per line into `buf` (1 KiB a block, 48 KiB at SmolLM2's widest)
// before any 16-row slice reads them. Q8_0's vectors are B as stored.
constexpr int64_t kQ4TileBytes = 1024;
template <class F>
INFERD_AMX_INT8_TARGET inline const uint8_t* b_tiles(const Problem& pb, const uint8_t* line, std::vector<uint8_t>& buf) {
    if constexpr (F::kParts == 1) {
        return line;
    } else {
        buf.resize(static_cast<size_t>(pb.blocks * kQ4TileBytes));
        for (int64_t b = 0; b < pb.blocks; ++b)
            for (int v = 0; v < F::kVectors; ++v) {
                __m512i parts[2];
                F::widen(line + b * F::kBlockBytes + v * 64, parts);
                for (int p = 0; p < 2; ++p) {
                    uint8_t* at = buf.data() + b * kQ4TileBytes + (2 * v + p) * 64;
                    // Nibbles times 16 stay in their bytes (at most 240).
                    _mm512_storeu_si512(at, _mm512_maskz_slli_epi16(~0u, parts[p], 4));
                    _mm512_storeu_si512(at + kQ4TileBytes / 2, parts[p]);
                }
            }
        return buf.data();
    }
}

// Rows [row, row + 16) against one line, all its blocks, with the line's B
// tiles at `tiles` (b_tiles); the tiles are configured (TileScope<F>).
template <class F>
INFERD_AMX_INT8_TARGET void amx_line(const Problem& pb, int64_t row, int64_t line, const uint8_t* tiles) {
    __m512 total[kTileRows];
    for (auto& t : total) t = _mm512_setzero_ps();
    const uint8_t* base = pb.w + line * pb.blocks * F::kBlockBytes;
    const int64_t stride = pb.blocks * kRowBlockBytes;  // from one row's block to the next row's
    // Tile stores go to two sets, by the block's parity, so a block's stores
    // need not wait for the previous block's reads.
    if constexpr (F::kParts == 2) {
        alignas(64) int32_t sums[2][kTileRows][16];  // S
        for (int64_t b = 0; b < pb.blocks; ++b) {
            const int h = static_cast<int>(b & 1);
            _tile_loadd(4, tiles + b * kQ4TileBytes, 64);
            _tile_loadd(2, pb.block(row, b), stride);
            _tile_zero(0);
            _tile_dpbsud(0, 2, 4);
            _tile_stored(0, sums[h], 64);
            const uint8_t* sc = base + b * F::kBlockBytes + F::kVectors * 64;
            // Unrolled, the 16 totals stay in registers (GCC 12 kept them on
            // the stack).
#pragma GCC unroll 16
            for (int r = 0; r < kTileRows; ++r)
                total[r] = end_block<F>(pb, (row + r) * pb.blocks + b, sc, _mm512_load_si512(sums[h][r]), total[r]);
        }
    } else {
        alignas(64) int32_t coarse[2][kTileRows][16], fine[2][kTileRows][16];  // sum q xh, sum q xl
        for (int64_t b = 0; b < pb.blocks; ++b) {
            const int h = static_cast<int>(b & 1);
            const uint8_t* sc = base + b * F::kBlockBytes + F::kVectors * 64;
            _tile_loadd(4, tiles + b * F::kBlockBytes, 64);
            _tile_loadd(2, pb.block(row, b), stride);
            _tile_loadd(3, pb.block(row, b) + kBlockIn, stride);
            _tile_zero(0);
            _tile_zero(1);
            _tile_dpbsud(0, 2, 4);
            _tile_dpbsud(1, 3, 4);
            _tile_stored(0, coarse[h], 64);
            _tile_stored(1, fine[h], 64);
            for (int r = 0; r < kTileRows; ++r)
                total[r] = end_block<F>(pb, (row + r) * pb.blocks + b, sc,
                                        whole_sum(_mm512_load_si512(coarse[h][r]), _mm512_load_si512(fine[h][r])), total[r]);
        }
    }
    for (int r = 0; r < kTileRows; ++r) {
        const __m256bh v = _mm512_cvtneps_pbh(total[r]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb.y + (row + r) * pb.n + line * kLine), (__m256i)v);
    }
}

// A group on AMX: each line's B tiles once, then its whole 16-row slices;
// the rest of the rows on `run_group`. The caller has configured the tiles
// on this thread.
template <class F>
INFERD_AMX_INT8_TARGET void amx_group(const Problem& pb, int64_t rows, int64_t l0, int64_t count) {
    thread_local std::vector<uint8_t> buf;
    const int64_t whole = rows / kTileRows * kTileRows;
    for (int64_t l = l0; l < l0 + count; ++l) {
        const uint8_t* tiles = b_tiles<F>(pb, pb.w + l * pb.blocks * F::kBlockBytes, buf);
        for (int64_t r = 0; r < whole; r += kTileRows) amx_line<F>(pb, r, l, tiles);
    }
    if (whole < rows) run_group<F>(pb, whole, rows, l0, count);
}

// Tile state is per thread: configured before a thread's groups, released
// after (a thread holding tile data saves 8 KiB more at each switch).
template <class F>
struct TileScope {
    explicit TileScope(bool on) : on(on) {
        if (on) load();
    }
    ~TileScope() {
        if (on) release();
    }
    TileScope(const TileScope&) = delete;
    TileScope& operator=(const TileScope&) = delete;
    INFERD_AMX_INT8_TARGET static void load() { _tile_loadconfig(F::kParts == 2 ? &kTilesQ4 : &kTilesQ8); }
    INFERD_AMX_INT8_TARGET static void release() { _tile_release(); }
    bool on;
};

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
    // Checked once: CPUID and the tile-state request.
    static const bool amx = amx_int8_usable();
    const bool tiles = amx && rows >= kTileRows;
    auto group = [&](int64_t g) {
        const int64_t l0 = g * kGroup, count = std::min(kGroup, lines - l0);
        if (tiles) {
            amx_group<F>(pb, rows, l0, count);
        } else {
            run_group<F>(pb, 0, rows, l0, count);
        }
    };
    if (inferd_pool::active()) {
        inferd_pool::OwnedChunks owned(groups, inferd_pool::threads());
        auto body = [&](int t, int) {
            {
                const TileScope<F> scope(tiles && t < owned.threads());
                owned.work(t, group);
            }
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
            const TileScope<F> scope(tiles);
            for (int64_t g = g0; g < g1; ++g) group(g);
        });
    }
}

}  // namespace

void inferd_rows::gemv_gguf(const bf16* x, int64_t rows, const uint8_t* w, int64_t n, int64_t k, int64_t format, bf16* y) {
    if (rows == 0) return;
    const int64_t blocks = k / kBlockIn, block_bytes = format == 4 ? Q4::kBlockBytes : Q8::kBlockBytes;
    // Small: 2 rows x k bytes and three rows x blocks arrays (2 x 512 x
    // 1536 bytes at the most, in a prefill chunk).
    std::vector<int8_t> xb(static_cast<size_t>(rows * blocks * kRowBlockBytes));
    std::vector<float> scale(static_cast<size_t>(rows * blocks)), scaled(scale.size());
    std::vector<int32_t> offset(scale.size());
    const uint16_t* xs = reinterpret_cast<const uint16_t*>(x);
    auto quantize = [&](int64_t r0, int64_t r1) {
        quantize_rows(xs + r0 * k, r1 - r0, k, xb.data() + r0 * blocks * kRowBlockBytes, scale.data() + r0 * blocks, scaled.data() + r0 * blocks,
                      offset.data() + r0 * blocks);
    };
    // A prefill chunk's rows on every thread (a row's bytes do not depend
    // on the split); a decode step's few on the caller.
    if (rows >= 2 * kTileRows && !inferd_pool::active()) {
        at::parallel_for(0, rows, kTileRows, quantize);
    } else {
        quantize(0, rows);
    }
    const Problem pb{xb.data(), scale.data(), scaled.data(), offset.data(), w, reinterpret_cast<uint16_t*>(y), k, n, blocks};
    const Weight next = inferd_pool::active() ? successors.after(Weight{reinterpret_cast<uintptr_t>(pb.w), n, k, block_bytes}) : Weight{};
    if (format == 4) {
        product<Q4>(pb, rows, next);
    } else {
        product<Q8>(pb, rows, next);
    }
}

bool inferd_rows::gemv_gguf_usable() {
#if defined(__x86_64__) && defined(__GNUC__)
    return inferd_cpu::cpu_has_avx512_bf16() && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

extern "C" {

// x: bf16 [M, K]; w: layout `format` (4: Q4, 8: Q8_0) of an [N, K] weight
// (N % 16 == 0, K % 32 == 0), read-only and alive for the call. Returns
// bf16 [M, N].
at::Tensor* inferd_gemv_gguf(const at::Tensor* x, const at::Tensor* w, int64_t n, int64_t k, int64_t format) {
    return inferd_shim::new_tensor([&] {
        TORCH_CHECK(inferd_rows::gemv_gguf_usable(), "gemv_gguf: this CPU lacks AVX512_BF16 or AVX512_VNNI");
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
