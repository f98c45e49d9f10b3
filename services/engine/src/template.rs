//! Chat templates: the Jinja template a GGUF file carries (`tokenizer.chat_template`),
//! rendered with minijinja, or ChatML when the file has none.

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;

use crate::error::{EngineError, Result};

/// One chat message as templates see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

/// ChatML, the fallback for models that ship no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`, or ChatML when it is `None`.
    pub fn new(source: Option<String>, bos: String, eos: String) -> Result<Self> {
        let source = source.unwrap_or_else(|| CHATML.to_owned());
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.clone())
            .map_err(|e| {
                EngineError::Load(format!("the model's chat template does not compile: {e}"))
            })?;
        Ok(ChatTemplate {
            env,
            source,
            bos,
            eos,
        })
    }

    /// Renders messages into a prompt that ends where the assistant's reply begins.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Invalid(format!("chat template: {e}")))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| {
                EngineError::Invalid(format!("the chat template refused the messages: {e}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::new(None, String::new(), String::new()).expect("compiles");
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_exceptions() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip() }}";
        let t =
            ChatTemplate::new(Some(src.into()), String::new(), String::new()).expect("compiles");
        assert_eq!(t.render(&[msg("user", "  x  ")]).expect("renders"), "x");
        let err = t.render(&[msg("system", "x")]).expect_err("raises");
        assert!(err.to_string().contains("first must be user"));
    }
}
