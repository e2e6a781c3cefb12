// The decode-step thread pool declared in cpu_pool.h.
//
// Hand-off: the caller publishes the body, bumps `epoch` and runs its own
// share; each worker sees the new epoch, runs the body, and stores the epoch
// in its own `seen` slot; the caller returns once every slot shows it. The
// body's context lives on the caller's stack, which is sound because no
// worker touches it after storing `seen`.
//
// Between loops a worker prefetches the range its last body asked for, then
// spins, then (after kSpin of nothing) sleeps on the epoch futex.

#include "cpu_pool.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <immintrin.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

namespace inferd_pool {
namespace {

// How long an idle worker spins before it sleeps. A decode step's loops come
// every few microseconds and steps follow each other within a few hundred,
// while a sleeping worker takes tens of microseconds to wake.
constexpr auto kSpin = std::chrono::microseconds(500);
// At most this many workers (the caller makes one more thread).
constexpr int kMaxWorkers = 63;
// Bytes prefetched between two looks at the epoch.
constexpr int64_t kPrefetchBurst = 4096;

struct alignas(64) Seen {
    std::atomic<uint32_t> epoch{0};
};

struct Pool {
    explicit Pool(int workers) : workers(workers), seen(new Seen[workers > 0 ? workers : 1]) {}
    const int workers;
    std::mutex busy;  // held by the one caller whose loop the workers run
    alignas(64) std::atomic<uint32_t> epoch{0};
    alignas(64) std::atomic<int> sleepers{0};
    // Written by the caller before it bumps `epoch`, read by workers after
    // they see the bump.
    Body body = nullptr;
    void* ctx = nullptr;
    std::unique_ptr<Seen[]> seen;
};

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

// The range a worker prefetches between loops; empty on the caller's thread.
thread_local bool on_worker = false;
thread_local const char* prefetch_next = nullptr;
thread_local const char* prefetch_end = nullptr;

void prefetch_some() {
    const char* stop = prefetch_end - prefetch_next > kPrefetchBurst ? prefetch_next + kPrefetchBurst : prefetch_end;
    for (const char* p = prefetch_next; p < stop; p += 64) _mm_prefetch(p, _MM_HINT_T0);
    prefetch_next = stop;
}

void work(Pool* pool, int index) {
    on_worker = true;
    uint32_t last = 0;
    for (;;) {
        auto idle_since = std::chrono::steady_clock::now();
        for (uint32_t polls = 1;; ++polls) {
            const uint32_t e = pool->epoch.load(std::memory_order_acquire);
            if (e != last) {
                last = e;
                break;
            }
            if (prefetch_next < prefetch_end) {
                prefetch_some();
                continue;
            }
            _mm_pause();
            if (polls % 256 == 0 && std::chrono::steady_clock::now() - idle_since > kSpin) {
                pool->sleepers.fetch_add(1, std::memory_order_seq_cst);
                if (pool->epoch.load(std::memory_order_seq_cst) == last) futex_wait(&pool->epoch, last);
                pool->sleepers.fetch_sub(1, std::memory_order_seq_cst);
                idle_since = std::chrono::steady_clock::now();
            }
        }
        pool->body(pool->ctx, index + 1, pool->workers + 1);
        pool->seen[index].epoch.store(last, std::memory_order_release);
    }
}

Pool* the_pool() {
    // Never destroyed: the workers run until the process exits.
    static Pool* pool = [] {
        const int threads = at::get_num_threads();
        const int workers = threads - 1 < 0 ? 0 : (threads - 1 > kMaxWorkers ? kMaxWorkers : threads - 1);
        auto* p = new Pool(workers);
        for (int i = 0; i < workers; ++i) std::thread(work, p, i).detach();
        return p;
    }();
    return pool;
}

}  // namespace

// Per calling thread: how deep in enter/exit, and its OpenMP thread count
// before the outermost enter.
thread_local int depth = 0;
thread_local int saved_omp_threads = 0;

void enter() {
    if (depth++ > 0) return;
    the_pool();  // sized by at::get_num_threads() before it is set to 1 below
    saved_omp_threads = omp_get_max_threads();
    // omp_set_num_threads sets the calling thread's own count: other threads
    // (another model's engine) keep theirs.
    omp_set_num_threads(1);
}

void exit() {
    if (depth == 0 || --depth > 0) return;
    omp_set_num_threads(saved_omp_threads);
}

bool active() {
    return depth > 0;
}

int threads() {
    return the_pool()->workers + 1;
}

void prefetch_after(const void* begin, const void* end) {
    if (!on_worker) return;
    prefetch_next = static_cast<const char*>(begin);
    prefetch_end = static_cast<const char*>(end);
}

void run(Body body, void* ctx) {
    Pool* pool = the_pool();
    std::unique_lock<std::mutex> lock(pool->busy, std::try_to_lock);
    if (pool->workers == 0 || !lock.owns_lock()) {
        body(ctx, 0, 1);
        return;
    }
    pool->body = body;
    pool->ctx = ctx;
    const uint32_t e = pool->epoch.load(std::memory_order_relaxed) + 1;
    pool->epoch.store(e, std::memory_order_seq_cst);
    if (pool->sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(&pool->epoch);
    body(ctx, 0, pool->workers + 1);
    for (int i = 0; i < pool->workers; ++i)
        while (pool->seen[i].epoch.load(std::memory_order_acquire) != e) _mm_pause();
}

}  // namespace inferd_pool

extern "C" {

void inferd_pool_enter() {
    inferd_pool::enter();
}

void inferd_pool_exit() {
    inferd_pool::exit();
}

}  // extern "C"
