//! Chat persistence in plain SQL, the same on SQLite and Postgres. Every query that takes
//! an id also takes the owner, so another user's rows are simply not found.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use llmesh_kit::db::{all, exec, one};
pub use llmesh_kit::db::{from_micros, micros};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, QueryResult, TransactionTrait, Value};
use serde::{Deserialize, Serialize};

/// Sampling settings as chat stores them (all optional: unset means the model's default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<u32>,
    pub seed: Option<u64>,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logit_bias: BTreeMap<u32, f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Folder {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub user_id: String,
    pub title: String,
    pub model: String,
    pub sampling: Sampling,
    pub system_prompt: String,
    pub assistant_id: Option<String>,
    pub folder_id: Option<String>,
    pub tags: Vec<String>,
    pub pinned: bool,
    pub archived: bool,
    pub active_leaf_id: Option<String>,
    pub titled: bool,
    /// Knowledge collections its replies draw on.
    pub collection_ids: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub user_id: String,
    pub parent_id: Option<String>,
    pub role: String,
    pub content: String,
    pub model: String,
    pub state: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub created_at: DateTime<Utc>,
}

/// The result of running one fenced code block of a message in the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRun {
    /// 0-based among the message's fenced code blocks.
    pub block: u32,
    pub language: String,
    pub code: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    /// "exited", "out_of_fuel", "out_of_memory", "timed_out", "output_limit", "trapped",
    /// "cancelled".
    pub status: String,
    pub exit_code: i32,
    pub exit_message: String,
    pub fuel_used: i64,
    pub duration_ms: i64,
    pub peak_memory_bytes: i64,
    pub cost_micros: i64,
    pub ran_at: DateTime<Utc>,
}

/// How runs may end, as stored.
pub const RUN_STATUSES: &[&str] = &[
    "exited",
    "out_of_fuel",
    "out_of_memory",
    "timed_out",
    "output_limit",
    "trapped",
    "cancelled",
];

fn code_run(r: &QueryResult) -> Result<(String, CodeRun), DbErr> {
    let block: i64 = r.try_get("", "block")?;
    let exit_code: i64 = r.try_get("", "exit_code")?;
    Ok((
        r.try_get("", "message_id")?,
        CodeRun {
            block: block.clamp(0, u32::MAX as i64) as u32,
            language: r.try_get("", "language")?,
            code: r.try_get("", "code")?,
            stdout: r.try_get("", "stdout")?,
            stderr: r.try_get("", "stderr")?,
            truncated: r.try_get("", "truncated")?,
            status: r.try_get("", "status")?,
            exit_code: exit_code.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            exit_message: r.try_get("", "exit_message")?,
            fuel_used: r.try_get("", "fuel_used")?,
            duration_ms: r.try_get("", "duration_ms")?,
            peak_memory_bytes: r.try_get("", "peak_memory_bytes")?,
            cost_micros: r.try_get("", "cost_micros")?,
            ran_at: from_micros(r.try_get("", "ran_at")?),
        },
    ))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assistant {
    pub id: String,
    pub owner_id: String,
    pub global: bool,
    pub name: String,
    pub description: String,
    pub icon: String,
    pub system_prompt: String,
    pub model: String,
    pub sampling: Sampling,
    /// Knowledge collections its conversations draw on.
    pub collection_ids: Vec<String>,
}

/// A source given to a reply, as stored with the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// The number the reply cites it by (1-based).
    pub index: u32,
    pub chunk_id: String,
    pub document_id: String,
    pub document_name: String,
    pub collection_id: String,
    pub page: u32,
    #[serde(default)]
    pub headings: Vec<String>,
    pub score: f64,
    pub quote: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub id: String,
    pub owner_id: String,
    pub global: bool,
    pub name: String,
    pub category: String,
    pub body: String,
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: for<'a> Deserialize<'a> + Default>(s: &str) -> T {
    serde_json::from_str(s).unwrap_or_default()
}

fn conversation(r: &QueryResult) -> Result<Conversation, DbErr> {
    Ok(Conversation {
        id: r.try_get("", "id")?,
        user_id: r.try_get("", "user_id")?,
        title: r.try_get("", "title")?,
        model: r.try_get("", "model")?,
        sampling: parse_json(&r.try_get::<String>("", "sampling")?),
        system_prompt: r.try_get("", "system_prompt")?,
        assistant_id: r.try_get("", "assistant_id")?,
        folder_id: r.try_get("", "folder_id")?,
        tags: parse_json(&r.try_get::<String>("", "tags")?),
        pinned: r.try_get("", "pinned")?,
        archived: r.try_get("", "archived")?,
        active_leaf_id: r.try_get("", "active_leaf_id")?,
        titled: r.try_get("", "titled")?,
        collection_ids: parse_json(&r.try_get::<String>("", "collection_ids")?),
        created_at: from_micros(r.try_get("", "created_at")?),
        updated_at: from_micros(r.try_get("", "updated_at")?),
    })
}

fn message(r: &QueryResult) -> Result<Message, DbErr> {
    Ok(Message {
        id: r.try_get("", "id")?,
        conversation_id: r.try_get("", "conversation_id")?,
        user_id: r.try_get("", "user_id")?,
        parent_id: r.try_get("", "parent_id")?,
        role: r.try_get("", "role")?,
        content: r.try_get("", "content")?,
        model: r.try_get("", "model")?,
        state: r.try_get("", "state")?,
        prompt_tokens: r.try_get("", "prompt_tokens")?,
        completion_tokens: r.try_get("", "completion_tokens")?,
        cost_micros: r.try_get("", "cost_micros")?,
        created_at: from_micros(r.try_get("", "created_at")?),
    })
}

fn assistant(r: &QueryResult) -> Result<Assistant, DbErr> {
    Ok(Assistant {
        id: r.try_get("", "id")?,
        owner_id: r.try_get("", "owner_id")?,
        global: r.try_get("", "global")?,
        name: r.try_get("", "name")?,
        description: r.try_get("", "description")?,
        icon: r.try_get("", "icon")?,
        system_prompt: r.try_get("", "system_prompt")?,
        model: r.try_get("", "model")?,
        sampling: parse_json(&r.try_get::<String>("", "sampling")?),
        collection_ids: parse_json(&r.try_get::<String>("", "collection_ids")?),
    })
}

fn template(r: &QueryResult) -> Result<Template, DbErr> {
    Ok(Template {
        id: r.try_get("", "id")?,
        owner_id: r.try_get("", "owner_id")?,
        global: r.try_get("", "global")?,
        name: r.try_get("", "name")?,
        category: r.try_get("", "category")?,
        body: r.try_get("", "body")?,
    })
}

/// Adds a document to the search index (the FTS5 table or the tsvector table).
pub async fn index<C: ConnectionTrait>(
    db: &C,
    doc_id: &str,
    user: &str,
    conversation: &str,
    message: Option<&str>,
    body: &str,
) -> Result<(), DbErr> {
    exec(
        db,
        "INSERT INTO chat_search (doc_id, user_id, conversation_id, message_id, body) VALUES (?, ?, ?, ?, ?)",
        vec![doc_id.into(), user.into(), conversation.into(), message.map(str::to_owned).into(), body.into()],
    )
    .await?;
    Ok(())
}

/// Replaces the indexed title of a conversation.
pub async fn index_title<C: ConnectionTrait>(db: &C, c: &Conversation) -> Result<(), DbErr> {
    let doc = format!("title:{}", c.id);
    exec(
        db,
        "DELETE FROM chat_search WHERE doc_id = ?",
        vec![doc.clone().into()],
    )
    .await?;
    index(db, &doc, &c.user_id, &c.id, None, &c.title).await
}

/// One search result before snippets.
#[derive(Debug, Clone)]
pub struct Hit {
    pub conversation_id: String,
    pub message_id: Option<String>,
    pub body: String,
    pub rank: f64,
}

/// Filters and cursor of a conversation listing.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub folder_id: Option<String>,
    pub tag: Option<String>,
    pub pinned: Option<bool>,
    pub archived: Option<bool>,
    pub model: Option<String>,
    /// Only conversations sorting after (updated_at, id) in descending order.
    pub after: Option<(i64, String)>,
    pub limit: u64,
}

#[derive(Clone)]
pub struct ChatStore {
    pub db: DatabaseConnection,
}

impl ChatStore {
    /// Marks reply `reply_id` as streaming in `conversation`, for StopReply in any copy.
    pub async fn reply_started(
        &self,
        conversation: &str,
        user_id: &str,
        reply_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO chat_running_replies (conversation_id, user_id, reply_id, started_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (conversation_id) DO UPDATE SET user_id = excluded.user_id, reply_id = excluded.reply_id, started_at = excluded.started_at",
            vec![conversation.into(), user_id.into(), reply_id.into(), micros(at).into()],
        )
        .await?;
        Ok(())
    }

    /// Clears the marker of reply `reply_id` (a newer reply keeps its own).
    pub async fn reply_ended(&self, conversation: &str, reply_id: &str) -> Result<(), DbErr> {
        exec(
            &self.db,
            "DELETE FROM chat_running_replies WHERE conversation_id = ? AND reply_id = ?",
            vec![conversation.into(), reply_id.into()],
        )
        .await?;
        Ok(())
    }

    /// Whether a reply is streaming in `conversation`.
    pub async fn reply_running(&self, conversation: &str) -> Result<bool, DbErr> {
        Ok(one(
            &self.db,
            "SELECT conversation_id FROM chat_running_replies WHERE conversation_id = ?",
            vec![conversation.into()],
        )
        .await?
        .is_some())
    }

    pub fn new(db: DatabaseConnection) -> Self {
        ChatStore { db }
    }

    pub async fn insert_folder(&self, f: &Folder) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO folders (id, user_id, name, parent_id, created_at) VALUES (?, ?, ?, ?, ?)",
            vec![
                f.id.clone().into(),
                f.user_id.clone().into(),
                f.name.clone().into(),
                f.parent_id.clone().into(),
                micros(f.created_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn folders(&self, user: &str) -> Result<Vec<Folder>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM folders WHERE user_id = ? ORDER BY name, id",
            vec![user.into()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Folder {
                    id: r.try_get("", "id")?,
                    user_id: r.try_get("", "user_id")?,
                    name: r.try_get("", "name")?,
                    parent_id: r.try_get("", "parent_id")?,
                    created_at: from_micros(r.try_get("", "created_at")?),
                })
            })
            .collect()
    }

    pub async fn update_folder(&self, user: &str, f: &Folder) -> Result<bool, DbErr> {
        Ok(exec(
            &self.db,
            "UPDATE folders SET name = ?, parent_id = ? WHERE id = ? AND user_id = ?",
            vec![
                f.name.clone().into(),
                f.parent_id.clone().into(),
                f.id.clone().into(),
                user.into(),
            ],
        )
        .await?
            == 1)
    }

    /// Deletes a folder; its subfolders and conversations move up to its parent.
    pub async fn delete_folder(
        &self,
        user: &str,
        id: &str,
        parent: Option<String>,
    ) -> Result<bool, DbErr> {
        let txn = self.db.begin().await?;
        let deleted = exec(
            &txn,
            "DELETE FROM folders WHERE id = ? AND user_id = ?",
            vec![id.into(), user.into()],
        )
        .await?
            == 1;
        if deleted {
            exec(
                &txn,
                "UPDATE folders SET parent_id = ? WHERE parent_id = ? AND user_id = ?",
                vec![parent.clone().into(), id.into(), user.into()],
            )
            .await?;
            exec(
                &txn,
                "UPDATE conversations SET folder_id = ? WHERE folder_id = ? AND user_id = ?",
                vec![parent.into(), id.into(), user.into()],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(deleted)
    }

    pub async fn insert_conversation(&self, c: &Conversation) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO conversations (id, user_id, title, model, sampling, system_prompt, assistant_id, folder_id, tags, \
             pinned, archived, active_leaf_id, titled, collection_ids, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                c.id.clone().into(), c.user_id.clone().into(), c.title.clone().into(), c.model.clone().into(),
                json(&c.sampling).into(), c.system_prompt.clone().into(), c.assistant_id.clone().into(),
                c.folder_id.clone().into(), json(&c.tags).into(), c.pinned.into(), c.archived.into(),
                c.active_leaf_id.clone().into(), c.titled.into(), json(&c.collection_ids).into(),
                micros(c.created_at).into(), micros(c.updated_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn conversation(&self, user: &str, id: &str) -> Result<Option<Conversation>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM conversations WHERE id = ? AND user_id = ?",
            vec![id.into(), user.into()],
        )
        .await?
        .map(|r| conversation(&r))
        .transpose()
    }

    pub async fn update_conversation<C: ConnectionTrait>(
        db: &C,
        c: &Conversation,
    ) -> Result<bool, DbErr> {
        Ok(exec(
            db,
            "UPDATE conversations SET title = ?, model = ?, sampling = ?, system_prompt = ?, folder_id = ?, tags = ?, \
             pinned = ?, archived = ?, titled = ?, collection_ids = ?, updated_at = ? WHERE id = ? AND user_id = ?",
            vec![
                c.title.clone().into(), c.model.clone().into(), json(&c.sampling).into(), c.system_prompt.clone().into(),
                c.folder_id.clone().into(), json(&c.tags).into(), c.pinned.into(), c.archived.into(),
                c.titled.into(), json(&c.collection_ids).into(), micros(c.updated_at).into(), c.id.clone().into(),
                c.user_id.clone().into(),
            ],
        )
        .await?
            == 1)
    }

    /// Moves a conversation's active branch to `leaf`. Only these two columns are written,
    /// so a settings edit or a title landing at the same moment is not undone (and does
    /// not undo this).
    pub async fn set_active_leaf<C: ConnectionTrait>(
        db: &C,
        c: &Conversation,
        leaf: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        Ok(exec(
            db,
            "UPDATE conversations SET active_leaf_id = ?, updated_at = ? WHERE id = ? AND user_id = ?",
            vec![leaf.into(), micros(now).into(), c.id.clone().into(), c.user_id.clone().into()],
        )
        .await?
            == 1)
    }

    /// Sets the automatic title unless the conversation has one already (given by its
    /// owner or an earlier title); true when this call set it.
    pub async fn set_title_once<C: ConnectionTrait>(
        db: &C,
        c: &Conversation,
        title: &str,
    ) -> Result<bool, DbErr> {
        Ok(exec(
            db,
            "UPDATE conversations SET title = ?, titled = ? WHERE id = ? AND user_id = ? AND titled = ?",
            vec![title.into(), true.into(), c.id.clone().into(), c.user_id.clone().into(), false.into()],
        )
        .await?
            == 1)
    }

    pub async fn delete_conversation(&self, user: &str, id: &str) -> Result<bool, DbErr> {
        let txn = self.db.begin().await?;
        let deleted = Self::delete_conversations(&txn, user, &[id.to_owned()]).await? == 1;
        txn.commit().await?;
        Ok(deleted)
    }

    /// Deletes those of `ids` that are `user`'s, with their messages, citations, code runs
    /// and search documents (titles and messages); returns how many. The caller owns the
    /// transaction.
    pub async fn delete_conversations<C: ConnectionTrait>(
        db: &C,
        user: &str,
        ids: &[String],
    ) -> Result<u64, DbErr> {
        if ids.is_empty() {
            return Ok(0);
        }
        // Dependent rows are cleared by the ids found to be the user's, never by the
        // ids asked for: another user's conversation id must not reach a DELETE.
        let owned: Vec<String> = Self::conversations_by_id(db, user, ids)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        if owned.is_empty() {
            return Ok(0);
        }
        let list = vec!["?"; owned.len()].join(", ");
        let values = || {
            owned
                .iter()
                .map(|i| Value::from(i.clone()))
                .collect::<Vec<_>>()
        };
        let mut with_user: Vec<Value> = vec![user.into()];
        with_user.extend(values());
        let deleted = exec(
            db,
            &format!("DELETE FROM conversations WHERE user_id = ? AND id IN ({list})"),
            with_user,
        )
        .await?;
        for table in [
            "messages",
            "message_citations",
            "message_code_runs",
            "chat_search",
        ] {
            exec(
                db,
                &format!("DELETE FROM {table} WHERE conversation_id IN ({list})"),
                values(),
            )
            .await?;
        }
        Ok(deleted)
    }

    /// The conversations of `user` among `ids` (any order).
    pub async fn conversations_by_id<C: ConnectionTrait>(
        db: &C,
        user: &str,
        ids: &[String],
    ) -> Result<Vec<Conversation>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut values: Vec<Value> = vec![user.into()];
        values.extend(ids.iter().map(|i| Value::from(i.clone())));
        let rows = all(
            db,
            &format!(
                "SELECT * FROM conversations WHERE user_id = ? AND id IN ({})",
                vec!["?"; ids.len()].join(", ")
            ),
            values,
        )
        .await?;
        rows.iter().map(conversation).collect()
    }

    pub async fn conversations(
        &self,
        user: &str,
        f: &ConversationFilter,
    ) -> Result<Vec<Conversation>, DbErr> {
        let mut sql = String::from("SELECT * FROM conversations WHERE user_id = ?");
        let mut values: Vec<Value> = vec![user.into()];
        if let Some(folder) = &f.folder_id {
            sql.push_str(" AND folder_id = ?");
            values.push(folder.clone().into());
        }
        if let Some(tag) = &f.tag {
            // Tags are stored as a JSON array of strings; match the quoted element.
            sql.push_str(" AND tags LIKE ?");
            values.push(format!("%{}%", json(tag)).into());
        }
        if let Some(p) = f.pinned {
            sql.push_str(" AND pinned = ?");
            values.push(p.into());
        }
        if let Some(a) = f.archived {
            sql.push_str(" AND archived = ?");
            values.push(a.into());
        }
        if let Some(m) = &f.model {
            sql.push_str(" AND model = ?");
            values.push(m.clone().into());
        }
        if let Some((at, id)) = &f.after {
            sql.push_str(" AND (updated_at < ? OR (updated_at = ? AND id < ?))");
            values.extend([(*at).into(), (*at).into(), id.clone().into()]);
        }
        sql.push_str(&format!(
            " ORDER BY updated_at DESC, id DESC LIMIT {}",
            f.limit
        ));
        let rows = all(&self.db, &sql, values).await?;
        rows.iter().map(conversation).collect()
    }

    pub async fn insert_message<C: ConnectionTrait>(db: &C, m: &Message) -> Result<(), DbErr> {
        index(
            db,
            &m.id,
            &m.user_id,
            &m.conversation_id,
            Some(&m.id),
            &m.content,
        )
        .await?;
        exec(
            db,
            "INSERT INTO messages (id, conversation_id, user_id, parent_id, role, content, model, state, prompt_tokens, \
             completion_tokens, cost_micros, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                m.id.clone().into(), m.conversation_id.clone().into(), m.user_id.clone().into(), m.parent_id.clone().into(),
                m.role.clone().into(), m.content.clone().into(), m.model.clone().into(), m.state.clone().into(),
                m.prompt_tokens.into(), m.completion_tokens.into(), m.cost_micros.into(), micros(m.created_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Keeps `run` with message `m`, replacing an earlier run of the same block.
    pub async fn upsert_code_run<C: ConnectionTrait>(
        db: &C,
        m: &Message,
        run: &CodeRun,
    ) -> Result<(), DbErr> {
        exec(
            db,
            "DELETE FROM message_code_runs WHERE message_id = ? AND block = ?",
            vec![m.id.clone().into(), i64::from(run.block).into()],
        )
        .await?;
        exec(
            db,
            "INSERT INTO message_code_runs (message_id, block, conversation_id, user_id, language, code, stdout, stderr, \
             truncated, status, exit_code, exit_message, fuel_used, duration_ms, peak_memory_bytes, cost_micros, ran_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                m.id.clone().into(), i64::from(run.block).into(), m.conversation_id.clone().into(), m.user_id.clone().into(),
                run.language.clone().into(), run.code.clone().into(), run.stdout.clone().into(), run.stderr.clone().into(),
                run.truncated.into(), run.status.clone().into(), i64::from(run.exit_code).into(), run.exit_message.clone().into(),
                run.fuel_used.into(), run.duration_ms.into(), run.peak_memory_bytes.into(), run.cost_micros.into(),
                micros(run.ran_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Stores the sources a reply was given.
    pub async fn insert_citations<C: ConnectionTrait>(
        db: &C,
        m: &Message,
        citations: &[Citation],
    ) -> Result<(), DbErr> {
        for (position, c) in citations.iter().enumerate() {
            exec(
                db,
                "INSERT INTO message_citations (message_id, position, cited_as, conversation_id, chunk_id, document_id, document_name, \
                 collection_id, page, headings, score, quote) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    m.id.clone().into(), (position as i64).into(), i64::from(c.index).into(), m.conversation_id.clone().into(), c.chunk_id.clone().into(),
                    c.document_id.clone().into(), c.document_name.clone().into(), c.collection_id.clone().into(),
                    i64::from(c.page).into(), json(&c.headings).into(), c.score.into(), c.quote.clone().into(),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// The citations of a conversation's messages, by message id, in order.
    pub async fn citations(
        &self,
        conversation_id: &str,
    ) -> Result<BTreeMap<String, Vec<Citation>>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM message_citations WHERE conversation_id = ? ORDER BY message_id, position",
            vec![conversation_id.into()],
        )
        .await?;
        let mut out: BTreeMap<String, Vec<Citation>> = BTreeMap::new();
        for r in &rows {
            let message_id: String = r.try_get("", "message_id")?;
            out.entry(message_id).or_default().push(Citation {
                index: r.try_get::<i64>("", "cited_as")? as u32,
                chunk_id: r.try_get("", "chunk_id")?,
                document_id: r.try_get("", "document_id")?,
                document_name: r.try_get("", "document_name")?,
                collection_id: r.try_get("", "collection_id")?,
                page: r.try_get::<i64>("", "page")? as u32,
                headings: parse_json(&r.try_get::<String>("", "headings")?),
                score: r.try_get("", "score")?,
                quote: r.try_get("", "quote")?,
            });
        }
        Ok(out)
    }

    /// The code runs of a conversation's messages, by message id, in block order.
    pub async fn code_runs(
        &self,
        conversation_id: &str,
    ) -> Result<BTreeMap<String, Vec<CodeRun>>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM message_code_runs WHERE conversation_id = ? ORDER BY message_id, block",
            vec![conversation_id.into()],
        )
        .await?;
        let mut out: BTreeMap<String, Vec<CodeRun>> = BTreeMap::new();
        for r in &rows {
            let (message_id, run) = code_run(r)?;
            out.entry(message_id).or_default().push(run);
        }
        Ok(out)
    }

    /// Every message of a conversation, oldest first.
    pub async fn messages(&self, conversation_id: &str) -> Result<Vec<Message>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY created_at, id",
            vec![conversation_id.into()],
        )
        .await?;
        rows.iter().map(message).collect()
    }

    pub async fn message(&self, user: &str, id: &str) -> Result<Option<Message>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM messages WHERE id = ? AND user_id = ?",
            vec![id.into(), user.into()],
        )
        .await?
        .map(|r| message(&r))
        .transpose()
    }

    /// Full-text search over one user's documents; `terms` are plain words, all required.
    ///
    /// Relevance is ranked within the newest `candidates` matches, and pages end there: a
    /// word found in most messages is answered from the recent ones rather than by
    /// ranking every match (which took hundreds of milliseconds for common words). A query
    /// with fewer matches than that ranks all of them, exactly as without the bound.
    pub async fn search(
        &self,
        user: &str,
        terms: &[String],
        limit: u64,
        offset: u64,
        candidates: u64,
    ) -> Result<Vec<Hit>, DbErr> {
        let backend = self.db.get_database_backend();
        let candidates = candidates.max(1);
        let rows = if backend == sea_orm::DatabaseBackend::Postgres {
            let query = terms.join(" ");
            // The newest candidates by message id (ids are time-ordered UUIDv7s); the
            // planner walks the primary key backwards for common words and uses the GIN
            // index for rare ones, so it plans for each query's words.
            llmesh_kit::db::all_custom_plan(
                &self.db,
                &format!(
                    "SELECT conversation_id, message_id, body, rank FROM ( \
                       SELECT doc_id, conversation_id, message_id, body, \
                         CAST(ts_rank(tsv, q) AS DOUBLE PRECISION) AS rank \
                       FROM chat_search, plainto_tsquery('simple', ?) q WHERE user_id = ? AND tsv @@ q \
                       ORDER BY doc_id DESC LIMIT {candidates}) c \
                     ORDER BY rank DESC, doc_id LIMIT {limit} OFFSET {offset}"
                ),
                vec![query.into(), user.into()],
            )
            .await?
        } else {
            // Each term quoted: user input never reaches FTS5's query syntax.
            let query = terms
                .iter()
                .map(|t| format!("\"{}\"", t.replace('"', "")))
                .collect::<Vec<_>>()
                .join(" ");
            // The rowid of the `candidates`-th newest match bounds the ranked set; FTS5
            // walks its doclists by rowid, so finding it reads only that many rows.
            all(
                &self.db,
                &format!(
                    "SELECT conversation_id, message_id, body, -bm25(chat_search) AS rank FROM chat_search \
                     WHERE chat_search MATCH ? AND user_id = ? AND rowid >= coalesce( \
                       (SELECT rowid FROM chat_search WHERE chat_search MATCH ? AND user_id = ? \
                        ORDER BY rowid DESC LIMIT 1 OFFSET {}), 0) \
                     ORDER BY bm25(chat_search), doc_id LIMIT {limit} OFFSET {offset}",
                    candidates - 1
                ),
                vec![query.clone().into(), user.into(), query.into(), user.into()],
            )
            .await?
        };
        rows.iter()
            .map(|r| {
                Ok(Hit {
                    conversation_id: r.try_get("", "conversation_id")?,
                    message_id: r.try_get("", "message_id")?,
                    body: r.try_get("", "body")?,
                    rank: r.try_get("", "rank")?,
                })
            })
            .collect()
    }

    pub async fn insert_assistant(&self, a: &Assistant, now: DateTime<Utc>) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO assistants (id, owner_id, global, name, description, icon, system_prompt, model, sampling, collection_ids, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                a.id.clone().into(), a.owner_id.clone().into(), a.global.into(), a.name.clone().into(), a.description.clone().into(),
                a.icon.clone().into(), a.system_prompt.clone().into(), a.model.clone().into(), json(&a.sampling).into(),
                json(&a.collection_ids).into(), micros(now).into(), micros(now).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// An assistant the user may see: their own or a global one.
    pub async fn assistant(&self, user: &str, id: &str) -> Result<Option<Assistant>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM assistants WHERE id = ? AND (owner_id = ? OR global = ?)",
            vec![id.into(), user.into(), true.into()],
        )
        .await?
        .map(|r| assistant(&r))
        .transpose()
    }

    pub async fn assistants(&self, user: &str) -> Result<Vec<Assistant>, DbErr> {
        let rows = all(
            &self.db,
            "SELECT * FROM assistants WHERE owner_id = ? OR global = ? ORDER BY name, id",
            vec![user.into(), true.into()],
        )
        .await?;
        rows.iter().map(assistant).collect()
    }

    pub async fn update_assistant(&self, a: &Assistant, now: DateTime<Utc>) -> Result<bool, DbErr> {
        Ok(exec(
            &self.db,
            "UPDATE assistants SET name = ?, description = ?, icon = ?, system_prompt = ?, model = ?, sampling = ?, collection_ids = ?, updated_at = ? WHERE id = ?",
            vec![
                a.name.clone().into(), a.description.clone().into(), a.icon.clone().into(), a.system_prompt.clone().into(),
                a.model.clone().into(), json(&a.sampling).into(), json(&a.collection_ids).into(), micros(now).into(), a.id.clone().into(),
            ],
        )
        .await?
            == 1)
    }

    pub async fn delete_assistant(&self, id: &str) -> Result<bool, DbErr> {
        Ok(exec(
            &self.db,
            "DELETE FROM assistants WHERE id = ?",
            vec![id.into()],
        )
        .await?
            == 1)
    }

    pub async fn insert_template(&self, t: &Template, now: DateTime<Utc>) -> Result<(), DbErr> {
        exec(
            &self.db,
            "INSERT INTO templates (id, owner_id, global, name, category, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                t.id.clone().into(), t.owner_id.clone().into(), t.global.into(), t.name.clone().into(), t.category.clone().into(),
                t.body.clone().into(), micros(now).into(), micros(now).into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn template(&self, user: &str, id: &str) -> Result<Option<Template>, DbErr> {
        one(
            &self.db,
            "SELECT * FROM templates WHERE id = ? AND (owner_id = ? OR global = ?)",
            vec![id.into(), user.into(), true.into()],
        )
        .await?
        .map(|r| template(&r))
        .transpose()
    }

    pub async fn templates(
        &self,
        user: &str,
        category: Option<&str>,
    ) -> Result<Vec<Template>, DbErr> {
        let mut sql = String::from("SELECT * FROM templates WHERE (owner_id = ? OR global = ?)");
        let mut values: Vec<Value> = vec![user.into(), true.into()];
        if let Some(c) = category {
            sql.push_str(" AND category = ?");
            values.push(c.into());
        }
        sql.push_str(" ORDER BY category, name, id");
        let rows = all(&self.db, &sql, values).await?;
        rows.iter().map(template).collect()
    }

    pub async fn update_template(&self, t: &Template, now: DateTime<Utc>) -> Result<bool, DbErr> {
        Ok(exec(
            &self.db,
            "UPDATE templates SET name = ?, category = ?, body = ?, updated_at = ? WHERE id = ?",
            vec![
                t.name.clone().into(),
                t.category.clone().into(),
                t.body.clone().into(),
                micros(now).into(),
                t.id.clone().into(),
            ],
        )
        .await?
            == 1)
    }

    pub async fn delete_template(&self, id: &str) -> Result<bool, DbErr> {
        Ok(exec(
            &self.db,
            "DELETE FROM templates WHERE id = ?",
            vec![id.into()],
        )
        .await?
            == 1)
    }
}
