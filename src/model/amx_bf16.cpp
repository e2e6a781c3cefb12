// bf16 products on AMX tiles (Sapphire Rapids and later) at every row count,
// on the bytes oneDNN packed for the AVX-512 kernels (BA16a64b2a).
//
// Why a kernel of our own: oneDNN's AMX kernels sum a row in an order that
// depends on how many rows share the call, so a sequence's greedy tokens
// would depend on its batch (packed_linear.cpp caps oneDNN below AMX for
// that reason), while AMX multiplies a prefill chunk 4-7x faster than
// AVX-512. Here every row is summed the same way whatever the row count:
// fewer than 16 rows go through tiles of that many rows, more through
// 16-row tiles (the last one padded), and each 16-output slice of a row
// accumulates all K / 32 tile products into one f32 tile, in order, then
// rounds to bf16 to nearest even. A row's bits depend on its own inputs and the weight only,
// so prefill, decode, prefix reuse and recomputation after preemption all
// agree bit for bit.
//
// The packed layout is already AMX's B operand: per block of 64 outputs,
// input pair p's 64 outputs x 2 inputs fill 256 bytes, so outputs 16g..16g+15
// of pairs p..p+15 are a 16 x 64-byte tile at stride 256. A block (64
// outputs: four C tiles) is the unit of work; the threads split blocks as
// gemv_bf16.cpp does, on the decode pool inside a pool scope, else on
// libtorch's threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "amx_tiles.h"
#include "cpu_pool.h"
#include "owned_chunks.h"
#include "row_kernels.h"
#include "shim_error.h"

namespace {

constexpr int64_t kBlock = 64;     // outputs per packed block: four C tiles
using inferd_amx::kConfigs;
using inferd_amx::kTileK;
using inferd_amx::kTileRows;
using inferd_amx::TileConfig;
constexpr int64_t kPairBytes = 256;

// CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; XCR0 bits 17-18 the
// OS saves tile state; then Linux must grant this process the tile data
// state (arch_prctl ARCH_REQ_XCOMP_PERM), or the first tile instruction
// faults.
bool amx_usable() {
#if defined(__x86_64__) && defined(__linux__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
    constexpr long kReqXcompPerm = 0x1023;
    constexpr long kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
#else
    return false;
#endif
}

struct Problem {
    const uint16_t* x;  // rows16 rows of k bf16 (any values past `rows`):
                        // `rows` rounded up to whole tiles
    int64_t rows, rows16;
    const TileConfig* config;  // tiles of min(rows, 16) rows
    const uint8_t* w;  // packed weight
    int64_t n, k;
    uint16_t* y;  // [rows, n]
};

// How far ahead the first pass over a block asks for its bytes, and how.
// A tile step reads 4 KiB (16 pairs x 256 bytes: one page when the weight is
// page-aligned). The hardware prefetchers alone leave a thread's stream
// short of the memory's rate, and T0 prefetches of one stream (the step two
// steps ahead, 16 lines before each tile product) were not much better: the
// L2 streamer follows one page at a time. Here each step's four tile
// products ask, 16 lines in all, for four lines in each of the four steps
// from two steps ahead, the nearest getting the last quarter of its lines and
// the farthest the first quarter, so every line is asked for once, a quarter
// at a time over the four steps before it is read, and four pages are being
// streamed at once, as `membw`'s interleaved streams are (4 streams per
// thread read 23-29 GB/s on the AMX Xeon against 17-22 for one). A
// standalone loop of this kernel over SmolLM2's layers (one row, 2 threads,
// alternating runs in the same minutes on that Xeon): 17.7-25.7 GB/s against
// 13.1-17.4 with the one-stream prefetches; two pages at a time gave 18-19,
// eight 21-25. Earlier, with one stream: 8 KiB ahead was best among 4-24
// KiB, T0 better than T1, and NTA much worse (tile loads seem not to find
// lines fetched that way); a burst of 64 lines at the step's start worse
// than 16 before each product.
constexpr int64_t kAheadBytes = 8192;
constexpr int64_t kStepBytes = kTileK / 2 * kPairBytes;
constexpr int kStreamedSteps = 4;
static_assert(kStepBytes == 4096, "a tile step is one page");

// Before tile product g (0-3) of a step: lines 4g..4g+3 of quarter
// 3 - j of the step j steps past `ahead`, for j = 0..3.
inline void prefetch_spread(const char* ahead, int g) {
    constexpr int64_t kQuarter = kStepBytes / kStreamedSteps;
    for (int l = 0; l < 4; ++l)
        for (int j = 0; j < kStreamedSteps; ++j)
            _mm_prefetch(ahead + j * kStepBytes + (kStreamedSteps - 1 - j) * kQuarter + g * (kQuarter / 4) + 64 * l, _MM_HINT_T0);
}

// One 64-output block for every row, a tile of rows at a time; later
// passes find the block's bytes (73-197 KB for SmolLM2) in L2.
INFERD_AMX_TARGET void block(const Problem& pb, int64_t b) {
    const int64_t pairs = pb.k / 2;
    const uint8_t* wb = pb.w + b * pairs * kPairBytes;
    alignas(64) float c[kTileRows][kBlock];
    for (int64_t m0 = 0; m0 < pb.rows16; m0 += kTileRows) {
        const bool first = m0 == 0;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint16_t* xm = pb.x + m0 * pb.k;
        for (int64_t s = 0; s < pb.k / kTileK; ++s) {
            const uint8_t* ws = wb + s * kStepBytes;
            const char* ahead = reinterpret_cast<const char*>(ws + kAheadBytes);
            _tile_loadd(4, xm + s * kTileK, pb.k * 2);
            if (first) prefetch_spread(ahead, 0);
            _tile_loadd(5, ws, kPairBytes);
            _tile_dpbf16ps(0, 4, 5);
            if (first) prefetch_spread(ahead, 1);
            _tile_loadd(6, ws + 64, kPairBytes);
            _tile_dpbf16ps(1, 4, 6);
            if (first) prefetch_spread(ahead, 2);
            _tile_loadd(5, ws + 128, kPairBytes);
            _tile_dpbf16ps(2, 4, 5);
            if (first) prefetch_spread(ahead, 3);
            _tile_loadd(6, ws + 192, kPairBytes);
            _tile_dpbf16ps(3, 4, 6);
        }
        _tile_stored(0, &c[0][0], kBlock * 4);
        _tile_stored(1, &c[0][16], kBlock * 4);
        _tile_stored(2, &c[0][32], kBlock * 4);
        _tile_stored(3, &c[0][48], kBlock * 4);
        const int64_t valid = pb.rows - m0 < kTileRows ? pb.rows - m0 : kTileRows;
        for (int64_t r = 0; r < valid; ++r) {
            uint16_t* yr = pb.y + (m0 + r) * pb.n + b * kBlock;
            for (int g = 0; g < 4; ++g) {
                const __m256bh v = _mm512_cvtneps_pbh(_mm512_load_ps(&c[r][16 * g]));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(yr + 16 * g), (__m256i)v);
            }
        }
    }
}

// Blocks [b0, b1) on the calling thread; the tile configuration is the
// thread's own state, so each thread loads it, and releases the tiles when
// done (a thread holding tile data saves 8 KiB more at each switch).
INFERD_AMX_TARGET void run_blocks(const Problem& pb, int64_t b0, int64_t b1) {
    _tile_loadconfig(pb.config);
    for (int64_t b = b0; b < b1; ++b) block(pb, b);
    _tile_release();
}

struct Weight {
    uintptr_t bytes = 0;
    int64_t n = 0, k = 0;
    int64_t block_bytes() const { return k / 2 * kPairBytes; }
};

thread_local inferd_pool::Successors<Weight> successors;

// As gemv_bf16.cpp's LinesJob: each thread owns a contiguous run of blocks,
// and a worker, once done, streams the start of its run of the next
// product's weight into its cache.
struct BlocksJob {
    const Problem* pb;
    Weight next;
    inferd_pool::OwnedChunks owned;

    BlocksJob(const Problem* pb, Weight next, int threads) : pb(pb), next(next), owned(pb->n / kBlock, threads) {}

    INFERD_AMX_TARGET void operator()(int t, int /*running*/) {
        const int threads = owned.threads();
        if (t >= threads) return;
        _tile_loadconfig(pb->config);
        owned.work(t, [&](int64_t b) { block(*pb, b); });
        _tile_release();
        inferd_pool::prefetch_owned_run(next.bytes, next.n / kBlock, next.block_bytes(), t, threads);
    }
};

// The rows as whole tiles: x itself when it has fewer than 16 rows (one
// tile of that many rows) or a multiple of 16, else a copy with room for the
// rest of the last 16-row tile (per thread, reused). The padding rows are
// not cleared: a C tile row is computed from the same A row only, so
// whatever they hold (an earlier call's rows) reaches only output rows never
// stored.
const uint16_t* whole_tiles(const uint16_t* x, int64_t rows, int64_t k, int64_t rows16) {
    if (rows16 == rows) return x;
    thread_local std::vector<uint16_t> padded;
    if (padded.size() < static_cast<size_t>(rows16 * k)) padded.resize(static_cast<size_t>(rows16 * k));
    std::memcpy(padded.data(), x, static_cast<size_t>(rows * k) * 2);
    return padded.data();
}

}  // namespace

bool inferd_rows::amx_bf16_usable() {
    static const bool usable = amx_usable();
    return usable;
}

void inferd_rows::amx_bf16(const bf16* x, int64_t rows, uintptr_t w, int64_t n, int64_t k, bf16* y) {
    if (rows == 0) return;
    // Fewer than 16 rows (decode steps) go in one tile of that many rows:
    // a 16-row tile would load and store 16 rows for each one used, and
    // those stores must drain before the next block is claimed.
    const int64_t tile_rows = rows < kTileRows ? rows : kTileRows;
    const int64_t rows16 = (rows + tile_rows - 1) / tile_rows * tile_rows;
    const Problem pb{whole_tiles(reinterpret_cast<const uint16_t*>(x), rows, k, rows16),
                     rows,
                     rows16,
                     &kConfigs.of[tile_rows],
                     reinterpret_cast<const uint8_t*>(w),
                     n,
                     k,
                     reinterpret_cast<uint16_t*>(y)};
    if (inferd_pool::active()) {
        BlocksJob job(&pb, successors.after(Weight{w, n, k}), inferd_pool::threads());
        inferd_pool::run(job);
    } else {
        at::parallel_for(0, n / kBlock, 1, [&](int64_t b0, int64_t b1) { run_blocks(pb, b0, b1); });
    }
}

extern "C" {

int inferd_amx_bf16_available() {
    return inferd_rows::amx_bf16_usable() ? 1 : 0;
}

// x: bf16 [M, K], any M; w: the bytes of a bf16 [N, K] weight that oneDNN
// packed as BA16a64b2a (N % 64 == 0, K % 32 == 0), read-only and alive for
// the call. Returns bf16 [M, N].
at::Tensor* inferd_amx_bf16(const at::Tensor* x, uintptr_t w, int64_t n, int64_t k) {
    return inferd_shim::new_tensor([&] {
        TORCH_CHECK(inferd_rows::amx_bf16_usable(), "amx_bf16: this CPU or kernel does not allow AMX-BF16");
        TORCH_CHECK(x->dim() == 2 && x->scalar_type() == at::kBFloat16 && x->device().is_cpu(),
                    "amx_bf16: input must be a 2-d bf16 CPU tensor");
        TORCH_CHECK(x->size(1) == k, "amx_bf16: input has ", x->size(1), " features, the weight ", k);
        TORCH_CHECK(n > 0 && n % kBlock == 0 && k > 0 && k % kTileK == 0, "amx_bf16: unsupported shape [", n, ", ", k, "]");
        const at::Tensor xc = x->contiguous();
        const int64_t rows = xc.size(0);
        at::Tensor y = at::empty({rows, n}, x->options());
        inferd_rows::amx_bf16(xc.const_data_ptr<c10::BFloat16>(), rows, w, n, k, y.mutable_data_ptr<c10::BFloat16>());
        return y;
    });
}

}  // extern "C"
