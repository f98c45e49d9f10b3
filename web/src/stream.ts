// A streamed reply as state: the events of SendMessage / Regenerate / EditMessage are
// folded into a draft the chat view renders while the reply is still coming.

import { ConnectError, Code, chat, describeError, timestampDate } from "@llmesh/client";

export type Phase = "waiting" | "streaming" | "done" | "stopped" | "failed";

export interface ReplyDraft {
  /** The stored user message, once the server has sent it back (send and edit). */
  userMessage?: chat.Message;
  /** The reply text so far. */
  text: string;
  /** The stored assistant message, when the reply finished. */
  assistant?: chat.Message;
  phase: Phase;
  error?: string;
  /** Delta events received. */
  deltas: number;
  /** The knowledge sources the reply was given, sent before its text. */
  citations?: chat.Citation[];
}

export function startDraft(): ReplyDraft {
  return { text: "", phase: "waiting", deltas: 0 };
}

/** Applies one event; unknown or empty events leave the draft as it was. */
export function applyEvent(draft: ReplyDraft, event: chat.ReplyEvent): ReplyDraft {
  const e = event.event;
  switch (e.case) {
    case "userMessage":
      return { ...draft, userMessage: e.value };
    case "citations":
      return { ...draft, citations: e.value.citations };
    case "delta":
      if (draft.phase !== "waiting" && draft.phase !== "streaming") return draft;
      return { ...draft, text: draft.text + e.value, phase: "streaming", deltas: draft.deltas + 1 };
    case "assistantMessage":
      return {
        ...draft,
        assistant: e.value,
        // The stored text is the authority (it is what billing counted).
        text: e.value.content,
        phase: e.value.state === chat.MessageState.STOPPED ? "stopped" : "done",
      };
    default:
      return draft;
  }
}

/** The user pressed Stop: the text so far stays; the server stores it as stopped. */
export function stopDraft(draft: ReplyDraft): ReplyDraft {
  if (draft.phase === "done" || draft.phase === "failed") return draft;
  return { ...draft, phase: "stopped" };
}

export function failDraft(draft: ReplyDraft, err: unknown): ReplyDraft {
  return { ...draft, phase: "failed", error: describeError(err) };
}

export function isActive(draft: ReplyDraft | undefined): boolean {
  return draft !== undefined && (draft.phase === "waiting" || draft.phase === "streaming");
}

/** Milliseconds since the epoch at which the server sent the event, if it said. */
export function sentAtMs(event: chat.ReplyEvent): number | undefined {
  return event.sentAt ? timestampDate(event.sentAt).getTime() : undefined;
}

/**
 * Reads a reply stream to its end, reporting each new draft. Aborting `signal` (Stop)
 * ends the draft as stopped rather than failed.
 */
export async function consumeReply(
  events: AsyncIterable<{ event?: chat.ReplyEvent }>,
  signal: AbortSignal,
  onDraft: (draft: ReplyDraft, event?: chat.ReplyEvent) => void,
): Promise<ReplyDraft> {
  let draft = startDraft();
  onDraft(draft);
  try {
    for await (const res of events) {
      if (!res.event) continue;
      draft = applyEvent(draft, res.event);
      onDraft(draft, res.event);
    }
    if (draft.phase === "waiting" || draft.phase === "streaming") {
      // The stream ended without a stored reply: say so rather than pretend it finished.
      draft = failDraft(draft, new Error("the reply ended early; reload the conversation to see what was saved"));
    }
  } catch (err) {
    const cancelled = signal.aborted || (err instanceof ConnectError && err.code === Code.Canceled);
    draft = cancelled ? stopDraft(draft) : failDraft(draft, err);
  }
  onDraft(draft);
  return draft;
}
