//! Debian's etcdctl against kine (on every backend) and against etcd: the same commands, the same outputs
//! once ids, terms and addresses are masked.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k3rs_tests::etcdctl::{self, normalize};
use k3rs_tests::{Backend, Server, run_test};

/// One etcdctl step: arguments (`$LEASE` is replaced by the lease the script granted), stdin, and how to
/// compare (`Exact` after masking, or only chosen comma-separated fields).
struct Step {
    args: &'static [&'static str],
    stdin: &'static str,
    fields: Option<&'static [usize]>,
}

const fn step(args: &'static [&'static str]) -> Step {
    Step {
        args,
        stdin: "",
        fields: None,
    }
}

const TXN_BATCH: &str = "mod(\"foo\") = \"3\"\nvalue(\"bar\") = \"1\"\n\nput foo txn-set\nget foo\ndel bar\n\nget bar\n\n";
const TXN_FAILS: &str =
    "version(\"foo\") > \"100\"\n\nput nope 1\n\nget foo --prefix\nput failed yes\n\n";

fn script() -> Vec<Step> {
    vec![
        step(&["put", "foo", "bar"]),
        step(&["put", "foo", "baz", "--prev-kv"]),
        step(&["put", "foo2", "x"]),
        step(&["put", "bar", "1"]),
        step(&["get", "foo"]),
        step(&["get", "foo", "-w", "json"]),
        step(&["get", "f", "--prefix"]),
        step(&["get", "", "--from-key", "--keys-only"]),
        step(&["get", "", "--prefix", "--limit=2", "-w", "json"]),
        step(&["get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]),
        step(&[
            "get",
            "",
            "--prefix",
            "--sort-by=VALUE",
            "--order=ASCEND",
            "--print-value-only",
        ]),
        step(&["get", "foo", "--rev=2"]),
        step(&["get", "foo", "--consistency=s", "-w", "fields"]),
        step(&["get", "foo", "--rev=99"]),
        step(&["del", "foo2"]),
        step(&["del", "nosuch"]),
        Step {
            args: &["txn", "-w", "json"],
            stdin: TXN_BATCH,
            fields: None,
        },
        Step {
            args: &["txn", "-i"],
            stdin: TXN_FAILS,
            fields: None,
        },
        step(&["lease", "grant", "100"]),
        step(&["put", "lk", "v", "--lease=$LEASE"]),
        step(&["get", "lk", "-w", "json"]),
        step(&["lease", "timetolive", "$LEASE", "--keys"]),
        step(&["lease", "keep-alive", "--once", "$LEASE"]),
        step(&["lease", "list"]),
        step(&["put", "bad", "v", "--lease=1234abcd"]),
        step(&["lease", "revoke", "$LEASE"]),
        step(&["get", "lk"]),
        step(&["lease", "timetolive", "$LEASE"]),
        step(&["put", "", "empty"]),
        step(&["compaction", "4"]),
        step(&["get", "foo", "--rev=3"]),
        step(&["get", "foo", "--rev=4"]),
        step(&["compaction", "4"]),
        step(&["defrag"]),
        Step {
            args: &["endpoint", "status"],
            stdin: "",
            // endpoint, id, version, size, IS LEADER, IS LEARNER, raft term, index, applied, errors
            fields: Some(&[4, 5, 9]),
        },
        Step {
            args: &["member", "list"],
            // id, STATUS, name, peer urls, client urls, IS LEARNER
            stdin: "",
            fields: Some(&[1, 5]),
        },
        Step {
            args: &["endpoint", "hashkv"],
            stdin: "",
            fields: Some(&[0]),
        },
        step(&["endpoint", "health", "-w", "json"]),
        step(&["alarm", "list"]),
        step(&["del", "", "--prefix"]),
        step(&["get", "", "--prefix", "-w", "json"]),
    ]
}

/// Runs the script; returns one normalized transcript line per step.
fn transcript(server: &Server) -> Result<Vec<String>> {
    let mut lease = String::new();
    let mut out = Vec::new();
    for s in script() {
        let args: Vec<String> = s.args.iter().map(|a| a.replace("$LEASE", &lease)).collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = etcdctl::run(&server.endpoint, &argv, s.stdin)?;
        if argv.starts_with(&["lease", "grant"]) {
            lease = o
                .stdout
                .split_whitespace()
                .nth(1)
                .context("lease id in grant output")?
                .to_string();
        }
        let stdout = match s.fields {
            Some(keep) => o
                .stdout
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(", ").collect();
                    let kept: Vec<&str> = keep
                        .iter()
                        .map(|i| f.get(*i).copied().unwrap_or("<none>"))
                        .collect();
                    format!("{} fields: {}", f.len(), kept.join(" | "))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            None => o.stdout.clone(),
        };
        let stdout = if argv.starts_with(&["endpoint", "health"]) {
            // "took" is a duration.
            etcdctl::mask_between(&stdout, "\"took\":\"", "\"")
        } else {
            stdout
        };
        let err = o.error().unwrap_or("").to_string();
        out.push(normalize(
            &format!(
                "$ etcdctl {}\n{}{}\n[ok={}]",
                args.join(" "),
                stdout,
                err,
                o.success
            ),
            &server.endpoint,
        ));
    }
    Ok(out)
}

/// `etcdctl watch` of a key prefix from a revision, as printed.
fn watch_transcript(server: &Server, lines: usize) -> Result<Vec<String>> {
    let bin = k3rs_tests::process::host_tool("etcdctl", "etcd-client")?;
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.endpoint))
        .args(["watch", "--rev=2", "--prefix", "", "--prev-kv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("watch stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < lines && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(got)
}

#[test]
fn etcdctl_matches_etcd() {
    run_test(Duration::from_secs(300), async {
        // Each server runs the same script from an empty store: revisions must agree too.
        let etcd = Server::start(Backend::Etcd).await?;
        let want = transcript(&etcd)?;
        if std::env::var_os("K3RS_DUMP_TRANSCRIPT").is_some() {
            eprintln!("{}", want.join("\n"));
        }
        // Guard against a transcript of identical failures: etcd must have accepted the script.
        let failed = want.iter().filter(|t| t.ends_with("[ok=false]")).count();
        if failed != 5 {
            bail!(
                "etcd failed {failed} steps (expected the 5 deliberate ones):\n{}",
                want.join("\n")
            );
        }
        // The history before compaction at 4 is gone, so watch what is left from 4 on.
        let mut failures = Vec::new();
        for backend in [Backend::Sqlite, Backend::Postgres, Backend::Mysql] {
            let kine = Server::start(backend).await?;
            let got = transcript(&kine)?;
            for (w, g) in want.iter().zip(&got) {
                if w != g {
                    failures.push(format!(
                        "{}:\n--- etcd ---\n{w}\n--- kine ---\n{g}\n",
                        backend.name()
                    ));
                }
            }
        }
        if !failures.is_empty() {
            bail!(
                "etcdctl output differs from etcd's:\n{}",
                failures.join("\n")
            );
        }
        Ok(())
    });
}

#[test]
fn etcdctl_watch_and_snapshot_match_etcd() {
    run_test(Duration::from_secs(240), async {
        let prepare = |s: &Server| -> Result<()> {
            for args in [
                &["put", "a", "1"][..],
                &["put", "b", "2"],
                &["put", "a", "3"],
                &["del", "b"],
            ] {
                let o = etcdctl::run(&s.endpoint, args, "")?;
                if !o.success {
                    bail!("etcdctl {args:?}: {}", o.stderr);
                }
            }
            Ok(())
        };
        let etcd = Server::start(Backend::Etcd).await?;
        prepare(&etcd)?;
        // PUT a 1, PUT b 2, PUT a 3 (+ prev a 1), DELETE b (+ prev b 2): 14 lines.
        let want = watch_transcript(&etcd, 14)?;
        if want.len() != 14 {
            bail!("etcd printed {} watch lines: {want:?}", want.len());
        }
        for backend in [Backend::Sqlite, Backend::Postgres, Backend::Mysql] {
            let kine = Server::start(backend).await?;
            prepare(&kine)?;
            let got = watch_transcript(&kine, want.len())?;
            if got != want {
                bail!(
                    "{}: watch printed\n{got:#?}\netcd printed\n{want:#?}",
                    backend.name()
                );
            }
            let path = kine.data_path("snap.db");
            let o = etcdctl::run(
                &kine.endpoint,
                &["snapshot", "save", &path.display().to_string()],
                "",
            )?;
            if !o.success || !o.stdout.starts_with("Snapshot saved at") {
                bail!(
                    "{}: snapshot save failed: {}{}",
                    backend.name(),
                    o.stdout,
                    o.stderr
                );
            }
            let bytes = std::fs::read(&path)?;
            if !bytes.starts_with(b"SQLite format 3\0") || bytes.len() % 512 != 32 {
                bail!(
                    "{}: snapshot is not a SQLite database with etcd's checksum trailer",
                    backend.name()
                );
            }
        }
        Ok(())
    });
}
