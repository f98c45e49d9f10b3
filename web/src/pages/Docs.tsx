// The API reference: every service, RPC, message and enum the server runs, read from
// /api/reference.json (built by the server from its own descriptor set and access tables,
// so it cannot drift from what answers). Searchable; each RPC shows who may call it, the
// errors it documents and a `buf curl` line to try it.

import { useEffect, useMemo, useState } from "react";

interface ErrorDoc { code: string; when: string }
interface MethodDoc {
  name: string;
  path: string;
  comment: string;
  request: string;
  response: string;
  client_streaming: boolean;
  server_streaming: boolean;
  access: string;
  access_note: string;
  errors: ErrorDoc[];
  example: string;
}
interface ServiceDoc { name: string; file: string; comment: string; methods: MethodDoc[] }
interface FieldDoc { name: string; json_name: string; number: number; type: string; label: string; oneof: string; comment: string }
interface MessageDoc { name: string; comment: string; fields: FieldDoc[] }
interface EnumDoc { name: string; comment: string; values: { name: string; number: number; comment: string }[] }
interface Reference { services: ServiceDoc[]; messages: MessageDoc[]; enums: EnumDoc[] }

const anchor = (name: string) => `t-${name.replace(/[^A-Za-z0-9]+/g, "-")}`;
const short = (name: string) => name.split(".").pop() ?? name;

function TypeLink({ name, known }: { name: string; known: Set<string> }) {
  return known.has(name) ? <a href={`#${anchor(name)}`}>{short(name)}</a> : <code>{name}</code>;
}

/** A proto comment as paragraphs: its line breaks are the source's wrapping, blank lines end paragraphs. */
function Comment({ text }: { text: string }) {
  if (!text) return null;
  return (
    <>
      {text.split(/\n\s*\n/).map((para, i) => (
        <p key={i}>{para.replace(/\s*\n\s*/g, " ")}</p>
      ))}
    </>
  );
}

export default function Docs() {
  const [reference, setReference] = useState<Reference>();
  const [error, setError] = useState<string>();
  const [query, setQuery] = useState("");

  useEffect(() => {
    const ctl = new AbortController();
    fetch("/api/reference.json", { signal: ctl.signal })
      .then(async (r) => {
        if (!r.ok) throw new Error(`the server answered ${r.status} for /api/reference.json`);
        setReference((await r.json()) as Reference);
      })
      .catch((e: unknown) => {
        if (!ctl.signal.aborted) setError(`Could not load the API reference: ${e instanceof Error ? e.message : String(e)}. Reload to try again.`);
      });
    return () => ctl.abort();
  }, []);

  const known = useMemo(
    () => new Set([...(reference?.messages ?? []).map((m) => m.name), ...(reference?.enums ?? []).map((e) => e.name)]),
    [reference],
  );
  const q = query.trim().toLowerCase();
  const hit = (...texts: string[]) => !q || texts.some((t) => t.toLowerCase().includes(q));
  const services = (reference?.services ?? [])
    .map((s) => ({ ...s, methods: s.methods.filter((m) => hit(s.name, m.name, m.path, m.comment, m.access)) }))
    .filter((s) => s.methods.length > 0);
  const messages = (reference?.messages ?? []).filter((m) => hit(m.name, m.comment, ...m.fields.map((f) => f.name)));
  const enums = (reference?.enums ?? []).filter((e) => hit(e.name, e.comment, ...e.values.map((v) => v.name)));
  const rpcCount = (reference?.services ?? []).reduce((n, s) => n + s.methods.length, 0);

  return (
    <main className="page">
      <div className="page-inner wide">
        <h1>API reference</h1>
        <p className="muted">
          Every RPC is served over gRPC and gRPC-Web on this address (the generated SDKs wrap them). Calls
          other than public ones need <code>authorization: Bearer …</code> with a session token or an API key
          (Settings → API keys). Reflection is on, so <code>buf curl</code> needs no proto files; the examples read
          the server's address from <code>LLMESH_URL</code> and the credential from <code>LLMESH_TOKEN</code>.
        </p>
        <label className="doc-search">
          Search
          <input
            type="search"
            value={query}
            placeholder="RPC, message, field or words from a comment"
            onChange={(e) => setQuery(e.target.value)}
          />
        </label>
        {error && <p className="banner error" role="alert">{error}</p>}
        {!reference && !error && <p role="status">Loading the reference…</p>}
        {reference && (
          <p className="hint" data-testid="docs-summary">
            {reference.services.length} services, {rpcCount} RPCs, {reference.messages.length} messages, {reference.enums.length} enums
            {q && ` · showing ${services.reduce((n, s) => n + s.methods.length, 0)} RPCs, ${messages.length} messages, ${enums.length} enums`}
          </p>
        )}

        {services.map((s) => (
          <section key={s.name} className="card" aria-label={s.name}>
            <h2 id={anchor(s.name)}>{s.name}</h2>
            <p className="hint">{s.file}</p>
            <Comment text={s.comment} />
            {s.methods.map((m) => (
              <article key={m.path} className="doc-rpc" data-testid="doc-rpc" aria-label={m.path}>
                <h3 id={anchor(m.path)}>
                  {m.name}{" "}
                  <span className={`badge access-${m.access}`} title={m.access_note} data-testid="doc-access">
                    {m.access}
                  </span>
                  {m.client_streaming && <span className="badge">client stream</span>}
                  {m.server_streaming && <span className="badge">server stream</span>}
                </h3>
                <p className="hint">
                  <code>{m.path}</code> · <TypeLink name={m.request} known={known} /> → <TypeLink name={m.response} known={known} />
                </p>
                <Comment text={m.comment} />
                <p className="hint">Who may call it: {m.access_note}</p>
                {m.errors.length > 0 && (
                  <table className="doc-table">
                    <thead><tr><th>Status</th><th>When</th></tr></thead>
                    <tbody>
                      {m.errors.map((e) => (
                        <tr key={e.code}><td><code>{e.code}</code></td><td>{e.when}</td></tr>
                      ))}
                    </tbody>
                  </table>
                )}
                <pre className="doc-example"><code>{m.example}</code></pre>
              </article>
            ))}
          </section>
        ))}

        {messages.length > 0 && <h2>Messages</h2>}
        {messages.map((m) => (
          <section key={m.name} className="card" aria-label={m.name}>
            <h3 id={anchor(m.name)}>{m.name}</h3>
            <Comment text={m.comment} />
            {m.fields.length === 0 ? (
              <p className="hint">No fields.</p>
            ) : (
              <table className="doc-table">
                <thead><tr><th>Field</th><th>Type</th><th>Description</th></tr></thead>
                <tbody>
                  {m.fields.map((f) => (
                    <tr key={f.number}>
                      <td><code>{f.json_name}</code> <span className="hint">{f.name} = {f.number}</span></td>
                      <td>
                        {f.label && f.label !== "map" ? `${f.label} ` : ""}
                        {f.label === "map" ? <code>{f.type}</code> : <TypeLink name={f.type} known={known} />}
                        {f.oneof && <span className="hint">one of {f.oneof}</span>}
                      </td>
                      <td>{f.comment.replace(/\s*\n\s*/g, " ")}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </section>
        ))}

        {enums.length > 0 && <h2>Enums</h2>}
        {enums.map((e) => (
          <section key={e.name} className="card" aria-label={e.name}>
            <h3 id={anchor(e.name)}>{e.name}</h3>
            <Comment text={e.comment} />
            <table className="doc-table">
              <thead><tr><th>Value</th><th>Number</th><th>Description</th></tr></thead>
              <tbody>
                {e.values.map((v) => (
                  <tr key={v.name}><td><code>{v.name}</code></td><td>{v.number}</td><td>{v.comment.replace(/\s*\n\s*/g, " ")}</td></tr>
                ))}
              </tbody>
            </table>
          </section>
        ))}
        {reference && q && services.length + messages.length + enums.length === 0 && (
          <p className="muted">Nothing matches “{query}”.</p>
        )}
      </div>
    </main>
  );
}
