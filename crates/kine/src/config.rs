//! Configuration: where to listen, which datastore to use and how, and the housekeeping intervals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// Everything `run` needs. The binary builds it from flags (`K3RS_*` env vars), the launcher from its own config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port`, `http://host:port`, `https://host:port` or `unix:///path/kine.sock`.
    pub listen_address: String,
    /// `sqlite:///path/state.db`, `postgres://…` or `mysql://…` (also Go's `mysql://u:p@tcp(h:p)/db` form).
    pub endpoint: String,
    /// Serve TLS with this certificate and key; with `ca_file`, also require client certificates it signed.
    pub server_tls: Option<ServerTls>,
    /// TLS to the database server.
    pub datastore_tls: DatastoreTls,
    /// How often history is compacted (`None` = only on the Compact RPC).
    pub compact_interval: Option<Duration>,
    /// Revisions kept behind the head by periodic compaction.
    pub compact_min_retain: i64,
    /// Revisions deleted per compaction transaction.
    pub compact_batch_size: i64,
    /// How often watchers that asked for progress notifications get one when idle.
    pub watch_progress_notify_interval: Duration,
    /// Largest accepted request (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Database size that raises the NOSPACE alarm (0 = no quota).
    pub quota_backend_bytes: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None` = not served).
    pub metrics_bind_address: Option<SocketAddr>,
    /// Byte budget of the in-memory ring of recent watch events.
    pub watch_ring_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:2379".into(),
            endpoint: String::new(),
            server_tls: None,
            datastore_tls: DatastoreTls::default(),
            compact_interval: Some(Duration::from_secs(300)),
            compact_min_retain: 1000,
            compact_batch_size: 1000,
            watch_progress_notify_interval: Duration::from_secs(5),
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: 0,
            metrics_bind_address: None,
            watch_ring_bytes: 16 << 20,
        }
    }
}

/// Certificate files for serving TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// Certificate files for TLS to PostgreSQL or MySQL.
#[derive(Debug, Clone, Default)]
pub struct DatastoreTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The default SQLite file, as K3s's kine: `./db/state.db`.
pub const DEFAULT_SQLITE_PATH: &str = "./db/state.db";

/// A parsed `--endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    Sqlite { path: PathBuf },
    Postgres { url: String },
    Mysql { url: String },
}

impl Datastore {
    /// Parses an endpoint as K3s's kine accepts it, adding the datastore TLS files as driver options.
    pub fn parse(endpoint: &str, tls: &DatastoreTls) -> Result<Self, Error> {
        let endpoint = endpoint.trim();
        if endpoint.is_empty() {
            return Ok(Self::Sqlite {
                path: DEFAULT_SQLITE_PATH.into(),
            });
        }
        let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
            Error::Config(format!(
                "endpoint {endpoint:?} has no scheme (sqlite://, postgres:// or mysql://)"
            ))
        })?;
        match scheme {
            "sqlite" => {
                let path = rest.split('?').next().unwrap_or_default();
                let path = if path.is_empty() {
                    DEFAULT_SQLITE_PATH
                } else {
                    path
                };
                Ok(Self::Sqlite { path: path.into() })
            }
            "postgres" | "postgresql" => {
                let mut url = parse_url(&format!("postgres://{rest}"))?;
                default_database(&mut url);
                let has = |k: &str| url.query_pairs().any(|(key, _)| key == k);
                let mut extra = Vec::new();
                if let Some(ca) = &tls.ca_file {
                    if !has("sslmode") {
                        extra.push(("sslmode", "verify-full".to_string()));
                    }
                    extra.push(("sslrootcert", ca.display().to_string()));
                }
                if let Some(cert) = &tls.cert_file {
                    extra.push(("sslcert", cert.display().to_string()));
                }
                if let Some(key) = &tls.key_file {
                    extra.push(("sslkey", key.display().to_string()));
                }
                add_query(&mut url, &extra);
                Ok(Self::Postgres { url: url.into() })
            }
            "mysql" => {
                // Go's DSN form: user:pass@tcp(host:port)/db
                let rest = match (rest.find("@tcp("), rest.rfind(")/")) {
                    (Some(at), Some(close)) if close > at => {
                        format!(
                            "{}@{}{}",
                            &rest[..at],
                            &rest[at + 5..close],
                            &rest[close + 1..]
                        )
                    }
                    _ if rest.starts_with("tcp(") => match rest.find(')') {
                        Some(close) => format!("{}{}", &rest[4..close], &rest[close + 1..]),
                        None => rest.to_string(),
                    },
                    _ => rest.to_string(),
                };
                let mut url = parse_url(&format!("mysql://{rest}"))?;
                default_database(&mut url);
                let mut extra = Vec::new();
                if let Some(ca) = &tls.ca_file {
                    extra.push(("ssl-mode", "VERIFY_IDENTITY".to_string()));
                    extra.push(("ssl-ca", ca.display().to_string()));
                }
                if let Some(cert) = &tls.cert_file {
                    extra.push(("ssl-cert", cert.display().to_string()));
                }
                if let Some(key) = &tls.key_file {
                    extra.push(("ssl-key", key.display().to_string()));
                }
                add_query(&mut url, &extra);
                Ok(Self::Mysql { url: url.into() })
            }
            "http" | "https" => Err(Error::Config(format!(
                "endpoint {endpoint:?} is an etcd cluster; kine serves SQL datastores (point the apiserver at etcd directly)"
            ))),
            other => Err(Error::Config(format!(
                "unsupported endpoint scheme {other:?} (expected sqlite://, postgres:// or mysql://)"
            ))),
        }
    }

    /// The endpoint with any password hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite { path } => format!("sqlite://{}", path.display()),
            Self::Postgres { url } | Self::Mysql { url } => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.into()
                }
                Err(_) => "<unparseable url>".into(),
            },
        }
    }
}

fn parse_url(s: &str) -> Result<url::Url, Error> {
    url::Url::parse(s).map_err(|e| Error::Config(format!("invalid datastore endpoint: {e}")))
}

/// K3s's kine uses the database `kubernetes` when the endpoint names none.
fn default_database(url: &mut url::Url) {
    if url.path().trim_matches('/').is_empty() {
        url.set_path("/kubernetes");
    }
}

fn add_query(url: &mut url::Url, extra: &[(&str, String)]) {
    if extra.is_empty() {
        return;
    }
    let mut pairs = url.query_pairs_mut();
    for (k, v) in extra {
        pairs.append_pair(k, v);
    }
}

/// Parses a duration as Go prints them (`5m`, `1h30m`, `500ms`, `10s`) or plain seconds; `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} lacks a unit (h, m, s, ms, us, ns)"))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid number in duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_as_kine_accepts_them() {
        let none = DatastoreTls::default();
        assert_eq!(
            Datastore::parse("", &none).unwrap(),
            Datastore::Sqlite {
                path: "./db/state.db".into()
            }
        );
        assert_eq!(
            Datastore::parse("sqlite:///var/lib/k3rs/state.db?_journal=WAL", &none).unwrap(),
            Datastore::Sqlite {
                path: "/var/lib/k3rs/state.db".into()
            }
        );
        assert_eq!(
            Datastore::parse("mysql://u:p@tcp(db:3306)/k8s", &none).unwrap(),
            Datastore::Mysql {
                url: "mysql://u:p@db:3306/k8s".into()
            }
        );
        assert_eq!(
            Datastore::parse("mysql://u:p@db:3306", &none).unwrap(),
            Datastore::Mysql {
                url: "mysql://u:p@db:3306/kubernetes".into()
            }
        );
        let tls = DatastoreTls {
            ca_file: Some("/ca.pem".into()),
            ..Default::default()
        };
        match Datastore::parse("postgresql://u:secret@h/k", &tls).unwrap() {
            Datastore::Postgres { url } => {
                assert!(url.starts_with("postgres://u:secret@h/k?sslmode=verify-full&sslrootcert="))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Datastore::parse("https://etcd:2379", &none).is_err());
        assert!(Datastore::parse("redis://x", &none).is_err());
        let pg = Datastore::parse("postgres://u:secret@h/k", &none).unwrap();
        assert!(!pg.redacted().contains("secret"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5 parsecs").is_err());
    }
}
