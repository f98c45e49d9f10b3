//! Generates straight from a model (no stored conversation) and prints the timings.
//!
//! `LLMESH_API_KEY=lmk_… cargo run -p llmesh-client --example generate -- smollm2-135m-instruct`

use llmesh_client::generate::{system, user};
use llmesh_client::{Client, Credentials};

#[tokio::main]
async fn main() -> llmesh_client::Result<()> {
    let url = std::env::var("LLMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let key = std::env::var("LLMESH_API_KEY").unwrap_or_default();
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "smollm2-135m-instruct".into());
    let client = Client::connect(&url, Credentials::ApiKey(key)).await?;
    // [readme:generate]
    let mut generation = client
        .generate(
            &model,
            [
                system("You answer in one sentence."),
                user("What is a mesh network?"),
            ],
        )
        .await?;
    while let Some(delta) = generation.next_delta().await {
        print!("{}", delta?);
    }
    let done = generation
        .done()
        .expect("an ended generation carries its report");
    let timings = done.timings.unwrap_or_default();
    println!(
        "\n[{:?}, {:.0} tokens/s, cost {} micros]",
        done.finish_reason(),
        timings.decode_tokens_per_second,
        done.cost.as_ref().map_or(0, |c| c.micros)
    );
    // [/readme]
    Ok(())
}
