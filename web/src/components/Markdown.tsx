// Model output as Markdown, rendered safely: no raw HTML at all (it is dropped, never
// parsed into the page), links only with http(s)/mailto targets, images shown as links
// (so a reply cannot make the browser fetch a tracking URL), and no dangerouslySetInnerHTML
// anywhere. Code blocks are highlighted and get a copy button.

import { memo, useRef, useState, type ReactNode } from "react";
import ReactMarkdown, { type Components } from "react-markdown";
import remarkGfm from "remark-gfm";
import rehypeHighlight from "rehype-highlight";

const SAFE_URL = /^(https?:|mailto:|#|\/(?!\/))/i;

/** Keeps only link targets that cannot run script or reach odd protocols. */
export function safeUrl(url: string): string {
  const trimmed = url.trim();
  // Control characters and whitespace inside the scheme are a classic filter bypass.
  if (/[\u0000-\u001f\u007f]/.test(trimmed)) return "";
  return SAFE_URL.test(trimmed) ? trimmed : "";
}

export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

export function CopyButton({ text, label = "Copy" }: { text: () => string; label?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      className="copy-btn"
      onClick={async () => {
        if (await copyText(text())) {
          setDone(true);
          setTimeout(() => setDone(false), 1500);
        }
      }}
    >
      {done ? "Copied" : label}
    </button>
  );
}

function CodeBlock({ children }: { children?: ReactNode }) {
  const ref = useRef<HTMLPreElement>(null);
  const child = Array.isArray(children) ? children[0] : children;
  const className =
    child && typeof child === "object" && "props" in child
      ? String((child.props as { className?: string }).className ?? "")
      : "";
  const lang = /language-([\w+-]+)/.exec(className)?.[1] ?? "";
  return (
    <div className="code-block">
      <div className="code-head">
        <span>{lang || "text"}</span>
        <CopyButton text={() => ref.current?.innerText ?? ""} label="Copy code" />
      </div>
      <pre ref={ref}>{children}</pre>
    </div>
  );
}

const components: Components = {
  pre: ({ children }) => <CodeBlock>{children}</CodeBlock>,
  a: ({ href, children }) => {
    const url = safeUrl(href ?? "");
    return url ? (
      <a href={url} target="_blank" rel="noopener noreferrer nofollow">
        {children}
      </a>
    ) : (
      <span className="dead-link">{children}</span>
    );
  },
  img: ({ src, alt }) => {
    const url = typeof src === "string" ? safeUrl(src) : "";
    const text = `image: ${alt || "untitled"}`;
    return url ? (
      <a href={url} target="_blank" rel="noopener noreferrer nofollow">
        {text}
      </a>
    ) : (
      <span className="dead-link">{text}</span>
    );
  },
};

export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="markdown">
      <ReactMarkdown
        skipHtml
        remarkPlugins={[remarkGfm]}
        rehypePlugins={[[rehypeHighlight, { detect: false, ignoreMissing: true }]]}
        urlTransform={safeUrl}
        components={components}
      >
        {text}
      </ReactMarkdown>
    </div>
  );
});
