//! Importers for other chat products' exports: Open WebUI, LibreChat, TypingMind, Claude,
//! and a generic format (a JSON list of role/content conversations, or JSONL with an
//! OpenAI-style `messages` array per line). Each reads the product's own export as its
//! source code or documentation describes it (versions in the README) into llmesh's
//! export shape; what llmesh cannot hold (attachments, tool calls, tool messages,
//! reasoning) is counted per conversation for the report instead of dropped silently.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::json::Node;
use super::{Nodes, link, nearest_kept, newest_leaf};
use crate::archive::{ExportConversation, ExportMessage};
use crate::error::Result;
use crate::service::DEFAULT_TITLE;
use crate::store::Sampling;

/// Conversations read from a file, and per conversation title what was left out.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub conversations: Vec<ExportConversation>,
    pub left_out: Vec<(String, String)>,
}

/// What one conversation had that llmesh cannot hold, counted by kind.
#[derive(Default)]
struct LeftOut(BTreeMap<&'static str, u32>);

impl LeftOut {
    fn add(&mut self, what: &'static str, n: usize) {
        if n > 0 {
            *self.0.entry(what).or_default() += n as u32;
        }
    }

    /// "2 attachments and 1 tool call were not imported".
    fn describe(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(what, n)| format!("{n} × {what}"))
            .collect();
        Some(format!("not imported: {}", parts.join(", ")))
    }
}

/// One message as a tree node: its parent, and the message unless it is left out.
fn node(nodes: &mut Nodes, id: String, parent: Option<String>, message: Option<ExportMessage>) {
    nodes.insert(id, (parent, message));
}

fn message(
    id: &str,
    role: &str,
    content: String,
    model: String,
    at: DateTime<Utc>,
) -> ExportMessage {
    ExportMessage {
        id: id.to_owned(),
        parent_id: None,
        role: role.to_owned(),
        content,
        model,
        state: "complete".into(),
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_micros: 0,
        created_at: at,
        code_runs: Vec::new(),
        citations: Vec::new(),
    }
}

/// Our role for another product's, or `None` for roles we cannot hold (tool output).
fn role(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "user" | "human" => Some("user"),
        "assistant" | "model" | "bot" | "ai" => Some("assistant"),
        "system" | "developer" => Some("system"),
        _ => None,
    }
}

struct Conversation {
    id: String,
    title: String,
    model: String,
    system_prompt: String,
    tags: Vec<String>,
    folder: Option<String>,
    pinned: bool,
    archived: bool,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
    leaf: Option<String>,
    nodes: Nodes,
    left_out: LeftOut,
}

impl Conversation {
    fn new(id: String, title: String, created_at: DateTime<Utc>) -> Self {
        Conversation {
            id,
            title,
            model: String::new(),
            system_prompt: String::new(),
            tags: Vec::new(),
            folder: None,
            pinned: false,
            archived: false,
            created_at,
            updated_at: None,
            leaf: None,
            nodes: Nodes::new(),
            left_out: LeftOut::default(),
        }
    }

    fn finish(self, out: &mut Parsed) {
        let messages = link(&self.nodes);
        let leaf = match self.leaf {
            Some(l) => nearest_kept(&self.nodes, Some(l)),
            None => None,
        }
        .or_else(|| newest_leaf(&messages));
        let model = if self.model.is_empty() {
            messages
                .iter()
                .rev()
                .find(|m| !m.model.is_empty())
                .map(|m| m.model.clone())
                .unwrap_or_default()
        } else {
            self.model
        };
        let title = if self.title.trim().is_empty() {
            DEFAULT_TITLE.to_owned()
        } else {
            self.title
        };
        if let Some(note) = self.left_out.describe() {
            out.left_out.push((title.clone(), note));
        }
        let mut tags: Vec<String> = Vec::new();
        for t in self.tags {
            let t = t.trim().chars().take(50).collect::<String>();
            if !t.is_empty() && !tags.contains(&t) && tags.len() < 20 {
                tags.push(t);
            }
        }
        out.conversations.push(ExportConversation {
            id: self.id,
            title,
            model,
            system_prompt: self.system_prompt,
            sampling: Sampling::default(),
            tags,
            folder: self.folder.filter(|f| !f.trim().is_empty()),
            pinned: self.pinned,
            archived: self.archived,
            active_leaf_id: leaf,
            created_at: self.created_at,
            updated_at: self.updated_at.unwrap_or(self.created_at),
            messages,
        });
    }
}

fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

// ---- Open WebUI ----

/// One chat row of Open WebUI's "Export chats" (and of a single chat's JSON export),
/// an array of them: the chat document is under `chat`; older exports put the document
/// itself in the array. The tree is `chat.history.messages` (id → message with
/// `parentId`), the active leaf `chat.history.currentId`; row times are seconds.
pub(crate) fn open_webui_chat(item: &Node, out: &mut Parsed) -> Result<()> {
    item.object()?;
    let chat = if item.get("chat").is_absent() {
        item.clone()
    } else {
        item.get("chat")
    };
    chat.object()?;
    let title = match item.get("title").str()? {
        Some(t) => t.to_owned(),
        None => chat.get("title").string()?,
    };
    let created = match item.get("created_at").time(false)? {
        Some(t) => t,
        None => chat.get("timestamp").time(true)?.unwrap_or_else(epoch),
    };
    let mut c = Conversation::new(item.get("id").id()?.unwrap_or_default(), title, created);
    c.updated_at = item.get("updated_at").time(false)?;
    c.pinned = item.get("pinned").bool()?;
    c.archived = item.get("archived").bool()?;
    for t in item.get("meta").get("tags").items()? {
        c.tags.push(t.string()?);
    }
    for t in chat.get("tags").items()? {
        match t.value {
            Value::Object(_) => c.tags.push(t.get("name").string()?),
            _ => c.tags.push(t.string()?),
        }
    }
    if let Some(first) = chat.get("models").items()?.first() {
        c.model = first.string()?;
    }
    c.system_prompt = chat.get("system").string()?;
    c.left_out
        .add("attachment", chat.get("files").items()?.len());
    let history = chat.get("history").get("messages");
    if !history.is_absent() {
        for (key, m) in history.entries()? {
            let id = m.get("id").id()?.unwrap_or_else(|| key.clone());
            let parent = m.get("parentId").id()?;
            let kept = open_webui_message(&m, &id, &mut c.left_out)?;
            node(&mut c.nodes, id, parent, kept);
        }
        c.leaf = chat.get("history").get("currentId").id()?;
    } else {
        // The oldest exports: only the active path, in order.
        let mut parent = None;
        for (i, m) in chat.get("messages").items()?.into_iter().enumerate() {
            let id = m.get("id").id()?.unwrap_or_else(|| format!("m{i}"));
            let kept = open_webui_message(&m, &id, &mut c.left_out)?;
            node(&mut c.nodes, id.clone(), parent.replace(id), kept);
        }
    }
    c.finish(out);
    Ok(())
}

fn open_webui_message(m: &Node, id: &str, left_out: &mut LeftOut) -> Result<Option<ExportMessage>> {
    m.object()?;
    let who = m
        .get("role")
        .str()?
        .ok_or_else(|| m.get("role").wrong("a string"))?;
    left_out.add("attachment", m.get("files").items()?.len());
    let Some(r) = role(who) else {
        left_out.add("message of another role", 1);
        return Ok(None);
    };
    let content = text_or_parts(&m.get("content"), left_out)?;
    let at = m.get("timestamp").time(false)?.unwrap_or_else(epoch);
    Ok(Some(message(id, r, content, m.get("model").string()?, at)))
}

/// Content that is a string, or an array of parts (`{type: "text", text}` and others,
/// which are counted as left out).
fn text_or_parts(content: &Node, left_out: &mut LeftOut) -> Result<String> {
    match content.value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(_) => {
            let mut texts = Vec::new();
            for part in content.items()? {
                if let Value::String(s) = part.value {
                    texts.push(s.clone());
                    continue;
                }
                match part.get("type").str()?.unwrap_or("text") {
                    "text" | "input_text" | "output_text" => {
                        let text = part.get("text");
                        match text.value {
                            Value::Object(_) => texts.push(text.get("value").string()?),
                            _ => texts.push(text.string()?),
                        }
                    }
                    "image_url" | "image_file" | "image" | "input_image" | "file" | "document"
                    | "tm_image_file" | "tm_text_file" | "video_url" | "input_audio" => {
                        left_out.add("attachment", 1)
                    }
                    "tool_call" | "tool_use" | "function_call" => left_out.add("tool call", 1),
                    "tool_result" | "function_call_output" => left_out.add("tool result", 1),
                    "think" | "thinking" | "reasoning" => left_out.add("reasoning block", 1),
                    _ => left_out.add("content part of another kind", 1),
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(content.wrong("a string or an array of parts")),
    }
}

// ---- LibreChat ----

/// LibreChat's export of one conversation (an object, or each item of an array of them):
/// messages in `messagesTree` or `messages`, either flat with `parentMessageId` (the
/// all-zero id is the root) or nested under `children`. No active leaf is exported; the
/// newest leaf becomes it.
pub(crate) fn librechat_conversation(conv: &Node, out: &mut Parsed) -> Result<()> {
    const NO_PARENT: &str = "00000000-0000-0000-0000-000000000000";
    conv.object()?;
    let mut c = Conversation::new(
        conv.get("conversationId").id()?.unwrap_or_default(),
        conv.get("title").string()?,
        epoch(),
    );
    let options = conv.get("options");
    c.model = options.get("model").string()?;
    c.system_prompt = options.get("promptPrefix").string()?;
    let top = conv.first(&["messagesTree", "messages"]);
    // Depth first, each node with its parent from the nesting or from its own field.
    let mut stack: Vec<(Node, Option<String>, bool)> = top
        .items()?
        .into_iter()
        .rev()
        .map(|m| (m, None, false))
        .collect();
    let mut earliest: Option<DateTime<Utc>> = None;
    let mut latest: Option<DateTime<Utc>> = None;
    while let Some((m, nested_parent, nested)) = stack.pop() {
        m.object()?;
        let id = m
            .get("messageId")
            .id()?
            .ok_or_else(|| m.get("messageId").wrong("a string"))?;
        let parent = if nested {
            nested_parent
        } else {
            m.get("parentMessageId").id()?.filter(|p| p != NO_PARENT)
        };
        for child in m.get("children").items()?.into_iter().rev() {
            stack.push((child, Some(id.clone()), true));
        }
        let user = match m.get("isCreatedByUser").value {
            Value::Bool(b) => *b,
            Value::Null => m
                .get("sender")
                .str()?
                .is_some_and(|s| s.eq_ignore_ascii_case("user")),
            _ => return Err(m.get("isCreatedByUser").wrong("true or false")),
        };
        c.left_out.add("attachment", m.get("files").items()?.len());
        c.left_out
            .add("attachment", m.get("attachments").items()?.len());
        let mut content = m.get("text").string()?;
        if content.is_empty() {
            content = text_or_parts(&m.get("content"), &mut c.left_out)?;
        } else if !m.get("content").is_absent() {
            // The text is the whole reply; count what else the parts held.
            text_or_parts(&m.get("content"), &mut c.left_out)?;
        }
        let at = m.get("createdAt").time(false)?.unwrap_or_else(epoch);
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
        latest = Some(latest.map_or(at, |l| l.max(at)));
        let role = if user { "user" } else { "assistant" };
        let kept = message(&id, role, content, m.get("model").string()?, at);
        node(&mut c.nodes, id, parent, Some(kept));
    }
    c.created_at = earliest.unwrap_or_else(epoch);
    c.updated_at = latest;
    c.finish(out);
    Ok(())
}

// ---- TypingMind ----

/// TypingMind's "Export data": `{data: {chats, folders, …}}`. A chat's `messages` is its
/// active thread in order; other branches hang from a user message as `threads`, each
/// the rest of that branch (and the user message's other wording, when it differed).
pub(crate) fn parse_typingmind(root: &Value) -> Result<Parsed> {
    let root = Node::root(root);
    let data = if root.get("data").is_absent() {
        root
    } else {
        root.get("data")
    };
    data.object()?;
    let folders = typingmind_folders(&data.get("folders"))?;
    let mut out = Parsed::default();
    for chat in data.get("chats").items()? {
        typingmind_chat(&chat, &folders, &mut out)?;
    }
    Ok(out)
}

/// TypingMind's folders by id, for naming a chat's folder.
pub(crate) fn typingmind_folders(folders: &Node) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for f in folders.items()? {
        if let Some(id) = f.get("id").id()? {
            out.insert(id, f.first(&["title", "name"]).string()?);
        }
    }
    Ok(out)
}

/// One TypingMind chat.
pub(crate) fn typingmind_chat(
    chat: &Node,
    folders: &HashMap<String, String>,
    out: &mut Parsed,
) -> Result<()> {
    chat.object()?;
    let id = chat.first(&["chatID", "id"]).id()?.unwrap_or_default();
    let title = match chat.get("chatTitle").str()? {
        Some(t) => t.to_owned(),
        None => chat.get("preview").string()?.chars().take(80).collect(),
    };
    let mut c = Conversation::new(
        id.clone(),
        title,
        chat.get("createdAt").time(true)?.unwrap_or_else(epoch),
    );
    c.updated_at = chat.get("updatedAt").time(true)?;
    c.model = match chat.get("model").str()? {
        Some(m) => m.to_owned(),
        None => chat.get("modelInfo").get("id").string()?,
    };
    c.system_prompt = chat.get("chatParams").get("systemMessage").string()?;
    c.folder = match chat.get("folderID").id()? {
        Some(f) => folders.get(&f).cloned(),
        None => None,
    };
    let mut parent: Option<String> = None;
    for (i, m) in chat.get("messages").items()?.into_iter().enumerate() {
        let mid = m.get("uuid").id()?.unwrap_or_else(|| format!("{id}-{i}"));
        let kept = typingmind_message(&m, &mid, &mut c.left_out)?;
        let above = parent.clone();
        for (k, thread) in m.get("threads").items()?.into_iter().enumerate() {
            // A differently worded user message starts the branch beside this one.
            let mut from = Some(mid.clone());
            if let (Some(own), Some(other)) = (&kept, thread.get("userMessageContent").str()?)
                && other != own.content
            {
                let tid = format!("{mid}-thread{k}");
                let at = thread
                    .get("createdAt")
                    .time(true)?
                    .unwrap_or(own.created_at);
                let variant = message(&tid, "user", other.to_owned(), String::new(), at);
                node(&mut c.nodes, tid.clone(), above.clone(), Some(variant));
                from = Some(tid);
            }
            let mut up = from;
            for (j, t) in thread.get("messages").items()?.into_iter().enumerate() {
                let tid = t
                    .get("uuid")
                    .id()?
                    .unwrap_or_else(|| format!("{mid}-thread{k}-{j}"));
                let kept = typingmind_message(&t, &tid, &mut c.left_out)?;
                node(&mut c.nodes, tid.clone(), up.replace(tid), kept);
            }
        }
        node(&mut c.nodes, mid.clone(), above, kept);
        c.leaf = Some(mid.clone());
        parent = Some(mid);
    }
    c.finish(out);
    Ok(())
}

fn typingmind_message(m: &Node, id: &str, left_out: &mut LeftOut) -> Result<Option<ExportMessage>> {
    m.object()?;
    let who = m
        .get("role")
        .str()?
        .ok_or_else(|| m.get("role").wrong("a string"))?;
    let Some(r) = role(who) else {
        left_out.add(
            if who == "tool" {
                "tool message"
            } else {
                "message of another role"
            },
            1,
        );
        return Ok(None);
    };
    left_out.add("tool call", m.get("tool_calls").items()?.len());
    let content = text_or_parts(&m.get("content"), left_out)?;
    let at = m.get("createdAt").time(true)?.unwrap_or_else(epoch);
    Ok(Some(message(id, r, content, m.get("model").string()?, at)))
}

// ---- Claude ----

/// One conversation of Anthropic's account export `conversations.json`, an array of them,
/// with `chat_messages` (sender `human` or `assistant`, text in `content` blocks or
/// `text`). Exports that carry `parent_message_uuid` keep their branches, and
/// `current_leaf_message_uuid` their active leaf; otherwise the messages form one path.
pub(crate) fn claude_conversation(conv: &Node, out: &mut Parsed) -> Result<()> {
    const ROOT: &str = "00000000-0000-4000-8000-000000000000";
    conv.object()?;
    let mut c = Conversation::new(
        conv.get("uuid").id()?.unwrap_or_default(),
        conv.get("name").string()?,
        conv.get("created_at").time(false)?.unwrap_or_else(epoch),
    );
    c.updated_at = conv.get("updated_at").time(false)?;
    c.model = conv.get("model").string()?;
    let mut previous: Option<String> = None;
    for (i, m) in conv.get("chat_messages").items()?.into_iter().enumerate() {
        m.object()?;
        let id = m.get("uuid").id()?.unwrap_or_else(|| format!("m{i}"));
        let parent = match m.get("parent_message_uuid").id()? {
            Some(p) if p == ROOT => None,
            Some(p) => Some(p),
            None => previous.clone(),
        };
        let who = m
            .get("sender")
            .str()?
            .ok_or_else(|| m.get("sender").wrong("a string"))?;
        c.left_out
            .add("attachment", m.get("attachments").items()?.len());
        c.left_out.add("attachment", m.get("files").items()?.len());
        let mut content = text_or_parts(&m.get("content"), &mut c.left_out)?;
        if content.is_empty() {
            content = m.get("text").string()?;
        }
        let at = m.get("created_at").time(false)?.unwrap_or_else(epoch);
        let kept = match role(who) {
            Some(r) => Some(message(&id, r, content, String::new(), at)),
            None => {
                c.left_out.add("message of another role", 1);
                None
            }
        };
        node(&mut c.nodes, id.clone(), parent, kept);
        previous = Some(id);
    }
    c.leaf = conv.get("current_leaf_message_uuid").id()?.or(previous);
    c.finish(out);
    Ok(())
}

// ---- generic ----

/// Anything else in the common shape: a JSON array of conversations (`{title?, model?,
/// created_at?, messages: [{role, content, created_at?}]}`), an object with such a
/// `conversations` array, one such conversation, a bare array of messages, or JSONL with
/// one `{messages: [...]}` object per line (OpenAI's chat format: content may be an array
/// of parts; `tool` messages and `tool_calls` are counted as left out).
pub(crate) fn parse_generic_value(root: &Value) -> Result<Parsed> {
    let mut out = Parsed::default();
    let root = Node::root(root);
    let list = if !root.get("conversations").is_absent() {
        root.get("conversations").items()?
    } else if root.value.is_object() {
        vec![root]
    } else if root
        .value
        .as_array()
        .and_then(|a| a.first())
        .is_some_and(|m| m.get("role").is_some() && m.get("messages").is_none())
    {
        // A bare list of messages: one conversation.
        let c = generic_messages(&root, String::new(), String::new(), epoch())?;
        c.finish(&mut out);
        return Ok(out);
    } else {
        root.items()?
    };
    for conv in list {
        generic_item(&conv, &mut out)?;
    }
    Ok(out)
}

/// One generic conversation.
pub(crate) fn generic_item(conv: &Node, out: &mut Parsed) -> Result<()> {
    generic_conversation(conv)?.finish(out);
    Ok(())
}

/// One JSON Lines record; without an id of its own it is named after its line.
pub(crate) fn generic_line(conv: &Node, line: usize, out: &mut Parsed) -> Result<()> {
    let mut c = generic_conversation(conv)?;
    if c.id.is_empty() {
        c.id = format!("line{line}");
    }
    c.finish(out);
    Ok(())
}

fn generic_conversation(conv: &Node) -> Result<Conversation> {
    conv.object()?;
    let created = conv
        .first(&["created_at", "create_time", "createdAt"])
        .time(false)?
        .unwrap_or_else(epoch);
    let mut c = generic_messages(
        &conv.get("messages"),
        conv.first(&["title", "name"]).string()?,
        conv.get("id").id()?.unwrap_or_default(),
        created,
    )?;
    c.updated_at = conv
        .first(&["updated_at", "update_time", "updatedAt"])
        .time(false)?;
    if c.updated_at.is_none() {
        c.updated_at = Some(created);
    }
    c.model = conv.get("model").string()?;
    for t in conv.get("tags").items()? {
        c.tags.push(t.string()?);
    }
    c.folder = conv.get("folder").str()?.map(str::to_owned);
    Ok(c)
}

fn generic_messages(
    messages: &Node,
    title: String,
    id: String,
    created: DateTime<Utc>,
) -> Result<Conversation> {
    if messages.is_absent() {
        return Err(messages.wrong("an array of messages"));
    }
    let mut c = Conversation::new(id, title, created);
    let mut previous: Option<String> = None;
    for (i, m) in messages.items()?.into_iter().enumerate() {
        m.object()?;
        let mid = m.get("id").id()?.unwrap_or_else(|| format!("m{i}"));
        let who = m
            .get("role")
            .str()?
            .ok_or_else(|| m.get("role").wrong("a string"))?;
        let calls = m.get("tool_calls").items()?.len();
        c.left_out.add("tool call", calls);
        let kept = match role(who) {
            Some(r) => {
                let content = text_or_parts(&m.get("content"), &mut c.left_out)?;
                let at = m
                    .first(&["created_at", "timestamp", "createdAt"])
                    .time(false)?
                    .unwrap_or(created);
                // A turn that only called tools has nothing left to show.
                (calls == 0 || !content.trim().is_empty())
                    .then(|| message(&mid, r, content, String::new(), at))
                    .map(|mut kept| -> Result<ExportMessage> {
                        kept.model = m.get("model").string()?;
                        Ok(kept)
                    })
                    .transpose()?
            }
            None => {
                c.left_out.add(
                    if who == "tool" {
                        "tool message"
                    } else {
                        "message of another role"
                    },
                    1,
                );
                None
            }
        };
        let parent = match m.get("parent_id").id()? {
            Some(p) => Some(p),
            None => previous.clone(),
        };
        node(&mut c.nodes, mid.clone(), parent, kept);
        previous = Some(mid);
    }
    if c.title.trim().is_empty() {
        // Untitled: the first words of the first user message.
        let first = link(&c.nodes).into_iter().find(|m| m.role == "user");
        c.title = first
            .map(|m| {
                m.content
                    .split_whitespace()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
            .chars()
            .take(80)
            .collect();
    }
    c.leaf = previous;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::super::stream::parse_bytes as parse;
    use crate::archive::ImportSource;
    use crate::error::ChatError;

    fn detect(bytes: &[u8]) -> Option<ImportSource> {
        parse(None, bytes).ok().map(|(s, _)| s)
    }
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/imports/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn read(name: &str, source: ImportSource) -> Parsed {
        let bytes = fixture(name);
        assert_eq!(detect(&bytes), Some(source), "{name} is detected");
        let (seen, parsed) = parse(None, &bytes).expect(name);
        assert_eq!(seen, source);
        parsed
    }

    fn by_id<'a>(c: &'a ExportConversation, id: &str) -> &'a ExportMessage {
        c.messages
            .iter()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no message {id}"))
    }

    fn note(p: &Parsed, title: &str) -> String {
        p.left_out
            .iter()
            .find(|(t, _)| t == title)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    }

    #[test]
    fn open_webui_keeps_the_tree_tags_and_flags() {
        let p = read("openwebui.json", ImportSource::OpenWebUi);
        assert_eq!(p.conversations.len(), 2);
        let c = &p.conversations[0];
        assert_eq!(c.messages.len(), 5);
        assert_eq!(c.active_leaf_id.as_deref(), Some("r3"));
        assert_eq!(by_id(c, "r1").parent_id.as_deref(), Some("q1"));
        assert_eq!(by_id(c, "r2").parent_id.as_deref(), Some("q1"), "a branch");
        assert_eq!(by_id(c, "r3").model, "llama3.1:8b");
        assert_eq!(c.tags, ["baking", "fermentation"]);
        assert!(c.pinned && !c.archived);
        assert_eq!(c.system_prompt, "You are a patient baking teacher.");
        assert_eq!(c.created_at.timestamp(), 1_717_000_000);
        assert_eq!(by_id(c, "r3").created_at.timestamp(), 1_717_000_110);
        assert_eq!(
            note(&p, "Sourdough starter"),
            "not imported: 1 × attachment"
        );
        let old = &p.conversations[1];
        assert!(old.archived);
        assert_eq!(old.messages.len(), 2);
        assert_eq!(by_id(old, "o2").parent_id.as_deref(), Some("o1"));
        assert_eq!(old.active_leaf_id.as_deref(), Some("o2"));
    }

    #[test]
    fn librechat_trees_pick_the_newest_leaf() {
        let p = read("librechat.json", ImportSource::LibreChat);
        let c = &p.conversations[0];
        assert_eq!(c.messages.len(), 4);
        assert_eq!(by_id(c, "l2").parent_id.as_deref(), Some("l1"));
        assert_eq!(by_id(c, "l3").parent_id.as_deref(), Some("l1"));
        assert_eq!(by_id(c, "l4").parent_id.as_deref(), Some("l3"));
        assert_eq!(by_id(c, "l1").role, "user");
        assert_eq!(by_id(c, "l2").role, "assistant");
        assert!(by_id(c, "l2").content.starts_with("The Moon pulls"));
        assert_eq!(c.active_leaf_id.as_deref(), Some("l4"));
        assert_eq!(c.model, "gpt-4o-mini");
        assert_eq!(c.system_prompt, "Answer like a harbour master.");
        assert_eq!(
            note(&p, "Tide tables"),
            "not imported: 1 × attachment, 1 × reasoning block, 1 × tool call"
        );
    }

    #[test]
    fn typingmind_threads_become_branches_and_folders_keep_their_name() {
        let p = read("typingmind.json", ImportSource::TypingMind);
        let c = &p.conversations[0];
        assert_eq!(c.folder.as_deref(), Some("Outdoors"));
        assert_eq!(c.system_prompt, "Be brief.");
        assert_eq!(by_id(c, "t2").parent_id.as_deref(), Some("t1"));
        let variant = by_id(c, "t1-thread0");
        assert_eq!(
            variant.parent_id, None,
            "the other wording is a sibling of t1"
        );
        assert!(variant.content.contains("overnight"));
        assert_eq!(by_id(c, "t1b").parent_id.as_deref(), Some("t1-thread0"));
        assert_eq!(
            by_id(c, "t5").parent_id.as_deref(),
            Some("t3"),
            "the tool message is left out"
        );
        assert_eq!(by_id(c, "t3").content, "Here is my list.");
        assert_eq!(c.active_leaf_id.as_deref(), Some("t5"));
        assert_eq!(
            note(&p, "Packing for a hike"),
            "not imported: 1 × attachment, 1 × tool message"
        );
    }

    #[test]
    fn claude_reads_content_blocks() {
        let p = read("claude.json", ImportSource::Claude);
        let c = &p.conversations[0];
        assert_eq!(c.messages.len(), 2);
        let a = by_id(c, "a1");
        assert_eq!(a.content, "How about Bluefin or Little Tern?");
        assert_eq!(a.parent_id.as_deref(), Some("h1"));
        assert_eq!(
            a.created_at.timestamp(),
            by_id(c, "h1").created_at.timestamp() + 5
        );
        assert_eq!(c.active_leaf_id.as_deref(), Some("a1"));
        assert_eq!(
            note(&p, "Naming a sailboat"),
            "not imported: 1 × attachment, 1 × reasoning block, 1 × tool call, 1 × tool result"
        );
        assert_eq!(p.conversations[1].title, crate::service::DEFAULT_TITLE);
    }

    #[test]
    fn generic_json_and_jsonl() {
        let p = read("generic.json", ImportSource::Generic);
        let c = &p.conversations[0];
        assert_eq!(
            (c.title.as_str(), c.model.as_str()),
            ("Roman numerals", "local-model")
        );
        assert_eq!(c.folder.as_deref(), Some("Homework"));
        assert_eq!(c.tags, ["math"]);
        assert_eq!(
            c.messages
                .iter()
                .map(|m| m.role.as_str())
                .collect::<Vec<_>>(),
            ["system", "user", "assistant"]
        );
        let t = &p.conversations[1];
        assert_eq!(t.title, "Convert 2024 to Roman numerals.");
        assert_eq!(
            t.messages.len(),
            2,
            "the tool call turn and the tool output are left out"
        );
        assert_eq!(by_id(t, "m3").parent_id.as_deref(), Some("m0"));
        assert_eq!(
            note(&p, &t.title),
            "not imported: 1 × tool call, 1 × tool message"
        );

        let p = read("generic.jsonl", ImportSource::Generic);
        assert_eq!(p.conversations.len(), 2);
        assert_eq!(p.conversations[1].id, "line3");
        assert_eq!(p.conversations[1].messages.len(), 3);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases: [(&[u8], ImportSource, &str); 8] = [
            (br#"[{"chat":{"history":{"messages":{"a":{"role":5}}}}}]"#, ImportSource::OpenWebUi, r#"$[0].chat.history.messages["a"].role: expected a string"#),
            (br#"[{"chat":{"history":{"messages":{"a":{"role":"user","timestamp":"soon"}}}}}]"#, ImportSource::OpenWebUi, "timestamp: expected an ISO 8601 time"),
            (br#"{"chat":{}}"#, ImportSource::OpenWebUi, "$: expected an array of chats"),
            (br#"{"conversationId":"x","messages":[{"messageId":"a","isCreatedByUser":"yes"}]}"#, ImportSource::LibreChat, "$.messages[0].isCreatedByUser: expected true or false"),
            (br#"{"data":{"chats":[{"chatID":"x","messages":[{"role":"user","content":{"a":1}}]}]}}"#, ImportSource::TypingMind, "$.data.chats[0].messages[0].content: expected a string or an array of parts"),
            (br#"[{"uuid":"x","chat_messages":[{"uuid":"m","sender":null}]}]"#, ImportSource::Claude, "$[0].chat_messages[0].sender: expected a string"),
            (br#"[{"messages":[{"role":"user","content":"hi","created_at":[1]}]}]"#, ImportSource::Generic, "$[0].messages[0].created_at: expected a time"),
            (br#"[{"title":"t","messages":"none"}]"#, ImportSource::Generic, "$[0].messages: expected an array"),
        ];
        for (bytes, source, needle) in cases {
            let err = parse(Some(source), bytes).expect_err(needle);
            assert!(
                err.to_string().contains(needle),
                "{source:?}: {err} lacks {needle}"
            );
        }
    }

    #[test]
    fn hostile_files_fail_cleanly() {
        // Random bytes and truncations: no format, or an error saying where; never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200 {
            let len = (round * 7) % 300;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = detect(&bytes);
            for source in [
                ImportSource::OpenWebUi,
                ImportSource::LibreChat,
                ImportSource::TypingMind,
                ImportSource::Claude,
                ImportSource::Generic,
            ] {
                let _ = parse(Some(source), &bytes);
            }
        }
        for name in [
            "openwebui.json",
            "librechat.json",
            "typingmind.json",
            "claude.json",
            "generic.json",
        ] {
            let whole = fixture(name);
            for cut in [1, whole.len() / 3, whole.len() / 2, whole.len() - 2] {
                let err = parse(None, &whole[..cut]).expect_err("truncated");
                assert!(
                    matches!(err, ChatError::Invalid(_)),
                    "{name} cut at {cut}: {err}"
                );
            }
        }
        // Nesting deeper than the JSON reader allows is refused, not recursed into.
        let deep = format!(
            r#"{{"conversationId":"x","messagesTree":[{}]}}"#,
            (0..5000)
                .map(|i| format!(r#"{{"messageId":"m{i}","text":"t","children":["#))
                .collect::<String>()
                + &"]}".repeat(5000)
        );
        let err = parse(None, deep.as_bytes()).expect_err("too deep");
        assert!(err.to_string().contains("recursion limit"), "{err}");
        // A loop of parents stays a loop (the writer refuses the conversation) and has no leaf.
        let looped = br#"{"conversationId":"x","messages":[
            {"messageId":"a","parentMessageId":"b","isCreatedByUser":true,"text":"1"},
            {"messageId":"b","parentMessageId":"a","isCreatedByUser":false,"text":"2"}]}"#;
        let (_, p) = parse(None, looped).expect("parses");
        let c = &p.conversations[0];
        assert_eq!(by_id(c, "a").parent_id.as_deref(), Some("b"));
        assert_eq!(by_id(c, "b").parent_id.as_deref(), Some("a"));
        assert_eq!(c.active_leaf_id, None);
    }

    #[test]
    fn large_conversations_parse_in_one_pass() {
        // 100,000 messages in one generic conversation: read without quadratic work.
        let messages: Vec<String> = (0..100_000)
            .map(|i| {
                format!(
                    r#"{{"role":"{}","content":"message {i}"}}"#,
                    if i % 2 == 0 { "user" } else { "assistant" }
                )
            })
            .collect();
        let bytes = format!(
            r#"[{{"title":"long","messages":[{}]}}]"#,
            messages.join(",")
        );
        let started = std::time::Instant::now();
        let (_, p) = parse(None, bytes.as_bytes()).expect("parses");
        assert_eq!(p.conversations[0].messages.len(), 100_000);
        assert_eq!(p.conversations[0].active_leaf_id.as_deref(), Some("m99999"));
        eprintln!("100k messages parsed in {:?}", started.elapsed());
    }
}
