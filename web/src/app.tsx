// App-wide state: who is signed in, notices (toasts), and the sign-out path.

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { describeError, type auth } from "@llmesh/client";
import { api, session } from "./api";

export interface Notice {
  id: number;
  kind: "error" | "info";
  text: string;
}

interface AppState {
  me?: auth.User;
  /** Set while the first GetMe is in flight after a reload. */
  loading: boolean;
  /** Why the user was returned to sign-in, if it was not their choice. */
  signedOutReason?: string;
  setMe: (me: auth.User | undefined) => void;
  signOut: () => Promise<void>;
  notify: (text: string, kind?: Notice["kind"]) => void;
  /** Shows an error in words; returns nothing so it fits `.catch(report)`. */
  report: (err: unknown) => void;
  notices: Notice[];
  dismiss: (id: number) => void;
}

const Ctx = createContext<AppState | null>(null);

export function useApp(): AppState {
  const ctx = useContext(Ctx);
  if (!ctx) throw new Error("useApp outside <AppProvider>");
  return ctx;
}

export function AppProvider({ children }: { children: ReactNode }) {
  const [me, setMe] = useState<auth.User>();
  const [loading, setLoading] = useState(session.hasSession());
  const [signedOutReason, setReason] = useState<string>();
  const [notices, setNotices] = useState<Notice[]>([]);
  const nextId = useRef(1);

  const dismiss = useCallback((id: number) => setNotices((n) => n.filter((x) => x.id !== id)), []);
  const notify = useCallback(
    (text: string, kind: Notice["kind"] = "info") => {
      const id = nextId.current++;
      setNotices((n) => [...n.slice(-3), { id, kind, text }]);
      setTimeout(() => dismiss(id), kind === "error" ? 8000 : 4000);
    },
    [dismiss],
  );
  const report = useCallback((err: unknown) => notify(describeError(err), "error"), [notify]);

  useEffect(() => {
    const off = session.onExpired((reason) => {
      setMe(undefined);
      setReason(reason);
    });
    if (session.hasSession()) {
      api.auth
        .getMe({})
        .then((r) => setMe(r.user))
        .catch((err) => {
          if (!session.hasSession()) return; // expired: the listener already explained
          report(err);
        })
        .finally(() => setLoading(false));
    }
    return () => {
      off();
    };
  }, [report]);

  const signOut = useCallback(async () => {
    const refreshToken = session.refreshToken();
    if (refreshToken) {
      // Revoke the session server-side; sign out locally whatever happens.
      await api.auth.logout({ refreshToken }).catch(() => undefined);
    }
    session.clear();
    setReason(undefined);
    setMe(undefined);
  }, []);

  const value = useMemo(
    () => ({
      me,
      loading,
      signedOutReason,
      setMe: (u: auth.User | undefined) => {
        if (u) setReason(undefined);
        setMe(u);
      },
      signOut,
      notify,
      report,
      notices,
      dismiss,
    }),
    [me, loading, signedOutReason, signOut, notify, report, notices, dismiss],
  );
  return <Ctx.Provider value={value}>{children}</Ctx.Provider>;
}

export function Notices() {
  const { notices, dismiss } = useApp();
  return (
    <div className="notices" aria-live="polite">
      {notices.map((n) => (
        <div key={n.id} className={`notice ${n.kind}`} role={n.kind === "error" ? "alert" : "status"}>
          <span>{n.text}</span>
          <button type="button" aria-label="Dismiss" onClick={() => dismiss(n.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

/** Role helpers (values of llmesh.common.v1.Role). */
export const ROLE_VIEWER = 1;
export const ROLE_MEMBER = 2;
export const ROLE_ADMIN = 3;
export const roleName = (r: number) => (["unspecified", "viewer", "member", "admin"][r] ?? "unknown");
