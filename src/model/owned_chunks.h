// How the decode pool's products (gemv_bf16.cpp, gemv_gguf.cpp) split their
// work: thread t of T owns chunks [C t / T, C (t + 1) / T) of a product,
// takes them from the front, then takes other threads' leftover chunks from
// the back. A thread's own chunks are one contiguous run of the weight, known
// before the product starts, so a worker can stream the start of its run of
// the *next* product into its cache while the caller does a layer's serial
// work (`inferd_pool::prefetch_after`); taking from the back keeps the
// threads balanced when one is late. Which thread computes a chunk never
// changes its bits.
#pragma once

#include <atomic>
#include <cstdint>
#include <unordered_map>

#include "cpu_pool.h"

namespace inferd_pool {

constexpr int kMaxOwners = 64;

// The first chunk thread t owns of `chunks` split over `threads`.
inline int64_t first_owned(int64_t chunks, int t, int threads) {
    return chunks * t / threads;
}

class OwnedChunks {
public:
    OwnedChunks(int64_t chunks, int threads) : threads_(threads < kMaxOwners ? threads : kMaxOwners) {
        for (int t = 0; t < threads_; ++t) {
            const uint64_t lo = first_owned(chunks, t, threads_), hi = first_owned(chunks, t + 1, threads_);
            ranges_[t].v.store(lo << 32 | hi, std::memory_order_relaxed);
        }
    }

    int threads() const { return threads_; }

    // Calls f(chunk) for thread t's own chunks, then for the others' left.
    template <class F>
    void work(int t, F&& f) {
        if (t >= threads_) return;
        int64_t c;
        while (claim(ranges_[t].v, true, &c)) f(c);
        for (int i = 1; i < threads_; ++i)
            while (claim(ranges_[(t + i) % threads_].v, false, &c)) f(c);
    }

private:
    // Claims one chunk from the front (own range) or the back (another's):
    // a range is (front << 32 | back) in one atomic word, so each chunk is
    // claimed exactly once.
    static bool claim(std::atomic<uint64_t>& range, bool front, int64_t* c) {
        uint64_t v = range.load(std::memory_order_relaxed);
        for (;;) {
            const uint64_t lo = v >> 32, hi = v & 0xffffffffu;
            if (lo >= hi) return false;
            const uint64_t want = front ? (lo + 1) << 32 | hi : lo << 32 | (hi - 1);
            if (range.compare_exchange_weak(v, want, std::memory_order_relaxed)) {
                *c = static_cast<int64_t>(front ? lo : hi - 1);
                return true;
            }
        }
    }

    struct alignas(64) Range {
        std::atomic<uint64_t> v;
    };
    int threads_;
    Range ranges_[kMaxOwners];
};

// The weight each weight was followed by last time on this thread (an engine
// thread runs the same products in the same order every step), keyed by W's
// `bytes` address. Only used for prefetch hints, so a stale entry costs
// nothing but a useless prefetch.
template <class W>
struct Successors {
    std::unordered_map<uintptr_t, W> next;
    uintptr_t last = 0;
    W after(const W& w) {
        if (last != 0 && last != w.bytes) {
            if (next.size() > 4096) next.clear();  // weights of models since unloaded
            next[last] = w;
        }
        last = w.bytes;
        auto it = next.find(w.bytes);
        return it == next.end() ? W{} : it->second;
    }
};

// Bytes a worker prefetches of its run of the next product: about what
// streams in while the caller does a layer's element-wise work, and well
// inside a core's L2.
constexpr int64_t kPrefetchBytes = 512 * 1024;

// Once worker t of `threads` is done with a product: streams the start of its
// run of the next product (`chunks` chunks of `chunk_bytes` from `bytes`; 0
// when no successor is known) into its cache. Thread 0, the caller, has the
// layer's serial work to do instead.
inline void prefetch_owned_run(uintptr_t bytes, int64_t chunks, int64_t chunk_bytes, int t, int threads) {
    if (bytes == 0 || t == 0) return prefetch_after(nullptr, nullptr);
    const int64_t c0 = first_owned(chunks, t, threads), c1 = first_owned(chunks, t + 1, threads);
    const char* begin = reinterpret_cast<const char*>(bytes) + c0 * chunk_bytes;
    const int64_t len = (c1 - c0) * chunk_bytes;
    prefetch_after(begin, begin + (len < kPrefetchBytes ? len : kPrefetchBytes));
}

}  // namespace inferd_pool
