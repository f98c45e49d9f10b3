import { describe, expect, it, vi } from "vitest";
import { REFRESH_KEY, Session, SessionGone, type KeyValueStore, type Tokens } from "./session";

class MemoryStore implements KeyValueStore {
  map = new Map<string, string>();
  getItem(k: string) {
    return this.map.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    this.map.set(k, v);
  }
  removeItem(k: string) {
    this.map.delete(k);
  }
}

const direct = <T,>(_: string, fn: () => Promise<T>) => fn();

function setup(now = { t: 1_000_000 }) {
  const store = new MemoryStore();
  let n = 0;
  const refresh = vi.fn(async (token: string): Promise<Tokens> => {
    n++;
    await new Promise((r) => setTimeout(r, 5));
    return { accessToken: `access-${n}`, accessExpiresAt: now.t + 15 * 60_000, refreshToken: `${token}>r${n}` };
  });
  const session = new Session(store, refresh, () => now.t, direct);
  return { store, refresh, session, now };
}

describe("session tokens", () => {
  it("keeps the access token in memory and the refresh token in storage", async () => {
    const { store, session, refresh, now } = setup();
    session.set({ accessToken: "a0", accessExpiresAt: now.t + 15 * 60_000, refreshToken: "r0" });
    expect(store.getItem(REFRESH_KEY)).toBe("r0");
    expect([...store.map.values()]).not.toContain("a0");
    expect(await session.accessToken()).toBe("a0");
    expect(refresh).not.toHaveBeenCalled();
  });

  it("refreshes silently shortly before expiry, once for concurrent callers", async () => {
    const { session, refresh, now } = setup();
    session.set({ accessToken: "a0", accessExpiresAt: now.t + 15 * 60_000, refreshToken: "r0" });
    now.t += 14.5 * 60_000; // inside the one-minute margin
    const [a, b, c] = await Promise.all([session.accessToken(), session.accessToken(), session.accessToken()]);
    expect(refresh).toHaveBeenCalledTimes(1);
    expect(refresh).toHaveBeenCalledWith("r0");
    expect([a, b, c]).toEqual(["access-1", "access-1", "access-1"]);
    expect(session.refreshToken()).toBe("r0>r1");
  });

  it("resumes after a reload from the stored refresh token", async () => {
    const { store, refresh, now } = setup();
    store.setItem(REFRESH_KEY, "stored");
    const fresh = new Session(store, refresh, () => now.t, direct);
    expect(fresh.hasSession()).toBe(true);
    expect(await fresh.accessToken()).toBe("access-1");
  });

  it("uses the token another tab rotated while this one waited", async () => {
    const { store, session, refresh, now } = setup();
    session.set({ accessToken: "a0", accessExpiresAt: now.t - 1, refreshToken: "r0" });
    store.setItem(REFRESH_KEY, "rotated-by-other-tab");
    await session.accessToken();
    expect(refresh).toHaveBeenCalledWith("rotated-by-other-tab");
  });

  it("an ended session clears itself and says why", async () => {
    const store = new MemoryStore();
    store.setItem(REFRESH_KEY, "revoked");
    const session = new Session(store, async () => {
      throw new SessionGone();
    }, Date.now, direct);
    const reasons: string[] = [];
    session.onExpired((r) => reasons.push(r));
    await expect(session.accessToken()).rejects.toBeInstanceOf(SessionGone);
    expect(session.hasSession()).toBe(false);
    expect(reasons).toEqual(["Your session has ended. Please sign in again."]);
  });

  it("a network failure keeps the session for the next try", async () => {
    const store = new MemoryStore();
    store.setItem(REFRESH_KEY, "r0");
    const session = new Session(store, async () => {
      throw new TypeError("Failed to fetch");
    }, Date.now, direct);
    await expect(session.accessToken()).rejects.toBeInstanceOf(TypeError);
    expect(session.hasSession()).toBe(true);
  });

  it("signed out: no token and no refresh attempt", async () => {
    const { session, refresh } = setup();
    expect(await session.accessToken()).toBeUndefined();
    expect(refresh).not.toHaveBeenCalled();
  });
});
