//! Reading imports: llmesh's own export format, ChatGPT's conversations.json and the
//! exports of other chat products ([`apps`]), telling them apart when the client names
//! none, and writing each conversation in its own transaction.

pub(crate) mod apps;
mod json;
pub(crate) mod stream;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use llmesh_kit::db::{exec, one};

use crate::archive::{ExportConversation, ExportMessage};
use crate::error::{ChatError, Result};
use crate::service::{DEFAULT_TITLE, new_id};
use crate::store::{self, ChatStore, CodeRun, Conversation, Message, Sampling};

/// One conversation of ChatGPT's conversations.json, found at `base` (`$[3]`): a `mapping`
/// of nodes (id → {message, parent, children}) and a `current_node`. Nodes without a
/// message (the root, hidden system nodes) are skipped; their children hang on the
/// nearest ancestor that has one.
pub(crate) fn chatgpt_conversation(
    conv: &serde_json::Value,
    base: &str,
) -> Result<ExportConversation> {
    let at = |field: &str| format!("{base}.{field}");
    let obj = conv
        .as_object()
        .ok_or_else(|| ChatError::Invalid(format!("{base}: expected an object")))?;
    let title = match obj.get("title") {
        None | Some(serde_json::Value::Null) => DEFAULT_TITLE.to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ChatError::Invalid(format!(
                "{}: expected a string",
                at("title")
            )));
        }
    };
    let time = |v: Option<&serde_json::Value>, field: &str| -> Result<DateTime<Utc>> {
        match v {
            None | Some(serde_json::Value::Null) => Ok(DateTime::<Utc>::UNIX_EPOCH),
            Some(serde_json::Value::Number(n)) => {
                let secs = n
                    .as_f64()
                    .ok_or_else(|| ChatError::Invalid(format!("{field}: expected seconds")))?;
                DateTime::from_timestamp_micros((secs * 1e6) as i64)
                    .ok_or_else(|| ChatError::Invalid(format!("{field}: out of range")))
            }
            Some(_) => Err(ChatError::Invalid(format!(
                "{field}: expected a number of seconds"
            ))),
        }
    };
    let created_at = time(obj.get("create_time"), &at("create_time"))?;
    let updated_at = time(obj.get("update_time"), &at("update_time"))?;
    let mapping = obj
        .get("mapping")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            ChatError::Invalid(format!("{}: expected an object of nodes", at("mapping")))
        })?;
    let mut nodes = Nodes::new();
    let mut model = String::new();
    for (node_id, node) in mapping {
        let path = format!("{}[{node_id:?}]", at("mapping"));
        let node = node
            .as_object()
            .ok_or_else(|| ChatError::Invalid(format!("{path}: expected an object")))?;
        let parent = match node.get("parent") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ChatError::Invalid(format!(
                    "{path}.parent: expected a string or null"
                )));
            }
        };
        let message = match node.get("message") {
            None | Some(serde_json::Value::Null) => None,
            Some(m) => {
                let role = m
                    .pointer("/author/role")
                    .and_then(|r| r.as_str())
                    .ok_or_else(|| {
                        ChatError::Invalid(format!("{path}.message.author.role: expected a string"))
                    })?;
                let parts = m
                    .pointer("/content/parts")
                    .and_then(|p| p.as_array())
                    .map(|parts| {
                        parts
                            .iter()
                            .filter_map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                let slug = m
                    .pointer("/metadata/model_slug")
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_owned();
                if !slug.is_empty() {
                    model = slug.clone();
                }
                let keep = matches!(role, "user" | "assistant" | "system")
                    && !(role == "system" && parts.is_empty());
                keep.then(|| -> Result<ExportMessage> {
                    Ok(ExportMessage {
                        id: node_id.clone(),
                        parent_id: None,
                        role: role.to_owned(),
                        content: parts,
                        model: slug,
                        state: "complete".into(),
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        cost_micros: 0,
                        created_at: time(
                            m.get("create_time"),
                            &format!("{path}.message.create_time"),
                        )?,
                        code_runs: Vec::new(),
                        citations: Vec::new(),
                    })
                })
                .transpose()?
            }
        };
        nodes.insert(node_id.clone(), (parent, message));
    }
    let messages = link(&nodes);
    let leaf = nearest_kept(
        &nodes,
        obj.get("current_node")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    );
    Ok(ExportConversation {
        id: obj
            .get("id")
            .or_else(|| obj.get("conversation_id"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned(),
        title,
        model,
        system_prompt: String::new(),
        sampling: Sampling::default(),
        tags: Vec::new(),
        folder: None,
        pinned: false,
        archived: false,
        active_leaf_id: leaf,
        created_at,
        updated_at,
        messages,
    })
}

/// Messages by their id in the source, each with its parent's id; `None` for a message
/// left out (an empty root, a tool message), whose children move up to its parent.
pub(crate) type Nodes = HashMap<String, (Option<String>, Option<ExportMessage>)>;

/// The kept messages with each re-parented onto its nearest kept ancestor, oldest first.
/// A parent that does not exist or a loop of parents is marked (`missing:`, `cycle:`) for
/// [`import_one`] to refuse the conversation with that reason.
pub(crate) fn link(nodes: &Nodes) -> Vec<ExportMessage> {
    let mut messages = Vec::new();
    for (id, (_, message)) in nodes {
        let Some(mut m) = message.clone() else {
            continue;
        };
        let mut seen = HashSet::from([id.clone()]);
        let mut cursor = nodes.get(id).and_then(|n| n.0.clone());
        m.parent_id = None;
        while let Some(pid) = cursor {
            if !seen.insert(pid.clone()) {
                m.parent_id = Some(format!("cycle:{pid}"));
                break;
            }
            match nodes.get(&pid) {
                None => {
                    m.parent_id = Some(format!("missing:{pid}"));
                    break;
                }
                Some((_, Some(_))) => {
                    m.parent_id = Some(pid);
                    break;
                }
                Some((up, None)) => cursor = up.clone(),
            }
        }
        messages.push(m);
    }
    messages.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    messages
}

/// `leaf`, or its nearest kept ancestor when it was left out; `None` when it names no
/// node (or its ancestors loop).
pub(crate) fn nearest_kept(nodes: &Nodes, mut leaf: Option<String>) -> Option<String> {
    let mut seen = HashSet::new();
    while let Some(l) = leaf.clone() {
        if !seen.insert(l.clone()) {
            return None;
        }
        match nodes.get(&l) {
            Some((_, Some(_))) => break,
            Some((up, None)) => leaf = up.clone(),
            None => leaf = None,
        }
    }
    leaf
}

/// The most recently written message that no other message answers.
pub(crate) fn newest_leaf(messages: &[ExportMessage]) -> Option<String> {
    let parents: HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.parent_id.as_deref())
        .collect();
    messages
        .iter()
        .filter(|m| !parents.contains(m.id.as_str()))
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
        .map(|m| m.id.clone())
}

/// Checks a conversation's tree and writes it in one transaction with fresh ids.
pub(crate) async fn import_one(
    store: &ChatStore,
    user: &str,
    c: ExportConversation,
    max_chars: usize,
) -> std::result::Result<(), String> {
    let ids: HashSet<&str> = c.messages.iter().map(|m| m.id.as_str()).collect();
    if ids.len() != c.messages.len() {
        return Err("duplicate message ids".into());
    }
    for m in &c.messages {
        if !matches!(m.role.as_str(), "user" | "assistant" | "system") {
            return Err(format!("message {} has an unknown role {:?}", m.id, m.role));
        }
        if m.content.chars().count() > max_chars {
            return Err(format!(
                "message {} is longer than {max_chars} characters",
                m.id
            ));
        }
        for run in &m.code_runs {
            crate::service::check_code_run(&CodeRun::from(run.clone()))
                .map_err(|e| format!("message {} has an invalid code run: {e}", m.id))?;
        }
        if m.citations.len() > 20 {
            return Err(format!("message {} has more than 20 citations", m.id));
        }
        for c in &m.citations {
            let long = c.chunk_id.len() > 64
                || c.document_id.len() > 64
                || c.collection_id.len() > 64
                || c.document_name.chars().count() > 255
                || c.quote.chars().count() > 300
                || c.headings.len() > 16
                || c.headings.iter().any(|h| h.chars().count() > 200)
                || !c.score.is_finite();
            if long {
                return Err(format!("message {} has a citation out of bounds", m.id));
            }
        }
        if let Some(pid) = &m.parent_id {
            if pid.starts_with("cycle:") {
                return Err(format!("the messages above {} form a cycle", m.id));
            }
            if !ids.contains(pid.as_str()) {
                return Err(format!(
                    "message {} has a missing parent {}",
                    m.id,
                    pid.trim_start_matches("missing:")
                ));
            }
        }
    }
    // Parents must be reachable without cycles.
    let parent: HashMap<&str, Option<&str>> = c
        .messages
        .iter()
        .map(|m| (m.id.as_str(), m.parent_id.as_deref()))
        .collect();
    for m in &c.messages {
        let mut seen = HashSet::new();
        let mut cursor = Some(m.id.as_str());
        while let Some(id) = cursor {
            if !seen.insert(id) {
                return Err(format!("the messages above {} form a cycle", m.id));
            }
            cursor = parent.get(id).copied().flatten();
        }
    }
    if c.active_leaf_id
        .as_deref()
        .is_some_and(|l| !ids.contains(l))
    {
        return Err("active_leaf_id names no message".into());
    }
    let folder: Option<String> = c
        .folder
        .as_deref()
        .map(|f| f.trim().chars().take(100).collect::<String>())
        .filter(|f| !f.is_empty());
    let remap: HashMap<&str, String> = c
        .messages
        .iter()
        .map(|m| (m.id.as_str(), new_id()))
        .collect();
    let conv = Conversation {
        id: new_id(),
        user_id: user.to_owned(),
        title: if c.title.trim().is_empty() {
            DEFAULT_TITLE.into()
        } else {
            c.title.chars().take(200).collect()
        },
        model: c.model,
        sampling: c.sampling,
        system_prompt: c.system_prompt,
        assistant_id: None,
        folder_id: None,
        collection_ids: Vec::new(),
        tags: c.tags,
        pinned: c.pinned,
        archived: c.archived,
        active_leaf_id: c
            .active_leaf_id
            .as_deref()
            .map(|l| remap[l].clone())
            .or_else(|| c.messages.last().map(|m| remap[m.id.as_str()].clone())),
        titled: true,
        created_at: c.created_at,
        updated_at: c.updated_at,
    };
    let write = async {
        use sea_orm::TransactionTrait;
        let txn = store.db.begin().await?;
        // A folder by name: the user's top-level folder of that name, made when missing.
        let folder_id = match &folder {
            None => None,
            Some(name) => {
                let found = one(
                    &txn,
                    "SELECT id FROM folders WHERE user_id = ? AND name = ? AND parent_id IS NULL ORDER BY created_at, id LIMIT 1",
                    vec![user.into(), name.clone().into()],
                )
                .await?;
                match found {
                    Some(row) => Some(row.try_get::<String>("", "id")?),
                    None => {
                        let id = new_id();
                        exec(
                            &txn,
                            "INSERT INTO folders (id, user_id, name, parent_id, created_at) VALUES (?, ?, ?, NULL, ?)",
                            vec![id.clone().into(), user.into(), name.clone().into(), store::micros(chrono::Utc::now()).into()],
                        )
                        .await?;
                        Some(id)
                    }
                }
            }
        };
        exec(
            &txn,
            "INSERT INTO conversations (id, user_id, title, model, sampling, system_prompt, assistant_id, folder_id, tags, \
             pinned, archived, active_leaf_id, titled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                conv.id.clone().into(), conv.user_id.clone().into(), conv.title.clone().into(), conv.model.clone().into(),
                serde_json::to_string(&conv.sampling).unwrap_or_default().into(), conv.system_prompt.clone().into(), folder_id.into(),
                serde_json::to_string(&conv.tags).unwrap_or_default().into(), conv.pinned.into(), conv.archived.into(),
                conv.active_leaf_id.clone().into(), true.into(), store::micros(conv.created_at).into(), store::micros(conv.updated_at).into(),
            ],
        )
        .await?;
        store::index_title(&txn, &conv).await?;
        for m in &c.messages {
            let msg = Message {
                id: remap[m.id.as_str()].clone(),
                conversation_id: conv.id.clone(),
                user_id: user.to_owned(),
                parent_id: m.parent_id.as_deref().map(|p| remap[p].clone()),
                role: m.role.clone(),
                content: m.content.clone(),
                model: m.model.clone(),
                state: m.state.clone(),
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
                cost_micros: m.cost_micros,
                created_at: m.created_at,
            };
            ChatStore::insert_message(&txn, &msg).await?;
            // Citations stay where the importing user can still read the cited chunk.
            let mut kept = Vec::new();
            for c in &m.citations {
                let readable = one(
                    &txn,
                    "SELECT 1 AS found FROM kb_chunks k JOIN kb_collections c ON c.id = k.collection_id \
                     WHERE k.id = ? AND k.document_id = ? AND (c.user_id = ? OR c.everyone = ? OR EXISTS \
                     (SELECT 1 FROM kb_shares s WHERE s.collection_id = c.id AND s.user_id = ?))",
                    vec![c.chunk_id.clone().into(), c.document_id.clone().into(), user.into(), true.into(), user.into()],
                )
                .await?
                .is_some();
                if readable {
                    kept.push(c.clone());
                }
            }
            ChatStore::insert_citations(&txn, &msg, &kept).await?;
            for run in &m.code_runs {
                ChatStore::upsert_code_run(&txn, &msg, &CodeRun::from(run.clone())).await?;
            }
        }
        txn.commit().await
    };
    write.await.map_err(|e: sea_orm::DbErr| {
        tracing::error!(error = %e, "import of a conversation failed");
        "the database refused this conversation".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::ImportSource;

    fn chatgpt(bytes: &[u8]) -> Result<(ImportSource, apps::Parsed)> {
        stream::parse_bytes(Some(ImportSource::ChatGpt), bytes)
    }

    #[test]
    fn chatgpt_trees_become_branches() {
        let json = r#"[{"title":"T","create_time":1700000000.5,"update_time":1700000100,"current_node":"c",
          "mapping":{
            "root":{"id":"root","message":null,"parent":null,"children":["a"]},
            "a":{"id":"a","message":{"author":{"role":"user"},"content":{"content_type":"text","parts":["hi"]},"create_time":1700000001},"parent":"root","children":["b","c"]},
            "b":{"id":"b","message":{"author":{"role":"assistant"},"content":{"parts":["one"]},"create_time":1700000002,"metadata":{"model_slug":"gpt-4"}},"parent":"a","children":[]},
            "c":{"id":"c","message":{"author":{"role":"assistant"},"content":{"parts":["two"]},"create_time":1700000003},"parent":"a","children":[]}
          }}]"#;
        let (_, parsed) = chatgpt(json.as_bytes()).expect("parses");
        let convs = parsed.conversations;
        let c = &convs[0];
        assert_eq!(c.messages.len(), 3);
        assert_eq!(c.model, "gpt-4");
        assert_eq!(c.active_leaf_id.as_deref(), Some("c"));
        let a = c.messages.iter().find(|m| m.id == "a").expect("a");
        assert_eq!(a.parent_id, None, "the empty root is skipped");
        assert!(
            c.messages
                .iter()
                .filter(|m| m.parent_id.as_deref() == Some("a"))
                .count()
                == 2
        );
    }

    #[test]
    fn malformed_chatgpt_names_the_field() {
        let err = chatgpt(br#"[{"title":5,"mapping":{}}]"#).expect_err("type");
        assert!(err.to_string().contains("$[0].title"), "{err}");
        let err =
            chatgpt(br#"[{"title":"x","mapping":{"a":{"message":{"author":{}},"parent":null}}}]"#)
                .expect_err("role");
        assert!(err.to_string().contains("author.role"), "{err}");
        let err = chatgpt(br#"[{"title":"x""#).expect_err("truncated");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
