//! The API reference a running server serves for `/docs`: every RPC written in proto/
//! appears, with the access rule the authentication layer enforces for it.

use std::collections::HashMap;

use llmesh_kit::Access;
use llmesh_tests::{Backend, TestServer, http_get};

/// (package.Service, Method) for every `rpc` in the .proto files, read as text.
fn rpcs_in_proto() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("proto dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                files.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("proto file");
        let mut package = String::new();
        let mut service = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with("//") {
                continue;
            }
            if let Some(p) = line.strip_prefix("package ") {
                package = p.trim_end_matches(';').trim().to_owned();
            } else if let Some(s) = line.strip_prefix("service ") {
                service = s.trim_end_matches('{').trim().to_owned();
            } else if let Some(r) = line.strip_prefix("rpc ") {
                let name = r.split('(').next().expect("name").trim().to_owned();
                out.push((format!("{package}.{service}"), name));
            }
        }
    }
    out.sort();
    out
}

fn rule_name(a: Access) -> &'static str {
    match a {
        Access::Public => "public",
        Access::Viewer => "viewer",
        Access::Member => "member",
        Access::MemberSession => "member-session",
        Access::ViewerSession => "viewer-session",
        Access::Admin => "admin",
        Access::Service => "service",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_in_proto_is_documented_with_its_access_rule() {
    let s = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    // Public: no credentials.
    let (status, headers, body) = http_get(&format!("{}/api/reference.json", s.url)).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    let documented: HashMap<String, &serde_json::Value> = doc["services"]
        .as_array()
        .expect("services")
        .iter()
        .flat_map(|s| s["methods"].as_array().expect("methods"))
        .map(|m| (m["path"].as_str().expect("path").to_owned(), m))
        .collect();
    let tables: HashMap<&str, Access> = llmesh::reference::access_tables()
        .into_iter()
        .flat_map(|t| t.iter().copied())
        .collect();

    let rpcs = rpcs_in_proto();
    assert!(rpcs.len() > 50, "only {} rpcs found in proto/", rpcs.len());
    let mut problems = Vec::new();
    for (service, method) in &rpcs {
        let path = format!("/{service}/{method}");
        let Some(m) = documented.get(&path) else {
            problems.push(format!("{path} is missing from the reference"));
            continue;
        };
        let Some(rule) = tables.get(path.as_str()) else {
            problems.push(format!("{path} has no access rule in the service's table"));
            continue;
        };
        if m["access"] != rule_name(*rule) {
            problems.push(format!(
                "{path}: reference says {}, the table {}",
                m["access"],
                rule_name(*rule)
            ));
        }
        if m["access_note"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{path} has no access note"));
        }
        if !m["example"].as_str().unwrap_or("").contains(&path) {
            problems.push(format!("{path}: the example does not call it"));
        }
    }
    assert_eq!(
        documented.len(),
        rpcs.len(),
        "the reference documents RPCs that proto/ does not declare"
    );
    assert!(problems.is_empty(), "{problems:#?}");

    // Comments travel from proto/ to the page, with the errors they name.
    let import = documented["/llmesh.chat.v1.ChatArchiveService/ImportConversations"];
    assert!(
        import["comment"]
            .as_str()
            .expect("comment")
            .contains("detected when source is unspecified"),
        "{import}"
    );
    let codes: Vec<&str> = import["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["code"].as_str().expect("code"))
        .collect();
    assert!(codes.contains(&"INVALID_ARGUMENT") && codes.contains(&"UNAUTHENTICATED"));
    let source = doc["enums"]
        .as_array()
        .expect("enums")
        .iter()
        .find(|e| e["name"] == "llmesh.chat.v1.ImportSource")
        .expect("ImportSource");
    assert!(
        source["values"]
            .as_array()
            .expect("values")
            .iter()
            .any(|v| v["name"] == "IMPORT_SOURCE_OPEN_WEBUI"
                && v["comment"]
                    .as_str()
                    .is_some_and(|c| c.contains("Open WebUI")))
    );
}
