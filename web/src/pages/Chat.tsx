// The chat screen: messages of the active branch, the streaming reply, the composer, and
// the conversation's model, assistant, temperature and system prompt.

import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type KeyboardEvent } from "react";
import { chat, llm } from "@llmesh/client";
import { api } from "../api";
import { ROLE_VIEWER, useApp } from "../app";
import { CodeRunContext, type CodeRunHost } from "../components/CodeRunner";
import { CollectionPicker } from "../components/CollectionPicker";
import { CopyButton, Markdown } from "../components/Markdown";
import { Sidebar } from "../components/Sidebar";
import { TemplatePicker } from "../components/TemplatePicker";
import { conversationChanged, onConversationChange } from "../events";
import { Link, navigate } from "../router";
import { consumeReply, isActive, sentAtMs, type ReplyDraft } from "../stream";
import { formatMoney } from "../util";
import { recordTokenLatency } from "../metrics";

const MESSAGE_STATE_STOPPED = chat.MessageState.STOPPED;
const MESSAGE_STATE_FAILED = chat.MessageState.FAILED;
const ROLE_USER = llm.ChatRole.USER;
const ROLE_ASSISTANT = llm.ChatRole.ASSISTANT;

/** What the reply in flight replaces or extends. */
interface Pending {
  kind: "send" | "regenerate" | "edit";
  /** Messages shown above the reply while it streams (the branch it grows from). */
  base: chat.Message[];
  /** The user's text, shown until the server echoes the stored message. */
  userText?: string;
  draft: ReplyDraft;
}

export function ChatPage({ conversationId }: { conversationId?: string }) {
  const { me, report } = useApp();
  const readOnly = me?.role === ROLE_VIEWER;
  const [conv, setConv] = useState<chat.Conversation>();
  const [messages, setMessages] = useState<chat.Message[]>([]);
  // Whether this server runs Python in a sandbox (code blocks then get a Run button).
  const [python, setPython] = useState(false);
  const [loading, setLoading] = useState(false);
  const [notFound, setNotFound] = useState(false);
  const [models, setModels] = useState<llm.Model[]>([]);
  const [assistants, setAssistants] = useState<chat.Assistant[]>([]);
  const [pending, setPending] = useState<Pending>();
  const [input, setInput] = useState("");
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [showSettings, setShowSettings] = useState(false);
  const [showTemplates, setShowTemplates] = useState(false);
  // Settings of a chat that does not exist yet.
  const [draftModel, setDraftModel] = useState("");
  const [draftAssistant, setDraftAssistant] = useState("");
  const [draftTemperature, setDraftTemperature] = useState<number>();
  const [draftSystem, setDraftSystem] = useState("");
  const [draftCollections, setDraftCollections] = useState<string[]>([]);
  const [showKnowledge, setShowKnowledge] = useState(false);
  const abort = useRef<AbortController>(undefined);
  const scroller = useRef<HTMLDivElement>(null);
  const stickToBottom = useRef(true);
  const textarea = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    api.llm
      .listModels({})
      .then((r) => setModels(r.models.filter((m) => m.kind === llm.ModelKind.CHAT)))
      .catch(report);
    api.chat
      .listAssistants({})
      .then((r) => setAssistants(r.assistants))
      .catch(report);
  }, [report]);

  const load = useCallback(
    async (id: string) => {
      setLoading(true);
      setNotFound(false);
      try {
        const res = await api.chat.getConversation({ id });
        setConv(res.conversation);
        setMessages(res.messages);
        stickToBottom.current = true;
        return res;
      } catch (err) {
        setNotFound(true);
        report(err);
      } finally {
        setLoading(false);
      }
    },
    [report],
  );

  // Follow the route; a conversation this view just created is already loaded.
  useEffect(() => {
    if (!conversationId) {
      abort.current?.abort();
      setConv(undefined);
      setMessages([]);
      setPending(undefined);
      setNotFound(false);
      textarea.current?.focus();
      return;
    }
    if (conv?.id === conversationId) return;
    abort.current?.abort();
    setPending(undefined);
    void load(conversationId);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [conversationId]);

  // Renames, pins and moves made in the sidebar.
  useEffect(
    () =>
      onConversationChange(({ conversation }) => {
        if (conversation) setConv((c) => (c && c.id === conversation.id ? conversation : c));
      }),
    [],
  );

  // Keep the newest text in view while it streams, unless the reader scrolled up.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && stickToBottom.current) el.scrollTop = el.scrollHeight;
  }, [messages, pending]);

  const streaming = isActive(pending?.draft);
  const [stopping, setStopping] = useState(false);

  useEffect(() => {
    api.sandbox
      .listRuntimes({})
      .then((r) => setPython(r.runtimes.some((x) => x.id === "python")))
      .catch(() => setPython(false));
  }, []);

  // A recorded code run comes back as the whole message: it replaces the one shown.
  const onRecorded = useCallback((m: chat.Message) => {
    setMessages((ms) => ms.map((x) => (x.id === m.id ? m : x)));
  }, []);
  useEffect(() => {
    if (!streaming) setStopping(false);
  }, [streaming]);

  /**
   * Stop: ask the service to stop the reply (it works through proxies that swallow a
   * cancelled request) and keep reading, so the stored, stopped reply arrives on the same
   * stream; cancel the stream too if that does not end it within a few seconds.
   */
  function stop() {
    const ctl = abort.current;
    if (!ctl || stopping) return;
    setStopping(true);
    const convId = conv?.id;
    const fallback = () => {
      if (abort.current === ctl) ctl.abort();
    };
    if (!convId) {
      fallback();
      return;
    }
    api.chat
      .stopReply({ conversationId: convId })
      .then(() => setTimeout(fallback, 3000))
      .catch(fallback);
  }

  // Esc stops a reply from anywhere on the page.
  useEffect(() => {
    if (!streaming) return;
    const onKey = (e: globalThis.KeyboardEvent) => {
      if (e.key === "Escape") {
        e.preventDefault();
        stop();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [streaming, stopping, conv?.id]);

  const defaultModel = (models.find((m) => m.state === llm.ModelState.LOADED) ?? models[0])?.id ?? "";
  const currentModel = conv ? conv.model : draftModel || assistants.find((a) => a.id === draftAssistant)?.model || defaultModel;

  /** Runs one streamed reply and then reloads the conversation from the server. */
  async function run(
    kind: Pending["kind"],
    base: chat.Message[],
    userText: string | undefined,
    start: (signal: AbortSignal) => AsyncIterable<{ event?: chat.ReplyEvent }>,
    convId: string,
  ) {
    const controller = new AbortController();
    abort.current = controller;
    stickToBottom.current = true;
    const before = new Set(messages.map((m) => m.id));
    let last: ReplyDraft | undefined;
    const final = await consumeReply(start(controller.signal), controller.signal, (draft, event) => {
      last = draft;
      setPending({ kind, base, userText, draft });
      if (event?.event.case === "delta") {
        const sent = sentAtMs(event);
        if (sent !== undefined) recordTokenLatency(sent);
      }
    });
    if (abort.current === controller) abort.current = undefined;
    if (final.phase === "failed") {
      // Keep the failed draft on screen with its message; reload what was stored.
      setPending({ kind, base, userText, draft: final });
      const res = await api.chat.getConversation({ id: convId }).catch(() => undefined);
      if (res) {
        setConv(res.conversation);
        setMessages(res.messages);
        conversationChanged(res.conversation!);
      }
      return;
    }
    // A stopped reply is stored by the server after it notices the cancel: wait for it.
    const expectParent = last?.userMessage?.id;
    for (let attempt = 0; attempt < 20; attempt++) {
      const res = await api.chat.getConversation({ id: convId }).catch(() => undefined);
      if (!res) break;
      const leaf = res.messages[res.messages.length - 1];
      const settled =
        final.phase === "done" ||
        (leaf?.role === ROLE_ASSISTANT && !before.has(leaf.id) && (!expectParent || leaf.parentId === expectParent));
      if (settled || attempt === 19) {
        setConv(res.conversation);
        setMessages(res.messages);
        setPending(undefined);
        conversationChanged(res.conversation!);
        break;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    // The title is written after the first reply; pick it up for the sidebar.
    setTimeout(() => {
      api.chat
        .getConversation({ id: convId })
        .then((r) => {
          if (r.conversation) {
            conversationChanged(r.conversation);
            setConv((c) => (c?.id === r.conversation!.id ? r.conversation : c));
          }
        })
        .catch(() => undefined);
    }, 2500);
  }

  async function send() {
    const text = input.trim();
    if (!text || streaming || readOnly) return;
    if (new TextEncoder().encode(text).length > 32 * 1024) {
      report(new Error("That message is too long (over 32 KB). Shorten it or split it up."));
      return;
    }
    let target = conv;
    try {
      if (!target) {
        const res = await api.chat.createConversation({
          model: currentModel,
          assistantId: draftAssistant,
          systemPrompt: draftSystem,
          sampling: draftTemperature !== undefined ? { temperature: draftTemperature } : undefined,
          collectionIds: draftCollections,
        });
        target = res.conversation!;
        setConv(target);
        setMessages([]);
        conversationChanged(target);
        navigate(`/c/${target.id}`);
      }
    } catch (err) {
      report(err);
      return;
    }
    setInput("");
    const convId = target.id;
    const parentId = messages[messages.length - 1]?.id ?? "";
    await run("send", messages, text, (signal) => api.chat.sendMessage({ conversationId: convId, content: text, parentId }, { signal }), convId);
  }

  async function regenerate(m: chat.Message) {
    if (streaming || !conv) return;
    const idx = messages.findIndex((x) => x.id === m.id);
    const convId = conv.id;
    await run("regenerate", messages.slice(0, idx), undefined, (signal) => api.chat.regenerate({ messageId: m.id }, { signal }), convId);
  }

  async function edit(m: chat.Message, content: string) {
    if (streaming || !conv) return;
    const idx = messages.findIndex((x) => x.id === m.id);
    const convId = conv.id;
    await run("edit", messages.slice(0, idx), content, (signal) => api.chat.editMessage({ messageId: m.id, content }, { signal }), convId);
  }

  async function switchTo(messageId: string) {
    if (streaming) return;
    try {
      const res = await api.chat.switchBranch({ messageId });
      setConv(res.conversation);
      setMessages(res.messages);
    } catch (err) {
      report(err);
    }
  }

  async function updateConv(req: {
    model?: string;
    systemPrompt?: string;
    sampling?: llm.SamplingParams | { temperature?: number };
    collectionIds?: { ids: string[] };
  }) {
    if (!conv) return;
    try {
      const res = await api.chat.updateConversation({ id: conv.id, ...req });
      setConv(res.conversation);
      conversationChanged(res.conversation!);
    } catch (err) {
      report(err);
    }
  }

  function onComposerKey(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      void send();
    }
  }

  // Grow the composer with its content.
  useLayoutEffect(() => {
    const el = textarea.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight, window.innerHeight * 0.4)}px`;
  }, [input]);

  const shown = pending ? pending.base : messages;
  const temperature = conv ? conv.sampling?.temperature : draftTemperature;
  const systemPrompt = conv ? conv.systemPrompt : draftSystem;
  const attached = conv ? conv.collectionIds : draftCollections;
  const modelChoices = models.some((m) => m.id === currentModel) || !currentModel ? models : [...models, { id: currentModel } as llm.Model];

  return (
    <div className="chat-layout">
      <Sidebar activeId={conv?.id} open={sidebarOpen} onClose={() => setSidebarOpen(false)} />
      <main className="chat-main" onClick={() => sidebarOpen && setSidebarOpen(false)}>
        <div className="chat-head">
          <button type="button" className="ghost menu-btn" style={{ marginLeft: 0 }} aria-label="Show conversations" onClick={(e) => (e.stopPropagation(), setSidebarOpen((o) => !o))}>
            ☰
          </button>
          <div className="title" data-testid="chat-title">
            {conv?.title ?? "New chat"}
          </div>
          {!conv && assistants.length > 0 && (
            <select aria-label="Assistant" value={draftAssistant} onChange={(e) => setDraftAssistant(e.target.value)}>
              <option value="">No assistant</option>
              {assistants.map((a) => (
                <option key={a.id} value={a.id}>
                  {a.icon ? `${a.icon} ` : ""}
                  {a.name}
                </option>
              ))}
            </select>
          )}
          {conv?.assistantId && <span className="badge">{assistants.find((a) => a.id === conv.assistantId)?.name ?? "assistant"}</span>}
          <select
            aria-label="Model"
            value={currentModel}
            disabled={readOnly}
            onChange={(e) => (conv ? void updateConv({ model: e.target.value }) : setDraftModel(e.target.value))}
          >
            {modelChoices.length === 0 && <option value="">No chat models</option>}
            {/* Local models first, then each hosted provider's models under its name. */}
            {modelChoices.filter((m) => !m.provider).map((m) => (
              <option key={m.id} value={m.id}>
                {m.id}
                {m.state === llm.ModelState.LOADED ? " ●" : ""}
              </option>
            ))}
            {[...new Set(modelChoices.filter((m) => m.provider).map((m) => m.provider))].map((provider) => (
              <optgroup key={provider} label={`Hosted: ${provider}`}>
                {modelChoices.filter((m) => m.provider === provider).map((m) => (
                  <option key={m.id} value={m.id} disabled={m.state === llm.ModelState.FAILED}>{m.id}</option>
                ))}
              </optgroup>
            ))}
          </select>
          <button type="button" className={showSettings ? "" : "ghost"} aria-expanded={showSettings} onClick={() => setShowSettings((s) => !s)}>
            ⚙ Settings
          </button>
        </div>
        {showSettings && (
          <ChatSettings
            key={conv?.id ?? "new"}
            temperature={temperature}
            systemPrompt={systemPrompt}
            readOnly={readOnly}
            onSave={(t, sys) => {
              if (conv) {
                // Keep the conversation's other sampling settings; only the temperature changes here.
                const sampling = conv.sampling ? ({ ...conv.sampling, temperature: t } as llm.SamplingParams) : { temperature: t };
                void updateConv({ sampling, systemPrompt: sys });
              }
              else {
                setDraftTemperature(t);
                setDraftSystem(sys);
              }
              setShowSettings(false);
            }}
          />
        )}
        <div
          className="messages"
          ref={scroller}
          onScroll={(e) => {
            const el = e.currentTarget;
            stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
          }}
        >
          <div className="messages-inner">
            {!conv && !conversationId && (
              <div className="empty-chat">
                <h1>What can I help with?</h1>
                <p>
                  Replies come from <strong>{currentModel || "a local model"}</strong> running on this server. Enter sends, Shift+Enter starts a new line, Esc
                  stops a reply.
                </p>
              </div>
            )}
            {loading && <p className="muted">Loading…</p>}
            {notFound && <p className="banner error">This conversation could not be opened. It may have been deleted.</p>}
            {shown.map((m) => (
              <MessageView
                key={m.id}
                m={m}
                readOnly={readOnly || streaming}
                canRunCode={python && !readOnly}
                onRecorded={onRecorded}
                onRegenerate={() => void regenerate(m)}
                onEdit={(text) => void edit(m, text)}
                onSwitch={(id) => void switchTo(id)}
              />
            ))}
            {pending && <PendingView pending={pending} />}
          </div>
        </div>
        <div className="composer">
          {readOnly ? (
            <p className="muted" style={{ textAlign: "center", margin: 0 }}>
              Your account can read conversations but not send messages. Ask an administrator for the member role.
            </p>
          ) : (
            <>
              <div className="composer-tools">
                <button type="button" className="ghost" onClick={() => setShowTemplates(true)}>
                  Templates
                </button>
                <button type="button" className={showKnowledge ? "" : "ghost"} aria-expanded={showKnowledge} onClick={() => setShowKnowledge((s) => !s)}>
                  Knowledge{attached.length > 0 ? ` (${attached.length})` : ""}
                </button>
                <span className="spacer" />
                {streaming && <span>Esc stops</span>}
              </div>
              {showKnowledge && (
                <div className="composer-knowledge">
                  <CollectionPicker
                    value={attached}
                    disabled={streaming}
                    onChange={(ids) => (conv ? void updateConv({ collectionIds: { ids } }) : setDraftCollections(ids))}
                  />
                </div>
              )}
              <div className="composer-inner">
                <textarea
                  ref={textarea}
                  rows={1}
                  aria-label="Message"
                  placeholder="Send a message (Shift+Enter for a new line)"
                  value={input}
                  onChange={(e) => setInput(e.target.value)}
                  onKeyDown={onComposerKey}
                />
                {streaming ? (
                  <button type="button" className="danger" disabled={stopping} onClick={stop}>
                    {stopping ? "Stopping…" : "■ Stop"}
                  </button>
                ) : (
                  <button type="button" className="primary" disabled={!input.trim() || !currentModel} onClick={() => void send()}>
                    Send
                  </button>
                )}
              </div>
            </>
          )}
        </div>
      </main>
      {showTemplates && (
        <TemplatePicker
          onClose={() => setShowTemplates(false)}
          onInsert={(text) => {
            setInput((cur) => (cur.trim() ? `${cur}\n\n${text}` : text));
            setShowTemplates(false);
            textarea.current?.focus();
          }}
        />
      )}
    </div>
  );
}

function ChatSettings({
  temperature,
  systemPrompt,
  readOnly,
  onSave,
}: {
  temperature?: number;
  systemPrompt: string;
  readOnly: boolean;
  onSave: (temperature: number | undefined, systemPrompt: string) => void;
}) {
  const [t, setT] = useState(temperature);
  const [sys, setSys] = useState(systemPrompt);
  return (
    <div className="chat-settings">
      <div className="grid2">
        <label>
          Temperature: {t === undefined ? "model default" : t.toFixed(2)}
          <input type="range" min={0} max={2} step={0.05} value={t ?? 0.7} disabled={readOnly} onChange={(e) => setT(Number(e.target.value))} />
          <span className="hint">0 is deterministic; higher is more varied.</span>
        </label>
        <label>
          System prompt
          <textarea rows={3} maxLength={16000} value={sys} disabled={readOnly} onChange={(e) => setSys(e.target.value)} placeholder="e.g. You are a concise assistant." />
        </label>
      </div>
      {!readOnly && (
        <div className="row end">
          <button type="button" className="ghost" onClick={() => setT(undefined)}>
            Reset temperature
          </button>
          <button type="button" className="primary" onClick={() => onSave(t, sys)}>
            Save settings
          </button>
        </div>
      )}
    </div>
  );
}

function Branch({ m, onSwitch, disabled }: { m: chat.Message; onSwitch: (id: string) => void; disabled: boolean }) {
  if (m.siblingCount < 2) return null;
  const i = m.siblingIndex - 1;
  return (
    <span className="branch" data-testid="branch">
      <button type="button" className="icon" aria-label="Previous version" disabled={disabled || i === 0} onClick={() => onSwitch(m.siblingIds[i - 1]!)}>
        ‹
      </button>
      {m.siblingIndex} / {m.siblingCount}
      <button
        type="button"
        className="icon"
        aria-label="Next version"
        disabled={disabled || i >= m.siblingIds.length - 1}
        onClick={() => onSwitch(m.siblingIds[i + 1]!)}
      >
        ›
      </button>
    </span>
  );
}

function MessageView({
  m,
  readOnly,
  canRunCode,
  onRecorded,
  onRegenerate,
  onEdit,
  onSwitch,
}: {
  m: chat.Message;
  readOnly: boolean;
  canRunCode: boolean;
  onRecorded: (m: chat.Message) => void;
  onRegenerate: () => void;
  onEdit: (text: string) => void;
  onSwitch: (id: string) => void;
}) {
  const [editing, setEditing] = useState<string>();
  const { report } = useApp();
  const codeRuns = useMemo<CodeRunHost>(
    () => ({ messageId: m.id, runs: m.codeRuns, canRun: canRunCode, onRecorded, report }),
    [m.id, m.codeRuns, canRunCode, onRecorded, report],
  );
  if (m.role === ROLE_USER) {
    return (
      <div className="msg user" data-testid="user-message">
        {editing !== undefined ? (
          <div className="msg-edit" style={{ width: "min(100%, 640px)" }}>
            <textarea aria-label="Edit message" value={editing} onChange={(e) => setEditing(e.target.value)} autoFocus />
            <div className="row end" style={{ marginTop: "0.4rem" }}>
              <button type="button" className="ghost" onClick={() => setEditing(undefined)}>
                Cancel
              </button>
              <button
                type="button"
                className="primary"
                disabled={!editing.trim()}
                onClick={() => {
                  onEdit(editing.trim());
                  setEditing(undefined);
                }}
              >
                Save & submit
              </button>
            </div>
          </div>
        ) : (
          <div className="bubble">{m.content}</div>
        )}
        <div className="meta">
          <Branch m={m} onSwitch={onSwitch} disabled={readOnly} />
          {!readOnly && editing === undefined && (
            <button type="button" className="ghost" onClick={() => setEditing(m.content)}>
              Edit
            </button>
          )}
        </div>
      </div>
    );
  }
  if (m.role !== ROLE_ASSISTANT) return null;
  const usage = m.usage;
  return (
    <div
      className="msg assistant"
      data-testid="assistant-message"
      data-message-id={m.id}
      data-prompt-tokens={usage?.promptTokens ?? 0}
      data-completion-tokens={usage?.completionTokens ?? 0}
      data-cost-micros={String(m.cost?.micros ?? 0n)}
      data-state={m.state}
    >
      <div className="bubble">
        <CodeRunContext.Provider value={codeRuns}>
          <Markdown text={m.content} />
        </CodeRunContext.Provider>
      </div>
      <Sources citations={m.citations} />
      <div className="meta">
        <Branch m={m} onSwitch={onSwitch} disabled={readOnly} />
        {m.state === MESSAGE_STATE_STOPPED && <span className="badge warn">stopped</span>}
        {m.state === MESSAGE_STATE_FAILED && <span className="badge warn">failed</span>}
        <span title="prompt + completion tokens">
          {m.model} · {usage?.promptTokens ?? 0} + {usage?.completionTokens ?? 0} tokens
        </span>
        {m.cost && <span>· {formatMoney(m.cost.micros, m.cost.currency || "USD")}</span>}
        <CopyButton text={() => m.content} />
        {!readOnly && (
          <button type="button" className="ghost" onClick={onRegenerate}>
            ↻ Regenerate
          </button>
        )}
      </div>
    </div>
  );
}

/** The knowledge sources a reply was given: [n] document — headings (page), each opening
 * to the start of its passage. */
function Sources({ citations }: { citations: chat.Citation[] }) {
  if (citations.length === 0) return null;
  return (
    <div className="sources" data-testid="sources">
      <span className="muted">Sources</span>
      {citations.map((c) => (
        <details key={`${c.index}-${c.chunkId}`} className="source" data-testid="source">
          <summary>
            [{c.index}] {c.documentName}
            {c.headings.length > 0 && <span className="muted"> — {c.headings.join(" › ")}</span>}
            {c.page > 0 && <span className="muted"> (page {c.page})</span>}
          </summary>
          <blockquote>{c.quote}{c.quote.length >= 300 ? "…" : ""}</blockquote>
          <Link to={`/knowledge/${c.collectionId}?chunk=${c.chunkId}`}>Open in the document</Link>
        </details>
      ))}
    </div>
  );
}

function PendingView({ pending }: { pending: Pending }) {
  const d = pending.draft;
  const userText = d.userMessage?.content ?? pending.userText;
  return (
    <>
      {userText !== undefined && (
        <div className="msg user" data-testid="user-message">
          <div className="bubble">{userText}</div>
        </div>
      )}
      <div className="msg assistant" data-testid="streaming-reply" data-phase={d.phase} aria-live="polite" aria-busy={isActive(d)}>
        <div className={`bubble ${isActive(d) ? "typing" : ""}`}>
          {d.text ? <Markdown text={d.text} /> : d.phase === "waiting" ? <span className="muted">Thinking…</span> : null}
        </div>
        <Sources citations={d.citations ?? []} />
        <div className="meta">
          {d.phase === "stopped" && <span className="badge warn">stopped, saving…</span>}
          {d.phase === "failed" && (
            <span className="banner error" role="alert" style={{ margin: 0 }}>
              {d.error}
            </span>
          )}
        </div>
      </div>
    </>
  );
}
