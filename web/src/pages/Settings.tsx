// Settings: the signed-in person's profile, password, API keys, assistants, prompt
// templates, and export/import of their conversations. The open tab lives in the URL hash
// (#keys, #assistants, …) so a reload or a shared link lands on the same tab.

import { useEffect, useState, type FormEvent } from "react";
import { chat, common, llm, timestampFromDate, type auth } from "@llmesh/client";
import { api } from "../api";
import { roleName, useApp } from "../app";
import { CollectionPicker } from "../components/CollectionPicker";
import { canWrite, Field, isAdmin, Listing, ReadOnlyNote, useAction, useList } from "../components/forms";
import { CopyButton } from "../components/Markdown";
import { SettingsArchive } from "../components/SettingsArchive";
import { relativeTime, toDate } from "../util";

const TABS = [
  { id: "profile", label: "Profile" },
  { id: "password", label: "Password" },
  { id: "keys", label: "API keys" },
  { id: "assistants", label: "Assistants" },
  { id: "templates", label: "Templates" },
  { id: "archive", label: "Export & import" },
] as const;
type TabId = (typeof TABS)[number]["id"];

const tabFromHash = (): TabId | undefined => TABS.find((t) => `#${t.id}` === window.location.hash)?.id;

const MIN_PASSWORD = 10;

export default function Settings() {
  const { me } = useApp();
  const [tab, setTab] = useState<TabId>(() => tabFromHash() ?? (me?.passwordChangeRequired ? "password" : "profile"));

  // Follow back/forward and hand-edited hashes.
  useEffect(() => {
    const onHash = () => {
      const t = tabFromHash();
      if (t) setTab(t);
    };
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  const choose = (id: TabId) => {
    setTab(id);
    window.history.replaceState(null, "", `${window.location.pathname}${window.location.search}#${id}`);
  };

  if (!me) return null;
  return (
    <main className="page">
      <div className="page-inner">
        <h1>Settings</h1>
        <nav className="tabs" aria-label="Settings sections">
          {TABS.map((t) => (
            <button key={t.id} type="button" aria-pressed={tab === t.id} className={tab === t.id ? "active" : ""} onClick={() => choose(t.id)}>
              {t.label}
            </button>
          ))}
        </nav>
        {tab === "profile" && <ProfileTab me={me} />}
        {tab === "password" && <PasswordTab me={me} />}
        {tab === "keys" && <KeysTab me={me} />}
        {tab === "assistants" && <AssistantsTab me={me} />}
        {tab === "templates" && <TemplatesTab me={me} />}
        {tab === "archive" && <SettingsArchive me={me} />}
      </div>
    </main>
  );
}

// ---------------------------------------------------------------------------------------
// Shared pieces

/** Own items may be changed; global ones only by admins. Viewers change nothing. */
const mayEdit = (me: auth.User, item: { ownerId: string; global: boolean }) =>
  canWrite(me) && (item.global ? isAdmin(me) : item.ownerId === me.id);
const shortDate = (d: Date | undefined) => (d ? d.toLocaleDateString() : "—");

const fetchKeys = () => api.auth.listApiKeys({}).then((r) => r.apiKeys);
const fetchAssistants = () => api.chat.listAssistants({}).then((r) => r.assistants);
const fetchTemplates = () => api.chat.listTemplates({}).then((r) => r.templates);
const fetchChatModels = () => api.llm.listModels({}).then((r) => r.models.filter((m) => m.kind === llm.ModelKind.CHAT));

function EditDelete({ onEdit, onDelete }: { onEdit: () => void; onDelete: () => void }) {
  return (
    <div className="row">
      <button type="button" onClick={onEdit}>Edit</button>
      <button type="button" className="danger" onClick={onDelete}>Delete</button>
    </div>
  );
}

// ---------------------------------------------------------------------------------------
// Profile

function ProfileTab({ me }: { me: auth.User }) {
  const { setMe, notify } = useApp();
  const [name, setName] = useState(me.displayName);
  const [busy, run] = useAction();

  const save = (e: FormEvent) => {
    e.preventDefault();
    const displayName = name.trim();
    if (!displayName) return notify("Enter a display name.", "error");
    void run(async () => {
      const res = await api.auth.updateProfile({ displayName });
      if (res.user) setMe(res.user);
      notify("Profile saved.");
    });
  };

  return (
    <form className="card" onSubmit={save} aria-label="Profile">
      <h2>Profile</h2>
      <Field label="Email"><input type="email" value={me.email} readOnly /></Field>
      <Field label="Role" hint="Only an administrator can change roles."><input value={roleName(me.role)} readOnly /></Field>
      <Field label="Display name">
        <input value={name} maxLength={100} required autoComplete="name" onChange={(e) => setName(e.target.value)} />
      </Field>
      <div className="row end">
        <button type="submit" className="primary" disabled={busy || name.trim() === me.displayName}>{busy ? "Saving…" : "Save"}</button>
      </div>
    </form>
  );
}

// ---------------------------------------------------------------------------------------
// Password

function PasswordTab({ me }: { me: auth.User }) {
  const { setMe, notify } = useApp();
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [confirm, setConfirm] = useState("");
  const [error, setError] = useState<string>();
  const [done, setDone] = useState(false);
  const [busy, run] = useAction();

  const submit = (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    setDone(false);
    // Checked here first so a typo never reaches the server.
    if (next.length < MIN_PASSWORD) return setError(`The new password needs at least ${MIN_PASSWORD} characters.`);
    if (next !== confirm) return setError("The new password and its confirmation do not match.");
    if (next === current) return setError("Choose a new password that differs from the current one.");
    void run(async () => {
      await api.auth.changePassword({ currentPassword: current, newPassword: next });
      setCurrent("");
      setNext("");
      setConfirm("");
      setDone(true);
      notify("Password changed. Your other sessions were signed out.");
      // The server clears "must change password"; fetch the account to drop the reminder.
      if (me.passwordChangeRequired) {
        const res = await api.auth.getMe({});
        if (res.user) setMe(res.user);
      }
    });
  };

  return (
    <form className="card" onSubmit={submit} aria-label="Change password">
      <h2>Change password</h2>
      {me.passwordChangeRequired && <p className="banner info">An administrator reset your password. Please choose a new one now.</p>}
      {error && <p className="banner error" role="alert">{error}</p>}
      {done && (
        <p className="banner info" role="status">
          Your password was changed. All your other sessions (other browsers and devices) were signed out; this one
          stays signed in.
        </p>
      )}
      <Field label="Current password">
        <input type="password" autoComplete="current-password" required value={current} onChange={(e) => setCurrent(e.target.value)} />
      </Field>
      <Field label="New password" hint={`At least ${MIN_PASSWORD} characters.`}>
        <input type="password" autoComplete="new-password" required value={next} onChange={(e) => setNext(e.target.value)} />
      </Field>
      <Field label="Confirm new password">
        <input type="password" autoComplete="new-password" required value={confirm} onChange={(e) => setConfirm(e.target.value)} />
      </Field>
      <div className="row end">
        <button type="submit" className="primary" disabled={busy}>{busy ? "Changing…" : "Change password"}</button>
      </div>
    </form>
  );
}

// ---------------------------------------------------------------------------------------
// API keys

function keyStatus(k: auth.ApiKey): [string, string] {
  if (k.revoked) return ["revoked", "badge warn"];
  const exp = toDate(k.expiresAt);
  if (exp && exp.getTime() <= Date.now()) return ["expired", "badge warn"];
  return ["active", "badge ok"];
}

/** Today as yyyy-mm-dd in local time, for the date input's minimum. */
function todayInput(): string {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

function KeysTab({ me }: { me: auth.User }) {
  const { notify } = useApp();
  const [keys, reload] = useList(fetchKeys);
  const [name, setName] = useState("");
  const [expires, setExpires] = useState("");
  const [ceiling, setCeiling] = useState<common.Role>(common.Role.MEMBER);
  // The new secret lives only here, and only until the dialog is closed.
  const [secret, setSecret] = useState<{ name: string; value: string }>();
  const [busy, run] = useAction();
  const writable = canWrite(me);

  const create = (e: FormEvent) => {
    e.preventDefault();
    const keyName = name.trim();
    if (!keyName) return notify("Give the key a name, e.g. the program that will use it.", "error");
    // A chosen expiry date means "valid through the end of that day", local time.
    const expiresAt = expires ? new Date(`${expires}T23:59:59`) : undefined;
    if (expiresAt && !(expiresAt.getTime() > Date.now())) {
      return notify("Choose an expiry date in the future, or leave it empty.", "error");
    }
    void run(async () => {
      const res = await api.auth.createApiKey({
        name: keyName,
        roleCeiling: ceiling,
        expiresAt: expiresAt ? timestampFromDate(expiresAt) : undefined,
      });
      setSecret({ name: keyName, value: res.secret });
      setName("");
      setExpires("");
      reload();
    });
  };

  const revoke = (k: auth.ApiKey) => {
    if (!window.confirm(`Revoke the key "${k.name}"? Programs using it stop working at once.`)) return;
    void run(async () => {
      await api.auth.revokeApiKey({ id: k.id });
      notify(`Key "${k.name}" revoked.`);
      reload();
    });
  };

  return (
    <>
      {writable ? (
        <form className="card" onSubmit={create} aria-label="Create API key">
          <h2>Create an API key</h2>
          <p className="muted">Programs use an API key instead of your password. A key never acts above its role ceiling.</p>
          <div className="grid2">
            <Field label="Name">
              <input data-testid="key-name" value={name} maxLength={100} required placeholder="e.g. laptop script" onChange={(e) => setName(e.target.value)} />
            </Field>
            <Field label="Role ceiling">
              <select value={ceiling} onChange={(e) => setCeiling(Number(e.target.value) as common.Role)}>
                <option value={common.Role.VIEWER}>viewer (read only)</option>
                <option value={common.Role.MEMBER}>member</option>
                {isAdmin(me) && <option value={common.Role.ADMIN}>admin</option>}
              </select>
            </Field>
            <Field label={<>Expires <span className="muted">(optional)</span></>} hint="Leave empty for a key that never expires.">
              <input type="date" min={todayInput()} value={expires} onChange={(e) => setExpires(e.target.value)} />
            </Field>
          </div>
          <div className="row end">
            <button type="submit" className="primary" disabled={busy}>Create key</button>
          </div>
        </form>
      ) : (
        <p className="banner" data-testid="read-only">
          Viewers cannot create or revoke API keys: a key lets a program act for you, and the viewer role may only read.
          Ask an administrator for the member role if you need one.
        </p>
      )}

      <section className="card" aria-label="Your API keys">
        <h2>Your API keys</h2>
        <Listing
          items={keys}
          empty="You have no API keys yet."
          head={["Name", "Prefix", "Role ceiling", "Created", "Last used", "Expires", "Status", ...(writable ? [""] : [])]}
          row={(k) => {
            const [status, cls] = keyStatus(k);
            return (
              <tr key={k.id}>
                <td>{k.name}</td>
                <td><code>{k.prefix}…</code></td>
                <td>{k.roleCeiling ? roleName(k.roleCeiling) : "your role"}</td>
                <td>{shortDate(toDate(k.createdAt))}</td>
                <td>{relativeTime(toDate(k.lastUsedAt)) || "never"}</td>
                <td>{k.expiresAt ? shortDate(toDate(k.expiresAt)) : "never"}</td>
                <td><span className={cls}>{status}</span></td>
                {writable && (
                  <td>
                    {!k.revoked && <button type="button" className="danger" disabled={busy} onClick={() => revoke(k)}>Revoke</button>}
                  </td>
                )}
              </tr>
            );
          }}
        />
      </section>

      {secret && (
        <div className="modal-back" role="presentation">
          <div className="modal" role="dialog" aria-modal="true" aria-labelledby="key-secret-title">
            <h2 id="key-secret-title">Key "{secret.name}" created</h2>
            <p className="banner error">
              Copy this secret now. It will not be shown again: if you lose it, revoke the key and create a new one.
            </p>
            <div className="secret" data-testid="key-secret">{secret.value}</div>
            <p className="hint">Programs send it as <code>authorization: Bearer …</code> or in an <code>x-api-key</code> header.</p>
            <div className="row end">
              <CopyButton text={() => secret.value} label="Copy" />
              <button type="button" className="primary" onClick={() => setSecret(undefined)}>I saved it, close</button>
            </div>
          </div>
        </div>
      )}
    </>
  );
}

// ---------------------------------------------------------------------------------------
// Assistants

/** The editor's fields; `base` is the stored assistant when editing one. */
interface AssistantDraft {
  base?: chat.Assistant;
  name: string;
  description: string;
  icon: string;
  systemPrompt: string;
  model: string;
  /** As typed; empty means the server's default. */
  temperature: string;
  global: boolean;
  collectionIds: string[];
}

const newAssistant = (): AssistantDraft => ({
  name: "",
  description: "",
  icon: "🤖",
  systemPrompt: "",
  model: "",
  temperature: "",
  global: false,
  collectionIds: [],
});

const assistantDraft = (a: chat.Assistant): AssistantDraft => ({
  base: a,
  name: a.name,
  description: a.description,
  icon: a.icon,
  systemPrompt: a.systemPrompt,
  model: a.model,
  // Stored as a 32-bit float: 0.7 comes back as 0.69999…, so round for display.
  temperature: a.sampling?.temperature !== undefined ? String(Number(a.sampling.temperature.toFixed(2))) : "",
  global: a.global,
  collectionIds: a.collectionIds,
});

/** A stored SamplingParams as request input: the same fields, minus the message's own tags. */
function samplingInit(s: llm.SamplingParams | undefined) {
  if (!s) return {};
  const { $typeName, $unknown, ...fields } = s;
  return fields;
}

function AssistantsTab({ me }: { me: auth.User }) {
  const { notify } = useApp();
  const [list, reload] = useList(fetchAssistants);
  const [models] = useList(fetchChatModels);
  const [draft, setDraft] = useState<AssistantDraft>();
  const [busy, run] = useAction();
  const writable = canWrite(me);
  const set = (patch: Partial<AssistantDraft>) => setDraft((d) => (d ? { ...d, ...patch } : d));

  const save = (e: FormEvent) => {
    e.preventDefault();
    if (!draft) return;
    const name = draft.name.trim();
    if (!name) return notify("Give the assistant a name.", "error");
    const t = draft.temperature.trim();
    const temperature = t === "" ? undefined : Number(t);
    if (temperature !== undefined && !(temperature >= 0 && temperature <= 2)) {
      return notify("Temperature must be a number from 0 to 2, or empty for the default.", "error");
    }
    const base = draft.base;
    const assistant = {
      id: base?.id ?? "",
      name,
      description: draft.description.trim(),
      icon: draft.icon.trim(),
      systemPrompt: draft.systemPrompt,
      model: draft.model,
      // Keep any other sampling settings the assistant already had.
      sampling: { ...samplingInit(base?.sampling), temperature },
      global: isAdmin(me) ? draft.global : (base?.global ?? false),
      collectionIds: draft.collectionIds,
    };
    void run(async () => {
      if (draft.base) await api.chat.updateAssistant({ assistant });
      else await api.chat.createAssistant({ assistant });
      notify(draft.base ? `Assistant "${name}" saved.` : `Assistant "${name}" created.`);
      setDraft(undefined);
      reload();
    });
  };

  const remove = (a: chat.Assistant) => {
    if (!window.confirm(`Delete the assistant "${a.name}"? Conversations started with it are kept.`)) return;
    void run(async () => {
      await api.chat.deleteAssistant({ id: a.id });
      notify(`Assistant "${a.name}" deleted.`);
      if (draft?.base?.id === a.id) setDraft(undefined);
      reload();
    });
  };

  // A model that is no longer registered still shows as the current choice.
  const modelIds = (models ?? []).map((m) => m.id);
  if (draft?.model && !modelIds.includes(draft.model)) modelIds.push(draft.model);

  return (
    <>
      {!writable && <ReadOnlyNote>you can see the assistants below but not create, edit or delete them.</ReadOnlyNote>}
      {draft && (
        <form className="card" onSubmit={save} aria-label={draft.base ? "Edit assistant" : "New assistant"}>
          <h2>{draft.base ? `Edit "${draft.base.name}"` : "New assistant"}</h2>
          <div className="grid2">
            <Field label="Name">
              <input value={draft.name} maxLength={100} required onChange={(e) => set({ name: e.target.value })} />
            </Field>
            <Field label={<>Icon <span className="muted">(an emoji)</span></>}>
              <input value={draft.icon} maxLength={16} onChange={(e) => set({ icon: e.target.value })} />
            </Field>
          </div>
          <Field label="Description">
            <input value={draft.description} maxLength={500} onChange={(e) => set({ description: e.target.value })} />
          </Field>
          <Field label="System prompt" hint="Instructions the model gets at the start of every conversation with this assistant.">
            <textarea rows={6} value={draft.systemPrompt} onChange={(e) => set({ systemPrompt: e.target.value })} />
          </Field>
          <div className="grid2">
            <Field label="Model">
              <select value={draft.model} onChange={(e) => set({ model: e.target.value })}>
                <option value="">Server default</option>
                {modelIds.map((id) => <option key={id} value={id}>{id}</option>)}
              </select>
            </Field>
            <Field label="Temperature" hint="0 gives steady answers, 2 very varied ones.">
              <input type="number" min={0} max={2} step={0.1} placeholder="default (0.7)" value={draft.temperature} onChange={(e) => set({ temperature: e.target.value })} />
            </Field>
          </div>
          <CollectionPicker value={draft.collectionIds} onChange={(collectionIds) => set({ collectionIds })} />
          <span className="hint">Its conversations draw on these collections and cite them; each person's replies use those they can read.</span>
          {isAdmin(me) && (
            <label className="row">
              <input type="checkbox" checked={draft.global} onChange={(e) => set({ global: e.target.checked })} /> Global (everyone sees it)
            </label>
          )}
          <div className="row end">
            <button type="button" className="ghost" onClick={() => setDraft(undefined)}>Cancel</button>
            <button type="submit" className="primary" disabled={busy}>{draft.base ? "Save assistant" : "Create assistant"}</button>
          </div>
        </form>
      )}
      <section className="card" aria-label="Assistants">
        <div className="row">
          <h2>Assistants</h2>
          <span className="spacer" />
          {writable && !draft && <button type="button" className="primary" onClick={() => setDraft(newAssistant())}>New assistant</button>}
        </div>
        <Listing
          items={list}
          empty="No assistants yet. An assistant bundles a system prompt, a model and its settings."
          head={["Assistant", "Model", "Temperature", "Scope", ...(writable ? [""] : [])]}
          row={(a) => (
            <tr key={a.id}>
              <td>
                <strong>{a.icon ? `${a.icon} ${a.name}` : a.name}</strong>
                {a.description && <span className="hint">{a.description}</span>}
              </td>
              <td>{a.model || <span className="muted">default</span>}</td>
              <td>{a.sampling?.temperature !== undefined ? a.sampling.temperature.toFixed(1) : <span className="muted">default</span>}</td>
              <td><span className="badge">{a.global ? "global" : "mine"}</span></td>
              {writable && <td>{mayEdit(me, a) && <EditDelete onEdit={() => setDraft(assistantDraft(a))} onDelete={() => remove(a)} />}</td>}
            </tr>
          )}
        />
      </section>
    </>
  );
}

// ---------------------------------------------------------------------------------------
// Templates

type TemplateDraft = { base?: chat.Template; name: string; category: string; body: string };

function TemplatesTab({ me }: { me: auth.User }) {
  const { notify } = useApp();
  const [list, reload] = useList(fetchTemplates);
  const [draft, setDraft] = useState<TemplateDraft>();
  // The template as the server stored it, to show which variables it found.
  const [saved, setSaved] = useState<chat.Template>();
  const [busy, run] = useAction();
  const writable = canWrite(me);
  const set = (patch: Partial<TemplateDraft>) => setDraft((d) => (d ? { ...d, ...patch } : d));
  const open = (d: TemplateDraft) => {
    setSaved(undefined);
    setDraft(d);
  };

  const save = (e: FormEvent) => {
    e.preventDefault();
    if (!draft) return;
    const name = draft.name.trim();
    if (!name) return notify("Give the template a name.", "error");
    if (!draft.body.trim()) return notify("Write the template's text.", "error");
    const template = { id: draft.base?.id ?? "", name, category: draft.category.trim(), body: draft.body, global: draft.base?.global ?? false };
    void run(async () => {
      const res = draft.base ? await api.chat.updateTemplate({ template }) : await api.chat.createTemplate({ template });
      setSaved(res.template);
      setDraft(undefined);
      reload();
    });
  };

  const remove = (t: chat.Template) => {
    if (!window.confirm(`Delete the template "${t.name}"?`)) return;
    void run(async () => {
      await api.chat.deleteTemplate({ id: t.id });
      notify(`Template "${t.name}" deleted.`);
      if (saved?.id === t.id) setSaved(undefined);
      reload();
    });
  };

  return (
    <>
      {!writable && <ReadOnlyNote>you can use the templates below but not create, edit or delete them.</ReadOnlyNote>}
      {saved && (
        <p className="banner info" role="status" data-testid="template-saved">
          Template "{saved.name}" saved.{" "}
          {saved.variables.length > 0
            ? `Variables found: ${saved.variables.map((v) => `{{${v}}}`).join(", ")}.`
            : "It has no {{variables}}, so it is used exactly as written."}
        </p>
      )}
      {draft && (
        <form className="card" onSubmit={save} aria-label={draft.base ? "Edit template" : "New template"}>
          <h2>{draft.base ? `Edit "${draft.base.name}"` : "New template"}</h2>
          <div className="grid2">
            <Field label="Name">
              <input value={draft.name} maxLength={100} required onChange={(e) => set({ name: e.target.value })} />
            </Field>
            <Field label={<>Category <span className="muted">(optional)</span></>}>
              <input value={draft.category} maxLength={100} placeholder="e.g. writing" onChange={(e) => set({ category: e.target.value })} />
            </Field>
          </div>
          <Field label="Text" hint={'Write {{name}} wherever a value is filled in on use, e.g. "Summarise {{text}} in {{words}} words".'}>
            <textarea rows={8} value={draft.body} required onChange={(e) => set({ body: e.target.value })} />
          </Field>
          <div className="row end">
            <button type="button" className="ghost" onClick={() => setDraft(undefined)}>Cancel</button>
            <button type="submit" className="primary" disabled={busy}>{draft.base ? "Save template" : "Create template"}</button>
          </div>
        </form>
      )}
      <section className="card" aria-label="Templates">
        <div className="row">
          <h2>Prompt templates</h2>
          <span className="spacer" />
          {writable && !draft && (
            <button type="button" className="primary" onClick={() => open({ name: "", category: "", body: "" })}>New template</button>
          )}
        </div>
        <Listing
          items={list}
          empty="No templates yet. A template is reusable prompt text with blanks to fill in."
          head={["Name", "Category", "Variables", "Scope", ...(writable ? [""] : [])]}
          row={(t) => (
            <tr key={t.id}>
              <td>
                <strong>{t.name}</strong>
                <span className="hint" title={t.body}>{t.body.length > 80 ? `${t.body.slice(0, 80)}…` : t.body}</span>
              </td>
              <td>{t.category || <span className="muted">—</span>}</td>
              <td>{t.variables.length ? t.variables.join(", ") : <span className="muted">none</span>}</td>
              <td><span className="badge">{t.global ? "global" : "mine"}</span></td>
              {writable && (
                <td>
                  {mayEdit(me, t) && (
                    <EditDelete onEdit={() => open({ base: t, name: t.name, category: t.category, body: t.body })} onDelete={() => remove(t)} />
                  )}
                </td>
              )}
            </tr>
          )}
        />
      </section>
    </>
  );
}
