//! Cutting a document's blocks into chunks by the embedding model's own token counts:
//! blocks are split into units (sentences, or word runs for very long ones), the units
//! are counted by the model's tokenizer (llm.CountTokens), and then packed in order into
//! chunks of at most `target` tokens that never cross a heading or a page, each starting
//! with the last `overlap` tokens' worth of units of the chunk before it in the same
//! section.

use super::parse::Block;

/// Longest unit in bytes before it is counted; longer sentences are cut at words.
pub const MAX_UNIT_BYTES: usize = 600;

/// A piece of a block, the smallest thing a chunk boundary falls between.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Which block it came from.
    pub block: usize,
    pub text: String,
}

/// A chunk before it is embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub page: u32,
    pub headings: Vec<String>,
    pub text: String,
    pub tokens: u32,
}

/// The units of every block, in order.
pub fn units(blocks: &[Block]) -> Vec<Unit> {
    let mut out = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        for sentence in sentences(&b.text) {
            for piece in cut(sentence, MAX_UNIT_BYTES) {
                out.push(Unit {
                    block: i,
                    text: piece.to_owned(),
                });
            }
        }
    }
    out
}

/// Sentences of a text: cut after '.', '!', '?' (and their CJK forms) followed by
/// whitespace, and at line ends; the pieces keep their punctuation and spacing.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = i + c.len_utf8();
        let cut_here = match c {
            '.' | '!' | '?' => chars.peek().is_some_and(|(_, n)| n.is_whitespace()),
            '。' | '！' | '？' | '\n' => true,
            _ => false,
        };
        if cut_here {
            if !text[start..end].trim().is_empty() {
                out.push(&text[start..end]);
            }
            start = end;
        }
    }
    if !text[start..].trim().is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// Cuts a text into pieces of at most `max` bytes at whitespace where it can, else at a
/// character boundary.
pub fn cut(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut at = max;
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        let split = rest[..at]
            .rfind(char::is_whitespace)
            .filter(|p| *p > max / 2)
            .unwrap_or(at);
        let split = if split == 0 { at.max(1) } else { split };
        let mut split = split;
        while !rest.is_char_boundary(split) {
            split += 1;
        }
        out.push(&rest[..split]);
        rest = &rest[split..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Packs counted units into chunks. `counts[i]` is unit `i`'s tokens; every unit must
/// already fit in `target` (the caller cuts and recounts the ones that do not).
pub fn pack(
    blocks: &[Block],
    units: &[Unit],
    counts: &[u32],
    target: u32,
    overlap: u32,
) -> Vec<Draft> {
    let mut drafts = Vec::new();
    // Indices of the units in the chunk being built.
    let mut current: Vec<usize> = Vec::new();
    let mut tokens = 0u32;
    let section = |i: usize| {
        let b = &blocks[units[i].block];
        (b.page, &b.headings)
    };
    let emit = |current: &[usize], drafts: &mut Vec<Draft>| {
        let Some(&first) = current.first() else {
            return;
        };
        let b = &blocks[units[first].block];
        let mut text = String::new();
        let mut previous_block = units[first].block;
        for &i in current {
            if units[i].block != previous_block {
                // A paragraph break between blocks.
                text = text.trim_end().to_owned();
                text.push_str("\n\n");
                previous_block = units[i].block;
            }
            text.push_str(&units[i].text);
        }
        drafts.push(Draft {
            page: b.page,
            headings: b.headings.clone(),
            text: text.trim().to_owned(),
            tokens: current.iter().map(|&i| counts[i]).sum(),
        });
    };
    for i in 0..units.len() {
        let n = counts[i];
        let same_section = current.first().is_none_or(|&f| section(f) == section(i));
        if !same_section {
            emit(&current, &mut drafts);
            current.clear();
            tokens = 0;
        } else if !current.is_empty() && tokens + n > target {
            emit(&current, &mut drafts);
            // Carry the tail of this chunk into the next one.
            let mut carried = Vec::new();
            let mut carried_tokens = 0;
            for &j in current.iter().rev() {
                if carried_tokens + counts[j] > overlap || carried_tokens + counts[j] + n > target {
                    break;
                }
                carried_tokens += counts[j];
                carried.push(j);
            }
            carried.reverse();
            current = carried;
            tokens = carried_tokens;
        }
        current.push(i);
        tokens += n;
    }
    emit(&current, &mut drafts);
    drafts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(headings: &[&str], text: &str) -> Block {
        Block {
            page: 0,
            headings: headings.iter().map(|h| (*h).to_owned()).collect(),
            text: text.into(),
        }
    }

    #[test]
    fn chunks_fit_the_target_overlap_and_stop_at_headings() {
        let blocks = vec![
            block(&["A"], "One two. Three four. Five six. Seven eight."),
            block(&["B"], "Nine ten."),
        ];
        let units = units(&blocks);
        assert_eq!(units.len(), 5);
        let counts = vec![3, 3, 3, 3, 3];
        let drafts = pack(&blocks, &units, &counts, 7, 3);
        // [1 2] [2 3] [3 4] under A, then B alone.
        assert_eq!(drafts.len(), 4, "{drafts:#?}");
        assert_eq!(drafts[0].text, "One two. Three four.");
        assert_eq!(drafts[1].text, "Three four. Five six.");
        assert!(drafts.iter().all(|d| d.tokens <= 7));
        assert_eq!(drafts[3].headings, vec!["B".to_owned()]);
        assert_eq!(drafts[3].text, "Nine ten.");
    }

    #[test]
    fn long_text_is_cut_at_words_and_characters() {
        let text = "word ".repeat(300);
        let pieces = cut(&text, 100);
        assert!(pieces.iter().all(|p| p.len() <= 100));
        assert_eq!(pieces.concat(), text);
        let cjk = "字".repeat(100);
        let pieces = cut(&cjk, 10);
        assert!(pieces.iter().all(|p| p.len() <= 10 && !p.is_empty()));
        assert_eq!(pieces.concat(), cjk);
    }
}
