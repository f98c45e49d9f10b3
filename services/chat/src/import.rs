//! Reading imports: llmesh's own export format and ChatGPT's conversations.json, and
//! writing each conversation in its own transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use llmesh_kit::db::{exec, one};

use crate::archive::{EXPORT_FORMAT, ExportConversation, ExportDoc, ExportMessage};
use crate::error::{ChatError, Result};
use crate::service::{DEFAULT_TITLE, new_id};
use crate::store::{self, ChatStore, CodeRun, Conversation, Message, Sampling};

pub(crate) fn parse_llmesh(bytes: &[u8]) -> Result<Vec<ExportConversation>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc: ExportDoc = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        ChatError::Invalid(format!(
            "invalid llmesh export at {}: {}",
            e.path(),
            e.inner()
        ))
    })?;
    if doc.format != EXPORT_FORMAT {
        return Err(ChatError::Invalid(format!(
            "format is {:?}, expected {EXPORT_FORMAT:?}",
            doc.format
        )));
    }
    Ok(doc.conversations)
}

/// Reads ChatGPT's conversations.json: an array of conversations, each a `mapping` of
/// nodes (id → {message, parent, children}) and a `current_node`. Nodes without a
/// message (the root, hidden system nodes) are skipped; their children hang on the
/// nearest ancestor that has one.
pub(crate) fn parse_chatgpt(bytes: &[u8]) -> Result<Vec<ExportConversation>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ChatError::Invalid(format!(
            "not valid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let list = value
        .as_array()
        .ok_or_else(|| ChatError::Invalid("$: expected an array of conversations".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, conv) in list.iter().enumerate() {
        let at = |field: &str| format!("$[{i}].{field}");
        let obj = conv
            .as_object()
            .ok_or_else(|| ChatError::Invalid(format!("$[{i}]: expected an object")))?;
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
        let mut nodes: HashMap<String, (Option<String>, Option<ExportMessage>)> = HashMap::new();
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
                            ChatError::Invalid(format!(
                                "{path}.message.author.role: expected a string"
                            ))
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
        // Re-parent each message onto its nearest ancestor that has one.
        let mut messages = Vec::new();
        for (id, (_, message)) in &nodes {
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
        let mut leaf = obj
            .get("current_node")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        while let Some(l) = leaf.clone() {
            match nodes.get(&l) {
                Some((_, Some(_))) => break,
                Some((up, None)) => leaf = up.clone(),
                None => {
                    leaf = None;
                }
            }
        }
        out.push(ExportConversation {
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
            pinned: false,
            archived: false,
            active_leaf_id: leaf,
            created_at,
            updated_at,
            messages,
        });
    }
    Ok(out)
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
        exec(
            &txn,
            "INSERT INTO conversations (id, user_id, title, model, sampling, system_prompt, assistant_id, folder_id, tags, \
             pinned, archived, active_leaf_id, titled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                conv.id.clone().into(), conv.user_id.clone().into(), conv.title.clone().into(), conv.model.clone().into(),
                serde_json::to_string(&conv.sampling).unwrap_or_default().into(), conv.system_prompt.clone().into(),
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

    #[test]
    fn chatgpt_trees_become_branches() {
        let json = r#"[{"title":"T","create_time":1700000000.5,"update_time":1700000100,"current_node":"c",
          "mapping":{
            "root":{"id":"root","message":null,"parent":null,"children":["a"]},
            "a":{"id":"a","message":{"author":{"role":"user"},"content":{"content_type":"text","parts":["hi"]},"create_time":1700000001},"parent":"root","children":["b","c"]},
            "b":{"id":"b","message":{"author":{"role":"assistant"},"content":{"parts":["one"]},"create_time":1700000002,"metadata":{"model_slug":"gpt-4"}},"parent":"a","children":[]},
            "c":{"id":"c","message":{"author":{"role":"assistant"},"content":{"parts":["two"]},"create_time":1700000003},"parent":"a","children":[]}
          }}]"#;
        let convs = parse_chatgpt(json.as_bytes()).expect("parses");
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
        let err = parse_chatgpt(br#"[{"title":5,"mapping":{}}]"#).expect_err("type");
        assert!(err.to_string().contains("$[0].title"), "{err}");
        let err = parse_chatgpt(
            br#"[{"title":"x","mapping":{"a":{"message":{"author":{}},"parent":null}}}]"#,
        )
        .expect_err("role");
        assert!(err.to_string().contains("author.role"), "{err}");
        let err = parse_chatgpt(br#"[{"title":"x""#).expect_err("truncated");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
