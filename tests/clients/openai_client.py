"""The official `openai` package against inferd: completions and chat,
streaming and not, n=2, stop, seed reproducibility, logprobs.

Usage: openai_client.py BASE_URL MODEL   (exits non-zero on failure)
"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
MSG = [{"role": "user", "content": "What is the capital of France?"}]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


models = client.models.list()
check(any(m.id == model for m in models.data), "models.list names the model")

r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check(r.object == "text_completion" and len(r.choices) == 1 and r.choices[0].text, "completion text")
check(r.choices[0].finish_reason in ("stop", "length"), "completion finish_reason")
check(r.usage.completion_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "completion usage")

r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, n=2, temperature=1.0, seed=1)
check(len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1], "n=2 gives two choices")

r = client.completions.create(model=model, prompt="One, two, three,", max_tokens=5, temperature=0, logprobs=2)
lp = r.choices[0].logprobs
check(lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) >= 1, "completion logprobs shape")
check(all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs), "completion logprobs values")

chunks = list(client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
streamed = "".join(c.choices[0].text for c in chunks if c.choices)
whole = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0).choices[0].text
check(streamed == whole, f"streamed completion equals the whole one ({streamed!r})")

r = client.chat.completions.create(model=model, messages=MSG, max_tokens=24, temperature=0)
answer = r.choices[0].message.content
check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", "chat shape")
check("Paris" in answer, f"chat answers Paris ({answer!r})")
check(r.usage.prompt_tokens > 0, "chat usage")

r = client.chat.completions.create(model=model, messages=MSG, max_tokens=24, temperature=0, stop=["Paris"])
check("Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop", "stop string ends before it")

a = client.chat.completions.create(model=model, messages=MSG, max_tokens=16, temperature=1.0, seed=1234)
b = client.chat.completions.create(model=model, messages=MSG, max_tokens=16, temperature=1.0, seed=1234)
check(a.choices[0].message.content == b.choices[0].message.content, "same seed, same text")

r = client.chat.completions.create(model=model, messages=MSG, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
content = r.choices[0].logprobs.content
check(len(content) >= 1 and all(len(t.top_logprobs) == 3 and t.bytes is not None for t in content), "chat logprobs shape")

stream = client.chat.completions.create(model=model, messages=MSG, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
chunks = list(stream)
check(chunks[0].choices[0].delta.role == "assistant", "first chunk carries the role")
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == answer, f"streamed chat equals the whole one ({text!r})")
check(any(c.choices and c.choices[0].finish_reason for c in chunks), "a chunk carries finish_reason")
check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1, "usage chunk last")

try:
    client.chat.completions.create(model="no-such-model", messages=MSG)
    check(False, "unknown model raises")
except openai.NotFoundError as e:
    check(e.status_code == 404, "unknown model is 404")
try:
    client.chat.completions.create(model=model, messages=MSG, temperature=5)
    check(False, "bad temperature raises")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "temperature" in str(e), "bad temperature is 400 naming the field")
print("openai client: all passed")
