//! Maintenance on the datastore: size, defragmentation, consistent snapshots (as a SQLite file) and a hash
//! of the stored log.

use std::path::Path;

use sqlx::{AssertSqlSafe, Connection, Executor};

use super::{Db, Dialect, Pool, decode_row, on_pool, sql};
use crate::error::EtcdError;
use crate::types::Row;

/// Revisions read per query when scanning the whole log.
const SCAN_WINDOW: i64 = 2000;

impl Db {
    /// (allocated bytes, bytes holding data).
    pub async fn size(&self) -> Result<(i64, i64), EtcdError> {
        match &self.read {
            Pool::Sqlite(p) => {
                let (pages, free, page_size): (i64, i64, i64) = sqlx::query_as(
                    "SELECT page_count, freelist_count, page_size FROM pragma_page_count(), \
                     pragma_freelist_count(), pragma_page_size()",
                )
                .fetch_one(p)
                .await?;
                let wal = self
                    .sqlite_path
                    .as_ref()
                    .and_then(|path| std::fs::metadata(format!("{}-wal", path.display())).ok())
                    .map_or(0, |m| m.len() as i64);
                Ok((pages * page_size + wal, (pages - free) * page_size))
            }
            Pool::Postgres(p) => {
                let (total,): (i64,) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) FROM pg_class c \
                     WHERE c.relkind = 'r' AND c.relname LIKE 'kine\\_%' AND pg_table_is_visible(c.oid)",
                )
                .fetch_one(p)
                .await?;
                Ok((total, total))
            }
            Pool::Mysql(p) => {
                let (used, free): (i64, i64) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED), \
                     CAST(COALESCE(SUM(data_free), 0) AS SIGNED) FROM information_schema.tables \
                     WHERE table_schema = DATABASE() AND table_name LIKE 'kine\\_%'",
                )
                .fetch_one(p)
                .await?;
                Ok((used + free, used))
            }
        }
    }

    /// Returns free space to the filesystem (SQLite VACUUM, PostgreSQL VACUUM FULL, MySQL OPTIMIZE TABLE).
    pub async fn defrag(&self) -> Result<(), EtcdError> {
        match &self.write {
            Pool::Sqlite(p) => {
                let mut conn = p.acquire().await?;
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
                conn.execute("VACUUM").await?;
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
            }
            Pool::Postgres(p) => {
                // One statement per query: several would form a transaction block VACUUM refuses.
                for t in ["kine_log", "kine_lease", "kine_meta"] {
                    sqlx::raw_sql(AssertSqlSafe(format!("VACUUM FULL {t}")))
                        .execute(p)
                        .await?;
                }
            }
            Pool::Mysql(p) => {
                let mut conn = p.acquire().await?;
                for t in ["kine_log", "kine_lease", "kine_meta"] {
                    // OPTIMIZE answers with a result set; read and drop it.
                    conn.fetch_all(AssertSqlSafe(format!("OPTIMIZE TABLE {t}")))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Writes a consistent copy of the datastore to `dest` as a SQLite database with kine's schema
    /// (usable directly as `--endpoint sqlite://<dest>`).
    pub async fn snapshot_to(&self, dest: &Path) -> Result<(), EtcdError> {
        if let Pool::Sqlite(p) = &self.read {
            sqlx::query("VACUUM INTO ?")
                .bind(dest.display().to_string())
                .execute(p)
                .await?;
            return Ok(());
        }
        let target_sql = sql::for_dialect(Dialect::Sqlite);
        let mut out = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dest)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete),
        )
        .await?;
        for stmt in &target_sql.schema {
            out.execute(stmt.as_str()).await?;
        }
        let mut tx_out = out.begin().await?;
        on_pool!(&self.read, |p| {
            let mut conn = p.acquire().await?;
            if self.dialect == Dialect::Mysql {
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await?;
            }
            let begin = match self.dialect {
                Dialect::Mysql => "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                _ => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            };
            let mut tx = conn.begin_with(begin).await?;
            let meta: Vec<(String, i64)> = sqlx::query_as(self.sql.meta.as_str())
                .fetch_all(&mut *tx)
                .await?;
            for (name, val) in &meta {
                sqlx::query("INSERT INTO kine_meta (name, val) VALUES (?, ?)")
                    .bind(name.as_str())
                    .bind(*val)
                    .execute(&mut *tx_out)
                    .await?;
            }
            let leases: Vec<(i64, i64, i64)> = sqlx::query_as(self.sql.lease_list.as_str())
                .fetch_all(&mut *tx)
                .await?;
            for (id, ttl, expiry) in leases {
                sqlx::query("INSERT INTO kine_lease (id, ttl, expiry) VALUES (?, ?, ?)")
                    .bind(id)
                    .bind(ttl)
                    .bind(expiry)
                    .execute(&mut *tx_out)
                    .await?;
            }
            let head = super::Meta::from_pairs(meta).rev;
            let mut after = 0;
            while after < head {
                let upto = (after + SCAN_WINDOW).min(head);
                let rows = sqlx::query(self.sql.rows_between.as_str())
                    .bind(after)
                    .bind(upto)
                    .fetch_all(&mut *tx)
                    .await?;
                for r in &rows {
                    let row = decode_row(r)?;
                    super::bind_row(
                        sqlx::query(
                            "INSERT INTO kine_log (rev, sub, name, create_rev, prev_rev, version, lease, deleted, val) \
                             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        ),
                        &row,
                    )
                    .execute(&mut *tx_out)
                    .await?;
                }
                after = upto;
            }
            tx.commit().await?;
        });
        tx_out.commit().await?;
        out.close().await?;
        Ok(())
    }

    /// Calls `f` with every stored log row up to revision `upto`, in order, window by window.
    pub async fn scan_log(&self, upto: i64, mut f: impl FnMut(&Row)) -> Result<(), EtcdError> {
        let mut after = 0;
        while after < upto {
            let end = (after + SCAN_WINDOW).min(upto);
            for row in self.rows_between(after, end).await? {
                f(&row);
            }
            after = end;
        }
        Ok(())
    }
}
