// oneDNN pre-packed linear for CPU, reached through libtorch's dispatcher.
//
// libtorch registers `mkldnn::_reorder_linear_weight` and
// `mkldnn::_linear_pointwise` (the ops torch.compile's CPU weight freezing
// uses), but they are not in ATen's native function list, so tch has no
// binding for them. These C functions call them by name, boxed, and turn a
// C++ exception into a null return plus a message for the Rust side.
//
// Tensors cross the boundary as `at::Tensor*`, which is what tch's
// `C_tensor` handles are; a returned pointer is owned by the caller.

#include <ATen/ATen.h>

#include "boxed_op.h"
#include "shim_error.h"

#include <stdlib.h>

#include <cstring>
#include <optional>
#include <string>

namespace {

// oneDNN's bf16 kernels on a CPU with AMX (Sapphire Rapids onwards) pack the
// weight as AB16b32a2b and sum a row's products in an order that depends on
// how many rows share the call (SmolLM2's shapes in torch 2.11 on a 2-vCPU
// AMX Xeon: a few outputs of 576x1536 differ between 3, 16, 64 and 300 rows),
// so a sequence's greedy tokens would depend on its batch, and no row kernel
// (gemv_bf16.cpp) can match every row count. Capped at AVX512_CORE_BF16,
// oneDNN packs BA16a64b2a and sums as on Zen 4: batch-invariant, and the row
// kernels apply. AMX's speed comes back through inferd's own AMX kernel
// (amx_bf16.cpp), which reads that same packing and takes every bf16 product
// without a bias on such CPUs; oneDNN keeps the rest. An operator who wants
// oneDNN's AMX kernels anyway sets ONEDNN_MAX_CPU_ISA (e.g. ALL) before
// starting inferd; it is never overwritten, and oneDNN then packs for AMX,
// which inferd's kernels refuse to read. Set before main: oneDNN reads the
// variable once, at its first ISA query, and nothing in libtorch's own
// static initialisation makes one.
struct CapOnednnIsa {
    CapOnednnIsa() { setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", 0); }
};
const CapOnednnIsa cap_onednn_isa;

using inferd_shim::call_tensor;
using inferd_shim::find_op;

// Looked up once: findSchema takes the dispatcher's lock, and a handle stays
// valid for the life of the process (libtorch_cpu's ops are never removed).
const std::optional<c10::OperatorHandle>& reorder_op() {
    static const std::optional<c10::OperatorHandle> op = find_op("mkldnn::_reorder_linear_weight");
    return op;
}

const std::optional<c10::OperatorHandle>& linear_op() {
    static const std::optional<c10::OperatorHandle> op = find_op("mkldnn::_linear_pointwise");
    return op;
}

}  // namespace

extern "C" {

// 1 when this libtorch has the oneDNN ops (built with MKLDNN), else 0.
int inferd_packed_linear_available() {
    try {
        return reorder_op().has_value() && linear_op().has_value();
    } catch (...) {
        return 0;
    }
}

// w: dense [out, in]. Returns the weight in oneDNN's blocked layout for
// inputs of about `batch` rows (any row count works with it). Fails for a
// dtype this CPU has no oneDNN kernel for (bf16 wants AVX-512 BW/VL/DQ or
// AVX-NE-CONVERT, f16 AVX512-FP16 or AVX-NE-CONVERT).
at::Tensor* inferd_pack_linear_weight(const at::Tensor* w, int64_t batch) {
    return inferd_shim::new_tensor([&] {
        torch::jit::Stack stack;
        stack.emplace_back(*w);
        stack.emplace_back(batch);
        return call_tensor(reorder_op(), "mkldnn::_reorder_linear_weight", std::move(stack));
    });
}

// x: [rows, in]; w: from inferd_pack_linear_weight; bias: [out] or null.
//
// A single row runs as two (the row twice, then the first output row): for
// one row oneDNN picks a kernel that sums over `in` in another order than
// for two or more (seen at in = 1536 on Zen 4: 6 of 3200 rows differed in
// a bf16 bit), and a sequence's logits must not depend on how many others
// share its step. Reading the weights dominates a one-row product, so the
// second row costs about nothing. Not for f32, packed only on CPUs without
// AVX-512 (layers.rs): there oneDNN's f32 rows are not batch-invariant at any
// row count, and its one-row kernel streams the weights much faster than its
// two-row one (all SmolLM2 products at one row, Zen 3: 39 ms against 63).
at::Tensor* inferd_packed_linear(const at::Tensor* x, const at::Tensor* w, const at::Tensor* bias) {
    return inferd_shim::new_tensor([&] {
        const bool one_row = x->dim() == 2 && x->size(0) == 1 && x->is_contiguous() && x->scalar_type() != at::kFloat;
        torch::jit::Stack stack;
        if (one_row) {
            // Two plain copies of the row: cheaper than expand + contiguous.
            at::Tensor two = at::empty({2, x->size(1)}, x->options());
            const size_t bytes = static_cast<size_t>(x->size(1)) * x->element_size();
            auto* dst = static_cast<char*>(two.data_ptr());
            std::memcpy(dst, x->data_ptr(), bytes);
            std::memcpy(dst + bytes, x->data_ptr(), bytes);
            stack.emplace_back(std::move(two));
        } else {
            stack.emplace_back(*x);
        }
        stack.emplace_back(*w);
        stack.emplace_back(bias ? c10::IValue(*bias) : c10::IValue());
        stack.emplace_back(std::string("none"));
        stack.emplace_back(c10::impl::GenericList(c10::OptionalType::create(c10::NumberType::get())));
        stack.emplace_back(std::string(""));
        at::Tensor y = call_tensor(linear_op(), "mkldnn::_linear_pointwise", std::move(stack));
        // The first row of a contiguous [2, out]: itself contiguous.
        return one_row ? y.narrow(0, 0, 1) : y;
    });
}

// The message of the last failed call on this thread.
const char* inferd_packed_linear_last_error() {
    return inferd_shim::last_error.c_str();
}

}  // extern "C"
