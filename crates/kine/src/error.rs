//! Errors: `EtcdError` is what a client sees (etcd's own gRPC codes and messages), `Error` is what stops kine from starting.

use tonic::{Code, Status};

/// A request failure, rendered exactly as etcd renders it (see etcd's `api/v3rpc/rpctypes`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Over the gRPC receive limit (gRPC-Go's own message, as etcd's server answers).
    #[error("grpc: received message larger than max ({len} vs. {max})")]
    MessageTooLarge { len: usize, max: usize },
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A malformed request etcd has no dedicated error for (e.g. an unknown enum value).
    #[error("{0}")]
    InvalidArgument(String),
    /// An etcd RPC that has no meaning for a SQL-backed store (membership changes, downgrades).
    #[error("{0}")]
    Unsupported(String),
    /// The database failed; the request had no effect. `retriable` when retrying the same work may succeed
    /// (lock conflicts, lost connections).
    #[error("kine: database error: {message}")]
    Storage { message: String, retriable: bool },
}

impl EtcdError {
    /// The gRPC status code etcd uses for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::EmptyKey
            | Self::KeyNotFound
            | Self::ValueProvided
            | Self::LeaseProvided
            | Self::TooManyOps
            | Self::DuplicateKey
            | Self::RequestTooLarge
            | Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Compacted | Self::FutureRev | Self::LeaseTtlTooLarge => Code::OutOfRange,
            Self::NoSpace | Self::MessageTooLarge { .. } => Code::ResourceExhausted,
            Self::LeaseNotFound | Self::MemberNotFound => Code::NotFound,
            Self::LeaseExist => Code::FailedPrecondition,
            Self::Stopped | Self::Storage { .. } => Code::Unavailable,
            Self::Unsupported(_) => Code::Unimplemented,
        }
    }

    pub(crate) fn storage(err: impl std::fmt::Display) -> Self {
        Self::Storage {
            message: err.to_string(),
            retriable: false,
        }
    }

    /// Whether the failed work may succeed if tried again.
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            Self::Storage {
                retriable: true,
                ..
            }
        )
    }
}

impl From<EtcdError> for Status {
    fn from(err: EtcdError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<sqlx::Error> for EtcdError {
    fn from(err: sqlx::Error) -> Self {
        let retriable = match &err {
            sqlx::Error::Database(db) => {
                let code = db.code();
                matches!(
                    code.as_deref(),
                    // PostgreSQL serialization failure / deadlock; SQLite BUSY / LOCKED
                    Some("40001") | Some("40P01") | Some("5") | Some("6") | Some("517")
                ) || db
                    .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    // MySQL deadlock / lock wait timeout
                    .is_some_and(|m| matches!(m.number(), 1213 | 1205))
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
            _ => false,
        };
        Self::Storage {
            message: err.to_string(),
            retriable,
        }
    }
}

/// Why kine could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("database {endpoint}: {source}")]
    Database {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {path} is in use by another kine process (lock file {lock})")]
    Locked { path: String, lock: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("store: {0}")]
    Store(#[from] EtcdError),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
