//! Documents into text blocks: plain text, Markdown (headings kept as a path), HTML (text
//! without markup, scripts and styles; headings kept), CSV (each row with its header) and
//! source code (split at blank lines). Each block keeps its page (none yet: PDF is not
//! read yet) and the headings above it.

use std::collections::HashSet;

/// How a document is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Markdown,
    Html,
    Pdf,
    Docx,
    Csv,
    Code,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Csv => "csv",
            Format::Code => "code",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "text" => Format::Text,
            "markdown" => Format::Markdown,
            "html" => Format::Html,
            "pdf" => Format::Pdf,
            "docx" => Format::Docx,
            "csv" => Format::Csv,
            "code" => Format::Code,
            _ => return None,
        })
    }

    /// The format a file name and its first bytes suggest.
    pub fn guess(name: &str, bytes: &[u8]) -> Format {
        if bytes.starts_with(b"%PDF-") {
            return Format::Pdf;
        }
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "md" | "markdown" | "mdx" => Format::Markdown,
            "html" | "htm" | "xhtml" => Format::Html,
            "pdf" => Format::Pdf,
            "docx" => Format::Docx,
            "csv" | "tsv" => Format::Csv,
            "rs" | "py" | "js" | "mjs" | "ts" | "tsx" | "jsx" | "go" | "java" | "kt" | "c"
            | "h" | "cc" | "cpp" | "hpp" | "cs" | "rb" | "php" | "swift" | "scala" | "sh"
            | "bash" | "sql" | "lua" | "r" | "jl" | "hs" | "ex" | "exs" | "toml" | "yaml"
            | "yml" | "json" | "proto" => Format::Code,
            _ => {
                if bytes.starts_with(b"PK\x03\x04") && name.to_ascii_lowercase().ends_with("x") {
                    Format::Docx
                } else if looks_like_html(bytes) {
                    Format::Html
                } else {
                    Format::Text
                }
            }
        }
    }
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}

/// A block of a document's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// 1-based page; 0 where the format has none.
    pub page: u32,
    /// The headings above it, outermost first.
    pub headings: Vec<String>,
    pub text: String,
}

/// A parsed document.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub format: Format,
    pub pages: u32,
    pub blocks: Vec<Block>,
}

/// Reads a document; the error says why it cannot be read.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Parsed, String> {
    let blocks = match format {
        Format::Text => paragraphs(&utf8(bytes)?, &[]),
        Format::Code => code(&utf8(bytes)?),
        Format::Markdown => markdown(&utf8(bytes)?),
        Format::Html => html(&utf8_lossy_html(bytes)?),
        Format::Csv => csv_rows(bytes)?,
        Format::Pdf | Format::Docx => {
            return Err(format!(
                "{} documents cannot be read yet; convert the file to text, Markdown or HTML",
                format.as_str()
            ));
        }
    };
    let blocks: Vec<Block> = blocks
        .into_iter()
        .filter(|b| !b.text.trim().is_empty())
        .collect();
    if blocks.is_empty() {
        return Err("the document holds no text".into());
    }
    Ok(Parsed {
        format,
        pages: 0,
        blocks,
    })
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {}); save it as UTF-8 or pick its format",
            e.valid_up_to()
        )
    })?;
    if text.contains('\0') {
        return Err("the file holds NUL bytes: it is binary, not text".into());
    }
    Ok(text.replace("\r\n", "\n"))
}

/// HTML in the wild is not always UTF-8; a few bad bytes are replaced, a binary file is
/// refused.
fn utf8_lossy_html(bytes: &[u8]) -> Result<String, String> {
    if bytes.contains(&0) {
        return Err("the file holds NUL bytes: it is binary, not HTML".into());
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Paragraphs (blank-line separated), each a block under `headings`.
fn paragraphs(text: &str, headings: &[String]) -> Vec<Block> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Block {
            page: 0,
            headings: headings.to_vec(),
            text: p.to_owned(),
        })
        .collect()
}

/// Source code split at blank lines, so functions and classes mostly stay whole; the
/// chunker joins small pieces.
fn code(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() && !current.is_empty() {
            blocks.push(Block {
                page: 0,
                headings: Vec::new(),
                text: std::mem::take(&mut current),
            });
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        blocks.push(Block {
            page: 0,
            headings: Vec::new(),
            text: current,
        });
    }
    blocks
}

/// Markdown: ATX headings (`#` to `######`) set the heading path; fenced code stays one
/// block; other text splits into paragraphs.
fn markdown(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    let mut fence: Option<String> = None;
    let headings = |path: &[(usize, String)]| path.iter().map(|(_, h)| h.clone()).collect();
    let flush = |current: &mut String, blocks: &mut Vec<Block>, path: &[(usize, String)]| {
        if !current.trim().is_empty() {
            blocks.push(Block {
                page: 0,
                headings: headings(path),
                text: current.trim().to_owned(),
            });
        }
        current.clear();
    };
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = &fence {
            current.push_str(line);
            current.push('\n');
            if trimmed.starts_with(open.as_str()) {
                fence = None;
                flush(&mut current, &mut blocks, &path);
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            flush(&mut current, &mut blocks, &path);
            fence = Some(trimmed[..3].to_owned());
            current.push_str(line);
            current.push('\n');
            continue;
        }
        let level = trimmed.bytes().take_while(|b| *b == b'#').count();
        if (1..=6).contains(&level) && trimmed[level..].starts_with([' ', '\t']) {
            flush(&mut current, &mut blocks, &path);
            let title = trimmed[level..]
                .trim()
                .trim_end_matches('#')
                .trim()
                .to_owned();
            path.retain(|(l, _)| *l < level);
            path.push((level, title));
            continue;
        }
        if trimmed.is_empty() {
            flush(&mut current, &mut blocks, &path);
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, &mut blocks, &path);
    blocks
}

/// HTML: the text of the body without scripts, styles and other non-content elements;
/// h1-h6 set the heading path, block elements end paragraphs.
fn html(text: &str) -> Vec<Block> {
    let doc = scraper::Html::parse_document(text);
    let skip: HashSet<&str> = [
        "script", "style", "noscript", "template", "head", "svg", "iframe", "object", "canvas",
    ]
    .into_iter()
    .collect();
    let breaks: HashSet<&str> = [
        "p",
        "div",
        "section",
        "article",
        "li",
        "tr",
        "br",
        "pre",
        "blockquote",
        "table",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "header",
        "footer",
        "main",
        "nav",
        "aside",
        "figure",
        "hr",
    ]
    .into_iter()
    .collect();
    let mut walker = HtmlWalker {
        blocks: Vec::new(),
        path: Vec::new(),
        current: String::new(),
    };
    walker.walk(doc.tree.root(), &skip, &breaks, 0);
    walker.flush();
    walker.blocks
}

struct HtmlWalker {
    blocks: Vec<Block>,
    path: Vec<(usize, String)>,
    current: String,
}

impl HtmlWalker {
    fn flush(&mut self) {
        let text = self
            .current
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() {
            self.blocks.push(Block {
                page: 0,
                headings: self.path.iter().map(|(_, h)| h.clone()).collect(),
                text,
            });
        }
        self.current.clear();
    }

    fn walk(
        &mut self,
        node: ego_tree::NodeRef<'_, scraper::Node>,
        skip: &HashSet<&str>,
        breaks: &HashSet<&str>,
        depth: usize,
    ) {
        // Deeply nested documents are read to a bounded depth: the stack stays small.
        if depth > 256 {
            return;
        }
        match node.value() {
            scraper::Node::Text(t) => {
                self.current.push_str(t);
            }
            scraper::Node::Element(e) => {
                let name = e.name();
                if skip.contains(name) {
                    return;
                }
                let heading = name.len() == 2
                    && name.starts_with('h')
                    && matches!(name.as_bytes()[1], b'1'..=b'6');
                if heading {
                    self.flush();
                    let level = (name.as_bytes()[1] - b'0') as usize;
                    let mut title = String::new();
                    for t in node.descendants().filter_map(|d| d.value().as_text()) {
                        title.push_str(t);
                    }
                    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
                    self.path.retain(|(l, _)| *l < level);
                    if !title.is_empty() {
                        self.path.push((level, title));
                    }
                    return;
                }
                let block = breaks.contains(name);
                if block {
                    self.flush();
                }
                for child in node.children() {
                    self.walk(child, skip, breaks, depth + 1);
                }
                if block {
                    self.flush();
                } else {
                    self.current.push(' ');
                }
            }
            _ => {
                for child in node.children() {
                    self.walk(child, skip, breaks, depth + 1);
                }
            }
        }
    }
}

/// CSV (or TSV): one block per row, "column: value" pairs under the header row.
fn csv_rows(bytes: &[u8]) -> Result<Vec<Block>, String> {
    let text = utf8(bytes)?;
    let first = text.lines().next().unwrap_or_default();
    let delimiter = if first.matches('\t').count() > first.matches(',').count() {
        b'\t'
    } else if first.matches(';').count() > first.matches(',').count() {
        b';'
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the CSV header cannot be read: {e}"))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut blocks = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| format!("CSV row {} cannot be read: {e}", i + 2))?;
        let text: Vec<String> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(j, v)| match header.get(j).filter(|h| !h.is_empty()) {
                Some(h) => format!("{h}: {v}"),
                None => v.to_owned(),
            })
            .collect();
        blocks.push(Block {
            page: 0,
            headings: Vec::new(),
            text: text.join("; "),
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_keeps_the_heading_path() {
        let doc = "# Guide\n\nIntro text.\n\n## Install\n\nRun it.\n\n```sh\nmake\n\nmake test\n```\n\n# Other\n\nEnd.";
        let p = parse(Format::Markdown, doc.as_bytes()).expect("parsed");
        assert_eq!(p.blocks[0].headings, vec!["Guide".to_owned()]);
        assert_eq!(
            p.blocks[1].headings,
            vec!["Guide".to_owned(), "Install".to_owned()]
        );
        assert!(
            p.blocks[2].text.contains("make test"),
            "a fence stays whole"
        );
        assert_eq!(p.blocks[3].headings, vec!["Other".to_owned()]);
    }

    #[test]
    fn html_drops_scripts_and_styles() {
        let doc = "<html><head><title>t</title><style>p{}</style></head><body><h1>Title</h1><p>One <b>bold</b> word.</p><script>alert(1)</script><h2>Sub</h2><div>Two</div></body></html>";
        let p = parse(Format::Html, doc.as_bytes()).expect("parsed");
        let texts: Vec<&str> = p.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, vec!["One bold word.", "Two"]);
        assert_eq!(
            p.blocks[1].headings,
            vec!["Title".to_owned(), "Sub".to_owned()]
        );
    }

    #[test]
    fn csv_rows_carry_their_header() {
        let p = parse(Format::Csv, b"name,city\nAda,London\nLin,\n").expect("parsed");
        assert_eq!(p.blocks[0].text, "name: Ada; city: London");
        assert_eq!(p.blocks[1].text, "name: Lin");
    }

    #[test]
    fn bad_files_say_why() {
        assert!(
            parse(Format::Text, b"\xff\xfe\x00x")
                .expect_err("refused")
                .contains("UTF-8")
        );
        assert!(
            parse(Format::Text, b"  \n\n ")
                .expect_err("refused")
                .contains("no text")
        );
        assert!(
            parse(Format::Pdf, b"%PDF-1.7")
                .expect_err("refused")
                .contains("cannot be read yet")
        );
        assert_eq!(Format::guess("a.md", b"x"), Format::Markdown);
        assert_eq!(Format::guess("x", b"<!DOCTYPE html><p>"), Format::Html);
        assert_eq!(Format::guess("x.bin", b"%PDF-1.4"), Format::Pdf);
    }
}
