// The SDK around the generated descriptors: one transport (gRPC over HTTP/2 in Node,
// grpc-web in browsers) with credentials, deadlines, safe retries and readable errors, and
// helpers for the calls that stream or upload.

import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AuthService } from "./gen/llmesh/auth/v1/auth_pb.js";
import { BillingService } from "./gen/llmesh/billing/v1/billing_pb.js";
import {
  ChatArchiveService,
  ChatService,
  ExportFormat,
  ImportSource,
  type Conversation,
  type CreateConversationRequestSchema,
  type ImportReport,
  type Message,
  type ReplyEvent,
} from "./gen/llmesh/chat/v1/chat_pb.js";
import { KnowledgeService } from "./gen/llmesh/chat/v1/knowledge_pb.js";
import type { Money, TokenUsage } from "./gen/llmesh/common/v1/common_pb.js";
import {
  ChatRole,
  FinishReason,
  LlmService,
  SamplingParamsSchema,
  type ChatMessageSchema,
  type GenerateDone,
} from "./gen/llmesh/llm/v1/llm_pb.js";
import { SandboxService, type RunExit, type RunRequestSchema, type WorkspaceFile } from "./gen/llmesh/sandbox/v1/sandbox_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";

/** How long a call answered with one message may take, unless the call says otherwise. */

/** The formats `importConversations` reads, by the name it takes. */
export type ImportFormat = "auto" | "chatgpt" | "claude" | "open-webui" | "librechat" | "typingmind" | "generic" | "llmesh";

const IMPORT_FORMATS: Record<ImportFormat, ImportSource> = {
  auto: ImportSource.UNSPECIFIED,
  chatgpt: ImportSource.CHATGPT,
  claude: ImportSource.CLAUDE,
  "open-webui": ImportSource.OPEN_WEBUI,
  librechat: ImportSource.LIBRECHAT,
  typingmind: ImportSource.TYPINGMIND,
  generic: ImportSource.GENERIC,
  llmesh: ImportSource.LLMESH_JSON,
};

export const DEFAULT_TIMEOUT_MS = 30_000;
/** How long a streamed call (a reply, an import, a run) may take by default. */
export const DEFAULT_STREAM_TIMEOUT_MS = 600_000;
/** Workspace files go up in chunks below every server's `sandbox.max_chunk_bytes`. */
const WORKSPACE_CHUNK = 256 * 1024;

const CODE_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/**
 * A failed call: the gRPC code, the server's message (`rawMessage`), the id the server
 * logged the request under and its retry hint. A `ConnectError`, so code written for
 * connect-es keeps working; `toString()` and `message` are one sentence:
 * `conversation not found (NOT_FOUND, request id 01a2…)`.
 */
export class LlmeshError extends ConnectError {
  /** The id from the server's `x-request-id` header, when it answered. */
  readonly requestId: string | undefined;
  /** Milliseconds the server asked the caller to wait before trying again. */
  readonly retryAfterMs: number | undefined;

  constructor(code: Code, rawMessage: string, metadata?: HeadersInit, cause?: unknown) {
    super(rawMessage, code, metadata, undefined, cause);
    // connect-es recognises its errors by this name (across copies of the package); with
    // another, its transports would wrap this error in a plain ConnectError again.
    this.name = "ConnectError";
    this.requestId = this.metadata.get("x-request-id") ?? undefined;
    const ms = Number(this.metadata.get("retry-after-ms") ?? NaN);
    const secs = Number(this.metadata.get("retry-after") ?? NaN);
    this.retryAfterMs = Number.isFinite(ms) ? ms : Number.isFinite(secs) ? secs * 1000 : undefined;
    let text = `${rawMessage || "the call failed"} (${this.codeName}`;
    if (this.requestId) text += `, request id ${this.requestId}`;
    if (this.retryAfterMs !== undefined) text += `, retry after ${this.retryAfterMs} ms`;
    this.message = `${text})`;
  }

  /** The code as gRPC spells it, e.g. `NOT_FOUND`. */
  get codeName(): string {
    return CODE_NAMES[this.code] ?? "UNKNOWN";
  }

  override toString(): string {
    return this.message;
  }

  /** A plain prototype check: ConnectError's own check (inherited otherwise) would call
   * every ConnectError an LlmeshError. */
  static override [Symbol.hasInstance](v: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, v);
  }

  /** The llmesh view of any error a call threw. */
  static from(err: unknown): LlmeshError {
    if (err instanceof LlmeshError) return err;
    const c = ConnectError.from(err);
    return new LlmeshError(c.code, c.rawMessage, c.metadata, c.cause ?? err);
  }
}

/** Which wire protocol the transport speaks. */
export type Protocol = "grpc" | "grpc-web";

export interface ConnectOptions {
  /** `grpc` (HTTP/2, Node only) or `grpc-web` (browsers, and any HTTP/1.1 proxy).
   * Default: `grpc` in Node, `grpc-web` elsewhere. */
  protocol?: Protocol;
  /** Call as the owner of an API key (`lmk_…`). */
  apiKey?: string;
  /** Sign in with an email and password; the session is refreshed before it expires. */
  email?: string;
  password?: string;
  /** An access token obtained elsewhere (not refreshed). */
  accessToken?: string;
  /** Deadline of calls answered with one message (default {@link DEFAULT_TIMEOUT_MS}). */
  timeoutMs?: number;
  /** Deadline of streamed calls (default {@link DEFAULT_STREAM_TIMEOUT_MS}). */
  streamTimeoutMs?: number;
  /** Tries of a retry-safe unary call after UNAVAILABLE, the first included (default 4; 1 turns retries off). */
  retries?: number;
  /** Extra interceptors, run inside the SDK's (after credentials). */
  interceptors?: Interceptor[];
}

/** Whether proto/ marks a method safe to repeat and it is answered with one message. */
export function retrySafe(method: { idempotency: MethodOptions_IdempotencyLevel; methodKind: string }): boolean {
  return method.methodKind === "unary" && method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
}

/** The wait before retry `n` (1-based): uniform in [0, min(2 s, 50 ms · 2^(n-1))]. */
export function backoffMs(n: number): number {
  return Math.random() * Math.min(2000, 50 * 2 ** (n - 1));
}

/** Retries retry-safe unary calls after UNAVAILABLE, with jittered backoff, while the call is not aborted. */
export function retryInterceptor(attempts: number): Interceptor {
  return (next) => async (req) => {
    if (attempts <= 1 || req.stream || !retrySafe(req.method)) return next(req);
    for (let tries = 1; ; tries++) {
      try {
        return await next(req);
      } catch (err) {
        const code = err instanceof ConnectError ? err.code : undefined;
        if (code !== Code.Unavailable || tries >= attempts || req.signal.aborted) throw err;
        await new Promise((resolve) => setTimeout(resolve, backoffMs(tries)));
        if (req.signal.aborted) throw err;
      }
    }
  };
}

/** Gives a streamed call a `grpc-timeout` unless it has one; the server ends the stream
 * with DEADLINE_EXCEEDED when it passes (the SDK's helpers also stop reading then). */
function streamDeadline(ms: number): Interceptor {
  return (next) => (req) => {
    if (req.stream && ms > 0 && !req.header.has("grpc-timeout")) req.header.set("grpc-timeout", `${Math.ceil(ms)}m`);
    return next(req);
  };
}

/** Turns every failure of a call, streams included, into an {@link LlmeshError}. */
export const errorInterceptor: Interceptor = (next) => async (req) => {
  let res;
  try {
    res = await next(req);
  } catch (err) {
    throw LlmeshError.from(err);
  }
  if (!res.stream) return res;
  const messages = res.message;
  return {
    ...res,
    message: (async function* () {
      try {
        yield* messages;
      } catch (err) {
        throw LlmeshError.from(err);
      }
    })(),
  };
};

const inNode =
  typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";

/** The few Node file functions the SDK uses (typed here: the package has no @types/node). */
interface NodeFs {
  readFile(path: string): Promise<Uint8Array>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  rename(from: string, to: string): Promise<void>;
}

async function nodeFs(): Promise<NodeFs> {
  const name = "node:fs/promises";
  return (await import(/* @vite-ignore */ name)) as NodeFs;
}

/**
 * One transport for every service: `unaryTimeoutMs` for calls answered with one message,
 * `streamTimeoutMs` for streams (a call's own `timeoutMs` wins), and `interceptors` outermost
 * first.
 */
export async function createTransport(
  baseUrl: string,
  protocol: Protocol,
  interceptors: Interceptor[],
  unaryTimeoutMs: number,
  streamTimeoutMs: number,
): Promise<Transport> {
  const make = async (timeoutMs: number): Promise<Transport> => {
    const defaultTimeoutMs = timeoutMs > 0 ? timeoutMs : undefined;
    const chain = timeoutMs > 0 ? interceptors : [...interceptors, streamDeadline(streamTimeoutMs)];
    if (protocol === "grpc-web") {
      return createGrpcWebTransport({ baseUrl, interceptors: chain, defaultTimeoutMs });
    }
    if (!inNode) {
      throw new LlmeshError(Code.InvalidArgument, "gRPC over HTTP/2 needs Node: use protocol \"grpc-web\" in a browser");
    }
    // Loaded only in Node, so bundles for browsers never see node:http2.
    const name = "@connectrpc/connect-node";
    const node = (await import(/* @vite-ignore */ name)) as typeof import("@connectrpc/connect-node");
    return node.createGrpcTransport({ baseUrl, interceptors: chain, defaultTimeoutMs });
  };
  const unary = await make(unaryTimeoutMs);
  // Streams get their deadline from streamDeadline() instead: connect's own deadline timer
  // outlives a stream its reader left early and would hold a Node process open until it
  // fires.
  const stream = await make(0);
  return {
    unary: (...args) => unary.unary(...args),
    stream: (...args) => stream.stream(...args),
  };
}

interface Tokens {
  accessToken: string;
  /** When to renew, as `Date.now()` milliseconds. */
  renewAt: number;
  refreshToken: string | undefined;
}

function sessionEnded(): LlmeshError {
  return new LlmeshError(
    Code.Unauthenticated,
    "the session has ended (signed out, revoked by an admin or a password change, or expired): sign in again",
  );
}

/** A signed-in session, refreshed one call at a time (a refresh token works once). */
class Session {
  private renewing: Promise<string> | undefined;

  constructor(
    private readonly auth: Client<typeof AuthService>,
    private tokens: Tokens,
  ) {}

  static async login(auth: Client<typeof AuthService>, email: string, password: string): Promise<Session> {
    let serverNow: number | undefined;
    const res = await auth.login({ email, password }, { onHeader: (h) => (serverNow = serverDate(h)) });
    return new Session(auth, tokensOf(res.tokens, serverNow));
  }

  async token(): Promise<string> {
    if (!this.tokens.accessToken) throw sessionEnded();
    if (Date.now() < this.tokens.renewAt) return this.tokens.accessToken;
    return this.renew(this.tokens.accessToken);
  }

  renew(stale: string): Promise<string> {
    if (!this.tokens.accessToken) return Promise.reject(sessionEnded());
    if (this.tokens.accessToken !== stale) return Promise.resolve(this.tokens.accessToken);
    this.renewing ??= this.refresh().finally(() => (this.renewing = undefined));
    return this.renewing;
  }

  private async refresh(): Promise<string> {
    const refreshToken = this.tokens.refreshToken;
    if (!refreshToken) throw sessionEnded();
    let serverNow: number | undefined;
    try {
      const res = await this.auth.refresh({ refreshToken }, { onHeader: (h) => (serverNow = serverDate(h)) });
      this.tokens = tokensOf(res.tokens, serverNow);
      return this.tokens.accessToken;
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
        this.tokens = { ...this.tokens, refreshToken: undefined };
        throw sessionEnded();
      }
      throw LlmeshError.from(err);
    }
  }

  async logout(): Promise<void> {
    const access = await this.token();
    const refreshToken = this.tokens.refreshToken;
    this.tokens = { accessToken: "", renewAt: 0, refreshToken: undefined };
    if (!refreshToken) return;
    await this.auth.logout({ refreshToken }, { headers: { authorization: `Bearer ${access}` } });
  }
}

function serverDate(headers: Headers): number | undefined {
  const date = headers.get("date");
  const at = date ? Date.parse(date) : NaN;
  return Number.isFinite(at) ? at : undefined;
}

/** When to renew: a minute before expiry (half-way for short tokens), measured on the server's clock. */
function tokensOf(
  pair: { accessToken: string; accessExpiresAt?: { seconds: bigint; nanos: number }; refreshToken: string } | undefined,
  serverNow: number | undefined,
): Tokens {
  if (!pair) throw new LlmeshError(Code.Internal, "the server answered without tokens");
  const expires = pair.accessExpiresAt ? Number(pair.accessExpiresAt.seconds) * 1000 + pair.accessExpiresAt.nanos / 1e6 : 0;
  const left = Math.max(0, expires - (serverNow ?? Date.now()));
  const margin = Math.min(60_000, left / 2);
  return { accessToken: pair.accessToken, renewAt: Date.now() + left - margin, refreshToken: pair.refreshToken };
}

/** A system message for {@link LlmeshClient.generate}. */
export const system = (content: string): MessageInitShape<typeof ChatMessageSchema> => ({
  role: ChatRole.SYSTEM,
  content,
});
/** A user message. */
export const user = (content: string): MessageInitShape<typeof ChatMessageSchema> => ({
  role: ChatRole.USER,
  content,
});
/** An assistant message (an earlier turn). */
export const assistant = (content: string): MessageInitShape<typeof ChatMessageSchema> => ({
  role: ChatRole.ASSISTANT,
  content,
});

/** How far a long transfer has come. */
export interface Progress {
  phase: "uploading" | "importing" | "downloading";
  done: number;
  /** 0 when unknown. */
  total: number;
}

/**
 * A reply being generated: `for await` its text deltas; then `message` holds the stored
 * assistant message with usage and cost. `stop()` asks the server to stop it; `cancel()`
 * hangs up. Either way only what was produced is charged.
 */
export class Reply implements AsyncIterable<string> {
  userMessage: Message | undefined;
  message: Message | undefined;
  text = "";

  constructor(
    private readonly client: LlmeshClient,
    readonly conversationId: string,
    private readonly events: AsyncIterable<{ event?: ReplyEvent }>,
    private readonly abort: AbortController,
  ) {}

  [Symbol.asyncIterator](): AsyncIterator<string> {
    return untilEnd(this.abort, this.deltas());
  }

  private async *deltas(): AsyncGenerator<string> {
    for await (const { event } of this.events) {
      const e = event?.event;
      if (e?.case === "delta") {
        this.text += e.value;
        yield e.value;
      } else if (e?.case === "userMessage") {
        this.userMessage = e.value;
      } else if (e?.case === "assistantMessage") {
        this.message = e.value;
        this.text = e.value.content;
      }
    }
  }

  /** Reads to the end and returns the stored assistant message. */
  async finish(): Promise<Message> {
    for await (const _ of this);
    if (!this.message) throw new LlmeshError(Code.Internal, "the reply ended without its message");
    return this.message;
  }

  /** Asks the server to stop the reply; resolves to whether one was being generated. */
  async stop(): Promise<boolean> {
    const res = await this.client.chat.stopReply({ conversationId: this.conversationId });
    return res.stopped;
  }

  /** Hangs up: the server stops the reply and keeps what was produced. */
  cancel(): void {
    this.abort.abort();
  }

  get usage(): TokenUsage | undefined {
    return this.message?.usage;
  }

  get cost(): Money | undefined {
    return this.message?.cost;
  }
}

/** A generation under way: `for await` its text deltas; then `done` holds finish reason, usage, cost and timings. */
export class Generation implements AsyncIterable<string> {
  done: GenerateDone | undefined;
  text = "";
  /** The tool calls received so far, their pieces joined (hosted models given `tools`; the reply then ends with FINISH_REASON_TOOL_CALLS). */
  toolCalls: { id: string; name: string; argumentsJson: string }[] = [];

  constructor(
    private readonly client: LlmeshClient,
    readonly generationId: string,
    private readonly responses: AsyncIterable<{ event: { case: "delta"; value: string } | { case: "done"; value: GenerateDone } | { case: "toolCall"; value: { index: number; id: string; name: string; arguments: string } } | { case: undefined; value?: undefined } }>,
    private readonly abort: AbortController,
  ) {}

  [Symbol.asyncIterator](): AsyncIterator<string> {
    return untilEnd(this.abort, this.deltas());
  }

  private async *deltas(): AsyncGenerator<string> {
    for await (const { event } of this.responses) {
      if (event.case === "delta") {
        this.text += event.value;
        yield event.value;
      } else if (event.case === "done") {
        this.done = event.value;
      } else if (event.case === "toolCall" && event.value.index < 64) {
        const piece = event.value;
        while (this.toolCalls.length <= piece.index) this.toolCalls.push({ id: "", name: "", argumentsJson: "" });
        const call = this.toolCalls[piece.index];
        if (piece.id) call.id = piece.id;
        if (piece.name) call.name = piece.name;
        call.argumentsJson += piece.arguments;
      }
    }
  }

  /** Reads to the end and returns the report; a generation the server failed is an error. */
  async finish(): Promise<GenerateDone> {
    for await (const _ of this);
    if (!this.done) throw new LlmeshError(Code.Internal, "the generation ended without its report");
    if (this.done.finishReason === FinishReason.ERROR) throw new LlmeshError(Code.Internal, this.done.error);
    return this.done;
  }

  /** Stops the generation from another call (the stream then ends as cancelled). */
  async stop(): Promise<void> {
    await this.client.llm.stopGeneration({ generationId: this.generationId });
  }

  /** Hangs up: the server stops and charges what was produced. */
  cancel(): void {
    this.abort.abort();
  }
}

/** A piece of a run's output. */
export interface Output {
  stream: "stdout" | "stderr";
  data: Uint8Array;
}

/** A run under way: `for await` its output; then `exit` says how it ended. */
export class Run implements AsyncIterable<Output> {
  exit: RunExit | undefined;
  private out: Uint8Array[] = [];
  private err: Uint8Array[] = [];

  constructor(
    private readonly responses: AsyncIterable<{ event: { case: "stdout" | "stderr"; value: Uint8Array } | { case: "exit"; value: RunExit } | { case: undefined; value?: undefined } }>,
    private readonly abort: AbortController,
  ) {}

  [Symbol.asyncIterator](): AsyncIterator<Output> {
    return untilEnd(this.abort, this.outputs());
  }

  private async *outputs(): AsyncGenerator<Output> {
    for await (const { event } of this.responses) {
      if (event.case === "stdout" || event.case === "stderr") {
        (event.case === "stdout" ? this.out : this.err).push(event.value);
        yield { stream: event.case, data: event.value };
      } else if (event.case === "exit") {
        this.exit = event.value;
      }
    }
  }

  /** Reads the run to its end. */
  async finish(): Promise<RunExit> {
    for await (const _ of this);
    if (!this.exit) throw new LlmeshError(Code.Internal, "the run ended without its exit");
    return this.exit;
  }

  /** What the run wrote to stdout so far, as text. */
  get stdout(): string {
    return decode(this.out);
  }

  /** What the run wrote to stderr so far, as text. */
  get stderr(): string {
    return decode(this.err);
  }

  cancel(): void {
    this.abort.abort();
  }
}

/** Passes `items` on; a reader that stops early (`break`) hangs up first, so the call ends
 * on the server (which stops and charges what was produced) and its connection is freed. */
function untilEnd<T>(abort: AbortController, items: AsyncGenerator<T>): AsyncIterator<T> {
  return {
    next: () => items.next(),
    return: async (value?: unknown) => {
      abort.abort();
      return items.return(value as T).catch(() => ({ done: true as const, value: undefined as T }));
    },
    throw: (err?: unknown) => items.throw(err),
  };
}

function decode(parts: Uint8Array[]): string {
  return new TextDecoder().decode(concat(parts));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Content to upload: bytes, a Blob (browsers), or a file path (Node). */
export type Source = Uint8Array | Blob | string;

async function bytesOf(source: Source): Promise<{ data: Uint8Array; name: string }> {
  if (source instanceof Uint8Array) return { data: source, name: "upload" };
  if (typeof source === "string") {
    if (!inNode) throw new LlmeshError(Code.InvalidArgument, "a file path works in Node only: pass bytes or a Blob");
    const { readFile } = await nodeFs();
    try {
      return { data: new Uint8Array(await readFile(source)), name: source.split(/[\\/]/).pop() || "upload" };
    } catch (err) {
      throw new LlmeshError(Code.InvalidArgument, `${source}: ${(err as Error).message}`);
    }
  }
  const name = "name" in source && typeof source.name === "string" ? source.name : "upload";
  return { data: new Uint8Array(await source.arrayBuffer()), name };
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function generationId(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A connection to one llmesh deployment, signed in as one caller. */
export class LlmeshClient {
  readonly auth: Client<typeof AuthService>;
  readonly chat: Client<typeof ChatService>;
  readonly archive: Client<typeof ChatArchiveService>;
  readonly knowledge: Client<typeof KnowledgeService>;
  readonly llm: Client<typeof LlmService>;
  readonly billing: Client<typeof BillingService>;
  readonly sandbox: Client<typeof SandboxService>;

  constructor(
    transport: Transport,
    private readonly session: Session | undefined,
  ) {
    this.auth = createClient(AuthService, transport);
    this.chat = createClient(ChatService, transport);
    this.archive = createClient(ChatArchiveService, transport);
    this.knowledge = createClient(KnowledgeService, transport);
    this.llm = createClient(LlmService, transport);
    this.billing = createClient(BillingService, transport);
    this.sandbox = createClient(SandboxService, transport);
  }

  /** Ends a password session on the server; later calls fail as UNAUTHENTICATED. */
  async logout(): Promise<void> {
    await this.session?.logout();
  }

  /** Starts a conversation; `fields` are those of CreateConversationRequest. */
  async createConversation(title = "", fields: Omit<MessageInitShape<typeof CreateConversationRequestSchema>, "title" | "$typeName"> = {}): Promise<Conversation> {
    const res = await this.chat.createConversation({ ...fields, title });
    if (!res.conversation) throw new LlmeshError(Code.Internal, "the server sent no conversation");
    return res.conversation;
  }

  /** Adds a user message (after `parentId`, else the active one) and streams the reply. */
  sendMessage(
    conversationId: string,
    content: string,
    options: { model?: string; parentId?: string; sampling?: MessageInitShape<typeof SamplingParamsSchema> } = {},
  ): Reply {
    const abort = new AbortController();
    const stream = this.chat.sendMessage(
      { conversationId, content, model: options.model ?? "", parentId: options.parentId ?? "", sampling: options.sampling },
      { signal: abort.signal },
    );
    return new Reply(this, conversationId, stream, abort);
  }

  /** Generates another reply to the user message before `messageId` (a branch). */
  regenerate(conversationId: string, messageId: string, options: { model?: string } = {}): Reply {
    const abort = new AbortController();
    const stream = this.chat.regenerate({ messageId, model: options.model ?? "" }, { signal: abort.signal });
    return new Reply(this, conversationId, stream, abort);
  }

  /** Replaces a user message (a branch) and streams the new reply. */
  editMessage(conversationId: string, messageId: string, content: string): Reply {
    const abort = new AbortController();
    const stream = this.chat.editMessage({ messageId, content }, { signal: abort.signal });
    return new Reply(this, conversationId, stream, abort);
  }

  /** Generates from chat messages (or a raw `prompt`) with `model`. */
  generate(
    model: string,
    messages: MessageInitShape<typeof ChatMessageSchema>[],
    options: { prompt?: string; sampling?: MessageInitShape<typeof SamplingParamsSchema> } = {},
  ): Generation {
    const abort = new AbortController();
    const id = generationId();
    const input =
      options.prompt !== undefined
        ? ({ case: "prompt", value: options.prompt } as const)
        : ({ case: "chat", value: { messages } } as const);
    const stream = this.llm.generate({ model, input, sampling: options.sampling, generationId: id }, { signal: abort.signal });
    return new Generation(this, id, stream, abort);
  }

  /** Uploads a file for an import in chunks (with its size and sha256, which the server checks). Resolves to the upload's id. */
  async upload(source: Source, options: { name?: string; onProgress?: (p: Progress) => void } = {}): Promise<string> {
    const { data, name } = await bytesOf(source);
    const begun = await this.archive.beginUpload({
      fileName: options.name ?? name,
      sizeBytes: BigInt(data.length),
      sha256: await sha256Hex(data),
    });
    const size = Math.max(1, begun.maxChunkBytes);
    options.onProgress?.({ phase: "uploading", done: 0, total: data.length });
    for (let at = 0; at < data.length; at += size) {
      const chunk = data.subarray(at, at + size);
      await this.archive.appendUploadChunk({ uploadId: begun.uploadId, offset: BigInt(at), data: chunk });
      options.onProgress?.({ phase: "uploading", done: at + chunk.length, total: data.length });
    }
    await this.archive.finishUpload({ uploadId: begun.uploadId });
    return begun.uploadId;
  }

  /**
   * Imports another chat product's export or an llmesh JSON export, reporting progress.
   * `format` is `"auto"` (the default: the server tells from the file) or names it; the
   * report says which format was read and what the file held that llmesh cannot.
   */
  async importConversations(
    source: Source,
    options: { format?: ImportFormat; name?: string; onProgress?: (p: Progress) => void } = {},
  ): Promise<ImportReport> {
    const format = options.format ?? "auto";
    const kind = IMPORT_FORMATS[format];
    if (kind === undefined) {
      throw new LlmeshError(Code.InvalidArgument, `format must be one of ${Object.keys(IMPORT_FORMATS).join(", ")}, not ${String(format)}`);
    }
    const uploadId = await this.upload(source, options);
    let report: ImportReport | undefined;
    // Read to the end (the report is the last event): a stream left half-read keeps its
    // HTTP/2 connection, and a Node process with it, alive.
    for await (const { event } of this.archive.importConversations({ uploadId, source: kind })) {
      if (event.case === "progress") options.onProgress?.({ phase: "importing", done: event.value.done, total: event.value.total });
      if (event.case === "report") report = event.value;
    }
    if (report) return report;
    throw new LlmeshError(
      Code.Unavailable,
      "the import ended without its report; the server may have restarted: list your conversations before trying again",
    );
  }

  /** One conversation (or all of the caller's) as JSON (lossless, importable) or Markdown bytes. */
  async exportConversations(options: { conversationId?: string; format?: "json" | "markdown" } = {}): Promise<Uint8Array> {
    const format = (options.format ?? "json") === "json" ? ExportFormat.JSON : ExportFormat.MARKDOWN;
    const parts: Uint8Array[] = [];
    for await (const { chunk } of this.archive.exportConversations({ conversationId: options.conversationId ?? "", format })) {
      parts.push(chunk);
    }
    return concat(parts);
  }

  /** Writes the export to `path` (Node): whole, or not at all. Resolves to the bytes written. */
  async exportConversationsToFile(path: string, options: { conversationId?: string; format?: "json" | "markdown" } = {}): Promise<number> {
    const data = await this.exportConversations(options);
    const { writeFile, rename } = await nodeFs();
    await writeFile(`${path}.partial`, data);
    await rename(`${path}.partial`, path);
    return data.length;
  }

  /** Writes a file into the caller's sandbox workspace in chunks, reporting bytes sent. */
  async writeFile(workspacePath: string, source: Source, options: { onProgress?: (p: Progress) => void } = {}): Promise<WorkspaceFile> {
    const { data } = await bytesOf(source);
    for (let at = 0; ; at += WORKSPACE_CHUNK) {
      const chunk = data.subarray(at, at + WORKSPACE_CHUNK);
      const last = at + WORKSPACE_CHUNK >= data.length;
      const res = await this.sandbox.writeFileChunk({ path: workspacePath, offset: BigInt(at), data: chunk, last });
      options.onProgress?.({ phase: "uploading", done: at + chunk.length, total: data.length });
      if (last) {
        if (!res.file) throw new LlmeshError(Code.Internal, "the server did not describe the file");
        return res.file;
      }
    }
  }

  /** Reads a workspace file. */
  async readFile(workspacePath: string, options: { onProgress?: (p: Progress) => void } = {}): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let done = 0;
    for await (const { chunk } of this.sandbox.readFile({ path: workspacePath })) {
      parts.push(chunk);
      done += chunk.length;
      options.onProgress?.({ phase: "downloading", done, total: 0 });
    }
    return concat(parts);
  }

  /** Runs Python source with the default limits. */
  runPython(code: string, options: { args?: string[]; stdin?: Uint8Array; persist?: boolean } = {}): Run {
    return this.run({ runtime: "python", code, args: options.args ?? [], stdin: options.stdin, persist: options.persist ?? false });
  }

  /** Runs code with every field of RunRequest (a WASI module, limits, persist). */
  run(request: MessageInitShape<typeof RunRequestSchema>): Run {
    const abort = new AbortController();
    return new Run(this.sandbox.run(request, { signal: abort.signal }), abort);
  }
}

/**
 * Connects to llmesh at `baseUrl` (e.g. `http://127.0.0.1:7700`): signs in when given an
 * email and password, and gives every call its credentials, a deadline, retries where
 * proto/ says they are safe, and {@link LlmeshError}s.
 */
export async function connect(baseUrl: string, options: ConnectOptions = {}): Promise<LlmeshClient> {
  const protocol = options.protocol ?? (inNode ? "grpc" : "grpc-web");
  const unaryMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const streamMs = options.streamTimeoutMs ?? DEFAULT_STREAM_TIMEOUT_MS;
  const retry = retryInterceptor(options.retries ?? 4);
  let session: Session | undefined;
  const sign: Interceptor = (next) => async (req) => {
    if (options.apiKey !== undefined) req.header.set("x-api-key", options.apiKey);
    else if (options.accessToken !== undefined) req.header.set("authorization", `Bearer ${options.accessToken}`);
    if (!session) return next(req);
    const token = await session.token();
    req.header.set("authorization", `Bearer ${token}`);
    try {
      return await next(req);
    } catch (err) {
      // Refused before anything ran (the token expired on the way): renew and send once more.
      if (req.stream || !(err instanceof ConnectError) || err.code !== Code.Unauthenticated) throw err;
      req.header.set("authorization", `Bearer ${await session.renew(token)}`);
      return next(req);
    }
  };
  const bare = await createTransport(baseUrl, protocol, [errorInterceptor, retry], unaryMs, streamMs);
  if (options.email !== undefined || options.password !== undefined) {
    if (!options.email || !options.password) {
      throw new LlmeshError(Code.InvalidArgument, "signing in needs both email and password");
    }
    session = await Session.login(createClient(AuthService, bare), options.email, options.password);
  }
  const transport = await createTransport(
    baseUrl,
    protocol,
    [errorInterceptor, sign, retry, ...(options.interceptors ?? [])],
    unaryMs,
    streamMs,
  );
  return new LlmeshClient(transport, session);
}
