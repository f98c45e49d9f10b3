// End-to-end test of the web UI: a real `llmesh serve` (SQLite in a scratch directory,
// the real SmolLM2 model) driven by Debian's Chromium through playwright-core.
//
//   register (first user → admin) → admin prices the default model and adds credit →
//   chat, watching the reply stream → stop a reply → regenerate → search finds it →
//   create an API key (and use it) → run a reply's Python code block in the sandbox (and
//   see it kept after a reload) → knowledge: a collection, a document dropped in, a search
//   → a reply drawing on it (attached from the composer) shows its sources, each opening
//   in its document → the sandbox page (upload, streaming output, kept files,
//   stop) → usage shows spend = tokens × price.
//
// Along the way it writes a screenshot of every screen at 1280×800 and 390×844 into
// web/e2e/out/, fails on any page error or Content-Security-Policy violation, and reports
// the time from the server sending a token to it being on screen, and the size of the
// JavaScript the first page loads.
//
// Environment: LLMESH_BIN (default $CARGO_TARGET_DIR/debug/llmesh or target/debug/llmesh),
// LLMESH_TEST_MODELS_DIR (default ~/.cache/llmesh-test-models), CHROMIUM (default
// /usr/bin/chromium). LLMESH_E2E_URL runs against a server someone else started (the mesh
// test's nginx edge) instead: it must be fresh (no accounts yet) and configured as below
// (the test models, llm.default_max_tokens = 400, chat.auto_title = false, the built UI).
// LLMESH_E2E_OUT moves the screenshots and metrics (default web/e2e/out).

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from "node:fs";
import { gzipSync } from "node:zlib";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { createHash } from "node:crypto";
import { chat, createClients } from "@llmesh/client";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const out = process.env.LLMESH_E2E_OUT ?? join(here, "out");
const dist = join(repo, "web/dist");
const bin =
  process.env.LLMESH_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "debug/llmesh");
const modelsDir = process.env.LLMESH_TEST_MODELS_DIR ?? join(homedir(), ".cache/llmesh-test-models");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const MODEL = "smollm2-135m-instruct";
// Long enough that a reply stopped by the test never reaches it by itself.
const MAX_TOKENS = 400;
// Whole micro-units per token, so every request's cost is exact: 1 µ$ per prompt token,
// 2 µ$ per completion token.
const PRICE_IN = 1; // currency units per million tokens
const PRICE_OUT = 2;

const external = process.env.LLMESH_E2E_URL;
for (const [what, path, fix] of [
  ...(external ? [] : [["the llmesh binary", bin, "build it with `cargo build -p llmesh` or set LLMESH_BIN"]]),
  ["the built UI", join(dist, "index.html"), "run `npm run build` at the repository root"],
  ["Chromium", chromiumPath, "install it with `apt-get install chromium` or set CHROMIUM"],
]) {
  if (!existsSync(path)) {
    console.error(`e2e: ${what} is missing at ${path}: ${fix}`);
    process.exit(2);
  }
}

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const scratch = mkdtempSync(join(tmpdir(), "llmesh-e2e-"));
const started = Date.now();
const step = (text) => console.log(`[e2e ${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s] ${text}`);

function fail(message) {
  throw new Error(message);
}

async function startServer() {
  if (external) return { child: null, url: external.replace(/\/$/, "") };
  const log = createWriteStream(join(out, "server.log"));
  const child = spawn(bin, ["serve", "--bind", "127.0.0.1:0"], {
    cwd: scratch,
    env: {
      ...process.env,
      LLMESH__DATABASE__URL: `sqlite://${join(scratch, "llmesh.db")}`,
      LLMESH__LLM__MODELS_DIR: modelsDir,
      LLMESH__SANDBOX__RUNTIMES_DIR: join(modelsDir, "runtimes"),
      LLMESH__LLM__DEFAULT_MAX_TOKENS: String(MAX_TOKENS),
      // Titles are written by the model and billed; without them every billed token is
      // one the chat shows, so the spend check below can be exact.
      LLMESH__CHAT__AUTO_TITLE: "false",
      LLMESH__SERVER__WEB_DIR: dist,
      LLMESH__LOG__FILTER: process.env.LLMESH__LOG__FILTER ?? "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stderr.pipe(log);
  const url = await new Promise((resolveUrl, reject) => {
    let buffer = "";
    const timer = setTimeout(() => reject(new Error("llmesh serve did not start within 10 minutes")), 600_000);
    child.stdout.on("data", (chunk) => {
      log.write(chunk);
      buffer += chunk.toString();
      const m = /listening on (http:\/\/[\d.:]+)/.exec(buffer);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`llmesh serve exited with ${code}; see ${join(out, "server.log")}`));
    });
  });
  return { child, url };
}

const problems = [];
function watch(page, label) {
  page.on("pageerror", (err) => problems.push(`${label}: page error: ${err.message}`));
  page.on("console", (msg) => {
    const text = msg.text();
    if (/Content.Security.Policy|Refused to/i.test(text)) problems.push(`${label}: ${text}`);
  });
}

async function shot(page, name) {
  await page.waitForTimeout(150); // let transitions settle
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: false });
}

function initialJsBytes() {
  const html = readFileSync(join(dist, "index.html"), "utf8");
  const files = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+\.js)"/g)].map((m) => m[1]);
  let raw = 0;
  let gz = 0;
  for (const f of files) {
    const data = readFileSync(join(dist, f));
    raw += data.length;
    gz += gzipSync(data, { level: 9 }).length;
  }
  return { files, raw, gz };
}

const quantile = (xs, q) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

async function waitForReply(page, before) {
  // The streamed draft is replaced by the stored message when the reply is saved.
  await page.waitForFunction(
    (n) =>
      document.querySelectorAll('[data-testid="assistant-message"]').length > n &&
      !document.querySelector('[data-testid="streaming-reply"]'),
    before,
    { timeout: 180_000 },
  );
}

/** Token counts of the stored reply with this id (from its data attributes). */
async function usageOf(page, locator) {
  return locator.evaluate((el) => ({
    id: el.dataset.messageId,
    prompt: Number(el.dataset.promptTokens),
    completion: Number(el.dataset.completionTokens),
    cost: BigInt(el.dataset.costMicros).toString(),
    state: Number(el.dataset.state),
  }));
}

async function main() {
  const js = initialJsBytes();
  step(`initial JavaScript: ${js.files.length} file(s), ${(js.raw / 1024).toFixed(1)} kB, ${(js.gz / 1024).toFixed(1)} kB gzipped`);
  step(external ? `using the server at ${external}` : `starting ${bin} serve (models from ${modelsDir})`);
  const { child, url } = await startServer();
  step(`server at ${url}`);
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const billed = new Map(); // message id → usage
  try {
    // The page must carry the CSP that keeps replies from running script.
    const res = await fetch(`${url}/`);
    const csp = res.headers.get("content-security-policy") ?? "";
    if (!csp.includes("script-src 'self'")) fail(`the UI is served without a strict CSP (got ${JSON.stringify(csp)})`);
    const deep = await fetch(`${url}/c/some-conversation`);
    if (deep.status !== 200 || !(await deep.text()).includes('<div id="root">')) fail("a UI route does not serve index.html");

    const desk = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await desk.grantPermissions(["clipboard-read", "clipboard-write"], { origin: url });
    const page = await desk.newPage();
    watch(page, "desktop");

    // 1. Register: the first account becomes admin, and the page says so.
    step("register the first user");
    await page.goto(url);
    await page.getByTestId("first-admin").waitFor();
    await shot(page, "signin-register-desktop");
    await page.getByLabel("Email").fill("ada@example.com");
    await page.getByLabel("Display name").fill("Ada");
    await page.getByLabel("Password").fill("correct horse battery");
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByRole("link", { name: "Admin" }).waitFor();

    // 2. Admin: price the default model, give the admin credit.
    step("admin sets a price and adds credit");
    await page.getByRole("link", { name: "Admin" }).click();
    await page.getByRole("button", { name: "Users", exact: true }).waitFor();
    await shot(page, "admin-users-desktop");
    await page.getByRole("button", { name: "Models", exact: true }).click();
    await page.getByText(MODEL).first().waitFor();
    await shot(page, "admin-models-desktop");
    // Pull a copy of the model from a local file (the same code path as PyPI and the hub
    // after the download), load it, unload it, delete it.
    const gguf = JSON.parse(readFileSync(join(modelsDir, MODEL, "manifest.json"), "utf8")).file;
    const copy = `e2e-copy-${Date.now()}`;
    await page.getByPlaceholder(/pypi:package/).fill(`file:${join(modelsDir, MODEL, gguf)}`);
    await page.getByLabel(/^Id/).fill(copy);
    await page.getByRole("button", { name: "Pull", exact: true }).click();
    await page.getByText(`Pulled ${copy}`).waitFor({ timeout: 120_000 });
    const row = page.locator("table.data tr").filter({ hasText: copy });
    await row.getByRole("button", { name: "Load", exact: true }).click();
    await row.getByText("loaded", { exact: true }).waitFor({ timeout: 60_000 });
    await shot(page, "admin-models-loaded-desktop");
    await row.getByRole("button", { name: "Unload", exact: true }).click();
    await row.getByText("available", { exact: true }).waitFor({ timeout: 60_000 });
    page.once("dialog", (d) => void d.accept());
    await row.getByRole("button", { name: "Delete", exact: true }).click();
    await row.waitFor({ state: "detached", timeout: 30_000 });
    // A hosted provider that is not running: added, listed with its model, its test
    // failing in words, disabled, removed.
    step("admin adds, tests, disables and removes a hosted provider");
    await page.getByRole("button", { name: "Providers", exact: true }).click();
    await page.getByText("No providers yet").waitFor();
    await page.getByLabel(/^Id/).fill("e2e-down");
    await page.getByLabel(/^Base URL/).fill("http://127.0.0.1:9/v1");
    await page.getByLabel(/^API key/).fill("sk-e2e-secret");
    await page.getByLabel(/^Models/).fill("remote-model:4096");
    await page.getByRole("button", { name: "Add", exact: true }).click();
    await page.getByText("Added e2e-down").waitFor();
    const provider = page.locator("table.data tr").filter({ hasText: "e2e-down" });
    await provider.getByText("stored", { exact: true }).waitFor();
    if (await page.getByText("sk-e2e-secret").count()) throw new Error("the provider's key is shown");
    await provider.getByRole("button", { name: "Test", exact: true }).click();
    await page.getByText(/testing e2e-down failed after/i).first().waitFor({ timeout: 30_000 });
    await shot(page, "admin-providers-desktop");
    await page.getByRole("button", { name: "Models", exact: true }).click();
    await page.getByText("hosted by e2e-down").waitFor();
    await page.getByRole("button", { name: "Providers", exact: true }).click();
    await provider.getByRole("button", { name: "Disable", exact: true }).click();
    await provider.getByText("disabled", { exact: true }).waitFor();
    page.once("dialog", (d) => void d.accept());
    await provider.getByRole("button", { name: "Remove", exact: true }).click();
    await provider.waitFor({ state: "detached", timeout: 30_000 });
    await page.getByRole("button", { name: "Prices", exact: true }).click();
    await page.getByTestId("price-model").selectOption(MODEL);
    await page.getByTestId("price-input").fill(String(PRICE_IN));
    await page.getByTestId("price-output").fill(String(PRICE_OUT));
    await page.getByRole("button", { name: "Save price" }).click();
    await page.locator("table.data").getByText(MODEL).first().waitFor();
    await shot(page, "admin-prices-desktop");
    await page.getByRole("button", { name: "Credits", exact: true }).click();
    await grantCredit(page, "ada@example.com", "5");
    await shot(page, "admin-credits-desktop");

    // 3. Chat: the answer streams in.
    step("chat: send a message and watch the reply stream");
    await page.getByRole("link", { name: "Chat" }).click();
    const composer = page.getByLabel("Message");
    await composer.fill("Write a short paragraph about the sea.");
    await composer.press("Enter");
    // Streaming, or (a reply faster than the test can look) already stored.
    await page.waitForFunction(
      () =>
        document.querySelector('[data-testid="streaming-reply"][data-phase="streaming"]') ||
        document.querySelector('[data-testid="assistant-message"]'),
      null,
      { timeout: 120_000 },
    );
    const partial = (await page.getByTestId("streaming-reply").count()) ? await page.getByTestId("streaming-reply").innerText() : "";
    await shot(page, "chat-streaming-desktop");
    await waitForReply(page, 0);
    // It arrived as a stream: the page painted the tokens one delta at a time.
    const painted = await page.evaluate(() => window.llmeshMetrics?.tokenToScreenMs.length ?? 0);
    if (painted < 2) fail(`the reply was not streamed (${painted} deltas painted)`);
    const first = page.getByTestId("assistant-message").last();
    const firstText = await first.locator(".bubble").innerText();
    if (!firstText.trim()) fail("the first reply is empty");
    step(`first reply (${firstText.length} chars; mid-stream it showed ${partial.length})`);
    const u1 = await usageOf(page, first);
    billed.set(u1.id, u1);
    if (u1.completion < 1) fail("the reply has no completion tokens");

    // Name the conversation (titles are off in this run) so search can find it by title.
    await renameActive(page, "Lighthouse notes");

    // 4. Stop: a reply stopped mid-stream keeps its partial text, is marked stopped and is
    // billed for what it produced; by the button, then by Esc. The model samples, so a
    // reply may end by itself before the stop lands: then it is billed, and we ask again.
    step("stop a reply mid-stream (button), then with Esc");
    const longPrompts = [
      "Tell a long story about a lighthouse keeper and a storm.",
      "Write a detailed essay about the history of lighthouses.",
      "Explain step by step, in detail, how a lighthouse lamp works.",
      "Describe a day in the life of a lighthouse keeper, hour by hour.",
    ];
    const stopMidStream = async (first, how) => {
      for (let attempt = 1; attempt <= 4; attempt++) {
        const before = await page.getByTestId("assistant-message").count();
        await composer.fill(attempt === 1 ? first : longPrompts[attempt - 1]);
        await composer.press("Enter");
        // Streaming, or (a very short reply) already stored.
        await page.waitForFunction(
          (n) =>
            document.querySelector('[data-testid="streaming-reply"][data-phase="streaming"]') ||
            document.querySelectorAll('[data-testid="assistant-message"]').length > n,
          before,
          { timeout: 120_000 },
        );
        if (how === "button") {
          // force: the button is re-rendered with every token; do not wait for it to settle.
          await page
            .getByRole("button", { name: /Stop/ })
            .click({ force: true, timeout: 5_000 })
            .catch(() => undefined);
        } else {
          await page.keyboard.press("Escape");
        }
        await waitForReply(page, before);
        const u = await usageOf(page, page.getByTestId("assistant-message").last());
        billed.set(u.id, u);
        if (u.state === 2) return u;
        step(`the reply ended by itself (${u.completion} tokens) before the ${how} stop; again`);
      }
      fail(`four replies in a row ended before the ${how} stop landed`);
    };
    const us = await stopMidStream(longPrompts[0], "button");
    if (us.completion >= MAX_TOKENS) fail("Stop did not stop: the reply ran to max_tokens");
    await page.getByText("stopped").last().waitFor();
    step(`stopped after ${us.completion} tokens`);
    const escaped = await stopMidStream("Describe the lighthouse in detail.", "Esc");
    if (escaped.completion >= MAX_TOKENS) fail("Esc did not stop the reply");

    // 5. Regenerate: a second version, with branch arrows.
    step("regenerate the last reply");
    const shown = await page.getByTestId("assistant-message").count();
    await page.getByTestId("assistant-message").last().getByRole("button", { name: /Regenerate/ }).click();
    await page.getByTestId("streaming-reply").waitFor({ state: "attached" });
    await waitForReply(page, shown - 1);
    const regenerated = page.getByTestId("assistant-message").last();
    const ur = await usageOf(page, regenerated);
    billed.set(ur.id, ur);
    await regenerated.getByTestId("branch").filter({ hasText: "2 / 2" }).waitFor();
    await shot(page, "chat-desktop");
    // The arrows switch back to the first version and forward again.
    await regenerated.getByRole("button", { name: "Previous version" }).click();
    await page.getByTestId("assistant-message").last().getByTestId("branch").filter({ hasText: "1 / 2" }).waitFor();
    await page.getByTestId("assistant-message").last().getByRole("button", { name: "Next version" }).click();
    await page.getByTestId("assistant-message").last().getByTestId("branch").filter({ hasText: "2 / 2" }).waitFor();

    // Token-to-screen latency, measured by the page from the server's send times.
    const samples = await page.evaluate(() => window.llmeshMetrics?.tokenToScreenMs ?? []);

    // 6. Search finds the conversation, with the match highlighted.
    step("search");
    await page.getByLabel("Search conversations").fill("lighthouse");
    await page.getByTestId("search-results").locator("mark").first().waitFor();
    await shot(page, "search-desktop");
    await page.getByLabel("Search conversations").fill("");

    // 7. An API key: shown once, and it works.
    step("create an API key");
    await page.getByRole("link", { name: "Settings" }).click();
    await shot(page, "settings-profile-desktop");
    await page.getByRole("button", { name: "API keys", exact: true }).click();
    await page.getByTestId("key-name").fill("e2e script");
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = (await page.getByTestId("key-secret").innerText()).trim();
    if (!/^lmk_\S+$/.test(secret)) fail(`the key secret looks wrong: ${secret}`);
    await shot(page, "settings-apikeys-desktop");
    const viaKey = createClients({ baseUrl: url, credentials: () => ({ kind: "apiKey", key: secret }) });
    const models = await viaKey.llm.listModels({});
    if (!models.models.some((m) => m.id === MODEL)) fail("the new API key cannot list models");
    await page.getByRole("button", { name: "I saved it, close" }).click();
    if ((await page.getByTestId("key-secret").count()) !== 0) fail("the secret is still shown after closing");
    for (const tab of ["Password", "Assistants", "Templates", "Export & import"]) {
      await page.getByRole("button", { name: tab, exact: true }).click();
      await shot(page, `settings-${slug(tab)}-desktop`);
    }

    // Export everything as JSON, then import that file again (chunked upload + import).
    step("export and import again");
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Export all conversations" }).click(),
    ]);
    const exported = join(out, download.suggestedFilename() || "llmesh-export.json");
    await download.saveAs(exported);
    const exportText = readFileSync(exported, "utf8");
    if (!exportText.includes("Lighthouse notes")) fail("the export does not hold the conversation");
    await page.locator('input[type="file"]').setInputFiles(exported);
    await page.getByRole("button", { name: "Import", exact: true }).click();
    const report = page.getByTestId("import-report");
    await report.waitFor({ timeout: 60_000 });
    if (!/1 conversation imported/.test(await report.innerText())) fail(`import report: ${await report.innerText()}`);
    await shot(page, "settings-import-done-desktop");

    // Many at once: select the conversation and its imported copy (click, then shift-click
    // for the range), archive both in one batch, find them archived, bring them back.
    step("batch: select two conversations and archive them together");
    await page.getByRole("link", { name: "Chat" }).click();
    const sidebar = page.getByRole("complementary", { name: "Conversations" });
    await sidebar.getByRole("button", { name: "Select conversations" }).click();
    const boxes = sidebar.getByRole("checkbox", { name: "Select Lighthouse notes" });
    await boxes.nth(1).waitFor();
    await boxes.first().click();
    await boxes.nth(1).click({ modifiers: ["Shift"] });
    const count = sidebar.getByTestId("selected-count");
    if (!/^2 selected$/.test(await count.innerText())) fail(`selection: ${await count.innerText()}`);
    await shot(page, "sidebar-selection-desktop");
    await sidebar.getByRole("toolbar", { name: "Selected conversations" }).getByRole("button", { name: "Archive", exact: true }).click();
    await page.getByText("2 conversations archived.").waitFor();
    await sidebar.getByRole("link", { name: "Lighthouse notes" }).first().waitFor({ state: "detached", timeout: 10_000 });
    await sidebar.getByRole("checkbox", { name: "archived" }).check();
    await boxes.nth(1).waitFor();
    await sidebar.getByRole("button", { name: "All in view" }).click();
    await sidebar.getByRole("toolbar", { name: "Selected conversations" }).getByRole("button", { name: "Unarchive" }).click();
    await page.getByText(/conversations? unarchived\./).waitFor();
    await sidebar.getByRole("checkbox", { name: "archived" }).uncheck();
    await sidebar.getByRole("link", { name: "Lighthouse notes" }).nth(1).waitFor();
    await sidebar.getByRole("button", { name: "Done selecting" }).click();
    await page.getByRole("link", { name: "Settings" }).click();

    // Moving in from another product: an Open WebUI export, its format left to the server.
    step("import an Open WebUI export, format detected");
    await page.getByRole("button", { name: "Export & import", exact: true }).click();
    const picker = page.getByLabel("Source");
    if ((await picker.inputValue()) !== String(chat.ImportSource.UNSPECIFIED)) fail("the import source does not start on auto");
    await page.locator('input[type="file"]').setInputFiles(resolve(here, "../../tests/fixtures/imports/openwebui.json"));
    await page.getByRole("button", { name: "Import", exact: true }).click();
    await page.getByTestId("import-source").filter({ hasText: "Open WebUI" }).waitFor({ timeout: 60_000 });
    const owui = await page.getByTestId("import-report").innerText();
    if (!/2 conversations imported/.test(owui)) fail(`Open WebUI import report: ${owui}`);
    await page.getByTestId("import-report").getByText(/with parts llmesh cannot hold/).click();
    const note = await page.getByTestId("import-report").locator("details").innerText();
    if (!/Sourdough starter: not imported: 1 × attachment/.test(note)) fail(`the report does not list the attachment it left out: ${note}`);
    await shot(page, "settings-import-openwebui-desktop");

    // The API reference the server builds from its own descriptors and access tables.
    step("API reference: find an RPC and its access rule");
    await page.getByRole("link", { name: "API", exact: true }).click();
    await page.getByTestId("docs-summary").waitFor();
    await page.getByPlaceholder("RPC, message, field or words from a comment").fill("BatchUpdateConversations");
    const rpc = page.getByTestId("doc-rpc").filter({ hasText: "buf curl" }).first();
    await rpc.waitFor();
    const access = (await rpc.getByTestId("doc-access").innerText()).trim();
    if (access !== "member") fail(`BatchUpdateConversations is shown with access ${access}`);
    if (!/NOT_FOUND/.test(await rpc.innerText())) fail("the reference does not list BatchUpdateConversations' NOT_FOUND");
    await shot(page, "docs-desktop");
    await page.getByRole("link", { name: "Settings" }).click();

    // A prompt template with variables, inserted through its form; then an edited prompt.
    step("template with variables, then edit a prompt");
    await page.getByRole("button", { name: "Templates", exact: true }).click();
    await page.getByRole("button", { name: "New template" }).click();
    const form = page.getByRole("form", { name: "New template" });
    await form.getByLabel("Name", { exact: true }).fill("Translate");
    await form.getByLabel(/^Text/).fill("Translate {{text}} into {{language}}.");
    await form.getByRole("button", { name: "Create template" }).click();
    await page.getByTestId("template-saved").waitFor();
    await page.emulateMedia({ colorScheme: "dark" });
    await shot(page, "settings-templates-dark-desktop");
    await page.emulateMedia({ colorScheme: "light" });
    await page.getByRole("link", { name: "Chat" }).click();
    await page.getByRole("button", { name: "+ New chat" }).click();
    await page.getByRole("button", { name: "Templates", exact: true }).click();
    await page.getByRole("dialog").getByRole("button", { name: /Translate/ }).click();
    await page.getByRole("dialog").getByLabel("text", { exact: true }).fill("good morning");
    await page.getByRole("dialog").getByLabel("language", { exact: true }).fill("French");
    await shot(page, "chat-template-form-desktop");
    await page.getByRole("dialog").getByRole("button", { name: "Insert" }).click();
    await page.getByRole("dialog").waitFor({ state: "detached" });
    const inserted = await composer.inputValue();
    if (inserted !== "Translate good morning into French.") fail(`the template inserted ${JSON.stringify(inserted)}`);
    await composer.press("Enter");
    await waitForReply(page, 0);
    billed.set(...entry(await usageOf(page, page.getByTestId("assistant-message").last())));
    await page.getByTestId("user-message").first().getByRole("button", { name: "Edit" }).click();
    await page.getByLabel("Edit message").fill("Translate good night into French.");
    await page.getByRole("button", { name: "Save & submit" }).click();
    await page.getByTestId("streaming-reply").waitFor({ state: "attached" });
    await waitForReply(page, 0);
    await page.getByTestId("user-message").first().getByTestId("branch").filter({ hasText: "2 / 2" }).waitFor();
    billed.set(...entry(await usageOf(page, page.getByTestId("assistant-message").last())));
    await page.emulateMedia({ colorScheme: "dark" });
    await shot(page, "chat-dark-desktop");
    await page.emulateMedia({ colorScheme: "light" });

    // 8a. A Python block in a reply runs in the sandbox; its output streams in under the
    // block and stays with the message. The reply comes from an import (through the API
    // key), so the test does not depend on what the model writes.
    step("run a reply's Python code block");
    await importConversation(viaKey, codeReplyExport());
    await page.goto(url);
    await page.getByTestId("conversation-item").filter({ hasText: "Squares in Python" }).locator("a").click();
    const block = page.getByTestId("code-run").first();
    await block.getByRole("button", { name: /^▶ Run$/ }).click({ timeout: 30_000 });
    await block.locator('[data-testid="run-exit"][data-status="exited"]').waitFor({ timeout: 180_000 });
    const ranOut = await block.getByTestId("run-stdout").innerText();
    if (ranOut.trim() !== "1\n4\n9") fail(`the block printed ${JSON.stringify(ranOut)}`);
    if (!(await block.getByTestId("run-stderr").innerText()).includes("done")) fail("stderr is not shown apart");
    await block.getByRole("button", { name: /Run again/ }).waitFor();
    await shot(page, "chat-code-run-desktop");
    // Recorded: a reload shows the same output without running it again.
    await page.reload();
    await page.getByTestId("code-run").first().getByText(/^ran /).waitFor({ timeout: 30_000 });
    const kept = await page.getByTestId("code-run").first().getByTestId("run-stdout").innerText();
    if (kept.trim() !== "1\n4\n9") fail(`after a reload the block shows ${JSON.stringify(kept)}`);

    // 8c. Knowledge: a collection made on the Knowledge page, a document dropped into it
    // (upload and ingest with progress), a search that opens the passage; then a
    // conversation that attaches the collection from the composer, and the reply's sources
    // shown under it, each opening its passage in the document.
    step("knowledge: collection, upload, search; a reply shows the sources it was given");
    await page.goto(url);
    await page.getByRole("link", { name: "Knowledge" }).click();
    await page.getByRole("button", { name: "New collection" }).click();
    const newCollection = page.getByRole("form", { name: "New collection" });
    await newCollection.getByLabel("Name").fill("Greenhouse");
    await newCollection.getByRole("button", { name: "Create" }).click();
    await page.getByRole("heading", { name: "Greenhouse" }).waitFor({ timeout: 30_000 });
    const guideFile = join(scratch, "greenhouse.md");
    writeFileSync(
      guideFile,
      "# Greenhouse\n\n## Pests\n\nAphids gather under young leaves. A spray of soapy water removes them.\n\n## Heating\n\nA thermostat keeps the air above five degrees.\n",
    );
    await page.locator('input[aria-label="Add documents"]').setInputFiles(guideFile);
    await page.locator('[data-testid="incoming"][data-phase="done"]').waitFor({ timeout: 120_000 });
    await page.getByTestId("document").filter({ hasText: "greenhouse.md" }).waitFor({ timeout: 30_000 });
    await page.getByLabel("Search query").fill("small insects on my plants");
    await page.getByRole("button", { name: "Search", exact: true }).click();
    const hit = page.getByTestId("hit").first();
    await hit.waitFor({ timeout: 30_000 });
    if (!(await hit.innerText()).includes("Pests")) fail(`the first hit reads ${JSON.stringify(await hit.innerText())}`);
    await hit.locator("a").click();
    if (!(await page.getByTestId("cited-passage").innerText({ timeout: 30_000 })).includes("Aphids")) fail("a hit does not open its passage");
    await shot(page, "knowledge-desktop");
    const shelf = (await viaKey.knowledge.listCollections({})).collections.find((c) => c.name === "Greenhouse");
    if (!shelf || shelf.documents !== 1) fail(`the collection holds ${JSON.stringify(shelf?.documents)} documents`);
    const grounded = (
      await viaKey.chat.createConversation({ title: "Greenhouse questions", sampling: { maxTokens: 16 } })
    ).conversation;
    await page.goto(url);
    await page.getByTestId("conversation-item").filter({ hasText: "Greenhouse questions" }).locator("a").click();
    // The new conversation is on screen (empty) before anything is typed.
    await page.waitForFunction(
      (id) => location.pathname.endsWith(id) && document.querySelectorAll('[data-testid="assistant-message"]').length === 0,
      grounded.id,
      { timeout: 30_000 },
    );
    await page.getByRole("button", { name: /^Knowledge/ }).click();
    await page.getByLabel(/^Greenhouse/).check();
    await page.getByRole("button", { name: "Knowledge (1)" }).waitFor({ timeout: 30_000 });
    const ask = page.getByLabel("Message");
    await ask.fill("How do I get rid of the little insects on my plants?");
    await ask.press("Enter");
    await waitForReply(page, 0);
    const stored = await viaKey.chat.getConversation({ id: grounded.id });
    const cites = stored.messages.map((m) => m.citations.length);
    if (!cites.some((n) => n > 0)) fail(`the reply was given no sources (citations per message: ${JSON.stringify(cites)}; collections ${JSON.stringify(stored.conversation?.collectionIds)})`);
    const source = page.getByTestId("assistant-message").last().getByTestId("source").first();
    await source.waitFor({ timeout: 30_000 });
    const label = await source.locator("summary").innerText();
    if (!label.includes("greenhouse.md") || !label.includes("Pests")) fail(`the first source reads ${JSON.stringify(label)}`);
    await source.locator("summary").click();
    if (!(await source.locator("blockquote").innerText()).includes("Aphids")) fail("a source does not open to its passage");
    await shot(page, "chat-sources-desktop");
    const groundedUsage = await usageOf(page, page.getByTestId("assistant-message").last());
    billed.set(groundedUsage.id, groundedUsage);
    // Kept with the message: a reload shows the same sources; one opens in its document.
    await page.reload();
    const keptSource = page.getByTestId("assistant-message").last().getByTestId("source").first();
    await keptSource.waitFor({ timeout: 30_000 });
    await keptSource.locator("summary").click();
    await keptSource.getByRole("link", { name: "Open in the document" }).click();
    if (!(await page.getByTestId("cited-passage").innerText({ timeout: 30_000 })).includes("Aphids")) fail("a source does not open in its document");

    // 8b. The sandbox page: a workspace file, output that streams, kept files, Stop.
    step("sandbox page: upload, streaming run, kept files, stop");
    await page.getByRole("link", { name: "Sandbox" }).click();
    const dataFile = join(scratch, "greeting.txt");
    writeFileSync(dataFile, "hello from a file\n");
    await page.locator('input[aria-label="Upload files"]').setInputFiles(dataFile);
    await page.getByTestId("workspace-files").getByText("greeting.txt").waitFor({ timeout: 30_000 });
    const editor = page.getByLabel("Python code");
    await editor.fill(
      [
        "import time",
        "print(open('/workspace/greeting.txt').read().upper(), end='')",
        "for i in range(4):",
        "    print('tick', i, flush=True)",
        "    time.sleep(0.4)",
        "open('/workspace/result.txt', 'w').write('written by a run')",
      ].join("\n"),
    );
    await page.getByLabel("Keep file changes").check();
    await page.getByRole("button", { name: /Run/ }).click();
    // Output arrives while the run is still going.
    await page.waitForFunction(
      () =>
        document.querySelector('[data-testid="run-stdout"]')?.textContent?.includes("tick 0") &&
        document.querySelector('[data-testid="run-exit"]')?.getAttribute("data-status") === "running",
      null,
      { timeout: 180_000 },
    );
    await shot(page, "sandbox-running-desktop");
    await page.locator('[data-testid="run-exit"][data-status="exited"]').waitFor({ timeout: 60_000 });
    const pageOut = await page.getByTestId("run-stdout").innerText();
    if (!pageOut.startsWith("HELLO FROM A FILE\ntick 0")) fail(`the sandbox page printed ${JSON.stringify(pageOut)}`);
    await page.getByTestId("workspace-files").getByText("result.txt").waitFor({ timeout: 30_000 });
    await shot(page, "sandbox-desktop");
    await editor.fill("while True:\n    pass");
    await page.getByRole("button", { name: /Run/ }).click();
    await page.locator('[data-testid="run-exit"][data-status="running"]').waitFor();
    await page.getByRole("button", { name: /Stop/ }).click();
    await page.getByTestId("run-exit").getByText("Stopped.").waitFor({ timeout: 30_000 });

    // 8. Usage: the spend equals the tokens of every reply × the price.
    step("usage shows the spend");
    await page.getByRole("link", { name: "Usage" }).click();
    const total = page.getByTestId("usage-total");
    await total.waitFor();
    let expected = 0n;
    for (const u of billed.values()) {
      const cost = BigInt(u.prompt) * BigInt(PRICE_IN) + BigInt(u.completion) * BigInt(PRICE_OUT);
      if (cost.toString() !== u.cost) fail(`message ${u.id}: cost ${u.cost} µ, tokens say ${cost} µ`);
      expected += cost;
    }
    await page.waitForFunction(
      (want) => document.querySelector('[data-testid="usage-total"]')?.getAttribute("data-micros") === want,
      expected.toString(),
      { timeout: 15_000 },
    ).catch(async () => {
      const got = await total.getAttribute("data-micros");
      fail(`usage shows ${got} µ spent; the ${billed.size} replies' tokens × price come to ${expected} µ`);
    });
    await page.getByTestId("balance").waitFor();
    await shot(page, "usage-desktop");
    step(`usage total ${expected} µ over ${billed.size} replies matches tokens × price`);

    // 9. The phone: every screen at 390 px, signed in through the form.
    step("phone screenshots");
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const p = await phone.newPage();
    watch(p, "phone");
    await p.goto(url);
    await p.getByRole("button", { name: "Sign in" }).waitFor();
    await shot(p, "signin-phone");
    await p.getByLabel("Email").fill("ada@example.com");
    await p.getByLabel("Password").fill("correct horse battery");
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.getByLabel("Message").waitFor();
    await shot(p, "chat-new-phone");
    await p.getByRole("button", { name: "Show conversations" }).click();
    await p.getByTestId("conversation-item").first().waitFor();
    await shot(p, "sidebar-phone");
    await p.getByTestId("conversation-item").first().locator("a").click();
    await p.getByTestId("assistant-message").first().waitFor();
    await shot(p, "chat-phone");
    for (const [path, name, tabs] of [
      ["/settings", "settings", ["Profile", "Password", "API keys", "Assistants", "Templates", "Export & import"]],
      ["/usage", "usage", []],
      ["/sandbox", "sandbox", []],
      ["/admin", "admin", ["Users", "Models", "Providers", "Prices", "Credits"]],
    ]) {
      await p.getByRole("button", { name: "Menu" }).click();
      await p.locator(`nav a[href="${path}"]`).click();
      if (tabs.length === 0) {
        await p.waitForTimeout(500);
        await shot(p, `${name}-phone`);
      }
      for (const tab of tabs) {
        await p.getByRole("button", { name: tab, exact: true }).click();
        await p.waitForTimeout(300);
        await shot(p, `${name}-${slug(tab)}-phone`);
      }
    }
    await p.getByRole("button", { name: "Menu" }).click();
    await shot(p, "menu-phone");

    // 10. Sign-out returns to sign-in; a session the server revoked comes back with a message.
    step("sessions");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    await p.evaluate(() => localStorage.setItem("llmesh.refresh", "lmr_revoked_elsewhere"));
    await p.reload();
    await p.getByText("Your session has ended").waitFor();
    await shot(p, "signin-expired-phone");

    if (problems.length) fail(`the pages reported problems:\n  ${problems.join("\n  ")}`);

    const metrics = {
      initialJs: { files: js.files, bytes: js.raw, gzipBytes: js.gz },
      tokenToScreenMs: {
        samples: samples.length,
        p50: quantile(samples, 0.5),
        p95: quantile(samples, 0.95),
        max: samples.length ? Math.max(...samples) : NaN,
      },
      billedReplies: billed.size,
      spendMicros: expected.toString(),
    };
    writeFileSync(join(out, "metrics.json"), JSON.stringify(metrics, null, 2));
    step(
      `token → screen: p50 ${metrics.tokenToScreenMs.p50} ms, p95 ${metrics.tokenToScreenMs.p95} ms, max ${metrics.tokenToScreenMs.max} ms over ${samples.length} tokens`,
    );
    step(`passed; screenshots and metrics in ${out}`);
  } finally {
    await browser.close().catch(() => undefined);
    child?.kill("SIGTERM");
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** An llmesh export holding one conversation whose reply has a Python code block. */
function codeReplyExport() {
  const at = new Date().toISOString();
  const reply = [
    "Here are the first three squares:",
    "",
    "```python",
    "import sys",
    "for i in range(1, 4):",
    "    print(i * i)",
    'print("done", file=sys.stderr)',
    "```",
  ].join("\n");
  return JSON.stringify({
    format: "llmesh.conversations.v1",
    conversations: [
      {
        id: "e2e-code",
        title: "Squares in Python",
        model: MODEL,
        system_prompt: "",
        active_leaf_id: "e2e-reply",
        created_at: at,
        updated_at: at,
        messages: [
          { id: "e2e-ask", parent_id: null, role: "user", content: "Print three squares in Python.", created_at: at },
          { id: "e2e-reply", parent_id: "e2e-ask", role: "assistant", content: reply, model: MODEL, created_at: at },
        ],
      },
    ],
  });
}

/** Uploads an llmesh export through the API and imports it. */
async function importConversation(clients, text) {
  const data = new TextEncoder().encode(text);
  const digest = createHash("sha256").update(data).digest("hex");
  const begun = await clients.archive.beginUpload({ fileName: "e2e.json", sizeBytes: BigInt(data.length), sha256: digest });
  await clients.archive.appendUploadChunk({ uploadId: begun.uploadId, offset: 0n, data });
  await clients.archive.finishUpload({ uploadId: begun.uploadId });
  let report;
  for await (const res of clients.archive.importConversations({ uploadId: begun.uploadId, source: chat.ImportSource.LLMESH_JSON })) {
    if (res.event.case === "report") report = res.event.value;
  }
  if (report?.imported !== 1) fail(`importing the code reply: ${JSON.stringify(report?.skipped ?? report)}`);
}

function entry(u) {
  return [u.id, u];
}

function slug(s) {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

async function renameActive(page, title) {
  const item = page.locator('[data-testid="conversation-item"].active');
  await item.getByRole("button", { name: /Actions for/ }).click();
  await item.getByRole("menuitem", { name: "Rename" }).click();
  await item.getByLabel("New title").fill(title);
  await item.getByLabel("New title").press("Enter");
  await page.getByTestId("chat-title").filter({ hasText: title }).waitFor();
}

async function grantCredit(page, email, amount) {
  await page.getByLabel("Email").fill(email);
  await page.getByRole("button", { name: email, exact: true }).click();
  await page.getByTestId("user-balance").waitFor();
  await page.getByLabel(/^Amount/).fill(amount);
  await page.getByLabel("Reason").fill("e2e starting credit");
  await page.getByRole("button", { name: "Apply" }).click();
  const want = String(BigInt(amount) * 1_000_000n);
  await page.locator(`[data-testid="user-balance"][data-micros="${want}"]`).waitFor();
}

main().catch((err) => {
  console.error(`e2e FAILED: ${err.stack ?? err}`);
  process.exitCode = 1;
});
