"""The official Anthropic Python SDK, unchanged, pointed at the gateway (as Claude Code is
with ANTHROPIC_BASE_URL).

Run by tests/messages.rs with GW (gateway base URL), KEY (a virtual key) and MODEL; prints
one JSON object with what it saw.
"""
import json
import os

import anthropic

gw, key, model = os.environ["GW"], os.environ["KEY"], os.environ["MODEL"]
client = anthropic.Anthropic(base_url=gw, api_key=key, max_retries=0)
messages = [{"role": "user", "content": "Hello from the SDK"}]

out = {"sdk_version": anthropic.__version__}
m = client.messages.create(model=model, max_tokens=64, messages=messages)
out["plain"] = "".join(b.text for b in m.content if b.type == "text")
out["plain_usage"] = [m.usage.input_tokens, m.usage.output_tokens]
out["stop_reason"] = m.stop_reason

with client.messages.stream(model=model, max_tokens=64, messages=messages) as s:
    out["stream"] = "".join(s.text_stream)
    final = s.get_final_message()
out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]

out["counted"] = client.messages.count_tokens(model=model, messages=messages).input_tokens

try:
    anthropic.Anthropic(base_url=gw, api_key="vk_wrong", max_retries=0).messages.create(
        model=model, max_tokens=8, messages=messages
    )
    out["bad_key"] = "accepted"
except anthropic.AuthenticationError as e:
    out["bad_key"] = [e.status_code, e.body["error"]["type"]]

try:
    client.messages.create(model="no-such-model", max_tokens=8, messages=messages)
    out["bad_model"] = "accepted"
except anthropic.NotFoundError as e:
    out["bad_model"] = [e.status_code, e.body["error"]["type"]]

print(json.dumps(out))
