//! Connecting to the database (SQLite by default, Postgres in production) and migrating it.

use std::time::Duration;

use llmesh_migration::MigratorTrait;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

use crate::config::DatabaseConfig;

/// Why the database could not be opened; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum DbOpenError {
    #[error(
        "database.url {0:?} is not supported: use sqlite://path/file.db or postgres://user@host/db"
    )]
    BadUrl(String),
    #[error("cannot create the directory for the SQLite database {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("database migration failed: {0}")]
    Migrate(String),
}

/// Opens the configured database. SQLite files (and their directory) are created on first
/// start, in WAL mode with a busy timeout so concurrent writers wait instead of failing.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, DbOpenError> {
    let url = config.url.trim();
    let shown = redact(url);
    let mut options = if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() {
            return Err(DbOpenError::BadUrl(shown));
        }
        if path != ":memory:"
            && let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| DbOpenError::CreateDir {
                path: path.into(),
                source,
            })?;
        }
        let mut options = ConnectOptions::new(format!("sqlite://{path}"));
        options.map_sqlx_sqlite_opts(|o| {
            o.create_if_missing(true)
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
        });
        options
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        ConnectOptions::new(url.to_owned())
    } else {
        return Err(DbOpenError::BadUrl(shown));
    };
    options
        .max_connections(config.max_connections.max(1))
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs.max(1)))
        .acquire_timeout(Duration::from_secs(config.connect_timeout_secs.max(1)))
        .sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .map_err(|e| DbOpenError::Connect {
            url: shown.clone(),
            message: e.to_string(),
        })?;
    // Fail here, with the URL, rather than on the first request.
    db.execute_unprepared("SELECT 1")
        .await
        .map_err(|e| DbOpenError::Connect {
            url: shown,
            message: e.to_string(),
        })?;
    Ok(db)
}

/// The Postgres advisory lock that lets one process migrate at a time ("llmesh" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c6c_6d65_7368;

/// Applies every pending migration. On Postgres, processes that start together against
/// one database take turns under an advisory lock: the first migrates, the others wait
/// for it and then find nothing left to do.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbOpenError> {
    let failed = |e: &dyn std::fmt::Display| DbOpenError::Migrate(e.to_string());
    if db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return llmesh_migration::Migrator::up(db, None)
            .await
            .map_err(|e| failed(&e));
    }
    // The lock belongs to one session, so one pooled connection holds it throughout.
    let pool = db.get_postgres_connection_pool();
    let mut holder = pool.acquire().await.map_err(|e| failed(&e))?;
    let started = std::time::Instant::now();
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *holder)
        .await
        .map_err(|e| failed(&e))?;
    let waited = started.elapsed();
    if waited > std::time::Duration::from_millis(500) {
        tracing::info!(
            waited_ms = waited.as_millis() as u64,
            "another process was migrating the database; waited for it"
        );
    }
    let result = llmesh_migration::Migrator::up(db, None).await;
    let unlocked = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *holder)
        .await;
    result.map_err(|e| failed(&e))?;
    unlocked.map_err(|e| failed(&e))?;
    Ok(())
}

/// Hides a password in a database URL for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Microseconds since the Unix epoch: the unit of the time columns that SQL compares.
pub fn micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`micros`].
pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Builds a statement from `?` placeholders, numbered (`$1`, `$2`, …) for Postgres, so one
/// SQL text serves both backends.
pub fn statement(
    backend: sea_orm::DatabaseBackend,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> sea_orm::Statement {
    let sql = if backend == sea_orm::DatabaseBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}

/// Executes a statement; returns the rows affected.
pub async fn exec<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<u64, sea_orm::DbErr> {
    let s = statement(db.get_database_backend(), sql, values);
    Ok(db.execute_raw(s).await?.rows_affected())
}

/// Runs a query expected to return at most one row.
pub async fn one<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<Option<sea_orm::QueryResult>, sea_orm::DbErr> {
    let s = statement(db.get_database_backend(), sql, values);
    db.query_one_raw(s).await
}

/// Runs a query.
pub async fn all<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<Vec<sea_orm::QueryResult>, sea_orm::DbErr> {
    let s = statement(db.get_database_backend(), sql, values);
    db.query_all_raw(s).await
}

/// Runs a query whose best plan depends on its values, planned for these values every
/// time. Prepared statements are cached per connection, and after five runs Postgres may
/// switch to one generic plan for all values: for a text search that means the GIN
/// bitmap scan of every match even for a word in half the rows, where walking the newest
/// rows backwards stops after a few thousand.
pub async fn all_custom_plan(
    db: &DatabaseConnection,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<Vec<sea_orm::QueryResult>, sea_orm::DbErr> {
    use sea_orm::TransactionTrait;
    if db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return all(db, sql, values).await;
    }
    let txn = db.begin().await?;
    txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
        .await?;
    let rows = all(&txn, sql, values).await?;
    txn.commit().await?;
    Ok(rows)
}

/// True when a database error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
