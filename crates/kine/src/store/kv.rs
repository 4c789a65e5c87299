//! KV operations as the gRPC layer calls them: validation, the read path (index first, SQL history when the
//! index cannot answer), and writes handed to the writer.

use prost::Message;

use super::{Op, OpResult, Store};
use crate::error::EtcdError;
use crate::pb::{
    DeleteRangeRequest, DeleteRangeResponse, OpRequest, OpResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use crate::range;
use crate::txn::{self, Batch, OpCtx};
use crate::types::KeyRange;

impl Store {
    /// Rejects requests over `--max-request-bytes`, as etcd does: past the gRPC allowance with gRPC's own
    /// error, otherwise with etcd's (its raft proposals are capped at the limit).
    fn check_size(&self, req: &impl Message) -> Result<(), EtcdError> {
        let len = req.encoded_len();
        let grpc_max = self.config.max_request_bytes + crate::GRPC_OVERHEAD_BYTES;
        if len > grpc_max {
            return Err(EtcdError::MessageTooLarge { len, max: grpc_max });
        }
        if len > self.config.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    fn check_key_len(&self, key: &[u8]) -> Result<(), EtcdError> {
        let max = self.db.dialect.max_key_len();
        if key.len() > max {
            return Err(EtcdError::InvalidArgument(format!(
                "etcdserver: key is {} bytes; the {} datastore holds keys of at most {max} bytes",
                key.len(),
                self.db.dialect.name()
            )));
        }
        Ok(())
    }

    fn check_txn_keys(&self, req: &TxnRequest) -> Result<(), EtcdError> {
        for op in req.success.iter().chain(&req.failure) {
            match &op.request {
                Some(OpRequest::RequestPut(p)) => self.check_key_len(&p.key)?,
                Some(OpRequest::RequestTxn(t)) => self.check_txn_keys(t)?,
                _ => {}
            }
        }
        Ok(())
    }

    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        range::validate(req)?;
        self.check_size(req)?;
        if !req.serializable {
            self.linearize().await?;
        }
        let mut resp = self.read_range(req, None).await?;
        resp.header = Some(self.header(resp.header.map_or(0, |h| h.revision)));
        Ok(resp)
    }

    /// Answers a range at its revision (or now). `header_rev` overrides the header revision (txn ranges).
    pub(crate) async fn read_range(
        &self,
        req: &RangeRequest,
        header_rev: Option<i64>,
    ) -> Result<RangeResponse, EtcdError> {
        let range = KeyRange::from_request(&req.key, &req.range_end);
        let (cur, at, fetched) = {
            let st = self.state();
            let cur = st.rev();
            if req.revision > cur {
                return Err(EtcdError::FutureRev);
            }
            let at = if req.revision <= 0 { cur } else { req.revision };
            if at < st.compact_rev() {
                return Err(EtcdError::Compacted);
            }
            (cur, at, range::collect(req, |f| st.visit_at(&range, at, f)))
        };
        let fetched = match fetched {
            Some(f) => f,
            None => self.range_from_history(req, &range, at).await?,
        };
        Ok(range::finish(fetched, req, header_rev.unwrap_or(cur)))
    }

    async fn range_from_history(
        &self,
        req: &RangeRequest,
        range: &KeyRange,
        at: i64,
    ) -> Result<range::Fetched, EtcdError> {
        let limit = range::fetch_limit(req);
        let kvs = if req.count_only {
            Vec::new()
        } else {
            self.db.range_at(range, at, limit).await?
        };
        let count = if !req.count_only && (limit == 0 || kvs.len() < limit) {
            kvs.len() as i64
        } else {
            self.db.count_at(range, at).await?
        };
        // Compaction deletes history only after announcing it: if it has not reached `at` now, the rows
        // we read were complete.
        if at < self.compact_rev_now().await? {
            return Err(EtcdError::Compacted);
        }
        Ok(range::Fetched {
            kvs: kvs.into_iter().map(std::sync::Arc::new).collect(),
            count,
        })
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, EtcdError> {
        txn::check_put(&req)?;
        self.check_size(&req)?;
        self.check_key_len(&req.key)?;
        match self.run_single(OpRequest::RequestPut(req)).await? {
            (OpResponse::ResponsePut(p), header) => Ok(PutResponse { header, ..p }),
            _ => Err(EtcdError::storage("put produced no response")),
        }
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        txn::check_delete(&req)?;
        self.check_size(&req)?;
        match self.run_single(OpRequest::RequestDeleteRange(req)).await? {
            (OpResponse::ResponseDeleteRange(d), header) => Ok(DeleteRangeResponse { header, ..d }),
            _ => Err(EtcdError::storage("delete produced no response")),
        }
    }

    /// Runs one op as a txn without compares (as etcd applies Put and DeleteRange); returns its response
    /// and the full header it gets as a top-level response.
    async fn run_single(
        &self,
        op: OpRequest,
    ) -> Result<(OpResponse, Option<crate::pb::ResponseHeader>), EtcdError> {
        let resp = self
            .run_txn(TxnRequest {
                compare: Vec::new(),
                success: vec![RequestOp { request: Some(op) }],
                failure: Vec::new(),
            })
            .await?;
        let header = resp.header;
        let op = resp
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
            .ok_or_else(|| EtcdError::storage("txn produced no response"))?;
        Ok((op, header))
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        txn::check_txn_request(&req, txn::MAX_TXN_OPS)?;
        txn::check_intervals(&req.success)?;
        txn::check_intervals(&req.failure)?;
        self.check_size(&req)?;
        self.check_txn_keys(&req)?;
        self.run_txn(req).await
    }

    /// Runs a validated txn: read-only ones against the index, others through the writer.
    async fn run_txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        let (mut resp, rev, pending) = if txn::is_read_only(&req) {
            self.linearize().await?;
            let st = self.state();
            let mut batch = Batch::new(st.rev(), st.compact_rev(), 0);
            let path = txn::compare_path(&st, &batch, &req);
            txn::check_requests(&st, &batch, &req, &path)?;
            let mut ctx = OpCtx::new(&batch);
            let (resp, _) = txn::exec_txn(&st, &mut batch, &req, &path, &mut ctx, &mut Vec::new());
            (resp, st.rev(), ctx.pending)
        } else {
            match self.submit(Op::Txn(req)).await? {
                OpResult::Txn { resp, rev, pending } => (resp, rev, pending),
                _ => return Err(EtcdError::storage("txn produced no response")),
            }
        };
        for p in pending {
            let value = self.read_range(&p.req, Some(p.header_rev)).await?;
            txn::fill(&mut resp, &p.path, value);
        }
        resp.header = Some(self.header(rev));
        Ok(resp)
    }

    /// Compacts history below `rev`; with `physical`, returns once the history is deleted.
    pub async fn compact(&self, rev: i64, physical: bool) -> Result<i64, EtcdError> {
        let cur = match self.submit(Op::Compact { rev }).await? {
            OpResult::Compact { rev } => rev,
            _ => return Err(EtcdError::storage("compact produced no response")),
        };
        if physical {
            let mut done = self.compact_done.subscribe();
            self.compact_kick.notify_one();
            tokio::select! {
                r = done.wait_for(|d| *d >= rev) => { r.map_err(|_| EtcdError::Stopped)?; }
                _ = self.shutdown.cancelled() => return Err(EtcdError::Stopped),
            }
        }
        Ok(cur)
    }
}
