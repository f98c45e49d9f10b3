//! Turns token bytes into text deltas: never half a UTF-8 character, and never any part of
//! a stop sequence, even when one arrives split across tokens.
//!
//! Two kinds of bad bytes are told apart:
//! - bytes that can never become valid UTF-8 (a lead byte followed by one that does not
//!   continue it, a stray continuation byte: the model really produced them) become one
//!   U+FFFD per maximal invalid run, as WHATWG's decoder and Python's `errors="replace"`
//!   do, so the reader sees that something unreadable was there;
//! - a character still incomplete when generation ends (a length cut, end of sequence, a
//!   stop, a cancel between the bytes of one character) is dropped: the text ends at the
//!   last whole character. Its tokens were computed and still count in usage.

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
        // Everything but an incomplete last character is decoded now, invalid runs as
        // U+FFFD wherever they are.
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) => {
                let mut end = e.valid_up_to();
                let mut error = e.error_len();
                while let Some(len) = error {
                    end += len;
                    match std::str::from_utf8(&self.partial[end..]) {
                        Ok(rest) => {
                            end += rest.len();
                            error = None;
                        }
                        Err(e) => {
                            end += e.valid_up_to();
                            error = e.error_len();
                        }
                    }
                }
                end
            }
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

    /// Returns what is still held back when generation ends for another reason than a
    /// stop sequence. A character whose last bytes never came is dropped, not replaced.
    pub fn finish(&mut self) -> String {
        self.partial.clear();
        std::mem::take(&mut self.held)
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
        // An emoji's first two bytes followed by a space can never be completed: one
        // replacement for the run, then the text goes on.
        let emoji = "🌳".as_bytes();
        assert_eq!(
            run(&[], &[b"a", &emoji[..2], b" b"]),
            ("a\u{FFFD} b".into(), false)
        );
        // All in one token: the text after an invalid run is not held back.
        assert_eq!(
            run(&[], &[b"a\xF0\x9F b\xF0\x9F"]),
            ("a\u{FFFD} b".into(), false)
        );
        // A stray continuation byte.
        assert_eq!(
            run(&[], &[b"x", &[0x9f], b"y"]),
            ("x\u{FFFD}y".into(), false)
        );
    }

    #[test]
    fn a_character_cut_at_the_end_is_dropped() {
        let emoji = "🌳".as_bytes();
        for cut in 1..emoji.len() {
            assert_eq!(
                run(&[], &[b"haha! ", "😄".as_bytes(), &emoji[..cut]]),
                ("haha! 😄".into(), false),
                "cut after {cut} bytes"
            );
        }
        // Held stop-sequence text is released, the cut character is not.
        assert_eq!(
            run(&["STOP"], &[b"ok ST", &emoji[..3]]),
            ("ok ST".into(), false)
        );
        // Invalid bytes before the cut stay replaced; only the incomplete tail goes.
        assert_eq!(
            run(&[], &[b" ", &emoji[..2], b" ", &emoji[..2]]),
            (" \u{FFFD} ".into(), false)
        );
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.push(&emoji[..3]).text, "");
        assert_eq!(s.finish(), "");
        assert_eq!(s.finish(), "", "finishing twice sends nothing more");
    }

    #[test]
    fn stop_inside_multibyte_text() {
        assert_eq!(
            run(&["é!"], &["café".as_bytes(), b"!"]),
            ("caf".into(), true)
        );
    }
}
