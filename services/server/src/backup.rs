//! `llmesh backup` and `llmesh restore`: a logical copy of a deployment's database (every
//! table, found from the database's own catalogue, so a table a migration adds is covered
//! without a change here) and of the key files it needs, in one format that SQLite and
//! Postgres both read and write.
//!
//! The file is gzip-compressed JSON lines:
//! - a header: format version, llmesh version, source backend, the applied migrations;
//! - per table: `{"table": NAME, "columns": [[NAME, KIND], …]}`, one JSON array per row
//!   (text, integers, floats, booleans, base64 bytes, RFC 3339 times, null), then
//!   `{"end": NAME, "rows": N, "checksum": HEX}`;
//! - key files: `{"file": CONFIG_KEY, "data": BASE64}`;
//! - a trailer: the manifest (schema version, row counts and checksums per table) and the
//!   sha256 of every byte before it, so a truncated or altered file is refused.
//!
//! A table's checksum does not depend on row order (it sums the rows' hashes), so the
//! same data read back from another backend gives the same checksum.
//!
//! The backup reads inside one transaction (REPEATABLE READ on Postgres, one snapshot on
//! SQLite in WAL mode), so it is consistent while the server keeps writing. The restore
//! first reads the whole file to check it, then writes everything in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use llmesh_kit::db::{all, exec};
use llmesh_migration::MigratorTrait;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseBackend, DatabaseConnection, IsolationLevel, QueryResult,
    StreamTrait, TransactionTrait, Value,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::Config;

/// The version of the file layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Rows per INSERT statement on restore.
const BATCH_ROWS: usize = 200;

/// How a column's values are written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Int,
    Float,
    Bool,
    Bytes,
    Time,
}

/// A column as the database stores it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
    /// Postgres' 16- and 32-bit integers and 32-bit floats must be read and bound at
    /// that width.
    width: Width,
    /// Whether an insert may leave it out (nullable, or with a default).
    optional: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Narrow16,
    Narrow32,
    Wide,
}

/// A table and its columns, in the order rows are written.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    columns: Vec<Column>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    llmesh_backup: u32,
    llmesh_version: String,
    backend: String,
    created_at: String,
    migrations: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableStart {
    table: String,
    columns: Vec<(String, Kind)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableEnd {
    end: String,
    rows: u64,
    checksum: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    file: String,
    data: String,
}

/// What a backup holds, as its trailer states.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub llmesh_version: String,
    pub backend: String,
    pub created_at: String,
    /// The last migration applied to the source.
    pub schema_version: String,
    pub tables: BTreeMap<String, TableSummary>,
    /// Config keys of the key files carried (e.g. `auth.signing_key_file`).
    pub files: Vec<String>,
}

/// Rows and checksum of one table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableSummary {
    pub rows: u64,
    pub checksum: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    manifest: Manifest,
    sha256: String,
}

/// An order-independent hash of a table's rows: the sum of their sha256s.
#[derive(Default)]
struct RowSum([u128; 2]);

impl RowSum {
    fn add(&mut self, line: &[u8]) {
        let digest = Sha256::digest(line);
        for (i, half) in digest.chunks(16).enumerate() {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(half);
            self.0[i] = self.0[i].wrapping_add(u128::from_be_bytes(bytes));
        }
    }

    fn hex(&self) -> String {
        format!("{:032x}{:032x}", self.0[0], self.0[1])
    }
}

// ---- the schema, from the database's catalogue ----

/// Every table of llmesh's schema in the connected database, parents before the tables
/// whose foreign keys point at them. Skipped: the migration bookkeeping (the header
/// records it), SQLite's full-text shadow tables (their virtual table is copied as
/// rows and reindexes itself) and pgvector's `kb_vectors` (rebuilt from `kb_chunks`).
async fn tables<C: ConnectionTrait>(db: &C) -> anyhow::Result<Vec<Table>> {
    let backend = db.get_database_backend();
    let mut tables = Vec::new();
    let mut parents: HashMap<String, Vec<String>> = HashMap::new();
    match backend {
        DatabaseBackend::Sqlite => {
            let rows = all(
                db,
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                vec![],
            )
            .await?;
            let mut names = Vec::new();
            let mut shadows = HashSet::new();
            for r in &rows {
                let name: String = r.try_get_by_index(0)?;
                let sql: Option<String> = r.try_get_by_index(1)?;
                if sql.is_some_and(|s| s.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE")) {
                    for suffix in ["config", "content", "data", "docsize", "idx"] {
                        shadows.insert(format!("{name}_{suffix}"));
                    }
                }
                names.push(name);
            }
            for name in names {
                if name == "seaql_migrations" || shadows.contains(&name) {
                    continue;
                }
                let cols = all(
                    db,
                    "SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info(?) ORDER BY cid",
                    vec![name.clone().into()],
                )
                .await?;
                let mut columns = Vec::new();
                for c in &cols {
                    let column: String = c.try_get_by_index(0)?;
                    let declared: String = c.try_get_by_index(1)?;
                    let not_null: i64 = c.try_get_by_index(2)?;
                    let default: Option<String> = c.try_get_by_index(3)?;
                    let (kind, width) = kind_of(&name, &column, &declared)?;
                    columns.push(Column {
                        name: column,
                        kind,
                        width,
                        optional: not_null == 0 || default.is_some(),
                    });
                }
                let fks = all(
                    db,
                    "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?)",
                    vec![name.clone().into()],
                )
                .await?;
                for f in &fks {
                    let parent: String = f.try_get_by_index(0)?;
                    parents.entry(name.clone()).or_default().push(parent);
                }
                tables.push(Table { name, columns });
            }
        }
        DatabaseBackend::Postgres => {
            let rows = all(
                db,
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name",
                vec![],
            )
            .await?;
            for r in &rows {
                let name: String = r.try_get_by_index(0)?;
                // kb_vectors is pgvector's copy of kb_chunks.embedding, made again from
                // it when knowledge starts (and absent where pgvector is).
                if name == "seaql_migrations" || name == "kb_vectors" {
                    continue;
                }
                let cols = all(
                    db,
                    "SELECT column_name::text, data_type::text, is_nullable::text, column_default IS NOT NULL, is_generated::text \
                     FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? \
                     ORDER BY ordinal_position",
                    vec![name.clone().into()],
                )
                .await?;
                let mut columns = Vec::new();
                for c in &cols {
                    let column: String = c.try_get_by_index(0)?;
                    let declared: String = c.try_get_by_index(1)?;
                    let nullable: String = c.try_get_by_index(2)?;
                    let has_default: bool = c.try_get_by_index(3)?;
                    let generated: String = c.try_get_by_index(4)?;
                    if generated == "ALWAYS" {
                        continue; // computed from the other columns (the search vector)
                    }
                    let (kind, width) = kind_of(&name, &column, &declared)?;
                    columns.push(Column {
                        name: column,
                        kind,
                        width,
                        optional: nullable == "YES" || has_default,
                    });
                }
                tables.push(Table { name, columns });
            }
            let fks = all(
                db,
                "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c \
                 JOIN pg_namespace n ON n.oid = c.connamespace \
                 WHERE c.contype = 'f' AND n.nspname = current_schema()",
                vec![],
            )
            .await?;
            for f in &fks {
                let child: String = f.try_get_by_index(0)?;
                let parent: String = f.try_get_by_index(1)?;
                parents
                    .entry(child.trim_matches('"').to_owned())
                    .or_default()
                    .push(parent.trim_matches('"').to_owned());
            }
        }
        other => bail!("backups support SQLite and Postgres, not {other:?}"),
    }
    Ok(parents_first(tables, &parents))
}

/// Orders tables so that every table comes after the tables it references.
fn parents_first(tables: Vec<Table>, parents: &HashMap<String, Vec<String>>) -> Vec<Table> {
    let names: HashSet<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut placed: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(tables.len());
    let mut left = tables;
    while !left.is_empty() {
        let before = left.len();
        let (ready, waiting): (Vec<Table>, Vec<Table>) = left.into_iter().partition(|t| {
            parents.get(&t.name).is_none_or(|ps| {
                ps.iter()
                    .all(|p| p == &t.name || placed.contains(p) || !names.contains(p))
            })
        });
        for t in &ready {
            placed.insert(t.name.clone());
        }
        out.extend(ready);
        left = waiting;
        if left.len() == before {
            // A cycle: keep the rest in name order (SQLite defers the checks; Postgres
            // would name the constraint).
            out.extend(left);
            break;
        }
    }
    out
}

/// The file kind of a declared column type; an unknown type is an error naming the column,
/// so a migration that brings a new type fails the backup test instead of losing data.
fn kind_of(table: &str, column: &str, declared: &str) -> anyhow::Result<(Kind, Width)> {
    let t = declared.trim().to_ascii_lowercase();
    let base = t.split('(').next().unwrap_or(&t).trim();
    Ok(match base {
        "" | "text" | "varchar" | "character varying" | "char" | "character" | "uuid" | "json"
        | "json_text" | "string" => (Kind::Text, Width::Wide),
        "integer" | "int" | "bigint" | "int8" | "int4" | "big_integer" => (
            Kind::Int,
            if base == "integer" || base == "int4" || base == "int" {
                Width::Narrow32
            } else {
                Width::Wide
            },
        ),
        "smallint" | "int2" => (Kind::Int, Width::Narrow16),
        "double precision" | "double" | "float8" | "float" => (Kind::Float, Width::Wide),
        "real" | "float4" => (Kind::Float, Width::Narrow32),
        "boolean" | "bool" => (Kind::Bool, Width::Wide),
        "blob" | "bytea" | "binary" | "varbinary" => (Kind::Bytes, Width::Wide),
        "timestamp with time zone"
        | "timestamp_with_timezone_text"
        | "timestamptz"
        | "timestamp_with_timezone" => (Kind::Time, Width::Wide),
        _ => bail!(
            "{table}.{column} has the column type {declared:?}, which backups do not know yet: teach services/server/src/backup.rs (kind_of) to carry it"
        ),
    })
}

/// The migrations applied to `db`, in order; empty when it was never migrated.
async fn applied_migrations<C: ConnectionTrait>(db: &C) -> anyhow::Result<Vec<String>> {
    let exists = match db.get_database_backend() {
        DatabaseBackend::Postgres => !all(
            db,
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'seaql_migrations'",
            vec![],
        )
        .await?
        .is_empty(),
        _ => !all(
            db,
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'",
            vec![],
        )
        .await?
        .is_empty(),
    };
    if !exists {
        return Ok(Vec::new());
    }
    let rows = all(
        db,
        "SELECT version FROM seaql_migrations ORDER BY version",
        vec![],
    )
    .await?;
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0).map_err(Into::into))
        .collect()
}

fn known_migrations() -> Vec<String> {
    llmesh_migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

fn backend_name(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => "postgres",
        DatabaseBackend::Sqlite => "sqlite",
        _ => "other",
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

// ---- values ----

fn read_value(row: &QueryResult, i: usize, column: &Column, pg: bool) -> anyhow::Result<Json> {
    let bad = |e: sea_orm::DbErr| anyhow!("reading column {}: {e}", column.name);
    Ok(match (column.kind, column.width) {
        (Kind::Text, _) => row
            .try_get_by_index::<Option<String>>(i)
            .map_err(bad)?
            .map(Json::from)
            .unwrap_or(Json::Null),
        (Kind::Int, Width::Narrow16) => row
            .try_get_by_index::<Option<i16>>(i)
            .map_err(bad)?
            .map(Json::from)
            .unwrap_or(Json::Null),
        (Kind::Int, Width::Narrow32) if pg => row
            .try_get_by_index::<Option<i32>>(i)
            .map_err(bad)?
            .map(Json::from)
            .unwrap_or(Json::Null),
        (Kind::Int, _) => row
            .try_get_by_index::<Option<i64>>(i)
            .map_err(bad)?
            .map(Json::from)
            .unwrap_or(Json::Null),
        (Kind::Float, Width::Narrow32) if pg => row
            .try_get_by_index::<Option<f32>>(i)
            .map_err(bad)?
            .map(|f| Json::from(f64::from(f)))
            .unwrap_or(Json::Null),
        (Kind::Float, _) => row
            .try_get_by_index::<Option<f64>>(i)
            .map_err(bad)?
            .map(Json::from)
            .unwrap_or(Json::Null),
        (Kind::Bool, _) => row
            .try_get_by_index::<Option<bool>>(i)
            .map_err(bad)?
            .map(Json::from)
            .unwrap_or(Json::Null),
        (Kind::Bytes, _) => row
            .try_get_by_index::<Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map(|b| Json::from(base64::engine::general_purpose::STANDARD.encode(b)))
            .unwrap_or(Json::Null),
        (Kind::Time, _) => row
            .try_get_by_index::<Option<DateTime<Utc>>>(i)
            .map_err(bad)?
            .map(|t| Json::from(t.to_rfc3339_opts(SecondsFormat::Micros, true)))
            .unwrap_or(Json::Null),
    })
}

/// The value to bind for `json` in a column of `kind`, as the target stores it.
fn bind_value(json: &Json, from: Kind, to: &Column, pg: bool) -> anyhow::Result<Value> {
    let wrong = || {
        anyhow!(
            "column {} holds {json} where a {from:?} value belongs",
            to.name
        )
    };
    if from != to.kind {
        bail!(
            "column {} is {:?} in the backup but {:?} here",
            to.name,
            from,
            to.kind
        );
    }
    let null = json.is_null();
    Ok(match to.kind {
        Kind::Text => Value::from(if null {
            None
        } else {
            Some(json.as_str().ok_or_else(wrong)?.to_owned())
        }),
        Kind::Int => {
            let v = if null {
                None
            } else {
                Some(json.as_i64().ok_or_else(wrong)?)
            };
            match (to.width, pg) {
                (Width::Narrow16, true) => {
                    Value::from(v.map(i16::try_from).transpose().map_err(|_| wrong())?)
                }
                (Width::Narrow32, true) => {
                    Value::from(v.map(i32::try_from).transpose().map_err(|_| wrong())?)
                }
                _ => Value::from(v),
            }
        }
        Kind::Float => {
            let v = if null {
                None
            } else {
                Some(json.as_f64().ok_or_else(wrong)?)
            };
            if to.width == Width::Narrow32 && pg {
                Value::from(v.map(|f| f as f32))
            } else {
                Value::from(v)
            }
        }
        Kind::Bool => Value::from(if null {
            None
        } else {
            Some(json.as_bool().ok_or_else(wrong)?)
        }),
        Kind::Bytes => Value::from(if null {
            None
        } else {
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(json.as_str().ok_or_else(wrong)?)
                    .map_err(|_| wrong())?,
            )
        }),
        Kind::Time => Value::from(if null {
            None
        } else {
            Some(
                DateTime::parse_from_rfc3339(json.as_str().ok_or_else(wrong)?)
                    .map_err(|_| wrong())?
                    .with_timezone(&Utc),
            )
        }),
    })
}

// ---- backup ----

/// Writes a backup of the configured deployment to `out`; returns its manifest.
/// `progress` hears each table as it is copied.
pub async fn backup(
    config: &Config,
    db: &DatabaseConnection,
    out: &Path,
    progress: &dyn Fn(&str, u64),
) -> anyhow::Result<Manifest> {
    let backend = db.get_database_backend();
    let pg = backend == DatabaseBackend::Postgres;
    let txn = match backend {
        DatabaseBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
        // A SQLite transaction reads one snapshot from its first read on (WAL mode).
        _ => db.begin().await?,
    };
    let migrations = applied_migrations(&txn).await?;
    let schema_version = migrations.last().cloned().ok_or_else(|| {
        anyhow!("the database has no llmesh schema yet: run `llmesh migrate` (or serve) first")
    })?;
    let known = known_migrations();
    if let Some(unknown) = migrations.iter().find(|m| !known.contains(m)) {
        bail!(
            "the database was migrated by a newer llmesh (migration {unknown}); back it up with that version"
        );
    }
    let tables = tables(&txn).await?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut writer = Hashing::new(flate2::write::GzEncoder::new(
        BufWriter::new(file),
        flate2::Compression::default(),
    ));
    let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let header = Header {
        llmesh_backup: FORMAT_VERSION,
        llmesh_version: env!("CARGO_PKG_VERSION").into(),
        backend: backend_name(backend).into(),
        created_at: created_at.clone(),
        migrations,
    };
    writer.line(&serde_json::to_vec(&header)?)?;
    let mut summaries = BTreeMap::new();
    for table in &tables {
        let start = TableStart {
            table: table.name.clone(),
            columns: table
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.kind))
                .collect(),
        };
        writer.line(&serde_json::to_vec(&start)?)?;
        let list: Vec<String> = table.columns.iter().map(|c| quote(&c.name)).collect();
        let sql = format!("SELECT {} FROM {}", list.join(", "), quote(&table.name));
        let stmt = sea_orm::Statement::from_string(backend, sql);
        let mut stream = txn.stream_raw(stmt).await?;
        let mut sum = RowSum::default();
        let mut rows = 0u64;
        while let Some(row) = stream.next().await {
            let row = row?;
            let values = table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| read_value(&row, i, c, pg))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("table {}", table.name))?;
            let line = serde_json::to_vec(&values)?;
            sum.add(&line);
            writer.line(&line)?;
            rows += 1;
            if rows.is_multiple_of(10_000) {
                progress(&table.name, rows);
            }
        }
        drop(stream);
        progress(&table.name, rows);
        let end = TableEnd {
            end: table.name.clone(),
            rows,
            checksum: sum.hex(),
        };
        writer.line(&serde_json::to_vec(&end)?)?;
        summaries.insert(
            table.name.clone(),
            TableSummary {
                rows,
                checksum: end.checksum,
            },
        );
    }
    txn.commit().await?;
    let mut files = Vec::new();
    for (key, path) in key_files(config) {
        // The provider key file is made on first use; before that there is nothing to keep.
        if key == "llm.provider_key_file" && !path.exists() {
            continue;
        }
        let data = std::fs::read(&path)
            .with_context(|| format!("cannot read {key} ({})", path.display()))?;
        let entry = FileEntry {
            file: key.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
        };
        writer.line(&serde_json::to_vec(&entry)?)?;
        files.push(key);
    }
    let manifest = Manifest {
        llmesh_version: header.llmesh_version,
        backend: header.backend,
        created_at,
        schema_version,
        tables: summaries,
        files,
    };
    let digest = writer.digest();
    let trailer = Trailer {
        manifest: manifest.clone(),
        sha256: digest,
    };
    let inner = writer.into_inner();
    let mut gz = inner;
    gz.write_all(&serde_json::to_vec(&trailer)?)?;
    gz.write_all(b"\n")?;
    let mut buffered = gz.finish()?;
    buffered.flush()?;
    buffered
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {e}", partial.display()))?
        .sync_all()?;
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot move the backup to {}", out.display()))?;
    Ok(manifest)
}

/// The name `llmesh backup --dir` gives a backup taken at `at`; names sort by time.
pub fn file_name(at: DateTime<Utc>) -> String {
    format!("llmesh-{}.llmesh-backup", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Removes all but the newest `keep` backups that `llmesh backup --dir` wrote to `dir`
/// (other files are left alone); returns what it removed.
pub fn prune(dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut ours: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("llmesh-") && n.ends_with(".llmesh-backup"))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    let old: Vec<PathBuf> = ours.into_iter().take(excess).collect();
    for p in &old {
        std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(old)
}

/// The key files the configuration names, by config key.
fn key_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    if let Some(path) = config
        .auth
        .signing_key_file
        .as_deref()
        .filter(|p| !p.trim().is_empty())
    {
        files.push(("auth.signing_key_file".to_owned(), PathBuf::from(path)));
    }
    // Without the provider key the sealed provider secrets in the backup cannot be opened.
    if let Some(path) = config
        .llm
        .provider_key_file
        .as_deref()
        .filter(|p| !p.trim().is_empty())
    {
        files.push(("llm.provider_key_file".to_owned(), PathBuf::from(path)));
    }
    files
}

/// A writer that hashes every line it writes.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
        }
    }

    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.hash.update(b"\n");
        self.inner.write_all(bytes)?;
        self.inner.write_all(b"\n")
    }

    fn digest(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }

    fn into_inner(self) -> W {
        self.inner
    }
}

// ---- reading a backup ----

/// One item of a backup file, in order.
enum Item {
    Start(TableStart),
    Row(Vec<Json>),
    End,
    File(FileEntry),
}

/// Reads a backup's lines after checking the whole file, so nothing is written from a
/// file that turns out to be cut short or altered.
struct Reader {
    path: PathBuf,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{} is not a complete llmesh backup ({why}); it may be truncated or corrupt — nothing was written. Take a new backup, or restore an older one",
        path.display()
    )
}

impl Reader {
    fn lines(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<String>>> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the backup {}", path.display()))?;
        let shown = path.to_path_buf();
        Ok(
            BufReader::new(flate2::read::GzDecoder::new(BufReader::new(file)))
                .lines()
                .map(move |l| l.map_err(|e| corrupt(&shown, format!("unreadable: {e}")))),
        )
    }

    /// Checks the file end to end: layout, per-table counts and checksums, the trailer's
    /// hash. Returns the header and the manifest.
    fn verify(path: &Path) -> anyhow::Result<(Header, Manifest)> {
        let mut lines = Reader::lines(path)?;
        let first = lines.next().ok_or_else(|| corrupt(path, "it is empty"))??;
        let header: Header = serde_json::from_str(&first)
            .map_err(|_| corrupt(path, "the first line is not a backup header"))?;
        if header.llmesh_backup > FORMAT_VERSION {
            bail!(
                "{} was written in backup format {}, newer than this llmesh ({}) reads: restore it with llmesh {} or later",
                path.display(),
                header.llmesh_backup,
                FORMAT_VERSION,
                header.llmesh_version
            );
        }
        let mut hash = Sha256::new();
        hash.update(first.as_bytes());
        hash.update(b"\n");
        let mut tables: BTreeMap<String, TableSummary> = BTreeMap::new();
        let mut current: Option<(String, usize, RowSum, u64)> = None;
        let mut files = Vec::new();
        let mut trailer: Option<Trailer> = None;
        for line in lines {
            let line = line?;
            if trailer.is_some() {
                return Err(corrupt(path, "there is data after its end"));
            }
            if line.starts_with('[') {
                let Some((name, width, sum, rows)) = current.as_mut() else {
                    return Err(corrupt(path, "a row outside any table"));
                };
                let values: Vec<Json> = serde_json::from_str(&line)
                    .map_err(|_| corrupt(path, format!("a row of {name} is not valid")))?;
                if values.len() != *width {
                    return Err(corrupt(
                        path,
                        format!("a row of {name} has {} values, not {width}", values.len()),
                    ));
                }
                sum.add(line.as_bytes());
                *rows += 1;
            } else if let Ok(t) = serde_json::from_str::<Trailer>(&line) {
                trailer = Some(t);
                continue;
            } else if let Ok(start) = serde_json::from_str::<TableStart>(&line) {
                if current.is_some() {
                    return Err(corrupt(path, "a table starts inside another"));
                }
                current = Some((start.table, start.columns.len(), RowSum::default(), 0));
            } else if let Ok(end) = serde_json::from_str::<TableEnd>(&line) {
                let Some((name, _, sum, rows)) = current.take() else {
                    return Err(corrupt(path, "a table ends that never started"));
                };
                if end.end != name || end.rows != rows || end.checksum != sum.hex() {
                    return Err(corrupt(
                        path,
                        format!("table {name}'s rows do not match its count and checksum"),
                    ));
                }
                tables.insert(
                    name,
                    TableSummary {
                        rows,
                        checksum: end.checksum,
                    },
                );
            } else if let Ok(file) = serde_json::from_str::<FileEntry>(&line) {
                files.push(file.file);
            } else {
                return Err(corrupt(path, "a line is not part of the format"));
            }
            hash.update(line.as_bytes());
            hash.update(b"\n");
        }
        let trailer = trailer.ok_or_else(|| corrupt(path, "it ends before its manifest"))?;
        if current.is_some() {
            return Err(corrupt(path, "it ends inside a table"));
        }
        if hex::encode(hash.finalize()) != trailer.sha256 {
            return Err(corrupt(path, "its sha256 does not match its manifest"));
        }
        if trailer.manifest.tables != tables || trailer.manifest.files != files {
            return Err(corrupt(path, "its manifest does not match its contents"));
        }
        if trailer.manifest.schema_version != header.migrations.last().cloned().unwrap_or_default()
        {
            return Err(corrupt(
                path,
                "its manifest names another schema version than its header",
            ));
        }
        Ok((header, trailer.manifest))
    }

    /// The items after the header, of a file already verified.
    fn items(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Item>>> {
        let path = self.path.clone();
        Ok(Reader::lines(&self.path)?.skip(1).filter_map(move |line| {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            let parsed = if line.starts_with('[') {
                serde_json::from_str(&line).map(Item::Row)
            } else if let Ok(start) = serde_json::from_str::<TableStart>(&line) {
                Ok(Item::Start(start))
            } else if serde_json::from_str::<TableEnd>(&line).is_ok() {
                Ok(Item::End)
            } else if let Ok(file) = serde_json::from_str::<FileEntry>(&line) {
                Ok(Item::File(file))
            } else {
                return None; // the trailer
            };
            Some(parsed.map_err(|_| corrupt(&path, "it changed while being restored")))
        }))
    }
}

/// Checks a backup file and returns its manifest, writing nothing.
pub fn verify(path: &Path) -> anyhow::Result<Manifest> {
    Reader::verify(path).map(|(_, m)| m)
}

// ---- restore ----

/// How a restore treats a target that already holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    pub files_written: Vec<String>,
}

/// Restores `path` into the configured database (and key files); see the module docs.
pub async fn restore(
    config: &Config,
    db: &DatabaseConnection,
    path: &Path,
    existing: Existing,
    progress: &dyn Fn(&str, u64),
) -> anyhow::Result<Restored> {
    let (header, manifest) = Reader::verify(path)?;
    let known = known_migrations();
    if let Some(newer) = header.migrations.iter().find(|m| !known.contains(m)) {
        bail!(
            "the backup's schema is newer than this llmesh knows (migration {newer}, from llmesh {}): restore it with that version or later; nothing was written",
            header.llmesh_version
        );
    }
    let applied = applied_migrations(db).await?;
    if let Some(newer) = applied.iter().find(|m| !known.contains(m)) {
        bail!(
            "the target database was migrated by a newer llmesh (migration {newer}); nothing was written"
        );
    }
    // A target migrated past the backup would take its rows without the data migrations
    // in between; the rows go into the backup's schema, and newer migrations run after.
    if let Some(ahead) = applied.iter().find(|m| !header.migrations.contains(m)) {
        bail!(
            "the target database is at a newer schema ({ahead}) than the backup ({}): restore into a new, empty database (it is brought to the backup's schema, then migrated forward); nothing was written",
            manifest.schema_version
        );
    }
    // Bring the target to the backup's schema, so its rows fit; later migrations run after.
    let missing = header
        .migrations
        .iter()
        .filter(|m| !applied.contains(m))
        .count();
    if missing > 0 {
        llmesh_migration::Migrator::up(db, Some(missing as u32))
            .await
            .context("migrating the target to the backup's schema")?;
    }
    let backend = db.get_database_backend();
    let pg = backend == DatabaseBackend::Postgres;
    let target: HashMap<String, Table> = tables(db)
        .await?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    for name in manifest.tables.keys() {
        if !target.contains_key(name) {
            bail!("the backup has a table {name} this schema lacks; nothing was written");
        }
    }

    let txn = db.begin().await?;
    if backend == DatabaseBackend::Sqlite {
        // Foreign keys are checked at commit, so the order of tables cannot trip them.
        exec(&txn, "PRAGMA defer_foreign_keys = ON", vec![]).await?;
    }
    let mut occupied = Vec::new();
    for t in target.values() {
        let row = llmesh_kit::db::one(
            &txn,
            &format!("SELECT COUNT(*) FROM {}", quote(&t.name)),
            vec![],
        )
        .await?;
        let n: i64 = row.map(|r| r.try_get_by_index(0)).transpose()?.unwrap_or(0);
        if n > 0 {
            occupied.push(format!("{} ({n} rows)", t.name));
        }
    }
    if !occupied.is_empty() {
        occupied.sort();
        if existing == Existing::Refuse {
            bail!(
                "the target database already holds data — {} — restore into an empty database, or pass --force to replace everything in it; nothing was written",
                occupied.join(", ")
            );
        }
        // Children first, so no foreign key is left dangling mid-way.
        let ordered = tables(&txn).await?;
        for t in ordered.iter().rev() {
            exec(&txn, &format!("DELETE FROM {}", quote(&t.name)), vec![]).await?;
        }
    }

    let reader = Reader {
        path: path.to_path_buf(),
    };
    let mut files_written = Vec::new();
    let mut pending_files = Vec::new();
    let mut current: Option<Loading> = None;
    for item in reader.items()? {
        match item? {
            Item::Start(start) => {
                let table = target
                    .get(&start.table)
                    .cloned()
                    .ok_or_else(|| anyhow!("table {} is not in this schema", start.table))?;
                // Each backed-up column goes to the target column of the same name.
                let mut map = Vec::new();
                let mut used = HashSet::new();
                for (name, kind) in &start.columns {
                    let i = table
                        .columns
                        .iter()
                        .position(|c| &c.name == name)
                        .ok_or_else(|| {
                            anyhow!(
                                "the backup's column {}.{name} has no place in this schema",
                                start.table
                            )
                        })?;
                    map.push((i, *kind));
                    used.insert(i);
                }
                if let Some(c) = table
                    .columns
                    .iter()
                    .enumerate()
                    .find(|(i, c)| !used.contains(i) && !c.optional)
                {
                    bail!(
                        "{}.{} is required here but absent from the backup; nothing was written",
                        table.name,
                        c.1.name
                    );
                }
                current = Some(Loading {
                    table,
                    map,
                    batch: Vec::new(),
                    rows: 0,
                });
            }
            Item::Row(values) => {
                let Some(Loading {
                    table,
                    map,
                    batch,
                    rows,
                }) = current.as_mut()
                else {
                    bail!("a row outside a table");
                };
                let bound = values
                    .iter()
                    .zip(map.iter())
                    .map(|(v, (i, kind))| bind_value(v, *kind, &table.columns[*i], pg))
                    .collect::<anyhow::Result<Vec<_>>>()
                    .with_context(|| format!("table {}", table.name))?;
                batch.push(bound);
                *rows += 1;
                if batch.len() >= BATCH_ROWS {
                    insert(&txn, table, map, std::mem::take(batch)).await?;
                }
                if rows.is_multiple_of(10_000) {
                    progress(&table.name, *rows);
                }
            }
            Item::End => {
                if let Some(Loading {
                    table,
                    map,
                    batch,
                    rows,
                }) = current.take()
                {
                    insert(&txn, &table, &map, batch).await?;
                    progress(&table.name, rows);
                }
            }
            Item::File(file) => pending_files.push(file),
        }
    }
    // Key files: written where this deployment's config says, never over a different one.
    let targets: HashMap<String, PathBuf> = key_files(config).into_iter().collect();
    let mut writes = Vec::new();
    for file in pending_files {
        let data = base64::engine::general_purpose::STANDARD
            .decode(&file.data)
            .map_err(|_| corrupt(path, "a key file is not base64"))?;
        let Some(dest) = targets.get(&file.file) else {
            tracing::warn!(key = %file.file, "the backup carries a key file this config does not name; set the key and restore again to get it back");
            continue;
        };
        if let Ok(existing_data) = std::fs::read(dest)
            && existing_data != data
            && existing == Existing::Refuse
        {
            bail!(
                "{} ({}) exists and differs from the backup's: move it away, or pass --force; nothing was written",
                dest.display(),
                file.file
            );
        }
        writes.push((file.file, dest.clone(), data));
    }
    txn.commit().await.context("committing the restore")?;
    for (key, dest, data) in writes {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_private(&dest, &data)
            .with_context(|| format!("writing {key} to {}", dest.display()))?;
        files_written.push(key);
    }
    // Migrations newer than the backup run over the restored rows, as on an upgrade.
    llmesh_kit::db::migrate(db)
        .await
        .context("migrating after the restore")?;
    Ok(Restored {
        manifest,
        files_written,
    })
}

/// The table a restore is writing: where each backed-up column goes, and the rows not
/// inserted yet.
struct Loading {
    table: Table,
    map: Vec<(usize, Kind)>,
    batch: Vec<Vec<Value>>,
    rows: u64,
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(data)
}

async fn insert<C: ConnectionTrait>(
    db: &C,
    table: &Table,
    map: &[(usize, Kind)],
    rows: Vec<Vec<Value>>,
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let columns: Vec<String> = map
        .iter()
        .map(|(i, _)| quote(&table.columns[*i].name))
        .collect();
    let one = format!("({})", vec!["?"; map.len()].join(", "));
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        quote(&table.name),
        columns.join(", "),
        vec![one; rows.len()].join(", ")
    );
    let values: Vec<Value> = rows.into_iter().flatten().collect();
    exec(db, &sql, values)
        .await
        .with_context(|| format!("inserting into {}", table.name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sums_ignore_order() {
        let mut a = RowSum::default();
        let mut b = RowSum::default();
        for line in [&b"[1]"[..], b"[2]", b"[3]"] {
            a.add(line);
        }
        for line in [&b"[3]"[..], b"[1]", b"[2]"] {
            b.add(line);
        }
        assert_eq!(a.hex(), b.hex());
        b.add(b"[4]");
        assert_ne!(a.hex(), b.hex());
    }

    #[test]
    fn unknown_column_types_name_the_column() {
        let err = kind_of("t", "c", "geometry").expect_err("unknown");
        assert!(err.to_string().contains("t.c"), "{err}");
        assert_eq!(
            kind_of("t", "c", "blob(1)").ok(),
            Some((Kind::Bytes, Width::Wide))
        );
        assert_eq!(
            kind_of("t", "c", "integer").ok(),
            Some((Kind::Int, Width::Narrow32))
        );
    }

    #[test]
    fn tables_come_after_their_parents() {
        let t = |n: &str| Table {
            name: n.into(),
            columns: vec![],
        };
        let parents = HashMap::from([
            ("messages".to_owned(), vec!["conversations".to_owned()]),
            ("api_keys".to_owned(), vec!["users".to_owned()]),
            ("tree".to_owned(), vec!["tree".to_owned()]),
        ]);
        let ordered = parents_first(
            vec![
                t("api_keys"),
                t("messages"),
                t("conversations"),
                t("users"),
                t("tree"),
            ],
            &parents,
        );
        let at = |n: &str| ordered.iter().position(|t| t.name == n).expect("placed");
        assert!(at("users") < at("api_keys"));
        assert!(at("conversations") < at("messages"));
        assert_eq!(ordered.len(), 5);
    }
}
