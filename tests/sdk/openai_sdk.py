"""The official OpenAI Python SDK, unchanged, pointed at the gateway.

Run by tests/sdk.rs with GW (gateway base URL), KEY (a virtual key), MODEL (a chat model)
and EMBED_MODEL (an embeddings model); prints one JSON object with what it saw.
"""
import json
import os

import openai
from openai import OpenAI

gw, key, model = os.environ["GW"], os.environ["KEY"], os.environ["MODEL"]
client = OpenAI(base_url=f"{gw}/v1", api_key=key, max_retries=0)
messages = [{"role": "user", "content": "Hello from the SDK"}]

out = {"sdk_version": openai.__version__}
r = client.chat.completions.create(model=model, messages=messages, max_tokens=16)
out["plain"] = r.choices[0].message.content
out["plain_usage"] = r.usage.total_tokens

chunks, usage = [], None
stream = client.chat.completions.create(
    model=model, messages=messages, stream=True, stream_options={"include_usage": True}
)
for c in stream:
    if c.choices and c.choices[0].delta.content:
        chunks.append(c.choices[0].delta.content)
    if c.usage:
        usage = c.usage.total_tokens
out["stream"] = "".join(chunks)
out["stream_usage"] = usage

out["models"] = [m.id for m in client.models.list()]
out["retrieved"] = client.models.retrieve(model).id
try:
    client.models.retrieve("no-such-model")
    out["missing_model"] = "found"
except openai.NotFoundError as e:
    out["missing_model"] = e.status_code

r = client.responses.create(model=model, input="Hello from the SDK", instructions="Be brief.")
out["responses"] = r.output_text
out["responses_usage"] = [r.usage.input_tokens, r.usage.output_tokens]
deltas, completed = [], None
for event in client.responses.create(model=model, input="Hello from the SDK", stream=True):
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    elif event.type == "response.completed":
        completed = event.response.usage.total_tokens
out["responses_stream"] = "".join(deltas)
out["responses_stream_usage"] = completed

# The SDK asks for base64 vectors by default and decodes them.
e = client.embeddings.create(model=os.environ["EMBED_MODEL"], input=["hello", "world"])
out["embeddings"] = [len(d.embedding) for d in e.data]
out["embedding_usage"] = e.usage.prompt_tokens

try:
    OpenAI(base_url=f"{gw}/v1", api_key="vk_wrong", max_retries=0).chat.completions.create(
        model=model, messages=messages
    )
    out["bad_key"] = "accepted"
except openai.AuthenticationError as e:
    out["bad_key"] = e.status_code

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    out["bad_model"] = "accepted"
except openai.NotFoundError as e:
    out["bad_model"] = e.status_code

print(json.dumps(out))
