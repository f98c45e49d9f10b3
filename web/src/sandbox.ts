// Running code in the caller's sandbox: a Run stream turned into text as it arrives, and
// the words and figures a run's end is shown with.

import { describeError, sandbox } from "@llmesh/client";
import { api } from "./api";

/** A Run request as the client accepts it (any field may be left out). */
export type RunInit = Parameters<typeof api.sandbox.run>[0];

/** What a run has produced so far. */
export interface RunState {
  stdout: string;
  stderr: string;
  /** Raw bytes, kept to record the run (capped at RECORD_LIMIT). */
  stdoutBytes: Uint8Array[];
  stderrBytes: Uint8Array[];
  /** Output went past RECORD_LIMIT: what is recorded is cut. */
  truncated: boolean;
  exit?: sandbox.RunExit;
  running: boolean;
  /** Why the run could not start or was cut off (in words). */
  error?: string;
}

export const emptyRun = (): RunState => ({
  stdout: "",
  stderr: "",
  stdoutBytes: [],
  stderrBytes: [],
  truncated: false,
  running: true,
});

/** The most output a run recorded with a chat message keeps per stream (the server's cap). */
export const RECORD_LIMIT = 64 * 1024;

const STATUS: Record<number, string> = {
  [sandbox.RunStatus.EXITED]: "exited",
  [sandbox.RunStatus.OUT_OF_FUEL]: "out of fuel",
  [sandbox.RunStatus.OUT_OF_MEMORY]: "out of memory",
  [sandbox.RunStatus.TIMED_OUT]: "timed out",
  [sandbox.RunStatus.OUTPUT_LIMIT]: "output limit",
  [sandbox.RunStatus.TRAPPED]: "trapped",
  [sandbox.RunStatus.CANCELLED]: "cancelled",
};

export function statusName(status: number): string {
  return STATUS[status] ?? "unknown";
}

/** A run that ended as it should: exited with code 0. */
export function succeeded(exit: sandbox.RunExit): boolean {
  return exit.status === sandbox.RunStatus.EXITED && exit.exitCode === 0;
}

function compact(n: bigint | number): string {
  const v = Number(n);
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)} G`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)} M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} k`;
  return String(v);
}

export function formatBytes(n: bigint | number): string {
  const v = Number(n);
  if (v >= 1024 * 1024) return `${(v / (1024 * 1024)).toFixed(1)} MiB`;
  if (v >= 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${v} B`;
}

/** "exited 0 · 12.3 M fuel · 10.0 MiB · 35 ms". */
export function describeExit(exit: sandbox.RunExit): string {
  const head =
    exit.status === sandbox.RunStatus.EXITED ? `exited with code ${exit.exitCode}` : `${statusName(exit.status)}: ${exit.message}`;
  return `${head} · ${compact(exit.fuelUsed)} fuel · ${formatBytes(exit.peakMemoryBytes)} memory · ${Number(exit.durationMs)} ms`;
}

/**
 * Runs `request` and reports the output as it streams. Resolves when the run ends (or was
 * stopped with `signal`); never throws: failures land in `error`.
 */
export async function runStreaming(
  request: RunInit,
  signal: AbortSignal,
  onUpdate: (state: RunState) => void,
): Promise<RunState> {
  const state = emptyRun();
  const out = new TextDecoder();
  const err = new TextDecoder();
  const kept = [0, 0];
  const keep = (parts: Uint8Array[], i: 0 | 1, chunk: Uint8Array) => {
    const room = RECORD_LIMIT - kept[i]!;
    if (chunk.length > room) state.truncated = true;
    if (room > 0) {
      parts.push(chunk.subarray(0, room));
      kept[i] = kept[i]! + Math.min(room, chunk.length);
    }
  };
  try {
    for await (const res of api.sandbox.run(request, { signal })) {
      const e = res.event;
      if (e.case === "stdout") {
        state.stdout += out.decode(e.value, { stream: true });
        keep(state.stdoutBytes, 0, e.value);
      } else if (e.case === "stderr") {
        state.stderr += err.decode(e.value, { stream: true });
        keep(state.stderrBytes, 1, e.value);
      } else if (e.case === "exit") {
        state.exit = e.value;
      }
      onUpdate({ ...state });
    }
  } catch (error) {
    if (!signal.aborted) state.error = describeError(error);
  }
  state.stdout += out.decode();
  state.stderr += err.decode();
  if (signal.aborted && !state.exit) state.error = "Stopped.";
  state.running = false;
  onUpdate({ ...state });
  return state;
}

/** Joins recorded chunks into one buffer. */
export function joined(parts: Uint8Array[]): Uint8Array {
  const size = parts.reduce((n, p) => n + p.length, 0);
  const outBuf = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    outBuf.set(p, at);
    at += p.length;
  }
  return outBuf;
}

/**
 * Splits an arguments line into words the way a shell does for the simple cases: spaces
 * separate, "double" or 'single' quotes keep spaces inside one word (quotes next to text
 * join it: a"b c" is one word), and nothing else is interpreted.
 */
export function splitArgs(line: string): string[] {
  const out: string[] = [];
  let word: string | undefined;
  const re = /"([^"]*)"?|'([^']*)'?|([^\s"']+)|(\s+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) {
    if (m[4] !== undefined) {
      if (word !== undefined) out.push(word);
      word = undefined;
    } else {
      word = (word ?? "") + (m[1] ?? m[2] ?? m[3] ?? "");
    }
  }
  if (word !== undefined) out.push(word);
  return out;
}
