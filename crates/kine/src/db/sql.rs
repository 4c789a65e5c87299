//! The SQL text of every statement, per dialect. Written once with `?` placeholders; PostgreSQL's `$n`
//! form is derived. Dialect differences (types, upserts, locking, self-joins in DELETE) live here only.

use std::sync::LazyLock;

use super::Dialect;

/// Columns of a log row, in the order `decode_row` reads them.
pub const ROW_COLUMNS: &str = "rev, sub, name, create_rev, prev_rev, version, lease, deleted, val";

#[derive(Debug)]
pub struct Sql {
    pub schema: Vec<String>,
    pub init_meta: String,
    pub meta: String,
    pub lock_meta: String,
    pub set_meta: String,
    pub rows_between: String,
    pub latest_rows: String,
    pub insert_row_prefix: &'static str,
    pub lease_insert: String,
    pub lease_touch: String,
    pub lease_delete: String,
    pub lease_list: String,
    pub lease_get: String,
    pub lease_expired: String,
    pub lease_reset: String,
    pub compact_superseded: String,
    pub compact_tombstones: String,
    pub member_upsert: String,
    pub member_list: String,
    pub alarm_list: String,
    pub alarm_insert: String,
    pub alarm_delete: String,
}

pub fn for_dialect(dialect: Dialect) -> &'static Sql {
    static SQLITE: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::Sqlite));
    static POSTGRES: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::Postgres));
    static MYSQL: LazyLock<Sql> = LazyLock::new(|| Sql::new(Dialect::Mysql));
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
        Dialect::Mysql => &MYSQL,
    }
}

/// Rewrites `?` placeholders as `$1, $2, …` for PostgreSQL (our statements have no `?` in literals).
pub fn placeholders(dialect: Dialect, sql: &str) -> String {
    if dialect != Dialect::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

impl Sql {
    fn new(d: Dialect) -> Self {
        let p = |s: &str| placeholders(d, s);
        let (int, blob, key, text) = match d {
            Dialect::Sqlite => ("INTEGER", "BLOB", "BLOB", "TEXT"),
            Dialect::Postgres => ("BIGINT", "BYTEA", "BYTEA", "TEXT"),
            Dialect::Mysql => ("BIGINT", "LONGBLOB", "VARBINARY(3000)", "TEXT"),
        };
        let engine = if d == Dialect::Mysql {
            " ENGINE=InnoDB"
        } else {
            ""
        };
        let mut schema = vec![format!(
            "CREATE TABLE IF NOT EXISTS kine_log (rev {int} NOT NULL, sub {int} NOT NULL, name {key} NOT NULL, \
             create_rev {int} NOT NULL, prev_rev {int} NOT NULL, version {int} NOT NULL, lease {int} NOT NULL, \
             deleted {int} NOT NULL, val {blob} NOT NULL, PRIMARY KEY (rev, sub){}){engine}",
            if d == Dialect::Mysql {
                ", UNIQUE KEY kine_log_name_rev (name, rev)"
            } else {
                ""
            }
        )];
        if d != Dialect::Mysql {
            schema.push(
                "CREATE UNIQUE INDEX IF NOT EXISTS kine_log_name_rev ON kine_log (name, rev)"
                    .into(),
            );
        }
        let meta_name = if d == Dialect::Sqlite {
            "TEXT"
        } else {
            "VARCHAR(64)"
        };
        schema.push(format!(
            "CREATE TABLE IF NOT EXISTS kine_meta (name {meta_name} NOT NULL PRIMARY KEY, val {int} NOT NULL){engine}"
        ));
        schema.push(format!(
            "CREATE TABLE IF NOT EXISTS kine_lease (id {int} NOT NULL PRIMARY KEY, ttl {int} NOT NULL, expiry {int} NOT NULL){engine}"
        ));
        schema.push(format!(
            "CREATE TABLE IF NOT EXISTS kine_member (id {int} NOT NULL PRIMARY KEY, name {text} NOT NULL, \
             client_urls {text} NOT NULL, seen {int} NOT NULL){engine}"
        ));
        schema.push(format!(
            "CREATE TABLE IF NOT EXISTS kine_alarm (member {int} NOT NULL, alarm {int} NOT NULL, PRIMARY KEY (member, alarm)){engine}"
        ));

        let insert_ignore = |table_cols: &str, values: &str, conflict: &str| match d {
            Dialect::Sqlite => format!("INSERT OR IGNORE INTO {table_cols} VALUES {values}"),
            Dialect::Postgres => {
                format!(
                    "INSERT INTO {table_cols} VALUES {values} ON CONFLICT ({conflict}) DO NOTHING"
                )
            }
            Dialect::Mysql => format!("INSERT IGNORE INTO {table_cols} VALUES {values}"),
        };
        let init_meta = p(&insert_ignore(
            "kine_meta (name, val)",
            "('revision', 1), ('compact_revision', 0), ('compact_done', 0), ('cluster_id', ?)",
            "name",
        ));
        let meta = "SELECT name, val FROM kine_meta".to_string();
        let lock_meta = match d {
            Dialect::Sqlite => meta.clone(),
            _ => format!("{meta} FOR UPDATE"),
        };
        let member_upsert = match d {
            Dialect::Sqlite | Dialect::Postgres => p(
                "INSERT INTO kine_member (id, name, client_urls, seen) VALUES (?, ?, ?, ?) ON CONFLICT (id) \
                 DO UPDATE SET name = excluded.name, client_urls = excluded.client_urls, seen = excluded.seen",
            ),
            Dialect::Mysql => "INSERT INTO kine_member (id, name, client_urls, seen) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE name = VALUES(name), client_urls = VALUES(client_urls), seen = VALUES(seen)"
                .to_string(),
        };
        // Deletes every row superseded by a row in the window (its predecessor, named by prev_rev).
        let compact_superseded = match d {
            Dialect::Sqlite => "DELETE FROM kine_log WHERE (name, rev) IN \
                 (SELECT name, prev_rev FROM kine_log WHERE rev > ? AND rev <= ? AND prev_rev > 0)"
                .to_string(),
            Dialect::Postgres => "DELETE FROM kine_log p USING kine_log n \
                 WHERE p.name = n.name AND p.rev = n.prev_rev AND n.rev > $1 AND n.rev <= $2"
                .to_string(),
            Dialect::Mysql => "DELETE p FROM kine_log p JOIN kine_log n ON p.name = n.name AND p.rev = n.prev_rev \
                 WHERE n.rev > ? AND n.rev <= ?"
                .to_string(),
        };
        Self {
            schema,
            init_meta,
            lock_meta,
            meta,
            set_meta: p("UPDATE kine_meta SET val = ? WHERE name = ?"),
            rows_between: p(&format!(
                "SELECT {ROW_COLUMNS} FROM kine_log WHERE rev > ? AND rev <= ? ORDER BY rev, sub"
            )),
            latest_rows: format!(
                "SELECT {ROW_COLUMNS} FROM kine_log l WHERE NOT EXISTS \
                 (SELECT 1 FROM kine_log n WHERE n.name = l.name AND n.rev > l.rev)"
            ),
            insert_row_prefix: "INSERT INTO kine_log (rev, sub, name, create_rev, prev_rev, version, lease, deleted, val) VALUES ",
            lease_insert: p("INSERT INTO kine_lease (id, ttl, expiry) VALUES (?, ?, ?)"),
            lease_touch: p("UPDATE kine_lease SET expiry = ? WHERE id = ?"),
            lease_delete: p("DELETE FROM kine_lease WHERE id = ?"),
            lease_list: "SELECT id, ttl, expiry FROM kine_lease ORDER BY id".into(),
            lease_get: p("SELECT id, ttl, expiry FROM kine_lease WHERE id = ?"),
            lease_expired: p(
                "SELECT id FROM kine_lease WHERE expiry <= ? ORDER BY expiry LIMIT 256",
            ),
            lease_reset: p("UPDATE kine_lease SET expiry = ? + ttl * 1000"),
            compact_superseded,
            compact_tombstones: p(
                "DELETE FROM kine_log WHERE rev >= ? AND rev < ? AND deleted = 1",
            ),
            member_upsert,
            member_list: p(
                "SELECT id, name, client_urls FROM kine_member WHERE seen >= ? ORDER BY id",
            ),
            alarm_list: "SELECT member, alarm FROM kine_alarm ORDER BY member, alarm".into(),
            alarm_insert: p(&insert_ignore(
                "kine_alarm (member, alarm)",
                "(?, ?)",
                "member, alarm",
            )),
            alarm_delete: p("DELETE FROM kine_alarm WHERE member = ? AND alarm = ?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            placeholders(Dialect::Postgres, "a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(placeholders(Dialect::Mysql, "a = ?"), "a = ?");
    }
}
