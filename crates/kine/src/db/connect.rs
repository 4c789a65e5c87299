//! Connecting to each datastore: the SQLite file (with its single-process lock, WAL and full fsync), or a
//! PostgreSQL/MySQL pool, creating the database when it does not exist yet.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

use super::{Db, Dialect, Pool, mysql_unknown_database, sql};
use crate::config::Datastore;
use crate::error::Error;

fn db_error(store: &Datastore) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |source| Error::Database {
        endpoint: store.redacted(),
        source,
    }
}

pub(super) async fn sqlite(store: &Datastore, path: &Path) -> Result<Db, Error> {
    let db_err = db_error(store);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating database directory {}", dir.display()), e))?;
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
        .map_err(&db_err)?;
    let (journal, sync): (String, i64) = sqlx::query_as(
        "SELECT journal_mode, synchronous FROM pragma_journal_mode(), pragma_synchronous()",
    )
    .fetch_one(&write)
    .await
    .map_err(&db_err)?;
    tracing::info!(path = %path.display(), journal, synchronous = sync, "sqlite datastore (synchronous 2 = FULL: every commit is fsynced)");
    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .idle_timeout(Some(Duration::from_secs(30)))
        .connect_lazy_with(base.read_only(true));
    Ok(Db {
        dialect: Dialect::Sqlite,
        sql: sql::for_dialect(Dialect::Sqlite),
        write: Pool::Sqlite(write),
        read: Pool::Sqlite(read),
        sqlite_path: Some(path.to_path_buf()),
        _lock: Some(lock),
        pg_url: None,
    })
}

pub(super) async fn postgres(store: &Datastore, url: &str) -> Result<Db, Error> {
    let db_err = db_error(store);
    let opts = PgConnectOptions::from_str(url)
        .map_err(&db_err)?
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
                .map_err(&db_err)?;
            let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            if let Err(err) = admin.execute(AssertSqlSafe(create)).await {
                // Another kine may have created it meanwhile.
                tracing::debug!(%err, "create database");
            }
            let _ = admin.close().await;
            pool_opts().connect_with(opts).await.map_err(&db_err)?
        }
        Err(e) => return Err(db_err(e)),
    };
    Ok(Db {
        dialect: Dialect::Postgres,
        sql: sql::for_dialect(Dialect::Postgres),
        write: Pool::Postgres(pool.clone()),
        read: Pool::Postgres(pool),
        sqlite_path: None,
        _lock: None,
        pg_url: Some(url.to_string()),
    })
}

pub(super) async fn mysql(store: &Datastore, url: &str) -> Result<Db, Error> {
    let db_err = db_error(store);
    let opts = MySqlConnectOptions::from_str(url)
        .map_err(&db_err)?
        .disable_statement_logging();
    let pool_opts = || {
        MySqlPoolOptions::new()
            .max_connections(12)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
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
                .map_err(&db_err)?
                .database("")
                .connect()
                .await
                .map_err(&db_err)?;
            let create = format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                name.replace('`', "``")
            );
            admin
                .execute(AssertSqlSafe(create))
                .await
                .map_err(&db_err)?;
            let _ = admin.close().await;
            pool_opts().connect_with(opts).await.map_err(&db_err)?
        }
        Err(e) => return Err(db_err(e)),
    };
    Ok(Db {
        dialect: Dialect::Mysql,
        sql: sql::for_dialect(Dialect::Mysql),
        write: Pool::Mysql(pool.clone()),
        read: Pool::Mysql(pool),
        sqlite_path: None,
        _lock: None,
        pg_url: None,
    })
}
