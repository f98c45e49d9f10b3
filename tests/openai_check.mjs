// The official `openai` npm package against llmesh's OpenAI-compatible door, run by
// tests/tests/openai.rs with LLMESH_URL, LLMESH_KEY (funded), LLMESH_LIMITED_KEY (one
// request a minute) and LLMESH_BROKE_KEY (no balance). One line per check; a failure
// exits non-zero.
import OpenAI from "openai";

const baseURL = process.env.LLMESH_URL.replace(/\/$/, "") + "/v1";
const CHAT = "smollm2-135m-instruct";
const EMBED = "all-minilm-l6-v2";
const client = (apiKey) => new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
const ok = (what) => console.log(`ok: ${what}`);
function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function status(promise) {
  try {
    await promise;
    return 200;
  } catch (e) {
    if (e instanceof OpenAI.APIError) return e.status;
    throw e;
  }
}

async function main() {
  const c = client(process.env.LLMESH_KEY);

  const ids = [];
  for await (const m of c.models.list()) ids.push(m.id);
  check(ids.includes(CHAT) && ids.includes(EMBED), `models: ${ids}`);
  ok("models");

  const stream = await c.chat.completions.create({
    model: CHAT,
    messages: [{ role: "user", content: "Say hello." }],
    temperature: 0,
    max_tokens: 16,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) text += ch.delta.content ?? "";
  }
  check(text.length > 0 && usage && usage.completion_tokens > 0, `stream: ${text} ${JSON.stringify(usage)}`);
  ok(`streamed chat with usage (${usage.completion_tokens} tokens)`);

  const whole = await c.completions.create({ model: CHAT, prompt: "1, 2, 3, 4, 5, 6, 7, 8,", temperature: 0, max_tokens: 12 });
  check(whole.choices[0].text === " 9, 10, 11, ", `completion: ${JSON.stringify(whole.choices[0].text)}`);
  ok("legacy completion");

  const emb = await c.embeddings.create({ model: EMBED, input: ["a cat", "a dog"] });
  check(emb.data.length === 2 && emb.data[1].embedding.length === 384, "embeddings");
  ok("embeddings");

  check((await status(client("lmk_wrong").models.list())) === 401, "a bad key is 401");
  ok("401 with a bad key");

  const limited = client(process.env.LLMESH_LIMITED_KEY);
  const first = await status(limited.completions.create({ model: CHAT, prompt: "Hi", max_tokens: 1 }));
  const second = await status(limited.completions.create({ model: CHAT, prompt: "Hi", max_tokens: 1 }));
  check(first === 200 && second === 429, `rate limit: ${first} ${second}`);
  ok("429 at the rate limit");

  const broke = await status(
    client(process.env.LLMESH_BROKE_KEY).chat.completions.create({ model: CHAT, messages: [{ role: "user", content: "hi" }] }),
  );
  check(broke === 402, `empty balance: ${broke}`);
  ok("402 on an empty balance");

  const controller = new AbortController();
  const long = await c.chat.completions.create(
    { model: CHAT, messages: [{ role: "user", content: "Write a long story about the sea." }], max_tokens: 400, temperature: 0, stream: true },
    { signal: controller.signal },
  );
  let pieces = 0;
  try {
    for await (const chunk of long) {
      if (chunk.choices[0]?.delta?.content) pieces += 1;
      if (pieces === 5) controller.abort();
    }
  } catch (e) {
    if (!(e instanceof OpenAI.APIUserAbortError) && e.name !== "AbortError") throw e;
  }
  ok(`aborted a stream after ${pieces} pieces`);
}

main().catch((e) => {
  console.log(`FAILED: ${e.stack ?? e}`);
  process.exit(1);
});
