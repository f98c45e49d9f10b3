import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, chat } from "@llmesh/client";
import { applyEvent, consumeReply, isActive, sentAtMs, startDraft, stopDraft } from "./stream";

const user = create(chat.MessageSchema, { id: "u1", role: 2, content: "Hi" });
const done = create(chat.MessageSchema, { id: "a1", role: 3, content: "Hello there", state: chat.MessageState.COMPLETE });
const ev = (event: chat.ReplyEvent["event"]) => create(chat.ReplyEventSchema, { event });

async function* events(list: chat.ReplyEvent[], fail?: Error) {
  for (const e of list) yield { event: e };
  if (fail) throw fail;
}

describe("reply drafts", () => {
  it("keeps the sources sent before the text", () => {
    const source = create(chat.CitationSchema, { index: 1, documentName: "handbook.md", headings: ["Pests"], quote: "Aphids" });
    let d = applyEvent(startDraft(), ev({ case: "citations", value: create(chat.CitationListSchema, { citations: [source] }) }));
    expect(d.citations?.[0].documentName).toBe("handbook.md");
    d = applyEvent(d, ev({ case: "delta", value: "Use soap [1]." }));
    expect(d).toMatchObject({ text: "Use soap [1].", phase: "streaming" });
    expect(d.citations).toHaveLength(1);
  });

  it("folds user message, deltas and the stored reply", () => {
    let d = startDraft();
    expect(d.phase).toBe("waiting");
    d = applyEvent(d, ev({ case: "userMessage", value: user }));
    expect(d.userMessage?.id).toBe("u1");
    d = applyEvent(d, ev({ case: "delta", value: "Hel" }));
    d = applyEvent(d, ev({ case: "delta", value: "lo" }));
    expect(d).toMatchObject({ text: "Hello", phase: "streaming", deltas: 2 });
    expect(isActive(d)).toBe(true);
    d = applyEvent(d, ev({ case: "assistantMessage", value: done }));
    // The stored text wins over what was streamed.
    expect(d).toMatchObject({ text: "Hello there", phase: "done" });
    expect(isActive(d)).toBe(false);
  });

  it("ignores deltas after the reply stopped", () => {
    let d = stopDraft(applyEvent(startDraft(), ev({ case: "delta", value: "par" })));
    d = applyEvent(d, ev({ case: "delta", value: "tial" }));
    expect(d).toMatchObject({ text: "par", phase: "stopped" });
  });

  it("marks a stored stopped message as stopped", () => {
    const stopped = create(chat.MessageSchema, { id: "a2", role: 3, content: "par", state: chat.MessageState.STOPPED });
    expect(applyEvent(startDraft(), ev({ case: "assistantMessage", value: stopped })).phase).toBe("stopped");
  });

  it("a multi-byte character split across deltas comes out whole", () => {
    // The server sends whole UTF-8 characters; the draft just concatenates strings.
    let d = applyEvent(startDraft(), ev({ case: "delta", value: "na" }));
    d = applyEvent(d, ev({ case: "delta", value: "ïve 🙂" }));
    expect(d.text).toBe("naïve 🙂");
  });

  it("reads the server's send time", () => {
    const at = new Date("2026-01-02T03:04:05.678Z");
    const e = create(chat.ReplyEventSchema, { event: { case: "delta", value: "x" }, sentAt: timestampFromDate(at) });
    expect(sentAtMs(e)).toBe(at.getTime());
    expect(sentAtMs(ev({ case: "delta", value: "x" }))).toBeUndefined();
  });
});

describe("consumeReply", () => {
  it("reports every draft and ends done", async () => {
    const seen: string[] = [];
    const final = await consumeReply(
      events([ev({ case: "userMessage", value: user }), ev({ case: "delta", value: "Hello" }), ev({ case: "assistantMessage", value: done })]),
      new AbortController().signal,
      (d) => seen.push(d.phase),
    );
    expect(final.phase).toBe("done");
    expect(seen[0]).toBe("waiting");
    expect(seen).toContain("streaming");
  });

  it("an abort (Stop) keeps the partial text as stopped", async () => {
    const ctl = new AbortController();
    ctl.abort();
    const final = await consumeReply(
      events([ev({ case: "delta", value: "Partial" })], new ConnectError("aborted", Code.Canceled)),
      ctl.signal,
      () => {},
    );
    expect(final).toMatchObject({ phase: "stopped", text: "Partial" });
  });

  it("a server error becomes a sentence, not a code", async () => {
    const final = await consumeReply(
      events([], new ConnectError("insufficient balance: add credit or ask an admin", Code.FailedPrecondition)),
      new AbortController().signal,
      () => {},
    );
    expect(final.phase).toBe("failed");
    expect(final.error).toBe("Insufficient balance: add credit or ask an admin.");
  });

  it("a stream that ends without the stored reply is not shown as finished", async () => {
    const final = await consumeReply(events([ev({ case: "delta", value: "Hel" })]), new AbortController().signal, () => {});
    expect(final.phase).toBe("failed");
    expect(final.error).toMatch(/ended early/);
  });
});
