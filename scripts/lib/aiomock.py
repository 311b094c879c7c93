"""An OpenAI-format upstream in Python (aiohttp), for benchmarks: a slower, more typical
upstream than the Rust mock. POST /v1/chat/completions answers a whole completion, or with
"stream": true, CHUNKS chunks of one token each, a usage chunk when asked for, and [DONE].
PACE_MS apart (default 0: as fast as it can write them; a real model takes 10-50 ms a token).

    python aiomock.py PORT [CHUNKS [PACE_MS]]
"""
import asyncio
import json
import sys
import time

from aiohttp import web

CHUNKS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
PACE = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = body.get("model", "mock")
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    created = int(time.time())
    if not body.get("stream"):
        return web.json_response({
            "id": "chatcmpl-aiomock", "object": "chat.completion", "created": created,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello from the mock."}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 5,
                      "total_tokens": prompt + 5},
        })
    resp = web.StreamResponse(headers={"content-type": "text/event-stream",
                                       "cache-control": "no-cache"})
    await resp.prepare(request)

    def event(delta, finish=None):
        return ("data: " + json.dumps({
            "id": "chatcmpl-aiomock", "object": "chat.completion.chunk", "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }) + "\n\n").encode()

    await resp.write(event({"role": "assistant", "content": "tok"}))
    for _ in range(CHUNKS - 1):
        if PACE:
            await asyncio.sleep(PACE)
        await resp.write(event({"content": " tok"}))
    await resp.write(event({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(("data: " + json.dumps({
            "id": "chatcmpl-aiomock", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": CHUNKS,
                      "total_tokens": prompt + CHUNKS},
        }) + "\n\n").encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
