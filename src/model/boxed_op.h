// Calling a libtorch operator that tch has no binding for (oneDNN's mkldnn::
// ops) by name, boxed, through the dispatcher. Shared by packed_linear.cpp
// and gemv_bf16.cpp; failures throw c10::Error for shim_error.h's guard.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdint>
#include <optional>

namespace inferd_shim {

inline std::optional<c10::OperatorHandle> find_op(const char* name) {
    return c10::Dispatcher::singleton().findSchema({name, ""});
}

// The one value `op` returns for `stack`; `name` is for the messages.
inline c10::IValue call_one(const std::optional<c10::OperatorHandle>& op, const char* name, torch::jit::Stack stack) {
    TORCH_CHECK(op.has_value(), "operator ", name, " is not registered in this libtorch");
    op->callBoxed(&stack);
    TORCH_CHECK(stack.size() == 1, "operator ", name, " returned ", stack.size(), " values, expected one");
    return std::move(stack[0]);
}

inline at::Tensor call_tensor(const std::optional<c10::OperatorHandle>& op, const char* name, torch::jit::Stack stack) {
    c10::IValue v = call_one(op, name, std::move(stack));
    TORCH_CHECK(v.isTensor(), "operator ", name, " returned no tensor");
    return v.toTensor();
}

inline int64_t call_int(const std::optional<c10::OperatorHandle>& op, const char* name, torch::jit::Stack stack) {
    c10::IValue v = call_one(op, name, std::move(stack));
    TORCH_CHECK(v.isInt(), "operator ", name, " returned no integer");
    return v.toInt();
}

}  // namespace inferd_shim
