//! Chat inputs with tool use: the messages of a chat, the functions a hosted model may
//! call, the calls it made and their results. Local models take plain chats only; the
//! provider adapters translate tools into each provider's own shape.

use llmesh_engine::template::Message;

use crate::error::{LlmError, Result};

/// Most tools one request may offer.
pub const MAX_TOOLS: usize = 128;
/// Most calls one assistant message may carry.
pub const MAX_CALLS: usize = 64;
/// Longest tool name.
pub const MAX_NAME: usize = 64;
/// Longest tool description, in bytes.
pub const MAX_DESCRIPTION: usize = 4096;
/// Largest parameter schema, in bytes of JSON.
pub const MAX_SCHEMA: usize = 64 * 1024;
/// Longest tool-call id.
pub const MAX_CALL_ID: usize = 128;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
    /// Assistant messages: the calls the model made.
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: the call this result answers.
    pub tool_call_id: String,
}

impl Turn {
    pub fn new(role: Role, content: impl Into<String>) -> Turn {
        Turn {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: String::new(),
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// A JSON Schema object; an empty object schema when the tool takes no arguments.
    pub parameters: serde_json::Value,
}

/// Which tools the model may or must call.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolChoice {
    #[default]
    Auto,
    None,
    /// Some tool.
    Required,
    /// This tool.
    Named(String),
}

/// A chat input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chat {
    pub turns: Vec<Turn>,
    pub tools: Vec<ToolDef>,
    pub choice: ToolChoice,
}

impl Chat {
    /// A chat of plain messages.
    pub fn plain(turns: Vec<Turn>) -> Chat {
        Chat {
            turns,
            ..Chat::default()
        }
    }

    /// True when the chat offers tools or carries calls or their results.
    pub fn uses_tools(&self) -> bool {
        !self.tools.is_empty()
            || self
                .turns
                .iter()
                .any(|t| t.role == Role::Tool || !t.tool_calls.is_empty())
    }

    /// The messages as a chat template renders them, for a local model: tools refused.
    pub fn template_messages(&self, model: &str) -> Result<Vec<Message>> {
        if self.uses_tools() {
            return Err(LlmError::Invalid(format!(
                "chat.tools: {model} runs locally and does not call tools; pick a hosted model whose provider does"
            )));
        }
        Ok(self
            .turns
            .iter()
            .map(|t| Message {
                role: t.role.as_str().into(),
                content: t.content.clone(),
            })
            .collect())
    }

    /// The name of the tool that made call `id`, from the assistant messages before
    /// (Gemini answers a call by its function's name).
    pub fn call_name(&self, id: &str) -> Option<&str> {
        self.turns
            .iter()
            .flat_map(|t| &t.tool_calls)
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }

    /// Bytes of text the tools and calls add to the prompt, for the estimate.
    pub fn tool_bytes(&self) -> usize {
        let defs: usize = self
            .tools
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
            .sum();
        let calls: usize = self
            .turns
            .iter()
            .flat_map(|t| &t.tool_calls)
            .map(|c| c.id.len() + c.name.len() + c.arguments.len())
            .sum();
        defs + calls
    }
}

/// Checks a tool or function name: 1-64 characters of A-Z, a-z, 0-9, '_' and '-' (what
/// every provider accepts).
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LlmError::Invalid(format!(
            "{field} must be 1-{MAX_NAME} characters of A-Z, a-z, 0-9, '_' and '-' (got {:?})",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Parses a tool's parameter schema: empty means no arguments; otherwise a JSON object.
pub fn parse_schema(field: &str, text: &str) -> Result<serde_json::Value> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({"type": "object", "properties": {}}));
    }
    if text.len() > MAX_SCHEMA {
        return Err(LlmError::Invalid(format!(
            "{field} is {} bytes; the limit is {MAX_SCHEMA}",
            text.len()
        )));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(LlmError::Invalid(format!(
            "{field} must be a JSON Schema object"
        ))),
        Err(e) => Err(LlmError::Invalid(format!("{field} is not JSON: {e}"))),
    }
}

/// Parses a tool choice: "" or "auto", "none", "required", or a tool's name among `tools`.
pub fn parse_choice(text: &str, tools: &[ToolDef]) -> Result<ToolChoice> {
    let choice = match text {
        "" | "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" | "any" => ToolChoice::Required,
        name => {
            if !tools.iter().any(|t| t.name == name) {
                return Err(LlmError::Invalid(format!(
                    "chat.tool_choice names {:?}, which is none of chat.tools",
                    name.chars().take(80).collect::<String>()
                )));
            }
            ToolChoice::Named(name.to_owned())
        }
    };
    if tools.is_empty() && choice != ToolChoice::Auto {
        return Err(LlmError::Invalid(
            "chat.tool_choice needs chat.tools".into(),
        ));
    }
    Ok(choice)
}

/// Checks the tool parts of a chat: names, unique tools, ids, and that every tool result
/// answers a call made before it.
pub fn check(chat: &Chat) -> Result<()> {
    if chat.tools.len() > MAX_TOOLS {
        return Err(LlmError::Invalid(format!(
            "chat.tools has {} entries; the limit is {MAX_TOOLS}",
            chat.tools.len()
        )));
    }
    for (i, t) in chat.tools.iter().enumerate() {
        check_name(&format!("chat.tools[{i}].name"), &t.name)?;
        if t.description.len() > MAX_DESCRIPTION {
            return Err(LlmError::Invalid(format!(
                "chat.tools[{i}].description is {} bytes; the limit is {MAX_DESCRIPTION}",
                t.description.len()
            )));
        }
        if chat.tools[..i].iter().any(|o| o.name == t.name) {
            return Err(LlmError::Invalid(format!(
                "chat.tools[{i}].name {} appears twice",
                t.name
            )));
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, turn) in chat.turns.iter().enumerate() {
        if !turn.tool_calls.is_empty() && turn.role != Role::Assistant {
            return Err(LlmError::Invalid(format!(
                "chat.messages[{i}].tool_calls: only assistant messages carry tool calls"
            )));
        }
        if turn.tool_calls.len() > MAX_CALLS {
            return Err(LlmError::Invalid(format!(
                "chat.messages[{i}].tool_calls has {} entries; the limit is {MAX_CALLS}",
                turn.tool_calls.len()
            )));
        }
        for (j, call) in turn.tool_calls.iter().enumerate() {
            check_call_id(&format!("chat.messages[{i}].tool_calls[{j}].id"), &call.id)?;
            check_name(
                &format!("chat.messages[{i}].tool_calls[{j}].name"),
                &call.name,
            )?;
            if serde_json::from_str::<serde_json::Value>(&call.arguments).is_err()
                && !call.arguments.is_empty()
            {
                return Err(LlmError::Invalid(format!(
                    "chat.messages[{i}].tool_calls[{j}].arguments_json is not JSON"
                )));
            }
            seen.push(&call.id);
        }
        match turn.role {
            Role::Tool => {
                check_call_id(
                    &format!("chat.messages[{i}].tool_call_id"),
                    &turn.tool_call_id,
                )?;
                if !seen.contains(&turn.tool_call_id.as_str()) {
                    return Err(LlmError::Invalid(format!(
                        "chat.messages[{i}].tool_call_id {} answers no tool call of an earlier assistant message",
                        turn.tool_call_id
                    )));
                }
            }
            _ if !turn.tool_call_id.is_empty() => {
                return Err(LlmError::Invalid(format!(
                    "chat.messages[{i}].tool_call_id: only tool messages answer a call"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_call_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_CALL_ID || id.chars().any(char::is_control) {
        return Err(LlmError::Invalid(format!(
            "{field} must be 1-{MAX_CALL_ID} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Oslo"}"#.into(),
        }
    }

    #[test]
    fn tool_results_must_answer_an_earlier_call() {
        let mut asked = Turn::new(Role::Assistant, "");
        asked.tool_calls = vec![call("c1")];
        let mut answer = Turn::new(Role::Tool, "12 °C");
        answer.tool_call_id = "c1".into();
        let chat = Chat::plain(vec![
            Turn::new(Role::User, "weather?"),
            asked,
            answer.clone(),
        ]);
        check(&chat).expect("valid");
        assert_eq!(chat.call_name("c1"), Some("get_weather"));

        let orphan = Chat::plain(vec![Turn::new(Role::User, "x"), answer]);
        let err = check(&orphan).expect_err("orphan result");
        assert!(err.to_string().contains("tool_call_id"), "{err}");
    }

    #[test]
    fn names_schemas_and_choices_are_checked() {
        assert!(check_name("n", "get_weather-2").is_ok());
        assert!(check_name("n", "").is_err());
        assert!(check_name("n", "no spaces").is_err());
        assert!(check_name("n", &"x".repeat(65)).is_err());
        assert!(parse_schema("p", "").expect("empty").is_object());
        assert!(parse_schema("p", "[1]").is_err());
        assert!(parse_schema("p", "{").is_err());
        let tools = vec![ToolDef {
            name: "f".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
        }];
        assert_eq!(
            parse_choice("f", &tools).expect("named"),
            ToolChoice::Named("f".into())
        );
        assert!(parse_choice("g", &tools).is_err());
        assert!(parse_choice("required", &[]).is_err());
    }

    #[test]
    fn local_models_refuse_tools() {
        let mut chat = Chat::plain(vec![Turn::new(Role::User, "hi")]);
        assert_eq!(chat.template_messages("m").expect("plain").len(), 1);
        chat.tools.push(ToolDef {
            name: "f".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
        });
        let err = chat.template_messages("m").expect_err("tools");
        assert!(err.to_string().contains("chat.tools"), "{err}");
    }
}
