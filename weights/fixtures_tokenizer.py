"""Tokenizer and chat-template references from transformers, for tests/tokenizer.rs.

Loads SmolLM2-135M-Instruct's tokenizer the way transformers does from the GGUF
(`AutoTokenizer.from_pretrained(dir, gguf_file=name)`) and writes into --out:

- reference.json: for a mixed corpus (prose, code, numbers, accents, CJK,
  Arabic, emoji with ZWJ sequences, whitespace runs, chat markup) the ids with
  and without special tokens and their decodes (skipping specials and not);
  chat-template renders of several conversations; the special token ids.
- hf-tokenizer/: the same tokenizer saved with save_pretrained, so the Rust
  Hugging Face folder path is checked against the very same references.
"""
import argparse
import json
import os

from transformers import AutoTokenizer

GGUF_DIR = "weights/smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they're here, I'd go, you've won, I'm fine.",
    "def f(x):\n    if x > 0:\n\treturn x * 2  # doubled\n    return -x\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "1234567890 3.14159 -42 1e-9 0x1F 100,000,000 2024-06-01",
    "Café naïve résumé façade Ångström über Straße",
    "中文分词测试：你好，世界！日本語のテキスト。한국어 텍스트",
    "مرحبا بالعالم، هذا نص عربي.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷",
    "   leading spaces, trailing spaces   ",
    "tabs\t\tand\nnewlines\n\n\nand  double  spaces \r\n crlf",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after eot<|im_end|>",
    "almost special <|im_start |> and <im_start> and <|im_start|",
    "<repo_name>inferd<file_sep>src/main.rs",
    "",
    " ",
    "\n",
    "a",
    "Mixed: naïve café 😀 中文 123 <|im_end|> done.",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "Combining: e\u0301 a\u0308 n\u0303",
    "ﬁ ligature, Ⅻ roman, ① circled, ２ fullwidth",
]

CONVERSATIONS = [
    {
        "name": "system_user",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke about caches.\nMake it short."},
        ],
    },
    {
        "name": "no_system",
        "messages": [
            {"role": "user", "content": "Bonjour, ça va ? 😀"},
        ],
    },
    {
        "name": "no_system_multi",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "second"},
            {"role": "user", "content": "  third with spaces  "},
        ],
    },
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(os.path.join(args.root, GGUF_DIR), gguf_file=GGUF_NAME)

    corpus = []
    for text in CORPUS:
        item = {"text": text}
        for key, special in (("with_special", True), ("without_special", False)):
            ids = tok.encode(text, add_special_tokens=special)
            item[key] = {
                "ids": ids,
                "decode": tok.decode(ids, skip_special_tokens=False),
                "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        corpus.append(item)

    chats = []
    for conv in CONVERSATIONS:
        for gen in (False, True):
            chats.append(
                {
                    "name": conv["name"],
                    "messages": conv["messages"],
                    "add_generation_prompt": gen,
                    "rendered": tok.apply_chat_template(
                        conv["messages"], tokenize=False, add_generation_prompt=gen
                    ),
                }
            )

    vocab = tok.get_vocab()
    reference = {
        "gguf": os.path.join(GGUF_DIR, GGUF_NAME),
        "vocab_size": len(tok),
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
        "token_to_id": {t: vocab[t] for t in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "Hello", "Ġworld"]},
        "corpus": corpus,
        "chats": chats,
    }
    with open(os.path.join(args.out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)

    tok.save_pretrained(os.path.join(args.out, "hf-tokenizer"))


if __name__ == "__main__":
    main()
