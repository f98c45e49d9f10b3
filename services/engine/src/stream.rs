//! Turns token bytes into text deltas: never half a UTF-8 character, and never any part of
//! a stop sequence, even when one arrives split across tokens.

/// What one pushed token produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Text safe to send now (may be empty).
    pub text: String,
    /// A stop sequence was completed; generation must end and nothing more is sent.
    pub stopped: bool,
}

/// Incremental decoder for one sequence.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes that do not yet form a whole character.
    partial: Vec<u8>,
    /// Decoded text held back because it could be the start of a stop sequence.
    held: String,
    stops: Vec<String>,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            partial: Vec::new(),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds the bytes of one token.
    pub fn push(&mut self, bytes: &[u8]) -> Step {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence (not merely incomplete): replace it and move on.
            Err(e) => e.valid_up_to() + e.error_len().unwrap_or(1),
        };
        let ready: Vec<u8> = self.partial.drain(..valid).collect();
        self.held.push_str(&String::from_utf8_lossy(&ready));

        if let Some((at, _)) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s.len())))
            .min()
        {
            let text = self.held[..at].to_owned();
            self.held.clear();
            self.partial.clear();
            return Step {
                text,
                stopped: true,
            };
        }
        let keep = self.longest_stop_prefix_suffix();
        let split = self.held.len() - keep;
        let text = self.held[..split].to_owned();
        self.held.drain(..split);
        Step {
            text,
            stopped: false,
        }
    }

    /// Returns what is still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        out
    }

    /// Length in bytes of the longest end of `held` that begins some stop sequence.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(self.held.len());
            for len in (best + 1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let step = s.push(p);
            out.push_str(&step.text);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn multibyte_characters_wait_for_their_last_byte() {
        let euro = "€".as_bytes();
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.push(&euro[..1]).text, "");
        assert_eq!(s.push(&euro[1..2]).text, "");
        assert_eq!(s.push(&euro[2..]).text, "€");
        let emoji = "🦀".as_bytes();
        assert_eq!(
            run(&[], &[&emoji[..3], &emoji[3..], b"!"]),
            ("🦀!".into(), false)
        );
    }

    #[test]
    fn stop_sequences_split_across_tokens_are_never_sent() {
        assert_eq!(
            run(&["END"], &[b"abc E", b"N", b"D tail"]),
            ("abc ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &[b"one\n", b"\ntwo"]), ("one".into(), true));
        // A false start is released once it cannot be a stop any more.
        assert_eq!(run(&["END"], &[b"EN", b"O"]), ("ENO".into(), false));
        // The earliest of several stops wins.
        assert_eq!(run(&["b", "a"], &[b"xab"]), ("x".into(), true));
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        assert_eq!(run(&["STOP"], &[b"ST"]), ("ST".into(), false));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(run(&[], &[&[0xff], b"a"]), ("\u{FFFD}a".into(), false));
    }

    #[test]
    fn stop_inside_multibyte_text() {
        assert_eq!(
            run(&["é!"], &["café".as_bytes(), b"!"]),
            ("caf".into(), true)
        );
    }
}
