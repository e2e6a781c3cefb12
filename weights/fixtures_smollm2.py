"""Greedy reference continuations of SmolLM2-135M-Instruct by transformers.

transformers loads the very GGUF inferd serves (dequantized to f32) and its
tokenizer, renders each chat prompt with the model's template, and decodes 32
tokens greedily. For each step it records the margin between the top two
logits, so the Rust test can stop comparing honestly at a near tie.
Writes <out>/greedy.json.
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

NEW_TOKENS = 32
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in one paragraph.",
    "List three primary colors.",
    "Translate 'good morning' into Spanish and German.",
    "What is 12 times 13?",
    "Write a Python function that reverses a string.",
    "Give me two tips for sleeping better.",
    "Who wrote Romeo and Juliet?",
    "Describe the color blue to someone who cannot see.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    d = os.path.join(args.root, "weights", "smollm2-135m-instruct")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    torch.manual_seed(0)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf, dtype=torch.float32).eval()
    print(f"  loaded in {time.time() - t0:.1f}s", flush=True)
    cases = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tok.eos_token_id)
        new = out.sequences[0, ids.shape[1]:].tolist()
        margins = []
        for step_logits in out.logits:
            top2 = torch.topk(step_logits[0].float(), 2).values
            margins.append(float(top2[0] - top2[1]))
        cases.append({"prompt": prompt, "rendered": text, "prompt_ids": ids[0].tolist(),
                      "output_ids": new, "margins": margins,
                      "text": tok.decode(new, skip_special_tokens=True)})
        print(f"  {prompt!r} -> {cases[-1]['text'][:60]!r}", flush=True)
    with open(os.path.join(args.out, "greedy.json"), "w") as f:
        json.dump({"new_tokens": NEW_TOKENS, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
