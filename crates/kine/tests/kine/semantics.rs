//! The etcd v3 semantics suite: each scenario runs against kine on every backend and against real etcd,
//! so the assertions encode etcd's behaviour, not ours.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use k3rs_tests::Server;
use tonic::Code;

use crate::{expect_status, per_backend};

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(-1, |h| h.revision())
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| kv.key_str().unwrap_or("?").to_string())
        .collect()
}

fn values(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| kv.value_str().unwrap_or("?").to_string())
        .collect()
}

/// Next watch response, with a deadline.
async fn next(ws: &mut WatchStream) -> Result<WatchResponse> {
    tokio::time::timeout(Duration::from_secs(15), ws.message())
        .await
        .context("no watch response within 15s")??
        .context("watch stream ended")
}

/// Reads responses until `n` events arrived; returns (type, key, value, mod revision, prev value).
async fn events(
    ws: &mut WatchStream,
    n: usize,
) -> Result<Vec<(EventType, String, String, i64, Option<String>)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next(ws).await?;
        ensure!(!resp.canceled(), "watch canceled: {}", resp.cancel_reason());
        for ev in resp.events() {
            let kv = ev.kv().context("event without kv")?;
            out.push((
                ev.event_type(),
                kv.key_str()?.to_string(),
                kv.value_str()?.to_string(),
                kv.mod_revision(),
                ev.prev_kv()
                    .map(|p| p.value_str().unwrap_or("?").to_string()),
            ));
        }
    }
    Ok(out)
}

async fn kv_basics(s: &Server) -> Result<()> {
    let mut c = s.client().await?;
    let empty = c.get("nothing", None).await?;
    ensure!(rev(empty.header()) == 1, "a fresh store is at revision 1");
    ensure!(empty.kvs().is_empty() && empty.count() == 0);

    ensure!(rev(c.put("a", "1", None).await?.header()) == 2);
    ensure!(rev(c.put("b", "2", None).await?.header()) == 3);
    ensure!(rev(c.put("c", "3", None).await?.header()) == 4);
    let p = c
        .put("a", "11", Some(PutOptions::new().with_prev_key()))
        .await?;
    ensure!(rev(p.header()) == 5);
    ensure!(p.prev_key().map(|kv| kv.value().to_vec()) == Some(b"1".to_vec()));

    let a = c.get("a", None).await?;
    let kv = &a.kvs()[0];
    ensure!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.value()
        ) == (2, 5, 2, b"11".as_slice()),
        "a = {kv:?}"
    );

    let all = c.get("", Some(GetOptions::new().with_all_keys())).await?;
    ensure!(keys(all.kvs()) == ["a", "b", "c"] && all.count() == 3);
    let r = c.get("a", Some(GetOptions::new().with_range("c"))).await?;
    ensure!(keys(r.kvs()) == ["a", "b"]);
    let r = c.get("b", Some(GetOptions::new().with_from_key())).await?;
    ensure!(keys(r.kvs()) == ["b", "c"]);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await?;
    ensure!(
        keys(r.kvs()) == ["a", "b"] && r.more() && r.count() == 3,
        "limit: {r:?}"
    );
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await?;
    ensure!(r.kvs().iter().all(|kv| kv.value().is_empty()) && r.kvs().len() == 3);
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await?;
    ensure!(r.kvs().is_empty() && r.count() == 3);

    let sorted = |t, o| GetOptions::new().with_all_keys().with_sort(t, o);
    let r = c
        .get("", Some(sorted(SortTarget::Mod, SortOrder::Descend)))
        .await?;
    ensure!(keys(r.kvs()) == ["a", "c", "b"]);
    let r = c
        .get("", Some(sorted(SortTarget::Create, SortOrder::Descend)))
        .await?;
    ensure!(keys(r.kvs()) == ["c", "b", "a"]);
    let r = c
        .get("", Some(sorted(SortTarget::Value, SortOrder::Ascend)))
        .await?;
    ensure!(values(r.kvs()) == ["11", "2", "3"]);
    let r = c
        .get(
            "",
            Some(sorted(SortTarget::Key, SortOrder::Descend).with_limit(1)),
        )
        .await?;
    ensure!(keys(r.kvs()) == ["c"] && r.more() && r.count() == 3);
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_min_mod_revision(4)),
        )
        .await?;
    ensure!(keys(r.kvs()) == ["a", "c"]);
    let r = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_max_create_revision(3),
            ),
        )
        .await?;
    ensure!(keys(r.kvs()) == ["a", "b"]);

    let r = c.get("a", Some(GetOptions::new().with_revision(2))).await?;
    ensure!(
        values(r.kvs()) == ["1"] && rev(r.header()) == 5,
        "history: {r:?}"
    );
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_revision(3)))
        .await?;
    ensure!(keys(r.kvs()) == ["a", "b"] && r.count() == 2);
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_serializable()),
        )
        .await?;
    ensure!(r.count() == 3);
    expect_status(
        c.get("a", Some(GetOptions::new().with_revision(100))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )?;

    let d = c
        .delete("b", Some(DeleteOptions::new().with_prev_key()))
        .await?;
    ensure!(d.deleted() == 1 && values(d.prev_kvs()) == ["2"] && rev(d.header()) == 6);
    let d = c.delete("zzz", None).await?;
    ensure!(
        d.deleted() == 0 && rev(d.header()) == 6,
        "deleting nothing does not bump the revision"
    );
    c.put("b", "again", None).await?;
    let b = c.get("b", None).await?;
    ensure!(
        (b.kvs()[0].version(), b.kvs()[0].create_revision()) == (1, 7),
        "version restarts after delete"
    );
    // With the key gone at revision 6, history still knows it.
    let r = c.get("b", Some(GetOptions::new().with_revision(5))).await?;
    ensure!(values(r.kvs()) == ["2"]);
    let r = c.get("b", Some(GetOptions::new().with_revision(6))).await?;
    ensure!(r.kvs().is_empty());

    c.put("a", "", Some(PutOptions::new().with_ignore_value()))
        .await?;
    let a = c.get("a", None).await?;
    ensure!(values(a.kvs()) == ["11"] && a.kvs()[0].version() == 3);
    expect_status(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    )?;

    let d = c
        .delete("", Some(DeleteOptions::new().with_all_keys()))
        .await?;
    ensure!(
        d.deleted() == 3 && rev(d.header()) == 9,
        "one revision for a range delete"
    );
    ensure!(
        c.get("", Some(GetOptions::new().with_all_keys()))
            .await?
            .count()
            == 0
    );
    Ok(())
}
per_backend!(kv_basics, 120);

fn put_op(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}

async fn txn_semantics(s: &Server) -> Result<()> {
    let mut c = s.client().await?;
    c.put("k1", "v1", None).await?; // 2
    let t = Txn::new()
        .when([
            Compare::value("k1", CompareOp::Equal, "v1"),
            Compare::version("k1", CompareOp::Equal, 1),
            Compare::create_revision("k1", CompareOp::Equal, 2),
            Compare::mod_revision("k1", CompareOp::Less, 3),
            Compare::lease("k1", CompareOp::Equal, 0),
            Compare::create_revision("absent", CompareOp::Equal, 0),
        ])
        .and_then([
            put_op("k2", "x"),
            TxnOp::get("k1", None),
            TxnOp::get("k2", None),
        ])
        .or_else([put_op("k3", "no")]);
    let r = c.txn(t).await?;
    ensure!(r.succeeded() && rev(r.header()) == 3);
    let ops = r.op_responses();
    match (&ops[1], &ops[2]) {
        (TxnOpResponse::Get(g1), TxnOpResponse::Get(g2)) => {
            ensure!(values(g1.kvs()) == ["v1"]);
            ensure!(values(g2.kvs()) == ["x"], "a txn reads its own writes");
            ensure!(g2.kvs()[0].mod_revision() == 3);
        }
        other => anyhow::bail!("unexpected responses {other:?}"),
    }

    let t = Txn::new()
        .when([Compare::value("k1", CompareOp::Equal, "nope")])
        .and_then([put_op("k3", "yes")])
        .or_else([
            TxnOp::delete("k1", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::get("k1", None),
        ]);
    let r = c.txn(t).await?;
    ensure!(!r.succeeded() && rev(r.header()) == 4);
    match &r.op_responses()[..] {
        [TxnOpResponse::Delete(d), TxnOpResponse::Get(g)] => {
            ensure!(d.deleted() == 1 && values(d.prev_kvs()) == ["v1"] && g.kvs().is_empty());
        }
        other => anyhow::bail!("unexpected responses {other:?}"),
    }
    ensure!(c.get("k3", None).await?.count() == 0);

    // A value compare on a missing key always fails; a range compare holds for every key in it.
    let r = c
        .txn(Txn::new().when([Compare::value("absent", CompareOp::NotEqual, "x")]))
        .await?;
    ensure!(!r.succeeded());
    c.put("k4", "a", None).await?; // 5
    let r = c
        .txn(Txn::new().when([Compare::version("k", CompareOp::Greater, 0).with_prefix()]))
        .await?;
    ensure!(
        r.succeeded() && rev(r.header()) == 5,
        "read-only txns do not bump the revision"
    );
    let r = c
        .txn(Txn::new().when([Compare::value("k", CompareOp::Equal, "a").with_prefix()]))
        .await?;
    ensure!(!r.succeeded(), "k2=x fails the range compare");

    // Nested txns: one revision for all their writes.
    let nested = Txn::new()
        .when([Compare::version("k2", CompareOp::Equal, 1)])
        .and_then([put_op("n1", "1")])
        .or_else([put_op("n2", "2")]);
    let r = c
        .txn(Txn::new().and_then([TxnOp::txn(nested), put_op("n3", "3")]))
        .await?;
    ensure!(r.succeeded() && rev(r.header()) == 6);
    match &r.op_responses()[0] {
        TxnOpResponse::Txn(t) => ensure!(t.succeeded()),
        other => anyhow::bail!("expected a nested txn response, got {other:?}"),
    }
    let n = c.get("n", Some(GetOptions::new().with_prefix())).await?;
    ensure!(keys(n.kvs()) == ["n1", "n3"] && n.kvs().iter().all(|kv| kv.mod_revision() == 6));

    expect_status(
        c.txn(Txn::new().and_then([put_op("d", "1"), put_op("d", "2")]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    )?;
    expect_status(
        c.txn(Txn::new().and_then([
            put_op("d/1", "1"),
            TxnOp::delete("d/", Some(DeleteOptions::new().with_prefix())),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    )?;
    let many: Vec<TxnOp> = (0..129).map(|i| put_op(&format!("m{i}"), "v")).collect();
    expect_status(
        c.txn(Txn::new().and_then(many)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    )?;
    expect_status(
        c.txn(Txn::new().and_then([
            put_op("ok", "1"),
            TxnOp::put("bad", "1", Some(PutOptions::new().with_lease(424242))),
        ]))
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )?;
    ensure!(
        c.get("ok", None).await?.count() == 0,
        "a failed txn applies nothing"
    );
    ensure!(rev(c.get("ok", None).await?.header()) == 6);
    Ok(())
}
per_backend!(txn_semantics, 120);

async fn watch_semantics(s: &Server) -> Result<()> {
    let mut c = s.client().await?;
    c.put("w/a", "1", None).await?; // 2
    c.put("w/b", "1", None).await?; // 3
    c.put("w/a", "2", None).await?; // 4
    c.delete("w/a", None).await?; // 5
    c.put("other", "1", None).await?; // 6

    let mut ws = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await?;
    let created = next(&mut ws).await?;
    ensure!(
        created.created() && created.watch_id() == 0,
        "first watch id is 0: {created:?}"
    );
    let evs = events(&mut ws, 4).await?;
    let want = vec![
        (EventType::Put, "w/a".to_string(), "1".to_string(), 2, None),
        (EventType::Put, "w/b".into(), "1".into(), 3, None),
        (
            EventType::Put,
            "w/a".into(),
            "2".into(),
            4,
            Some("1".to_string()),
        ),
        (
            EventType::Delete,
            "w/a".into(),
            "".into(),
            5,
            Some("2".to_string()),
        ),
    ];
    ensure!(evs == want, "replayed history: {evs:?}");

    // Multiplexed on the same stream: a client-chosen id, a filter, and a duplicate id.
    ws.watch(
        "w/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(2)
                .with_watch_id(100)
                .with_filters([WatchFilterType::NoPut]),
        ),
    )
    .await?;
    let created = next(&mut ws).await?;
    ensure!(created.created() && created.watch_id() == 100);
    let r = next(&mut ws).await?;
    ensure!(
        r.watch_id() == 100
            && r.events().len() == 1
            && r.events()[0].event_type() == EventType::Delete
    );
    ws.watch("x", Some(WatchOptions::new().with_watch_id(100)))
        .await?;
    let dup = next(&mut ws).await?;
    ensure!(
        dup.created() && dup.canceled() && dup.watch_id() == -1,
        "duplicate id: {dup:?}"
    );
    ensure!(dup.cancel_reason() == "mvcc: duplicate watch ID provided on the WatchStream");

    // Live events reach both watchers; the filtered one sees only deletes.
    c.put("w/c", "live", None).await?; // 7
    let live = events(&mut ws, 1).await?;
    ensure!(live[0].1 == "w/c" && live[0].3 == 7, "live: {live:?}");
    c.delete("w/c", None).await?; // 8
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = next(&mut ws).await?;
        for ev in r.events() {
            got.push((r.watch_id(), ev.event_type()));
        }
    }
    got.sort_by_key(|(id, _)| *id);
    ensure!(
        got == [(0, EventType::Delete), (100, EventType::Delete)],
        "{got:?}"
    );

    ws.cancel(100).await?;
    let cancel = next(&mut ws).await?;
    ensure!(cancel.canceled() && cancel.watch_id() == 100);

    // Progress: every watcher is synced, so the answer comes at once with the current revision.
    ws.request_progress().await?;
    let p = next(&mut ws).await?;
    ensure!(
        p.watch_id() == -1 && p.events().is_empty() && rev(p.header()) == 8,
        "progress: {p:?}"
    );

    // A future start revision: events before it are not sent.
    let mut fut = c
        .watch("f", Some(WatchOptions::new().with_start_revision(10)))
        .await?;
    ensure!(next(&mut fut).await?.created());
    c.put("f", "9", None).await?; // 9
    c.put("f", "10", None).await?; // 10
    let evs = events(&mut fut, 1).await?;
    ensure!(evs[0].2 == "10" && evs[0].3 == 10, "future start: {evs:?}");

    // A compacted start revision: created, then cancelled with the compact revision.
    c.compact(6, None).await?;
    let mut old = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(3)),
        )
        .await?;
    let first = next(&mut old).await?;
    let cancel = if first.canceled() {
        first
    } else {
        next(&mut old).await?
    };
    ensure!(
        cancel.canceled() && cancel.compact_revision() == 6,
        "compacted watch: {cancel:?}"
    );
    Ok(())
}
per_backend!(watch_semantics, 120);

async fn lease_semantics(s: &Server) -> Result<()> {
    let mut c = s.client().await?;
    let g = c.lease_grant(60, None).await?;
    ensure!(g.id() > 0 && g.ttl() == 60);
    let id = g.id();
    let fixed = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(1234)))
        .await?;
    ensure!(fixed.id() == 1234);
    expect_status(
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(1234)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    )?;
    ensure!(
        c.lease_grant(1, None).await?.ttl() == 2,
        "TTLs are raised to the minimum (2s)"
    );
    expect_status(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    )?;
    let before = rev(c.get("x", None).await?.header());
    ensure!(before == 1, "granting leases does not bump the revision");

    c.put("lk", "v", Some(PutOptions::new().with_lease(id)))
        .await?;
    c.put("lk2", "v", Some(PutOptions::new().with_lease(id)))
        .await?;
    ensure!(c.get("lk", None).await?.kvs()[0].lease() == id);
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    ensure!(
        ttl.granted_ttl() == 60 && (55..=60).contains(&ttl.ttl()),
        "ttl {ttl:?}"
    );
    let mut attached: Vec<&[u8]> = ttl.keys().iter().map(|k| k.as_slice()).collect();
    attached.sort();
    ensure!(attached == [b"lk".as_slice(), b"lk2".as_slice()]);
    // Moving a key to another lease detaches it.
    c.put("lk2", "v", Some(PutOptions::new().with_lease(1234)))
        .await?;

    let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
    keeper.keep_alive().await?;
    let ka = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await??
        .context("keep-alive stream ended")?;
    ensure!(ka.id() == id && ka.ttl() == 60);

    let leases = c.leases().await?;
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    ensure!(ids.contains(&id) && ids.contains(&1234), "leases {ids:?}");

    expect_status(
        c.put("bad", "v", Some(PutOptions::new().with_lease(999_999)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )?;

    let mut ws = c
        .watch("lk", Some(WatchOptions::new().with_prefix()))
        .await?;
    ensure!(next(&mut ws).await?.created());
    let revoked = c.lease_revoke(id).await?;
    let evs = events(&mut ws, 1).await?;
    ensure!(
        evs.len() == 1 && evs[0].0 == EventType::Delete && evs[0].1 == "lk",
        "revoking deletes only the lease's keys: {evs:?}"
    );
    ensure!(evs[0].3 == rev(revoked.header()));
    ensure!(c.get("lk", None).await?.count() == 0 && c.get("lk2", None).await?.count() == 1);
    ensure!(c.lease_time_to_live(id, None).await?.ttl() == -1);
    expect_status(
        c.lease_revoke(id).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )?;

    // Expiry: the key goes away by itself, and watchers see it.
    let short = c.lease_grant(2, None).await?.id();
    c.put("exp", "v", Some(PutOptions::new().with_lease(short)))
        .await?;
    let mut ws = c.watch("exp", None).await?;
    ensure!(next(&mut ws).await?.created());
    let evs = tokio::time::timeout(Duration::from_secs(15), events(&mut ws, 1))
        .await
        .context("the lease did not expire within 15s")??;
    ensure!(evs[0].0 == EventType::Delete && evs[0].1 == "exp");
    ensure!(c.get("exp", None).await?.count() == 0);
    Ok(())
}
per_backend!(lease_semantics, 120);

async fn compaction_semantics(s: &Server) -> Result<()> {
    let mut c = s.client().await?;
    for i in 1..=5 {
        c.put("x", i.to_string(), None).await?; // revisions 2..=6
    }
    expect_status(
        c.compact(100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )?;
    c.compact(4, None).await?;
    expect_status(
        c.get("x", Some(GetOptions::new().with_revision(3))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )?;
    let r = c.get("x", Some(GetOptions::new().with_revision(4))).await?;
    ensure!(
        values(r.kvs()) == ["3"],
        "the compact revision itself stays readable: {r:?}"
    );
    expect_status(
        c.compact(4, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )?;
    c.compact(
        6,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await?;
    let h1 = c.hash_kv(0).await?;
    ensure!(h1.compact_version() == 6, "hashkv compact revision {h1:?}");
    let h2 = c.hash_kv(0).await?;
    ensure!(h1.hash() == h2.hash(), "hashkv is stable");
    ensure!(values(c.get("x", None).await?.kvs()) == ["5"]);
    Ok(())
}
per_backend!(compaction_semantics, 120);

async fn maintenance(s: &Server) -> Result<()> {
    let mut c = s.client().await?;
    c.put("m", "v", None).await?;
    let st = c.status().await?;
    ensure!(st.version().starts_with("3."), "version {}", st.version());
    ensure!(st.db_size() > 0);
    ensure!(
        Some(st.leader()) == st.header().map(|h| h.member_id()),
        "a single member leads itself"
    );
    ensure!(st.raft_index() >= 2);
    c.defragment().await?;
    ensure!(
        values(c.get("m", None).await?.kvs()) == ["v"],
        "data survives defragmentation"
    );
    c.hash().await?;

    let mut snap = c.snapshot().await?;
    let mut blob = Vec::new();
    let mut last_remaining = u64::MAX;
    while let Some(chunk) = snap.message().await? {
        blob.extend_from_slice(chunk.blob());
        last_remaining = chunk.remaining_bytes();
    }
    ensure!(
        last_remaining == 0 && blob.len() > 32,
        "snapshot of {} bytes",
        blob.len()
    );
    // etcd appends the SHA-256 of the database; etcdctl checks for it.
    let (db, sum) = blob.split_at(blob.len() - 32);
    use sha2::Digest;
    ensure!(sha2::Sha256::digest(db)[..] == *sum, "snapshot checksum");
    if s.backend.is_kine() {
        ensure!(
            db.starts_with(b"SQLite format 3\0"),
            "kine snapshots are SQLite databases"
        );
    }

    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await?;
    ensure!(alarms.alarms().is_empty());
    let members = c.member_list().await?;
    ensure!(members.members().len() == 1);
    let port = s.endpoint.rsplit(':').next().unwrap_or_default();
    ensure!(
        members.members()[0]
            .client_urls()
            .iter()
            .any(|u| u.ends_with(port)),
        "member urls {:?}",
        members.members()[0].client_urls()
    );
    Ok(())
}
per_backend!(maintenance, 120);

async fn bad_input(s: &Server) -> Result<()> {
    let mut c: Client = s.client().await?;
    c.put("keep", "me", None).await?;
    let empty = "etcdserver: key is not provided";
    expect_status(c.get("", None).await, Code::InvalidArgument, empty)?;
    expect_status(c.put("", "v", None).await, Code::InvalidArgument, empty)?;
    expect_status(c.delete("", None).await, Code::InvalidArgument, empty)?;
    expect_status(
        c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    )?;
    expect_status(
        c.put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_lease().with_lease(5)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    )?;
    let big = vec![b'x'; 1_600_000];
    expect_status(
        c.put("big", big, None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    )?;
    let huge = vec![b'x'; 3 << 20];
    match c.put("huge", huge, None).await {
        Ok(_) => anyhow::bail!("a 3 MiB put was accepted"),
        Err(e) => {
            let (code, msg) = crate::status(e)?;
            ensure!(code == Code::ResourceExhausted, "{code:?} {msg}");
            ensure!(msg.contains("received message larger than max"), "{msg}");
        }
    }
    // An inverted range is not an error in etcd: it holds no key.
    let inverted = c.get("z", Some(GetOptions::new().with_range("a"))).await?;
    ensure!(inverted.kvs().is_empty() && inverted.count() == 0);
    ensure!(
        c.delete("z", Some(DeleteOptions::new().with_range("a")))
            .await?
            .deleted()
            == 0
    );
    expect_status(
        c.get("keep", Some(GetOptions::new().with_revision(1 << 40)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )?;
    expect_status(
        c.lease_revoke(77).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )?;
    // Still serving, nothing lost, nothing half-written.
    ensure!(values(c.get("keep", None).await?.kvs()) == ["me"]);
    ensure!(c.get("big", None).await?.count() == 0 && c.get("huge", None).await?.count() == 0);
    ensure!(rev(c.put("after", "ok", None).await?.header()) == 3);
    Ok(())
}
per_backend!(bad_input, 120);
