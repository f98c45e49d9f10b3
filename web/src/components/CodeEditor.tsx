// A small code editor: a textarea over a highlighted copy of its text (highlight.js's
// grammars through lowlight, rendered as React elements: no HTML strings), so the caret,
// selection, undo and IME are the browser's own. Tab indents, Shift+Tab outdents,
// Ctrl/Cmd+Enter runs.

import { useMemo, useRef } from "react";
import { Fragment, jsx, jsxs } from "react/jsx-runtime";
import { toJsxRuntime } from "hast-util-to-jsx-runtime";
import { createLowlight } from "lowlight";
import python from "highlight.js/lib/languages/python";

const lowlight = createLowlight({ python });

const INDENT = "    ";

export function CodeEditor({
  value,
  onChange,
  language,
  onRun,
  label,
}: {
  value: string;
  onChange: (v: string) => void;
  language: string;
  onRun?: () => void;
  label: string;
}) {
  const area = useRef<HTMLTextAreaElement>(null);
  const under = useRef<HTMLPreElement>(null);
  const highlighted = useMemo(() => {
    // A trailing newline needs a character after it to take up a line in the <pre>.
    const text = value.endsWith("\n") ? `${value} ` : value;
    if (!lowlight.registered(language)) return text;
    return toJsxRuntime(lowlight.highlight(language, text), { Fragment, jsx, jsxs });
  }, [value, language]);

  function edit(start: number, end: number, text: string, caret: number) {
    const el = area.current;
    if (!el) return;
    el.focus();
    el.setSelectionRange(start, end);
    // insertText keeps the browser's undo history; fall back to a plain assignment.
    if (!document.execCommand("insertText", false, text)) {
      onChange(value.slice(0, start) + text + value.slice(end));
    }
    requestAnimationFrame(() => el.setSelectionRange(caret, caret));
  }

  return (
    <div className="code-editor">
      <pre ref={under} className="code-editor-under hljs" aria-hidden="true">
        <code>{highlighted}</code>
      </pre>
      <textarea
        ref={area}
        aria-label={label}
        spellCheck={false}
        autoCapitalize="off"
        autoComplete="off"
        value={value}
        onChange={(e) => onChange(e.target.value)}
        onScroll={(e) => {
          if (under.current) {
            under.current.scrollTop = e.currentTarget.scrollTop;
            under.current.scrollLeft = e.currentTarget.scrollLeft;
          }
        }}
        onKeyDown={(e) => {
          const el = e.currentTarget;
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
            e.preventDefault();
            onRun?.();
            return;
          }
          if (e.key !== "Tab") return;
          e.preventDefault();
          const { selectionStart: s, selectionEnd: t } = el;
          const lineStart = value.lastIndexOf("\n", s - 1) + 1;
          if (!e.shiftKey && s === t) {
            edit(s, t, INDENT, s + INDENT.length);
            return;
          }
          // Indent or outdent every selected line.
          const block = value.slice(lineStart, t);
          const lines = block.split("\n");
          const changed = e.shiftKey
            ? lines.map((l) => (l.startsWith(INDENT) ? l.slice(INDENT.length) : l.replace(/^ {1,3}/, "")))
            : lines.map((l) => INDENT + l);
          const text = changed.join("\n");
          edit(lineStart, t, text, lineStart + text.length);
        }}
      />
    </div>
  );
}
