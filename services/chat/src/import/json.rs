//! Reading untrusted JSON by path: every accessor names the field it was asked for
//! (`$[3].chat.history.messages["a1"].role`) when the value has the wrong type, so an
//! import fails with INVALID_ARGUMENT that says where.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use crate::error::{ChatError, Result};

/// A value and the path it was found at.
#[derive(Clone)]
pub(crate) struct Node<'a> {
    pub value: &'a Value,
    pub path: String,
}

static NULL: Value = Value::Null;

impl<'a> Node<'a> {
    pub fn root(value: &'a Value) -> Self {
        Self::at(value, "$".into())
    }

    /// A value found at `path` (an item of a file read a conversation at a time).
    pub fn at(value: &'a Value, path: String) -> Self {
        Node { value, path }
    }

    /// A field of an object (null when missing or when this is not an object).
    pub fn get(&self, name: &str) -> Node<'a> {
        Node {
            value: self.value.get(name).unwrap_or(&NULL),
            path: format!("{}.{name}", self.path),
        }
    }

    /// The first of several field names that is present.
    pub fn first(&self, names: &[&str]) -> Node<'a> {
        let name = names
            .iter()
            .find(|n| self.value.get(**n).is_some_and(|v| !v.is_null()))
            .unwrap_or(&names[0]);
        self.get(name)
    }

    pub fn is_absent(&self) -> bool {
        self.value.is_null()
    }

    /// The items of an array, each with its path; missing or null is empty.
    pub fn items(&self) -> Result<Vec<Node<'a>>> {
        match self.value {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, v)| Node {
                    value: v,
                    path: format!("{}[{i}]", self.path),
                })
                .collect()),
            _ => Err(self.wrong("an array")),
        }
    }

    /// The entries of an object, each with its path; missing or null is empty.
    pub fn entries(&self) -> Result<Vec<(&'a String, Node<'a>)>> {
        match self.value {
            Value::Null => Ok(Vec::new()),
            Value::Object(o) => Ok(entries(o, &self.path)),
            _ => Err(self.wrong("an object")),
        }
    }

    pub fn object(&self) -> Result<&'a Map<String, Value>> {
        self.value
            .as_object()
            .ok_or_else(|| self.wrong("an object"))
    }

    /// A string; missing or null is `None`.
    pub fn str(&self) -> Result<Option<&'a str>> {
        match self.value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            _ => Err(self.wrong("a string")),
        }
    }

    pub fn string(&self) -> Result<String> {
        Ok(self.str()?.unwrap_or_default().to_owned())
    }

    /// A string or a number (ids are either in some exports).
    pub fn id(&self) -> Result<Option<String>> {
        match self.value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            _ => Err(self.wrong("a string id")),
        }
    }

    pub fn bool(&self) -> Result<bool> {
        match self.value {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            _ => Err(self.wrong("true or false")),
        }
    }

    /// A time: a number of seconds (milliseconds when `millis`) since 1970, or an ISO 8601
    /// text (UTC when it names no offset). Missing or null is `None`.
    pub fn time(&self, millis: bool) -> Result<Option<DateTime<Utc>>> {
        match self.value {
            Value::Null => Ok(None),
            Value::Number(n) => {
                let n = n
                    .as_f64()
                    .ok_or_else(|| self.wrong("a number of seconds"))?;
                // Seconds past the year 5000 are milliseconds written where seconds belong.
                let micros = if millis || n > 1e11 { n * 1e3 } else { n * 1e6 };
                if !micros.is_finite() {
                    return Err(self.wrong("a finite time"));
                }
                DateTime::from_timestamp_micros(micros as i64)
                    .map(Some)
                    .ok_or_else(|| self.wrong("a time within range"))
            }
            Value::String(s) => {
                if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                    return Ok(Some(t.with_timezone(&Utc)));
                }
                for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                    if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
                        return Ok(Some(t.and_utc()));
                    }
                }
                Err(self.wrong("an ISO 8601 time"))
            }
            _ => Err(self.wrong("a time")),
        }
    }

    pub fn wrong(&self, expected: &str) -> ChatError {
        ChatError::Invalid(format!("{}: expected {expected}", self.path))
    }
}

fn entries<'a>(o: &'a Map<String, Value>, path: &str) -> Vec<(&'a String, Node<'a>)> {
    o.iter()
        .map(|(k, v)| {
            (
                k,
                Node {
                    value: v,
                    path: format!("{path}[{k:?}]"),
                },
            )
        })
        .collect()
}
