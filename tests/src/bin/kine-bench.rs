//! `kine-bench`: the etcd-API load generator behind `cargo xtask bench kine`. Runs one workload against one
//! endpoint and prints one JSON line of results (throughput and latency percentiles).
//!
//! usage: kine-bench --endpoint HOST:PORT --workload create|update|get|list|watch
//!                   [--clients 16] [--keys 20000] [--value-size 1024] [--ops 50000]
//!                   [--list-keys 10000] [--page 500] [--prefix bench/]
//!                   [--watch-endpoint HOST:PORT]  (watch: watch through another server than the writers)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::Mutex;

#[derive(Debug, Clone)]
struct Args {
    endpoint: String,
    workload: String,
    clients: usize,
    keys: usize,
    value_size: usize,
    ops: usize,
    list_keys: usize,
    page: i64,
    prefix: String,
    watch_endpoint: Option<String>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        endpoint: "127.0.0.1:2379".into(),
        workload: String::new(),
        clients: 16,
        keys: 20_000,
        value_size: 1024,
        ops: 50_000,
        list_keys: 10_000,
        page: 500,
        prefix: "bench/".into(),
        watch_endpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => a.endpoint = val()?,
            "--workload" => a.workload = val()?,
            "--clients" => a.clients = val()?.parse()?,
            "--keys" => a.keys = val()?.parse()?,
            "--value-size" => a.value_size = val()?.parse()?,
            "--ops" => a.ops = val()?.parse()?,
            "--list-keys" => a.list_keys = val()?.parse()?,
            "--page" => a.page = val()?.parse()?,
            "--prefix" => a.prefix = val()?,
            "--watch-endpoint" => a.watch_endpoint = Some(val()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.workload.is_empty() {
        bail!("--workload is required");
    }
    Ok(a)
}

fn key(a: &Args, i: usize) -> String {
    format!("{}{i:08}", a.prefix)
}

/// Latencies of individual operations, and the wall time of the whole run.
struct Sample {
    latencies: Vec<Duration>,
    wall: Duration,
    ops: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn report(workload: &str, mut s: Sample) {
    s.latencies.sort();
    println!(
        "{{\"workload\":\"{workload}\",\"ops\":{},\"seconds\":{:.3},\"ops_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        s.ops,
        s.wall.as_secs_f64(),
        s.ops as f64 / s.wall.as_secs_f64(),
        percentile(&s.latencies, 0.50),
        percentile(&s.latencies, 0.99),
    );
}

async fn clients(a: &Args) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..a.clients {
        out.push(Client::connect([a.endpoint.as_str()], None).await?);
    }
    Ok(out)
}

/// Runs `per_client(client, index)` on every client concurrently; gathers latencies.
async fn fan_out<F, Fut>(cs: Vec<Client>, per_client: F) -> Result<Sample>
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = cs
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(per_client(c, i)))
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Sample {
        ops: latencies.len(),
        wall: start.elapsed(),
        latencies,
    })
}

async fn create(a: Args) -> Result<Sample> {
    let value = vec![b'x'; a.value_size];
    let n = a.clients;
    fan_out(clients(&a).await?, move |mut c, i| {
        let (a, value) = (a.clone(), value.clone());
        async move {
            let mut lat = Vec::new();
            for k in (i..a.keys).step_by(n) {
                let key = key(&a, k);
                let t = Instant::now();
                let r = c
                    .txn(
                        Txn::new()
                            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key.as_str(), value.clone(), None)]),
                    )
                    .await?;
                lat.push(t.elapsed());
                if !r.succeeded() {
                    bail!("{key} already existed: run create on an empty store");
                }
            }
            Ok(lat)
        }
    })
    .await
}

async fn update(a: Args) -> Result<Sample> {
    let mut c = Client::connect([a.endpoint.as_str()], None).await?;
    let mut revs = HashMap::new();
    let mut start = a.prefix.clone().into_bytes();
    let end = {
        let mut e = a.prefix.clone().into_bytes();
        if let Some(last) = e.last_mut() {
            *last += 1;
        }
        e
    };
    loop {
        let r = c
            .get(
                start.clone(),
                Some(
                    GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(1000)
                        .with_keys_only(),
                ),
            )
            .await?;
        for kv in r.kvs() {
            revs.insert(kv.key_str()?.to_string(), kv.mod_revision());
        }
        match r.kvs().last() {
            Some(last) if r.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    if revs.len() < a.keys {
        bail!(
            "update needs the {} keys create made; found {}",
            a.keys,
            revs.len()
        );
    }
    let revs = Arc::new(revs);
    let value = vec![b'y'; a.value_size];
    let n = a.clients;
    fan_out(clients(&a).await?, move |mut c, i| {
        let (a, value, revs) = (a.clone(), value.clone(), revs.clone());
        async move {
            let mut lat = Vec::new();
            for k in (i..a.keys).step_by(n) {
                let key = key(&a, k);
                let rev = revs[&key];
                let t = Instant::now();
                let r = c
                    .txn(
                        Txn::new()
                            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                            .and_then([TxnOp::put(key.as_str(), value.clone(), None)]),
                    )
                    .await?;
                lat.push(t.elapsed());
                if !r.succeeded() {
                    bail!("{key} changed under the update");
                }
            }
            Ok(lat)
        }
    })
    .await
}

async fn get(a: Args) -> Result<Sample> {
    let per = a.ops / a.clients;
    fan_out(clients(&a).await?, move |mut c, i| {
        let a = a.clone();
        async move {
            let mut lat = Vec::with_capacity(per);
            let mut x = (i as u64 + 1) * 0x9E37_79B9_7F4A_7C15;
            for _ in 0..per {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = key(&a, (x % a.keys as u64) as usize);
                let t = Instant::now();
                let r = c.get(key.as_str(), None).await?;
                lat.push(t.elapsed());
                if r.kvs().len() != 1 {
                    bail!("{key} missing");
                }
            }
            Ok(lat)
        }
    })
    .await
}

/// Each client lists the first `list_keys` keys page by page, `ops / clients / 20` times; one latency per
/// full list.
async fn list(a: Args) -> Result<Sample> {
    let lists = (a.ops / 1000).max(1).div_ceil(a.clients);
    fan_out(clients(&a).await?, move |mut c, _| {
        let a = a.clone();
        async move {
            let mut lat = Vec::new();
            let end = key(&a, a.list_keys);
            for _ in 0..lists {
                let t = Instant::now();
                let mut start = key(&a, 0).into_bytes();
                let mut rev = 0;
                let mut total = 0;
                loop {
                    let mut opts = GetOptions::new().with_range(end.clone()).with_limit(a.page);
                    if rev > 0 {
                        opts = opts.with_revision(rev);
                    }
                    let r = c.get(start.clone(), Some(opts)).await?;
                    if rev == 0 {
                        rev = r.header().map_or(0, |h| h.revision());
                    }
                    total += r.kvs().len();
                    match r.kvs().last() {
                        Some(last) if r.more() => {
                            start = last.key().to_vec();
                            start.push(0);
                        }
                        _ => break,
                    }
                }
                lat.push(t.elapsed());
                if total != a.list_keys {
                    bail!("listed {total} keys, expected {}", a.list_keys);
                }
            }
            Ok(lat)
        }
    })
    .await
}

/// Put→event latency: a watcher on the prefix, writers stamping each key's send time.
async fn watch(a: Args) -> Result<Sample> {
    let prefix = format!("{}watch/", a.prefix);
    let watch_at = a.watch_endpoint.as_deref().unwrap_or(&a.endpoint);
    let mut wc = Client::connect([watch_at], None).await?;
    let mut ws = wc
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    ws.message().await?.context("watch created")?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (a.ops / 25).max(100);
    let writers = 4usize;
    let value = vec![b'w'; a.value_size];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = Client::connect([a.endpoint.as_str()], None).await?;
        let (sent, prefix, value) = (sent.clone(), prefix.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(writers) {
                let k = format!("{prefix}{i:08}");
                sent.lock().await.insert(k.clone(), Instant::now());
                c.put(k, value.clone(), None).await?;
                // A steady stream, not a saturating burst: latency, not throughput.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        }));
    }
    let mut lat = Vec::with_capacity(total);
    while lat.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.message())
            .await
            .context("watch stalled")??
            .context("watch ended")?;
        let now = Instant::now();
        let sent = sent.lock().await;
        for ev in msg.events() {
            let k = ev.kv().context("kv")?.key_str()?.to_string();
            if let Some(t) = sent.get(&k) {
                lat.push(now - *t);
            }
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(Sample {
        ops: lat.len(),
        wall: start.elapsed(),
        latencies: lat,
    })
}

fn main() -> Result<()> {
    let a = parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let workload = a.workload.clone();
        let sample = match workload.as_str() {
            "create" => create(a).await?,
            "update" => update(a).await?,
            "get" => get(a).await?,
            "list" => list(a).await?,
            "watch" => watch(a).await?,
            other => bail!("unknown workload {other}"),
        };
        report(&workload, sample);
        Ok(())
    })
}
