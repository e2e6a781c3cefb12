"""Helpers shared by the scripts in scripts/gpu/ (offline: nothing is downloaded).

- `byte_bpe_tokenizer`: a byte-level BPE tokenizer.json of an exact vocabulary
  size, built from rules instead of trained, so it needs no corpus and no
  network. Its merges are real (common letter pairs, then triples...), so text
  tokenizes to roughly two bytes a token, and every id below `vocab_size`
  decodes, which the server needs when a random model samples any id.
- `load_hf`: transformers' from_pretrained across the 4.x (`torch_dtype`) and
  5.x (`dtype`) spellings.
- `device_sync`, `gpu_name`: small torch conveniences.
"""
import json
import os
import string

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character map (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_bpe_tokenizer(out_dir: str, vocab_size: int, specials=("<unk>", "<s>", "</s>"),
                       chat_template: str | None = None) -> dict:
    """Write tokenizer.json + tokenizer_config.json with exactly `vocab_size` ids.

    Ids: the special tokens first (LLaMA's 0, 1, 2 by default), then the 256
    byte symbols, then merged tokens: pairs over space + lowercase letters,
    triples over them, pairs over all printable ASCII, then longer ones, until
    the vocabulary is full. With `vocab_size == 256 + len(specials)` or less
    there are no merges (a byte tokenizer; fewer ids than bytes is refused).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    b2u = bytes_to_unicode()
    vocab = {}
    for s in specials:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than 256 bytes + {len(specials)} specials")
    small = [b2u[ord(" ")]] + [b2u[ord(c)] for c in string.ascii_lowercase]
    printable = small + [b2u[ord(c)] for c in string.ascii_uppercase + string.digits + string.punctuation]
    merges = []

    def add(a: str, b: str) -> bool:
        if len(vocab) >= vocab_size:
            return False
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
        return True

    pairs_small = [a + b for a in small for b in small]
    for p in pairs_small:
        if not add(p[0], p[1]):
            break
    for p in pairs_small:
        for c in small:
            if not add(p, c):
                break
    for a in printable:
        for b in printable:
            if not add(a, b):
                break
    # Longer tokens, if still room: (triple, letter) over the small alphabet.
    for p in pairs_small:
        for c in small:
            for d in small:
                if not add(p + c, d):
                    break
    # Anything left (only for huge vocabularies): pairs over all byte symbols.
    allsyms = [b2u[b] for b in range(256)]
    for a in allsyms:
        for b in allsyms:
            if not add(a, b):
                break
    if len(vocab) != vocab_size:
        raise ValueError(f"could only build {len(vocab)} of {vocab_size} ids")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if specials:
        tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {"model_max_length": 4096}
    if len(specials) >= 3:
        cfg.update({"unk_token": specials[0], "bos_token": specials[1], "eos_token": specials[2]})
    if chat_template:
        cfg["chat_template"] = chat_template
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return {"vocab_size": vocab_size, "merges": len(merges)}


def load_hf(path: str, dtype: torch.dtype, device: str, **kw):
    """AutoModelForCausalLM.from_pretrained on `device` in `dtype` (transformers 4.x or 5.x)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device, **kw)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, device_map=device, **kw)
    return model.eval()


def device_sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def gpu_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def write_json(path: str, doc) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
