// The conversation sidebar: new chat, search with highlighted snippets, pinned, folders,
// recent conversations with infinite scroll, per-item rename / pin / move / archive /
// delete, and a selection mode (checkboxes, shift-click ranges, all in view or in a folder)
// whose actions go to the server as one all-or-nothing batch.

import { useCallback, useEffect, useRef, useState } from "react";
import type { chat } from "@llmesh/client";
import { api } from "../api";
import { ROLE_VIEWER, useApp } from "../app";
import { conversationChanged, conversationRemoved, conversationsReload, onConversationChange } from "../events";
import { Link, navigate } from "../router";
import { highlightSegments, mergeConversations, upsertConversation } from "../util";
import { downloadExport, EXPORT_FORMATS } from "../exporting";

const PAGE = 30;

export function Sidebar({ activeId, open, onClose }: { activeId?: string; open: boolean; onClose: () => void }) {
  const { report, notify, me } = useApp();
  const readOnly = me?.role === ROLE_VIEWER;
  const [convs, setConvs] = useState<chat.Conversation[]>([]);
  const [folders, setFolders] = useState<chat.Folder[]>([]);
  const [nextToken, setNextToken] = useState<string | undefined>("");
  const [loadingMore, setLoadingMore] = useState(false);
  const [archived, setArchived] = useState(false);
  const [query, setQuery] = useState("");
  const [hits, setHits] = useState<chat.SearchHit[]>();
  const [searching, setSearching] = useState(false);
  const [collapsed, setCollapsed] = useState<Record<string, boolean>>({});
  const [newFolder, setNewFolder] = useState<string>();
  const sentinel = useRef<HTMLDivElement>(null);
  const generation = useRef(0);
  const [selecting, setSelecting] = useState(false);
  const [selected, setSelected] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const anchor = useRef<string | undefined>(undefined);

  const loadPage = useCallback(
    async (token: string, reset: boolean) => {
      const gen = generation.current;
      setLoadingMore(true);
      try {
        const res = await api.chat.listConversations({ page: { pageSize: PAGE, pageToken: token }, archived });
        if (gen !== generation.current) return; // the filter changed meanwhile
        setConvs((c) => (reset ? mergeConversations([], res.conversations) : mergeConversations(c, res.conversations)));
        setNextToken(res.page?.nextPageToken || undefined);
      } catch (err) {
        report(err);
        setNextToken(undefined);
      } finally {
        setLoadingMore(false);
      }
    },
    [archived, report],
  );

  const reload = useCallback(() => {
    generation.current++;
    void loadPage("", true);
    api.chat
      .listFolders({})
      .then((r) => setFolders(r.folders))
      .catch(report);
  }, [loadPage, report]);

  useEffect(reload, [reload]);

  useEffect(
    () =>
      onConversationChange(({ conversation, removedId, reload: all }) => {
        if (all) reload();
        if (conversation) {
          setConvs((c) =>
            conversation.archived === archived ? upsertConversation(c, conversation) : c.filter((x) => x.id !== conversation.id),
          );
        }
        if (removedId) setConvs((c) => c.filter((x) => x.id !== removedId));
      }),
    [archived, reload],
  );

  // Infinite scroll: load the next page when the end of the list comes into view.
  useEffect(() => {
    const el = sentinel.current;
    if (!el || nextToken === undefined || nextToken === "") return;
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && !loadingMore) void loadPage(nextToken, false);
    });
    io.observe(el);
    return () => io.disconnect();
  }, [nextToken, loadingMore, loadPage]);

  // Search, debounced.
  useEffect(() => {
    const q = query.trim();
    if (!q) {
      setHits(undefined);
      return;
    }
    const t = setTimeout(() => {
      setSearching(true);
      api.archive
        .search({ query: q, page: { pageSize: 20 } })
        .then((r) => setHits(r.hits))
        .catch(report)
        .finally(() => setSearching(false));
    }, 250);
    return () => clearTimeout(t);
  }, [query, report]);

  async function update(req: Parameters<typeof api.chat.updateConversation>[0]) {
    try {
      const res = await api.chat.updateConversation(req);
      conversationChanged(res.conversation!);
    } catch (err) {
      report(err);
    }
  }

  async function remove(conv: chat.Conversation) {
    if (!window.confirm(`Delete “${conv.title}” and all its messages? This cannot be undone.`)) return;
    try {
      await api.chat.deleteConversation({ id: conv.id });
      conversationRemoved(conv.id);
      if (conv.id === activeId) navigate("/");
    } catch (err) {
      report(err);
    }
  }

  async function createFolder(name: string) {
    setNewFolder(undefined);
    if (!name.trim()) return;
    try {
      const res = await api.chat.createFolder({ name: name.trim() });
      setFolders((f) => [...f, res.folder!]);
    } catch (err) {
      report(err);
    }
  }

  async function renameFolder(folder: chat.Folder) {
    const name = window.prompt("Folder name", folder.name);
    if (!name || name === folder.name) return;
    try {
      const res = await api.chat.updateFolder({ id: folder.id, name });
      setFolders((f) => f.map((x) => (x.id === folder.id ? res.folder! : x)));
    } catch (err) {
      report(err);
    }
  }

  async function deleteFolder(folder: chat.Folder) {
    if (!window.confirm(`Delete the folder “${folder.name}”? Its conversations move out of it.`)) return;
    try {
      await api.chat.deleteFolder({ id: folder.id });
      setFolders((f) => f.filter((x) => x.id !== folder.id));
      reload();
    } catch (err) {
      report(err);
    }
  }

  const pinned = convs.filter((c) => c.pinned);
  const loose = convs.filter((c) => !c.pinned && !folders.some((f) => f.id === c.folderId));
  // What is on screen, top to bottom: the order shift-click ranges and "All" follow.
  const inView: string[] =
    hits !== undefined
      ? [...new Set(hits.map((h) => h.conversationId))]
      : [
          ...pinned.map((c) => c.id),
          ...folders.flatMap((f) => ((collapsed[f.id] ?? true) ? [] : convs.filter((c) => c.folderId === f.id && !c.pinned).map((c) => c.id))),
          ...loose.map((c) => c.id),
        ];

  function check(id: string, range: boolean) {
    const from = anchor.current ? inView.indexOf(anchor.current) : -1;
    const to = inView.indexOf(id);
    if (range && from >= 0 && to >= 0) {
      const span = inView.slice(Math.min(from, to), Math.max(from, to) + 1);
      setSelected((s) => [...new Set([...s, ...span])]);
    } else {
      setSelected((s) => (s.includes(id) ? s.filter((x) => x !== id) : [...s, id]));
    }
    anchor.current = id;
  }

  function stopSelecting() {
    setSelecting(false);
    setSelected([]);
    anchor.current = undefined;
  }

  async function batch(action: chat.BatchUpdateConversationsRequest["action"], done: string) {
    if (selected.length === 0) return;
    setBusy(true);
    try {
      const res = await api.chat.batchUpdateConversations({ conversationIds: selected, action });
      notify(`${res.conversations} conversation${res.conversations === 1 ? "" : "s"} ${done}.`);
      if (action.case === "delete" && activeId && selected.includes(activeId)) navigate("/");
      setSelected([]);
      reload();
      conversationsReload();
    } catch (err) {
      report(err);
    } finally {
      setBusy(false);
    }
  }

  async function exportSelected(format: chat.ExportFormat) {
    if (selected.length === 0) return;
    setBusy(true);
    try {
      const bytes = await downloadExport(format, selected, () => {});
      notify(`Exported ${selected.length} conversation${selected.length === 1 ? "" : "s"} (${bytes} bytes).`);
    } catch (err) {
      report(err);
    } finally {
      setBusy(false);
    }
  }

  function askTag(add: boolean) {
    const tag = window.prompt(add ? "Tag to add to the selected conversations" : "Tag to remove from the selected conversations");
    if (!tag?.trim()) return;
    void batch(add ? { case: "addTag", value: tag.trim() } : { case: "removeTag", value: tag.trim() }, add ? `tagged “${tag.trim()}”` : `untagged “${tag.trim()}”`);
  }

  const item = (c: chat.Conversation) => (
    <ConversationItem
      key={c.id}
      conv={c}
      active={c.id === activeId}
      folders={folders}
      readOnly={readOnly}
      selecting={selecting}
      checked={selected.includes(c.id)}
      onCheck={(range) => check(c.id, range)}
      onNavigate={onClose}
      onUpdate={update}
      onDelete={() => void remove(c)}
    />
  );
  const checkbox = (id: string, label: string) => (
    <input type="checkbox" aria-label={`Select ${label}`} checked={selected.includes(id)} readOnly onClick={(e) => check(id, e.shiftKey)} />
  );
  const none = selected.length === 0 || busy;

  return (
    <aside className={`sidebar ${open ? "open" : ""}`} aria-label="Conversations">
      <div className="sidebar-head">
        {!readOnly && (
          <button type="button" className="primary" onClick={() => (navigate("/"), onClose())}>
            + New chat
          </button>
        )}
        <input
          type="search"
          placeholder="Search conversations"
          aria-label="Search conversations"
          value={query}
          maxLength={256}
          onChange={(e) => setQuery(e.target.value)}
        />
        {!readOnly && (
          <button type="button" className="ghost" aria-pressed={selecting} onClick={() => (selecting ? stopSelecting() : setSelecting(true))}>
            {selecting ? "Done selecting" : "Select conversations"}
          </button>
        )}
        {selecting && (
          <div className="batch-bar" role="toolbar" aria-label="Selected conversations">
            <span data-testid="selected-count">{selected.length} selected</span>
            <button type="button" className="ghost" onClick={() => setSelected((s) => [...new Set([...s, ...inView])])}>
              All in view
            </button>
            <button type="button" className="ghost" disabled={selected.length === 0} onClick={() => setSelected([])}>
              None
            </button>
            <button type="button" disabled={none} onClick={() => void batch({ case: "archived", value: !archived }, archived ? "unarchived" : "archived")}>
              {archived ? "Unarchive" : "Archive"}
            </button>
            <button type="button" disabled={none} onClick={() => void batch({ case: "pinned", value: true }, "pinned")}>
              Pin
            </button>
            <button type="button" disabled={none} onClick={() => void batch({ case: "pinned", value: false }, "unpinned")}>
              Unpin
            </button>
            <select
              aria-label="Move the selected conversations"
              value="-"
              disabled={none}
              onChange={(e) => void batch({ case: "folderId", value: e.target.value }, e.target.value ? "moved" : "taken out of their folders")}
            >
              <option value="-" disabled>
                Move to…
              </option>
              <option value="">No folder</option>
              {folders.map((f) => (
                <option key={f.id} value={f.id}>
                  {f.name}
                </option>
              ))}
            </select>
            <button type="button" disabled={none} onClick={() => askTag(true)}>
              Tag…
            </button>
            <button type="button" disabled={none} onClick={() => askTag(false)}>
              Untag…
            </button>
            <select aria-label="Export the selected conversations" value="-" disabled={none} onChange={(e) => void exportSelected(Number(e.target.value) as chat.ExportFormat)}>
              <option value="-" disabled>
                Export…
              </option>
              {EXPORT_FORMATS.map((f) => (
                <option key={f.value} value={f.value}>
                  {f.label}
                </option>
              ))}
            </select>
            <button
              type="button"
              className="danger"
              disabled={none}
              onClick={() => {
                if (window.confirm(`Delete ${selected.length} conversation${selected.length === 1 ? "" : "s"} and all their messages? This cannot be undone.`))
                  void batch({ case: "delete", value: true }, "deleted");
              }}
            >
              Delete
            </button>
          </div>
        )}
      </div>
      <div className="sidebar-list">
        {hits !== undefined ? (
          <div className="sidebar-section" data-testid="search-results">
            <div className="section-title">{searching ? "Searching…" : `${hits.length} result${hits.length === 1 ? "" : "s"}`}</div>
            {hits.length === 0 && !searching && <p className="muted" style={{ padding: "0 0.5rem" }}>Nothing matches “{query.trim()}”.</p>}
            {hits.map((h, i) => (
              <div key={`${h.conversationId}-${h.messageId}-${i}`} className="search-row">
                {selecting && checkbox(h.conversationId, h.conversationTitle || "Untitled")}
                <Link to={`/c/${h.conversationId}`} className="search-hit" onClick={onClose}>
                  <div className="title">{h.conversationTitle || "Untitled"}</div>
                  <div className="snippet">
                    {highlightSegments(h.snippet, h.highlights).map((s, j) => (s.hit ? <mark key={j}>{s.text}</mark> : <span key={j}>{s.text}</span>))}
                  </div>
                </Link>
              </div>
            ))}
          </div>
        ) : (
          <>
            {pinned.length > 0 && (
              <div className="sidebar-section">
                <div className="section-title">Pinned</div>
                {pinned.map(item)}
              </div>
            )}
            <div className="sidebar-section">
              <div className="section-title">
                Folders
                <span className="spacer" />
                {!readOnly && (
                  <button type="button" className="icon" aria-label="New folder" title="New folder" onClick={() => setNewFolder("")}>
                    +
                  </button>
                )}
              </div>
              {newFolder !== undefined && (
                <input
                  autoFocus
                  placeholder="Folder name, then Enter"
                  maxLength={100}
                  value={newFolder}
                  onChange={(e) => setNewFolder(e.target.value)}
                  onKeyDown={(e) => {
                    if (e.key === "Enter") void createFolder(newFolder);
                    if (e.key === "Escape") setNewFolder(undefined);
                  }}
                  onBlur={() => void createFolder(newFolder)}
                />
              )}
              {folders.map((f) => {
                const inside = convs.filter((c) => c.folderId === f.id && !c.pinned);
                const isCollapsed = collapsed[f.id] ?? true;
                return (
                  <div key={f.id}>
                    <div className="conv-item">
                      <button
                        type="button"
                        className="ghost"
                        style={{ flex: 1, textAlign: "left" }}
                        aria-expanded={!isCollapsed}
                        onClick={() => setCollapsed((c) => ({ ...c, [f.id]: !isCollapsed }))}
                      >
                        {isCollapsed ? "▸" : "▾"} {f.name} <span className="muted">({inside.length})</span>
                      </button>
                      {selecting && (
                        <button
                          type="button"
                          className="icon"
                          title="Select all in this folder"
                          aria-label={`Select all in folder ${f.name}`}
                          onClick={() => setSelected((s) => [...new Set([...s, ...convs.filter((c) => c.folderId === f.id).map((c) => c.id)])])}
                        >
                          ☑
                        </button>
                      )}
                      {!readOnly && (
                        <>
                          <button type="button" className="icon" title="Rename folder" aria-label={`Rename folder ${f.name}`} onClick={() => void renameFolder(f)}>
                            ✎
                          </button>
                          <button type="button" className="icon" title="Delete folder" aria-label={`Delete folder ${f.name}`} onClick={() => void deleteFolder(f)}>
                            ✕
                          </button>
                        </>
                      )}
                    </div>
                    {!isCollapsed && <div style={{ paddingLeft: "0.9rem" }}>{inside.map(item)}</div>}
                  </div>
                );
              })}
              {folders.length === 0 && newFolder === undefined && <p className="muted" style={{ padding: "0 0.5rem", margin: 0, fontSize: "0.85rem" }}>No folders yet.</p>}
            </div>
            <div className="sidebar-section">
              <div className="section-title">
                {archived ? "Archived" : "Recent"}
                <span className="spacer" />
                <label style={{ margin: 0, fontWeight: "normal", textTransform: "none", letterSpacing: 0, display: "flex", gap: "0.3rem", alignItems: "center" }}>
                  <input type="checkbox" checked={archived} onChange={(e) => setArchived(e.target.checked)} /> archived
                </label>
              </div>
              {loose.map(item)}
              {convs.length === 0 && !loadingMore && <p className="muted" style={{ padding: "0 0.5rem" }}>{archived ? "Nothing archived." : "No conversations yet."}</p>}
              <div ref={sentinel} style={{ height: 1 }} />
              {loadingMore && <p className="muted" style={{ padding: "0 0.5rem" }}>Loading…</p>}
            </div>
          </>
        )}
      </div>
    </aside>
  );
}

function ConversationItem({
  conv,
  active,
  folders,
  readOnly,
  selecting,
  checked,
  onCheck,
  onNavigate,
  onUpdate,
  onDelete,
}: {
  conv: chat.Conversation;
  active: boolean;
  folders: chat.Folder[];
  readOnly: boolean;
  selecting: boolean;
  checked: boolean;
  onCheck: (range: boolean) => void;
  onNavigate: () => void;
  onUpdate: (req: Parameters<typeof api.chat.updateConversation>[0]) => Promise<void>;
  onDelete: () => void;
}) {
  const [menu, setMenu] = useState(false);
  const [renaming, setRenaming] = useState<string>();
  const ref = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (!menu) return;
    const close = (e: MouseEvent) => {
      if (!ref.current?.contains(e.target as Node)) setMenu(false);
    };
    document.addEventListener("mousedown", close);
    return () => document.removeEventListener("mousedown", close);
  }, [menu]);

  const saveRename = async () => {
    const title = renaming?.trim();
    setRenaming(undefined);
    if (title && title !== conv.title) await onUpdate({ id: conv.id, title });
  };

  return (
    <div ref={ref} className={`conv-item ${active ? "active" : ""}`} data-testid="conversation-item">
      {selecting && <input type="checkbox" aria-label={`Select ${conv.title || "Untitled"}`} checked={checked} readOnly onClick={(e) => onCheck(e.shiftKey)} />}
      {renaming !== undefined ? (
        <input
          autoFocus
          aria-label="New title"
          maxLength={200}
          value={renaming}
          onChange={(e) => setRenaming(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter") void saveRename();
            if (e.key === "Escape") setRenaming(undefined);
          }}
          onBlur={() => void saveRename()}
        />
      ) : (
        <Link to={`/c/${conv.id}`} onClick={onNavigate}>
          {conv.title || "Untitled"}
        </Link>
      )}
      {!readOnly && (
        <button type="button" className="icon item-menu-btn" aria-label={`Actions for ${conv.title}`} aria-haspopup="menu" onClick={() => setMenu((m) => !m)}>
          ⋯
        </button>
      )}
      {menu && (
        <div className="item-menu" role="menu">
          <button type="button" role="menuitem" onClick={() => (setMenu(false), setRenaming(conv.title))}>
            Rename
          </button>
          <button type="button" role="menuitem" onClick={() => (setMenu(false), void onUpdate({ id: conv.id, pinned: !conv.pinned }))}>
            {conv.pinned ? "Unpin" : "Pin"}
          </button>
          <select
            aria-label="Move to folder"
            value={conv.folderId}
            onChange={(e) => (setMenu(false), void onUpdate({ id: conv.id, folderId: e.target.value }))}
          >
            <option value="">No folder</option>
            {folders.map((f) => (
              <option key={f.id} value={f.id}>
                Move to {f.name}
              </option>
            ))}
          </select>
          <button type="button" role="menuitem" onClick={() => (setMenu(false), void onUpdate({ id: conv.id, archived: !conv.archived }))}>
            {conv.archived ? "Unarchive" : "Archive"}
          </button>
          <button type="button" role="menuitem" className="danger" onClick={() => (setMenu(false), onDelete())}>
            Delete
          </button>
        </div>
      )}
    </div>
  );
}
