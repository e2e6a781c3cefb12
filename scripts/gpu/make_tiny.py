"""Tiny random LLaMA / Qwen2 (attention bias) / GPT-2 models for the CUDA parity check.

The architectures, sizes and weight randomisation are weights/fixtures_tiny.py's
(the CPU parity fixtures), imported from there so both checks cover the same
models; this script only writes them where asked, adds a byte tokenizer.json
(vocab 256 = the 256 bytes) and a prompts.json of token id prompts of several
lengths for `inferd logits`. Nothing is downloaded.

    python make_tiny.py --out DIR     ->  DIR/tiny-llama, DIR/tiny-qwen2, DIR/tiny-gpt2
"""
import argparse
import importlib.util
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import byte_bpe_tokenizer  # noqa: E402

# Lengths of the prompts: block-aligned and not, a single token, one past GPT-2's
# half context; all within every tiny model's positions (GPT-2: 128).
PROMPT_LENS = [40, 7, 16, 33, 1, 64, 100]


def fixtures_tiny():
    """weights/fixtures_tiny.py, found next to the repo's or the bundle's scripts/."""
    for root in (os.path.dirname(os.path.dirname(HERE)), os.getcwd()):
        path = os.path.join(root, "weights", "fixtures_tiny.py")
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("fixtures_tiny", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    sys.exit("make_tiny.py: weights/fixtures_tiny.py not found (run from the repo or the bundle)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ft = fixtures_tiny()
    torch.manual_seed(0)
    made = []
    for i, (name, make) in enumerate([("tiny-llama", ft.llama), ("tiny-qwen2", ft.qwen2), ("tiny-gpt2", ft.gpt2)]):
        model = make().eval()
        ft.randomise(model, seed=100 + i)
        d = os.path.join(args.out, name)
        model.save_pretrained(d, safe_serialization=True)
        byte_bpe_tokenizer(d, vocab_size=ft.VOCAB, specials=())
        g = torch.Generator().manual_seed(7 + i)
        prompts = [torch.randint(0, ft.VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENS]
        with open(os.path.join(d, "prompts.json"), "w") as f:
            json.dump({"prompts": prompts}, f)
        made.append(name)
        print(f"  {name}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"{len(prompts)} prompts ({sum(PROMPT_LENS)} tokens)", flush=True)
    print(f"make_tiny: wrote {', '.join(made)} to {args.out}")


if __name__ == "__main__":
    main()
