//! Two kine processes on one PostgreSQL (and one MariaDB) database: 32 clients doing compare-and-swap
//! increments on shared counters through both; the counters equal the successful swaps, and watchers on
//! each process see every revision exactly once, in order.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use k3rs_tests::{Backend, Server, run_test};

const CLIENTS: usize = 32;
const ATTEMPTS: usize = 40;
const COUNTERS: usize = 4;

/// Collects the revisions of all events from revision 1 until `stop_at` is reached.
async fn watch_revisions(server: &Server, stop_at: Arc<AtomicU64>) -> Result<Vec<i64>> {
    let mut c = server.client().await?;
    let mut ws = c
        .watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_start_revision(1)),
        )
        .await?;
    let mut revs: Vec<i64> = Vec::new();
    let mut progress = std::time::Instant::now();
    loop {
        let target = stop_at.load(Ordering::SeqCst) as i64;
        if target > 0 && revs.last().copied().unwrap_or(0) >= target {
            return Ok(revs);
        }
        ensure!(
            progress.elapsed() < Duration::from_secs(30),
            "watcher stalled for 30s at {:?}",
            revs.last()
        );
        let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), ws.message()).await else {
            continue;
        };
        let msg = msg?.context("watch stream ended")?;
        progress = std::time::Instant::now();
        ensure!(!msg.canceled(), "watch canceled: {msg:?}");
        for ev in msg.events() {
            // One write per revision here, so each revision carries exactly one event.
            revs.push(ev.kv().context("kv")?.mod_revision());
        }
    }
}

async fn cas_counters(backend: Backend) -> Result<()> {
    let a = Server::start(backend).await?;
    let b = a.peer().await?;
    let mut setup = a.client().await?;
    for i in 0..COUNTERS {
        setup.put(format!("counter/{i}"), "0", None).await?;
    }

    let stop_at = Arc::new(AtomicU64::new(0));
    let watch_a = watch_revisions(&a, stop_at.clone());
    let watch_b = watch_revisions(&b, stop_at.clone());

    let successes: Arc<Vec<AtomicU64>> =
        Arc::new((0..COUNTERS).map(|_| AtomicU64::new(0)).collect());
    let load = async {
        let mut tasks = Vec::new();
        for n in 0..CLIENTS {
            let server = if n % 2 == 0 { &a } else { &b };
            let mut c = server.client().await?;
            let successes = successes.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..ATTEMPTS {
                    let key = format!("counter/{}", (n + i) % COUNTERS);
                    let got = c.get(key.as_str(), None).await?;
                    let kv = got.kvs().first().context("counter missing")?;
                    let value: u64 = kv.value_str()?.parse()?;
                    let t = Txn::new()
                        .when([Compare::mod_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::put(key.as_str(), (value + 1).to_string(), None)]);
                    if c.txn(t).await?.succeeded() {
                        successes[(n + i) % COUNTERS].fetch_add(1, Ordering::SeqCst);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        // Both processes answer linearizable reads with every committed increment.
        let mut total = 0;
        for server in [&a, &b] {
            let mut c = server.client().await?;
            for i in 0..COUNTERS {
                let got = c.get(format!("counter/{i}"), None).await?;
                let value: u64 = got.kvs()[0].value_str()?.parse()?;
                ensure!(
                    value == successes[i].load(Ordering::SeqCst),
                    "counter {i} on {} is {value}, but {} swaps succeeded",
                    server.endpoint,
                    successes[i].load(Ordering::SeqCst)
                );
            }
            total = c
                .get("", Some(GetOptions::new().with_all_keys()))
                .await?
                .header()
                .map_or(0, |h| h.revision());
        }
        stop_at.store(total as u64, Ordering::SeqCst);
        anyhow::Ok(total)
    };
    let (head, revs_a, revs_b) = tokio::try_join!(load, watch_a, watch_b)?;
    let swaps: u64 = successes.iter().map(|s| s.load(Ordering::SeqCst)).sum();
    ensure!(
        head == 1 + COUNTERS as i64 + swaps as i64,
        "head {head} after {swaps} swaps"
    );
    let want: Vec<i64> = (2..=head).collect();
    ensure!(
        revs_a == want,
        "watcher on the first process saw {} revisions, not 2..={head} once each",
        revs_a.len()
    );
    ensure!(
        revs_b == want,
        "watcher on the second process saw {} revisions, not 2..={head} once each",
        revs_b.len()
    );
    ensure!(swaps > 0, "no swap succeeded");
    // Both processes are members, and they hash the same state alike.
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let members = ca.member_list().await?;
    let urls: Vec<&str> = members
        .members()
        .iter()
        .flat_map(|m| m.client_urls().iter().map(String::as_str))
        .collect();
    ensure!(
        members.members().len() == 2
            && urls.contains(&format!("http://{}", a.endpoint).as_str())
            && urls.contains(&format!("http://{}", b.endpoint).as_str()),
        "member list {urls:?}"
    );
    let (ha, hb) = (ca.hash_kv(head).await?, cb.hash_kv(head).await?);
    ensure!(
        ha.hash() == hb.hash(),
        "hashkv at {head} differs between the processes"
    );
    eprintln!(
        "{}: {swaps} of {} swaps succeeded through two kine processes",
        backend.name(),
        CLIENTS * ATTEMPTS
    );
    Ok(())
}

#[test]
fn two_processes_postgres() {
    run_test(Duration::from_secs(240), cas_counters(Backend::Postgres));
}

#[test]
fn two_processes_mysql() {
    run_test(Duration::from_secs(240), cas_counters(Backend::Mysql));
}

/// A process that sleeps through another's writes and compaction catches up (rebuilding its index when
/// the history it missed is gone) and answers reads and watches correctly afterwards.
async fn follower_behind_compaction(backend: Backend) -> Result<()> {
    let a = Server::start(backend).await?;
    let mut b = a.peer().await?;
    let mut ca = a.client().await?;
    ca.put("k", "0", None).await?;
    let mut cb = b.client().await?;
    ensure!(cb.get("k", None).await?.kvs()[0].value() == b"0");
    let stale_watch_from = cb
        .get("k", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());

    let pid = b.proc().pid().to_string();
    let signal = |sig: &str| Command::new("kill").args([sig, pid.as_str()]).status();
    signal("-STOP")?;
    let mut last = 0;
    for i in 1..=50 {
        last = ca
            .put("k", i.to_string(), None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
        ca.put(format!("other/{i}"), "x", None).await?;
    }
    ca.delete(
        "other/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await?;
    let head = ca
        .get("k", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    ca.compact(
        head,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await?;
    signal("-CONT")?;

    // Linearizable reads on the follower see the leader's latest writes.
    let got = cb.get("k", None).await?;
    ensure!(
        got.kvs()[0].value() == b"50" && got.kvs()[0].mod_revision() == last,
        "{got:?}"
    );
    ensure!(
        cb.get("other/", Some(GetOptions::new().with_prefix()))
            .await?
            .count()
            == 0
    );
    // Watching from before the compaction is refused with the compact revision; from now, it works.
    let mut old = cb
        .watch(
            "k",
            Some(WatchOptions::new().with_start_revision(stale_watch_from)),
        )
        .await?;
    let mut canceled = None;
    while canceled.is_none() {
        let msg = tokio::time::timeout(Duration::from_secs(10), old.message())
            .await??
            .context("watch ended")?;
        if msg.canceled() {
            canceled = Some(msg.compact_revision());
        }
    }
    ensure!(
        canceled == Some(head),
        "stale watch canceled with {canceled:?}, compacted to {head}"
    );
    let mut fresh = cb.watch("k", None).await?;
    fresh.message().await?.context("created")?;
    ca.put("k", "after", None).await?;
    let msg = tokio::time::timeout(Duration::from_secs(10), fresh.message())
        .await??
        .context("watch ended")?;
    ensure!(
        msg.events().len() == 1
            && msg.events()[0].kv().map(|kv| kv.value()) == Some(b"after".as_slice())
    );
    ensure!(
        b.log().contains("index rebuilt"),
        "the follower should have rebuilt its index:\n{}",
        b.log()
    );
    Ok(())
}

#[test]
fn follower_behind_compaction_postgres() {
    run_test(
        Duration::from_secs(120),
        follower_behind_compaction(Backend::Postgres),
    );
}

#[test]
fn follower_behind_compaction_mysql() {
    run_test(
        Duration::from_secs(120),
        follower_behind_compaction(Backend::Mysql),
    );
}
