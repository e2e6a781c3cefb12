// The AVX512-BF16 work item of decode attention (decode_attention_bf16.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace inferd_decode_bf16 {

// Whether `attend` serves this head dim and group on this CPU: head dim 64 or
// 128, at most 16 query heads per kv head, AVX512-BF16.
bool applies(int64_t d, int64_t group);

// decode_attention.cpp's work item for bf16 (the same arguments, bf16 as raw
// bits): `group` query heads (q: [group][d]) of the kv head at `kv_off` of
// each record against positions p0 .. p1 of one sequence in the paged pools
// (records of `rec` values, blocks of `block_size` found through `table`).
// Writes the normalized result to out ([group][d]) or, when out is null,
// head h's partial (max, sum, undivided P.V) to part + h * part_stride.
void attend(const uint16_t* q, int64_t d, int64_t group, const uint16_t* k_pool, const uint16_t* v_pool, int64_t kv_off, int64_t rec,
            const int64_t* table, int64_t block_size, int64_t p0, int64_t p1, float scale, uint16_t* out, float* part,
            int64_t part_stride, std::vector<float>& buf);

}  // namespace inferd_decode_bf16
