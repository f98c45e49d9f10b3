//! Imports a ChatGPT export (`conversations.json`) with a progress line, then exports
//! everything as llmesh JSON.
//!
//! `LLMESH_API_KEY=lmk_… cargo run -p llmesh-client --example import_chatgpt -- conversations.json backup.json`

use llmesh_client::files::{Phase, Upload};
use llmesh_client::proto::chat::v1::{ExportFormat, ImportSource};
use llmesh_client::{Client, Credentials};

#[tokio::main]
async fn main() -> llmesh_client::Result<()> {
    let url = std::env::var("LLMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let key = std::env::var("LLMESH_API_KEY").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "conversations.json".into());
    let output = args.next().unwrap_or_else(|| "llmesh-export.json".into());
    let client = Client::connect(&url, Credentials::ApiKey(key)).await?;
    // [readme:import]
    let report = client
        .import_conversations(
            &Upload::path(&input),
            ImportSource::Chatgpt,
            &mut |p| match p.phase {
                Phase::Uploading => eprint!("\ruploading {}/{} bytes", p.done, p.total),
                _ => eprint!("\rimporting {}/{} conversations", p.done, p.total),
            },
        )
        .await?;
    eprintln!();
    println!(
        "imported {}, skipped {}",
        report.imported,
        report.skipped.len()
    );
    for skip in &report.skipped {
        println!("  skipped {:?}: {}", skip.title, skip.reason);
    }
    let bytes = client
        .export_conversations(None, ExportFormat::Json, &output)
        .await?;
    println!("exported {bytes} bytes to {output}");
    // [/readme]
    Ok(())
}
