// Conversation exports as files: the formats the server writes, their file names, and one
// function that streams an export (everything, or a selection) into a download.

import { chat } from "@llmesh/client";
import { api } from "./api";
import { saveFile } from "./util";

export const EXPORT_FORMATS: { value: chat.ExportFormat; label: string; note: string; ext: string; mime: string }[] = [
  { value: chat.ExportFormat.JSON, label: "JSON", note: "lossless, every branch; can be imported again", ext: "json", mime: "application/json" },
  { value: chat.ExportFormat.MARKDOWN, label: "Markdown", note: "for reading; the active branch only", ext: "md", mime: "text/markdown" },
  { value: chat.ExportFormat.CSV, label: "CSV", note: "a row per message for spreadsheets; the active branch only", ext: "csv", mime: "text/csv" },
  { value: chat.ExportFormat.TEXT, label: "Plain text", note: "the active branch only", ext: "txt", mime: "text/plain" },
];

/** Streams an export (of `ids`, or of everything when empty) and saves it; returns its size. */
export async function downloadExport(
  format: chat.ExportFormat,
  ids: string[],
  onBytes: (received: number) => void,
  signal?: AbortSignal,
): Promise<number> {
  const parts: Uint8Array[] = [];
  let bytes = 0;
  for await (const res of api.archive.exportConversations({ conversationId: "", conversationIds: ids, format }, { signal })) {
    if (res.chunk.length === 0) continue;
    parts.push(res.chunk);
    bytes += res.chunk.length;
    onBytes(bytes);
  }
  const kind = EXPORT_FORMATS.find((f) => f.value === format) ?? EXPORT_FORMATS[0];
  const stamp = new Date().toISOString().slice(0, 10);
  const what = ids.length > 0 ? `${ids.length}-conversations` : "conversations";
  saveFile(parts, `llmesh-${what}-${stamp}.${kind.ext}`, kind.mime);
  return bytes;
}
