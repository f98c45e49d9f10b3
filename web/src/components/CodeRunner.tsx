// The Run button under a Python code block of a stored assistant message: runs the block
// in the reader's own sandbox with its output streaming in, then keeps the result with the
// message (RecordCodeRun) so a reload, another device or an export shows it.

import { createContext, useContext, useEffect, useRef, useState } from "react";
import { chat, timestampDate } from "@llmesh/client";
import { api } from "../api";
import { joined, runStreaming, type RunState } from "../sandbox";
import { RunOutput } from "./RunOutput";

/** What the code blocks of one message can do: run, and show what earlier runs kept. */
export interface CodeRunHost {
  messageId: string;
  runs: chat.CodeRun[];
  /** The reader may start runs (members and admins, with a Python runtime on the server). */
  canRun: boolean;
  /** The message as the server returned it after recording a run. */
  onRecorded: (m: chat.Message) => void;
  /** Shows an error (recording the run failed). */
  report: (err: unknown) => void;
}

export const CodeRunContext = createContext<CodeRunHost | undefined>(undefined);

/** Fence languages that run as Python. */
export function runsAsPython(lang: string): boolean {
  return ["python", "py", "python3"].includes(lang.toLowerCase());
}

const decoder = new TextDecoder();

export function CodeRunner({ index, lang, code }: { index: number; lang: string; code: string }) {
  const host = useContext(CodeRunContext);
  const [run, setRun] = useState<RunState>();
  const controller = useRef<AbortController | undefined>(undefined);
  // Leaving the conversation stops a run still going.
  useEffect(() => () => controller.current?.abort(), []);
  if (!host) return null;
  const saved = host.runs.find((r) => r.block === index);
  if (!host.canRun && !saved) return null;
  const running = run?.running ?? false;

  async function start() {
    if (!host || running) return;
    const c = new AbortController();
    controller.current = c;
    const done = await runStreaming({ runtime: "python", code }, c.signal, setRun);
    controller.current = undefined;
    if (!done.exit) return;
    try {
      const res = await api.chat.recordCodeRun({
        messageId: host.messageId,
        run: {
          block: index,
          language: lang.toLowerCase(),
          code,
          stdout: joined(done.stdoutBytes),
          stderr: joined(done.stderrBytes),
          truncated: done.truncated,
          exit: done.exit,
        },
      });
      if (res.message) host.onRecorded(res.message);
    } catch (err) {
      host.report(err);
    }
  }

  return (
    <div className="code-run" data-testid="code-run" data-block={index}>
      <div className="code-run-bar">
        {host.canRun &&
          (running ? (
            <button type="button" className="ghost danger" onClick={() => controller.current?.abort()}>
              ■ Stop
            </button>
          ) : (
            <button type="button" className="ghost" onClick={() => void start()} title="Run this block in your sandbox">
              ▶ {saved || run ? "Run again" : "Run"}
            </button>
          ))}
        {!run && saved?.ranAt && <span className="muted">ran {timestampDate(saved.ranAt).toLocaleString()}</span>}
      </div>
      {run ? (
        <RunOutput {...run} />
      ) : saved ? (
        <RunOutput
          stdout={decoder.decode(saved.stdout)}
          stderr={decoder.decode(saved.stderr)}
          exit={saved.exit}
          running={false}
          truncated={saved.truncated}
        />
      ) : null}
    </div>
  );
}
