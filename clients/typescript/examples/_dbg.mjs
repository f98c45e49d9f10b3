import { connect } from "@llmesh/client";
const client = await connect(process.env.LLMESH_URL, { apiKey: process.env.LLMESH_API_KEY, retries: 1 });
const c = await client.createConversation("x");
console.log("created", process.getActiveResourcesInfo());
const r = client.sendMessage(c.id, "Tell a long story", { sampling: { maxTokens: 200, ignoreEos: true } });
let n = 0; for await (const d of r) { if (++n == 3) break; }
console.log("broke after", n, process.getActiveResourcesInfo());
setTimeout(() => console.log("later", process.getActiveResourcesInfo()), 2000).unref();
