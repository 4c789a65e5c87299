//! Transaction semantics, as etcd's applier: request checks (op counts, duplicate keys), compares evaluated
//! against the state before the txn, a check pass along the chosen path, then execution into a batch of
//! staged changes that the writer commits. Read-only txns run the same code against the index alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::db::LeaseRec;
use crate::error::EtcdError;
use crate::pb::{
    self, Compare, DeleteRangeRequest, DeleteRangeResponse, OpRequest, OpResponse, PutRequest,
    PutResponse, RangeRequest, RequestOp, ResponseOp, TargetUnion, TxnRequest, TxnResponse,
    compare_result, compare_target,
};
use crate::range;
use crate::state::{Slot, State};
use crate::types::{KeyRange, KvData, Row};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Changes staged by the jobs of one write batch, on top of the index.
#[derive(Debug, Default)]
pub struct Batch {
    pub overlay: BTreeMap<Bytes, Slot>,
    pub rows: Vec<Row>,
    /// The revision after the jobs staged so far.
    pub rev: i64,
    pub compact_rev: i64,
    /// Lease state known to this batch: prefetched rows, then this batch's changes (`None` = absent).
    pub leases: HashMap<i64, Option<LeaseRec>>,
    pub lease_ops: Vec<LeaseOp>,
    pub now_ms: i64,
}

/// A staged change to the lease table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    Insert(LeaseRec),
    Touch { id: i64, expiry: i64 },
    Delete(i64),
}

impl Batch {
    pub fn new(rev: i64, compact_rev: i64, now_ms: i64) -> Self {
        Self {
            rev,
            compact_rev,
            now_ms,
            ..Default::default()
        }
    }

    /// The live value of `key` with this batch's changes.
    pub fn get(&self, base: &State, key: &[u8]) -> Option<Arc<KvData>> {
        match self.overlay.get(key) {
            Some(slot) => slot.live().cloned(),
            None => base.get(key).cloned(),
        }
    }

    /// Revision of the newest row of `key` (live or tombstone) with this batch's changes; 0 if none.
    fn last_rev(&self, base: &State, key: &[u8]) -> i64 {
        self.overlay
            .get(key)
            .or_else(|| base.slot(key))
            .map_or(0, Slot::mod_rev)
    }

    /// Visits the live keys of `range` with this batch's changes, in key order, while `f` returns true.
    pub fn visit(&self, base: &State, range: &KeyRange, f: &mut dyn FnMut(&Arc<KvData>) -> bool) {
        let mut a = base.slots(range).peekable();
        let mut b = self.overlay.range(range.bounds()).peekable();
        loop {
            let slot = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => a.next().map(|(_, s)| s),
                (None, Some(_)) => b.next().map(|(_, s)| s),
                (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => a.next().map(|(_, s)| s),
                    std::cmp::Ordering::Greater => b.next().map(|(_, s)| s),
                    std::cmp::Ordering::Equal => {
                        a.next();
                        b.next().map(|(_, s)| s)
                    }
                },
            };
            if let Some(Slot::Live(kv)) = slot
                && !f(kv)
            {
                break;
            }
        }
    }

    /// Keys attached to `lease`, with this batch's changes.
    pub fn lease_keys(&self, base: &State, lease: i64) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = base.lease_keys(lease).cloned().collect();
        keys.extend(
            self.overlay
                .iter()
                .filter(|(_, s)| s.live().is_some_and(|kv| kv.lease == lease))
                .map(|(k, _)| k.clone()),
        );
        keys.sort();
        keys.dedup();
        keys.retain(|k| self.get(base, k).is_some_and(|kv| kv.lease == lease));
        keys
    }

    fn lease_exists(&self, id: i64) -> bool {
        matches!(self.leases.get(&id), Some(Some(_)))
    }

    /// Stages a delete of `key` (known live) at revision `rev`.
    pub fn stage_delete(&mut self, base: &State, key: &Bytes, rev: i64, sub: &mut i64) {
        let prev_rev = self.last_rev(base, key);
        self.rows.push(Row {
            rev,
            sub: *sub,
            key: key.clone(),
            create_rev: 0,
            prev_rev,
            version: 0,
            lease: 0,
            deleted: true,
            value: Bytes::new(),
        });
        *sub += 1;
        self.overlay.insert(key.clone(), Slot::Dead(rev));
    }
}

// ---------------------------------------------------------------------------------------------------
// Request checks (etcd's v3rpc key.go)

/// etcd's `checkTxnRequest`: op counts and empty keys, recursively.
pub fn check_txn_request(req: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let opc = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if opc > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for c in &req.compare {
        if !(compare_result::EQUAL..=compare_result::NOT_EQUAL).contains(&c.result)
            || !(compare_target::VERSION..=compare_target::LEASE).contains(&c.target)
        {
            return Err(EtcdError::InvalidArgument(
                "etcdserver: invalid compare in txn request".into(),
            ));
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(OpRequest::RequestRange(r)) => range::validate(r)?,
            Some(OpRequest::RequestPut(p)) => check_put(p)?,
            Some(OpRequest::RequestDeleteRange(d)) => check_delete(d)?,
            Some(OpRequest::RequestTxn(t)) => check_txn_request(t, max_ops.saturating_sub(opc))?,
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

pub fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if d.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkIntervals`: a key may be written at most once per txn path, and never both put and deleted.
/// Returns the keys put and the ranges deleted at this level (children included).
pub fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<KeyRange>), EtcdError> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(OpRequest::RequestDeleteRange(d)) => {
                Some(KeyRange::from_request(&d.key, &d.range_end))
            }
            _ => None,
        })
        .collect();
    let hits = |dels: &[KeyRange], k: &Bytes| {
        let point = KeyRange::from_request(k, b"");
        dels.iter().any(|d| d.intersects(&point))
    };
    let mut puts: HashSet<Bytes> = HashSet::new();
    let mut child_dels = Vec::new();
    for op in ops {
        let Some(OpRequest::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        child_dels.extend(dels_then);
        child_dels.extend(dels_else);
    }
    dels.extend(child_dels);
    for op in ops {
        let Some(OpRequest::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = Bytes::copy_from_slice(&p.key);
        if puts.contains(&k) || hits(&dels, &k) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// Whether the txn writes nothing on any path.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(OpRequest::RequestRange(_)) | None => true,
            Some(OpRequest::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
}

/// Whether the txn could add data (refused while the NOSPACE alarm is raised).
pub fn has_put(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(OpRequest::RequestPut(_)) => true,
            Some(OpRequest::RequestTxn(t)) => has_put(t),
            _ => false,
        })
}

/// Whether any range in the txn names an explicit revision.
pub fn has_revision_range(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(OpRequest::RequestRange(r)) => r.revision > 0,
            Some(OpRequest::RequestTxn(t)) => has_revision_range(t),
            _ => false,
        })
}

/// Every lease id a put in the txn names.
pub fn lease_ids(req: &TxnRequest, out: &mut Vec<i64>) {
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(OpRequest::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
            Some(OpRequest::RequestTxn(t)) => lease_ids(t, out),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Compares and the check pass

fn compare_kv(c: &Compare, kv: Option<&KvData>) -> bool {
    use std::cmp::Ordering;
    let ord = match c.target {
        compare_target::VALUE => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            let have: &[u8] = kv.map_or(&[], |kv| &kv.value);
            have.cmp(want)
        }
        target => {
            let have = kv.map_or(0, |kv| match target {
                compare_target::VERSION => kv.version,
                compare_target::CREATE => kv.create_rev,
                compare_target::MOD => kv.mod_rev,
                _ => kv.lease,
            });
            let want = match &c.target_union {
                Some(TargetUnion::Version(v))
                | Some(TargetUnion::CreateRevision(v))
                | Some(TargetUnion::ModRevision(v))
                | Some(TargetUnion::Lease(v)) => *v,
                _ => 0,
            };
            have.cmp(&want)
        }
    };
    match c.result {
        compare_result::EQUAL => ord == Ordering::Equal,
        compare_result::GREATER => ord == Ordering::Greater,
        compare_result::LESS => ord == Ordering::Less,
        _ => ord != Ordering::Equal,
    }
}

/// etcd's `applyCompare`: every key in the range must satisfy it; a value compare on no key fails.
fn apply_compare(base: &State, batch: &Batch, c: &Compare) -> bool {
    let range = KeyRange::from_request(&c.key, &c.range_end);
    let mut any = false;
    let mut all = true;
    batch.visit(base, &range, &mut |kv| {
        any = true;
        all = compare_kv(c, Some(kv));
        all
    });
    if !any {
        return c.target != compare_target::VALUE && compare_kv(c, None);
    }
    all
}

/// etcd's `compareToPath`: branch decisions of the txn and every nested txn on the chosen path, depth first,
/// all evaluated against the state before the txn.
pub fn compare_path(base: &State, batch: &Batch, req: &TxnRequest) -> Vec<bool> {
    let ok = req.compare.iter().all(|c| apply_compare(base, batch, c));
    let mut path = vec![ok];
    let ops = if ok { &req.success } else { &req.failure };
    for op in ops {
        if let Some(OpRequest::RequestTxn(t)) = &op.request {
            path.extend(compare_path(base, batch, t));
        }
    }
    path
}

/// etcd's `checkRequests`: along the chosen path, puts need their lease (and, with ignore_value/ignore_lease,
/// the key), and ranges need a revision that exists.
pub fn check_requests(
    base: &State,
    batch: &Batch,
    req: &TxnRequest,
    path: &[bool],
) -> Result<usize, EtcdError> {
    let ops = if path[0] { &req.success } else { &req.failure };
    let mut used = 1;
    for op in ops {
        match &op.request {
            Some(OpRequest::RequestPut(p)) => {
                if (p.ignore_value || p.ignore_lease) && batch.get(base, &p.key).is_none() {
                    return Err(EtcdError::KeyNotFound);
                }
                if p.lease != 0 && !batch.lease_exists(p.lease) {
                    return Err(EtcdError::LeaseNotFound);
                }
            }
            Some(OpRequest::RequestRange(r)) => {
                if r.revision > batch.rev {
                    return Err(EtcdError::FutureRev);
                }
                if r.revision > 0 && r.revision < batch.compact_rev {
                    return Err(EtcdError::Compacted);
                }
            }
            Some(OpRequest::RequestTxn(t)) => {
                used += check_requests(base, batch, t, &path[used..])?;
            }
            _ => {}
        }
    }
    Ok(used)
}

// ---------------------------------------------------------------------------------------------------
// Execution

/// A range inside a txn that reads history; answered after the batch (it cannot see the batch's changes).
#[derive(Debug, Clone)]
pub struct Pending {
    /// Indices through nested `responses` down to the range's slot.
    pub path: Vec<usize>,
    pub req: RangeRequest,
    /// The revision the txn observed when it reached the range (the response header's).
    pub header_rev: i64,
}

/// Per-txn execution state.
#[derive(Debug)]
pub struct OpCtx {
    /// The revision the txn's writes get.
    pub new_rev: i64,
    pub sub: i64,
    /// Whether the txn has changed anything yet.
    pub wrote: bool,
    pub pending: Vec<Pending>,
}

impl OpCtx {
    pub fn new(batch: &Batch) -> Self {
        Self {
            new_rev: batch.rev + 1,
            sub: 0,
            wrote: false,
            pending: Vec::new(),
        }
    }

    /// The revision a read inside the txn observes now.
    fn cur_rev(&self) -> i64 {
        if self.wrote {
            self.new_rev
        } else {
            self.new_rev - 1
        }
    }
}

fn header(rev: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

/// Executes the txn along `path` (from `compare_path`, checked by `check_requests`). Returns the response
/// (without the top-level header) and how many path entries it used.
pub fn exec_txn(
    base: &State,
    batch: &mut Batch,
    req: &TxnRequest,
    path: &[bool],
    ctx: &mut OpCtx,
    at: &mut Vec<usize>,
) -> (TxnResponse, usize) {
    let succeeded = path[0];
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut used = 1;
    let mut responses = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        at.push(i);
        let resp = match &op.request {
            Some(OpRequest::RequestRange(r)) => {
                OpResponse::ResponseRange(exec_range(base, batch, r, ctx, at))
            }
            Some(OpRequest::RequestPut(p)) => {
                OpResponse::ResponsePut(exec_put(base, batch, p, ctx))
            }
            Some(OpRequest::RequestDeleteRange(d)) => {
                OpResponse::ResponseDeleteRange(exec_delete(base, batch, d, ctx))
            }
            Some(OpRequest::RequestTxn(t)) => {
                let (resp, n) = exec_txn(base, batch, t, &path[used..], ctx, at);
                used += n;
                // etcd answers nested txns with an empty header.
                OpResponse::ResponseTxn(TxnResponse {
                    header: Some(pb::ResponseHeader::default()),
                    ..resp
                })
            }
            // Rejected by `check_txn_request`.
            None => OpResponse::ResponseRange(Default::default()),
        };
        at.pop();
        responses.push(ResponseOp {
            response: Some(resp),
        });
    }
    (
        TxnResponse {
            header: None,
            succeeded,
            responses,
        },
        used,
    )
}

fn exec_range(
    base: &State,
    batch: &Batch,
    r: &RangeRequest,
    ctx: &mut OpCtx,
    at: &[usize],
) -> pb::RangeResponse {
    let cur = ctx.cur_rev();
    if r.revision > 0 && r.revision < cur {
        ctx.pending.push(Pending {
            path: at.to_vec(),
            req: r.clone(),
            header_rev: cur,
        });
        return pb::RangeResponse::default();
    }
    let range = KeyRange::from_request(&r.key, &r.range_end);
    let fetched = range::collect(r, |f| {
        batch.visit(base, &range, f);
        true
    })
    .unwrap_or_default();
    range::finish(fetched, r, cur)
}

fn exec_put(base: &State, batch: &mut Batch, p: &PutRequest, ctx: &mut OpCtx) -> PutResponse {
    let key = Bytes::copy_from_slice(&p.key);
    let prev = batch.get(base, &key);
    let lease = if p.ignore_lease {
        prev.as_ref().map_or(0, |kv| kv.lease)
    } else {
        p.lease
    };
    let value = if p.ignore_value {
        prev.as_ref().map_or_else(Bytes::new, |kv| kv.value.clone())
    } else {
        Bytes::copy_from_slice(&p.value)
    };
    let (create_rev, version) = prev
        .as_ref()
        .map_or((ctx.new_rev, 1), |kv| (kv.create_rev, kv.version + 1));
    let row = Row {
        rev: ctx.new_rev,
        sub: ctx.sub,
        prev_rev: batch.last_rev(base, &key),
        key: key.clone(),
        create_rev,
        version,
        lease,
        deleted: false,
        value,
    };
    ctx.sub += 1;
    ctx.wrote = true;
    batch.overlay.insert(key, Slot::Live(Arc::new(row.kv())));
    batch.rows.push(row);
    PutResponse {
        header: header(ctx.new_rev),
        prev_kv: if p.prev_kv {
            prev.map(|kv| kv.to_pb(false))
        } else {
            None
        },
    }
}

fn exec_delete(
    base: &State,
    batch: &mut Batch,
    d: &DeleteRangeRequest,
    ctx: &mut OpCtx,
) -> DeleteRangeResponse {
    let range = KeyRange::from_request(&d.key, &d.range_end);
    let mut victims: Vec<Arc<KvData>> = Vec::new();
    batch.visit(base, &range, &mut |kv| {
        victims.push(kv.clone());
        true
    });
    for kv in &victims {
        batch.stage_delete(base, &kv.key, ctx.new_rev, &mut ctx.sub);
    }
    if !victims.is_empty() {
        ctx.wrote = true;
    }
    DeleteRangeResponse {
        header: header(ctx.cur_rev()),
        deleted: victims.len() as i64,
        prev_kvs: if d.prev_kv {
            victims.iter().map(|kv| kv.to_pb(false)).collect()
        } else {
            Vec::new()
        },
    }
}

/// Fills a pending history range into the response tree.
pub fn fill(resp: &mut TxnResponse, path: &[usize], value: pb::RangeResponse) {
    let Some((&first, rest)) = path.split_first() else {
        return;
    };
    let Some(slot) = resp
        .responses
        .get_mut(first)
        .and_then(|r| r.response.as_mut())
    else {
        return;
    };
    match slot {
        OpResponse::ResponseRange(r) if rest.is_empty() => *r = value,
        OpResponse::ResponseTxn(t) => fill(t, rest, value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(OpRequest::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn del_op(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(OpRequest::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                prev_kv: false,
            })),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_as_etcd_does() {
        assert!(check_intervals(&[put_op("a"), put_op("b")]).is_ok());
        assert_eq!(
            check_intervals(&[put_op("a"), put_op("a")]).unwrap_err(),
            EtcdError::DuplicateKey
        );
        assert_eq!(
            check_intervals(&[put_op("b"), del_op("a", "c")]).unwrap_err(),
            EtcdError::DuplicateKey
        );
        assert!(check_intervals(&[put_op("c"), del_op("a", "c")]).is_ok());
        let nested = RequestOp {
            request: Some(OpRequest::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![put_op("x")],
                failure: vec![put_op("x")],
            })),
        };
        // The same key in both branches of a nested txn is fine; again at the outer level is not.
        assert!(check_intervals(std::slice::from_ref(&nested)).is_ok());
        assert_eq!(
            check_intervals(&[nested, put_op("x")]).unwrap_err(),
            EtcdError::DuplicateKey
        );
    }

    #[test]
    fn txn_sees_its_own_writes_and_compares_see_the_state_before() {
        let base = State::load(Vec::new(), 1, 0);
        let mut batch = Batch::new(1, 0, 0);
        let req = TxnRequest {
            compare: vec![Compare {
                result: compare_result::EQUAL,
                target: compare_target::VERSION,
                key: b"a".to_vec(),
                range_end: vec![],
                target_union: Some(TargetUnion::Version(0)),
            }],
            success: vec![
                put_op("a"),
                RequestOp {
                    request: Some(OpRequest::RequestRange(RangeRequest {
                        key: b"a".to_vec(),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        };
        let path = compare_path(&base, &batch, &req);
        assert_eq!(path, vec![true]);
        check_requests(&base, &batch, &req, &path).unwrap();
        let mut ctx = OpCtx::new(&batch);
        let (resp, _) = exec_txn(&base, &mut batch, &req, &path, &mut ctx, &mut Vec::new());
        assert!(resp.succeeded);
        match &resp.responses[1].response {
            Some(OpResponse::ResponseRange(r)) => {
                assert_eq!(r.kvs.len(), 1);
                assert_eq!(r.kvs[0].mod_revision, 2);
                assert_eq!(r.header.unwrap().revision, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(batch.rows.len(), 1);
    }

    #[test]
    fn value_compare_on_missing_key_fails() {
        let base = State::load(Vec::new(), 1, 0);
        let batch = Batch::new(1, 0, 0);
        let c = Compare {
            result: compare_result::NOT_EQUAL,
            target: compare_target::VALUE,
            key: b"nope".to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::Value(b"x".to_vec())),
        };
        assert!(!apply_compare(&base, &batch, &c));
        let c = Compare {
            target: compare_target::CREATE,
            result: compare_result::EQUAL,
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..c
        };
        assert!(apply_compare(&base, &batch, &c));
    }
}
