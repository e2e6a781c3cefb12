// A LLaMA-family decode step of a few rows in one native call: every layer's
// norms, products, rotary, K/V write, attention and SwiGLU, then the final
// norm, on raw bf16 rows (decode_stack.rs says when it applies).
//
// Why: at one stream a SmolLM2 step is 121 products with ~10 small ops
// between each pair, and each small op through tch and libtorch's dispatcher
// (an FFI call, a TensorImpl, an output allocation, TensorIterator set-up)
// costs microseconds while it moves a few KB. Here those ops are plain loops
// over scratch rows that stay in cache, and the products and attention are
// the same kernels the tensor path calls (row_kernels.h), in the same order,
// so the pool's prefetch of the next product still works and every row gets
// the bits the tensor path gives it (tests/decode_stack.rs checks logits and
// K/V bit for bit).

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "row_kernels.h"
#include "shim_error.h"

namespace {

using inferd_rows::bf16;

// A product's weight as its row kernel reads it (decode_stack.rs builds it
// from the layer's Linear, which keeps the bytes alive).
struct Product {
    int64_t kind;  // kBf16Rows (param: inputs per accumulator), kGguf (param: layout 4 or 8) or kBf16Amx
    uintptr_t bytes;
    int64_t n, k, param;
};
constexpr int64_t kBf16Rows = 1;
constexpr int64_t kGguf = 2;
constexpr int64_t kBf16Amx = 3;

// One layer's weights and K/V pools ([blocks, block size, kv heads, head dim]).
struct Layer {
    Product qkv, o, gate_up, down;
    const at::Tensor* input_norm;
    const at::Tensor* post_norm;
    const at::Tensor* k_pool;
    const at::Tensor* v_pool;
};

void check_product(const Product& p, int64_t n, int64_t k, const char* what, int64_t layer) {
    TORCH_CHECK(p.bytes != 0 && p.n == n && p.k == k, "decode stack: layer ", layer, "'s ", what, " is [", p.n, ", ", p.k, "], expected [", n,
                ", ", k, "]");
    const bool bf16_rows = p.kind == kBf16Rows && n % 64 == 0 && k % 16 == 0 && p.param > 0 && p.param % 2 == 0;
    const bool gguf = p.kind == kGguf && n % 16 == 0 && k % 32 == 0 && (p.param == 4 || p.param == 8);
    const bool amx = p.kind == kBf16Amx && n % 64 == 0 && k % 32 == 0 && inferd_rows::amx_bf16_usable();
    TORCH_CHECK(bf16_rows || gguf || amx, "decode stack: layer ", layer, "'s ", what, " has no row kernel (kind ", p.kind, ")");
}

void product(const Product& p, const bf16* x, int64_t rows, bf16* y) {
    if (p.kind == kBf16Rows) {
        inferd_rows::gemv_bf16(x, rows, p.bytes, p.n, p.k, p.param, y);
    } else if (p.kind == kBf16Amx) {
        inferd_rows::amx_bf16(x, rows, p.bytes, p.n, p.k, y);
    } else {
        inferd_rows::gemv_gguf(x, rows, reinterpret_cast<const uint8_t*>(p.bytes), p.n, p.k, p.param, y);
    }
}

const bf16* bf16_values(const at::Tensor* t, int64_t len, const char* what) {
    TORCH_CHECK(t != nullptr && t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->numel() == len,
                "decode stack: ", what, " must be a contiguous bf16 CPU tensor of ", len, " values");
    return t->const_data_ptr<bf16>();
}

const int64_t* int64_values(const at::Tensor* t, const char* what) {
    TORCH_CHECK(t != nullptr && t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous(), "decode stack: ",
                what, " must be a contiguous CPU int64 vector");
    return t->const_data_ptr<int64_t>();
}

// The step's activations, per calling thread: the same pages every step.
thread_local std::vector<bf16> scratch;

}  // namespace

extern "C" {

// x: the embedded tokens, bf16 [T, H], one decode token per sequence;
// layers[count]; cos, sin: bf16 [T, D] (any shape of T * D values);
// slots [T], ctx_lens [T], tables [T * nb] (sequence i's blocks at i * nb):
// CPU int64. Writes each row's K/V, returns final_norm(hidden) bf16 [T, H].
at::Tensor* inferd_decode_stack(const at::Tensor* x, const Layer* layers, int64_t count, const at::Tensor* final_norm, double eps,
                                const at::Tensor* cos, const at::Tensor* sin, const at::Tensor* slots, const at::Tensor* tables,
                                const at::Tensor* ctx_lens, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t inter, double scale) {
    return inferd_shim::new_tensor([&] {
        TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kBFloat16 && x->dim() == 2 && x->is_contiguous() && x->size(0) > 0,
                    "decode stack: the input must be a contiguous bf16 CPU [T, H]");
        TORCH_CHECK(count > 0 && heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0 && head_dim % 2 == 0 && inter > 0,
                    "decode stack: bad shape (", count, " layers, ", heads, " heads, ", kv_heads, " kv heads, head dim ", head_dim, ")");
        const int64_t rows = x->size(0), h = x->size(1);
        const int64_t attn_n = heads * head_dim, rec = kv_heads * head_dim, qkv_n = attn_n + 2 * rec;
        const bf16* cp = bf16_values(cos, rows * head_dim, "rotary cos");
        const bf16* sp = bf16_values(sin, rows * head_dim, "rotary sin");
        const bf16* fw = bf16_values(final_norm, h, "final norm weight");
        const int64_t* slot = int64_values(slots, "slots");
        const int64_t* tab = int64_values(tables, "block tables");
        const int64_t* lens = int64_values(ctx_lens, "context lengths");
        TORCH_CHECK(slots->numel() == rows && ctx_lens->numel() == rows && tables->numel() % rows == 0,
                    "decode stack: slots, context lengths and block tables must cover ", rows, " sequences");
        const int64_t nb = tables->numel() / rows;
        const at::Tensor& pool0 = *layers[0].k_pool;
        TORCH_CHECK(pool0.dim() == 4 && pool0.size(2) == kv_heads && pool0.size(3) == head_dim,
                    "decode stack: KV pools must be [blocks, block size, ", kv_heads, ", ", head_dim, "]");
        const int64_t blocks = pool0.size(0), block_size = pool0.size(1);
        std::vector<bf16*> k_pools(static_cast<size_t>(count)), v_pools(static_cast<size_t>(count));
        for (int64_t l = 0; l < count; ++l) {
            const Layer& ly = layers[l];
            bf16_values(ly.input_norm, h, "input norm weight");
            bf16_values(ly.post_norm, h, "post-attention norm weight");
            for (const at::Tensor* pool : {ly.k_pool, ly.v_pool}) {
                TORCH_CHECK(pool->device().is_cpu() && pool->scalar_type() == at::kBFloat16 && pool->is_contiguous() && pool->sizes() == pool0.sizes(),
                            "decode stack: layer ", l, "'s KV pools must be contiguous bf16 ", pool0.sizes());
            }
            k_pools[l] = ly.k_pool->data_ptr<bf16>();
            v_pools[l] = ly.v_pool->data_ptr<bf16>();
            check_product(ly.qkv, qkv_n, h, "qkv projection", l);
            check_product(ly.o, h, attn_n, "output projection", l);
            check_product(ly.gate_up, 2 * inter, h, "gate/up projection", l);
            check_product(ly.down, h, inter, "down projection", l);
        }
        for (int64_t r = 0; r < rows; ++r) {
            TORCH_CHECK(slot[r] >= 0 && slot[r] < blocks * block_size, "decode stack: KV slot ", slot[r], " outside the pool's ", blocks * block_size,
                        " rows");
            TORCH_CHECK(lens[r] >= 1 && lens[r] <= nb * block_size, "decode stack: context length ", lens[r], " outside 1..=", nb * block_size);
            for (int64_t b = 0; b < nb; ++b) {
                TORCH_CHECK(tab[r * nb + b] >= 0 && tab[r * nb + b] < blocks, "decode stack: block ", tab[r * nb + b], " outside the pool's ", blocks);
            }
        }

        at::Tensor out = at::empty({rows, h}, x->options());
        scratch.resize(static_cast<size_t>(rows * (4 * h + qkv_n + attn_n + 3 * inter)));
        bf16* sums[2] = {scratch.data(), scratch.data() + rows * h};
        bf16* normed = sums[1] + rows * h;
        bf16* delta = normed + rows * h;
        bf16* qkv = delta + rows * h;
        bf16* attn = qkv + rows * qkv_n;
        bf16* gu = attn + rows * attn_n;
        bf16* act = gu + rows * 2 * inter;
        const float feps = static_cast<float>(eps);
        // The residual stream; each norm but the first adds the delta before
        // it into the other sum buffer (as the tensor path's fused norms do).
        const bf16* residual = x->const_data_ptr<bf16>();
        int next_sum = 0;
        auto add_norm = [&](const bf16* d, const bf16* w, bf16* into) {
            if (d == nullptr) {
                inferd_rows::add_rms_norm(residual, nullptr, w, nullptr, into, rows, h, feps);
                return;
            }
            bf16* sum = sums[next_sum];
            next_sum ^= 1;
            inferd_rows::add_rms_norm(residual, d, w, sum, into, rows, h, feps);
            residual = sum;
        };
        const size_t rec_bytes = static_cast<size_t>(rec) * sizeof(bf16);
        for (int64_t l = 0; l < count; ++l) {
            const Layer& ly = layers[l];
            add_norm(l == 0 ? nullptr : delta, ly.input_norm->const_data_ptr<bf16>(), normed);
            product(ly.qkv, normed, rows, qkv);
            inferd_rows::rotary(qkv, qkv_n, cp, sp, rows, heads + kv_heads, head_dim);
            for (int64_t r = 0; r < rows; ++r) {
                std::memcpy(k_pools[l] + slot[r] * rec, qkv + r * qkv_n + attn_n, rec_bytes);
                std::memcpy(v_pools[l] + slot[r] * rec, qkv + r * qkv_n + attn_n + rec, rec_bytes);
            }
            inferd_rows::decode_attention(qkv, qkv_n, rows, heads, head_dim, k_pools[l], v_pools[l], block_size, kv_heads, tab, nb, lens,
                                          static_cast<float>(scale), attn);
            product(ly.o, attn, rows, delta);
            add_norm(delta, ly.post_norm->const_data_ptr<bf16>(), normed);
            product(ly.gate_up, normed, rows, gu);
            inferd_rows::silu_mul(gu, act, rows, inter);
            product(ly.down, act, rows, delta);
        }
        add_norm(delta, fw, out.mutable_data_ptr<bf16>());
        return out;
    });
}

}  // extern "C"
