// The TypeScript SDK in Node against a live server (tests/tests/sdks.rs starts it and sets
// the LLMESH_* variables): sign-in, API keys, a reply's cost, Stop billing only what was
// produced, errors, uploads with progress, a session outliving its token and ending
// clearly when revoked; and retries against a stand-in server.
//
//   node --test clients/typescript/tests/sdk.test.mjs

import assert from "node:assert/strict";
import http2 from "node:http2";
import { test } from "node:test";

import { ConnectError, Code as ServerCode } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AuthService, Code, LlmeshError, chat, connect, user } from "@llmesh/client";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run through \`cargo test -p llmesh-tests --test sdks\``);
  return value;
};
const url = env("LLMESH_URL");
const apiKey = env("LLMESH_API_KEY");
const model = env("LLMESH_MODEL");
const ttlMs = Number(env("LLMESH_ACCESS_TTL_SECS")) * 1000;

const balance = async (client) => Number((await client.billing.getBalance({})).balance.micros);

test("a password session, an API key made with it, and signing out", async () => {
  const session = await connect(url, { email: env("LLMESH_EMAIL"), password: env("LLMESH_PASSWORD") });
  const { user: me } = await session.auth.getMe({});
  assert.equal(me.email, env("LLMESH_EMAIL"));
  const created = await session.auth.createApiKey({ name: "node test" });
  const program = await connect(url, { apiKey: created.secret });
  assert.equal((await program.auth.getMe({})).user.id, me.id);
  await session.logout();
  await assert.rejects(session.auth.getMe({}), (err) => {
    assert.ok(err instanceof LlmeshError);
    assert.equal(err.code, Code.Unauthenticated);
    assert.match(err.message, /session has ended/);
    return true;
  });
  await assert.rejects(connect(url, { email: env("LLMESH_EMAIL"), password: "not the password" }), (err) => {
    assert.ok(err instanceof LlmeshError);
    assert.equal(err.codeName, "UNAUTHENTICATED");
    assert.ok(err.requestId);
    return true;
  });
});

test("a reply streams, then carries its usage and cost; Stop bills only what was produced", async () => {
  const client = await connect(url, { apiKey });
  const before = await balance(client);
  const conversation = await client.createConversation("node");
  const reply = client.sendMessage(conversation.id, "Name three colours.", { sampling: { temperature: 0, maxTokens: 24 } });
  const deltas = [];
  for await (const delta of reply) deltas.push(delta);
  assert.ok(deltas.length > 0);
  assert.equal(reply.message.state, chat.MessageState.COMPLETE);
  assert.equal(Number(reply.cost.micros), reply.usage.promptTokens + 2 * reply.usage.completionTokens);

  const long = client.sendMessage(conversation.id, "Tell a very long story.", {
    sampling: { temperature: 0, maxTokens: 400, ignoreEos: true },
  });
  let seen = 0;
  for await (const _ of long) {
    if (++seen === 3) assert.equal(await long.stop(), true);
  }
  assert.equal(long.message.state, chat.MessageState.STOPPED);
  assert.ok(long.usage.completionTokens < 400);
  assert.equal(before - (await balance(client)), Number(reply.cost.micros) + Number(long.cost.micros));

  const done = await client.generate(model, [user("Say yes.")], { sampling: { maxTokens: 8 } }).finish();
  assert.equal(Number(done.cost.micros), done.usage.promptTokens + 2 * done.usage.completionTokens);
});

test("errors carry code, message and request id; uploads report progress", async () => {
  const client = await connect(url, { apiKey });
  await assert.rejects(client.chat.getConversation({ id: "0190f2a4-0000-7000-8000-000000000000" }), (err) => {
    assert.ok(err instanceof LlmeshError && err instanceof ConnectError);
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.message, `${err.rawMessage} (NOT_FOUND, request id ${err.requestId})`);
    return true;
  });
  await assert.rejects(
    (async () => {
      for await (const _ of client.sendMessage("0190f2a4-0000-7000-8000-000000000000", "hi"));
    })(),
    (err) => err instanceof LlmeshError && err.code === Code.NotFound,
  );
  const phases = [];
  const fixture = new URL("../../../tests/fixtures/chatgpt/conversations.json", import.meta.url).pathname;
  const report = await client.importConversations(fixture, { onProgress: (p) => phases.push(p) });
  assert.ok(report.imported >= 2);
  const uploads = phases.filter((p) => p.phase === "uploading");
  assert.equal(uploads.at(-1).done, uploads.at(-1).total);
  assert.equal(phases.at(-1).phase, "importing");
  const data = Uint8Array.from({ length: 600_000 }, (_, i) => (i * 7919) % 251);
  const sent = [];
  const file = await client.writeFile("node/blob.bin", data, { onProgress: (p) => sent.push(p.done) });
  assert.equal(Number(file.sizeBytes), data.length);
  assert.ok(sent.length >= 3 && sent.at(-1) === data.length);
  assert.deepEqual(await client.readFile("node/blob.bin"), data);
  const run = client.runPython("print('hi from node')");
  const exit = await run.finish();
  assert.equal(exit.exitCode, 0);
  assert.equal(run.stdout, "hi from node\n");
});

test("a password session outlives its token and ends clearly when revoked", { timeout: ttlMs + 30_000 }, async () => {
  const password = env("LLMESH_PASSWORD");
  const admin = await connect(url, { email: env("LLMESH_ADMIN_EMAIL"), password: env("LLMESH_ADMIN_PASSWORD") });
  const mine = await connect(url, { email: env("LLMESH_EMAIL"), password });
  const other = await connect(url, { email: env("LLMESH_OTHER_EMAIL"), password });
  const otherId = (await other.auth.getMe({})).user.id;
  await admin.auth.disableUser({ userId: otherId });
  try {
    const stop = Date.now() + ttlMs + 2000;
    // Calls in parallel around the renewal share one refresh (a refresh token works once).
    await Promise.all(
      [0, 1, 2].map(async () => {
        while (Date.now() < stop) {
          await mine.auth.getMe({});
          await new Promise((r) => setTimeout(r, 500));
        }
      }),
    );
    await assert.rejects(other.auth.getMe({}), (err) => {
      assert.equal(err.code, Code.Unauthenticated);
      assert.match(err.message, /session has ended.*sign in again/);
      return true;
    });
  } finally {
    await admin.auth.enableUser({ userId: otherId });
  }
});

test("only calls marked safe are retried", async () => {
  const calls = { getMe: 0, register: 0 };
  const server = http2.createServer(
    connectNodeAdapter({
      routes: (router) =>
        router.service(AuthService, {
          getMe() {
            if (++calls.getMe <= 2) throw new ConnectError("restarting", ServerCode.Unavailable);
            return { user: { email: "flaky@example.com" } };
          },
          register() {
            calls.register++;
            throw new ConnectError("restarting", ServerCode.Unavailable);
          },
        }),
    }),
  );
  // close() waits for open sessions: the client's idle connection would keep it (and
  // this process) alive.
  const sessions = new Set();
  server.on("session", (s) => sessions.add(s));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const client = await connect(`http://127.0.0.1:${server.address().port}`);
    assert.equal((await client.auth.getMe({})).user.email, "flaky@example.com");
    assert.equal(calls.getMe, 3);
    await assert.rejects(client.auth.register({ email: "a@example.com", password: "x".repeat(12) }), (err) => {
      assert.equal(err.code, Code.Unavailable);
      return true;
    });
    assert.equal(calls.register, 1);
  } finally {
    for (const s of sessions) s.destroy();
    server.close();
  }
});
