//! `kill -9` during a write load: after a restart every acknowledged write is there, and a watcher from
//! revision 1 sees an unbroken revision sequence.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::{GetOptions, WatchOptions};
use k3rs_tests::{Backend, Server, run_test};
use tokio::sync::Mutex;

const WRITERS: usize = 8;

async fn crash_during_writes(backend: Backend) -> Result<()> {
    let mut server = Server::start(backend).await?;
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = server.client().await?;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("crash/{w}/{i:06}");
                match c.put(key.as_str(), format!("value-{w}-{i}"), None).await {
                    Ok(resp) => acked
                        .lock()
                        .await
                        .push((key, resp.header().map_or(0, |h| h.revision()))),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the load run, then crash in the middle of it.
    let start = std::time::Instant::now();
    while acked.lock().await.len() < 500 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let acked = std::mem::take(&mut *acked.lock().await);
    ensure!(
        acked.len() >= 100,
        "only {} writes were acknowledged before the crash",
        acked.len()
    );

    server.restart().await?;
    let mut c = server.client().await?;
    for (key, rev) in &acked {
        let got = c.get(key.as_str(), None).await?;
        let kv = got.kvs().first().with_context(|| {
            format!("acknowledged write {key} (revision {rev}) lost in the crash")
        })?;
        ensure!(
            kv.mod_revision() == *rev,
            "{key}: revision {} after restart, {rev} when acknowledged",
            kv.mod_revision()
        );
    }
    let head = c
        .get(
            "crash/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .header()
        .map_or(0, |h| h.revision());
    // Every revision from 2 to the head holds exactly one put: a watcher from 1 sees them all, in order.
    let mut ws = c
        .watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_start_revision(1)),
        )
        .await?;
    let mut next = 2;
    while next <= head {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.message())
            .await
            .context("watcher stalled after the restart")??
            .context("watch stream ended")?;
        ensure!(!msg.canceled(), "watch canceled: {msg:?}");
        for ev in msg.events() {
            let rev = ev.kv().context("kv")?.mod_revision();
            ensure!(rev == next, "watcher expected revision {next}, got {rev}");
            next += 1;
        }
    }
    // And the store goes on from there.
    let after = c.put("after-crash", "ok", None).await?;
    ensure!(after.header().map_or(0, |h| h.revision()) == head + 1);
    eprintln!(
        "{}: {} acknowledged writes survived kill -9; revisions 2..={head} intact",
        backend.name(),
        acked.len()
    );
    Ok(())
}

/// Leases survive a restart with their TTL restarted, as etcd's do, and still expire afterwards.
async fn leases_survive_restart(backend: Backend) -> Result<()> {
    let mut server = Server::start(backend).await?;
    let mut c = server.client().await?;
    let long = c.lease_grant(60, None).await?.id();
    let short = c.lease_grant(3, None).await?.id();
    c.put(
        "held",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(long)),
    )
    .await?;
    c.put(
        "brief",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(short)),
    )
    .await?;
    server.kill9();
    server.restart().await?;
    let mut c = server.client().await?;
    let ttl = c
        .lease_time_to_live(
            long,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await?;
    ensure!(
        ttl.granted_ttl() == 60 && ttl.ttl() >= 55,
        "lease after restart: {ttl:?}"
    );
    ensure!(
        ttl.keys() == [b"held".to_vec()],
        "keys after restart: {:?}",
        ttl.keys()
    );
    let start = std::time::Instant::now();
    while c.get("brief", None).await?.count() == 1 {
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "the short lease never expired after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(c.get("held", None).await?.count() == 1);
    Ok(())
}

#[test]
fn leases_survive_restart_sqlite() {
    run_test(
        Duration::from_secs(60),
        leases_survive_restart(Backend::Sqlite),
    );
}

#[test]
fn leases_survive_restart_postgres() {
    run_test(
        Duration::from_secs(60),
        leases_survive_restart(Backend::Postgres),
    );
}

#[test]
fn kill9_sqlite() {
    run_test(
        Duration::from_secs(180),
        crash_during_writes(Backend::Sqlite),
    );
}

#[test]
fn kill9_postgres() {
    run_test(
        Duration::from_secs(180),
        crash_during_writes(Backend::Postgres),
    );
}

#[test]
fn kill9_mysql() {
    run_test(
        Duration::from_secs(180),
        crash_during_writes(Backend::Mysql),
    );
}
