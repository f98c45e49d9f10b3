import { describe, expect, it } from "vitest";
import { renderToStaticMarkup } from "react-dom/server";
import { Markdown, safeUrl } from "./Markdown";

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
