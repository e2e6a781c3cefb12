// bf16 products of a decode step's few rows against a oneDNN-packed weight,
// on CPUs with AVX512_BF16 (Zen 4, Sapphire Rapids and later).
//
// At a few rows a linear layer mostly streams its weight. oneDNN does that
// well, but every call pays ~5 us of primitive lookup, descriptors and tensor
// set-up. This kernel reads the very bytes oneDNN packed (its BA16a64b2a
// layout: per block of 64 outputs, every input pair in order, 64 outputs x 2
// inputs per 256 bytes), so it costs no second copy of the weights, and works
// on the outputs in 16-wide slices (one 64-byte line of each 256-byte row).
//
// Each output is summed as oneDNN's bf16 brgemm sums it for two or more rows:
// VDPBF16PS over the input pairs in order into a fresh f32 accumulator per
// `step` inputs, each partial sum added to a running total, the total rounded
// to bf16 to nearest even. A row then gets the same bits here as in a larger
// batch that goes to oneDNN. The step is oneDNN's K blocking, which it picks
// from the shapes; gemv_bf16.rs finds it for each weight shape by probing
// (and keeps oneDNN for a shape where no step reproduces it).
//
// Inside a decode-pool scope (cpu_pool.h) a product runs on the pool: each
// thread owns a contiguous run of 64-output blocks, takes them one at a time from
// the front and then others' from the back, and a worker, once done, streams
// the start of its run of the next product's weight into its cache. Elsewhere
// the outputs are split over libtorch's threads. Bits do not depend on which.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <unordered_map>

#include "boxed_op.h"
#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "owned_chunks.h"
#include "row_kernels.h"
#include "shim_error.h"

namespace {

constexpr int64_t kBlock = 64;  // outputs per oneDNN block
constexpr int64_t kLine = 16;   // outputs per 64-byte line: the unit of work
constexpr int64_t kLinesPerBlock = kBlock / kLine;

struct Problem {
    const uint16_t* x;  // rows of bf16 inputs
    int64_t pairs;      // input pairs per row (K / 2)
    const __m512i* w;   // the packed weight, as 64-byte lines
    uint16_t* y;        // [rows, n] bf16
    int64_t n;
    int64_t step_pairs;  // input pairs per fresh accumulator
};

// How far ahead a one-pass tile asks for the weight: 32 input pairs, 8 KiB
// of the block's stream (or the next block's, which follows it).
constexpr int64_t kAheadPairs = 32;

// R rows against G lines; line g starts at `line[g]` (its next input pair is
// kLinesPerBlock lines further) and fills outputs `out[g]`..+16 of each row.
//
// OnePass: these rows are all the rows, so no later pass reads these lines
// again, and the tile prefetches the weight kAheadPairs ahead with the
// non-temporal hint. The hardware prefetchers alone leave one sequential
// stream per thread short of the memory's rate, and a temporal prefetch
// that far ahead fills L2 (and Zen's L3, a victim cache of L2) with lines
// never read twice. One-row steps took 5-10% less time with it (3-row 6%,
// 4-row 2%), 32 pairs ahead against none, 16, 24, 48, 64 and 128 pairs, and
// the temporal hint at 16 and 32 pairs. With more rows a later pass re-reads
// the block's lines from L2, which the hint would have kept them out of.
template <int R, int G, bool OnePass>
INFERD_BF16_TARGET inline void tile(const Problem& pb, int64_t row, const __m512i* const* line, const int64_t* out) {
    __m512 total[R][G];
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) total[r][g] = _mm512_setzero_ps();  // set below; quiets -Wmaybe-uninitialized
    for (int64_t p0 = 0; p0 < pb.pairs; p0 += pb.step_pairs) {
        const int64_t p1 = p0 + pb.step_pairs < pb.pairs ? p0 + pb.step_pairs : pb.pairs;
        __m512 acc[R][G];
        for (int r = 0; r < R; ++r)
            for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
        for (int64_t p = p0; p < p1; ++p) {
            if constexpr (OnePass) {
                // A hint: an address past the weight's end faults on nothing.
                const uintptr_t ahead = reinterpret_cast<uintptr_t>(line[0]) + (p + kAheadPairs) * kLinesPerBlock * 64;
                for (int g = 0; g < G; ++g) _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * g), _MM_HINT_NTA);
            }
            __m512bh wv[G];
            for (int g = 0; g < G; ++g) wv[g] = (__m512bh)_mm512_loadu_si512(line[g] + p * kLinesPerBlock);
            for (int r = 0; r < R; ++r) {
                int pair;  // two bf16 inputs, read as one 32-bit lane
                std::memcpy(&pair, pb.x + 2 * ((row + r) * pb.pairs + p), sizeof pair);
                const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
                for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], xv, wv[g]);
            }
        }
        for (int r = 0; r < R; ++r)
            // The first partial sum is stored, not added to zero: -0 + 0 would be +0.
            for (int g = 0; g < G; ++g) total[r][g] = p0 == 0 ? acc[r][g] : _mm512_add_ps(total[r][g], acc[r][g]);
    }
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) {
            const __m256bh v = _mm512_cvtneps_pbh(total[r][g]);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb.y + (row + r) * pb.n + out[g]), (__m256i)v);
        }
}

template <int G>
INFERD_BF16_TARGET void rows_of(const Problem& pb, int64_t rows, const __m512i* const* line, const int64_t* out) {
    switch (rows) {
        case 1: return tile<1, G, true>(pb, 0, line, out);
        case 2: return tile<2, G, true>(pb, 0, line, out);
        case 3: return tile<3, G, true>(pb, 0, line, out);
        case 4: return tile<4, G, true>(pb, 0, line, out);
        default: break;
    }
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) tile<4, G, false>(pb, r, line, out);
    if (rows - r == 3) return tile<3, G, false>(pb, r, line, out);
    for (; r + 2 <= rows; r += 2) tile<2, G, false>(pb, r, line, out);
    if (r < rows) tile<1, G, false>(pb, r, line, out);
}

// Lines [u0, u1) (line u: outputs 16u..16u+15) for every row, four lines
// (one block, one sequential stream of the weight) at a time, four rows per
// pass (16 accumulators); rows past a pass re-read the block's lines from L2
// rather than the weight from memory. One row keeps four accumulators, which
// is plenty: a row's product waits on memory, not on VDPBF16PS's latency.
INFERD_BF16_TARGET void run_lines(const Problem& pb, int64_t rows, int64_t u0, int64_t u1) {
    const int64_t block_lines = pb.pairs * kLinesPerBlock;
    while (u0 < u1) {
        const __m512i* line[kLinesPerBlock];
        int64_t out[kLinesPerBlock];
        int g = 0;
        for (; g < kLinesPerBlock && u0 < u1; ++g, ++u0) {
            line[g] = pb.w + (u0 / kLinesPerBlock) * block_lines + u0 % kLinesPerBlock;
            out[g] = u0 * kLine;
        }
        switch (g) {
            case 4: rows_of<4>(pb, rows, line, out); break;
            case 3: rows_of<3>(pb, rows, line, out); break;
            case 2: rows_of<2>(pb, rows, line, out); break;
            default: rows_of<1>(pb, rows, line, out); break;
        }
    }
}

// A weight as the kernel sees it: packed bytes and shape.
struct Weight {
    uintptr_t bytes = 0;
    int64_t n = 0, k = 0;
    int64_t block_bytes() const { return k / 2 * 256; }
};

// A block (64 outputs, four lines) is the unit of work; thread t of
// `threads` owns blocks [t*C/threads, (t+1)*C/threads), one contiguous run
// of the packed bytes. A block is 74-197 KB for SmolLM2's shapes: a thread
// that runs out of work waits at most one block for the other. (Two blocks
// per item, which gave one row eight accumulators, made that wait twice as
// long: a one-row step of 121 products took 3-6% longer, head and layers.)
thread_local inferd_pool::Successors<Weight> successors;

// One product split over the pool (owned_chunks.h); a worker, once done,
// streams the start of its run of the next product into its cache.
struct LinesJob {
    const Problem* pb;
    int64_t rows;
    Weight next;
    inferd_pool::OwnedChunks owned;  // of blocks (n is a multiple of kBlock)

    LinesJob(const Problem* pb, int64_t rows, Weight next, int threads)
        : pb(pb), rows(rows), next(next), owned(pb->n / kBlock, threads) {}

    void operator()(int t, int /*running*/) {
        const int threads = owned.threads();
        if (t >= threads) return;
        owned.work(t, [&](int64_t b) { run_lines(*pb, rows, b * kLinesPerBlock, (b + 1) * kLinesPerBlock); });
        inferd_pool::prefetch_owned_run(next.bytes, next.n / kBlock, next.block_bytes(), t, threads);
    }
};

}  // namespace

void inferd_rows::gemv_bf16(const bf16* x, int64_t rows, uintptr_t w, int64_t n, int64_t k, int64_t step, bf16* y) {
    const Problem pb{reinterpret_cast<const uint16_t*>(x), k / 2, reinterpret_cast<const __m512i*>(w), reinterpret_cast<uint16_t*>(y), n,
                     step / 2};
    if (inferd_pool::active()) {
        LinesJob job(&pb, rows, successors.after(Weight{w, n, k}), inferd_pool::threads());
        inferd_pool::run(job);
    } else {
        // Lines are the work items: each thread gets a contiguous range,
        // balanced to one line.
        at::parallel_for(0, n / kLine, 1, [&](int64_t u0, int64_t u1) { run_lines(pb, rows, u0, u1); });
    }
}

extern "C" {

int inferd_gemv_bf16_available() {
    return inferd_cpu::cpu_has_avx512_bf16() ? 1 : 0;
}

// The address and size of the bytes behind a oneDNN-packed weight (from
// inferd_pack_linear_weight). 0 on success.
int inferd_onednn_weight_bytes(const at::Tensor* w, uintptr_t* ptr, int64_t* nbytes) {
    return inferd_shim::run([&] {
        // Load time only (once per weight), so looked up on each call.
        *ptr = static_cast<uintptr_t>(
            inferd_shim::call_int(inferd_shim::find_op("mkldnn::data_ptr"), "mkldnn::data_ptr", {*w}));
        *nbytes = inferd_shim::call_int(inferd_shim::find_op("mkldnn::_nbytes"), "mkldnn::_nbytes", {*w});
    }) ? 0 : 1;
}

// x: bf16 [M, K], any M; w: the bytes of a bf16 [N, K] weight that oneDNN
// packed as BA16a64b2a (N % 64 == 0, K % 16 == 0), read-only and alive for the
// call; step: inputs per fresh accumulator (even). Returns bf16 [M, N].
at::Tensor* inferd_gemv_bf16(const at::Tensor* x, uintptr_t w, int64_t n, int64_t k, int64_t step) {
    return inferd_shim::new_tensor([&] {
        TORCH_CHECK(inferd_cpu::cpu_has_avx512_bf16(), "gemv_bf16: this CPU has no AVX512_BF16");
        TORCH_CHECK(x->dim() == 2 && x->scalar_type() == at::kBFloat16 && x->device().is_cpu(),
                    "gemv_bf16: input must be a 2-d bf16 CPU tensor");
        TORCH_CHECK(x->size(1) == k, "gemv_bf16: input has ", x->size(1), " features, the weight ", k);
        TORCH_CHECK(n > 0 && n % kBlock == 0 && k > 0 && k % 16 == 0 && step > 0 && step % 2 == 0,
                    "gemv_bf16: unsupported shape [", n, ", ", k, "] or step ", step);
        const at::Tensor xc = x->contiguous();
        const int64_t rows = xc.size(0);
        at::Tensor y = at::empty({rows, n}, x->options());
        inferd_rows::gemv_bf16(xc.const_data_ptr<c10::BFloat16>(), rows, w, n, k, step, y.mutable_data_ptr<c10::BFloat16>());
        return y;
    });
}

}  // extern "C"
