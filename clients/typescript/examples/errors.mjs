// What a failed call looks like: its code, the server's message and the request id.
//
//   LLMESH_API_KEY=lmk_... node examples/errors.mjs

import { Code, LlmeshError, connect } from "@llmesh/client";

const client = await connect(process.env.LLMESH_URL ?? "http://127.0.0.1:7700", {
  apiKey: process.env.LLMESH_API_KEY,
});
// [readme:errors]
try {
  await client.chat.getConversation({ id: "0190f2a4-0000-7000-8000-000000000000" });
} catch (err) {
  if (!(err instanceof LlmeshError) || err.code !== Code.NotFound) throw err;
  // One readable sentence: message, code and the request id to quote in a report.
  console.log(`not there: ${err.message}`);
  console.log(`request id: ${err.requestId}`);
}
// [/readme]

// Uploads report progress; a ChatGPT export imports like this.
const seen = [];
const report = await client.importConversations(new TextEncoder().encode("[]"), {
  name: "empty.json",
  onProgress: (p) => seen.push(p.phase),
});
console.log(`imported ${report.imported} (${seen.join(", ")})`);
