// A Rust loop body run over [0, n) by at::parallel_for, on libtorch's
// intra-op threads (parallel_for.rs wraps it). The body is an extern "C"
// function that never unwinds: the Rust side catches its panics.

#include <ATen/Parallel.h>

#include <cstdint>
#include <exception>

extern "C" {

typedef void (*inferd_range_body)(void* ctx, int64_t begin, int64_t end);

// 0 when every range ran; 1 when libtorch threw before or around the body
// (the body itself never throws), in which case some ranges may not have run.
int inferd_parallel_for(int64_t n, int64_t grain, inferd_range_body body, void* ctx) {
    try {
        at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
        return 0;
    } catch (const std::exception&) {
        return 1;
    }
}

}  // extern "C"
