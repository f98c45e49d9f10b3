// The sandbox: write Python (or pick an uploaded WASI module), run it on the server with
// its output streaming in, stop it, and manage the workspace files a run sees as
// /workspace (upload, download, delete).

import { useCallback, useEffect, useRef, useState } from "react";
import { sandbox, timestampDate } from "@llmesh/client";
import { api } from "../api";
import { ROLE_VIEWER, useApp } from "../app";
import { CodeEditor } from "../components/CodeEditor";
import { RunOutput } from "../components/RunOutput";
import { emptyRun, formatBytes, runStreaming, splitArgs, type RunInit, type RunState } from "../sandbox";
import { saveFile } from "../util";

const CODE_KEY = "llmesh.sandbox.code";
const CHUNK = 256 * 1024;
const EXAMPLE = `import sys, platform

print("Hello from", platform.python_implementation(), sys.version.split()[0])
for i in range(3):
    print("line", i)
`;

export default function Sandbox() {
  const { me, report, notify } = useApp();
  const canRun = (me?.role ?? ROLE_VIEWER) > ROLE_VIEWER;
  const [runtimes, setRuntimes] = useState<sandbox.Runtime[]>([]);
  const [runtime, setRuntime] = useState("python");
  const [code, setCode] = useState(() => window.localStorage.getItem(CODE_KEY) ?? EXAMPLE);
  const [modulePath, setModulePath] = useState("");
  const [args, setArgs] = useState("");
  const [stdin, setStdin] = useState("");
  const [persist, setPersist] = useState(false);
  const [run, setRun] = useState<RunState>();
  const [files, setFiles] = useState<sandbox.ListFilesResponse>();
  const [uploading, setUploading] = useState<string>();
  const stop = useRef<AbortController | undefined>(undefined);
  const fileInput = useRef<HTMLInputElement>(null);

  useEffect(() => window.localStorage.setItem(CODE_KEY, code), [code]);

  const loadFiles = useCallback(() => {
    api.sandbox
      .listFiles({})
      .then(setFiles)
      .catch(report);
  }, [report]);

  useEffect(() => {
    api.sandbox
      .listRuntimes({})
      .then((r) => setRuntimes(r.runtimes))
      .catch(report);
    loadFiles();
  }, [loadFiles, report]);

  const modules = (files?.files ?? []).filter((f) => f.path.endsWith(".wasm"));
  useEffect(() => {
    if (!modulePath && modules[0]) setModulePath(modules[0].path);
  }, [modulePath, modules]);

  const current = runtimes.find((r) => r.id === runtime);
  const running = run?.running ?? false;

  async function start() {
    if (running || !canRun) return;
    const controller = new AbortController();
    stop.current = controller;
    const request: RunInit = {
      runtime,
      args: splitArgs(args),
      stdin: new TextEncoder().encode(stdin),
      persist,
      ...(runtime === "python" ? { code } : { modulePath }),
    };
    setRun(emptyRun());
    const done = await runStreaming(request, controller.signal, setRun);
    stop.current = undefined;
    if (done.exit?.persisted || (done.exit?.changedPaths.length ?? 0) > 0) loadFiles();
  }

  async function upload(list: FileList | null) {
    if (!list) return;
    for (const file of Array.from(list)) {
      const path = file.name;
      setUploading(path);
      try {
        const bytes = new Uint8Array(await file.arrayBuffer());
        let offset = 0;
        do {
          const chunk = bytes.subarray(offset, offset + CHUNK);
          await api.sandbox.writeFileChunk({
            path,
            offset: BigInt(offset),
            data: chunk,
            last: offset + chunk.length >= bytes.length,
          });
          offset += chunk.length;
        } while (offset < bytes.length);
        notify(`Uploaded ${path}`);
      } catch (err) {
        report(err);
        break;
      }
    }
    setUploading(undefined);
    if (fileInput.current) fileInput.current.value = "";
    loadFiles();
  }

  async function download(path: string) {
    try {
      const parts: Uint8Array[] = [];
      for await (const res of api.sandbox.readFile({ path })) parts.push(res.chunk);
      saveFile(parts, path.split("/").pop() || "file", "application/octet-stream");
    } catch (err) {
      report(err);
    }
  }

  async function remove(path: string) {
    if (!window.confirm(`Delete ${path} from your workspace?`)) return;
    try {
      await api.sandbox.deleteFile({ path });
      loadFiles();
    } catch (err) {
      report(err);
    }
  }

  return (
    <main className="page sandbox-page">
      <div className="page-inner wide">
        <h1>Sandbox</h1>
        <p className="hint">
          Code runs on the server in a WebAssembly sandbox: no network, no access to the host, your workspace files as <code>/workspace</code>,
          and limits on instructions (fuel), memory, time and output. Runs are billed by the fuel they use.
        </p>
        {!canRun && (
          <div className="banner" role="note">
            Your account can look at its files but not run code. Ask an administrator for the member role.
          </div>
        )}
        <div className="sandbox-grid">
          <section className="card sandbox-main" aria-labelledby="run-title">
            <div className="row">
              <h2 id="run-title" style={{ margin: 0 }}>
                Run
              </h2>
              <span className="spacer" />
              <label className="inline-field">
                Runtime
                <select aria-label="Runtime" value={runtime} onChange={(e) => setRuntime(e.target.value)} disabled={running}>
                  {(runtimes.length ? runtimes : [{ id: "python", language: "Python" } as sandbox.Runtime]).map((r) => (
                    <option key={r.id} value={r.id}>
                      {r.language} {r.version}
                      {r.available === false ? ` (${r.status})` : ""}
                    </option>
                  ))}
                </select>
              </label>
            </div>
            {current && !current.available && (
              <p className="hint" data-testid="runtime-status">
                {current.language}: {current.status}
              </p>
            )}
            {runtime === "python" ? (
              <CodeEditor value={code} onChange={setCode} language="python" onRun={() => void start()} label="Python code" />
            ) : (
              <label>
                Module
                <select aria-label="Module" value={modulePath} onChange={(e) => setModulePath(e.target.value)}>
                  {modules.length === 0 && <option value="">Upload a .wasm file to your workspace first</option>}
                  {modules.map((m) => (
                    <option key={m.path} value={m.path}>
                      {m.path}
                    </option>
                  ))}
                </select>
              </label>
            )}
            <div className="grid2 tight">
              <label>
                Arguments
                <input value={args} onChange={(e) => setArgs(e.target.value)} placeholder='one two "three four"' />
              </label>
              <label>
                Standard input
                <textarea rows={1} value={stdin} onChange={(e) => setStdin(e.target.value)} />
              </label>
            </div>
            <div className="row">
              <label className="inline-field" title="Keep the files the run writes, if it exits normally">
                <input type="checkbox" checked={persist} onChange={(e) => setPersist(e.target.checked)} />
                Keep file changes
              </label>
              <span className="spacer" />
              <span className="hint">Ctrl+Enter runs</span>
              {running ? (
                <button type="button" className="danger" onClick={() => stop.current?.abort()}>
                  ■ Stop
                </button>
              ) : (
                <button
                  type="button"
                  className="primary"
                  onClick={() => void start()}
                  disabled={!canRun || (runtime === "wasm" && !modulePath)}
                >
                  ▶ Run
                </button>
              )}
            </div>
            {run && <RunOutput {...run} />}
            {run?.exit && run.exit.changedPaths.length > 0 && (
              <p className="hint" data-testid="changed-paths">
                {run.exit.persisted ? "Kept" : "Changed but not kept"}: {run.exit.changedPaths.join(", ")}
              </p>
            )}
          </section>

          <section className="card" aria-labelledby="files-title">
            <div className="row">
              <h2 id="files-title" style={{ margin: 0 }}>
                Workspace
              </h2>
              <span className="spacer" />
              {canRun && (
                <>
                  <input ref={fileInput} type="file" multiple hidden onChange={(e) => void upload(e.target.files)} aria-label="Upload files" />
                  <button type="button" onClick={() => fileInput.current?.click()} disabled={!!uploading}>
                    {uploading ? `Uploading ${uploading}…` : "Upload"}
                  </button>
                </>
              )}
            </div>
            {files && (
              <p className="hint">
                {formatBytes(files.usedBytes)} of {formatBytes(files.quotaBytes)} used · {files.files.length} of {files.maxFiles} files. Python can
                import modules from <code>/workspace/lib</code>.
              </p>
            )}
            {files && files.files.length === 0 && <p className="muted">No files yet.</p>}
            {files && files.files.length > 0 && (
              <ul className="file-list" data-testid="workspace-files">
                {files.files.map((f) => (
                  <li key={f.path}>
                    <span className="file-path" title={f.modifiedAt ? timestampDate(f.modifiedAt).toLocaleString() : undefined}>
                      {f.path}
                    </span>
                    <span className="muted">{formatBytes(f.sizeBytes)}</span>
                    <button type="button" className="ghost" onClick={() => void download(f.path)} aria-label={`Download ${f.path}`}>
                      ⤓
                    </button>
                    {canRun && (
                      <button type="button" className="ghost" onClick={() => void remove(f.path)} aria-label={`Delete ${f.path}`}>
                        ✕
                      </button>
                    )}
                  </li>
                ))}
              </ul>
            )}
          </section>
        </div>
      </div>
    </main>
  );
}
