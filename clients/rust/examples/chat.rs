//! Streams a chat reply and prints what it cost.
//!
//! `LLMESH_API_KEY=lmk_… cargo run -p llmesh-client --example chat -- "Why is the sky blue?"`
//! (`LLMESH_URL` defaults to http://127.0.0.1:7700).

use llmesh_client::{Client, Credentials};

#[tokio::main]
async fn main() -> llmesh_client::Result<()> {
    let url = std::env::var("LLMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Say hello in five words.".into());
    // [readme:connect]
    let key = std::env::var("LLMESH_API_KEY").unwrap_or_default();
    let client = Client::connect(&url, Credentials::ApiKey(key)).await?;
    // [/readme]
    // [readme:stream]
    let conversation = client.create_conversation("From the Rust SDK").await?;
    let mut reply = client.send_message(&conversation.id, &question).await?;
    while let Some(delta) = reply.next_delta().await {
        print!("{}", delta?);
    }
    let message = reply.message().expect("an ended reply carries its message");
    let usage = message.usage.unwrap_or_default();
    let cost = message.cost.clone().unwrap_or_default();
    println!(
        "\n[{} prompt + {} completion tokens, {} micro-{}]",
        usage.prompt_tokens, usage.completion_tokens, cost.micros, cost.currency
    );
    // [/readme]
    Ok(())
}
