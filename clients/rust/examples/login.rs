//! Signs in with an email and password, creates an API key, and calls as that key.
//!
//! `LLMESH_EMAIL=… LLMESH_PASSWORD=… cargo run -p llmesh-client --example login`

use llmesh_client::proto::auth::v1 as auth;
use llmesh_client::{Client, Credentials};

#[tokio::main]
async fn main() -> llmesh_client::Result<()> {
    let url = std::env::var("LLMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let email = std::env::var("LLMESH_EMAIL").unwrap_or_default();
    let password = std::env::var("LLMESH_PASSWORD").unwrap_or_default();
    // [readme:api-key]
    // A password session is refreshed by the SDK before its access token expires.
    let session = Client::builder(&url)
        .password(email, password)
        .connect()
        .await?;
    let created = session
        .auth()
        .create_api_key(auth::CreateApiKeyRequest {
            name: "reports job".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // The secret is shown once: keep it in your secret store.
    let program = Client::connect(&url, Credentials::ApiKey(created.secret)).await?;
    let me = program
        .auth()
        .get_me(auth::GetMeRequest {})
        .await?
        .into_inner();
    println!(
        "calling as {}",
        me.user.map(|u| u.email).unwrap_or_default()
    );
    session.logout().await?;
    // [/readme]
    Ok(())
}
