// Shared by the C++ shims: run a body, and turn any C++ exception into a
// failure plus a message the Rust side reads afterwards (an exception must
// never unwind into Rust). The message is thread-local and lives until the
// next failure on the same thread.
#pragma once

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

}  // namespace inferd_shim
