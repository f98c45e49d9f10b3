// Time from the server sending a token to it being painted, measured in the browser.
// The server stamps each streamed event (ReplyEvent.sent_at); after React has committed
// the new text, the next animation frame runs before paint and a task queued from it runs
// after paint, so that is when the token is on screen. Server and browser must share a
// clock for absolute figures (the e2e run has both on one machine).

declare global {
  interface Window {
    llmeshMetrics?: { tokenToScreenMs: number[] };
  }
}

const MAX_SAMPLES = 5000;

export function recordTokenLatency(sentAtMs: number): void {
  if (typeof window === "undefined" || typeof requestAnimationFrame === "undefined") return;
  const metrics = (window.llmeshMetrics ??= { tokenToScreenMs: [] });
  requestAnimationFrame(() => {
    setTimeout(() => {
      if (metrics.tokenToScreenMs.length < MAX_SAMPLES) metrics.tokenToScreenMs.push(Date.now() - sentAtMs);
    }, 0);
  });
}

export {};
