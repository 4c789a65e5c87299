//! The SQL datastore: one code path for SQLite, PostgreSQL and MySQL/MariaDB. Each operation is written once
//! inside `on_pool!`/`on_tx!`, which expand it for the three concrete sqlx drivers (enum dispatch, no `Any`).

mod connect;
mod maint;
mod read;
pub mod sql;
mod write;

use std::path::PathBuf;

use bytes::Bytes;
use sqlx::{Database, Decode, Executor, Type};

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
        match store {
            Datastore::Sqlite { path } => connect::sqlite(store, path).await,
            Datastore::Postgres { url } => connect::postgres(store, url).await,
            Datastore::Mysql { url } => connect::mysql(store, url).await,
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
