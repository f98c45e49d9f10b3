// The "Export & import" tab of Settings: downloads all of a user's conversations as one file,
// and imports another chat product's export (or our own) through a chunked upload with
// progress; the server tells the format from the file unless one is picked.

import { useEffect, useRef, useState, type FormEvent } from "react";
import { chat, describeError, type auth } from "@llmesh/client";
import { api } from "../api";
import { conversationsReload } from "../events";
import { ROLE_MEMBER, useApp } from "../app";
import { uploadBytes } from "../upload";
import { downloadExport, EXPORT_FORMATS } from "../exporting";
import { formatBytes } from "../util";
import { Progress } from "./forms";

// The formats the server reads, "auto" first; the report names the one it saw.
const IMPORT_SOURCES: { value: chat.ImportSource; label: string }[] = [
  { value: chat.ImportSource.UNSPECIFIED, label: "Auto (tell from the file)" },
  { value: chat.ImportSource.CHATGPT, label: "ChatGPT conversations.json" },
  { value: chat.ImportSource.CLAUDE, label: "Claude conversations.json" },
  { value: chat.ImportSource.OPEN_WEBUI, label: "Open WebUI chat export" },
  { value: chat.ImportSource.LIBRECHAT, label: "LibreChat conversation export" },
  { value: chat.ImportSource.TYPINGMIND, label: "TypingMind data export" },
  { value: chat.ImportSource.GENERIC, label: "Generic JSON or JSONL (role/content messages)" },
  { value: chat.ImportSource.LLMESH_JSON, label: "llmesh JSON" },
];

const sourceName = (s: chat.ImportSource) =>
  IMPORT_SOURCES.find((x) => x.value === s && s !== chat.ImportSource.UNSPECIFIED)?.label ?? "an unknown format";

const isAbort = (err: unknown) => err instanceof DOMException && err.name === "AbortError";

type ImportPhase = "idle" | "hashing" | "uploading" | "importing" | "done";

export function SettingsArchive({ me }: { me: auth.User }) {
  const { notify, report } = useApp();
  const writable = me.role >= ROLE_MEMBER;

  const [format, setFormat] = useState<chat.ExportFormat>(chat.ExportFormat.JSON);
  const [exporting, setExporting] = useState(false);
  const [received, setReceived] = useState(0);
  const exportAbort = useRef<AbortController | null>(null);

  const [file, setFile] = useState<File>();
  const [source, setSource] = useState<chat.ImportSource>(chat.ImportSource.UNSPECIFIED);
  const [phase, setPhase] = useState<ImportPhase>("idle");
  const [sent, setSent] = useState(0);
  const [progress, setProgress] = useState({ done: 0, total: 0 });
  const [result, setResult] = useState<chat.ImportReport>();
  const [importError, setImportError] = useState<string>();
  const importAbort = useRef<AbortController | null>(null);
  const fileInput = useRef<HTMLInputElement>(null);

  // Leaving the tab stops whatever is still running.
  useEffect(
    () => () => {
      exportAbort.current?.abort();
      importAbort.current?.abort();
    },
    [],
  );

  async function runExport() {
    const ctl = new AbortController();
    exportAbort.current = ctl;
    setExporting(true);
    setReceived(0);
    try {
      const bytes = await downloadExport(format, [], setReceived, ctl.signal);
      notify(`Export ready (${formatBytes(bytes)}).`);
    } catch (err) {
      if (ctl.signal.aborted || isAbort(err)) notify("Export stopped.");
      else report(err);
    } finally {
      if (exportAbort.current === ctl) exportAbort.current = null;
      setExporting(false);
    }
  }

  async function runImport(e: FormEvent) {
    e.preventDefault();
    if (!file) return notify("Choose a file to import first.", "error");
    if (file.size === 0) return notify("That file is empty.", "error");
    const ctl = new AbortController();
    importAbort.current = ctl;
    const signal = ctl.signal;
    setResult(undefined);
    setImportError(undefined);
    setSent(0);
    setProgress({ done: 0, total: 0 });
    try {
      setPhase("hashing");
      const data = new Uint8Array(await file.arrayBuffer());
      if (signal.aborted) throw new DOMException("stopped", "AbortError");
      const uploadId = await uploadBytes(file.name, data, {
        signal,
        onHashed: () => setPhase("uploading"),
        onSent: setSent,
      });

      setPhase("importing");
      let final: chat.ImportReport | undefined;
      for await (const res of api.archive.importConversations({ uploadId, source }, { signal })) {
        const ev = res.event;
        if (ev.case === "progress") setProgress({ done: ev.value.done, total: ev.value.total });
        else if (ev.case === "report") final = ev.value;
      }
      if (!final) throw new Error("the server finished the import without a report");
      setResult(final);
      // The sidebar lists conversations; it has new ones now.
      if (final.imported > 0) conversationsReload();
      setPhase("done");
      setFile(undefined);
      if (fileInput.current) fileInput.current.value = "";
    } catch (err) {
      setPhase("idle");
      if (signal.aborted || isAbort(err)) {
        notify("Import stopped. Conversations imported before that are kept.");
      } else {
        setImportError(describeError(err));
        report(err);
      }
    } finally {
      if (importAbort.current === ctl) importAbort.current = null;
    }
  }

  const running = phase === "hashing" || phase === "uploading" || phase === "importing";
  const formatOption = (value: chat.ExportFormat, label: string, note: string) => (
    <label className="row" key={value}>
      <input type="radio" name="export-format" checked={format === value} disabled={exporting} onChange={() => setFormat(value)} />
      {label} <span className="muted">({note})</span>
    </label>
  );

  return (
    <div className="grid2">
      <section className="card" aria-label="Export">
        <h2>Export</h2>
        <p className="muted">Download all your conversations as one file.</p>
        <div role="radiogroup" aria-label="Export format">
          {EXPORT_FORMATS.map((f) => formatOption(f.value, f.label, f.note))}
        </div>
        {exporting && <p role="status" data-testid="export-progress">Received {formatBytes(received)}…</p>}
        <div className="row end">
          {exporting && <button type="button" className="ghost" onClick={() => exportAbort.current?.abort()}>Stop</button>}
          <button type="button" className="primary" disabled={exporting} onClick={() => void runExport()}>
            {exporting ? "Exporting…" : "Export all conversations"}
          </button>
        </div>
      </section>

      <section className="card" aria-label="Import">
        <h2>Import</h2>
        {!writable ? (
          <p className="banner" data-testid="read-only">
            Your account has the viewer role, which can read but not change anything, so it cannot import
            conversations. Export works for everyone. Ask an administrator for the member role if you need it.
          </p>
        ) : (
          <form onSubmit={runImport}>
            <label>
              File
              <input
                ref={fileInput}
                type="file"
                accept=".json,.jsonl,application/json"
                disabled={running}
                onChange={(e) => {
                  const f = e.target.files?.[0];
                  setFile(f);
                  setResult(undefined);
                  setImportError(undefined);
                  setPhase("idle");
                }}
              />
              {file && <span className="hint">{`${file.name}, ${formatBytes(file.size)}`}</span>}
            </label>
            <label>
              Source
              <select value={source} disabled={running} onChange={(e) => setSource(Number(e.target.value) as chat.ImportSource)}>
                {IMPORT_SOURCES.map((s) => (
                  <option key={s.value} value={s.value}>{s.label}</option>
                ))}
              </select>
            </label>
            {phase === "hashing" && <p role="status">Reading the file…</p>}
            {(phase === "uploading" || phase === "importing") && (
              <div role="status" style={{ marginBottom: "0.75rem" }}>
                <p className="hint">Uploaded {formatBytes(sent)} of {formatBytes(file?.size ?? 0)}</p>
                <Progress value={sent} max={file?.size ?? 0} label="Upload" />
              </div>
            )}
            {phase === "importing" && (
              <div role="status" style={{ marginBottom: "0.75rem" }}>
                <p className="hint">{progress.total ? `Imported ${progress.done} of ${progress.total} conversations` : "Starting the import…"}</p>
                <Progress value={progress.done} max={progress.total} label="Import" />
              </div>
            )}
            {importError && <p className="banner error" role="alert">{importError}</p>}
            <div className="row end">
              {running && <button type="button" className="ghost" onClick={() => importAbort.current?.abort()}>Stop</button>}
              <button type="submit" className="primary" disabled={running || !file}>{running ? "Importing…" : "Import"}</button>
            </div>
          </form>
        )}
        {result && (
          <div className="banner info" role="status" data-testid="import-report">
            <strong>{result.imported} conversation{result.imported === 1 ? "" : "s"} imported</strong> from{" "}
            <span data-testid="import-source">{sourceName(result.source)}</span>.
            {result.skipped.length > 0 && (
              <>
                <div>{result.skipped.length} skipped:</div>
                <ul style={{ margin: "0.25rem 0 0", paddingLeft: "1.2rem" }}>
                  {result.skipped.map((s, i) => (
                    <li key={i}>
                      <strong>{s.title || "Untitled"}</strong>: {s.reason}
                    </li>
                  ))}
                </ul>
              </>
            )}
            {result.leftOut.length > 0 && (
              <details>
                <summary>{result.leftOut.length} with parts llmesh cannot hold</summary>
                <ul style={{ margin: "0.25rem 0 0", paddingLeft: "1.2rem" }}>
                  {result.leftOut.map((s, i) => (
                    <li key={i}>
                      <strong>{s.title || "Untitled"}</strong>: {s.reason}
                    </li>
                  ))}
                </ul>
              </details>
            )}
          </div>
        )}
      </section>
    </div>
  );
}
