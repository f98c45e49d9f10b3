//! What a failed call looks like: its code, the server's message and the request id.
//!
//! `LLMESH_API_KEY=lmk_… cargo run -p llmesh-client --example errors`

use llmesh_client::proto::chat::v1 as chat;
use llmesh_client::{Client, Code, Credentials, Error};

#[tokio::main]
async fn main() -> llmesh_client::Result<()> {
    let url = std::env::var("LLMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let key = std::env::var("LLMESH_API_KEY").unwrap_or_default();
    let client = Client::connect(&url, Credentials::ApiKey(key)).await?;
    // [readme:errors]
    let missing = client
        .chat()
        .get_conversation(chat::GetConversationRequest {
            id: "0190f2a4-0000-7000-8000-000000000000".into(),
        })
        .await
        .map_err(Error::from);
    match missing {
        Err(e) if e.code() == Code::NotFound => {
            // One readable sentence: message, code and the request id to quote in a report.
            println!("not there: {e}");
            println!("request id: {}", e.request_id().unwrap_or("none"));
        }
        Err(e) => return Err(e),
        Ok(_) => println!("found it"),
    }
    // [/readme]
    Ok(())
}
