//! Flags of `k3rs-kine` and `k3rs kine` (as K3s's kine, each also `K3RS_*`): the etcd v3 API over SQLite,
//! PostgreSQL or MySQL.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Config, DatastoreTls, ServerTls, parse_duration};
use clap::Parser;
use k3rs_common::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-kine",
    version,
    about = "The etcd v3 API over SQLite, PostgreSQL and MySQL"
)]
pub struct Args {
    /// Where to serve the etcd API: host:port or unix:///path/kine.sock
    #[arg(long, env = "K3RS_LISTEN_ADDRESS", default_value = "127.0.0.1:2379")]
    listen_address: String,
    /// Datastore: sqlite:///path/state.db, postgres://user:pass@host:port/db, mysql://user:pass@tcp(host:port)/db
    #[arg(long, env = "K3RS_ENDPOINT", default_value = "sqlite://./db/state.db")]
    endpoint: String,
    /// CA that signs client certificates (requires and verifies them)
    #[arg(long, env = "K3RS_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Serving certificate (enables TLS)
    #[arg(long, env = "K3RS_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// Serving key
    #[arg(long, env = "K3RS_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// CA of the database server's certificate
    #[arg(long, env = "K3RS_DATASTORE_CA_FILE")]
    datastore_ca_file: Option<PathBuf>,
    /// Client certificate for the database server
    #[arg(long, env = "K3RS_DATASTORE_CERT_FILE")]
    datastore_cert_file: Option<PathBuf>,
    /// Client key for the database server
    #[arg(long, env = "K3RS_DATASTORE_KEY_FILE")]
    datastore_key_file: Option<PathBuf>,
    /// How often to compact history (0 = only on the Compact RPC)
    #[arg(long, env = "K3RS_COMPACT_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    compact_interval: std::time::Duration,
    /// Revisions periodic compaction keeps behind the head
    #[arg(long, env = "K3RS_COMPACT_MIN_RETAIN", default_value_t = 1000)]
    compact_min_retain: i64,
    /// Revisions deleted per compaction transaction
    #[arg(long, env = "K3RS_COMPACT_BATCH_SIZE", default_value_t = 1000)]
    compact_batch_size: i64,
    /// Interval of progress notifications to watchers that request them
    #[arg(long, env = "K3RS_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    watch_progress_notify_interval: std::time::Duration,
    /// Largest accepted request, in bytes (etcd's default is 1.5 MiB)
    #[arg(long, env = "K3RS_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,
    /// Database size that raises the NOSPACE alarm (0 = no quota)
    #[arg(long, env = "K3RS_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    quota_backend_bytes: u64,
    /// Where to serve /metrics, /healthz and /readyz (empty = off)
    #[arg(
        long,
        env = "K3RS_METRICS_BIND_ADDRESS",
        default_value = "127.0.0.1:2381"
    )]
    metrics_bind_address: String,
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    debug: bool,
}

impl Args {
    /// The component configuration these flags describe.
    pub fn into_config(self) -> Result<Config, String> {
        let metrics_bind_address = if self.metrics_bind_address.is_empty() {
            None
        } else {
            Some(
                self.metrics_bind_address
                    .parse::<SocketAddr>()
                    .map_err(|e| {
                        format!(
                            "--metrics-bind-address {:?}: {e}",
                            self.metrics_bind_address
                        )
                    })?,
            )
        };
        let server_tls = match (self.cert_file, self.key_file) {
            (Some(cert_file), Some(key_file)) => Some(ServerTls {
                cert_file,
                key_file,
                ca_file: self.ca_file,
            }),
            _ if self.ca_file.is_some() => {
                return Err("--ca-file needs --cert-file and --key-file".into());
            }
            _ => None,
        };
        if self.compact_batch_size < 1 {
            return Err("--compact-batch-size must be at least 1".into());
        }
        Ok(Config {
            listen_address: self.listen_address,
            endpoint: self.endpoint,
            server_tls,
            datastore_tls: DatastoreTls {
                ca_file: self.datastore_ca_file,
                cert_file: self.datastore_cert_file,
                key_file: self.datastore_key_file,
            },
            compact_interval: (!self.compact_interval.is_zero()).then_some(self.compact_interval),
            compact_min_retain: self.compact_min_retain,
            compact_batch_size: self.compact_batch_size,
            watch_progress_notify_interval: self.watch_progress_notify_interval,
            max_request_bytes: self.max_request_bytes,
            quota_backend_bytes: self.quota_backend_bytes,
            metrics_bind_address,
            ..Config::default()
        })
    }
}

pub fn main(args: Args) -> ExitCode {
    logging::init(args.log_format, if args.debug { "debug" } else { "info" });
    let config = match args.into_config() {
        Ok(c) => c,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "k3rs-kine: {err}");
            return ExitCode::from(2);
        }
    };
    k3rs_common::signal::run_daemon("k3rs-kine", |shutdown| crate::run(config, shutdown))
}
