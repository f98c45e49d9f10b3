//! `{{variable}}` placeholders in prompt templates.

use std::collections::HashMap;

use crate::error::{ChatError, Result};

/// Returns the variables of a template in order of first appearance, or says where a
/// placeholder is malformed.
pub fn variables(body: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for piece in parse(body)? {
        if let Piece::Var(name) = piece
            && !out.iter().any(|v| v == name)
        {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Fills every placeholder; a missing or an unknown value is an error naming it.
pub fn render(body: &str, values: &HashMap<String, String>) -> Result<String> {
    let vars = variables(body)?;
    let missing: Vec<&str> = vars
        .iter()
        .filter(|v| !values.contains_key(*v))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ChatError::Invalid(format!(
            "missing value for {}",
            missing.join(", ")
        )));
    }
    let mut unknown: Vec<&str> = values
        .keys()
        .filter(|k| !vars.contains(k))
        .map(String::as_str)
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        return Err(ChatError::Invalid(format!(
            "unknown variable {} (the template has {})",
            unknown.join(", "),
            if vars.is_empty() {
                "none".to_owned()
            } else {
                vars.join(", ")
            }
        )));
    }
    let mut out = String::with_capacity(body.len());
    for piece in parse(body)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => out.push_str(&values[name]),
        }
    }
    Ok(out)
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn parse(body: &str) -> Result<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let mut rest = body;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        pieces.push(Piece::Text(&rest[..open]));
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            ChatError::Invalid(format!("unclosed {{{{ at byte {}", offset + open))
        })?;
        let name = after[..close].trim();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ChatError::Invalid(format!(
                "placeholder {{{{{}}}}} at byte {} must be a name of letters, digits and _",
                &after[..close],
                offset + open
            )));
        }
        pieces.push(Piece::Var(name));
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if let Some(stray) = rest.find("}}") {
        return Err(ChatError::Invalid(format!(
            "stray }}}} at byte {}",
            offset + stray
        )));
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn finds_and_fills_variables() {
        let body = "Translate {{ text }} into {{lang}}. Again: {{text}}";
        assert_eq!(
            variables(body).ok(),
            Some(vec!["text".to_owned(), "lang".to_owned()])
        );
        assert_eq!(
            render(body, &values(&[("text", "hi"), ("lang", "French")]))
                .ok()
                .as_deref(),
            Some("Translate hi into French. Again: hi")
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let err = render("{{a}} {{b}}", &values(&[("a", "1")])).expect_err("missing");
        assert!(err.to_string().contains("missing value for b"));
        let err = render("{{a}}", &values(&[("a", "1"), ("z", "2")])).expect_err("unknown");
        assert!(err.to_string().contains("unknown variable z"));
        for bad in ["{{", "{{ }}", "{{1x}}", "{{a-b}}", "x }} y"] {
            assert!(variables(bad).is_err(), "{bad}");
        }
    }
}
