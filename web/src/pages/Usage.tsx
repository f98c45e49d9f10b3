// Usage: the caller's balance, what they spent in a chosen period (by day and by model),
// and a CSV export of the underlying ledger entries. Admins may look at everyone at once.

import { useCallback, useEffect, useRef, useState } from "react";
import { billing, describeError, timestampFromDate } from "@llmesh/client";
import { api } from "../api";
import { ROLE_ADMIN, useApp } from "../app";
import { BarChart } from "../components/BarChart";
import { formatMoney, saveFile } from "../util";

const PERIODS = [7, 30, 90] as const;
const SANDBOX_PREFIX = "sandbox/";
type Period = (typeof PERIODS)[number];
const DAY_MS = 86_400_000;

/** Billing buckets days in UTC, so the period is whole UTC days ending with today. */
function periodRange(days: number, now = new Date()): { start: Date; end: Date } {
  const todayUtc = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  return { start: new Date(todayUtc - (days - 1) * DAY_MS), end: new Date(todayUtc + DAY_MS) };
}

/** YYYY-MM-DD (UTC) for every day in [start, end). */
function daysBetween(start: Date, end: Date): string[] {
  const out: string[] = [];
  for (let t = start.getTime(); t < end.getTime(); t += DAY_MS) out.push(new Date(t).toISOString().slice(0, 10));
  return out;
}

interface Report {
  byDay: billing.ListUsageResponse;
  byModel: billing.ListUsageResponse;
  days: string[];
}

export default function Usage() {
  const { me, report } = useApp();
  const isAdmin = me?.role === ROLE_ADMIN;
  const [period, setPeriod] = useState<Period>(30);
  const [allUsers, setAllUsers] = useState(false);
  const [balance, setBalance] = useState<billing.GetBalanceResponse>();
  const [balanceError, setBalanceError] = useState<string>();
  const [data, setData] = useState<Report>();
  const [error, setError] = useState<string>();
  const [loading, setLoading] = useState(true);
  const [exporting, setExporting] = useState(false);
  const request = useRef(0);

  const loadBalance = useCallback(() => {
    setBalanceError(undefined);
    api.billing
      .getBalance({})
      .then(setBalance)
      .catch((err) => setBalanceError(describeError(err)));
  }, []);

  const loadUsage = useCallback(async () => {
    const mine = ++request.current;
    const { start, end } = periodRange(period);
    const base = { start: timestampFromDate(start), end: timestampFromDate(end), allUsers: isAdmin && allUsers };
    setLoading(true);
    setError(undefined);
    try {
      const [byDay, byModel] = await Promise.all([
        api.billing.listUsage({ ...base, groupBy: billing.UsageGrouping.DAY }),
        api.billing.listUsage({ ...base, groupBy: billing.UsageGrouping.MODEL }),
      ]);
      // A slower answer to an older choice must not overwrite the current one.
      if (mine === request.current) setData({ byDay, byModel, days: daysBetween(start, end) });
    } catch (err) {
      if (mine === request.current) setError(describeError(err));
    } finally {
      if (mine === request.current) setLoading(false);
    }
  }, [period, allUsers, isAdmin]);

  useEffect(loadBalance, [loadBalance]);
  useEffect(() => {
    void loadUsage();
  }, [loadUsage]);

  const currency = data?.byDay.total?.currency || balance?.balance?.currency || "USD";
  const money = (v: bigint | number) => formatMoney(v, currency);
  const totalMicros = data?.byDay.total?.micros ?? 0n;

  // Every day of the period gets a bar, zero when nothing was spent.
  const spentOn = new Map((data?.byDay.rows ?? []).map((r) => [r.key, Number(r.spend?.micros ?? 0n)]));
  const dayBars = (data?.days ?? []).map((d) => ({ key: d, value: spentOn.get(d) ?? 0 }));
  const byModel = [...(data?.byModel.rows ?? [])].sort((a, b) => {
    const d = (b.spend?.micros ?? 0n) - (a.spend?.micros ?? 0n);
    return d > 0n ? 1 : d < 0n ? -1 : a.key.localeCompare(b.key);
  });
  const modelBars = byModel.map((r) => ({ key: r.key || "(unknown model)", value: Number(r.spend?.micros ?? 0n) }));
  // Sandbox runs are billed under "sandbox/<runtime>" and counted in fuel, not tokens.
  const runtimes = byModel.filter((r) => r.key.startsWith(SANDBOX_PREFIX));
  const models = byModel.filter((r) => !r.key.startsWith(SANDBOX_PREFIX));
  const sum = (rows: typeof byModel) => rows.reduce((t, r) => t + (r.spend?.micros ?? 0n), 0n);
  const totals = models.reduce(
    (t, r) => ({
      requests: t.requests + r.requests,
      prompt: t.prompt + (r.tokens?.promptTokens ?? 0),
      completion: t.completion + (r.tokens?.completionTokens ?? 0),
    }),
    { requests: 0n, prompt: 0, completion: 0 },
  );

  async function downloadCsv() {
    const { start, end } = periodRange(period);
    setExporting(true);
    try {
      const parts: Uint8Array[] = [];
      for await (const res of api.billing.exportUsage({
        start: timestampFromDate(start),
        end: timestampFromDate(end),
        allUsers: isAdmin && allUsers,
      })) {
        parts.push(res.csvChunk);
      }
      const last = new Date(end.getTime() - DAY_MS).toISOString().slice(0, 10);
      const name = `llmesh-usage${isAdmin && allUsers ? "-all-users" : ""}-${start.toISOString().slice(0, 10)}-to-${last}.csv`;
      saveFile(parts, name, "text/csv;charset=utf-8");
    } catch (err) {
      report(err);
    } finally {
      setExporting(false);
    }
  }

  return (
    <main className="page">
      <div className="page-inner">
        <h1>Usage</h1>

        <div className="grid2">
          <section className="card" aria-labelledby="balance-title">
            <h2 id="balance-title">Your balance</h2>
            {balanceError ? (
              <div className="banner error" role="alert">
                {balanceError}{" "}
                <button type="button" className="link" onClick={loadBalance}>
                  Try again
                </button>
              </div>
            ) : (
              <div data-testid="balance" data-micros={balance?.balance ? String(balance.balance.micros) : undefined}>
                <div className="stat">{balance ? money(balance.balance?.micros ?? 0n) : "…"}</div>
                <span className="hint">
                  {balance
                    ? `${money(balance.reserved?.micros ?? 0n)} reserved by replies in progress (already taken off the balance).`
                    : "Loading…"}
                </span>
              </div>
            )}
          </section>

          <section className="card" aria-labelledby="total-title">
            <h2 id="total-title">Spent in the last {period} days</h2>
            <div className="stat" data-testid="usage-total" data-micros={data && !loading ? String(totalMicros) : undefined} aria-busy={loading}>
              {data ? money(totalMicros) : "…"}
            </div>
            <span className="hint">
              {isAdmin && allUsers ? "All users together." : "Your own usage."} Days are counted in UTC.
            </span>
          </section>
        </div>

        <div className="card">
          <div className="row">
            <div className="tabs" role="group" aria-label="Period" style={{ marginBottom: 0, borderBottom: "none" }}>
              {PERIODS.map((p) => (
                <button
                  key={p}
                  type="button"
                  className={p === period ? "active" : ""}
                  aria-pressed={p === period}
                  onClick={() => setPeriod(p)}
                >
                  Last {p} days
                </button>
              ))}
            </div>
            {isAdmin && (
              <label style={{ margin: 0 }} className="row">
                <input type="checkbox" checked={allUsers} onChange={(e) => setAllUsers(e.target.checked)} />
                All users
              </label>
            )}
            <span className="spacer" />
            <button type="button" onClick={() => void downloadCsv()} disabled={exporting}>
              {exporting ? "Preparing CSV…" : "Download CSV"}
            </button>
          </div>
        </div>

        {error && (
          <div className="banner error" role="alert">
            {error}{" "}
            <button type="button" className="link" onClick={() => void loadUsage()}>
              Try again
            </button>
          </div>
        )}
        {loading && !data && <p className="muted">Loading usage…</p>}

        {data && (
          <>
            <section className="card" aria-busy={loading}>
              <BarChart data={dayBars} format={money} label="Spend by day" tickLabel={(d) => d.slice(5)} />
            </section>
            <section className="card" aria-busy={loading}>
              <BarChart data={modelBars} format={money} label={runtimes.length ? "Spend by model and sandbox runtime" : "Spend by model"} />
              {models.length > 0 && (
                <div className="table-wrap" style={{ marginTop: "1rem" }}>
                  <table className="data">
                    <caption className="hint" style={{ textAlign: "left", marginBottom: "0.25rem" }}>
                      Usage by model, most spent first
                    </caption>
                    <thead>
                      <tr>
                        <th scope="col">Model</th>
                        <th scope="col" className="num">Requests</th>
                        <th scope="col" className="num">Prompt tokens</th>
                        <th scope="col" className="num">Completion tokens</th>
                        <th scope="col" className="num">Spend</th>
                      </tr>
                    </thead>
                    <tbody>
                      {models.map((r) => (
                        <tr key={r.key}>
                          <td style={{ overflowWrap: "anywhere" }}>{r.key || <span className="muted">(unknown model)</span>}</td>
                          <td className="num">{r.requests.toLocaleString()}</td>
                          <td className="num">{(r.tokens?.promptTokens ?? 0).toLocaleString()}</td>
                          <td className="num">{(r.tokens?.completionTokens ?? 0).toLocaleString()}</td>
                          <td className="num">{money(r.spend?.micros ?? 0n)}</td>
                        </tr>
                      ))}
                    </tbody>
                    <tfoot>
                      <tr>
                        <th scope="row">Total</th>
                        <td className="num">{totals.requests.toLocaleString()}</td>
                        <td className="num">{totals.prompt.toLocaleString()}</td>
                        <td className="num">{totals.completion.toLocaleString()}</td>
                        <td className="num">{money(sum(models))}</td>
                      </tr>
                    </tfoot>
                  </table>
                </div>
              )}
              {runtimes.length > 0 && (
                <div className="table-wrap" style={{ marginTop: "1rem" }}>
                  <table className="data" data-testid="sandbox-usage">
                    <caption className="hint" style={{ textAlign: "left", marginBottom: "0.25rem" }}>
                      Sandbox runs, billed by the fuel (WebAssembly instructions) they used
                    </caption>
                    <thead>
                      <tr>
                        <th scope="col">Runtime</th>
                        <th scope="col" className="num">Runs</th>
                        <th scope="col" className="num">Fuel</th>
                        <th scope="col" className="num">Spend</th>
                      </tr>
                    </thead>
                    <tbody>
                      {runtimes.map((r) => (
                        <tr key={r.key}>
                          <td>{r.key.slice(SANDBOX_PREFIX.length)}</td>
                          <td className="num">{r.requests.toLocaleString()}</td>
                          <td className="num">{r.fuel.toLocaleString()}</td>
                          <td className="num">{money(r.spend?.micros ?? 0n)}</td>
                        </tr>
                      ))}
                    </tbody>
                    <tfoot>
                      <tr>
                        <th scope="row">Total</th>
                        <td className="num">{runtimes.reduce((t, r) => t + r.requests, 0n).toLocaleString()}</td>
                        <td className="num">{runtimes.reduce((t, r) => t + r.fuel, 0n).toLocaleString()}</td>
                        <td className="num">{money(sum(runtimes))}</td>
                      </tr>
                    </tfoot>
                  </table>
                </div>
              )}
            </section>
          </>
        )}
      </div>
    </main>
  );
}
