//! The chat domain: folders, conversations whose messages form a tree (edits and
//! regenerations are sibling branches; the conversation remembers its active leaf),
//! replies streamed from llm, assistants and prompt templates.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use llmesh_kit::signal::Signals;
use llmesh_kit::{Clock, Principal};
use tokio::sync::{mpsc, oneshot};

use crate::config::ChatConfig;
use crate::error::{ChatError, Result};
use crate::knowledge::Knowledge;
use crate::llm_client::{Finish, LlmClient, ReplyDone, ReplyPiece, Turn};
use crate::store::{
    ChatStore, Citation, CodeRun, Conversation, ConversationFilter, Folder, Message, Sampling,
};

/// The title a conversation has until one is written or generated.
pub const DEFAULT_TITLE: &str = "New chat";

/// A message with its place among its siblings.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageView {
    pub message: Message,
    /// 1-based.
    pub sibling_index: u32,
    pub sibling_count: u32,
    /// Every sibling's id (this message's included), in creation order.
    pub sibling_ids: Vec<String>,
    /// Results of running its code blocks, in block order.
    pub code_runs: Vec<CodeRun>,
    /// The knowledge sources it was given.
    pub citations: Vec<Citation>,
}

/// What a reply streams.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEvent {
    UserMessage(MessageView),
    /// The sources found for the reply, before its first delta.
    Citations(Vec<Citation>),
    Delta(String),
    AssistantMessage(MessageView),
}

/// Fields a conversation update may change (`None`: leave as is).
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    pub title: Option<String>,
    pub folder_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub pinned: Option<bool>,
    pub archived: Option<bool>,
    pub model: Option<String>,
    pub sampling: Option<Sampling>,
    pub system_prompt: Option<String>,
    pub collection_ids: Option<Vec<String>>,
}

/// A new conversation.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    pub title: String,
    pub model: String,
    pub assistant_id: Option<String>,
    pub folder_id: Option<String>,
    pub system_prompt: String,
    pub sampling: Sampling,
    pub collection_ids: Vec<String>,
}

pub struct ChatService {
    pub(crate) store: ChatStore,
    llm: Arc<dyn LlmClient>,
    pub(crate) config: ChatConfig,
    pub(crate) clock: Arc<dyn Clock>,
    /// How StopReply reaches the copy of chat that streams the reply.
    signals: Arc<Signals>,
    /// Knowledge collections replies draw on, when this process serves them.
    knowledge: Option<Arc<Knowledge>>,
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Longest model id: local ids are at most 64 characters, hosted ones
/// ("provider-id/model") up to 32 + 1 + 128.
pub(crate) const MAX_MODEL_ID: usize = 200;

pub(crate) fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(ChatError::Invalid(format!("{field} must not be empty")));
    }
    let n = value.chars().count();
    if n > max {
        return Err(ChatError::Invalid(format!(
            "{field} must be at most {max} characters (got {n})"
        )));
    }
    if value.chars().any(|c| c == '\0') {
        return Err(ChatError::Invalid(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

/// Code blocks a message may keep runs for, and the most code and output one run keeps.
pub const MAX_CODE_BLOCKS: u32 = 100;
pub const MAX_RUN_CODE_BYTES: usize = 64 * 1024;
pub const MAX_RUN_OUTPUT_BYTES: usize = 64 * 1024;

/// A code run as a client (or an import) states it.
pub(crate) fn check_code_run(run: &CodeRun) -> Result<()> {
    if run.block >= MAX_CODE_BLOCKS {
        return Err(ChatError::Invalid(format!(
            "run.block is {}; it must be below {MAX_CODE_BLOCKS}",
            run.block
        )));
    }
    let language_ok = !run.language.is_empty()
        && run.language.len() <= 32
        && run
            .language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'_' | b'.'));
    if !language_ok {
        return Err(ChatError::Invalid(
            "run.language must be 1-32 characters of letters, digits, '+', '-', '_' and '.'".into(),
        ));
    }
    if run.code.len() > MAX_RUN_CODE_BYTES || run.code.contains('\0') {
        return Err(ChatError::Invalid(format!(
            "run.code must be at most {MAX_RUN_CODE_BYTES} bytes, without NUL"
        )));
    }
    for (field, out) in [("run.stdout", &run.stdout), ("run.stderr", &run.stderr)] {
        if out.len() > MAX_RUN_OUTPUT_BYTES {
            return Err(ChatError::Invalid(format!(
                "{field} is {} bytes; keep at most {MAX_RUN_OUTPUT_BYTES} and set run.truncated",
                out.len()
            )));
        }
    }
    if !crate::store::RUN_STATUSES.contains(&run.status.as_str()) {
        return Err(ChatError::Invalid("run.exit.status must be set".into()));
    }
    check_text("run.exit.message", &run.exit_message, 2000, false)?;
    for (field, v) in [
        ("run.exit.fuel_used", run.fuel_used),
        ("run.exit.duration_ms", run.duration_ms),
        ("run.exit.peak_memory_bytes", run.peak_memory_bytes),
        ("run.exit.cost", run.cost_micros),
    ] {
        if v < 0 {
            return Err(ChatError::Invalid(format!("{field} must not be negative")));
        }
    }
    Ok(())
}

pub(crate) fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 20 {
        return Err(ChatError::Invalid("at most 20 tags".into()));
    }
    for t in tags {
        check_text("tags[]", t, 50, true)?;
    }
    Ok(())
}

impl ChatService {
    pub fn new(
        store: ChatStore,
        llm: Arc<dyn LlmClient>,
        config: ChatConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ChatService {
            store,
            llm,
            config,
            clock,
            signals: Signals::local(),
            knowledge: None,
        }
    }

    /// Lets conversations and assistants draw on knowledge collections.
    pub fn with_knowledge(mut self, knowledge: Arc<Knowledge>) -> Self {
        self.knowledge = Some(knowledge);
        self
    }

    /// Checks collections to attach (readable by `p`, at most 20).
    pub(crate) async fn attached(
        &self,
        p: &Principal,
        field: &str,
        ids: &[String],
    ) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match &self.knowledge {
            Some(k) => k.check_attached(p, field, ids).await,
            None => Err(ChatError::Precondition(
                "knowledge collections are not served by this chat process".into(),
            )),
        }
    }

    /// Lets StopReply reach replies streamed by every chat process sharing `signals`.
    pub fn with_signals(mut self, signals: Arc<Signals>) -> Self {
        self.signals = signals;
        self
    }

    // ---- folders ----

    pub async fn create_folder(
        &self,
        p: &Principal,
        name: &str,
        parent: Option<String>,
    ) -> Result<Folder> {
        check_text("name", name, 100, true)?;
        if let Some(parent) = &parent {
            self.folder(p, parent).await?;
        }
        let folder = Folder {
            id: new_id(),
            user_id: p.user_id.clone(),
            name: name.trim().to_owned(),
            parent_id: parent,
            created_at: self.clock.now(),
        };
        self.store.insert_folder(&folder).await?;
        Ok(folder)
    }

    pub async fn folders(&self, p: &Principal) -> Result<Vec<Folder>> {
        Ok(self.store.folders(&p.user_id).await?)
    }

    pub(crate) async fn folder(&self, p: &Principal, id: &str) -> Result<Folder> {
        self.store
            .folders(&p.user_id)
            .await?
            .into_iter()
            .find(|f| f.id == id)
            .ok_or(ChatError::NotFound("folder"))
    }

    pub async fn update_folder(
        &self,
        p: &Principal,
        id: &str,
        name: Option<String>,
        parent: Option<Option<String>>,
    ) -> Result<Folder> {
        let mut folder = self.folder(p, id).await?;
        if let Some(name) = name {
            check_text("name", &name, 100, true)?;
            folder.name = name.trim().to_owned();
        }
        if let Some(parent) = parent {
            if let Some(parent_id) = &parent {
                // Walk up from the new parent: meeting this folder means a cycle.
                let all = self.store.folders(&p.user_id).await?;
                let mut cursor = Some(parent_id.clone());
                while let Some(current) = cursor {
                    if current == folder.id {
                        return Err(ChatError::Precondition(
                            "a folder cannot move into itself or its own subfolder".into(),
                        ));
                    }
                    cursor = all
                        .iter()
                        .find(|f| f.id == current)
                        .ok_or(ChatError::NotFound("parent folder"))?
                        .parent_id
                        .clone();
                }
            }
            folder.parent_id = parent;
        }
        self.store.update_folder(&p.user_id, &folder).await?;
        Ok(folder)
    }

    pub async fn delete_folder(&self, p: &Principal, id: &str) -> Result<()> {
        let folder = self.folder(p, id).await?;
        if !self
            .store
            .delete_folder(&p.user_id, id, folder.parent_id)
            .await?
        {
            return Err(ChatError::NotFound("folder"));
        }
        Ok(())
    }

    // ---- conversations ----

    pub async fn create_conversation(
        &self,
        p: &Principal,
        new: NewConversation,
    ) -> Result<Conversation> {
        check_text("title", &new.title, 200, false)?;
        check_text(
            "system_prompt",
            &new.system_prompt,
            self.config.max_system_prompt_chars,
            false,
        )?;
        let mut model = new.model.trim().to_owned();
        check_text("model", &model, MAX_MODEL_ID, false)?;
        let mut sampling = new.sampling;
        if let Some(assistant_id) = &new.assistant_id {
            let a = self
                .store
                .assistant(&p.user_id, assistant_id)
                .await?
                .ok_or(ChatError::NotFound("assistant"))?;
            if model.is_empty() {
                model = a.model.clone();
            }
            if sampling == Sampling::default() {
                sampling = a.sampling.clone();
            }
        }
        if let Some(folder) = &new.folder_id {
            self.folder(p, folder).await?;
        }
        let collection_ids = self
            .attached(p, "collection_ids", &new.collection_ids)
            .await?;
        if model.is_empty() {
            model = self.config.default_model.clone();
        }
        let now = self.clock.now();
        let titled = !new.title.trim().is_empty();
        let c = Conversation {
            id: new_id(),
            user_id: p.user_id.clone(),
            title: if titled {
                new.title.trim().to_owned()
            } else {
                DEFAULT_TITLE.into()
            },
            model,
            sampling,
            system_prompt: new.system_prompt,
            assistant_id: new.assistant_id,
            folder_id: new.folder_id,
            tags: Vec::new(),
            pinned: false,
            archived: false,
            active_leaf_id: None,
            titled,
            collection_ids,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_conversation(&c).await?;
        crate::store::index_title(&self.store.db, &c).await?;
        Ok(c)
    }

    pub async fn conversation(&self, p: &Principal, id: &str) -> Result<Conversation> {
        self.store
            .conversation(&p.user_id, id)
            .await?
            .ok_or(ChatError::NotFound("conversation"))
    }

    pub async fn list(
        &self,
        p: &Principal,
        filter: ConversationFilter,
    ) -> Result<Vec<Conversation>> {
        Ok(self.store.conversations(&p.user_id, &filter).await?)
    }

    pub async fn update_conversation(
        &self,
        p: &Principal,
        id: &str,
        patch: ConversationPatch,
    ) -> Result<Conversation> {
        let mut c = self.conversation(p, id).await?;
        let retitled = patch.title.is_some();
        if let Some(title) = patch.title {
            check_text("title", &title, 200, true)?;
            c.title = title.trim().to_owned();
            c.titled = true;
        }
        if let Some(folder) = patch.folder_id {
            if folder.is_empty() {
                c.folder_id = None;
            } else {
                self.folder(p, &folder).await?;
                c.folder_id = Some(folder);
            }
        }
        if let Some(tags) = patch.tags {
            check_tags(&tags)?;
            c.tags = tags.into_iter().map(|t| t.trim().to_owned()).collect();
            c.tags.dedup();
        }
        if let Some(v) = patch.pinned {
            c.pinned = v;
        }
        if let Some(v) = patch.archived {
            c.archived = v;
        }
        if let Some(model) = patch.model {
            check_text("model", &model, MAX_MODEL_ID, true)?;
            c.model = model;
        }
        if let Some(s) = patch.sampling {
            c.sampling = s;
        }
        if let Some(sp) = patch.system_prompt {
            check_text(
                "system_prompt",
                &sp,
                self.config.max_system_prompt_chars,
                false,
            )?;
            c.system_prompt = sp;
        }
        if let Some(ids) = patch.collection_ids {
            c.collection_ids = self.attached(p, "collection_ids", &ids).await?;
        }
        c.updated_at = self.clock.now();
        ChatStore::update_conversation(&self.store.db, &c).await?;
        if retitled {
            crate::store::index_title(&self.store.db, &c).await?;
        }
        Ok(c)
    }

    pub async fn delete_conversation(&self, p: &Principal, id: &str) -> Result<()> {
        if !self.store.delete_conversation(&p.user_id, id).await? {
            return Err(ChatError::NotFound("conversation"));
        }
        Ok(())
    }

    /// The conversation and its active path, root first, with sibling positions.
    pub async fn active_path(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(Conversation, Vec<MessageView>)> {
        let c = self.conversation(p, id).await?;
        let messages = self.store.messages(&c.id).await?;
        let mut runs = self.store.code_runs(&c.id).await?;
        let mut cited = self.store.citations(&c.id).await?;
        let path = path_to(&messages, c.active_leaf_id.as_deref());
        let views = path
            .into_iter()
            .map(|m| MessageView {
                code_runs: runs.remove(&m.id).unwrap_or_default(),
                citations: cited.remove(&m.id).unwrap_or_default(),
                ..view(&messages, m)
            })
            .collect();
        Ok((c, views))
    }

    /// Keeps the result of running one of a message's code blocks with it (replacing an
    /// earlier run of that block) and returns the message with all its runs.
    pub async fn record_code_run(
        &self,
        p: &Principal,
        message_id: &str,
        mut run: CodeRun,
    ) -> Result<MessageView> {
        check_code_run(&run)?;
        let m = self
            .store
            .message(&p.user_id, message_id)
            .await?
            .ok_or(ChatError::NotFound("message"))?;
        run.ran_at = self.clock.now();
        ChatStore::upsert_code_run(&self.store.db, &m, &run).await?;
        let messages = self.store.messages(&m.conversation_id).await?;
        let mut runs = self.store.code_runs(&m.conversation_id).await?;
        let mut cited = self.store.citations(&m.conversation_id).await?;
        Ok(MessageView {
            code_runs: runs.remove(&m.id).unwrap_or_default(),
            citations: cited.remove(&m.id).unwrap_or_default(),
            ..view(&messages, &m)
        })
    }

    /// Moves the active leaf to the newest leaf under `message_id`.
    pub async fn switch_branch(
        &self,
        p: &Principal,
        message_id: &str,
    ) -> Result<(Conversation, Vec<MessageView>)> {
        let m = self
            .store
            .message(&p.user_id, message_id)
            .await?
            .ok_or(ChatError::NotFound("message"))?;
        let mut c = self.conversation(p, &m.conversation_id).await?;
        let messages = self.store.messages(&c.id).await?;
        let mut leaf = m.id.clone();
        while let Some(child) = messages
            .iter()
            .rev()
            .find(|x| x.parent_id.as_deref() == Some(leaf.as_str()))
        {
            leaf = child.id.clone();
        }
        ChatStore::set_active_leaf(&self.store.db, &c, &leaf, self.clock.now()).await?;
        c.active_leaf_id = Some(leaf);
        self.active_path(p, &c.id).await
    }

    // ---- replies ----

    /// Appends a user message (under `parent`, or the active leaf) and streams a reply.
    pub async fn send(
        self: &Arc<Self>,
        p: &Principal,
        conversation_id: &str,
        content: String,
        parent: Option<String>,
        model: Option<String>,
        sampling: Option<Sampling>,
    ) -> Result<mpsc::Receiver<Result<ReplyEvent>>> {
        check_text("content", &content, self.config.max_message_chars, true)?;
        let c = self.conversation(p, conversation_id).await?;
        let messages = self.store.messages(&c.id).await?;
        let parent = match parent.filter(|s| !s.is_empty()) {
            Some(id) => Some(
                messages
                    .iter()
                    .find(|m| m.id == id)
                    .map(|m| m.id.clone())
                    .ok_or(ChatError::NotFound("parent message"))?,
            ),
            None => c.active_leaf_id.clone(),
        };
        let user = Message {
            id: new_id(),
            conversation_id: c.id.clone(),
            user_id: p.user_id.clone(),
            parent_id: parent,
            role: "user".into(),
            content,
            model: String::new(),
            state: "complete".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micros: 0,
            created_at: self.clock.now(),
        };
        self.reply(p, c, messages, Some(user), None, model, sampling)
            .await
    }

    /// Generates a new sibling of an assistant message and streams it.
    pub async fn regenerate(
        self: &Arc<Self>,
        p: &Principal,
        message_id: &str,
        model: Option<String>,
        sampling: Option<Sampling>,
    ) -> Result<mpsc::Receiver<Result<ReplyEvent>>> {
        let m = self
            .store
            .message(&p.user_id, message_id)
            .await?
            .ok_or(ChatError::NotFound("message"))?;
        if m.role != "assistant" {
            return Err(ChatError::Invalid(
                "only an assistant message can be regenerated; edit a user message instead".into(),
            ));
        }
        let c = self.conversation(p, &m.conversation_id).await?;
        let messages = self.store.messages(&c.id).await?;
        let parent = m.parent_id.clone().ok_or(ChatError::Precondition(
            "this reply has no prompt to answer".into(),
        ))?;
        self.reply(p, c, messages, None, Some(parent), model, sampling)
            .await
    }

    /// Creates an edited sibling of a user message and streams a reply to it.
    pub async fn edit(
        self: &Arc<Self>,
        p: &Principal,
        message_id: &str,
        content: String,
    ) -> Result<mpsc::Receiver<Result<ReplyEvent>>> {
        check_text("content", &content, self.config.max_message_chars, true)?;
        let m = self
            .store
            .message(&p.user_id, message_id)
            .await?
            .ok_or(ChatError::NotFound("message"))?;
        if m.role != "user" {
            return Err(ChatError::Invalid(
                "only a user message can be edited; regenerate a reply instead".into(),
            ));
        }
        let c = self.conversation(p, &m.conversation_id).await?;
        let messages = self.store.messages(&c.id).await?;
        let user = Message {
            id: new_id(),
            content,
            created_at: self.clock.now(),
            ..m
        };
        self.reply(p, c, messages, Some(user), None, None, None)
            .await
    }

    /// The shared path of every reply: build the context, start llm (which reserves
    /// spend), store the new user message only once that succeeded, stream, and store the
    /// reply with what llm settled, however it ends.
    /// Stops the reply being generated in a conversation, as a cancelled stream does: the
    /// text so far is kept, marked stopped and billed. False when nothing was running.
    pub async fn stop_reply(&self, p: &Principal, conversation_id: &str) -> Result<bool> {
        let c = self.conversation(p, conversation_id).await?;
        // Whichever copy of chat streams it listens for this signal.
        if !self.store.reply_running(&c.id).await? {
            return Ok(false);
        }
        self.signals.send(&stop_key(&p.user_id, &c.id)).await;
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn reply(
        self: &Arc<Self>,
        p: &Principal,
        mut c: Conversation,
        mut messages: Vec<Message>,
        new_user: Option<Message>,
        answer_to: Option<String>,
        model: Option<String>,
        sampling: Option<Sampling>,
    ) -> Result<mpsc::Receiver<Result<ReplyEvent>>> {
        let prompt_id = match &new_user {
            Some(u) => u.id.clone(),
            None => answer_to
                .clone()
                .ok_or(ChatError::Internal("a reply needs a prompt".into()))?,
        };
        if let Some(u) = &new_user {
            messages.push(u.clone());
        }
        let path: Vec<Message> = path_to(&messages, Some(&prompt_id))
            .into_iter()
            .cloned()
            .collect();
        let model = model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| c.model.clone());
        let sampling = sampling.unwrap_or_else(|| c.sampling.clone());
        let system = self.system_prompt(p, &c).await?;
        let citations = self.sources(p, &c, &path).await?;
        let system = with_sources(system, &citations);
        let citations: Vec<Citation> = citations.into_iter().map(|(c, _)| c).collect();
        let turns = self
            .fit_context(p, &model, system, &path, &sampling)
            .await?;
        let first_exchange = !c.titled && path.len() == 1;

        // StopReply, from whichever copy of chat receives it, reaches this one by signal.
        let mut stop_bell = self.signals.subscribe(&stop_key(&p.user_id, &c.id));
        let reply_id = new_id();
        self.store
            .reply_started(&c.id, &p.user_id, &reply_id, self.clock.now())
            .await?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut pieces = match self
            .llm
            .generate(p, &model, turns, &sampling, stop_rx)
            .await
        {
            Ok(pieces) => pieces,
            Err(e) => {
                self.store.reply_ended(&c.id, &reply_id).await?;
                return Err(e);
            }
        };

        if let Some(u) = &new_user {
            ChatStore::insert_message(&self.store.db, u).await?;
            c.updated_at = self.clock.now();
            ChatStore::set_active_leaf(&self.store.db, &c, &u.id, c.updated_at).await?;
            c.active_leaf_id = Some(u.id.clone());
        }
        let (tx, rx) = mpsc::channel(64);
        if let Some(u) = &new_user {
            let _ = tx
                .send(Ok(ReplyEvent::UserMessage(view(&messages, u))))
                .await;
        }
        if !citations.is_empty() {
            let _ = tx.send(Ok(ReplyEvent::Citations(citations.clone()))).await;
        }
        let this = self.clone();
        let principal = p.clone();
        // The reply's storage (and its auto-title) stay in the RPC's trace.
        let span = tracing::Span::current();
        let task = async move {
            let mut text = String::new();
            let mut stop_tx = Some(stop_tx);
            let mut done: Option<ReplyDone> = None;
            loop {
                tokio::select! {
                    piece = pieces.recv() => match piece {
                        Some(ReplyPiece::Delta(d)) => {
                            text.push_str(&d);
                            let _ = tx.send(Ok(ReplyEvent::Delta(d))).await;
                        }
                        Some(ReplyPiece::Done(d)) => {
                            done = Some(d);
                            break;
                        }
                        None => break,
                    },
                    // The client pressed Stop (or went away): ask llm to stop, keep reading
                    // until it reports what it settled.
                    _ = tx.closed(), if stop_tx.is_some() => {
                        if let Some(s) = stop_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    // StopReply: the same, for clients behind proxies that do not pass a
                    // cancelled request on.
                    _ = stop_bell.recv(), if stop_tx.is_some() => {
                        if let Some(s) = stop_tx.take() {
                            let _ = s.send(());
                        }
                    }
                }
            }
            drop(stop_bell);
            if let Err(e) = this.store.reply_ended(&c.id, &reply_id).await {
                tracing::warn!(conversation = %c.id, error = %e, "clearing a finished reply's marker failed");
            }
            let done = done.unwrap_or(ReplyDone {
                finish: Finish::Error,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_micros: 0,
                error: Some("the model stopped without a final message".into()),
            });
            match this
                .store_reply(
                    &principal, &c.id, &prompt_id, &model, text, &done, &citations,
                )
                .await
            {
                Ok(view) => {
                    let _ = tx.send(Ok(ReplyEvent::AssistantMessage(view))).await;
                }
                Err(e) => {
                    tracing::error!(conversation = %c.id, error = %e, "storing a reply failed");
                    let _ = tx.send(Err(e)).await;
                }
            }
            if first_exchange && this.config.auto_title {
                this.auto_title(&principal, &c.id, &model, &path).await;
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        Ok(rx)
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_reply(
        &self,
        p: &Principal,
        conversation_id: &str,
        parent: &str,
        model: &str,
        text: String,
        done: &ReplyDone,
        citations: &[Citation],
    ) -> Result<MessageView> {
        let state = match done.finish {
            Finish::Cancelled => "stopped",
            Finish::Error => "failed",
            Finish::Stop | Finish::Length => "complete",
        };
        let m = Message {
            id: new_id(),
            conversation_id: conversation_id.to_owned(),
            user_id: p.user_id.clone(),
            parent_id: Some(parent.to_owned()),
            role: "assistant".into(),
            content: text,
            model: model.to_owned(),
            state: state.into(),
            prompt_tokens: done.prompt_tokens.into(),
            completion_tokens: done.completion_tokens.into(),
            cost_micros: done.cost_micros,
            created_at: self.clock.now(),
        };
        {
            use sea_orm::TransactionTrait;
            let txn = self.store.db.begin().await?;
            ChatStore::insert_message(&txn, &m).await?;
            ChatStore::insert_citations(&txn, &m, citations).await?;
            txn.commit().await?;
        }
        let c = self.conversation(p, conversation_id).await?;
        ChatStore::set_active_leaf(&self.store.db, &c, &m.id, self.clock.now()).await?;
        let messages = self.store.messages(conversation_id).await?;
        Ok(MessageView {
            citations: citations.to_vec(),
            ..view(&messages, &m)
        })
    }

    /// The knowledge sources for a reply: the conversation's and its assistant's
    /// collections searched with the prompt being answered. None without collections; a
    /// search that fails leaves the reply without sources (logged), it does not stop it.
    async fn sources(
        &self,
        p: &Principal,
        c: &Conversation,
        path: &[Message],
    ) -> Result<Vec<(Citation, String)>> {
        let Some(knowledge) = &self.knowledge else {
            return Ok(Vec::new());
        };
        let mut collections = c.collection_ids.clone();
        if let Some(id) = &c.assistant_id
            && let Some(a) = self.store.assistant(&p.user_id, id).await?
        {
            for id in a.collection_ids {
                if !collections.contains(&id) {
                    collections.push(id);
                }
            }
        }
        let Some(prompt) = path.last().filter(|m| m.role == "user") else {
            return Ok(Vec::new());
        };
        if collections.is_empty() {
            return Ok(Vec::new());
        }
        match knowledge.retrieve(p, &collections, &prompt.content).await {
            Ok(found) => Ok(found),
            Err(e @ (ChatError::Exhausted(..) | ChatError::Precondition(_))) => Err(e),
            Err(e) => {
                tracing::warn!(conversation = %c.id, error = %e, "knowledge search failed; replying without sources");
                Ok(Vec::new())
            }
        }
    }

    async fn system_prompt(&self, p: &Principal, c: &Conversation) -> Result<String> {
        if !c.system_prompt.trim().is_empty() {
            return Ok(c.system_prompt.clone());
        }
        if let Some(id) = &c.assistant_id
            && let Some(a) = self.store.assistant(&p.user_id, id).await?
        {
            return Ok(a.system_prompt);
        }
        Ok(String::new())
    }

    /// The context rule: the system prompt always stays; then the newest messages of the
    /// path that fit in the model's context minus room for the reply (max_tokens, or
    /// chat.reply_reserve_tokens). Older messages are dropped first; the prompt being
    /// answered is never dropped.
    async fn fit_context(
        &self,
        p: &Principal,
        model: &str,
        system: String,
        path: &[Message],
        sampling: &Sampling,
    ) -> Result<Vec<Turn>> {
        let system_turn = (!system.trim().is_empty()).then(|| Turn {
            role: "system".into(),
            content: system,
        });
        let mut history: Vec<Turn> = path
            .iter()
            .filter(|m| m.state != "failed")
            .map(|m| Turn {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        let reserve = sampling
            .max_tokens
            .unwrap_or(self.config.reply_reserve_tokens);
        loop {
            let turns: Vec<Turn> = system_turn
                .iter()
                .cloned()
                .chain(history.iter().cloned())
                .collect();
            let (tokens, context) = self.llm.count_tokens(p, model, turns.clone()).await?;
            if tokens.saturating_add(reserve) <= context || history.len() <= 1 {
                return Ok(turns);
            }
            history.remove(0);
        }
    }

    /// Writes a short title from the first message, in the background; on failure the
    /// default title stays and the failure is logged.
    async fn auto_title(
        &self,
        p: &Principal,
        conversation_id: &str,
        model: &str,
        path: &[Message],
    ) {
        let Some(first) = path.first() else { return };
        let excerpt: String = first.content.chars().take(500).collect();
        let turns = vec![
            Turn {
                role: "system".into(),
                content: "You write short titles. Reply with the title only.".into(),
            },
            Turn {
                role: "user".into(),
                content: format!(
                    "Write a title of at most six words for a conversation that starts with:\n{excerpt}"
                ),
            },
        ];
        let sampling = Sampling {
            temperature: Some(0.0),
            max_tokens: Some(16),
            ..Default::default()
        };
        let (_keep, stop) = oneshot::channel();
        let result = async {
            let mut rx = self.llm.generate(p, model, turns, &sampling, stop).await?;
            let mut title = String::new();
            while let Some(piece) = rx.recv().await {
                match piece {
                    ReplyPiece::Delta(d) => title.push_str(&d),
                    ReplyPiece::Done(d) if d.finish == Finish::Error => {
                        return Err(ChatError::Unavailable(d.error.unwrap_or_default()));
                    }
                    ReplyPiece::Done(_) => break,
                }
            }
            let title: String = title
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '#')
                .trim()
                .chars()
                .take(80)
                .collect();
            if title.is_empty() {
                return Err(ChatError::Unavailable(
                    "the model wrote an empty title".into(),
                ));
            }
            let mut c = self.conversation(p, conversation_id).await?;
            if ChatStore::set_title_once(&self.store.db, &c, &title).await? {
                c.title = title;
                crate::store::index_title(&self.store.db, &c).await?;
            }
            Ok::<(), ChatError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(conversation = %conversation_id, error = %e, "auto-title failed; keeping the default title");
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// The path from the root to `leaf` (inclusive), root first.
pub(crate) fn path_to<'a>(messages: &'a [Message], leaf: Option<&str>) -> Vec<&'a Message> {
    let by_id: HashMap<&str, &Message> = messages.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut path = Vec::new();
    let mut cursor = leaf;
    while let Some(id) = cursor {
        let Some(m) = by_id.get(id) else { break };
        path.push(*m);
        cursor = m.parent_id.as_deref();
        if path.len() > messages.len() {
            break; // a cycle cannot come from this code, but never loop forever
        }
    }
    path.reverse();
    path
}

fn view(messages: &[Message], m: &Message) -> MessageView {
    let siblings: Vec<&Message> = messages
        .iter()
        .filter(|x| x.parent_id == m.parent_id)
        .collect();
    let index = siblings
        .iter()
        .position(|x| x.id == m.id)
        .map_or(1, |i| i + 1);
    MessageView {
        message: m.clone(),
        sibling_index: index as u32,
        sibling_count: siblings.len().max(1) as u32,
        sibling_ids: siblings.iter().map(|x| x.id.clone()).collect(),
        code_runs: Vec::new(),
        citations: Vec::new(),
    }
}

/// The system prompt with the numbered sources after it, and how to cite them.
fn with_sources(system: String, sources: &[(Citation, String)]) -> String {
    if sources.is_empty() {
        return system;
    }
    let mut out = system;
    if !out.trim().is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(
        "Answer from the numbered sources below where they hold the answer, and cite each \
         source you use by its number in brackets, like [1]. If they do not hold the answer, \
         say so and answer from what you know.\n",
    );
    for (c, text) in sources {
        out.push_str(&format!("\n[{}] {}", c.index, c.document_name));
        if !c.headings.is_empty() {
            out.push_str(&format!(" — {}", c.headings.join(" > ")));
        }
        if c.page > 0 {
            out.push_str(&format!(" (page {})", c.page));
        }
        out.push('\n');
        out.push_str(text);
        out.push('\n');
    }
    out
}

/// The signal that stops the reply streaming in `conversation`.
fn stop_key(user_id: &str, conversation: &str) -> String {
    format!("chat.stop/{user_id}/{conversation}")
}
