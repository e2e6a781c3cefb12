"""The `text-generation` (TGI) client against inferd: generate and
generate_stream, plus a validation error.

Usage: tgi_client.py BASE_URL   (exits non-zero on failure)
"""
import sys

from text_generation import Client
from text_generation.errors import ValidationError

client = Client(sys.argv[1], timeout=120)
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


r = client.generate(PROMPT, max_new_tokens=24)
check("Paris" in r.generated_text, f"generate answers Paris ({r.generated_text!r})")
check(r.details.generated_tokens == len(r.details.tokens) >= 1, "generate details")
check(r.details.finish_reason.value in ("eos_token", "length", "stop_sequence"), "finish_reason")

tokens = list(client.generate_stream(PROMPT, max_new_tokens=24))
check(len(tokens) >= 1 and tokens[-1].generated_text == r.generated_text, "generate_stream's final text equals generate's")
check(all(t.generated_text is None for t in tokens[:-1]) and tokens[-1].details is not None, "only the last event carries text and details")

r = client.generate(PROMPT, max_new_tokens=24, stop_sequences=["Paris"])
check("Paris" not in r.generated_text and r.details.finish_reason.value == "stop_sequence", "stop sequence")

a = client.generate(PROMPT, max_new_tokens=12, do_sample=True, temperature=0.9, seed=7)
b = client.generate(PROMPT, max_new_tokens=12, do_sample=True, temperature=0.9, seed=7)
check(a.generated_text == b.generated_text, "same seed, same text")

try:
    client.generate(PROMPT, max_new_tokens=10**9)
    check(False, "huge max_new_tokens raises")
except ValidationError as e:
    check("max_new_tokens" in str(e), "validation error names the field")
print("tgi client: all passed")
