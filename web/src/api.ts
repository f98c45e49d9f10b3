// The one set of clients the UI uses, bound to the session's credentials.

import {
  Code,
  ConnectError,
  createClients,
  timestampDate,
  type Credentials,
  type LlmeshClients,
} from "@llmesh/client";
import type { Interceptor } from "@connectrpc/connect";
import { Session, SessionGone, type Tokens } from "./session";

const baseUrl = typeof window === "undefined" ? "http://127.0.0.1:7700" : window.location.origin;

// Refresh goes through its own anonymous client: it must not wait on the session itself.
const anonymous = createClients({ baseUrl });

async function refresh(refreshToken: string): Promise<Tokens> {
  try {
    const res = await anonymous.auth.refresh({ refreshToken });
    return toTokens(res.tokens);
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
      throw new SessionGone();
    }
    throw err;
  }
}

export function toTokens(pair: { accessToken: string; accessExpiresAt?: Parameters<typeof timestampDate>[0]; refreshToken: string } | undefined): Tokens {
  if (!pair || !pair.accessExpiresAt) throw new Error("the server returned no tokens");
  return {
    accessToken: pair.accessToken,
    accessExpiresAt: timestampDate(pair.accessExpiresAt).getTime(),
    refreshToken: pair.refreshToken,
  };
}

export const session = new Session(window.localStorage, refresh);

async function credentials(): Promise<Credentials> {
  const token = await session.accessToken();
  return token ? { kind: "bearer", token } : { kind: "none" };
}

// A token the server refused (revoked, keys rotated, clock skew): renew once and retry a
// unary call. Streams are not retried; their next attempt gets a fresh token anyway.
const retryOnce: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    if (
      err instanceof ConnectError &&
      err.code === Code.Unauthenticated &&
      !req.stream &&
      req.header.has("authorization") &&
      session.hasSession()
    ) {
      session.invalidateAccess();
      const token = await session.accessToken();
      if (token) {
        req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      }
    }
    throw err;
  }
};

export const api: LlmeshClients = createClients({ baseUrl, credentials, interceptors: [retryOnce] });
