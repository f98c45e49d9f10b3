//! `llmesh-bench import`: a ChatGPT export of the size a long-time user brings (2,000
//! conversations, 100,000 messages, about 58 MB) uploaded in chunks and imported over
//! gRPC, timing both and sampling the process's resident memory throughout, so the peak
//! growth of the import (the goal is under 100 MB) and conversations per second are
//! measured on the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use llmesh_proto::chat::v1 as pb;
use llmesh_proto::chat::v1::chat_archive_service_client::ChatArchiveServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use llmesh_tests::bearer;

use crate::{Bench, vocabulary, zipf};

pub struct Options {
    pub conversations: usize,
    pub messages: usize,
    pub postgres: Option<String>,
}

/// A ChatGPT conversations.json: each conversation a chain of user/assistant nodes under
/// an empty root, as ChatGPT writes them.
fn chatgpt_export(conversations: usize, messages: usize, rng: &mut StdRng) -> Vec<u8> {
    let words = vocabulary(20_000, rng);
    let per = (messages / conversations).max(1);
    let mut out = Vec::with_capacity(messages * 600);
    out.push(b'[');
    for c in 0..conversations {
        if c > 0 {
            out.push(b',');
        }
        let texts: Vec<String> = (0..per)
            .map(|_| {
                let len = rng.random_range(33..57);
                let text: Vec<&str> = (0..len)
                    .map(|_| words[zipf(rng, words.len())].as_str())
                    .collect();
                text.join(" ")
            })
            .collect();
        let conv = llmesh_tests::chatgpt_chain(
            &format!("{c}-"),
            &format!("Conversation {c}"),
            &texts,
            1_700_000_000.0 + c as f64 * 3600.0,
            30.0,
            "gpt-4o",
        );
        serde_json::to_writer(&mut out, &conv).expect("writes to memory");
    }
    out.push(b']');
    out
}

/// This process's resident memory in bytes, from /proc.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Samples RSS every 10 ms until dropped; `peak` holds the largest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss()));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    eprintln!(
        "writing a ChatGPT export of {} conversations, {} messages",
        o.conversations, o.messages
    );
    let file = chatgpt_export(o.conversations, o.messages, &mut rng);
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!("export is {:.1} MB", mb(file.len() as u64));
    let bench = Bench::start(o.postgres, |c| {
        c.chat.max_upload_bytes = c.chat.max_upload_bytes.max(file.len() as u64 * 2);
    })
    .await?;
    let mut archive = ChatArchiveServiceClient::new(bench.channel.clone());

    let before = rss();
    let mut sampler = Sampler::start();
    let started = Instant::now();
    let upload_id =
        llmesh_tests::upload(&bench.channel, &bench.token, "conversations.json", &file).await;
    let uploaded = started.elapsed();
    let after_upload = rss();

    let import_started = Instant::now();
    let mut stream = archive
        .import_conversations(bearer(
            &bench.token,
            pb::ImportConversationsRequest {
                upload_id,
                source: pb::ImportSource::Unspecified as i32,
            },
        ))
        .await?
        .into_inner();
    let mut first_progress = None;
    let mut report = None;
    let mut last_shown = 0;
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(pb::import_conversations_response::Event::Progress(p)) => {
                first_progress.get_or_insert(import_started.elapsed());
                if p.done >= last_shown + p.total.max(10) / 10 || p.done == p.total {
                    last_shown = p.done;
                    eprintln!(
                        "imported {}/{} ({:.0} s, {:.0} MB resident)",
                        p.done,
                        p.total,
                        import_started.elapsed().as_secs_f64(),
                        mb(rss())
                    );
                }
            }
            Some(pb::import_conversations_response::Event::Report(r)) => report = Some(r),
            None => {}
        }
    }
    let imported = import_started.elapsed();
    let peak = sampler.peak();
    let after = rss();
    let report = report.context("the import ended without a report")?;
    anyhow::ensure!(
        report.imported as usize == o.conversations,
        "imported {} of {} ({:?})",
        report.imported,
        o.conversations,
        report.skipped.first()
    );

    println!();
    println!(
        "ChatGPT import over gRPC: {}, {} conversations, {} messages, {:.1} MB file",
        bench.backend,
        o.conversations,
        o.messages,
        mb(file.len() as u64)
    );
    println!("| step | time | rate |");
    println!("|---|---|---|");
    println!(
        "| upload (chunked, sha256 checked) | {:.1} s | {:.1} MB/s |",
        uploaded.as_secs_f64(),
        mb(file.len() as u64) / uploaded.as_secs_f64()
    );
    println!(
        "| check pass (until the first conversation is written) | {:.1} s | |",
        first_progress.unwrap_or_default().as_secs_f64()
    );
    println!(
        "| import (check, then write) | {:.1} s | {:.0} conversations/s, {:.0} messages/s |",
        imported.as_secs_f64(),
        o.conversations as f64 / imported.as_secs_f64(),
        o.messages as f64 / imported.as_secs_f64()
    );
    println!();
    println!(
        "resident memory: {:.0} MB before the upload, {:.0} MB after it, peak {:.0} MB, {:.0} MB after the import",
        mb(before),
        mb(after_upload),
        mb(peak),
        mb(after)
    );
    let growth = peak.saturating_sub(before);
    println!(
        "peak growth {:.0} MB; goal < 100 MB: {}",
        mb(growth),
        if mb(growth) < 100.0 { "met" } else { "NOT met" }
    );
    bench.stop().await
}
