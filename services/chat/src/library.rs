//! Assistants and prompt templates: the caller's own, plus global ones that only admins
//! create and change.

use std::collections::HashMap;

use llmesh_kit::Principal;

use crate::error::{ChatError, Result};
use crate::service::{ChatService, check_text, new_id};
use crate::store::{Assistant, Template};
use crate::template_vars;

impl ChatService {
    // ---- assistants ----

    pub async fn create_assistant(&self, p: &Principal, mut a: Assistant) -> Result<Assistant> {
        validate_assistant(&a, self.config.max_system_prompt_chars)?;
        if a.global && !p.is_admin() {
            return Err(ChatError::PermissionDenied(
                "only admins can create global assistants".into(),
            ));
        }
        a.collection_ids = self
            .attached(p, "assistant.collection_ids", &a.collection_ids)
            .await?;
        a.id = new_id();
        a.owner_id = p.user_id.clone();
        self.store.insert_assistant(&a, self.clock.now()).await?;
        Ok(a)
    }

    pub async fn assistants(&self, p: &Principal) -> Result<Vec<Assistant>> {
        Ok(self.store.assistants(&p.user_id).await?)
    }

    pub async fn assistant(&self, p: &Principal, id: &str) -> Result<Assistant> {
        self.store
            .assistant(&p.user_id, id)
            .await?
            .ok_or(ChatError::NotFound("assistant"))
    }

    /// An assistant the caller may change: their own, or any global one for admins.
    async fn writable_assistant(&self, p: &Principal, id: &str) -> Result<Assistant> {
        let a = self.assistant(p, id).await?;
        let mine = a.owner_id == p.user_id && !a.global;
        if mine || (a.global && p.is_admin()) {
            Ok(a)
        } else if a.global {
            Err(ChatError::PermissionDenied(
                "only admins can change global assistants".into(),
            ))
        } else {
            Err(ChatError::NotFound("assistant"))
        }
    }

    pub async fn update_assistant(&self, p: &Principal, a: Assistant) -> Result<Assistant> {
        let current = self.writable_assistant(p, &a.id).await?;
        validate_assistant(&a, self.config.max_system_prompt_chars)?;
        // Collections already attached stay even if the editor cannot read them (an admin
        // keeps a global assistant's); new ones must be readable.
        let mut kept = Vec::new();
        let mut added = Vec::new();
        for id in &a.collection_ids {
            if current.collection_ids.contains(id) {
                kept.push(id.clone());
            } else {
                added.push(id.clone());
            }
        }
        kept.extend(self.attached(p, "assistant.collection_ids", &added).await?);
        if kept.len() > crate::knowledge::MAX_ATTACHED {
            return Err(ChatError::Invalid(format!(
                "assistant.collection_ids holds {} collections; the limit is {}",
                kept.len(),
                crate::knowledge::MAX_ATTACHED
            )));
        }
        let updated = Assistant {
            owner_id: current.owner_id,
            global: current.global,
            collection_ids: kept,
            ..a
        };
        self.store
            .update_assistant(&updated, self.clock.now())
            .await?;
        Ok(updated)
    }

    pub async fn delete_assistant(&self, p: &Principal, id: &str) -> Result<()> {
        self.writable_assistant(p, id).await?;
        self.store.delete_assistant(id).await?;
        Ok(())
    }

    // ---- templates ----

    pub async fn create_template(
        &self,
        p: &Principal,
        mut t: Template,
    ) -> Result<(Template, Vec<String>)> {
        let vars = validate_template(&t)?;
        if t.global && !p.is_admin() {
            return Err(ChatError::PermissionDenied(
                "only admins can create global templates".into(),
            ));
        }
        t.id = new_id();
        t.owner_id = p.user_id.clone();
        self.store.insert_template(&t, self.clock.now()).await?;
        Ok((t, vars))
    }

    pub async fn templates(
        &self,
        p: &Principal,
        category: Option<&str>,
    ) -> Result<Vec<(Template, Vec<String>)>> {
        let list = self.store.templates(&p.user_id, category).await?;
        Ok(list
            .into_iter()
            .map(|t| {
                let vars = template_vars::variables(&t.body).unwrap_or_default();
                (t, vars)
            })
            .collect())
    }

    async fn writable_template(&self, p: &Principal, id: &str) -> Result<Template> {
        let t = self
            .store
            .template(&p.user_id, id)
            .await?
            .ok_or(ChatError::NotFound("template"))?;
        let mine = t.owner_id == p.user_id && !t.global;
        if mine || (t.global && p.is_admin()) {
            Ok(t)
        } else if t.global {
            Err(ChatError::PermissionDenied(
                "only admins can change global templates".into(),
            ))
        } else {
            Err(ChatError::NotFound("template"))
        }
    }

    pub async fn update_template(
        &self,
        p: &Principal,
        t: Template,
    ) -> Result<(Template, Vec<String>)> {
        let current = self.writable_template(p, &t.id).await?;
        let vars = validate_template(&t)?;
        let updated = Template {
            owner_id: current.owner_id,
            global: current.global,
            ..t
        };
        self.store
            .update_template(&updated, self.clock.now())
            .await?;
        Ok((updated, vars))
    }

    pub async fn delete_template(&self, p: &Principal, id: &str) -> Result<()> {
        self.writable_template(p, id).await?;
        self.store.delete_template(id).await?;
        Ok(())
    }

    pub async fn render_template(
        &self,
        p: &Principal,
        id: &str,
        values: &HashMap<String, String>,
    ) -> Result<String> {
        let t = self
            .store
            .template(&p.user_id, id)
            .await?
            .ok_or(ChatError::NotFound("template"))?;
        template_vars::render(&t.body, values)
    }
}

fn validate_assistant(a: &Assistant, max_prompt: usize) -> Result<()> {
    check_text("name", &a.name, 100, true)?;
    check_text("description", &a.description, 1000, false)?;
    check_text("icon", &a.icon, 64, false)?;
    check_text("system_prompt", &a.system_prompt, max_prompt, false)?;
    check_text("model", &a.model, crate::service::MAX_MODEL_ID, false)
}

fn validate_template(t: &Template) -> Result<Vec<String>> {
    check_text("name", &t.name, 100, true)?;
    check_text("category", &t.category, 50, false)?;
    check_text("body", &t.body, 20_000, true)?;
    template_vars::variables(&t.body)
}
