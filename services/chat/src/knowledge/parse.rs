//! Documents into text blocks: plain text, Markdown (headings kept as a path), HTML (text
//! without markup, scripts and styles; headings kept), PDF (text per page), DOCX
//! (paragraphs under their Heading-styled titles, table rows), CSV (each row with its
//! header) and source code (split at blank lines). Each block keeps its page and the
//! headings above it.

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

/// Limits on what a document may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// PDF pages, at most.
    pub max_pages: u32,
    /// Bytes a compressed part (a DOCX's XML) may expand to, at most.
    pub max_expanded_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pages: 2000,
            max_expanded_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Reads a document; the error says why it cannot be read.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Parsed, String> {
    parse_with(format, bytes, Limits::default())
}

/// Reads a document within `limits`.
pub fn parse_with(format: Format, bytes: &[u8], limits: Limits) -> Result<Parsed, String> {
    let mut pages = 0;
    let blocks = match format {
        Format::Text => paragraphs(&utf8(bytes)?, &[]),
        Format::Code => code(&utf8(bytes)?),
        Format::Markdown => markdown(&utf8(bytes)?),
        Format::Html => html(&utf8_lossy_html(bytes)?),
        Format::Csv => csv_rows(bytes)?,
        Format::Docx => docx(bytes, limits)?,
        Format::Pdf => {
            let (n, blocks) = pdf(bytes, limits)?;
            pages = n;
            blocks
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
        pages,
        blocks,
    })
}

/// PDF: the text of each page (pdf-extract over lopdf), paragraphs kept with their page.
/// The reader panics on some malformed files; a panic is a file that cannot be read.
fn pdf(bytes: &[u8], limits: Limits) -> Result<(u32, Vec<Block>), String> {
    if !bytes.starts_with(b"%PDF-") {
        return Err("the file is not a PDF (it does not start with %PDF-)".into());
    }
    let read = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes));
    let pages = match read {
        Ok(Ok(pages)) => pages,
        Ok(Err(e)) => {
            let why = e.to_string();
            let lower = why.to_lowercase();
            return Err(if lower.contains("encrypt") || lower.contains("password") {
                "the PDF is encrypted; remove its password and upload it again".into()
            } else {
                format!(
                    "the PDF cannot be read: {}",
                    why.chars().take(200).collect::<String>()
                )
            });
        }
        Err(_) => return Err("the PDF is malformed and cannot be read".into()),
    };
    if pages.len() as u64 > u64::from(limits.max_pages) {
        return Err(format!(
            "the PDF has {} pages; chat.knowledge.max_pages allows {}",
            pages.len(),
            limits.max_pages
        ));
    }
    let mut blocks = Vec::new();
    for (i, text) in pages.iter().enumerate() {
        for mut b in paragraphs(&text.replace("\r\n", "\n"), &[]) {
            b.page = i as u32 + 1;
            // PDF text comes in lines: rejoin a paragraph's lines with spaces.
            b.text = b.text.split_whitespace().collect::<Vec<_>>().join(" ");
            blocks.push(b);
        }
    }
    if blocks.is_empty() {
        return Err("the PDF holds no text (a scan needs OCR first)".into());
    }
    Ok((pages.len() as u32, blocks))
}

/// DOCX: word/document.xml's paragraphs (`w:p`, their runs' `w:t`), with paragraphs styled
/// Heading1..9 or Title setting the heading path; a table row becomes one block of its
/// cells.
fn docx(bytes: &[u8], limits: Limits) -> Result<Vec<Block>, String> {
    use std::io::Read;
    if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        return Err(
            "the file is an encrypted or old (.doc) Word file, not a DOCX; save it as .docx without a password"
                .into(),
        );
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("the DOCX is not a readable zip archive: {e}"))?;
    let part = archive
        .by_name("word/document.xml")
        .map_err(|_| "the DOCX has no word/document.xml".to_owned())?;
    let mut xml = Vec::new();
    part.take(limits.max_expanded_bytes + 1)
        .read_to_end(&mut xml)
        .map_err(|e| format!("the DOCX cannot be decompressed: {e}"))?;
    if xml.len() as u64 > limits.max_expanded_bytes {
        return Err(format!(
            "the DOCX expands to more than {} bytes",
            limits.max_expanded_bytes
        ));
    }
    docx_xml(&xml)
}

fn docx_xml(xml: &[u8]) -> Result<Vec<Block>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut blocks = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut paragraph = String::new();
    let mut style: Option<usize> = None;
    let mut in_text = false;
    let mut row: Option<Vec<String>> = None;
    let mut table_depth = 0usize;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("the DOCX's XML is malformed: {e}"))?;
        match event {
            Event::Start(e) | Event::Empty(e) => match e.local_name().into_inner() {
                "p" => {
                    paragraph.clear();
                    style = None;
                }
                "t" => in_text = true,
                "tab" => paragraph.push('\t'),
                "br" => paragraph.push('\n'),
                "tbl" => table_depth += 1,
                "tr" => row = Some(Vec::new()),
                "pStyle" => {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().into_inner() == "val" {
                            let v = a.value.to_lowercase();
                            style = heading_level(&v);
                        }
                    }
                }
                _ => {}
            },
            Event::Text(t) if in_text => paragraph.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    paragraph.push(c);
                } else {
                    paragraph.push_str(match r.as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" => "'",
                        _ => "",
                    });
                }
            }
            Event::End(e) => match e.local_name().into_inner() {
                "t" => in_text = false,
                "p" => {
                    let text = paragraph.trim().to_owned();
                    paragraph.clear();
                    if text.is_empty() {
                        continue;
                    }
                    if let Some(cells) = row.as_mut() {
                        cells.push(text);
                    } else if let Some(level) = style.filter(|_| table_depth == 0) {
                        path.retain(|(l, _)| *l < level);
                        path.push((level, text));
                    } else {
                        blocks.push(Block {
                            page: 0,
                            headings: path.iter().map(|(_, h)| h.clone()).collect(),
                            text,
                        });
                    }
                }
                "tr" => {
                    if let Some(cells) = row.take()
                        && !cells.is_empty()
                    {
                        blocks.push(Block {
                            page: 0,
                            headings: path.iter().map(|(_, h)| h.clone()).collect(),
                            text: cells.join(" | "),
                        });
                    }
                }
                "tbl" => table_depth = table_depth.saturating_sub(1),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(blocks)
}

/// The heading level of a Word paragraph style id ("Heading1", "heading 2", "Title").
fn heading_level(style: &str) -> Option<usize> {
    if style == "title" {
        return Some(1);
    }
    let rest = style.strip_prefix("heading")?.trim();
    rest.parse::<usize>().ok().filter(|l| (1..=9).contains(l))
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

    /// A PDF of one text line per page, in Helvetica, with a correct cross-reference table.
    pub(crate) fn pdf_of(pages: &[&str]) -> Vec<u8> {
        let n = pages.len();
        let mut objects: Vec<String> = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".into(),
            format!(
                "<< /Type /Pages /Kids [{}] /Count {n} >>",
                (0..n)
                    .map(|i| format!("{} 0 R", 4 + 2 * i))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
                .into(),
        ];
        for (i, text) in pages.iter().enumerate() {
            let stream = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
            objects.push(format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                5 + 2 * i
            ));
            objects.push(format!(
                "<< /Length {} >>\nstream\n{stream}\nendstream",
                stream.len()
            ));
        }
        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
        }
        let xref = out.len();
        out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
        for off in offsets {
            out.extend(format!("{off:010} 00000 n \n").as_bytes());
        }
        out.extend(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    /// A DOCX holding `document` as word/document.xml.
    pub(crate) fn docx_of(document: &str) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("[Content_Types].xml", options).expect("zip");
        zip.write_all(b"<?xml version=\"1.0\"?><Types/>")
            .expect("zip");
        zip.start_file("word/document.xml", options).expect("zip");
        zip.write_all(document.as_bytes()).expect("zip");
        zip.finish().expect("zip").into_inner()
    }

    #[test]
    fn pdf_pages_keep_their_numbers() {
        let p = parse(
            Format::Pdf,
            &pdf_of(&["Tomatoes like warm soil.", "Aphids hate soap."]),
        )
        .expect("parsed");
        assert_eq!(p.pages, 2);
        assert_eq!(p.blocks.len(), 2, "{:?}", p.blocks);
        assert_eq!(p.blocks[0].page, 1);
        assert!(
            p.blocks[1].text.contains("Aphids hate soap"),
            "{:?}",
            p.blocks
        );
        assert_eq!(p.blocks[1].page, 2);
        let limited = parse_with(
            Format::Pdf,
            &pdf_of(&["a", "b", "c"]),
            Limits {
                max_pages: 2,
                ..Limits::default()
            },
        );
        assert!(limited.expect_err("too many pages").contains("max_pages"));
        let mut truncated = pdf_of(&["x"]);
        truncated.truncate(truncated.len() / 2);
        assert!(
            parse(Format::Pdf, &truncated).is_err(),
            "a broken PDF is refused, not a panic"
        );
    }

    #[test]
    fn docx_headings_paragraphs_and_tables() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Care</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">Water </w:t></w:r><w:r><w:t>often &amp; deeply.</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Plant</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>Days</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
<w:p><w:pPr><w:pStyle w:val="Heading2"/></w:pPr><w:r><w:t>Pests</w:t></w:r></w:p>
<w:p><w:r><w:t>Use soap.</w:t></w:r></w:p>
</w:body></w:document>"#;
        let p = parse(Format::Docx, &docx_of(xml)).expect("parsed");
        let texts: Vec<&str> = p.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            vec!["Water often & deeply.", "Plant | Days", "Use soap."]
        );
        assert_eq!(p.blocks[0].headings, vec!["Care".to_owned()]);
        assert_eq!(
            p.blocks[2].headings,
            vec!["Care".to_owned(), "Pests".to_owned()]
        );
        let bomb = parse_with(
            Format::Docx,
            &docx_of(&"<w:p>".repeat(10_000)),
            Limits {
                max_expanded_bytes: 1000,
                ..Limits::default()
            },
        );
        assert!(bomb.expect_err("expands too far").contains("expands"));
        assert!(parse(Format::Docx, &docx_of("<w:p><w:t>unclosed")).is_err());
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
            !parse(Format::Pdf, b"%PDF-1.7 garbage")
                .expect_err("refused")
                .is_empty()
        );
        assert!(
            parse(Format::Docx, b"\xd0\xcf\x11\xe0rest")
                .expect_err("refused")
                .contains("encrypted")
        );
        assert!(
            parse(Format::Docx, b"PK\x03\x04broken")
                .expect_err("refused")
                .contains("zip")
        );
        assert_eq!(Format::guess("a.md", b"x"), Format::Markdown);
        assert_eq!(Format::guess("x", b"<!DOCTYPE html><p>"), Format::Html);
        assert_eq!(Format::guess("x.bin", b"%PDF-1.4"), Format::Pdf);
    }
}
