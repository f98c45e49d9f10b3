// Where the browser keeps its credentials, and how they stay fresh.
//
// - The access token (a short-lived JWT, 15 minutes by default) lives only in memory.
//   It is what every call carries, so keeping it out of storage means a stolen disk
//   profile or a leaked storage dump does not hand out a working bearer token.
// - The refresh token lives in localStorage so a reload or a second tab stays signed in.
//   It is only ever sent to AuthService.Refresh and Logout. The server rotates it on every
//   use and revokes the whole session if an old one is replayed, so a copied token stops
//   working as soon as either party uses it. The page is served with a Content-Security-
//   Policy that allows only its own scripts and model output is rendered without raw HTML,
//   which is what keeps other script from reading storage in the first place.
// - Refreshes are serialised across tabs with the Web Locks API, re-reading the stored
//   token inside the lock, so two tabs never replay the same refresh token.
// - When refreshing fails because the session is gone (expired, revoked, password
//   changed elsewhere), the session is cleared and listeners are told why, so the UI can
//   return to sign-in with a message.

export const REFRESH_KEY = "llmesh.refresh";

/** A token pair as the UI needs it (times in epoch milliseconds). */
export interface Tokens {
  accessToken: string;
  accessExpiresAt: number;
  refreshToken: string;
}

/** Exchanges a refresh token for a new pair; throws `SessionGone` when it is refused. */
export type RefreshFn = (refreshToken: string) => Promise<Tokens>;

/** The session cannot be renewed (refresh token unknown, expired, revoked or reused). */
export class SessionGone extends Error {
  constructor(message = "Your session has ended. Please sign in again.") {
    super(message);
    this.name = "SessionGone";
  }
}

export interface KeyValueStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

type LockFn = <T>(name: string, fn: () => Promise<T>) => Promise<T>;

/** Renew the access token this long before it expires. */
export const REFRESH_MARGIN_MS = 60_000;

export class Session {
  private access?: { token: string; expiresAt: number };
  private inflight?: Promise<string>;
  private listeners = new Set<(reason: string) => void>();

  constructor(
    private readonly store: KeyValueStore,
    private readonly refreshFn: RefreshFn,
    private readonly now: () => number = Date.now,
    private readonly lock: LockFn = webLock,
  ) {}

  /** True when there is a refresh token to resume from. */
  hasSession(): boolean {
    return this.store.getItem(REFRESH_KEY) !== null;
  }

  refreshToken(): string | null {
    return this.store.getItem(REFRESH_KEY);
  }

  /** Stores a fresh pair (after sign-in or refresh). */
  set(tokens: Tokens): void {
    this.access = { token: tokens.accessToken, expiresAt: tokens.accessExpiresAt };
    this.store.setItem(REFRESH_KEY, tokens.refreshToken);
  }

  /** Forgets everything (sign-out, or the session is gone). */
  clear(): void {
    this.access = undefined;
    this.store.removeItem(REFRESH_KEY);
  }

  /** Called with a sentence when the session ends without the user signing out. */
  onExpired(listener: (reason: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * A valid access token, refreshing first when the one in memory is missing or about to
   * expire. Concurrent callers share one refresh. Undefined when signed out.
   */
  async accessToken(): Promise<string | undefined> {
    if (this.access && this.access.expiresAt - REFRESH_MARGIN_MS > this.now()) {
      return this.access.token;
    }
    if (!this.hasSession()) return undefined;
    this.inflight ??= this.renew().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  /** Drops the in-memory access token, e.g. after the server refused it. */
  invalidateAccess(): void {
    this.access = undefined;
  }

  private async renew(): Promise<string> {
    return this.lock("llmesh-refresh", async () => {
      // Another tab may have rotated the token while this one waited for the lock.
      const stored = this.store.getItem(REFRESH_KEY);
      if (stored === null) throw this.expire(new SessionGone());
      try {
        const tokens = await this.refreshFn(stored);
        this.set(tokens);
        return tokens.accessToken;
      } catch (err) {
        if (err instanceof SessionGone) throw this.expire(err);
        throw err; // a network failure: keep the session, let the caller report it
      }
    });
  }

  private expire(err: SessionGone): SessionGone {
    this.clear();
    for (const listener of this.listeners) listener(err.message);
    return err;
  }
}

/** Serialises across tabs where the Web Locks API exists, else just within this tab. */
const localChains = new Map<string, Promise<unknown>>();
export const webLock: LockFn = (name, fn) => {
  const locks = (globalThis.navigator as Navigator | undefined)?.locks;
  if (locks) return locks.request(name, fn) as ReturnType<typeof fn>;
  const prev = localChains.get(name) ?? Promise.resolve();
  const next = prev.catch(() => undefined).then(fn);
  localChains.set(name, next);
  return next;
};
