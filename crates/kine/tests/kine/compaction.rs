//! Compaction under load: 100k updates of 1k keys with compaction every second; a watcher stays live and
//! sees every update in order, and after compaction and defragmentation the database size is bounded by
//! the live data, not by the history.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use etcd_client::{CompactionOptions, WatchOptions};
use k3rs_tests::{Backend, Server, ServerOptions, run_test};

const KEYS: usize = 1000;
const UPDATES_PER_KEY: usize = 100;
const WRITERS: usize = 16;
const VALUE_BYTES: usize = 200;
/// Live data is ~1000 × 250 B; history would be ~25 MB. Allow generous per-table overheads.
const SIZE_BOUND: i64 = 8 << 20;

async fn compaction_under_load(backend: Backend) -> Result<()> {
    let opts = ServerOptions {
        kine_args: [
            "--compact-interval",
            "1s",
            "--compact-min-retain",
            "1000",
            "--compact-batch-size",
            "1000",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let server = Server::start_with(backend, opts).await?;
    let mut c = server.client().await?;
    let start_rev = c.status().await?.header().map_or(0, |h| h.revision());

    // The watcher must see every update, in order, while compaction runs behind it.
    let total = (KEYS * UPDATES_PER_KEY) as i64;
    let seen = Arc::new(AtomicI64::new(0));
    let mut wc = server.client().await?;
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut ws = wc
                .watch(
                    "load/",
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(start_rev + 1),
                    ),
                )
                .await?;
            let mut last = start_rev;
            let mut count = 0i64;
            while count < total {
                let msg = tokio::time::timeout(Duration::from_secs(30), ws.message())
                    .await
                    .context("watcher stalled during compaction")??
                    .context("watch stream ended")?;
                ensure!(!msg.canceled(), "watcher cancelled: {msg:?}");
                for ev in msg.events() {
                    let rev = ev.kv().context("kv")?.mod_revision();
                    ensure!(rev == last + 1, "watcher saw revision {rev} after {last}");
                    last = rev;
                    count += 1;
                }
                seen.store(count, Ordering::Relaxed);
            }
            anyhow::Ok(last)
        })
    };

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = server.client().await?;
        writers.push(tokio::spawn(async move {
            let value = vec![b'v'; VALUE_BYTES];
            for round in 0..UPDATES_PER_KEY {
                for k in (w..KEYS).step_by(WRITERS) {
                    let mut v = value.clone();
                    v[..8].copy_from_slice(&(round as u64).to_le_bytes());
                    c.put(format!("load/{k:04}"), v, None).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut max_size = 0;
    let mut status_client = server.client().await?;
    while !writers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        max_size = max_size.max(status_client.status().await?.db_size());
    }
    for w in writers {
        w.await??;
    }
    let elapsed = started.elapsed();
    let last = tokio::time::timeout(Duration::from_secs(120), watcher)
        .await
        .context("watcher did not catch up")???;
    let head = c.status().await?.header().map_or(0, |h| h.revision());
    ensure!(last == head, "watcher ended at {last}, head is {head}");
    ensure!(
        head - start_rev == total,
        "{} revisions for {total} updates",
        head - start_rev
    );
    ensure!(
        c.status().await?.header().is_some()
            && server.log().contains("physical compaction finished"),
        "periodic compaction never ran:\n{}",
        server.log()
    );

    c.compact(head, Some(CompactionOptions::new().with_physical()))
        .await?;
    c.defragment().await?;
    let size = c.status().await?.db_size();
    eprintln!(
        "{}: {total} updates in {:.1}s ({:.0}/s); db size peaked at {} KiB, {} KiB after compaction + defrag",
        backend.name(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        max_size / 1024,
        size / 1024
    );
    ensure!(
        size <= SIZE_BOUND,
        "database is {size} bytes after compaction and defrag (bound {SIZE_BOUND})"
    );
    // The live data is intact.
    let got = c
        .get("load/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    ensure!(got.count() == KEYS as i64);
    ensure!(
        got.kvs()
            .iter()
            .all(|kv| kv.version() == UPDATES_PER_KEY as i64)
    );
    ensure!(seen.load(Ordering::Relaxed) == total);
    Ok(())
}

#[test]
fn under_load_sqlite() {
    run_test(
        Duration::from_secs(600),
        compaction_under_load(Backend::Sqlite),
    );
}

#[test]
fn under_load_postgres() {
    run_test(
        Duration::from_secs(600),
        compaction_under_load(Backend::Postgres),
    );
}

#[test]
fn under_load_mysql() {
    run_test(
        Duration::from_secs(600),
        compaction_under_load(Backend::Mysql),
    );
}
