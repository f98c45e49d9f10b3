// A small SVG bar chart for the usage screen. No charting library: the viewBox follows the
// width of the container (measured with a ResizeObserver), so one user unit is one CSS
// pixel and text keeps a readable size from a phone to a desktop.

import { useEffect, useRef, useState, type ReactNode, type RefObject } from "react";

export interface BarDatum {
  key: string;
  value: number;
}

const HEIGHT = 220;
const TOP = 12;
const BOTTOM = 28; // room for the x labels
const RIGHT = 8;
const CHAR_WIDTH = 6.6; // rough width of one 11px character, to size labels

export function BarChart({
  data,
  format,
  label,
  tickLabel = (k) => k,
}: {
  data: BarDatum[];
  format: (v: number) => string;
  label: string;
  /** Optional short form of a key for the x axis (tooltips keep the whole key). */
  tickLabel?: (key: string) => string;
}) {
  const wrap = useRef<HTMLDivElement>(null);
  const width = useWidth(wrap);
  const max = data.reduce((m, d) => Math.max(m, d.value), 0);
  const empty = data.length === 0 || max <= 0;

  let body: ReactNode;
  if (empty) {
    body = (
      <p className="muted" data-testid="chart-empty" style={{ margin: "1.5rem 0", textAlign: "center" }}>
        No spend in this period
      </p>
    );
  } else {
    const top = niceCeiling(max);
    const ticks = [0, top / 2, top];
    const tickText = ticks.map(format);
    const left = round(Math.min(width * 0.35, Math.max(...tickText.map((t) => t.length)) * CHAR_WIDTH + 10));
    const plotW = Math.max(10, width - left - RIGHT);
    const plotH = HEIGHT - TOP - BOTTOM;
    const slot = plotW / data.length;
    const gap = slot > 6 ? Math.min(slot * 0.2, 8) : 0;
    const barW = Math.min(48, Math.max(1, slot - gap)); // a lone bar stays a bar, not a slab
    const y = (v: number) => round(TOP + plotH - (v / top) * plotH);

    // Label only as many bars as fit side by side, spread evenly, always the last one.
    const fit = Math.max(1, Math.floor(plotW / 64));
    const every = Math.ceil(data.length / fit);
    const labelled = new Set<number>();
    for (let i = data.length - 1; i >= 0; i -= every) labelled.add(i);
    const maxChars = Math.max(3, Math.floor((slot * every) / CHAR_WIDTH) - 1);

    const biggest = data.reduce((a, b) => (b.value > a.value ? b : a));
    const summary = `${label}: ${data.length} bar${data.length === 1 ? "" : "s"}, highest ${biggest.key} at ${format(biggest.value)}`;

    body = (
      <svg viewBox={`0 0 ${width} ${HEIGHT}`} role="img" aria-label={summary} preserveAspectRatio="xMidYMid meet">
        {ticks.map((t, i) => (
          <g key={i}>
            <line className="axis" x1={left} x2={left + plotW} y1={y(t)} y2={y(t)} strokeDasharray={i === 0 ? undefined : "3 3"} />
            <text x={left - 6} y={y(t)} dy="0.35em" textAnchor="end">
              {tickText[i]}
            </text>
          </g>
        ))}
        {data.map((d, i) => {
          const x = round(left + i * slot);
          const h = round(Math.max(0, TOP + plotH - y(d.value)));
          return (
            <g key={d.key + i}>
              <title>{`${d.key}: ${format(d.value)}`}</title>
              {/* The whole column answers the pointer, so tiny bars still show their tooltip. */}
              <rect x={x} y={TOP} width={round(slot)} height={plotH} fill="transparent" />
              <rect className="bar" x={round(x + (slot - barW) / 2)} y={round(TOP + plotH - h)} width={round(barW)} height={h} rx={barW > 10 ? 2 : 0} />
              {labelled.has(i) && (
                <text x={round(x + slot / 2)} y={HEIGHT - BOTTOM + 16} textAnchor="middle">
                  {shorten(tickLabel(d.key), maxChars)}
                </text>
              )}
            </g>
          );
        })}
      </svg>
    );
  }

  return (
    <div className="chart" ref={wrap}>
      <h3>{label}</h3>
      {body}
    </div>
  );
}

/** The container's width in CSS pixels, kept up to date; 600 until measured. */
function useWidth(ref: RefObject<HTMLDivElement | null>): number {
  const [width, setWidth] = useState(600);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const measure = () => {
      const w = Math.round(el.clientWidth);
      if (w > 0) setWidth(Math.max(200, w));
    };
    measure();
    if (typeof ResizeObserver === "undefined") return;
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, [ref]);
  return width;
}

/** The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `v`. */
function niceCeiling(v: number): number {
  const power = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (m * power >= v) return m * power;
  }
  return 10 * power;
}

const round = (n: number) => Math.round(n * 100) / 100;

function shorten(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, Math.max(1, max - 1))}…`;
}
