//! Input checks shared by every adapter; each failure names the field and the rule.

use crate::ApiError;

/// Checks a free-text field: trimmed length in 1..=max characters and no control
/// characters other than newline and tab when `multiline`.
pub fn text(field: &str, value: &str, max_chars: usize, multiline: bool) -> Result<(), ApiError> {
    let count = value.chars().count();
    if value.trim().is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if count > max_chars {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {max_chars} characters (got {count})"
        )));
    }
    let bad = value
        .chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t' || c == '\r')));
    if bad {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// Parses a UUID id field.
pub fn id(field: &str, value: &str) -> Result<uuid::Uuid, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(format!("{field} is required")));
    }
    uuid::Uuid::parse_str(value)
        .map_err(|_| ApiError::invalid(format!("{field} must be a UUID (got {value:?})")))
}

/// Resolves a page size: 0 means `default`, above `max` is refused.
pub fn page_size(value: u32, default: u32, max: u32) -> Result<u64, ApiError> {
    match value {
        0 => Ok(u64::from(default)),
        v if v > max => Err(ApiError::invalid(format!(
            "page_size must be at most {max} (got {v})"
        ))),
        v => Ok(u64::from(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert!(text("name", "ok", 10, false).is_ok());
        assert!(text("name", "  ", 10, false).is_err());
        assert!(text("name", "a\u{7}b", 10, false).is_err());
        assert!(text("name", "a\nb", 10, true).is_ok());
        assert!(text("name", "a\nb", 10, false).is_err());
        assert!(text("name", "ééééé", 5, false).is_ok());
        assert!(text("name", "éééééé", 5, false).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0, 50, 200).ok(), Some(50));
        assert_eq!(page_size(7, 50, 200).ok(), Some(7));
        assert!(page_size(201, 50, 200).is_err());
    }
}
