//! The gRPC services (KV, Watch, Lease, Cluster, Maintenance) over the store, and the listener (TCP, TLS or
//! a unix socket). Handlers validate, call the store, and turn errors into etcd's gRPC statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::EtcdError;
use crate::pb::*;
use crate::store::Store;

type RpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const MEMBERSHIP: &str =
    "the members are the kine processes serving the database; start or stop one instead";

/// Chunk size for snapshot and range streams.
const STREAM_CHUNK: usize = 64 * 1024;

/// All five services share one handle on the store.
#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<Store>,
    progress_interval: Duration,
}

impl Service {
    pub fn new(store: Arc<Store>, progress_interval: Duration) -> Self {
        Self {
            store,
            progress_interval,
        }
    }

    /// Runs a unary handler, recording its latency and status code.
    async fn unary<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, EtcdError>>,
    ) -> RpcResult<T> {
        let started = Instant::now();
        let res = fut.await;
        let code = res.as_ref().map_or_else(|e| e.code(), |_| tonic::Code::Ok);
        self.store
            .metrics
            .observe(method, code, started.elapsed().as_secs_f64());
        match res {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                if matches!(e, EtcdError::Storage { .. }) {
                    tracing::warn!(method, err = %e, "request failed");
                }
                Err(e.into())
            }
        }
    }

    /// An etcd RPC with no meaning for a SQL-backed store, with why.
    fn unsupported(what: &str, why: &str) -> Status {
        EtcdError::Unsupported(format!(
            "etcdserver: {what} is not supported by kine: {why}"
        ))
        .into()
    }
}

#[tonic::async_trait]
impl KvService for Service {
    async fn range(&self, request: Request<RangeRequest>) -> RpcResult<RangeResponse> {
        let req = request.into_inner();
        self.unary("Range", self.store.range(&req)).await
    }

    type RangeStreamStream = BoxStream<RangeStreamResponse>;

    async fn range_stream(
        &self,
        request: Request<RangeRequest>,
    ) -> RpcResult<Self::RangeStreamStream> {
        let req = request.into_inner();
        let full = self
            .unary("RangeStream", self.store.range(&req))
            .await?
            .into_inner();
        // Disjoint slices of the key-values; header, more and count on the final chunk.
        let mut chunks: Vec<RangeStreamResponse> = Vec::new();
        let mut cur = Vec::new();
        let mut size = 0;
        for kv in full.kvs {
            size += kv.key.len() + kv.value.len() + 32;
            cur.push(kv);
            if size >= STREAM_CHUNK {
                chunks.push(RangeStreamResponse {
                    range_response: Some(RangeResponse {
                        kvs: std::mem::take(&mut cur),
                        ..Default::default()
                    }),
                });
                size = 0;
            }
        }
        chunks.push(RangeStreamResponse {
            range_response: Some(RangeResponse {
                header: full.header,
                kvs: cur,
                more: full.more,
                count: full.count,
            }),
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn put(&self, request: Request<PutRequest>) -> RpcResult<PutResponse> {
        self.unary("Put", self.store.put(request.into_inner()))
            .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> RpcResult<DeleteRangeResponse> {
        self.unary("DeleteRange", self.store.delete_range(request.into_inner()))
            .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> RpcResult<TxnResponse> {
        self.unary("Txn", self.store.txn(request.into_inner()))
            .await
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> RpcResult<CompactionResponse> {
        let req = request.into_inner();
        self.unary("Compact", async {
            let rev = self.store.compact(req.revision, req.physical).await?;
            Ok(CompactionResponse {
                header: Some(self.store.header(rev)),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl WatchService for Service {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> RpcResult<Self::WatchStream> {
        let rx = crate::watch::serve(
            self.store.clone(),
            request.into_inner(),
            self.progress_interval,
            self.store.config.max_request_bytes,
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl LeaseService for Service {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> RpcResult<LeaseGrantResponse> {
        let req = request.into_inner();
        self.unary("LeaseGrant", self.store.lease_grant(req.id, req.ttl))
            .await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> RpcResult<LeaseRevokeResponse> {
        let req = request.into_inner();
        self.unary("LeaseRevoke", async {
            let rev = self.store.lease_revoke(req.id).await?;
            Ok(LeaseRevokeResponse {
                header: Some(self.store.header(rev)),
            })
        })
        .await
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> RpcResult<Self::LeaseKeepAliveStream> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = store.shutdown.cancelled() => return,
                };
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "keep-alive stream ended");
                        return;
                    }
                };
                let started = Instant::now();
                let res = store.lease_keep_alive(req.id).await;
                let code = res.as_ref().map_or_else(|e| e.code(), |_| tonic::Code::Ok);
                store
                    .metrics
                    .observe("LeaseKeepAlive", code, started.elapsed().as_secs_f64());
                let msg = res.map(|(ttl, rev)| LeaseKeepAliveResponse {
                    header: Some(store.header(rev)),
                    id: req.id,
                    ttl,
                });
                let failed = msg.is_err();
                if tx.send(msg.map_err(Status::from)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> RpcResult<LeaseTimeToLiveResponse> {
        let req = request.into_inner();
        self.unary(
            "LeaseTimeToLive",
            self.store.lease_time_to_live(req.id, req.keys),
        )
        .await
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> RpcResult<LeaseLeasesResponse> {
        self.unary("LeaseLeases", self.store.lease_leases()).await
    }
}

#[tonic::async_trait]
impl ClusterService for Service {
    async fn member_add(&self, _r: Request<MemberAddRequest>) -> RpcResult<MemberAddResponse> {
        Err(Self::unsupported("member add", MEMBERSHIP))
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> RpcResult<MemberRemoveResponse> {
        Err(Self::unsupported("member remove", MEMBERSHIP))
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> RpcResult<MemberUpdateResponse> {
        Err(Self::unsupported("member update", MEMBERSHIP))
    }

    async fn member_list(&self, _r: Request<MemberListRequest>) -> RpcResult<MemberListResponse> {
        self.unary("MemberList", self.store.member_list()).await
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> RpcResult<MemberPromoteResponse> {
        Err(Self::unsupported("member promote", MEMBERSHIP))
    }
}

#[tonic::async_trait]
impl MaintenanceService for Service {
    async fn alarm(&self, request: Request<AlarmRequest>) -> RpcResult<AlarmResponse> {
        self.unary("Alarm", self.store.alarm(request.into_inner()))
            .await
    }

    async fn status(&self, _r: Request<StatusRequest>) -> RpcResult<StatusResponse> {
        self.unary("Status", self.store.status()).await
    }

    async fn defragment(&self, _r: Request<DefragmentRequest>) -> RpcResult<DefragmentResponse> {
        self.unary("Defragment", async {
            self.store.defragment().await?;
            Ok(DefragmentResponse {
                header: Some(self.store.header(self.store.rev())),
            })
        })
        .await
    }

    async fn hash(&self, _r: Request<HashRequest>) -> RpcResult<HashResponse> {
        self.unary("Hash", self.store.hash()).await
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> RpcResult<HashKvResponse> {
        let req = request.into_inner();
        self.unary("HashKV", self.store.hash_kv(req.revision)).await
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(&self, _r: Request<SnapshotRequest>) -> RpcResult<Self::SnapshotStream> {
        let file = self
            .unary("Snapshot", self.store.snapshot_file())
            .await?
            .into_inner();
        let header = self.store.header(self.store.rev());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let send_err = |e: std::io::Error| {
                Status::internal(format!("reading snapshot file {}: {e}", file.0.display()))
            };
            let mut f = match tokio::fs::File::open(&file.0).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(send_err(e))).await;
                    return;
                }
            };
            let total = match f.metadata().await {
                Ok(m) => m.len(),
                Err(e) => {
                    let _ = tx.send(Err(send_err(e))).await;
                    return;
                }
            };
            // As etcd: the database bytes, then their SHA-256 (etcdctl checks it is there).
            use sha2::Digest;
            let mut sha = sha2::Sha256::new();
            let total = total + 32;
            let mut sent = 0u64;
            let mut buf = vec![0u8; STREAM_CHUNK];
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(send_err(e))).await;
                        return;
                    }
                };
                sha.update(&buf[..n]);
                sent += n as u64;
                let resp = SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total.saturating_sub(sent),
                    blob: buf[..n].to_vec(),
                    version: crate::store::ETCD_VERSION.into(),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            let resp = SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: sha.finalize().to_vec(),
                version: crate::store::ETCD_VERSION.into(),
            };
            let _ = tx.send(Ok(resp)).await;
            drop(file);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(&self, _r: Request<MoveLeaderRequest>) -> RpcResult<MoveLeaderResponse> {
        Err(Self::unsupported(
            "move leader",
            "every kine process serves writes; there is no leader to move",
        ))
    }

    async fn downgrade(&self, _r: Request<DowngradeRequest>) -> RpcResult<DowngradeResponse> {
        Err(Self::unsupported(
            "downgrade",
            "the storage format is SQL, not an etcd version",
        ))
    }
}
