//! The write transaction: holds the revision lock from begin to commit, so revisions commit in order across
//! every writer and every kine process sharing the database.

use sqlx::AssertSqlSafe;

use super::{Dialect, LeaseRec, Meta, Pool, decode_row, sql::Sql};
use crate::error::EtcdError;
use crate::types::Row;

enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
}

/// Runs `$body` with `$c` bound to the transaction's concrete connection.
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
            Tx::Mysql(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

pub struct WriteTx {
    tx: Tx,
    sql: &'static Sql,
    dialect: Dialect,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx")
            .field("dialect", &self.dialect)
            .finish()
    }
}

/// Rows per multi-row INSERT (9 parameters each stays under every dialect's limit).
const INSERT_CHUNK: usize = 500;

impl WriteTx {
    pub(super) async fn begin(
        pool: &Pool,
        sql: &'static Sql,
        dialect: Dialect,
    ) -> Result<(Self, Meta), EtcdError> {
        let tx = match pool {
            // IMMEDIATE takes SQLite's write lock now, so the meta we read stays current until commit.
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
            Pool::Mysql(p) => Tx::Mysql(p.begin().await?),
        };
        let mut this = Self { tx, sql, dialect };
        let pairs: Vec<(String, i64)> = on_tx!(&mut this.tx, |c| {
            sqlx::query_as(sql.lock_meta.as_str()).fetch_all(c).await?
        });
        Ok((this, Meta::from_pairs(pairs)))
    }

    /// Committed rows with `after < rev <= upto` (written by other kine processes), in order.
    pub async fn rows_between(&mut self, after: i64, upto: i64) -> Result<Vec<Row>, EtcdError> {
        let sql = self.sql;
        let rows = on_tx!(&mut self.tx, |c| {
            let rows = sqlx::query(sql.rows_between.as_str())
                .bind(after)
                .bind(upto)
                .fetch_all(c)
                .await?;
            rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// The leases among `ids` that exist.
    pub async fn leases(&mut self, ids: &[i64]) -> Result<Vec<LeaseRec>, EtcdError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let q = format!("SELECT id, ttl, expiry FROM kine_lease WHERE id IN ({list})");
        let recs: Vec<(i64, i64, i64)> = on_tx!(&mut self.tx, |c| {
            sqlx::query_as(AssertSqlSafe(q)).fetch_all(c).await?
        });
        Ok(recs
            .into_iter()
            .map(|(id, ttl, expiry)| LeaseRec { id, ttl, expiry })
            .collect())
    }

    pub async fn insert_rows(&mut self, rows: &[Row]) -> Result<(), EtcdError> {
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut q = String::from(self.sql.insert_row_prefix);
            let mut n = 0;
            for (i, _) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push_str(", ");
                }
                q.push('(');
                for j in 0..9 {
                    if j > 0 {
                        q.push_str(", ");
                    }
                    n += 1;
                    if self.dialect == Dialect::Postgres {
                        q.push('$');
                        q.push_str(&n.to_string());
                    } else {
                        q.push('?');
                    }
                }
                q.push(')');
            }
            on_tx!(&mut self.tx, |c| {
                let mut query = sqlx::query(AssertSqlSafe(q));
                for r in chunk {
                    query = super::bind_row(query, r);
                }
                query.execute(c).await?;
            });
        }
        Ok(())
    }

    pub async fn set_meta(&mut self, name: &str, val: i64) -> Result<(), EtcdError> {
        let sql = self.sql;
        on_tx!(&mut self.tx, |c| {
            sqlx::query(sql.set_meta.as_str())
                .bind(val)
                .bind(name)
                .execute(c)
                .await?;
        });
        Ok(())
    }

    pub async fn lease_insert(&mut self, rec: LeaseRec) -> Result<(), EtcdError> {
        let sql = self.sql;
        on_tx!(&mut self.tx, |c| {
            sqlx::query(sql.lease_insert.as_str())
                .bind(rec.id)
                .bind(rec.ttl)
                .bind(rec.expiry)
                .execute(c)
                .await?;
        });
        Ok(())
    }

    pub async fn lease_touch(&mut self, id: i64, expiry: i64) -> Result<(), EtcdError> {
        let sql = self.sql;
        on_tx!(&mut self.tx, |c| {
            sqlx::query(sql.lease_touch.as_str())
                .bind(expiry)
                .bind(id)
                .execute(c)
                .await?;
        });
        Ok(())
    }

    pub async fn lease_delete(&mut self, id: i64) -> Result<(), EtcdError> {
        let sql = self.sql;
        on_tx!(&mut self.tx, |c| {
            sqlx::query(sql.lease_delete.as_str())
                .bind(id)
                .execute(c)
                .await?;
        });
        Ok(())
    }

    /// Physically compacts one window: deletes rows superseded by rows in `(after, upto]` and tombstones
    /// in `[after, upto)`. Returns the number of rows deleted.
    pub async fn compact_window(&mut self, after: i64, upto: i64) -> Result<u64, EtcdError> {
        let sql = self.sql;
        let n = on_tx!(&mut self.tx, |c| {
            let a = sqlx::query(sql.compact_superseded.as_str())
                .bind(after)
                .bind(upto)
                .execute(&mut *c)
                .await?
                .rows_affected();
            let b = sqlx::query(sql.compact_tombstones.as_str())
                .bind(after)
                .bind(upto)
                .execute(c)
                .await?
                .rows_affected();
            a + b
        });
        Ok(n)
    }

    /// Wakes the other kine processes on PostgreSQL (delivered at commit).
    pub async fn notify(&mut self, rev: i64) -> Result<(), EtcdError> {
        if let Tx::Postgres(t) = &mut self.tx {
            sqlx::query("SELECT pg_notify('kine', $1)")
                .bind(rev.to_string())
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), EtcdError> {
        match self.tx {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
            Tx::Mysql(t) => t.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) {
        let res = match self.tx {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
            Tx::Mysql(t) => t.rollback().await,
        };
        if let Err(err) = res {
            tracing::debug!(%err, "rollback failed (the connection is discarded)");
        }
    }
}
