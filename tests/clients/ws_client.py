"""A WebSocket client on /v1/ws: three interleaved generations, one of
them cancelled; the other two end with `done`.

Usage: ws_client.py BASE_URL MODEL   (exits non-zero on failure)
"""
import asyncio
import json
import sys

import websockets

base, model = sys.argv[1], sys.argv[2]
url = base.replace("http://", "ws://") + "/v1/ws"


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


async def main():
    async with websockets.connect(url, max_size=None) as ws:
        msgs = {"a": "Write a long story about a cat.", "b": "Count from one to fifty in words.", "c": "What is the capital of France?"}
        for i, (gid, text) in enumerate(msgs.items()):
            body = {"type": "generate", "id": gid, "model": model, "max_tokens": 40, "temperature": 0, "ignore_eos": gid != "c"}
            if i == 0:
                body["prompt"] = text
            else:
                body["messages"] = [{"role": "user", "content": text}]
            await ws.send(json.dumps(body))
        order, text, done, tokens_a = [], {"a": "", "b": "", "c": ""}, {}, 0
        cancelled = False
        while len(done) < 3:
            m = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if m["type"] not in ("token", "done"):
                raise SystemExit(f"FAILED: unexpected message {m}")
            gid = m["id"]
            if m["type"] == "token":
                if gid in done:
                    raise SystemExit(f"FAILED: token after done for {gid}")
                text[gid] += m["text"]
                order.append(gid)
                if gid == "a":
                    tokens_a += 1
                    if tokens_a == 3 and not cancelled:
                        await ws.send(json.dumps({"type": "cancel", "id": "a"}))
                        cancelled = True
            else:
                done[gid] = m
        check(done["a"]["finish_reason"] == "cancelled", "a was cancelled")
        check(done["b"]["finish_reason"] == "length" and done["b"]["usage"]["completion_tokens"] == 40, "b ran to max_tokens")
        check(done["c"]["finish_reason"] in ("stop", "length") and "Paris" in text["c"], f"c answered ({text['c']!r})")
        first = {g: order.index(g) for g in "abc"}
        last = {g: len(order) - 1 - order[::-1].index(g) for g in "bc"}
        check(first["c"] < last["b"], "generations interleave")
        await ws.send(json.dumps({"type": "cancel", "id": "zzz"}))
        m = json.loads(await asyncio.wait_for(ws.recv(), 30))
        check(m["type"] == "error" and m["id"] == "zzz", "cancelling an unknown id is an error")
    print("ws client: all passed")


asyncio.run(main())
