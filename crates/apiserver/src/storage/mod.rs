//! Object storage over the etcd v3 API, in the transaction shapes upstream's etcd3 store uses: create if absent,
//! update and delete guarded by the mod revision, ranged reads at a fixed revision, prefix watches.

mod connect;
pub mod encryption;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
    WatchClient, WatchOptions, WatchResponseStream,
};

pub use connect::{EtcdTls, connect};

/// A storage failure that is not a normal outcome (not found, conflict) of a request.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The requested revision was compacted away.
    #[error("mvcc: required revision has been compacted (compacted at {0})")]
    Compacted(i64),
    /// The value is larger than the datastore accepts.
    #[error("etcdserver: request is too large")]
    TooLarge,
    #[error("etcd request failed: {0}")]
    Etcd(#[source] etcd_client::Error),
}

impl From<etcd_client::Error> for StorageError {
    fn from(err: etcd_client::Error) -> Self {
        if let etcd_client::Error::GRpcStatus(status) = &err {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                return StorageError::Compacted(0);
            }
            if msg.contains("request is too large") {
                return StorageError::TooLarge;
            }
        }
        StorageError::Etcd(err)
    }
}

/// One stored object: its value and revisions.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
}

impl Stored {
    /// A key-value as read, decrypted when it was stored encrypted (a value that cannot be decrypted is
    /// kept as it is, so decoding it fails with an internal error rather than yielding something else).
    fn from_kv(kv: &etcd_client::KeyValue, transformer: &encryption::Transformer) -> Self {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value = match transformer.from_storage(kv.value()) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(%key, %err, "cannot decrypt a stored value");
                kv.value().to_vec()
            }
        };
        Self {
            key,
            value,
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }
    }
}

/// A page of a ranged read.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Stored>,
    /// The revision the page was read at.
    pub revision: i64,
    /// More keys follow the last one.
    pub more: bool,
    /// Keys in the whole range at `revision` (from the first request of a range).
    pub count: i64,
}

/// The outcome of a guarded write.
#[derive(Debug)]
pub enum Guarded {
    /// Written (or deleted) at this revision.
    Done(i64),
    /// The key's mod revision differed: the current object, if any.
    Changed(Option<Stored>),
}

/// A watch event on one key.
#[derive(Debug)]
pub enum WatchEvent {
    Put {
        current: Stored,
        previous: Option<Stored>,
    },
    Delete {
        previous: Option<Stored>,
        revision: i64,
        key: String,
    },
}

/// What a watch stream yields.
#[derive(Debug)]
pub enum WatchMessage {
    Events(Vec<WatchEvent>),
    /// No events; the store has progressed to this revision.
    Progress(i64),
    /// The start revision was compacted (compacted revision given).
    Compacted(i64),
}

/// The storage handle; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    kv: KvClient,
    watch: WatchClient,
    /// Encryption at rest (Secrets), shared with every clone.
    pub transformer: encryption::Transformer,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

/// The end of a prefix range.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Storage {
    pub fn new(client: &Client) -> Self {
        // A full list of many objects is one large range response: lift gRPC's 4 MiB default, as upstream's
        // etcd3 client does (MaxCallRecvMsgSize = MaxInt32).
        const MAX_MESSAGE: usize = i32::MAX as usize;
        Self {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            transformer: encryption::Transformer::default(),
        }
    }

    /// The same storage, encrypting and decrypting with `transformer`.
    pub fn with_transformer(mut self, transformer: encryption::Transformer) -> Self {
        self.transformer = transformer;
        self
    }

    /// One object at the newest revision.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>, StorageError> {
        let resp = self.kv.clone().get(key, None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| Stored::from_kv(kv, &self.transformer)))
    }

    /// Creates `key` if it does not exist; `Changed(existing)` if it does.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Guarded, StorageError> {
        let value = self.transformer.to_storage(key, value);
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        self.guarded(txn).await
    }

    /// Replaces `key` if its mod revision is still `expected`.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> Result<Guarded, StorageError> {
        let value = self.transformer.to_storage(key, value);
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        self.guarded(txn).await
    }

    /// Deletes `key` if its mod revision is still `expected`.
    pub async fn delete(&self, key: &str, expected: i64) -> Result<Guarded, StorageError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        self.guarded(txn).await
    }

    /// Deletes every key under `prefix` (a CRD's objects when the CRD goes).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, StorageError> {
        let resp = self
            .kv
            .clone()
            .delete(
                prefix,
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await?;
        Ok(resp.deleted())
    }

    async fn guarded(&self, txn: Txn) -> Result<Guarded, StorageError> {
        let resp = self.kv.clone().txn(txn).await?;
        if resp.succeeded() {
            return Ok(Guarded::Done(resp.header().map_or(0, |h| h.revision())));
        }
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| Stored::from_kv(kv, &self.transformer)),
            _ => None,
        });
        Ok(Guarded::Changed(current))
    }

    /// Up to `limit` keys (0 = all) of the range `[start, end)` at `revision` (0 = newest).
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<Page, StorageError> {
        let mut opts = GetOptions::new().with_range(end.to_vec()).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = self.kv.clone().get(start.to_vec(), Some(opts)).await?;
        Ok(Page {
            items: resp
                .kvs()
                .iter()
                .map(|kv| Stored::from_kv(kv, &self.transformer))
                .collect(),
            revision: resp.header().map_or(revision, |h| h.revision()),
            more: resp.more(),
            count: resp.count(),
        })
    }

    /// Every key under `prefix` with its value as stored (not decrypted) and its mod revision.
    pub async fn raw_values(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>, i64)>, StorageError> {
        let resp = self
            .kv
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect())
    }

    /// Watches keys under `prefix` (or exactly `prefix` when `exact`) from `start_revision`.
    pub async fn watch(
        &self,
        prefix: &str,
        exact: bool,
        start_revision: i64,
    ) -> Result<Watch, StorageError> {
        let mut opts = WatchOptions::new()
            .with_start_revision(start_revision)
            .with_prev_key()
            .with_progress_notify();
        if !exact {
            opts = opts.with_prefix();
        }
        let stream = self.watch.clone().watch(prefix, Some(opts)).await?;
        let (sender, responses) = stream.split();
        Ok(Watch {
            _sender: sender,
            responses,
            transformer: self.transformer.clone(),
        })
    }
}

/// A running etcd watch; dropping it cancels the watch.
pub struct Watch {
    _sender: etcd_client::WatchRequestSender,
    responses: WatchResponseStream,
    transformer: encryption::Transformer,
}

impl Watch {
    /// The next batch; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, StorageError> {
        loop {
            let Some(resp) = self.responses.message().await? else {
                return Ok(None);
            };
            if resp.compact_revision() > 0 {
                return Ok(Some(WatchMessage::Compacted(resp.compact_revision())));
            }
            if resp.canceled() {
                return Err(StorageError::Etcd(etcd_client::Error::WatchError(format!(
                    "watch canceled: {}",
                    resp.cancel_reason()
                ))));
            }
            if resp.created() && resp.events().is_empty() {
                continue;
            }
            if resp.events().is_empty() {
                let rev = resp.header().map_or(0, |h| h.revision());
                return Ok(Some(WatchMessage::Progress(rev)));
            }
            let events = resp
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    let t = &self.transformer;
                    let previous = ev.prev_kv().map(|p| Stored::from_kv(p, t));
                    Some(match ev.event_type() {
                        EventType::Put => WatchEvent::Put {
                            current: Stored::from_kv(kv, t),
                            previous,
                        },
                        EventType::Delete => WatchEvent::Delete {
                            previous,
                            revision: kv.mod_revision(),
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                        },
                    })
                })
                .collect();
            return Ok(Some(WatchMessage::Events(events)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
    }
}
