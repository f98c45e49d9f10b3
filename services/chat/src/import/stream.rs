//! Reading an import a conversation at a time, so memory stays flat whatever the file's
//! size: the top-level array (ChatGPT, Claude, Open WebUI, LibreChat, generic), the
//! `conversations` array of llmesh's own export, TypingMind's `data.chats`, or one JSON
//! Lines record, is handed on item by item and dropped once converted. Only a document
//! that is one conversation (a LibreChat or generic object) is held whole.
//!
//! A file is read twice. [`check`] converts every conversation and keeps none, so that a
//! wrong type anywhere fails the whole import before anything is written; it also tells
//! the format when the client named none and counts the conversations for progress.
//! [`each`] then reads it again and hands every conversation on for writing.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::apps::{self, Parsed};
use super::json::Node;
use crate::archive::{EXPORT_FORMAT, ExportConversation, ExportDoc, ImportSource};
use crate::error::{ChatError, Result};

/// Where in the file the conversations are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `[conv, conv, …]`
    Array,
    /// `{"conversations": [conv, …], …}`
    Conversations,
    /// `{"data": {"chats": [chat, …]}}` or `{"chats": […]}`
    Chats,
    /// JSON Lines: one conversation per line.
    Lines,
    /// One JSON object that is not laid out as a list.
    Whole,
}

/// How the conversations are read once the file's format is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Each(ImportSource),
    /// A bare array of generic messages: one conversation, gathered before converting.
    Messages,
}

/// What [`check`] learnt, for [`each`].
#[derive(Debug)]
pub(crate) struct Reading {
    pub source: ImportSource,
    /// Conversations in the file.
    pub total: usize,
    shape: Shape,
    plan: Plan,
    folders: HashMap<String, String>,
}

/// One conversation-sized value and the path that errors name it by.
struct Item {
    value: Value,
    path: String,
    shape: Shape,
    /// The line of a JSON Lines record.
    line: Option<usize>,
}

/// What the walk found beside the items.
#[derive(Default)]
struct Found {
    format: Option<String>,
    folders: Option<Value>,
    whole: Option<Value>,
    shape: Option<Shape>,
}

/// Reads `open()`'s file once, handing each item to `each`.
fn walk<R: Read>(
    open: &dyn Fn() -> Result<R>,
    each: &mut dyn FnMut(Item, &Found) -> Result<()>,
) -> Result<Found> {
    let mut walker = Walker {
        each,
        failed: None,
        found: Found::default(),
    };
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(
        1 << 16,
        without_bom(open()?)?,
    ));
    let top = TopSeed(&mut walker).deserialize(&mut de);
    if let Some(e) = walker.failed.take() {
        return Err(e);
    }
    let top = top.map_err(invalid)?;
    let mut found = walker.found;
    match top {
        Some(shape) => {
            de.end().map_err(invalid)?;
            found.shape = Some(shape);
        }
        None => {
            if de.end().is_ok() {
                found.shape = Some(Shape::Whole);
            } else {
                // More values follow the first object: JSON Lines, read again by line.
                drop(de);
                found.whole = None;
                found.shape = Some(Shape::Lines);
                lines(without_bom(open()?)?, &mut |item| {
                    (walker.each)(item, &found)
                })?;
            }
        }
    }
    Ok(found)
}

/// The reader with a leading UTF-8 byte order mark (some Windows tools write one) left out.
fn without_bom<R: Read>(mut r: R) -> Result<std::io::Chain<std::io::Cursor<Vec<u8>>, R>> {
    let mut head = Vec::with_capacity(3);
    (&mut r)
        .take(3)
        .read_to_end(&mut head)
        .map_err(|e| ChatError::Internal(format!("reading the upload: {e}")))?;
    if head == [0xEF, 0xBB, 0xBF] {
        head.clear();
    }
    Ok(std::io::Cursor::new(head).chain(r))
}

fn invalid(e: serde_json::Error) -> ChatError {
    match e.classify() {
        serde_json::error::Category::Data => ChatError::Invalid(e.to_string()),
        // The store failed under the reader, not the file.
        serde_json::error::Category::Io => ChatError::Internal(format!("reading the upload: {e}")),
        _ => ChatError::Invalid(format!(
            "not valid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        )),
    }
}

fn lines<R: Read>(reader: R, each: &mut dyn FnMut(Item) -> Result<()>) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| ChatError::Internal(format!("reading the upload: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(&line)
            .map_err(|e| ChatError::Invalid(format!("line {n}: not valid JSON: {e}")))?;
        each(Item {
            value,
            path: format!("line {n}: $"),
            shape: Shape::Lines,
            line: Some(n),
        })?;
    }
}

struct Walker<'a> {
    each: &'a mut dyn FnMut(Item, &Found) -> Result<()>,
    /// The error a callback stopped the walk with (serde's own error type cannot carry it).
    failed: Option<ChatError>,
    found: Found,
}

impl Walker<'_> {
    fn emit<E: serde::de::Error>(
        &mut self,
        value: Value,
        path: String,
        shape: Shape,
    ) -> std::result::Result<(), E> {
        let item = Item {
            value,
            path,
            shape,
            line: None,
        };
        (self.each)(item, &self.found).map_err(|e| {
            self.failed = Some(e);
            E::custom("stopped")
        })
    }
}

/// The top-level value: `Some(shape)` when its conversations were streamed, `None` when it
/// is one object (kept in `found.whole`).
struct TopSeed<'w, 'a>(&'w mut Walker<'a>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = Option<Shape>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = Option<Shape>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array or object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
        stream_items(self.0, seq, "$", Shape::Array)?;
        Ok(Some(Shape::Array))
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut rest = Map::new();
        let mut streamed = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "conversations" | "chats" if streamed.is_none() => {
                    let shape = if key == "chats" {
                        Shape::Chats
                    } else {
                        Shape::Conversations
                    };
                    map.next_value_seed(ItemsSeed {
                        walker: self.0,
                        path: format!("$.{key}"),
                        shape,
                    })?;
                    streamed = Some(shape);
                }
                "data" if streamed.is_none() => {
                    if map.next_value_seed(DataSeed(self.0))? {
                        streamed = Some(Shape::Chats);
                    }
                }
                "format" => {
                    let v: Value = map.next_value()?;
                    self.0.found.format = v.as_str().map(str::to_owned);
                    rest.insert(key, v);
                }
                "folders" => {
                    let v: Value = map.next_value()?;
                    self.0.found.folders = Some(v.clone());
                    rest.insert(key, v);
                }
                _ => {
                    let v: Value = map.next_value()?;
                    rest.insert(key, v);
                }
            }
        }
        if streamed.is_none() {
            self.0.found.whole = Some(Value::Object(rest));
        }
        Ok(streamed)
    }
}

fn stream_items<'de, A: SeqAccess<'de>>(
    walker: &mut Walker,
    mut seq: A,
    path: &str,
    shape: Shape,
) -> std::result::Result<(), A::Error> {
    let mut i = 0usize;
    while let Some(v) = seq.next_element::<Value>()? {
        walker.emit(v, format!("{path}[{i}]"), shape)?;
        i += 1;
    }
    Ok(())
}

/// An array of conversations inside the top-level object.
struct ItemsSeed<'w, 'a> {
    walker: &'w mut Walker<'a>,
    path: String,
    shape: Shape,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: an array", self.path)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<(), A::Error> {
        stream_items(self.walker, seq, &self.path, self.shape)
    }
}

/// TypingMind's `data` object: its `chats` are streamed and its `folders` kept; `true`
/// when there were chats.
struct DataSeed<'w, 'a>(&'w mut Walker<'a>);

impl<'de> DeserializeSeed<'de> for DataSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("$.data: an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<bool, A::Error> {
        let mut chats = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "chats" if !chats => {
                    map.next_value_seed(ItemsSeed {
                        walker: self.0,
                        path: "$.data.chats".into(),
                        shape: Shape::Chats,
                    })?;
                    chats = true;
                }
                "folders" => self.0.found.folders = Some(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(chats)
    }
}

/// The plan for a file whose first item is `item`, when the client named no format.
fn detect(item: &Item, found: &Found) -> Option<Plan> {
    let v = &item.value;
    let has = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
    let source = match item.shape {
        Shape::Array => {
            if has("mapping") {
                ImportSource::ChatGpt
            } else if has("chat_messages") {
                ImportSource::Claude
            } else if v.pointer("/chat/history").is_some() || has("history") {
                ImportSource::OpenWebUi
            } else if has("conversationId") {
                ImportSource::LibreChat
            } else if has("messages") {
                ImportSource::Generic
            } else if has("role") {
                return Some(Plan::Messages);
            } else {
                return None;
            }
        }
        Shape::Conversations => {
            let ours = found.format.as_deref() == Some(EXPORT_FORMAT)
                || (v.get("active_leaf_id").is_some() && v.get("sampling").is_some());
            if ours {
                ImportSource::Llmesh
            } else {
                ImportSource::Generic
            }
        }
        Shape::Chats => ImportSource::TypingMind,
        Shape::Lines => ImportSource::Generic,
        Shape::Whole => return detect_whole(v).map(Plan::Each),
    };
    Some(Plan::Each(source))
}

fn detect_whole(v: &Value) -> Option<ImportSource> {
    let has = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
    if v.get("format").and_then(|f| f.as_str()) == Some(EXPORT_FORMAT) {
        Some(ImportSource::Llmesh)
    } else if has("conversationId") {
        Some(ImportSource::LibreChat)
    } else if has("messages") || has("conversations") {
        Some(ImportSource::Generic)
    } else if has("data") || has("chats") {
        Some(ImportSource::TypingMind)
    } else {
        None
    }
}

fn undetected() -> ChatError {
    ChatError::Invalid(
        "source: the file looks like none of the formats llmesh reads (llmesh JSON, ChatGPT, \
         Open WebUI, LibreChat, TypingMind, Claude, generic JSON or JSONL); name its source"
            .into(),
    )
}

fn name(source: ImportSource) -> &'static str {
    match source {
        ImportSource::Llmesh => "llmesh JSON",
        ImportSource::ChatGpt => "ChatGPT",
        ImportSource::OpenWebUi => "Open WebUI",
        ImportSource::LibreChat => "LibreChat",
        ImportSource::TypingMind => "TypingMind",
        ImportSource::Claude => "Claude",
        ImportSource::Generic => "generic",
    }
}

/// One item of `source`'s export into `out`.
fn convert(
    source: ImportSource,
    item: &Item,
    folders: &HashMap<String, String>,
    out: &mut Parsed,
) -> Result<()> {
    let node = Node::at(&item.value, item.path.clone());
    match (source, item.shape) {
        (ImportSource::ChatGpt, Shape::Array) => out
            .conversations
            .push(super::chatgpt_conversation(&item.value, &item.path)?),
        (ImportSource::Claude, Shape::Array) => apps::claude_conversation(&node, out)?,
        (ImportSource::OpenWebUi, Shape::Array) => apps::open_webui_chat(&node, out)?,
        (ImportSource::LibreChat, Shape::Array) => apps::librechat_conversation(&node, out)?,
        (ImportSource::TypingMind, Shape::Chats) => apps::typingmind_chat(&node, folders, out)?,
        (ImportSource::Llmesh, Shape::Conversations) => {
            let c: ExportConversation =
                serde_path_to_error::deserialize(&item.value).map_err(|e| {
                    ChatError::Invalid(format!(
                        "invalid llmesh export at {}.{}: {}",
                        item.path,
                        e.path(),
                        e.inner()
                    ))
                })?;
            out.conversations.push(c);
        }
        (ImportSource::Generic, Shape::Array | Shape::Conversations) => {
            apps::generic_item(&node, out)?
        }
        (ImportSource::Generic, Shape::Lines) => {
            apps::generic_line(&node, item.line.unwrap_or(0), out)?
        }
        (source, shape) => {
            let expected = match source {
                ImportSource::Llmesh => "an object with format and conversations",
                ImportSource::TypingMind => "an object with data.chats",
                ImportSource::Generic => "an array of conversations or JSON Lines",
                _ => "an array of conversations",
            };
            let seen = match shape {
                Shape::Array => "an array",
                Shape::Conversations => "an object with conversations",
                Shape::Chats => "an object with chats",
                Shape::Lines => "JSON Lines",
                Shape::Whole => "one object",
            };
            return Err(ChatError::Invalid(format!(
                "$: expected {expected} for a {} export, found {seen}",
                name(source)
            )));
        }
    }
    Ok(())
}

/// A document that is one object, read whole.
fn convert_whole(source: ImportSource, value: &Value) -> Result<Parsed> {
    match source {
        ImportSource::Llmesh => {
            let doc: ExportDoc = serde_path_to_error::deserialize(value).map_err(|e| {
                ChatError::Invalid(format!(
                    "invalid llmesh export at {}: {}",
                    e.path(),
                    e.inner()
                ))
            })?;
            check_format(Some(&doc.format))?;
            Ok(Parsed {
                conversations: doc.conversations,
                left_out: Vec::new(),
            })
        }
        ImportSource::LibreChat => {
            let mut out = Parsed::default();
            apps::librechat_conversation(&Node::root(value), &mut out)?;
            Ok(out)
        }
        ImportSource::TypingMind => apps::parse_typingmind(value),
        ImportSource::Generic => apps::parse_generic_value(value),
        // Arrays are read item by item; these formats are nothing but an array.
        ImportSource::OpenWebUi => Err(Node::root(value).wrong("an array of chats")),
        ImportSource::ChatGpt | ImportSource::Claude => {
            Err(Node::root(value).wrong("an array of conversations"))
        }
    }
}

fn check_format(format: Option<&str>) -> Result<()> {
    if format == Some(EXPORT_FORMAT) {
        return Ok(());
    }
    Err(ChatError::Invalid(format!(
        "$.format: is {format:?}, expected {EXPORT_FORMAT:?}"
    )))
}

/// Reads the whole file, converting every conversation and keeping none: the format (as
/// named, or as the file looks), the count, or the first error with the path it is at.
pub(crate) fn check<R: Read>(
    open: &dyn Fn() -> Result<R>,
    source: Option<ImportSource>,
) -> Result<Reading> {
    let mut plan: Option<Plan> = None;
    let mut total = 0usize;
    // A bare list of messages is one conversation: its items are checked together.
    let mut gathered = Vec::new();
    let none = HashMap::new();
    let found = walk(open, &mut |item, found| {
        let p = match plan {
            Some(p) => p,
            None => {
                let p = match source {
                    Some(ImportSource::Generic)
                        if item.shape == Shape::Array
                            && item.value.get("messages").is_none()
                            && item.value.get("role").is_some() =>
                    {
                        Plan::Messages
                    }
                    Some(s) => Plan::Each(s),
                    None => detect(&item, found).ok_or_else(undetected)?,
                };
                *plan.get_or_insert(p)
            }
        };
        match p {
            Plan::Each(s) => {
                let mut out = Parsed::default();
                convert(s, &item, &none, &mut out)?;
                total += out.conversations.len();
            }
            Plan::Messages => gathered.push(item.value),
        }
        Ok(())
    })?;
    let shape = found.shape.unwrap_or(Shape::Whole);
    let plan = match (plan, &found.whole) {
        (Some(p), _) => p,
        (None, Some(whole)) => {
            let s = match source {
                Some(s) => s,
                None => detect_whole(whole).ok_or_else(undetected)?,
            };
            total = convert_whole(s, whole)?.conversations.len();
            Plan::Each(s)
        }
        // An empty list: nothing to import, in whichever format was named.
        (None, None) => Plan::Each(match (source, shape) {
            (Some(s), _) => s,
            (None, Shape::Chats) => ImportSource::TypingMind,
            (None, Shape::Conversations) if found.format.as_deref() == Some(EXPORT_FORMAT) => {
                ImportSource::Llmesh
            }
            (None, _) => ImportSource::Generic,
        }),
    };
    if plan == Plan::Each(ImportSource::Llmesh) && shape == Shape::Conversations {
        check_format(found.format.as_deref())?;
    }
    if plan == Plan::Messages {
        total = apps::parse_generic_value(&Value::Array(gathered))?
            .conversations
            .len();
    }
    let folders = match &found.folders {
        Some(f) => apps::typingmind_folders(&Node::at(f, "$.data.folders".into()))?,
        None => HashMap::new(),
    };
    let source = match plan {
        Plan::Each(s) => s,
        Plan::Messages => ImportSource::Generic,
    };
    Ok(Reading {
        source,
        total,
        shape,
        plan,
        folders,
    })
}

/// Reads the file again as [`check`] found it, handing on each conversation (with what
/// it left out) as soon as it is converted.
pub(crate) fn each<R: Read>(
    open: &dyn Fn() -> Result<R>,
    reading: &Reading,
    sink: &mut dyn FnMut(Parsed) -> Result<()>,
) -> Result<()> {
    each_inner(open, reading.plan, reading.shape, &reading.folders, sink)
}

fn each_inner<R: Read>(
    open: &dyn Fn() -> Result<R>,
    plan: Plan,
    shape: Shape,
    folders: &HashMap<String, String>,
    sink: &mut dyn FnMut(Parsed) -> Result<()>,
) -> Result<()> {
    let mut gathered = Vec::new();
    let found = walk(open, &mut |item, _| match plan {
        Plan::Each(s) => {
            let mut out = Parsed::default();
            convert(s, &item, folders, &mut out)?;
            sink(out)
        }
        Plan::Messages => {
            gathered.push(item.value);
            Ok(())
        }
    })?;
    match plan {
        Plan::Messages => {
            let list = Value::Array(gathered);
            sink(apps::parse_generic_value(&list)?)
        }
        Plan::Each(s) if shape == Shape::Whole => match &found.whole {
            Some(whole) => sink(convert_whole(s, whole)?),
            None => Ok(()),
        },
        Plan::Each(_) => Ok(()),
    }
}

/// The whole of a file read from memory: its format and every conversation.
#[cfg(test)]
pub(crate) fn parse_bytes(
    source: Option<ImportSource>,
    bytes: &[u8],
) -> Result<(ImportSource, Parsed)> {
    let open = || Ok(bytes);
    let reading = check(&open, source)?;
    let mut all = Parsed::default();
    each(&open, &reading, &mut |p| {
        all.conversations.extend(p.conversations);
        all.left_out.extend(p.left_out);
        Ok(())
    })?;
    Ok((reading.source, all))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A reader over `bytes` that records how far it has been read.
    struct Counting {
        bytes: Rc<Vec<u8>>,
        at: usize,
        read: Rc<Cell<usize>>,
    }

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            self.read.set(self.read.get() + n);
            Ok(n)
        }
    }

    fn big(source: ImportSource, conversations: usize) -> Vec<u8> {
        let one = |i: usize| match source {
            ImportSource::ChatGpt => format!(
                r#"{{"title":"c{i}","current_node":"b","mapping":{{"a":{{"message":{{"author":{{"role":"user"}},"content":{{"parts":["question {i}"]}}}},"parent":null}},"b":{{"message":{{"author":{{"role":"assistant"}},"content":{{"parts":["answer {i} {pad}"]}}}},"parent":"a"}}}}}}"#,
                pad = "x".repeat(2000)
            ),
            _ => format!(
                r#"{{"messages":[{{"role":"user","content":"question {i}"}},{{"role":"assistant","content":"answer {i} {pad}"}}]}}"#,
                pad = "x".repeat(2000)
            ),
        };
        let items: Vec<String> = (0..conversations).map(one).collect();
        match source {
            ImportSource::TypingMind => format!(
                r#"{{"data":{{"chats":[{}],"folders":[]}}}}"#,
                items
                    .iter()
                    .map(|c| c.replacen('{', r#"{"chatID":"t","#, 1))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            ImportSource::Generic => items.join("\n"),
            _ => format!("[{}]", items.join(",")),
        }
        .into_bytes()
    }

    #[test]
    fn conversations_are_handed_on_while_the_file_is_read() {
        for (source, expect) in [
            (ImportSource::ChatGpt, ImportSource::ChatGpt),
            (ImportSource::TypingMind, ImportSource::TypingMind),
            (ImportSource::Generic, ImportSource::Generic),
        ] {
            let bytes = Rc::new(big(source, 2000));
            let read = Rc::new(Cell::new(0));
            let open = || {
                read.set(0);
                Ok(Counting {
                    bytes: bytes.clone(),
                    at: 0,
                    read: read.clone(),
                })
            };
            let reading = check(&open, None).expect("checks");
            assert_eq!(reading.source, expect);
            assert_eq!(reading.total, 2000);
            let mut seen = 0;
            let mut read_at_first = None;
            each(&open, &reading, &mut |p| {
                seen += p.conversations.len();
                read_at_first.get_or_insert(read.get());
                Ok(())
            })
            .expect("reads");
            assert_eq!(seen, 2000, "{source:?}");
            // The first conversation arrives after a buffer's worth, not the whole file.
            let first = read_at_first.expect("one arrived");
            assert!(
                first < bytes.len() / 10,
                "{source:?}: first conversation after {first} of {} bytes",
                bytes.len()
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        for body in [
            &br#"[{"title":"t","messages":[{"role":"user","content":"hi"}]}]"#[..],
            &b"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\":[{\"role\":\"user\",\"content\":\"b\"}]}\n"[..],
        ] {
            let mut bytes = vec![0xEF, 0xBB, 0xBF];
            bytes.extend_from_slice(body);
            let (source, parsed) = parse_bytes(None, &bytes).expect("parses");
            assert_eq!(source, ImportSource::Generic);
            assert!(!parsed.conversations.is_empty());
        }
        // Two bytes only: not a mark, and not JSON.
        assert!(parse_bytes(None, &[0xEF, 0xBB]).is_err());
    }

    #[test]
    fn a_wrong_type_late_in_the_file_fails_the_check() {
        let mut bytes = big(ImportSource::ChatGpt, 50);
        bytes.truncate(bytes.len() - 1);
        bytes.extend_from_slice(br#",{"title":7,"mapping":{}}]"#);
        let open = || Ok(bytes.as_slice());
        let err = check(&open, None).expect_err("wrong type");
        assert!(err.to_string().contains("$[50].title"), "{err}");
    }
}
