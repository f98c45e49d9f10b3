//! Generates a reply with a GGUF model from the command line, for trying the engine alone:
//! `cargo run -p llmesh-engine --example generate -- MODEL.gguf "prompt" [max_tokens]`
//! (a prompt starting with `raw:` skips the chat template).

use std::sync::Arc;

use llmesh_engine::ChatModel;
use llmesh_engine::sampler::SamplingParams;
use llmesh_engine::scheduler::{Event, Request, SchedulerConfig};
use llmesh_engine::template::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(prompt)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: generate MODEL.gguf PROMPT [MAX_TOKENS]");
        std::process::exit(2);
    };
    let max_tokens = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let started = std::time::Instant::now();
    let model = Arc::new(ChatModel::load(
        "cli",
        path.as_ref(),
        SchedulerConfig::default(),
    )?);
    eprintln!(
        "loaded in {:?}: {:?}",
        started.elapsed(),
        model.info.quantization
    );
    // "raw:" skips the chat template.
    let tokens = match prompt.strip_prefix("raw:") {
        Some(raw) => model.text_tokens(raw)?,
        None => model.chat_tokens(&[Message {
            role: "user".into(),
            content: prompt.clone(),
        }])?,
    };
    eprintln!("prompt: {} tokens {:?}", tokens.len(), tokens);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    model.generate(Request {
        prompt: tokens,
        sampling: SamplingParams::default(),
        max_tokens,
        stop: Vec::new(),
        emit_tokens: true,
        events: tx,
    })?;
    let mut ids = Vec::new();
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Delta(text) => print!("{text}"),
            Event::Token(id) => ids.push(id),
            Event::Done(done) => {
                println!();
                eprintln!("{done:?}");
                eprintln!("ids: {ids:?}");
                break;
            }
        }
    }
    Ok(())
}
