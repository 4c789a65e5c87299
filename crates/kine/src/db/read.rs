//! Reads outside the write transaction: history (historical ranges, watch replay, tailing other processes'
//! writes) and the small lease, member and alarm tables.

use bytes::Bytes;
use sqlx::AssertSqlSafe;

use super::{Db, LeaseRec, MemberRec, bind_range, decode_row, on_pool, sql::placeholders};
use crate::error::EtcdError;
use crate::types::{KeyRange, KvData, Row};

/// `WHERE` condition on `alias.name` for a key range (binds: start, then end if any).
fn range_clause(range: &KeyRange, alias: &str) -> String {
    if range.single {
        format!("{alias}.name = ?")
    } else if range.end.is_some() {
        format!("{alias}.name >= ? AND {alias}.name < ?")
    } else {
        format!("{alias}.name >= ?")
    }
}

/// A history row with the key-value it replaced (when that was live and is still stored).
pub type HistoryRow = (Row, Option<KvData>);

impl Db {
    /// The newest row of every key (tombstones included).
    pub async fn latest_rows(&self) -> Result<Vec<Row>, EtcdError> {
        let sql = self.sql;
        let rows = on_pool!(&self.read, |p| {
            let rows = sqlx::query(sql.latest_rows.as_str()).fetch_all(p).await?;
            rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Committed rows with `after < rev <= upto`, in order.
    pub async fn rows_between(&self, after: i64, upto: i64) -> Result<Vec<Row>, EtcdError> {
        let sql = self.sql;
        let rows = on_pool!(&self.read, |p| {
            let rows = sqlx::query(sql.rows_between.as_str())
                .bind(after)
                .bind(upto)
                .fetch_all(p)
                .await?;
            rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    fn at_rev_query(&self, select: &str, range: &KeyRange, tail: &str) -> String {
        placeholders(
            self.dialect,
            &format!(
                "SELECT {select} FROM kine_log l WHERE {} AND l.rev <= ? AND l.deleted = 0 AND NOT EXISTS \
                 (SELECT 1 FROM kine_log n WHERE n.name = l.name AND n.rev > l.rev AND n.rev <= ?){tail}",
                range_clause(range, "l")
            ),
        )
    }

    /// The live key-values of `range` as of revision `rev`, in key order, at most `limit` (0 = all).
    pub async fn range_at(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
    ) -> Result<Vec<KvData>, EtcdError> {
        let tail = if limit > 0 {
            format!(" ORDER BY l.name LIMIT {limit}")
        } else {
            " ORDER BY l.name".to_string()
        };
        let q = self.at_rev_query(
            "l.name, l.create_rev, l.rev, l.version, l.lease, l.val",
            range,
            &tail,
        );
        let kvs = on_pool!(&self.read, |p| {
            use sqlx::Row as _;
            let rows = bind_range(sqlx::query(AssertSqlSafe(q)), range)
                .bind(rev)
                .bind(rev)
                .fetch_all(p)
                .await?;
            let mut kvs = Vec::with_capacity(rows.len());
            for r in &rows {
                kvs.push(KvData {
                    key: Bytes::from(r.try_get::<Vec<u8>, _>(0)?),
                    create_rev: r.try_get(1)?,
                    mod_rev: r.try_get(2)?,
                    version: r.try_get(3)?,
                    lease: r.try_get(4)?,
                    value: Bytes::from(r.try_get::<Vec<u8>, _>(5)?),
                });
            }
            kvs
        });
        Ok(kvs)
    }

    /// How many keys of `range` were live at revision `rev`.
    pub async fn count_at(&self, range: &KeyRange, rev: i64) -> Result<i64, EtcdError> {
        let q = self.at_rev_query("COUNT(*)", range, "");
        let n: i64 = on_pool!(&self.read, |p| {
            use sqlx::Row as _;
            bind_range(sqlx::query(AssertSqlSafe(q)), range)
                .bind(rev)
                .bind(rev)
                .fetch_one(p)
                .await?
                .try_get(0)?
        });
        Ok(n)
    }

    /// The changes to `range` with `from <= rev <= to`, in revision order, each with its previous
    /// key-value when `with_prev`.
    pub async fn history(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        with_prev: bool,
    ) -> Result<Vec<HistoryRow>, EtcdError> {
        let cols =
            "l.rev, l.sub, l.name, l.create_rev, l.prev_rev, l.version, l.lease, l.deleted, l.val";
        let q = if with_prev {
            format!(
                "SELECT {cols}, p.create_rev, p.version, p.lease, p.deleted, p.val FROM kine_log l \
                 LEFT JOIN kine_log p ON p.name = l.name AND p.rev = l.prev_rev \
                 WHERE l.rev >= ? AND l.rev <= ? AND {} ORDER BY l.rev, l.sub",
                range_clause(range, "l")
            )
        } else {
            format!(
                "SELECT {cols} FROM kine_log l WHERE l.rev >= ? AND l.rev <= ? AND {} ORDER BY l.rev, l.sub",
                range_clause(range, "l")
            )
        };
        let q = placeholders(self.dialect, &q);
        let out = on_pool!(&self.read, |p| {
            let rows = bind_range(sqlx::query(AssertSqlSafe(q)).bind(from).bind(to), range)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                use sqlx::Row as _;
                let row = decode_row(r)?;
                let prev = if with_prev {
                    let deleted: Option<i64> = r.try_get(12)?;
                    match deleted {
                        Some(0) => Some(KvData {
                            key: row.key.clone(),
                            create_rev: r.try_get::<Option<i64>, _>(9)?.unwrap_or_default(),
                            mod_rev: row.prev_rev,
                            version: r.try_get::<Option<i64>, _>(10)?.unwrap_or_default(),
                            lease: r.try_get::<Option<i64>, _>(11)?.unwrap_or_default(),
                            value: Bytes::from(
                                r.try_get::<Option<Vec<u8>>, _>(13)?.unwrap_or_default(),
                            ),
                        }),
                        _ => None,
                    }
                } else {
                    None
                };
                out.push((row, prev));
            }
            out
        });
        Ok(out)
    }

    pub async fn lease_list(&self) -> Result<Vec<LeaseRec>, EtcdError> {
        let sql = self.sql;
        let recs: Vec<(i64, i64, i64)> = on_pool!(&self.read, |p| {
            sqlx::query_as(sql.lease_list.as_str()).fetch_all(p).await?
        });
        Ok(recs
            .into_iter()
            .map(|(id, ttl, expiry)| LeaseRec { id, ttl, expiry })
            .collect())
    }

    pub async fn lease_get(&self, id: i64) -> Result<Option<LeaseRec>, EtcdError> {
        let sql = self.sql;
        let rec: Option<(i64, i64, i64)> = on_pool!(&self.read, |p| {
            sqlx::query_as(sql.lease_get.as_str())
                .bind(id)
                .fetch_optional(p)
                .await?
        });
        Ok(rec.map(|(id, ttl, expiry)| LeaseRec { id, ttl, expiry }))
    }

    /// Leases whose expiry is at or before `now_ms`.
    pub async fn lease_expired(&self, now_ms: i64) -> Result<Vec<i64>, EtcdError> {
        let sql = self.sql;
        let ids: Vec<(i64,)> = on_pool!(&self.read, |p| {
            sqlx::query_as(sql.lease_expired.as_str())
                .bind(now_ms)
                .fetch_all(p)
                .await?
        });
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Restarts every lease's TTL from `now_ms` (etcd does the same when a leader takes over).
    pub async fn lease_reset(&self, now_ms: i64) -> Result<(), EtcdError> {
        let sql = self.sql;
        on_pool!(&self.write, |p| {
            sqlx::query(sql.lease_reset.as_str())
                .bind(now_ms)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    pub async fn member_upsert(&self, m: &MemberRec, now_ms: i64) -> Result<(), EtcdError> {
        let sql = self.sql;
        let urls = m.client_urls.join(",");
        on_pool!(&self.write, |p| {
            sqlx::query(sql.member_upsert.as_str())
                .bind(m.id as i64)
                .bind(m.name.as_str())
                .bind(urls.as_str())
                .bind(now_ms)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Members seen at or after `since_ms`.
    pub async fn member_list(&self, since_ms: i64) -> Result<Vec<MemberRec>, EtcdError> {
        let sql = self.sql;
        let rows: Vec<(i64, String, String)> = on_pool!(&self.read, |p| {
            sqlx::query_as(sql.member_list.as_str())
                .bind(since_ms)
                .fetch_all(p)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, name, urls)| MemberRec {
                id: id as u64,
                name,
                client_urls: urls
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            })
            .collect())
    }

    /// Raised alarms as (member id, alarm type).
    pub async fn alarm_list(&self) -> Result<Vec<(u64, i32)>, EtcdError> {
        let sql = self.sql;
        let rows: Vec<(i64, i64)> = on_pool!(&self.read, |p| {
            sqlx::query_as(sql.alarm_list.as_str()).fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .map(|(m, a)| (m as u64, a as i32))
            .collect())
    }

    pub async fn alarm_set(&self, member: u64, alarm: i32, raised: bool) -> Result<(), EtcdError> {
        let sql = self.sql;
        let stmt = if raised {
            sql.alarm_insert.as_str()
        } else {
            sql.alarm_delete.as_str()
        };
        on_pool!(&self.write, |p| {
            sqlx::query(stmt)
                .bind(member as i64)
                .bind(i64::from(alarm))
                .execute(p)
                .await?;
        });
        Ok(())
    }
}
