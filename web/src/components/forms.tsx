// Pieces the settings and knowledge pages share: role checks, a write action with
// "busy" and errors in words, a reloadable list, and form and table parts.

import { useCallback, useEffect, useState, type ReactNode } from "react";
import type { auth } from "@llmesh/client";
import { ROLE_ADMIN, ROLE_MEMBER, useApp } from "../app";

export const canWrite = (me: auth.User) => me.role >= ROLE_MEMBER;
export const isAdmin = (me: auth.User) => me.role === ROLE_ADMIN;

/** Runs a write, tracking "busy" and showing any failure in words. */
export function useAction() {
  const { report } = useApp();
  const [busy, setBusy] = useState(false);
  const run = useCallback(
    async (fn: () => Promise<void>) => {
      setBusy(true);
      try {
        await fn();
      } catch (err) {
        report(err);
      } finally {
        setBusy(false);
      }
    },
    [report],
  );
  return [busy, run] as const;
}

/** Loads a list once (and again on reload()); undefined while the first load runs. */
export function useList<T>(fetch: () => Promise<T[]>): [T[] | undefined, () => void] {
  const { report } = useApp();
  const [items, setItems] = useState<T[]>();
  const reload = useCallback(() => {
    fetch()
      .then(setItems)
      .catch((err) => {
        setItems((old) => old ?? []);
        report(err);
      });
  }, [fetch, report]);
  useEffect(reload, [reload]);
  return [items, reload];
}

/** A list in a scrollable table, or a line saying it is loading or empty. */
export function Listing<T>({ items, empty, head, row }: { items?: T[]; empty: string; head: string[]; row: (item: T) => ReactNode }) {
  if (!items) return <p className="muted">Loading…</p>;
  if (items.length === 0) return <p className="muted">{empty}</p>;
  return (
    <div className="table-wrap">
      <table className="data">
        <thead>
          <tr>{head.map((h, i) => <th key={i}>{h}</th>)}</tr>
        </thead>
        <tbody>{items.map(row)}</tbody>
      </table>
    </div>
  );
}

/** The sentence shown in place of (or next to) write actions for viewers. */
export function ReadOnlyNote({ children }: { children: ReactNode }) {
  return (
    <p className="banner" data-testid="read-only">
      Your account has the viewer role, which can read but not change anything: {children} Ask an administrator for
      the member role if you need it.
    </p>
  );
}

/** A labelled form control, with an optional hint under it. */
export function Field({ label, hint, children }: { label: ReactNode; hint?: ReactNode; children: ReactNode }) {
  return (
    <label>
      {label}
      {children}
      {hint && <span className="hint">{hint}</span>}
    </label>
  );
}

/** A bar for work under way; `max` 0 shows an empty bar. */
export function Progress({ value, max, label }: { value: number; max: number; label: string }) {
  const pct = max > 0 ? Math.min(100, Math.round((value / max) * 100)) : 0;
  return (
    <div className="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
      <div style={{ width: `${pct}%` }} />
    </div>
  );
}
