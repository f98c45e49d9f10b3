//! Runs Python in the sandbox and prints its output as it comes, then how it ended.
//!
//! `LLMESH_API_KEY=lmk_… cargo run -p llmesh-client --example sandbox`

use std::io::Write;

use llmesh_client::files::Upload;
use llmesh_client::proto::sandbox::v1 as sandbox;
use llmesh_client::sandbox::Output;
use llmesh_client::{Client, Credentials};

#[tokio::main]
async fn main() -> llmesh_client::Result<()> {
    let url = std::env::var("LLMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let key = std::env::var("LLMESH_API_KEY").unwrap_or_default();
    let client = Client::connect(&url, Credentials::ApiKey(key)).await?;
    // [readme:sandbox]
    client
        .write_file(
            "data/numbers.txt",
            &Upload::bytes("numbers.txt", "3\n4\n5\n"),
            &mut |_| {},
        )
        .await?;
    let code = "nums = [int(n) for n in open('/workspace/data/numbers.txt')]\n\
                print('sum', sum(nums))\n\
                open('/workspace/data/total.txt', 'w').write(str(sum(nums)))";
    let mut run = client
        .run(sandbox::RunRequest {
            runtime: "python".into(),
            code: code.into(),
            persist: true,
            ..Default::default()
        })
        .await?;
    while let Some(output) = run.next_output().await {
        match output? {
            Output::Stdout(b) => std::io::stdout().write_all(&b).ok(),
            Output::Stderr(b) => std::io::stderr().write_all(&b).ok(),
        };
    }
    let exit = run.exit().expect("an ended run carries its exit");
    println!(
        "[{:?}, exit code {}, {} fuel, {} ms, kept {:?}]",
        exit.status(),
        exit.exit_code,
        exit.fuel_used,
        exit.duration_ms,
        exit.changed_paths
    );
    // [/readme]
    Ok(())
}
