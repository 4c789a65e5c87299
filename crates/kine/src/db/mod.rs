//! The SQL datastore: one code path for SQLite, PostgreSQL and MySQL/MariaDB. Each operation is written once
//! inside `on_pool!`/`on_tx!`, which expand it for the three concrete sqlx drivers (enum dispatch, no `Any`).

mod maint;
mod read;
pub mod sql;
mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Database, Decode, Executor, Type};

use crate::config::Datastore;
use crate::error::{Error, EtcdError};
use crate::types::Row;

pub use write::WriteTx;

/// Which SQL dialect a datastore speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    /// Whether several kine processes may share the database (and so must follow each other's writes).
    pub fn shared(self) -> bool {
        self != Dialect::Sqlite
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
        }
    }

    /// The longest key the dialect can index.
    pub fn max_key_len(self) -> usize {
        match self {
            Dialect::Mysql => 3000,
            _ => usize::MAX,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
}

/// Runs `$body` with `$p` bound to the concrete pool.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::db::Pool::Sqlite($p) => $body,
            $crate::db::Pool::Postgres($p) => $body,
            $crate::db::Pool::Mysql($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// The kine meta rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// The newest committed revision.
    pub rev: i64,
    /// The revision history is compacted to (reads below it fail).
    pub compact_rev: i64,
    /// How far compaction has physically deleted history.
    pub compact_done: i64,
    pub cluster_id: i64,
}

impl Meta {
    fn from_pairs(pairs: impl IntoIterator<Item = (String, i64)>) -> Self {
        let mut m = Meta::default();
        for (name, val) in pairs {
            match name.as_str() {
                "revision" => m.rev = val,
                "compact_revision" => m.compact_rev = val,
                "compact_done" => m.compact_done = val,
                "cluster_id" => m.cluster_id = val,
                _ => {}
            }
        }
        m
    }
}

/// A lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRec {
    pub id: i64,
    pub ttl: i64,
    /// Unix milliseconds.
    pub expiry: i64,
}

/// A kine process registered on the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRec {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Debug)]
pub struct Db {
    pub dialect: Dialect,
    sql: &'static sql::Sql,
    /// Writes: one connection for SQLite (its single writer), the shared pool otherwise.
    write: Pool,
    read: Pool,
    sqlite_path: Option<PathBuf>,
    /// Held for the life of the process: one kine per SQLite file.
    _lock: Option<std::fs::File>,
    pg_url: Option<String>,
}

impl Db {
    /// Connects (creating the SQLite file or the PostgreSQL/MySQL database when missing).
    pub async fn connect(store: &Datastore) -> Result<Self, Error> {
        let display = store.redacted();
        let db_err = |source| Error::Database {
            endpoint: display.clone(),
            source,
        };
        match store {
            Datastore::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::io(format!("creating database directory {}", dir.display()), e)
                    })?;
                }
                let lock_path = PathBuf::from(format!("{}.lock", path.display()));
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
                if lock.try_lock().is_err() {
                    return Err(Error::Locked {
                        path: path.display().to_string(),
                        lock: lock_path.display().to_string(),
                    });
                }
                let base = SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(false)
                    .pragma("cache_size", "-2000")
                    .disable_statement_logging();
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(
                        base.clone()
                            .create_if_missing(true)
                            .journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Full),
                    )
                    .await
                    .map_err(db_err)?;
                let (journal, sync): (String, i64) =
                    sqlx::query_as("SELECT journal_mode, synchronous FROM pragma_journal_mode(), pragma_synchronous()")
                        .fetch_one(&write)
                        .await
                        .map_err(db_err)?;
                tracing::info!(path = %path.display(), journal, synchronous = sync, "sqlite datastore (synchronous 2 = FULL: every commit is fsynced)");
                let read = SqlitePoolOptions::new()
                    .max_connections(4)
                    .min_connections(0)
                    .idle_timeout(Some(Duration::from_secs(30)))
                    .connect_lazy_with(base.read_only(true));
                Ok(Self {
                    dialect: Dialect::Sqlite,
                    sql: sql::for_dialect(Dialect::Sqlite),
                    write: Pool::Sqlite(write),
                    read: Pool::Sqlite(read),
                    sqlite_path: Some(path.clone()),
                    _lock: Some(lock),
                    pg_url: None,
                })
            }
            Datastore::Postgres { url } => {
                let opts = PgConnectOptions::from_str(url)
                    .map_err(db_err)?
                    .disable_statement_logging();
                let pool_opts = || {
                    PgPoolOptions::new()
                        .max_connections(12)
                        .min_connections(1)
                        .acquire_timeout(Duration::from_secs(30))
                };
                let pool = match pool_opts().connect_with(opts.clone()).await {
                    Ok(pool) => pool,
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                        let name = opts.get_database().unwrap_or("kubernetes").to_string();
                        tracing::info!(database = %name, "creating postgres database");
                        let mut admin = opts
                            .clone()
                            .database("postgres")
                            .connect()
                            .await
                            .map_err(db_err)?;
                        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
                        if let Err(err) = admin.execute(AssertSqlSafe(create)).await {
                            // Another kine may have created it meanwhile.
                            tracing::debug!(%err, "create database");
                        }
                        let _ = admin.close().await;
                        pool_opts().connect_with(opts).await.map_err(db_err)?
                    }
                    Err(e) => return Err(db_err(e)),
                };
                Ok(Self {
                    dialect: Dialect::Postgres,
                    sql: sql::for_dialect(Dialect::Postgres),
                    write: Pool::Postgres(pool.clone()),
                    read: Pool::Postgres(pool),
                    sqlite_path: None,
                    _lock: None,
                    pg_url: Some(url.clone()),
                })
            }
            Datastore::Mysql { url } => {
                let opts = MySqlConnectOptions::from_str(url)
                    .map_err(db_err)?
                    .disable_statement_logging();
                let pool_opts = || {
                    MySqlPoolOptions::new()
                        .max_connections(12)
                        .min_connections(1)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let pool = match pool_opts().connect_with(opts.clone()).await {
                    Ok(pool) => pool,
                    Err(sqlx::Error::Database(e)) if mysql_unknown_database(&*e) => {
                        let name = opts.get_database().unwrap_or("kubernetes").to_string();
                        tracing::info!(database = %name, "creating mysql database");
                        let mut admin = MySqlConnectOptions::from_str(url)
                            .map_err(db_err)?
                            .database("")
                            .connect()
                            .await
                            .map_err(db_err)?;
                        let create = format!(
                            "CREATE DATABASE IF NOT EXISTS `{}`",
                            name.replace('`', "``")
                        );
                        admin.execute(AssertSqlSafe(create)).await.map_err(db_err)?;
                        let _ = admin.close().await;
                        pool_opts().connect_with(opts).await.map_err(db_err)?
                    }
                    Err(e) => return Err(db_err(e)),
                };
                Ok(Self {
                    dialect: Dialect::Mysql,
                    sql: sql::for_dialect(Dialect::Mysql),
                    write: Pool::Mysql(pool.clone()),
                    read: Pool::Mysql(pool),
                    sqlite_path: None,
                    _lock: None,
                    pg_url: None,
                })
            }
        }
    }

    /// Where snapshot files are written: beside the SQLite file (same filesystem, and rarely a small
    /// tmpfs), else the temporary directory.
    pub fn scratch_dir(&self) -> PathBuf {
        self.sqlite_path
            .as_ref()
            .and_then(|p| {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(std::env::temp_dir)
    }

    /// The PostgreSQL URL, for a LISTEN connection.
    pub fn pg_url(&self) -> Option<&str> {
        self.pg_url.as_deref()
    }

    /// Creates the tables and meta rows if missing (safe when several kine processes start at once).
    pub async fn init(&self, cluster_id: i64) -> Result<Meta, EtcdError> {
        let sql = self.sql;
        on_pool!(&self.write, |p| {
            let mut conn = p.acquire().await?;
            // Serialise concurrent schema creation across kine processes.
            match self.dialect {
                Dialect::Postgres => {
                    conn.execute("SELECT pg_advisory_lock(7052731985)").await?;
                }
                Dialect::Mysql => {
                    conn.execute("SELECT GET_LOCK('kine_schema', 60)").await?;
                }
                Dialect::Sqlite => {}
            }
            let mut result = Ok(());
            for stmt in &sql.schema {
                if let Err(e) = conn.execute(sqlx::query(stmt.as_str())).await {
                    result = Err(e);
                    break;
                }
            }
            if result.is_ok() {
                result = sqlx::query(sql.init_meta.as_str())
                    .bind(cluster_id)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ());
            }
            match self.dialect {
                Dialect::Postgres => {
                    conn.execute("SELECT pg_advisory_unlock(7052731985)")
                        .await?;
                }
                Dialect::Mysql => {
                    conn.execute("SELECT RELEASE_LOCK('kine_schema')").await?;
                }
                Dialect::Sqlite => {}
            }
            result?;
        });
        self.meta().await
    }

    /// Reads the meta rows.
    pub async fn meta(&self) -> Result<Meta, EtcdError> {
        let sql = self.sql;
        let pairs: Vec<(String, i64)> = on_pool!(&self.read, |p| {
            sqlx::query_as(sql.meta.as_str()).fetch_all(p).await?
        });
        Ok(Meta::from_pairs(pairs))
    }

    /// Starts a write transaction holding the revision lock (nobody else can commit a revision until it ends).
    pub async fn begin_write(&self) -> Result<(WriteTx, Meta), EtcdError> {
        WriteTx::begin(&self.write, self.sql, self.dialect).await
    }
}

fn mysql_unknown_database(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| m.number() == 1049)
}

/// Decodes a row selected with `sql::ROW_COLUMNS`.
pub(crate) fn decode_row<R>(r: &R) -> Result<Row, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Vec<u8>: Decode<'a, R::Database> + Type<R::Database>,
{
    Ok(Row {
        rev: r.try_get(0)?,
        sub: r.try_get(1)?,
        key: Bytes::from(r.try_get::<Vec<u8>, _>(2)?),
        create_rev: r.try_get(3)?,
        prev_rev: r.try_get(4)?,
        version: r.try_get(5)?,
        lease: r.try_get(6)?,
        deleted: r.try_get::<i64, _>(7)? != 0,
        value: Bytes::from(r.try_get::<Vec<u8>, _>(8)?),
    })
}

/// Binds a log row's columns in `sql::ROW_COLUMNS` order.
pub(crate) fn bind_row<'q, DB: Database>(
    q: sqlx::query::Query<'q, DB, <DB as Database>::Arguments>,
    r: &Row,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments>
where
    i64: sqlx::Encode<'static, DB> + Type<DB>,
    for<'t> &'t [u8]: sqlx::Encode<'t, DB> + Type<DB>,
{
    q.bind(r.rev)
        .bind(r.sub)
        .bind(r.key.as_ref())
        .bind(r.create_rev)
        .bind(r.prev_rev)
        .bind(r.version)
        .bind(r.lease)
        .bind(i64::from(r.deleted))
        .bind(r.value.as_ref())
}

/// Binds a key range's bounds in the order `read::range_clause` names them.
pub(crate) fn bind_range<'q, DB: Database>(
    mut q: sqlx::query::Query<'q, DB, <DB as Database>::Arguments>,
    range: &crate::types::KeyRange,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments>
where
    for<'t> &'t [u8]: sqlx::Encode<'t, DB> + Type<DB>,
{
    q = q.bind(range.start.as_ref());
    if !range.single
        && let Some(end) = &range.end
    {
        q = q.bind(end.as_ref());
    }
    q
}
