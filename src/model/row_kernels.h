// The CPU kernels of a decode step on raw bf16 rows, for decode_stack.cpp,
// which runs a whole one-to-few-row decode step in one native call. Each is
// the very loop its file's extern "C" entry runs once it has checked its
// tensors, so a row gets the same bits through either; callers check shapes,
// kinds and indices first (these do not). Products and attention run on the
// decode pool inside a pool scope (cpu_pool.h), else on libtorch's threads.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace inferd_rows {

using bf16 = c10::BFloat16;

// gemv_bf16.cpp: y [rows, n] = x [rows, k] times the oneDNN-packed weight at
// `w` (n % 64 == 0, k % 16 == 0), summed `step` inputs per accumulator.
void gemv_bf16(const bf16* x, int64_t rows, uintptr_t w, int64_t n, int64_t k, int64_t step, bf16* y);

// amx_bf16.cpp: the same product on AMX tiles (k % 32 == 0), every row
// summed alike at any row count; only where amx_bf16_usable().
void amx_bf16(const bf16* x, int64_t rows, uintptr_t w, int64_t n, int64_t k, bf16* y);
bool amx_bf16_usable();

// gemv_gguf.cpp: y [rows, n] = x [rows, k] times the GGUF layout `format`
// (4: Q4, 8: Q8_0) at `w` (n % 16 == 0, k % 32 == 0).
void gemv_gguf(const bf16* x, int64_t rows, const uint8_t* w, int64_t n, int64_t k, int64_t format, bf16* y);
// Whether this CPU runs gemv_gguf (AVX512_BF16 and AVX512_VNNI).
bool gemv_gguf_usable();

// fused_cpu.cpp: out = weight * rms_norm(x + delta) and, with a delta,
// sum = x + delta (x, delta, sum, out: [rows, h]; delta may be null, then
// sum is not written).
void add_rms_norm(const bf16* x, const bf16* delta, const bf16* w, bf16* sum, bf16* out, int64_t rows, int64_t h, float eps);

// fused_cpu.cpp: rotary in place on the first `heads` heads of each row of
// x (rows `row_stride` apart, heads of d values), cos and sin [rows, d].
void rotary(bf16* x, int64_t row_stride, const bf16* cos, const bf16* sin, int64_t rows, int64_t heads, int64_t d);

// fused_cpu.cpp: out [rows, inter] = silu(gate) * up for gu [rows, 2 inter]
// = [gate | up].
void silu_mul(const bf16* gu, bf16* out, int64_t rows, int64_t inter);

// decode_attention.cpp: one query row per sequence (row i of q at
// q + i * q_stride, `heads` heads of d) against its ctx_lens[i] cached
// positions in the pools ([blocks, block_size, kvh, d]), blocks found at
// tables[i * nb ..]; out [n, heads, d].
void decode_attention(const bf16* q, int64_t q_stride, int64_t n, int64_t heads, int64_t d, const bf16* k_pool, const bf16* v_pool,
                      int64_t block_size, int64_t kvh, const int64_t* tables, int64_t nb, const int64_t* ctx_lens, float scale, bf16* out);

}  // namespace inferd_rows
