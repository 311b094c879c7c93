// The official OpenAI Node SDK, unchanged, pointed at the gateway. Run by tests/sdk.rs with
// OPENAI_NODE (the package's path), GW, KEY, MODEL and EMBED_MODEL; prints one JSON object
// with what it saw.
const OpenAI = require(process.env.OPENAI_NODE);

const { GW, KEY, MODEL, EMBED_MODEL } = process.env;
const client = new OpenAI({ baseURL: `${GW}/v1`, apiKey: KEY, maxRetries: 0 });
const messages = [{ role: "user", content: "Hello from Node" }];

(async () => {
  const out = {};
  const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 16 });
  out.plain = r.choices[0].message.content;
  out.plain_usage = r.usage.total_tokens;

  let text = "";
  let usage = null;
  const stream = await client.chat.completions.create({
    model: MODEL, messages, stream: true, stream_options: { include_usage: true },
  });
  for await (const c of stream) {
    if (c.choices.length && c.choices[0].delta.content) text += c.choices[0].delta.content;
    if (c.usage) usage = c.usage.total_tokens;
  }
  out.stream = text;
  out.stream_usage = usage;

  const e = await client.embeddings.create({ model: EMBED_MODEL, input: ["hello", "world"] });
  out.embeddings = e.data.map((d) => d.embedding.length);
  out.retrieved = (await client.models.retrieve(MODEL)).id;
  const resp = await client.responses.create({ model: MODEL, input: "Hello from Node" });
  out.responses = resp.output_text;

  try {
    await client.models.retrieve("no-such-model");
    out.missing_model = "found";
  } catch (err) {
    out.missing_model = err.status;
  }
  try {
    const bad = new OpenAI({ baseURL: `${GW}/v1`, apiKey: "vk_wrong", maxRetries: 0 });
    await bad.chat.completions.create({ model: MODEL, messages });
    out.bad_key = "accepted";
  } catch (err) {
    out.bad_key = err.status;
  }
  console.log(JSON.stringify(out));
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
