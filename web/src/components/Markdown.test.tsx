import { describe, expect, it } from "vitest";
import { renderToStaticMarkup } from "react-dom/server";
import { create } from "@bufbuild/protobuf";
import { chat, sandbox } from "@llmesh/client";
import { CodeRunContext, type CodeRunHost } from "./CodeRunner";
import { Markdown, numberCodeBlocks, safeUrl } from "./Markdown";

// A reply written to attack the page. None of it may survive as markup that runs.
const HOSTILE = [
  "Hello <script>window.pwned = 1</script>",
  '<img src=x onerror="window.pwned = 2">',
  "[click me](javascript:window.pwned=3)",
  "[sneaky](JaVaScRiPt:alert(1)) [data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
  "[tab](java\tscript:alert(1)) [vb](vbscript:msgbox(1))",
  '<a href="javascript:alert(1)">raw link</a> <iframe src="https://evil.example"></iframe>',
  "![tracker](https://evil.example/pixel.png)",
  '<svg onload="alert(1)"></svg> <div style="position:fixed;inset:0">overlay</div>',
  "```html\n<script>alert('in code')</script>\n```",
].join("\n\n");

describe("Markdown rendering of model output", () => {
  const html = renderToStaticMarkup(<Markdown text={HOSTILE} />);

  it("drops raw HTML instead of rendering it", () => {
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toMatch(/<img/i);
    expect(html).not.toMatch(/<iframe/i);
    expect(html).not.toMatch(/<svg/i);
    expect(html).not.toMatch(/\son[a-z]+=/i);
    expect(html).not.toMatch(/style="position/i);
  });

  it("keeps no script-capable link targets", () => {
    expect(html).not.toMatch(/href="\s*(javascript|data|vbscript)/i);
    expect(html).not.toMatch(/javascript:/i);
  });

  it("shows images as links, so nothing is fetched", () => {
    expect(html).toContain("image: tracker");
  });

  it("shows code as text", () => {
    const doc = new DOMParser().parseFromString(html, "text/html");
    expect(doc.querySelector("pre")?.textContent).toContain("<script>alert('in code')</script>");
    expect(doc.querySelectorAll("script, img, iframe, svg, object, embed, style").length).toBe(0);
    for (const el of doc.querySelectorAll("*")) {
      for (const attr of el.getAttributeNames()) expect(attr).not.toMatch(/^on|^style$/);
    }
  });

  it("renders ordinary Markdown", () => {
    const ok = renderToStaticMarkup(<Markdown text={"**bold** [site](https://example.com)\n\n```rust\nfn main() {}\n```"} />);
    expect(ok).toContain("<strong>bold</strong>");
    expect(ok).toContain('href="https://example.com"');
    expect(ok).toContain('rel="noopener noreferrer nofollow"');
    expect(ok).toContain("hljs");
    expect(ok).toContain("Copy code");
  });

  it("allows only safe URL schemes", () => {
    expect(safeUrl("https://a.b/c")).toBe("https://a.b/c");
    expect(safeUrl("mailto:a@b.c")).toBe("mailto:a@b.c");
    expect(safeUrl("/c/123")).toBe("/c/123");
    for (const bad of ["javascript:alert(1)", " javascript:x", "//evil.example", "data:text/html,x", "java\nscript:x", "file:///etc/passwd"]) {
      expect(safeUrl(bad)).toBe("");
    }
  });
});

describe("code blocks of a stored message", () => {
  const text = [
    "Two ways:",
    "```js\nconsole.log(1)\n```",
    "```python\nprint('a')\nprint(\"<b>\")\n```",
    "Then:",
    "```py\nimport math\n```",
  ].join("\n\n");
  const saved = create(chat.CodeRunSchema, {
    block: 2,
    language: "py",
    code: "import math",
    stdout: new TextEncoder().encode("kept output\n"),
    exit: { status: sandbox.RunStatus.EXITED, exitCode: 0 },
  });
  const host = (canRun: boolean): CodeRunHost => ({
    messageId: "m1",
    runs: [saved],
    canRun,
    onRecorded: () => undefined,
    report: () => undefined,
  });
  const render = (canRun: boolean) =>
    new DOMParser().parseFromString(
      renderToStaticMarkup(
        <CodeRunContext.Provider value={host(canRun)}>
          <Markdown text={text} />
        </CodeRunContext.Provider>,
      ),
      "text/html",
    );

  it("numbers every block in order and offers Run on Python ones only", () => {
    const doc = render(true);
    const runs = [...doc.querySelectorAll("[data-testid=code-run]")];
    expect(runs.map((r) => r.getAttribute("data-block"))).toEqual(["1", "2"]);
    expect(runs[0]!.textContent).toContain("Run");
    expect(runs[1]!.textContent).toContain("Run again");
  });

  it("shows a kept run under its own block, also to readers who cannot run", () => {
    for (const canRun of [true, false]) {
      const runs = [...render(canRun).querySelectorAll("[data-testid=code-run]")];
      expect(runs.map((r) => r.querySelector("[data-testid=run-stdout]")?.textContent ?? null)).toEqual(
        canRun ? [null, "kept output\n"] : ["kept output\n"],
      );
      expect(runs.some((r) => r.textContent?.includes("Run"))).toBe(canRun);
    }
  });

  it("keeps each block's source text exactly", () => {
    const tree = { type: "root", children: [{ type: "element", tagName: "pre", children: [{ type: "element", tagName: "code", children: [{ type: "text", value: "x = '<'\n" }] }] }] };
    numberCodeBlocks()(tree);
    expect((tree.children[0] as { properties?: Record<string, unknown> }).properties).toEqual({ dataBlock: 0, dataSource: "x = '<'" });
  });

  it("offers nothing outside a stored message", () => {
    const html = renderToStaticMarkup(<Markdown text={text} />);
    expect(html).not.toContain("code-run");
  });
});
