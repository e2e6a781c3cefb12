// Shared by the C++ shims: run a body, and turn any C++ exception into a
// failure plus a message the Rust side reads afterwards (an exception must
// never unwind into Rust). The message is thread-local and lives until the
// next failure on the same thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace inferd_shim {

inline thread_local std::string last_error;

// True when `f` returned, false when it threw (then `last_error` says why).
template <typename F>
bool run(F&& f) {
    try {
        f();
        return true;
    } catch (const c10::Error& e) {
        last_error = e.what_without_backtrace();
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unknown C++ exception";
    }
    return false;
}

// The tensor `f` returns, as a new owned handle for the Rust side, or null
// when it threw (then `last_error` says why).
template <typename F>
at::Tensor* new_tensor(F&& f) {
    at::Tensor* out = nullptr;
    run([&] { out = new at::Tensor(f()); });
    return out;
}

}  // namespace inferd_shim
