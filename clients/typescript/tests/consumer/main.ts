// Type-checks and runs against the installed tarball: the declarations must be there and
// accurate enough for strict TypeScript.
import { connect, LlmeshError, type Progress, llm } from "@llmesh/client";

declare const process: { env: Record<string, string | undefined> };

const client = await connect(process.env.LLMESH_URL ?? "http://127.0.0.1:7700", { apiKey: process.env.LLMESH_API_KEY });
const { models } = await client.llm.listModels({});
const kinds: llm.ModelKind[] = models.map((m) => m.kind);
const progress: Progress = { phase: "uploading", done: 0, total: 0 };
try {
  await client.chat.getConversation({ id: "0190f2a4-0000-7000-8000-000000000000" });
} catch (err) {
  if (!(err instanceof LlmeshError) || !err.requestId) throw err;
}
console.log(`models: ${models.map((m) => m.id).join(", ")} (${kinds.length} kinds, ${progress.phase})`);
