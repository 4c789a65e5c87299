//! How kine is reached and run: TLS with client certificates, a unix socket, the health and metrics
//! endpoint, graceful stop, the one-process-per-SQLite-file lock, and the NOSPACE alarm.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use k3rs_tests::etcdctl;
use k3rs_tests::{Backend, Proc, Server, ServerOptions, free_port, run_test, target_bin};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;

fn kine(args: &[&str], dir: &Path) -> Result<Proc> {
    let mut cmd = Command::new(target_bin("k3rs-kine"));
    cmd.args(args);
    Proc::spawn("k3rs-kine", &mut cmd, &dir.join("kine.log"))
}

fn wait_for_log(p: &Proc, text: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::fs::read_to_string(&p.log)
            .unwrap_or_default()
            .contains(text)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{text:?} not logged:\n{}", p.log_tail(20))
}

/// Writes a CA, a serving certificate for 127.0.0.1 and a client certificate; returns their paths.
fn pki(dir: &Path) -> Result<[std::path::PathBuf; 5]> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "k3rs test ca");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "apiserver");
    let client = client_params.signed_by(&client_key, &issuer)?;

    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server.pem()),
        ("server-key.pem", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client-key.pem", client_key.serialize_pem()),
    ];
    let mut out = Vec::new();
    for (name, pem) in files {
        let p = dir.join(name);
        std::fs::write(&p, pem)?;
        out.push(p);
    }
    out.try_into().map_err(|_| anyhow::anyhow!("five files"))
}

#[test]
fn tls_with_client_certificates() {
    run_test(Duration::from_secs(120), async {
        let dir = tempfile::tempdir()?;
        let [ca, cert, key, client, client_key] = pki(dir.path())?;
        let port = free_port();
        let db = format!("sqlite://{}", dir.path().join("state.db").display());
        let addr = format!("127.0.0.1:{port}");
        let p = kine(
            &[
                "--endpoint",
                &db,
                "--listen-address",
                &addr,
                "--metrics-bind-address",
                "",
                "--cert-file",
                cert.to_str().unwrap_or_default(),
                "--key-file",
                key.to_str().unwrap_or_default(),
                "--ca-file",
                ca.to_str().unwrap_or_default(),
            ],
            dir.path(),
        )?;
        wait_for_log(&p, "serving the etcd API")?;
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&ca)?))
            .identity(Identity::from_pem(
                std::fs::read(&client)?,
                std::fs::read(&client_key)?,
            ));
        let mut c = etcd_client::Client::connect(
            [format!("https://{addr}")],
            Some(ConnectOptions::new().with_tls(tls)),
        )
        .await?;
        c.put("secure", "yes", None).await?;
        ensure!(c.get("secure", None).await?.kvs()[0].value() == b"yes");

        // etcdctl with the same files.
        let o = etcdctl::run(
            &format!("https://{addr}"),
            &[
                &format!("--cacert={}", ca.display()),
                &format!("--cert={}", client.display()),
                &format!("--key={}", client_key.display()),
                "get",
                "secure",
                "--print-value-only",
            ],
            "",
        )?;
        ensure!(
            o.success && o.stdout.trim() == "yes",
            "etcdctl over TLS: {o:?}"
        );

        // Without a client certificate the handshake is refused.
        let no_cert = TlsOptions::new().ca_certificate(Certificate::from_pem(std::fs::read(&ca)?));
        let attempt = async {
            let mut c = etcd_client::Client::connect(
                [format!("https://{addr}")],
                Some(
                    ConnectOptions::new()
                        .with_tls(no_cert)
                        .with_timeout(Duration::from_secs(3)),
                ),
            )
            .await?;
            c.get("secure", None).await
        };
        ensure!(
            attempt.await.is_err(),
            "a client without a certificate was served"
        );
        drop(p);
        Ok(())
    });
}

#[test]
fn unix_socket() {
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("kine.sock");
        let listen = format!("unix://{}", sock.display());
        let db = format!("sqlite://{}", dir.path().join("state.db").display());
        let p = kine(
            &[
                "--endpoint",
                &db,
                "--listen-address",
                &listen,
                "--metrics-bind-address",
                "",
            ],
            dir.path(),
        )?;
        wait_for_log(&p, "serving the etcd API")?;
        // As the apiserver connects: gRPC over the socket with a "localhost" authority.
        // (etcdctl 3.4 sends the socket path as :authority, which is not a valid authority and which
        // HTTP/2 servers other than grpc-go reject; its newer releases send "localhost".)
        let path = sock.clone();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        let mut c =
            etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?;
        c.put("over", "socket", None).await?;
        ensure!(c.get("over", None).await?.kvs()[0].value() == b"socket");
        Ok(())
    });
}

fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("HTTP status")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[test]
fn health_metrics_and_graceful_stop() {
    run_test(Duration::from_secs(60), async {
        let mut server = Server::start_with(
            Backend::Sqlite,
            ServerOptions {
                metrics: true,
                ..Default::default()
            },
        )
        .await?;
        let port = server.metrics_port.context("metrics port")?;
        let mut c = server.client().await?;
        c.put("m", "1", None).await?;
        let (code, body) = http_get(port, "/healthz")?;
        ensure!(
            code == 200 && body.contains("ok"),
            "/healthz: {code} {body}"
        );
        let (code, body) = http_get(port, "/readyz?verbose")?;
        ensure!(
            code == 200 && body.contains("[+]ready ok"),
            "/readyz: {code} {body}"
        );
        let (code, body) = http_get(port, "/metrics")?;
        ensure!(code == 200, "/metrics: {code}");
        for metric in [
            "kine_revision 2",
            "kine_keys 1",
            "kine_grpc_requests_total{method=\"Put\",code=\"Ok\"} 1",
        ] {
            ensure!(body.contains(metric), "/metrics lacks {metric:?}:\n{body}");
        }
        // An open watch does not hold up a graceful stop.
        let _ws = c.watch("m", None).await?;
        ensure!(
            server.stop(),
            "kine did not stop within the grace period on SIGTERM"
        );
        ensure!(server.log().contains("kine stopped"), "{}", server.log());
        Ok(())
    });
}

#[test]
fn one_process_per_sqlite_file() {
    run_test(Duration::from_secs(60), async {
        let first = Server::start(Backend::Sqlite).await?;
        let db = first.datastore.clone().context("datastore")?;
        let dir = tempfile::tempdir()?;
        let addr = format!("127.0.0.1:{}", free_port());
        let mut second = kine(
            &[
                "--endpoint",
                &db,
                "--listen-address",
                &addr,
                "--metrics-bind-address",
                "",
            ],
            dir.path(),
        )?;
        let start = Instant::now();
        while second.alive() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        ensure!(!second.alive(), "a second kine opened the same SQLite file");
        let log = second.log_tail(5);
        ensure!(log.contains("is in use by another kine process"), "{log}");
        Ok(())
    });
}

#[test]
fn bad_endpoint_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = kine(&["--endpoint", "redis://somewhere"], dir.path()).expect("start kine");
    let start = Instant::now();
    while p.alive() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!p.alive(), "kine accepted a redis endpoint");
    assert!(
        p.log_tail(5)
            .contains("unsupported endpoint scheme \"redis\""),
        "{}",
        p.log_tail(5)
    );
}

#[test]
fn nospace_alarm_refuses_writes_until_disarmed() {
    run_test(Duration::from_secs(90), async {
        // An empty SQLite store is well under 512 KiB; 1 MiB of values is over it.
        let opts = ServerOptions {
            kine_args: ["--quota-backend-bytes", "524288"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let server = Server::start_with(Backend::Sqlite, opts).await?;
        let mut c = server.client().await?;
        for i in 0..16 {
            c.put(format!("fill/{i}"), vec![b'x'; 64 << 10], None)
                .await?;
        }
        // The quota is checked every couple of seconds; then the alarm is raised and puts fail.
        let start = Instant::now();
        loop {
            match c.put("more", "x", None).await {
                Ok(_) if start.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(_) => bail!("the NOSPACE alarm was never raised"),
                Err(e) => {
                    let (code, msg) = crate::status(e)?;
                    ensure!(
                        code == Code::ResourceExhausted
                            && msg == "etcdserver: mvcc: database space exceeded",
                        "{code:?} {msg}"
                    );
                    break;
                }
            }
        }
        let alarms = c
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await?;
        ensure!(
            alarms.alarms().len() == 1
                && alarms.alarms()[0].alarm() == etcd_client::AlarmType::Nospace
        );
        ensure!(
            c.status()
                .await?
                .errors()
                .iter()
                .any(|e| e.contains("NOSPACE"))
        );
        // etcd's way out: reads and deletes work; compact, defragment, disarm.
        ensure!(
            c.get("fill/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await?
                .count()
                == 16
        );
        let del = c
            .delete(
                "fill/",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await?;
        let rev = del.header().map_or(0, |h| h.revision());
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await?;
        c.defragment().await?;
        let o = etcdctl::run(&server.endpoint, &["alarm", "disarm"], "")?;
        ensure!(o.success, "{o:?}");
        c.put("more", "x", None).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.put("still", "fine", None).await?;
        Ok(())
    });
}
