//! Range semantics shared by every read path (memory, SQL, inside txns): etcd's limit, count, revision
//! filters, sorting and keys-only rules.

use std::sync::Arc;

use crate::error::EtcdError;
use crate::pb::{self, RangeRequest, RangeResponse, sort_order, sort_target};
use crate::types::KvData;

/// Key-values fetched for a range, before filters, sorting and the limit.
#[derive(Debug, Default)]
pub struct Fetched {
    pub kvs: Vec<Arc<KvData>>,
    /// Every live key in the range (etcd's `count` ignores limit and filters).
    pub count: i64,
}

/// Rejects what etcd rejects before reading.
pub fn validate(req: &RangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if !(sort_order::NONE..=sort_order::DESCEND).contains(&req.sort_order)
        || !(sort_target::KEY..=sort_target::VALUE).contains(&req.sort_target)
    {
        return Err(EtcdError::InvalidArgument(
            "etcdserver: invalid sort option".into(),
        ));
    }
    Ok(())
}

/// How many key-values to fetch (0 = all): everything when sorting or filtering, else one past the limit
/// so `more` can be told.
pub fn fetch_limit(req: &RangeRequest) -> usize {
    if req.sort_order != sort_order::NONE
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
    {
        return 0;
    }
    if req.limit > 0 {
        usize::try_from(req.limit).unwrap_or(usize::MAX - 1) + 1
    } else {
        0
    }
}

/// Feeds a key-ordered visitor into a `Fetched`: counts every key, keeps the first `fetch_limit`.
/// `visit` returns false when its source cannot answer (then so does this).
pub fn collect(
    req: &RangeRequest,
    visit: impl FnOnce(&mut dyn FnMut(&Arc<KvData>) -> bool) -> bool,
) -> Option<Fetched> {
    let limit = fetch_limit(req);
    let keep = !req.count_only;
    let mut out = Fetched::default();
    let ok = visit(&mut |kv| {
        out.count += 1;
        if keep && (limit == 0 || out.kvs.len() < limit) {
            out.kvs.push(kv.clone());
        }
        true
    });
    ok.then_some(out)
}

/// Applies filters, sorting, the limit and keys-only, as etcd's `executeRange`.
pub fn finish(mut f: Fetched, req: &RangeRequest, rev: i64) -> RangeResponse {
    if req.count_only {
        return RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: rev,
                ..Default::default()
            }),
            kvs: Vec::new(),
            more: false,
            count: f.count,
        };
    }
    let keep = |kv: &Arc<KvData>| {
        (req.max_mod_revision == 0 || kv.mod_rev <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_rev >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_rev <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_rev >= req.min_create_revision)
    };
    f.kvs.retain(keep);

    let mut order = req.sort_order;
    if req.sort_target != sort_target::KEY && order == sort_order::NONE {
        order = sort_order::ASCEND;
    } else if req.sort_target == sort_target::KEY && order == sort_order::ASCEND {
        order = sort_order::NONE;
    }
    if order != sort_order::NONE {
        let cmp = |a: &Arc<KvData>, b: &Arc<KvData>| match req.sort_target {
            sort_target::VERSION => a.version.cmp(&b.version),
            sort_target::CREATE => a.create_rev.cmp(&b.create_rev),
            sort_target::MOD => a.mod_rev.cmp(&b.mod_rev),
            sort_target::VALUE => a.value.cmp(&b.value),
            _ => a.key.cmp(&b.key),
        };
        if order == sort_order::DESCEND {
            f.kvs.sort_by(|a, b| cmp(b, a));
        } else {
            f.kvs.sort_by(cmp);
        }
    }
    let mut more = false;
    if req.limit > 0 && f.kvs.len() as i64 > req.limit {
        f.kvs.truncate(req.limit as usize);
        more = true;
    }
    RangeResponse {
        header: Some(pb::ResponseHeader {
            revision: rev,
            ..Default::default()
        }),
        kvs: f.kvs.iter().map(|kv| kv.to_pb(req.keys_only)).collect(),
        more,
        count: f.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str, create: i64, m: i64) -> Arc<KvData> {
        Arc::new(KvData {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_rev: create,
            mod_rev: m,
            version: 1,
            lease: 0,
            value: Bytes::from_static(b"v"),
        })
    }

    fn fetched(kvs: Vec<Arc<KvData>>) -> Fetched {
        Fetched {
            count: kvs.len() as i64,
            kvs,
        }
    }

    #[test]
    fn limit_sets_more_and_keeps_count() {
        let req = RangeRequest {
            key: b"a".to_vec(),
            limit: 2,
            ..Default::default()
        };
        assert_eq!(fetch_limit(&req), 3);
        let resp = finish(
            fetched(vec![kv("a", 2, 2), kv("b", 3, 3), kv("c", 4, 4)]),
            &req,
            9,
        );
        assert_eq!(resp.kvs.len(), 2);
        assert!(resp.more);
        assert_eq!(resp.count, 3);
        assert_eq!(resp.header.unwrap().revision, 9);
    }

    #[test]
    fn sort_by_mod_descending_with_filter() {
        let req = RangeRequest {
            key: b"a".to_vec(),
            sort_order: sort_order::DESCEND,
            sort_target: sort_target::MOD,
            min_mod_revision: 3,
            ..Default::default()
        };
        assert_eq!(fetch_limit(&req), 0);
        let resp = finish(
            fetched(vec![kv("a", 2, 5), kv("b", 3, 2), kv("c", 4, 4)]),
            &req,
            9,
        );
        let keys: Vec<_> = resp.kvs.iter().map(|k| k.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(resp.count, 3);
    }

    #[test]
    fn bad_input() {
        assert_eq!(validate(&RangeRequest::default()), Err(EtcdError::EmptyKey));
        let bad_sort = RangeRequest {
            key: b"a".to_vec(),
            sort_target: 9,
            ..Default::default()
        };
        assert!(validate(&bad_sort).is_err());
    }
}
