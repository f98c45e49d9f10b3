// Streams a chat reply and prints what it cost (Node, gRPC over HTTP/2).
//
//   LLMESH_API_KEY=lmk_... node examples/chat.mjs "Why is the sky blue?"
//
// (LLMESH_URL defaults to http://127.0.0.1:7700.)

import { connect } from "@llmesh/client";

const url = process.env.LLMESH_URL ?? "http://127.0.0.1:7700";
const question = process.argv[2] ?? "Say hello in five words.";

// [readme:connect]
const client = await connect(url, { apiKey: process.env.LLMESH_API_KEY });
// [/readme]
// [readme:stream]
const conversation = await client.createConversation("From the TypeScript SDK");
const reply = client.sendMessage(conversation.id, question);
for await (const delta of reply) {
  process.stdout.write(delta);
}
const { usage, cost } = reply;
console.log(
  `\n[${usage?.promptTokens} prompt + ${usage?.completionTokens} completion tokens, ${cost?.micros} micro-${cost?.currency}]`,
);
// [/readme]

// The same client in a browser: connect(url, { protocol: "grpc-web", ... }).
// [readme:password]
const session = await connect(url, {
  email: process.env.LLMESH_EMAIL,
  password: process.env.LLMESH_PASSWORD,
});
const { user } = await session.auth.getMe({});
console.log(`signed in as ${user?.email}`);
await session.logout();
// [/readme]
