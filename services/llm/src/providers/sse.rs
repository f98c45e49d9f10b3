//! Server-sent events read from a streamed HTTP body, as the providers stream: `event:`
//! and `data:` fields, events ended by a blank line, comments ignored, CRLF or LF.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// One event: its name ("" when unnamed) and its data lines joined by '\n'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Why reading the events stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// Nothing arrived for the idle timeout.
    Idle(Duration),
    /// The connection broke.
    Body(String),
    /// An event grew past the limit.
    TooLarge,
}

/// Longest single event accepted.
const MAX_EVENT_BYTES: usize = 4 << 20;

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

struct Reader {
    body: Option<Body>,
    buffer: Vec<u8>,
    ready: VecDeque<SseEvent>,
    event: String,
    data: Vec<String>,
    data_bytes: usize,
    idle: Duration,
}

impl Reader {
    /// Takes every whole line out of the buffer.
    fn lines(&mut self) -> Result<(), SseError> {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&String::from_utf8_lossy(&line))?;
        }
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        Ok(())
    }

    fn line(&mut self, line: &str) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data_bytes += value.len();
                if self.data_bytes > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                self.data.push(value.to_owned());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        if !self.data.is_empty() {
            self.ready.push_back(SseEvent {
                event: std::mem::take(&mut self.event),
                data: self.data.join("\n"),
            });
        }
        self.event.clear();
        self.data.clear();
        self.data_bytes = 0;
    }
}

/// The events of a streamed body; a gap longer than `idle` between chunks ends the stream
/// with [`SseError::Idle`].
pub fn events<S>(body: S, idle: Duration) -> impl Stream<Item = Result<SseEvent, SseError>> + Send
where
    S: Stream<Item = Result<Bytes, String>> + Send + 'static,
{
    let reader = Reader {
        body: Some(Box::pin(body)),
        buffer: Vec::new(),
        ready: VecDeque::new(),
        event: String::new(),
        data: Vec::new(),
        data_bytes: 0,
        idle,
    };
    futures::stream::unfold(reader, |mut r| async move {
        loop {
            if let Some(event) = r.ready.pop_front() {
                return Some((Ok(event), r));
            }
            let body = r.body.as_mut()?;
            match tokio::time::timeout(r.idle, body.next()).await {
                Err(_) => {
                    r.body = None;
                    let idle = r.idle;
                    return Some((Err(SseError::Idle(idle)), r));
                }
                Ok(Some(Ok(chunk))) => {
                    r.buffer.extend_from_slice(&chunk);
                    if let Err(e) = r.lines() {
                        r.body = None;
                        return Some((Err(e), r));
                    }
                }
                Ok(Some(Err(e))) => {
                    r.body = None;
                    return Some((Err(SseError::Body(e)), r));
                }
                Ok(None) => {
                    // The end of the body ends a last event without its blank line.
                    r.body = None;
                    if !r.buffer.is_empty() {
                        let rest =
                            String::from_utf8_lossy(&std::mem::take(&mut r.buffer)).into_owned();
                        let _ = r.line(rest.trim_end_matches('\r'));
                    }
                    r.dispatch();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(chunks: &[&str]) -> Vec<Result<SseEvent, SseError>> {
        let owned: Vec<Result<Bytes, String>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        events(futures::stream::iter(owned), Duration::from_secs(5))
            .collect()
            .await
    }

    #[tokio::test]
    async fn events_split_anywhere_with_either_line_ending() {
        let got = read(&[
            ": comment\r\nevent: message_start\r\nda",
            "ta: {\"a\":1}\r\n\r\ndata: one\ndata: two\n\n",
            "data: last",
        ])
        .await;
        let got: Vec<SseEvent> = got.into_iter().map(|e| e.expect("event")).collect();
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "message_start".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "one\ntwo".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "last".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_silent_body_ends_with_idle() {
        let body = futures::stream::pending::<Result<Bytes, String>>();
        let got: Vec<_> = events(body, Duration::from_millis(20)).collect().await;
        assert_eq!(got, vec![Err(SseError::Idle(Duration::from_millis(20)))]);
    }
}
