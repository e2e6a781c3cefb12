"""GGUF loader fixtures, written with gguf-py (llama.cpp's own Python package).

Writes into --out:
- types.gguf: one tensor per ggml type we load (F32, F16, BF16, Q8_0, Q4_0,
  Q4_1; a few shapes), every metadata value type, alignment 64 (not the
  default 32, so the reader must honour general.alignment).
- types_expected.safetensors: gguf-py's own dequantization of each tensor, as
  float32 in torch order, under the tensor's GGUF name.
- metadata.json: {key: {"type": ..., "value": ...}} of the metadata written.
- llama.gguf + llama_expected.safetensors: a one-layer llama-arch model whose
  q/k projections (and a q bias) were permuted as llama.cpp's converter does;
  the expected file holds the original Hugging Face tensors.
- gpt2.gguf + gpt2_expected.safetensors: a one-layer gpt2-arch model; the
  expected file holds the HF Conv1D ([in, out]) weights.
"""
import argparse
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.numpy import save_file


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def sample(rng: np.random.Generator, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32) * 2.0
    flat = x.reshape(-1)
    # Some blocks that exercise edge cases: all zero (scale 0), constant,
    # large magnitudes.
    if flat.size >= 128:
        flat[:32] = 0.0
        flat[32:64] = 1.5
        flat[64:96] *= 1000.0
    return x


def write_types(out: str, rng: np.random.Generator) -> None:
    w = gguf.GGUFWriter(os.path.join(out, "types.gguf"), arch="test")
    w.add_custom_alignment(64)
    meta = {}

    def put(key, kind, value, add):
        add(key, value)
        meta[key] = {"type": kind, "value": value}

    put("test.u8", "u8", 200, w.add_uint8)
    put("test.i8", "i8", -100, w.add_int8)
    put("test.u16", "u16", 60000, w.add_uint16)
    put("test.i16", "i16", -30000, w.add_int16)
    put("test.u32", "u32", 4000000000, w.add_uint32)
    put("test.i32", "i32", -2000000000, w.add_int32)
    put("test.u64", "u64", 18000000000000000000, w.add_uint64)
    put("test.i64", "i64", -9000000000000000000, w.add_int64)
    put("test.f32", "f32", 0.15625, w.add_float32)
    put("test.f64", "f64", 3.141592653589793, w.add_float64)
    put("test.bool_true", "bool", True, w.add_bool)
    put("test.bool_false", "bool", False, w.add_bool)
    put("test.string", "string", "héllo, wörld ✓", w.add_string)
    # add_string skips empty values; write the empty string explicitly.
    put("test.empty_string", "string", "", lambda k, v: w.add_key_value(k, v, gguf.GGUFValueType.STRING))
    put("test.strings", "array_string", ["a", "", "Ġthe", "<|im_end|>", "日本"] + [f"tok{i}" for i in range(2000)], w.add_array)
    put("test.ints", "array_i32", [1, -2, 3], w.add_array)

    tensors = [
        ("f32", T.F32, [64, 96]),
        ("f32_1d", T.F32, [7]),
        ("f16", T.F16, [64, 96]),
        ("bf16", T.BF16, [16, 32]),
        ("q8_0", T.Q8_0, [64, 96]),
        ("q8_0_3d", T.Q8_0, [2, 3, 64]),
        ("q4_0", T.Q4_0, [64, 96]),
        ("q4_1", T.Q4_1, [64, 96]),
        ("q4_1_b", T.Q4_1, [128, 32]),
    ]
    expected = {}
    for name, qtype, shape in tensors:
        x = sample(rng, shape)
        if qtype == T.F32:
            w.add_tensor(name, x)
            expected[name] = x
        elif qtype == T.F16:
            h = x.astype(np.float16)
            w.add_tensor(name, h)
            expected[name] = h.astype(np.float32)
        else:
            q = quants.quantize(x, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            expected[name] = np.ascontiguousarray(quants.dequantize(q, qtype).astype(np.float32).reshape(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(out, "types_expected.safetensors"))
    with open(os.path.join(out, "metadata.json"), "w") as f:
        json.dump(
            {"metadata": meta, "tensors": {n: {"type": q.name, "shape": s} for n, q, s in tensors}},
            f,
            ensure_ascii=False,
            indent=1,
        )


def write_llama(out: str, rng: np.random.Generator) -> None:
    hidden, n_head, n_kv, head_dim, vocab, ffn = 32, 4, 2, 8, 10, 48
    w = gguf.GGUFWriter(os.path.join(out, "llama.gguf"), arch="llama")
    w.add_uint32("llama.embedding_length", hidden)
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.feed_forward_length", ffn)
    w.add_uint32("llama.attention.head_count", n_head)
    w.add_uint32("llama.attention.head_count_kv", n_kv)
    w.add_uint32("llama.context_length", 256)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 50000.0)
    w.add_string("llama.rope.scaling.type", "linear")
    w.add_float32("llama.rope.scaling.factor", 2.0)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.eot_token_id", 7)

    def f32(shape):
        return rng.standard_normal(shape).astype(np.float32)

    # q/k rows numbered so a wrong permutation is visible at a glance.
    hf = {
        "model.embed_tokens.weight": f32([vocab, hidden]),
        "model.norm.weight": f32([hidden]),
        "lm_head.weight": f32([vocab, hidden]),
        "model.layers.0.input_layernorm.weight": f32([hidden]),
        "model.layers.0.post_attention_layernorm.weight": f32([hidden]),
        "model.layers.0.self_attn.q_proj.weight": np.arange(hidden * hidden, dtype=np.float32).reshape(hidden, hidden),
        "model.layers.0.self_attn.q_proj.bias": np.arange(hidden, dtype=np.float32),
        "model.layers.0.self_attn.k_proj.weight": np.arange(n_kv * head_dim * hidden, dtype=np.float32).reshape(n_kv * head_dim, hidden),
        "model.layers.0.self_attn.v_proj.weight": f32([n_kv * head_dim, hidden]),
        "model.layers.0.self_attn.o_proj.weight": f32([hidden, hidden]),
        "model.layers.0.mlp.gate_proj.weight": f32([ffn, hidden]),
        "model.layers.0.mlp.up_proj.weight": f32([ffn, hidden]),
        "model.layers.0.mlp.down_proj.weight": f32([hidden, ffn]),
    }
    names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "blk.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.attn_q.bias": "model.layers.0.self_attn.q_proj.bias",
        "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
        "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
        "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
        "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
        "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
    }
    for g, h in names.items():
        x = hf[h]
        if g.startswith("blk.0.attn_q."):
            x = permute(x, n_head)
        elif g.startswith("blk.0.attn_k."):
            x = permute(x, n_kv)
        w.add_tensor(g, np.ascontiguousarray(x))
    w.add_tensor("rope_freqs.weight", np.ones([head_dim // 2], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(hf, os.path.join(out, "llama_expected.safetensors"))


def write_gpt2(out: str, rng: np.random.Generator) -> None:
    hidden, vocab, ctx = 16, 12, 20
    w = gguf.GGUFWriter(os.path.join(out, "gpt2.gguf"), arch="gpt2")
    w.add_uint32("gpt2.embedding_length", hidden)
    w.add_uint32("gpt2.block_count", 1)
    w.add_uint32("gpt2.feed_forward_length", 4 * hidden)
    w.add_uint32("gpt2.attention.head_count", 2)
    w.add_uint32("gpt2.context_length", ctx)
    w.add_float32("gpt2.attention.layer_norm_epsilon", 1e-5)

    def f32(shape):
        return rng.standard_normal(shape).astype(np.float32)

    # HF GPT-2 Conv1D weights are [in, out]; GGUF stores them as linear [out, in].
    hf = {
        "transformer.wte.weight": f32([vocab, hidden]),
        "transformer.wpe.weight": f32([ctx, hidden]),
        "transformer.ln_f.weight": f32([hidden]),
        "transformer.ln_f.bias": f32([hidden]),
        "transformer.h.0.ln_1.weight": f32([hidden]),
        "transformer.h.0.ln_1.bias": f32([hidden]),
        "transformer.h.0.attn.c_attn.weight": f32([hidden, 3 * hidden]),
        "transformer.h.0.attn.c_attn.bias": f32([3 * hidden]),
        "transformer.h.0.attn.c_proj.weight": f32([hidden, hidden]),
        "transformer.h.0.attn.c_proj.bias": f32([hidden]),
        "transformer.h.0.ln_2.weight": f32([hidden]),
        "transformer.h.0.ln_2.bias": f32([hidden]),
        "transformer.h.0.mlp.c_fc.weight": f32([hidden, 4 * hidden]),
        "transformer.h.0.mlp.c_fc.bias": f32([4 * hidden]),
        "transformer.h.0.mlp.c_proj.weight": f32([4 * hidden, hidden]),
        "transformer.h.0.mlp.c_proj.bias": f32([hidden]),
    }
    names = {
        "token_embd.weight": "transformer.wte.weight",
        "position_embd.weight": "transformer.wpe.weight",
        "output_norm.weight": "transformer.ln_f.weight",
        "output_norm.bias": "transformer.ln_f.bias",
        "blk.0.attn_norm.weight": "transformer.h.0.ln_1.weight",
        "blk.0.attn_norm.bias": "transformer.h.0.ln_1.bias",
        "blk.0.attn_qkv.weight": "transformer.h.0.attn.c_attn.weight",
        "blk.0.attn_qkv.bias": "transformer.h.0.attn.c_attn.bias",
        "blk.0.attn_output.weight": "transformer.h.0.attn.c_proj.weight",
        "blk.0.attn_output.bias": "transformer.h.0.attn.c_proj.bias",
        "blk.0.ffn_norm.weight": "transformer.h.0.ln_2.weight",
        "blk.0.ffn_norm.bias": "transformer.h.0.ln_2.bias",
        "blk.0.ffn_up.weight": "transformer.h.0.mlp.c_fc.weight",
        "blk.0.ffn_up.bias": "transformer.h.0.mlp.c_fc.bias",
        "blk.0.ffn_down.weight": "transformer.h.0.mlp.c_proj.weight",
        "blk.0.ffn_down.bias": "transformer.h.0.mlp.c_proj.bias",
    }
    for g, h in names.items():
        x = hf[h]
        if x.ndim == 2 and ".h.0." in h:
            x = x.T
        w.add_tensor(g, np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(hf, os.path.join(out, "gpt2_expected.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(1234)
    write_types(args.out, rng)
    write_llama(args.out, rng)
    write_gpt2(args.out, rng)


if __name__ == "__main__":
    main()
