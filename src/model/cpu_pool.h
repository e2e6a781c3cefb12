// A small pool of spinning CPU threads for a decode step's parallel loops
// (the bf16 decode-row products and decode attention), used instead of
// libtorch's OpenMP team for those two.
//
// Why not OpenMP: at one stream a step is ~150 short parallel loops with
// serial element-wise work between them, and during that serial work memory
// sits idle while the other cores spin in OpenMP's barrier. A worker of this
// pool may instead stream the next product's weights into its cache while it
// waits (`prefetch_after`), so the serial work overlaps the memory traffic of
// the next loop. Nothing about results changes: every loop item is computed
// the same way whichever thread runs it.
//
// The pool serves a thread between `enter` and `exit` (a decode step whose
// products all go to the row kernel): there libtorch's own parallel loops
// are turned off for the calling thread (its OpenMP thread count is 1), so
// the pool's workers and OpenMP's never compete for the cores. Elsewhere the
// kernels use at::parallel_for as before.
//
// The pool has at::get_num_threads() - 1 workers (taken at the first
// `enter`); the caller is thread 0. One caller at a time: a second thread
// that calls `run` while the pool is busy (two models stepping at once) runs
// its loop alone. Idle workers spin for a short while, then sleep on a futex.
#pragma once

#include <cstddef>

namespace inferd_pool {

// Starts/ends serving the calling thread (nested calls count). `enter`
// creates the pool on first use.
void enter();
void exit();
// Whether the calling thread is between `enter` and `exit`.
bool active();

// body(ctx, thread, threads): runs once on every thread (0 = the caller).
using Body = void (*)(void* ctx, int thread, int threads);

// Runs `body` on the caller and every worker and returns once all have
// returned. `body` must not throw.
void run(Body body, void* ctx);

// Called from inside a body on a worker: once the loop is over and until the
// next one starts, the worker prefetches [begin, end) into its cache. A hint
// only: the bytes are never read as data, so a stale range is harmless
// (prefetching faults on nothing). Ignored on thread 0.
void prefetch_after(const void* begin, const void* end);

// Threads a loop is split over when the pool is free (caller included).
int threads();

template <class F>
void run(F& f) {
    run([](void* c, int t, int n) { (*static_cast<F*>(c))(t, n); }, &f);
}

}  // namespace inferd_pool
