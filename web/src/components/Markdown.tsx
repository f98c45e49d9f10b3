// Model output as Markdown, rendered safely: no raw HTML at all (it is dropped, never
// parsed into the page), links only with http(s)/mailto targets, images shown as links
// (so a reply cannot make the browser fetch a tracking URL), and no dangerouslySetInnerHTML
// anywhere. Code blocks are highlighted and get a copy button; inside a message that
// provides a CodeRunContext, Python blocks also get a Run button (./CodeRunner).

import { memo, useContext, useRef, useState, type ReactNode } from "react";
import ReactMarkdown, { type Components } from "react-markdown";
import remarkGfm from "remark-gfm";
import rehypeHighlight from "rehype-highlight";
import { CodeRunContext, CodeRunner, runsAsPython } from "./CodeRunner";

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

interface HastNode {
  type: string;
  tagName?: string;
  value?: string;
  properties?: Record<string, unknown>;
  children?: HastNode[];
}

function textOf(node: HastNode): string {
  return node.type === "text" ? (node.value ?? "") : (node.children ?? []).map(textOf).join("");
}

/**
 * Numbers the code blocks in document order (0-based, the `block` a recorded run names) and
 * keeps each one's source text, before highlighting splits it into spans.
 */
export function numberCodeBlocks() {
  return (tree: HastNode) => {
    let index = 0;
    const walk = (node: HastNode) => {
      if (node.type === "element" && node.tagName === "pre") {
        node.properties = { ...node.properties, dataBlock: index++, dataSource: textOf(node).replace(/\n$/, "") };
        return;
      }
      node.children?.forEach(walk);
    };
    walk(tree);
  };
}

function CodeBlock({ children, node }: { children?: ReactNode; node?: HastNode }) {
  const ref = useRef<HTMLPreElement>(null);
  const host = useContext(CodeRunContext);
  const child = Array.isArray(children) ? children[0] : children;
  const className =
    child && typeof child === "object" && "props" in child
      ? String((child.props as { className?: string }).className ?? "")
      : "";
  const lang = /language-([\w+-]+)/.exec(className)?.[1] ?? "";
  const index = Number(node?.properties?.dataBlock ?? -1);
  const source = String(node?.properties?.dataSource ?? "");
  return (
    <div className="code-block">
      <div className="code-head">
        <span>{lang || "text"}</span>
        <CopyButton text={() => ref.current?.innerText ?? ""} label="Copy code" />
      </div>
      <pre ref={ref}>{children}</pre>
      {host && index >= 0 && runsAsPython(lang) && <CodeRunner index={index} lang={lang} code={source} />}
    </div>
  );
}

const components: Components = {
  pre: ({ children, node }) => <CodeBlock node={node as HastNode | undefined}>{children}</CodeBlock>,
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
        rehypePlugins={[numberCodeBlocks, [rehypeHighlight, { detect: false, ignoreMissing: true }]]}
        urlTransform={safeUrl}
        components={components}
      >
        {text}
      </ReactMarkdown>
    </div>
  );
});
