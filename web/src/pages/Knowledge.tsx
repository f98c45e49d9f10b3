// Knowledge: the collections a person owns or was given, each with its documents (dropped
// or chosen files, uploaded and ingested with per-file progress), a search box to try
// retrieval, and a passage view (with its neighbours) that chat sources link to.
// /knowledge/:id opens a collection; ?chunk=ID opens a passage in it.

import { useCallback, useEffect, useRef, useState, type DragEvent, type FormEvent } from "react";
import { describeError, knowledge, type auth } from "@llmesh/client";
import { api } from "../api";
import { useApp } from "../app";
import { canWrite, Field, isAdmin, Listing, Progress, ReadOnlyNote, useAction, useList } from "../components/forms";
import { navigate, useSearch } from "../router";
import { uploadBytes } from "../upload";
import { formatBytes, relativeTime, toDate } from "../util";

const fetchCollections = () => api.knowledge.listCollections({}).then((r) => r.collections);

const FORMATS: Record<number, string> = {
  [knowledge.DocumentFormat.TEXT]: "text",
  [knowledge.DocumentFormat.MARKDOWN]: "Markdown",
  [knowledge.DocumentFormat.HTML]: "HTML",
  [knowledge.DocumentFormat.PDF]: "PDF",
  [knowledge.DocumentFormat.DOCX]: "DOCX",
  [knowledge.DocumentFormat.CSV]: "CSV",
  [knowledge.DocumentFormat.CODE]: "code",
};

const PHASES: Record<number, string> = {
  [knowledge.IngestPhase.PARSING]: "reading",
  [knowledge.IngestPhase.CHUNKING]: "cutting into chunks",
  [knowledge.IngestPhase.EMBEDDING]: "embedding",
  [knowledge.IngestPhase.INDEXING]: "indexing",
};

export default function Knowledge({ collectionId }: { collectionId?: string }) {
  const { me } = useApp();
  const [collections, reload] = useList(fetchCollections);
  const [creating, setCreating] = useState(false);
  const selected = collections?.find((c) => c.id === collectionId);
  // The first collection opens by itself.
  useEffect(() => {
    if (!collectionId && collections && collections[0]) navigate(`/knowledge/${collections[0].id}`, true);
  }, [collectionId, collections]);
  if (!me) return null;
  const writable = canWrite(me);

  return (
    <div className="page knowledge">
      <aside className="card knowledge-list" aria-label="Collections">
        <div className="row">
          <h2>Collections</h2>
          <span className="spacer" />
          {writable && !creating && (
            <button type="button" className="primary" onClick={() => setCreating(true)}>
              New collection
            </button>
          )}
        </div>
        {creating && (
          <NewCollection
            onDone={(id) => {
              setCreating(false);
              reload();
              if (id) navigate(`/knowledge/${id}`);
            }}
          />
        )}
        {!collections && <p className="muted">Loading…</p>}
        {collections?.length === 0 && (
          <p className="muted">No collections yet. A collection holds documents that chats can draw on and cite.</p>
        )}
        <ul className="plain">
          {collections?.map((c) => (
            <li key={c.id}>
              <a
                href={`/knowledge/${c.id}`}
                className={c.id === collectionId ? "active" : ""}
                onClick={(e) => {
                  e.preventDefault();
                  navigate(`/knowledge/${c.id}`);
                }}
              >
                <strong>{c.name}</strong>
                <span className="hint">
                  {c.documents} {c.documents === 1 ? "document" : "documents"} · {Number(c.chunks)} chunks
                  {!c.writable && " · shared with you"}
                  {c.everyone && " · everyone"}
                </span>
              </a>
            </li>
          ))}
        </ul>
      </aside>
      <main className="knowledge-main">
        {!writable && <ReadOnlyNote>you can read and search collections, but not add to them.</ReadOnlyNote>}
        {selected && <CollectionView key={selected.id} me={me} collection={selected} onChanged={reload} />}
        {collectionId && collections && !selected && (
          <p className="banner error">This collection could not be opened. It may have been deleted, or it is not shared with you.</p>
        )}
      </main>
    </div>
  );
}

function NewCollection({ onDone }: { onDone: (id?: string) => void }) {
  const { notify } = useApp();
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [busy, run] = useAction();
  const create = (e: FormEvent) => {
    e.preventDefault();
    if (!name.trim()) return notify("Give the collection a name.", "error");
    void run(async () => {
      const res = await api.knowledge.createCollection({ name: name.trim(), description });
      notify(`Collection "${name.trim()}" created.`);
      onDone(res.collection?.id);
    });
  };
  return (
    <form onSubmit={create} aria-label="New collection">
      <Field label="Name">
        <input value={name} maxLength={200} required autoFocus onChange={(e) => setName(e.target.value)} />
      </Field>
      <Field label="Description">
        <input value={description} maxLength={2000} onChange={(e) => setDescription(e.target.value)} />
      </Field>
      <div className="row end">
        <button type="button" className="ghost" onClick={() => onDone()}>
          Cancel
        </button>
        <button type="submit" className="primary" disabled={busy}>
          Create
        </button>
      </div>
    </form>
  );
}

/** One file on its way in: uploading, then the ingest's phases, then done or failed. */
interface Incoming {
  key: number;
  name: string;
  phase: string;
  done: number;
  total: number;
  error?: string;
  chunks?: number;
}

function CollectionView({ me, collection, onChanged }: { me: auth.User; collection: knowledge.Collection; onChanged: () => void }) {
  const { notify, report } = useApp();
  const owner = collection.writable && canWrite(me);
  const fetchDocuments = useCallback(
    () => api.knowledge.listDocuments({ collectionId: collection.id }).then((r) => r.documents),
    [collection.id],
  );
  const [documents, reloadDocuments] = useList(fetchDocuments);
  const [incoming, setIncoming] = useState<Incoming[]>([]);
  const [editing, setEditing] = useState(false);
  const [dragging, setDragging] = useState(false);
  const [busy, run] = useAction();
  const fileInput = useRef<HTMLInputElement>(null);
  const queue = useRef<Promise<void>>(Promise.resolve());
  const nextKey = useRef(1);
  const chunk = useSearch().get("chunk") ?? undefined;

  const update = (key: number, patch: Partial<Incoming>) =>
    setIncoming((list) => list.map((f) => (f.key === key ? { ...f, ...patch } : f)));

  async function ingestOne(file: File, key: number) {
    try {
      const data = new Uint8Array(await file.arrayBuffer());
      update(key, { phase: "uploading", done: 0, total: data.length });
      const uploadId = await uploadBytes(file.name, data, { onSent: (done) => update(key, { done }) });
      let document: knowledge.Document | undefined;
      for await (const res of api.knowledge.ingestDocument({ collectionId: collection.id, uploadId })) {
        const ev = res.event;
        if (ev.case === "progress") update(key, { phase: PHASES[ev.value.phase] ?? "working", done: ev.value.done, total: ev.value.total });
        else if (ev.case === "document") document = ev.value;
      }
      if (!document) throw new Error("the server ended the ingest without the document; list the documents before trying again");
      update(key, { phase: "done", done: 1, total: 1, chunks: document.chunks });
      reloadDocuments();
      onChanged();
    } catch (err) {
      update(key, { phase: "failed", error: describeError(err) });
    }
  }

  // Files are ingested one at a time, in the order they came.
  function add(files: FileList | File[]) {
    for (const file of Array.from(files)) {
      const key = nextKey.current++;
      setIncoming((list) => [...list, { key, name: file.name, phase: "waiting", done: 0, total: 0 }]);
      queue.current = queue.current.then(() => ingestOne(file, key));
    }
  }

  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    setDragging(false);
    if (!owner) return notify("Only the collection's owner adds documents.", "error");
    if (e.dataTransfer.files.length > 0) add(e.dataTransfer.files);
  };

  const removeDocument = (d: knowledge.Document) => {
    if (!window.confirm(`Delete "${d.name}" and its ${d.chunks} chunks from this collection?`)) return;
    void run(async () => {
      await api.knowledge.deleteDocument({ id: d.id });
      notify(`"${d.name}" deleted.`);
      reloadDocuments();
      onChanged();
    });
  };

  const removeCollection = () => {
    if (!window.confirm(`Delete the collection "${collection.name}" with its ${collection.documents} documents? Chats that drew on it keep their stored sources.`)) return;
    void run(async () => {
      await api.knowledge.deleteCollection({ id: collection.id });
      notify(`Collection "${collection.name}" deleted.`);
      navigate("/knowledge", true);
      onChanged();
    });
  };

  return (
    <>
      <section className="card" aria-label="Collection">
        <div className="row">
          <h1>{collection.name}</h1>
          <span className="badge">{collection.writable ? "mine" : "shared with me"}</span>
          {collection.everyone && <span className="badge">everyone</span>}
          <span className="spacer" />
          {owner && !editing && (
            <>
              <button type="button" onClick={() => setEditing(true)}>
                Edit and share
              </button>
              <button type="button" className="danger" disabled={busy} onClick={removeCollection}>
                Delete
              </button>
            </>
          )}
        </div>
        {collection.description && <p>{collection.description}</p>}
        {editing && (
          <EditCollection
            me={me}
            collection={collection}
            onDone={(changed) => {
              setEditing(false);
              if (changed) onChanged();
            }}
          />
        )}
        {owner && (
          <div
            className={`dropzone ${dragging ? "over" : ""}`}
            data-testid="dropzone"
            onDragOver={(e) => {
              e.preventDefault();
              setDragging(true);
            }}
            onDragLeave={() => setDragging(false)}
            onDrop={onDrop}
          >
            <p>
              Drop files here, or{" "}
              <button type="button" className="link" onClick={() => fileInput.current?.click()}>
                choose files
              </button>
              . Text, Markdown, HTML, PDF, DOCX, CSV and source code; a file with the name of one already here replaces it.
            </p>
            <input
              ref={fileInput}
              type="file"
              multiple
              hidden
              aria-label="Add documents"
              onChange={(e) => {
                if (e.target.files) add(e.target.files);
                e.target.value = "";
              }}
            />
          </div>
        )}
        {incoming.length > 0 && (
          <ul className="plain incoming" aria-label="Files being added">
            {incoming.map((f) => (
              <li key={f.key} data-testid="incoming" data-phase={f.phase}>
                <span>{f.name}</span>
                {f.phase === "failed" ? (
                  <span className="banner error" role="alert" style={{ margin: 0 }}>
                    {f.error}
                  </span>
                ) : f.phase === "done" ? (
                  <span className="muted">added, {f.chunks} chunks</span>
                ) : (
                  <>
                    <span className="muted">
                      {f.phase}
                      {f.total > 0 && f.phase === "uploading" && ` ${formatBytes(f.done)} of ${formatBytes(f.total)}`}
                      {f.total > 0 && f.phase !== "uploading" && ` ${f.done} of ${f.total}`}
                    </span>
                    <Progress value={f.done} max={f.total} label={`${f.name}: ${f.phase}`} />
                  </>
                )}
              </li>
            ))}
          </ul>
        )}
        {incoming.some((f) => f.phase === "done" || f.phase === "failed") && (
          <div className="row end">
            <button type="button" className="ghost" onClick={() => setIncoming((l) => l.filter((f) => f.phase !== "done" && f.phase !== "failed"))}>
              Clear finished
            </button>
          </div>
        )}
      </section>
      <section className="card" aria-label="Documents">
        <h2>Documents</h2>
        <Listing
          items={documents}
          empty={owner ? "No documents yet: drop some above." : "No documents yet."}
          head={["Document", "Format", "Pages", "Chunks", "Tokens", "Size", "Added", ...(owner ? [""] : [])]}
          row={(d) => (
            <tr key={d.id} data-testid="document">
              <td>{d.name}</td>
              <td>{FORMATS[d.format] ?? "?"}</td>
              <td>{d.pages || "—"}</td>
              <td>{d.chunks}</td>
              <td>{Number(d.tokens)}</td>
              <td>{formatBytes(d.sizeBytes)}</td>
              <td>{relativeTime(toDate(d.createdAt))}</td>
              {owner && (
                <td>
                  <button type="button" className="danger" disabled={busy} onClick={() => removeDocument(d)}>
                    Delete
                  </button>
                </td>
              )}
            </tr>
          )}
        />
      </section>
      <TrySearch collectionId={collection.id} />
      {chunk && <Passage chunkId={chunk} onError={report} />}
    </>
  );
}

function EditCollection({ me, collection, onDone }: { me: auth.User; collection: knowledge.Collection; onDone: (changed: boolean) => void }) {
  const { notify } = useApp();
  const [name, setName] = useState(collection.name);
  const [description, setDescription] = useState(collection.description);
  const [shared, setShared] = useState(collection.sharedWith.join("\n"));
  const [everyone, setEveryone] = useState(collection.everyone);
  const [busy, run] = useAction();
  const save = (e: FormEvent) => {
    e.preventDefault();
    const userIds = shared
      .split(/[\s,]+/)
      .map((u) => u.trim())
      .filter(Boolean);
    void run(async () => {
      await api.knowledge.updateCollection({
        id: collection.id,
        name: name.trim(),
        description,
        sharedWith: { userIds },
        ...(isAdmin(me) ? { everyone } : {}),
      });
      notify(`Collection "${name.trim()}" saved.`);
      onDone(true);
    });
  };
  return (
    <form onSubmit={save} aria-label="Edit collection">
      <div className="grid2">
        <Field label="Name">
          <input value={name} maxLength={200} required onChange={(e) => setName(e.target.value)} />
        </Field>
        <Field label="Description">
          <input value={description} maxLength={2000} onChange={(e) => setDescription(e.target.value)} />
        </Field>
      </div>
      <Field label="Shared read-only with" hint="User ids, one per line (an administrator finds them under Admin → Users). They can search it and attach it to their chats.">
        <textarea rows={3} value={shared} onChange={(e) => setShared(e.target.value)} />
      </Field>
      {isAdmin(me) && (
        <label className="row">
          <input type="checkbox" checked={everyone} onChange={(e) => setEveryone(e.target.checked)} /> Open to everyone (read-only)
        </label>
      )}
      <div className="row end">
        <button type="button" className="ghost" onClick={() => onDone(false)}>
          Cancel
        </button>
        <button type="submit" className="primary" disabled={busy}>
          Save
        </button>
      </div>
    </form>
  );
}

/** «marked» words (how the server highlights) as <mark>. */
function Highlighted({ text }: { text: string }) {
  const parts = text.split(/«([^»]*)»/);
  return <>{parts.map((p, i) => (i % 2 === 1 ? <mark key={i}>{p}</mark> : p))}</>;
}

function TrySearch({ collectionId }: { collectionId: string }) {
  const [query, setQuery] = useState("");
  const [mode, setMode] = useState(knowledge.SearchMode.HYBRID);
  const [hits, setHits] = useState<knowledge.KnowledgeHit[]>();
  const [busy, run] = useAction();
  const search = (e: FormEvent) => {
    e.preventDefault();
    if (!query.trim()) return;
    void run(async () => {
      const res = await api.knowledge.searchKnowledge({ collectionIds: [collectionId], query: query.trim(), limit: 8, mode });
      setHits(res.hits);
    });
  };
  return (
    <section className="card" aria-label="Try a search">
      <h2>Try a search</h2>
      <form className="row" onSubmit={search}>
        <input aria-label="Search query" placeholder="Ask what a chat would ask…" value={query} maxLength={2000} onChange={(e) => setQuery(e.target.value)} style={{ flex: 1 }} />
        <select aria-label="Search by" value={mode} onChange={(e) => setMode(Number(e.target.value))}>
          <option value={knowledge.SearchMode.HYBRID}>meaning and words</option>
          <option value={knowledge.SearchMode.VECTOR}>meaning only</option>
          <option value={knowledge.SearchMode.TEXT}>words only</option>
        </select>
        <button type="submit" className="primary" disabled={busy || !query.trim()}>
          Search
        </button>
      </form>
      {hits?.length === 0 && <p className="muted">Nothing found.</p>}
      <ol className="hits">
        {hits?.map((h) => (
          <li key={h.chunk?.id} data-testid="hit">
            <a
              href={`/knowledge/${collectionId}?chunk=${h.chunk?.id}`}
              onClick={(e) => {
                e.preventDefault();
                navigate(`/knowledge/${collectionId}?chunk=${h.chunk?.id}`);
              }}
            >
              {h.chunk?.documentName}
              {(h.chunk?.headings.length ?? 0) > 0 && <span className="muted"> — {h.chunk?.headings.join(" › ")}</span>}
              {(h.chunk?.page ?? 0) > 0 && <span className="muted"> (page {h.chunk?.page})</span>}
            </a>
            <span className="hint">
              score {h.score.toFixed(4)}
              {h.vectorRank > 0 && ` · meaning #${h.vectorRank} (${h.similarity.toFixed(2)})`}
              {h.textRank > 0 && ` · words #${h.textRank}`}
            </span>
            <p>
              <Highlighted text={h.highlight} />
            </p>
          </li>
        ))}
      </ol>
    </section>
  );
}

/** A passage in its document, with a neighbour on each side. */
function Passage({ chunkId, onError }: { chunkId: string; onError: (err: unknown) => void }) {
  const [res, setRes] = useState<knowledge.GetChunkResponse>();
  const view = useRef<HTMLElement>(null);
  useEffect(() => {
    api.knowledge
      .getChunk({ id: chunkId, context: 1 })
      .then(setRes)
      .catch(onError);
  }, [chunkId, onError]);
  // Braces: newer browsers return a promise from scrollIntoView, which an effect must not.
  useEffect(() => {
    view.current?.scrollIntoView({ block: "start" });
  }, [res]);
  if (!res?.chunk) return null;
  const c = res.chunk;
  return (
    <section className="card passage" aria-label="Passage" data-testid="passage" ref={view}>
      <div className="row">
        <h2>
          {c.documentName}
          {c.headings.length > 0 && <span className="muted"> — {c.headings.join(" › ")}</span>}
          {c.page > 0 && <span className="muted"> (page {c.page})</span>}
        </h2>
        <span className="spacer" />
        <button type="button" className="ghost" onClick={() => navigate(window.location.pathname)}>
          Close
        </button>
      </div>
      {res.around.map((a) => (
        <p key={a.id} className={a.id === c.id ? "cited" : "muted"} data-testid={a.id === c.id ? "cited-passage" : undefined}>
          {a.text}
        </p>
      ))}
    </section>
  );
}
