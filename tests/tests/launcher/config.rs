//! Where `k3rs server`'s settings come from, as in K3s: a flag beats the configuration file, the file
//! beats a `K3RS_*` variable, a variable beats the default; drop-ins apply in name order and `key+:`
//! appends. And a second server on the same datastore with another `--cluster-cidr` is refused with a
//! message naming it. Both servers run without an agent in the root namespace on loopback.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k3rs_tests::store::fresh_database;
use k3rs_tests::{Backend, Proc, free_port, run_test, target_bin};

fn server(dir: &std::path::Path, port: u16, datastore: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(target_bin("k3rs"));
    cmd.arg("server")
        .arg(format!("--data-dir={}", dir.display()))
        .args([
            "--disable-agent",
            "--disable-controller-manager",
            "--disable-scheduler",
            "--bind-address=127.0.0.1",
            "--kine-arg=metrics-bind-address=",
        ])
        .arg(format!("--datastore-endpoint={datastore}"))
        .args(extra)
        .env("K3RS_HTTPS_LISTEN_PORT", port.to_string())
        .env("K3RS_LOG", "info");
    cmd
}

#[test]
fn flags_beat_the_file_which_beats_the_environment_and_critical_values_must_match() {
    run_test(super::TIMEOUT, async {
        let datastore = fresh_database(Backend::Postgres)?;
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let config = d.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "write-kubeconfig-mode: \"640\"\nwrite-kubeconfig: {}\ntls-san: [file.example]\n",
                d.join("from-file.yaml").display()
            ),
        )?;
        std::fs::create_dir(d.join("config.yaml.d"))?;
        std::fs::write(
            d.join("config.yaml.d/20-b.yaml"),
            "tls-san+: [dropin-b.example]\n",
        )?;
        std::fs::write(
            d.join("config.yaml.d/10-a.yaml"),
            "tls-san+: [dropin-a.example]\n",
        )?;
        let port = free_port();
        let from_flag = d.join("from-flag.yaml");
        let mut cmd = server(
            &d.join("data"),
            port,
            &datastore,
            &[
                &format!("--config={}", config.display()),
                &format!("--write-kubeconfig={}", from_flag.display()),
                "--tls-san=flag.example",
                "--secrets-encryption",
            ],
        );
        cmd.env("K3RS_KUBECONFIG_MODE", "604");
        let mut first = Proc::spawn("k3rs server", &mut cmd, &d.join("first.log"))?;
        let start = Instant::now();
        while !from_flag.exists() {
            if !first.alive() || start.elapsed() > Duration::from_secs(60) {
                bail!("the first server did not come up:\n{}", first.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(
            !d.join("from-file.yaml").exists(),
            "the file's path won over the flag"
        );
        let mode = std::fs::metadata(&from_flag)?.permissions().mode() & 0o777;
        ensure!(
            mode == 0o640,
            "kubeconfig mode {mode:o}: the file's 640 should beat the variable's 604"
        );
        ensure!(
            std::fs::read_to_string(&from_flag)?.contains(&format!("https://127.0.0.1:{port}")),
            "K3RS_HTTPS_LISTEN_PORT was not used"
        );
        let cert = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(d.join("data/server/tls/serving-kube-apiserver.crt"))
            .output()
            .context("openssl")?;
        let sans = String::from_utf8_lossy(&cert.stdout);
        for san in [
            "file.example",
            "dropin-a.example",
            "dropin-b.example",
            "flag.example",
        ] {
            ensure!(
                sans.contains(san),
                "{san} missing from the serving certificate: {sans}"
            );
        }

        // A second server on the same datastore with another pod network is refused.
        let mut cmd = server(
            &d.join("data2"),
            free_port(),
            &datastore,
            &["--cluster-cidr=10.99.0.0/16"],
        );
        cmd.arg(format!(
            "--write-kubeconfig={}",
            d.join("second.yaml").display()
        ));
        let mut second = Proc::spawn("k3rs server 2", &mut cmd, &d.join("second.log"))?;
        let start = Instant::now();
        while second.alive() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the mismatched server kept running:\n{}",
                    second.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(
            !second.exit_success(),
            "the mismatched server exited successfully"
        );
        let log = std::fs::read_to_string(d.join("second.log"))?;
        ensure!(
            log.contains("critical configuration value mismatch") && log.contains("cluster-cidr"),
            "the refusal does not name the value:\n{log}"
        );
        ensure!(
            first.alive(),
            "the first server died:\n{}",
            first.log_tail(20)
        );

        // `k3rs secrets-encrypt` against the first server (started with --secrets-encryption).
        let encrypt = |action: &str| -> Result<String> {
            let out = Command::new(target_bin("k3rs"))
                .args(["secrets-encrypt", action])
                .arg(format!("--data-dir={}", d.join("data").display()))
                .output()?;
            ensure!(
                out.status.success(),
                "secrets-encrypt {action}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let status = encrypt("status")?;
        ensure!(status.contains("Encryption Status: Enabled"), "{status}");
        let rotated = encrypt("rotate-keys")?;
        ensure!(
            rotated.contains("Re-encrypted Secrets:") && rotated.contains("(0 unencrypted)"),
            "{rotated}"
        );
        first.terminate(Duration::from_secs(20));
        Ok(())
    });
}
