// A sandbox run's output: stdout and stderr told apart (in the order they were kept), and
// how the run ended with its fuel, memory and time.

import { sandbox } from "@llmesh/client";
import { describeExit, succeeded } from "../sandbox";
import { formatMoney } from "../util";

export function RunOutput({
  stdout,
  stderr,
  exit,
  running,
  error,
  truncated,
}: {
  stdout: string;
  stderr: string;
  exit?: sandbox.RunExit;
  running: boolean;
  error?: string;
  truncated?: boolean;
}) {
  const ok = exit ? succeeded(exit) : undefined;
  const cost = exit?.cost && exit.cost.micros > 0n ? ` · ${formatMoney(exit.cost.micros, exit.cost.currency || "USD")}` : "";
  return (
    <div className="run-output" data-testid="run-output" aria-live="polite" aria-busy={running}>
      {stdout && (
        <pre className="run-stdout" data-testid="run-stdout">
          {stdout}
        </pre>
      )}
      {stderr && (
        <pre className="run-stderr" data-testid="run-stderr">
          {stderr}
        </pre>
      )}
      {!stdout && !stderr && !running && !error && <p className="muted run-empty">No output.</p>}
      <div
        className={`run-exit ${ok === undefined ? "" : ok ? "ok" : "bad"}`}
        data-testid="run-exit"
        data-status={exit ? sandbox.RunStatus[exit.status]?.toLowerCase() : running ? "running" : "none"}
      >
        {running && !exit && <span>Running…</span>}
        {exit && (
          <span>
            {describeExit(exit)}
            {cost}
          </span>
        )}
        {truncated && <span className="muted"> · output cut to 64 KiB when kept</span>}
        {error && (
          <span className="error-text" role="alert">
            {error}
          </span>
        )}
      </div>
    </div>
  );
}
