// libtorch's InferenceMode as a guard the Rust side can hold.
//
// tch only offers no_grad. InferenceMode also takes the autograd and
// inplace-or-view dispatch keys out of every op's path (no version counter
// bumps, no autograd fallback for ops without a derivative, such as the
// oneDNN packed linear), which is a measurable share of a CPU decode step's
// ~1000 small ops. The guard is thread-local and must be dropped on the
// thread that made it, innermost first.

#include <c10/core/InferenceMode.h>

extern "C" {

void* inferd_inference_mode_enter() {
    try {
        return new c10::InferenceMode(true);
    } catch (...) {
        return nullptr;
    }
}

void inferd_inference_mode_exit(void* guard) {
    delete static_cast<c10::InferenceMode*>(guard);
}

}  // extern "C"
