import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { chat, describeError, Code, ConnectError } from "@llmesh/client";
import { formatMoney, highlightSegments, mergeConversations, upsertConversation } from "./util";

const bytes = (s: string) => new TextEncoder().encode(s).length;

describe("search highlights", () => {
  it("turns UTF-8 byte ranges into marked runs", () => {
    const snippet = "the quick brown fox";
    expect(highlightSegments(snippet, [{ start: 4, end: 9 }])).toEqual([
      { text: "the ", hit: false },
      { text: "quick", hit: true },
      { text: " brown fox", hit: false },
    ]);
  });

  it("counts bytes, not UTF-16 units, before a match", () => {
    const snippet = "héllo wörld 🙂 match";
    const start = bytes("héllo wörld 🙂 ");
    const segs = highlightSegments(snippet, [{ start, end: start + 5 }]);
    expect(segs.find((s) => s.hit)?.text).toBe("match");
    expect(segs.map((s) => s.text).join("")).toBe(snippet);
  });

  it("never throws on bad ranges", () => {
    const snippet = "ab🙂cd";
    for (const r of [
      { start: 3, end: 4 }, // inside the emoji
      { start: 10, end: 20 },
      { start: 2, end: 1 },
    ]) {
      const segs = highlightSegments(snippet, [r]);
      expect(segs.map((s) => s.text).join("")).toBe(snippet);
    }
    expect(highlightSegments(snippet, [{ start: 0, end: 2 }, { start: 1, end: 3 }]).map((s) => s.text).join("")).toBe(snippet);
  });
});

describe("conversation list", () => {
  const conv = (id: string, minute: number) =>
    create(chat.ConversationSchema, { id, title: id, updatedAt: timestampFromDate(new Date(Date.UTC(2026, 0, 1, 0, minute))) });

  it("merges pages without duplicates, newest first", () => {
    const merged = mergeConversations([conv("a", 3), conv("b", 2)], [conv("b", 2), conv("c", 1)]);
    expect(merged.map((c) => c.id)).toEqual(["a", "b", "c"]);
  });

  it("moves an updated conversation to the top", () => {
    const list = upsertConversation([conv("a", 3), conv("b", 2)], conv("b", 9));
    expect(list.map((c) => c.id)).toEqual(["b", "a"]);
  });
});

describe("words for people", () => {
  it("formats small costs without rounding them to zero", () => {
    expect(formatMoney(12n, "USD")).toMatch(/0\.000012/);
    expect(formatMoney(2_500_000n, "USD")).toMatch(/2\.50$/);
    expect(formatMoney(4_999_159n, "USD")).toMatch(/4\.999159$/);
  });

  it("describes errors as sentences", () => {
    expect(describeError(new ConnectError("wrong email or password", Code.Unauthenticated))).toBe("Wrong email or password.");
    expect(describeError(new TypeError("Failed to fetch"))).toMatch(/cannot be reached/);
    expect(describeError(new ConnectError("", Code.PermissionDenied))).toBe("Your account is not allowed to do that.");
    const limited = new ConnectError("rate limit reached", Code.ResourceExhausted, { "retry-after": "30" });
    expect(describeError(limited)).toBe("Rate limit reached. Try again in 30 seconds.");
    expect(describeError(new ConnectError("internal error (request id abc)", Code.Internal))).toMatch(/request id abc/);
  });
});
