// The llmesh TypeScript client: message types and service descriptors generated from
// proto/ (see buf.gen.yaml), plus a small amount of hand-written glue: a grpc-web
// transport that attaches credentials, typed clients for every service, and error text a
// person can read.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { errorInterceptor, retryInterceptor } from "./sdk.js";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import { AuthService } from "./gen/llmesh/auth/v1/auth_pb.js";
import { BillingService } from "./gen/llmesh/billing/v1/billing_pb.js";
import { ChatArchiveService, ChatService } from "./gen/llmesh/chat/v1/chat_pb.js";
import { KnowledgeService } from "./gen/llmesh/chat/v1/knowledge_pb.js";
import { LlmService } from "./gen/llmesh/llm/v1/llm_pb.js";
import { SandboxService } from "./gen/llmesh/sandbox/v1/sandbox_pb.js";

export * as auth from "./gen/llmesh/auth/v1/auth_pb.js";
export * as billing from "./gen/llmesh/billing/v1/billing_pb.js";
export * as chat from "./gen/llmesh/chat/v1/chat_pb.js";
export * as common from "./gen/llmesh/common/v1/common_pb.js";
export * as knowledge from "./gen/llmesh/chat/v1/knowledge_pb.js";
export * as llm from "./gen/llmesh/llm/v1/llm_pb.js";
export * as sandbox from "./gen/llmesh/sandbox/v1/sandbox_pb.js";
export { AuthService, BillingService, ChatArchiveService, ChatService, KnowledgeService, LlmService, SandboxService };
export { Code, ConnectError, timestampDate, timestampFromDate, type Timestamp };
export * from "./sdk.js";

/** How a call proves who is calling. */
export type Credentials =
  /** A user's access token (browser sessions). */
  | { kind: "bearer"; token: string }
  /** An API key (`lmk_…`), for programs. */
  | { kind: "apiKey"; key: string }
  | { kind: "none" };

export interface ClientOptions {
  /** Where llmesh listens, e.g. `http://127.0.0.1:7700`; in a page served by llmesh, its origin. */
  baseUrl: string;
  /**
   * Called before every request. May refresh a token first; returning `none` sends the
   * call anonymously (only public RPCs accept that).
   */
  credentials?: () => Credentials | Promise<Credentials>;
  /** Extra interceptors, run after the credentials one. */
  interceptors?: Interceptor[];
}

export interface LlmeshClients {
  auth: Client<typeof AuthService>;
  chat: Client<typeof ChatService>;
  archive: Client<typeof ChatArchiveService>;
  knowledge: Client<typeof KnowledgeService>;
  llm: Client<typeof LlmService>;
  billing: Client<typeof BillingService>;
  sandbox: Client<typeof SandboxService>;
}

/**
 * One grpc-web transport (HTTP/1.1 or 2, works from browsers) and a client per service,
 * for a page that manages its own session (the web UI). Programs want {@link connect}.
 * Failures are {@link LlmeshError}s; retry-safe unary calls are retried after UNAVAILABLE.
 */
export function createClients(options: ClientOptions): LlmeshClients {
  const credentials = options.credentials ?? (() => ({ kind: "none" }) as Credentials);
  const attach: Interceptor = (next) => async (req) => {
    const cred = await credentials();
    if (cred.kind === "bearer") req.header.set("authorization", `Bearer ${cred.token}`);
    if (cred.kind === "apiKey") req.header.set("x-api-key", cred.key);
    return next(req);
  };
  const transport = createGrpcWebTransport({
    baseUrl: options.baseUrl,
    interceptors: [errorInterceptor, attach, retryInterceptor(4), ...(options.interceptors ?? [])],
  });
  return {
    auth: createClient(AuthService, transport),
    chat: createClient(ChatService, transport),
    archive: createClient(ChatArchiveService, transport),
    knowledge: createClient(KnowledgeService, transport),
    llm: createClient(LlmService, transport),
    billing: createClient(BillingService, transport),
    sandbox: createClient(SandboxService, transport),
  };
}

const FALLBACK: Partial<Record<Code, string>> = {
  [Code.Unauthenticated]: "Please sign in again.",
  [Code.PermissionDenied]: "Your account is not allowed to do that.",
  [Code.NotFound]: "That no longer exists. It may have been deleted.",
  [Code.AlreadyExists]: "That already exists.",
  [Code.InvalidArgument]: "Something in the form is not valid.",
  [Code.FailedPrecondition]: "That cannot be done right now.",
  [Code.ResourceExhausted]: "Too many requests or not enough credit. Try again later.",
  [Code.Unavailable]: "The llmesh server cannot be reached. Check that it is running, then try again.",
  [Code.DeadlineExceeded]: "The server took too long to answer. Try again.",
  [Code.Canceled]: "Stopped.",
  [Code.Unimplemented]: "This server does not offer that feature.",
  [Code.Internal]: "The server hit an internal error. Try again; if it keeps happening, tell your admin.",
  [Code.Unknown]: "Something went wrong. Try again.",
};

/** Seconds to wait before retrying, when the server said (RESOURCE_EXHAUSTED). */
export function retryAfterSeconds(err: unknown): number | undefined {
  if (!(err instanceof ConnectError)) return undefined;
  const ms = err.metadata.get("retry-after-ms");
  if (ms && Number.isFinite(Number(ms))) return Math.ceil(Number(ms) / 1000);
  const secs = err.metadata.get("retry-after");
  if (secs && Number.isFinite(Number(secs))) return Number(secs);
  return undefined;
}

/**
 * A sentence a person can act on, never a bare status code. The server's own message is
 * used when it has one (they are written for people: "wrong email or password"), with a
 * capital letter and a full stop; network failures say the server cannot be reached.
 */
export function describeError(err: unknown): string {
  if (!(err instanceof ConnectError)) {
    if (err instanceof TypeError) return FALLBACK[Code.Unavailable]!;
    if (err instanceof Error && err.message) return sentence(err.message);
    return FALLBACK[Code.Unknown]!;
  }
  // Network failures surface as UNKNOWN/UNAVAILABLE with the browser's fetch text.
  if (
    (err.code === Code.Unavailable || err.code === Code.Unknown) &&
    /fetch|network|load failed/i.test(err.rawMessage)
  ) {
    return FALLBACK[Code.Unavailable]!;
  }
  const raw = err.rawMessage.trim();
  const fallback = FALLBACK[err.code] ?? FALLBACK[Code.Unknown]!;
  // The server's internal-error text only carries a request id; keep it for the admin.
  let text = err.code === Code.Internal ? `${fallback} (${raw || "no details"})` : sentence(raw || fallback);
  const wait = retryAfterSeconds(err);
  if (err.code === Code.ResourceExhausted && wait !== undefined) {
    text += ` Try again in ${formatWait(wait)}.`;
  }
  return text;
}

function sentence(text: string): string {
  const t = text.trim();
  if (!t) return t;
  const first = t[0]!.toUpperCase() + t.slice(1);
  return /[.!?)]$/.test(first) ? first : `${first}.`;
}

function formatWait(secs: number): string {
  if (secs < 60) return `${secs} second${secs === 1 ? "" : "s"}`;
  const mins = Math.ceil(secs / 60);
  return `${mins} minute${mins === 1 ? "" : "s"}`;
}
