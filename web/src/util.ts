// Small pure helpers shared by the screens (and unit-tested).

import { timestampDate, type chat, type Timestamp } from "@llmesh/client";

export interface Segment {
  text: string;
  hit: boolean;
}

/**
 * Splits a snippet into plain and highlighted runs. The server gives highlight ranges in
 * UTF-8 byte offsets; JavaScript strings index UTF-16 units, so slice the bytes. Ranges
 * out of bounds, overlapping or splitting a character are clamped or skipped, never thrown.
 */
export function highlightSegments(snippet: string, ranges: { start: number; end: number }[]): Segment[] {
  const bytes = new TextEncoder().encode(snippet);
  const decoder = new TextDecoder();
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const out: Segment[] = [];
  let pos = 0;
  const push = (from: number, to: number, hit: boolean) => {
    if (to <= from) return;
    const text = decoder.decode(bytes.subarray(from, to));
    if (!text) return;
    const last = out[out.length - 1];
    if (last && last.hit === hit) last.text += text;
    else out.push({ text, hit });
  };
  for (const r of sorted) {
    const start = alignToChar(bytes, Math.max(r.start, pos));
    const end = alignToChar(bytes, Math.min(r.end, bytes.length));
    if (end <= start) continue;
    push(pos, start, false);
    push(start, end, true);
    pos = end;
  }
  push(pos, bytes.length, false);
  return out;
}

/** Moves a byte offset back to the start of the UTF-8 character it falls in. */
function alignToChar(bytes: Uint8Array, i: number): number {
  let j = Math.min(i, bytes.length);
  while (j > 0 && j < bytes.length && (bytes[j]! & 0xc0) === 0x80) j--;
  return j;
}

/**
 * Money in micros as currency text, exact to the micro-unit (the ledger's unit): at least
 * two decimals, more only when the amount has them ($4.999159, $0.000131, $5.00).
 */
export function formatMoney(micros: bigint | number, currency = "USD"): string {
  const value = Number(micros) / 1_000_000;
  try {
    return new Intl.NumberFormat(undefined, {
      style: "currency",
      currency,
      minimumFractionDigits: 2,
      maximumFractionDigits: 6,
    }).format(value);
  } catch {
    return `${value.toFixed(6).replace(/0{1,4}$/, "")} ${currency}`;
  }
}

export function formatBytes(n: bigint | number): string {
  let v = Number(n);
  const units = ["B", "KB", "MB", "GB", "TB"];
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 10 || u === 0 ? 0 : 1)} ${units[u]}`;
}

export function toDate(ts: Timestamp | undefined): Date | undefined {
  return ts ? timestampDate(ts) : undefined;
}

/** "just now", "5 min ago", "yesterday", or a date. */
export function relativeTime(date: Date | undefined, now = new Date()): string {
  if (!date) return "";
  const secs = Math.round((now.getTime() - date.getTime()) / 1000);
  if (secs < 45) return "just now";
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.round(secs / 3600)} h ago`;
  if (secs < 2 * 86400) return "yesterday";
  return date.toLocaleDateString();
}

type Conv = chat.Conversation;

/** Adds a page of conversations to those loaded, keeping each id once and newest first. */
export function mergeConversations(loaded: Conv[], page: Conv[]): Conv[] {
  const byId = new Map(loaded.map((c) => [c.id, c]));
  for (const c of page) byId.set(c.id, c);
  return sortConversations([...byId.values()]);
}

/** Replaces (or inserts) one conversation, e.g. after a reply or a rename. */
export function upsertConversation(loaded: Conv[], conv: Conv): Conv[] {
  return sortConversations([conv, ...loaded.filter((c) => c.id !== conv.id)]);
}

function sortConversations(list: Conv[]): Conv[] {
  const t = (c: Conv) => (c.updatedAt ? timestampDate(c.updatedAt).getTime() : 0);
  return list.sort((a, b) => t(b) - t(a) || (a.id < b.id ? 1 : -1));
}

/** Saves received bytes as a file, through a temporary link (exports, CSV). */
export function saveFile(parts: Uint8Array[], fileName: string, type: string): void {
  // Join into one fresh buffer: Blob wants views backed by a plain ArrayBuffer.
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  const url = URL.createObjectURL(new Blob([all], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = fileName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  // Let the browser start the download before freeing the data.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
