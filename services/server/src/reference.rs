//! The API reference the web UI shows at `/docs`: every service, RPC, message, field and
//! enum with its comment from proto/, read from the same descriptor set reflection
//! serves, and each RPC with the access rule the authentication layer enforces, the
//! errors it documents and a `buf curl` line. Served as JSON at `/api/reference.json`,
//! so the page describes exactly what this binary runs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use llmesh_kit::Access;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use serde::Serialize;

/// Where the reference is served.
pub const PATH: &str = "/api/reference.json";

/// The access tables of every service llmesh defines, whether or not this process runs it.
pub fn access_tables() -> Vec<llmesh_kit::principal::AccessTable> {
    vec![
        llmesh_auth::ACCESS,
        llmesh_billing::ACCESS,
        llmesh_llm::ACCESS,
        llmesh_chat::ACCESS,
        llmesh_chat::ARCHIVE_ACCESS,
        llmesh_chat::KNOWLEDGE_ACCESS,
        llmesh_sandbox::ACCESS,
    ]
}

#[derive(Debug, Serialize)]
pub struct Reference {
    pub services: Vec<Service>,
    pub messages: Vec<MessageDoc>,
    pub enums: Vec<EnumDoc>,
}

#[derive(Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub file: String,
    pub comment: String,
    pub methods: Vec<Method>,
}

#[derive(Debug, Serialize)]
pub struct Method {
    pub name: String,
    /// The HTTP/2 path, `/package.Service/Method`.
    pub path: String,
    pub comment: String,
    pub request: String,
    pub response: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
    /// `public`, `viewer`, `member`, `member-session`, `viewer-session`, `admin` or
    /// `service`; `unlisted` would mean the authentication layer refuses every call.
    pub access: String,
    /// Who may call it, in words.
    pub access_note: String,
    pub errors: Vec<ErrorDoc>,
    pub example: String,
}

#[derive(Debug, Serialize)]
pub struct ErrorDoc {
    pub code: String,
    pub when: String,
}

#[derive(Debug, Serialize)]
pub struct MessageDoc {
    pub name: String,
    pub comment: String,
    pub fields: Vec<FieldDoc>,
}

#[derive(Debug, Serialize)]
pub struct FieldDoc {
    pub name: String,
    pub json_name: String,
    pub number: i32,
    /// A scalar (`string`, `uint32`, …) or a full message or enum name.
    pub r#type: String,
    /// `repeated`, `optional`, `map` or empty.
    pub label: String,
    /// The oneof it belongs to, if any.
    pub oneof: String,
    pub comment: String,
}

#[derive(Debug, Serialize)]
pub struct EnumDoc {
    pub name: String,
    pub comment: String,
    pub values: Vec<EnumValueDoc>,
}

#[derive(Debug, Serialize)]
pub struct EnumValueDoc {
    pub name: String,
    pub number: i32,
    pub comment: String,
}

fn access_words(access: Access) -> (&'static str, &'static str) {
    match access {
        Access::Public => ("public", "Anyone, signed in or not."),
        Access::Viewer => (
            "viewer",
            "Any signed-in user (viewer, member or admin), by session token or API key.",
        ),
        Access::Member => (
            "member",
            "Members and admins, by session token or API key; viewers are read-only.",
        ),
        Access::MemberSession => (
            "member-session",
            "Members and admins through a signed-in session; API keys are refused.",
        ),
        Access::ViewerSession => (
            "viewer-session",
            "Any signed-in user through a session; API keys are refused.",
        ),
        Access::Admin => (
            "admin",
            "Admins through a signed-in session; API keys are refused.",
        ),
        Access::Service => (
            "service",
            "Other llmesh services only, with the service credential (peers.service_token).",
        ),
    }
}

/// The errors the access rule itself brings.
fn access_errors(access: Access) -> Vec<ErrorDoc> {
    let denied = match access {
        Access::Public => return Vec::new(),
        Access::Viewer => None,
        Access::Member => Some("for viewers"),
        Access::MemberSession => Some("for viewers and for API keys"),
        Access::ViewerSession => Some("for API keys"),
        Access::Admin => Some("for anyone but an admin's session"),
        Access::Service => Some("for anything but another llmesh service"),
    };
    let mut out = vec![ErrorDoc {
        code: "UNAUTHENTICATED".into(),
        when: "without a valid session token or API key (authorization: Bearer …, or x-api-key)"
            .into(),
    }];
    if let Some(who) = denied {
        out.push(ErrorDoc {
            code: "PERMISSION_DENIED".into(),
            when: who.into(),
        });
    }
    out
}

const CODES: &[&str] = &[
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "INTERNAL",
];

/// The status codes a comment names, each with the sentence that names it.
fn documented_errors(comment: &str) -> Vec<ErrorDoc> {
    let flat = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentences: Vec<&str> = flat
        .split_inclusive(". ")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = Vec::new();
    for code in CODES {
        if let Some(s) = sentences.iter().find(|s| names_code(s, code)) {
            out.push(ErrorDoc {
                code: (*code).into(),
                when: s.trim_end_matches('.').to_owned(),
            });
        }
    }
    out
}

fn names_code(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + code.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

/// Comments by source location path.
struct Comments(HashMap<Vec<i32>, String>);

impl Comments {
    fn of(file: &prost_types::FileDescriptorProto) -> Self {
        let mut map = HashMap::new();
        if let Some(info) = &file.source_code_info {
            for loc in &info.location {
                let mut text = String::new();
                for c in loc.leading_comments.iter().chain(&loc.trailing_comments) {
                    let c = c.trim();
                    if !c.is_empty() {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&c.lines().map(str::trim).collect::<Vec<_>>().join("\n"));
                    }
                }
                if !text.is_empty() {
                    map.insert(loc.path.clone(), text);
                }
            }
        }
        Comments(map)
    }

    fn at(&self, path: &[i32]) -> String {
        self.0.get(path).cloned().unwrap_or_default()
    }
}

// Field numbers of descriptor.proto, for source locations.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

/// The source location path of item `index` of `field` under `path`.
fn child(path: &[i32], field: i32, index: usize) -> Vec<i32> {
    let mut p = path.to_vec();
    p.extend([field, index as i32]);
    p
}

fn scalar(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => "",
    }
}

struct Builder {
    messages: Vec<MessageDoc>,
    enums: Vec<EnumDoc>,
    /// Map entry messages by full name: (key type, value type).
    map_entries: HashMap<String, (String, String)>,
}

impl Builder {
    fn field_type(f: &prost_types::FieldDescriptorProto) -> String {
        match f.r#type() {
            Type::Message | Type::Enum | Type::Group => {
                f.type_name().trim_start_matches('.').to_owned()
            }
            t => scalar(t).to_owned(),
        }
    }

    fn message(&mut self, m: &DescriptorProto, scope: &str, path: Vec<i32>, comments: &Comments) {
        let name = format!("{scope}.{}", m.name());
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            let ty = |n: &str| {
                m.field
                    .iter()
                    .find(|f| f.name() == n)
                    .map(Self::field_type)
                    .unwrap_or_default()
            };
            self.map_entries.insert(name, (ty("key"), ty("value")));
            return;
        }
        for (k, nested) in m.nested_type.iter().enumerate() {
            self.message(nested, &name, child(&path, MESSAGE_NESTED, k), comments);
        }
        for (k, e) in m.enum_type.iter().enumerate() {
            self.enumeration(e, &name, child(&path, MESSAGE_ENUM, k), comments);
        }
        let fields = m
            .field
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let p = child(&path, MESSAGE_FIELD, j);
                let oneof = match f.oneof_index {
                    Some(i) if !f.proto3_optional() => m
                        .oneof_decl
                        .get(i as usize)
                        .map(|o| o.name().to_owned())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let label = if f.label() == Label::Repeated {
                    "repeated"
                } else if f.proto3_optional() {
                    "optional"
                } else {
                    ""
                };
                FieldDoc {
                    name: f.name().to_owned(),
                    json_name: f.json_name().to_owned(),
                    number: f.number(),
                    r#type: Self::field_type(f),
                    label: label.to_owned(),
                    oneof,
                    comment: comments.at(&p),
                }
            })
            .collect();
        self.messages.push(MessageDoc {
            name,
            comment: comments.at(&path),
            fields,
        });
    }

    fn enumeration(
        &mut self,
        e: &EnumDescriptorProto,
        scope: &str,
        path: Vec<i32>,
        comments: &Comments,
    ) {
        let values = e
            .value
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let p = child(&path, ENUM_VALUE, j);
                EnumValueDoc {
                    name: v.name().to_owned(),
                    number: v.number(),
                    comment: comments.at(&p),
                }
            })
            .collect();
        self.enums.push(EnumDoc {
            name: format!("{scope}.{}", e.name()),
            comment: comments.at(&path),
            values,
        });
    }

    /// Turns map entries into `map<k, v>` fields.
    fn resolve_maps(&mut self) {
        for m in &mut self.messages {
            for f in &mut m.fields {
                if let Some((k, v)) = self.map_entries.get(&f.r#type) {
                    f.r#type = format!("map<{k}, {v}>");
                    f.label = "map".into();
                }
            }
        }
    }
}

/// A request body for the `buf curl` line: each top-level field with a placeholder (the
/// first member of each oneof only).
fn example_body(request: Option<&MessageDoc>, enums: &[EnumDoc]) -> String {
    let Some(m) = request else {
        return "{}".into();
    };
    let mut seen_oneofs = Vec::new();
    let mut parts = Vec::new();
    for f in &m.fields {
        if !f.oneof.is_empty() {
            if seen_oneofs.contains(&f.oneof) {
                continue;
            }
            seen_oneofs.push(f.oneof.clone());
        }
        let value = match (f.label.as_str(), f.r#type.as_str()) {
            ("map", _) => "{}".to_owned(),
            ("repeated", _) => "[]".to_owned(),
            (_, "string") => "\"…\"".to_owned(),
            (_, "bool") => "false".to_owned(),
            (_, "bytes") => "\"\"".to_owned(),
            (_, "int64" | "uint64" | "sint64" | "fixed64" | "sfixed64") => "\"0\"".to_owned(),
            (_, "int32" | "uint32" | "sint32" | "fixed32" | "sfixed32" | "double" | "float") => {
                "0".to_owned()
            }
            (_, other) => match enums.iter().find(|e| e.name == other) {
                Some(e) => format!(
                    "\"{}\"",
                    e.values
                        .iter()
                        .find(|v| v.number != 0)
                        .or(e.values.first())
                        .map(|v| v.name.as_str())
                        .unwrap_or("")
                ),
                None => "{}".to_owned(),
            },
        };
        parts.push(format!("\"{}\":{value}", f.json_name));
    }
    format!("{{{}}}", parts.join(","))
}

fn example(method: &Method, body: &str, access: Option<Access>) -> String {
    let auth = match access {
        Some(Access::Public) => "",
        Some(Access::Service) => " -H \"authorization: Bearer $LLMESH_SERVICE_TOKEN\"",
        _ => " -H \"authorization: Bearer $LLMESH_TOKEN\"",
    };
    let url = format!("\"${{LLMESH_URL:-http://127.0.0.1:7700}}{}\"", method.path);
    if method.client_streaming {
        // A stream of requests: one JSON object per message on stdin.
        format!(
            "buf curl --protocol grpc --http2-prior-knowledge{auth} \\\n  {url} \\\n  -d @- <<'EOF'\n{body}\nEOF"
        )
    } else {
        format!(
            "buf curl --protocol grpc --http2-prior-knowledge{auth} \\\n  -d '{body}' \\\n  {url}"
        )
    }
}

/// Builds the reference from a descriptor set and access tables.
pub fn build(
    descriptor_set: &[u8],
    tables: &[llmesh_kit::principal::AccessTable],
) -> Result<Reference, prost::DecodeError> {
    let fds = FileDescriptorSet::decode(descriptor_set)?;
    let access: HashMap<&str, Access> = tables.iter().flat_map(|t| t.iter().copied()).collect();
    let mut b = Builder {
        messages: Vec::new(),
        enums: Vec::new(),
        map_entries: HashMap::new(),
    };
    let mut services = Vec::new();
    let files: Vec<_> = fds
        .file
        .iter()
        .filter(|f| f.package().starts_with("llmesh."))
        .map(|f| (f, Comments::of(f)))
        .collect();
    for (file, comments) in &files {
        let package = file.package();
        for (i, m) in file.message_type.iter().enumerate() {
            b.message(m, package, vec![FILE_MESSAGE, i as i32], comments);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            b.enumeration(e, package, vec![FILE_ENUM, i as i32], comments);
        }
    }
    b.resolve_maps();
    for (file, comments) in &files {
        let package = file.package();
        for (i, s) in file.service.iter().enumerate() {
            let full = format!("{package}.{}", s.name());
            let methods = s
                .method
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let path = format!("/{full}/{}", m.name());
                    let comment = comments.at(&[FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32]);
                    let rule = access.get(path.as_str()).copied();
                    let (access_name, access_note) = match rule {
                        Some(a) => access_words(a),
                        None => ("unlisted", "Not in any access table: every call is refused."),
                    };
                    let request = m.input_type().trim_start_matches('.').to_owned();
                    let mut errors = documented_errors(&comment);
                    for e in rule.map(access_errors).unwrap_or_default() {
                        if !errors.iter().any(|x| x.code == e.code) {
                            errors.push(e);
                        }
                    }
                    let request_doc = b.messages.iter().find(|x| x.name == request);
                    if request_doc.is_some_and(|r| !r.fields.is_empty())
                        && !errors.iter().any(|x| x.code == "INVALID_ARGUMENT")
                    {
                        errors.push(ErrorDoc {
                            code: "INVALID_ARGUMENT".into(),
                            when: "a field is missing, too long or out of range; the message names the field".into(),
                        });
                    }
                    let mut method = Method {
                        name: m.name().to_owned(),
                        path,
                        comment,
                        request,
                        response: m.output_type().trim_start_matches('.').to_owned(),
                        client_streaming: m.client_streaming(),
                        server_streaming: m.server_streaming(),
                        access: access_name.to_owned(),
                        access_note: access_note.to_owned(),
                        errors,
                        example: String::new(),
                    };
                    method.example = example(&method, &example_body(request_doc, &b.enums), rule);
                    method
                })
                .collect();
            services.push(Service {
                name: full,
                file: file.name().to_owned(),
                comment: comments.at(&[FILE_SERVICE, i as i32]),
                methods,
            });
        }
    }
    b.messages.sort_by(|x, y| x.name.cmp(&y.name));
    b.enums.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(Reference {
        services,
        messages: b.messages,
        enums: b.enums,
    })
}

/// `GET /api/reference.json`, built once from the binary's own descriptor set.
pub fn route() -> llmesh_kit::web::HttpRoute {
    static JSON: OnceLock<bytes::Bytes> = OnceLock::new();
    let handler: llmesh_kit::web::HttpHandler = Arc::new(|req| {
        Box::pin(async move {
            let json = JSON.get_or_init(|| {
                let reference = build(llmesh_proto::FILE_DESCRIPTOR_SET, &access_tables())
                    .expect("the binary's own descriptor set decodes");
                bytes::Bytes::from(serde_json::to_vec(&reference).unwrap_or_default())
            });
            let mut resp = http::Response::new(tonic::body::Body::empty());
            if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
                *resp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
                return resp;
            }
            if req.uri().path() != PATH {
                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                return resp;
            }
            let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
                json.clone(),
            )));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            );
            resp
        })
    });
    llmesh_kit::web::HttpRoute {
        prefix: PATH,
        handler,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_rule_comment_and_example() {
        let r = build(llmesh_proto::FILE_DESCRIPTOR_SET, &access_tables()).expect("builds");
        assert!(r.services.len() >= 7, "{}", r.services.len());
        for s in &r.services {
            for m in &s.methods {
                assert_ne!(m.access, "unlisted", "{} has no access rule", m.path);
                assert!(m.example.contains(&m.path), "{}", m.example);
            }
        }
        let send = r
            .services
            .iter()
            .flat_map(|s| &s.methods)
            .find(|m| m.path == "/llmesh.chat.v1.ChatService/SendMessage")
            .expect("SendMessage");
        assert_eq!(send.access, "member");
        assert!(send.server_streaming);
        assert!(!send.comment.is_empty());
        assert!(send.errors.iter().any(|e| e.code == "UNAUTHENTICATED"));
        let req = r
            .messages
            .iter()
            .find(|m| m.name == send.request)
            .expect("request message");
        assert!(req.fields.iter().any(|f| !f.comment.is_empty()));
    }

    #[test]
    fn errors_come_from_the_sentence_that_names_them() {
        let e = documented_errors(
            "Imports a finished upload. INVALID_ARGUMENT names the path of the bad field. \
             One transaction per conversation.",
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, "INVALID_ARGUMENT");
        assert_eq!(
            e[0].when,
            "INVALID_ARGUMENT names the path of the bad field"
        );
        assert!(documented_errors("XINVALID_ARGUMENTS").is_empty());
    }
}
