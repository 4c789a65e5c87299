//! deploy/: the installer and the systemd units. The scripts are shellcheck-clean; `install.sh` writes a
//! server or agent unit with its environment file and the kubectl/ctr/crictl links; every unit passes
//! `systemd-analyze verify` (nothing is started through systemd); and the per-component units'
//! `ExecStartPre`/`ExecStart` lines, run in order in a testbed namespace, make a working node whose pods
//! keep running when every unit is stopped and started again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k3rs_tests::launcher::{K3rsNode, node_ready};
use k3rs_tests::testbed::Testbed;
use k3rs_tests::{Proc, run_test, target_bin};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tool(name: &str, package: &str) -> Result<PathBuf> {
    k3rs_tests::process::host_tool(name, package)
}

/// `systemd-analyze verify` must pass without a word.
fn verify(units: &[PathBuf]) -> Result<()> {
    let out = Command::new(tool("systemd-analyze", "systemd")?)
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {units:?}:\n{said}"
    );
    Ok(())
}

#[test]
fn scripts_are_clean_and_the_installer_writes_units_that_verify() {
    run_test(super::TIMEOUT, async {
        let scripts: Vec<PathBuf> = ["install.sh", "k3rs-killall.sh", "k3rs-uninstall.sh"]
            .iter()
            .map(|s| deploy().join(s))
            .collect();
        let out = Command::new(tool("shellcheck", "shellcheck")?)
            .args(&scripts)
            .output()?;
        ensure!(
            out.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );

        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("bin");
        let units = dir.path().join("systemd");
        let install = |env: &[(&str, &str)], args: &[&str]| -> Result<String> {
            let mut cmd = Command::new("sh");
            cmd.arg(deploy().join("install.sh"))
                .args(args)
                .env("INSTALL_K3RS_SOURCE", target_bin("k3rs"))
                .env("INSTALL_K3RS_BIN_DIR", &bin)
                .env("INSTALL_K3RS_SYSTEMD_DIR", &units)
                .env("INSTALL_K3RS_SKIP_ENABLE", "true")
                .env("INSTALL_K3RS_SYMLINK", "force");
            for (k, v) in env {
                cmd.env(k, v);
            }
            let out = cmd.output()?;
            ensure!(
                out.status.success(),
                "install.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        install(&[], &["--disable=servicelb"])?;
        let server = std::fs::read_to_string(units.join("k3rs.service"))?;
        ensure!(
            server.contains(&format!(
                "ExecStart={}/k3rs server '--disable=servicelb'",
                bin.display()
            )),
            "{server}"
        );
        install(
            &[
                ("K3RS_URL", "https://10.0.0.1:6443"),
                ("K3RS_TOKEN", "K10abc::server:secret"),
            ],
            &[],
        )?;
        let agent = std::fs::read_to_string(units.join("k3rs-agent.service"))?;
        ensure!(
            agent.contains(&format!("ExecStart={}/k3rs agent", bin.display())),
            "{agent}"
        );
        let env = std::fs::read_to_string(units.join("k3rs-agent.service.env"))?;
        ensure!(
            env.contains("K3RS_URL=https://10.0.0.1:6443")
                && env.contains("K3RS_TOKEN=K10abc::server:secret"),
            "{env}"
        );
        for link in ["kubectl", "ctr", "crictl"] {
            ensure!(
                std::fs::read_link(bin.join(link))? == Path::new("k3rs"),
                "{link} is not a link to k3rs"
            );
        }
        let killall = std::fs::read_to_string(bin.join("k3rs-killall.sh"))?;
        ensure!(
            killall.contains(&format!("BIN_DIR={}", bin.display())),
            "killall not configured"
        );
        // The `k3rs` behind the kubectl link is the multicall binary.
        let out = Command::new(bin.join("ctr"))
            .arg("--help")
            .env("PATH", "/nonexistent")
            .output()?;
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("running ctr"),
            "the ctr link did not dispatch: {out:?}"
        );

        // Every unit of deploy/ (the binary path pointed at this build) and the installed ones verify.
        let mut all = vec![units.join("k3rs.service"), units.join("k3rs-agent.service")];
        let shipped = dir.path().join("shipped");
        std::fs::create_dir(&shipped)?;
        for e in std::fs::read_dir(deploy().join("systemd"))? {
            let p = e?.path();
            let text = std::fs::read_to_string(&p)?.replace(
                "/usr/local/bin/k3rs",
                &target_bin("k3rs").display().to_string(),
            );
            let out = shipped.join(p.file_name().context("unit name")?);
            std::fs::write(&out, text)?;
            all.push(out);
        }
        ensure!(all.len() >= 10, "units missing: {all:?}");
        verify(&all)?;

        // This machine has what k3rs needs (`cargo xtask deps` installed it): every check passes.
        let out = Command::new(target_bin("k3rs"))
            .arg("check-config")
            .output()?;
        let table = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && table.contains("binary: containerd") && !table.contains("FAIL"),
            "k3rs check-config:\n{table}"
        );
        Ok(())
    });
}

/// A unit's `Environment=`, `ExecStartPre=` and `ExecStart=` lines, paths rewritten for the test.
struct Unit {
    env: Vec<(String, String)>,
    pre: Vec<(bool, Vec<String>)>,
    start: Vec<String>,
}

fn unit(name: &str, data_dir: &Path) -> Result<Unit> {
    let text = std::fs::read_to_string(deploy().join("systemd").join(name))?
        .replace(
            "/usr/local/bin/k3rs",
            &target_bin("k3rs").display().to_string(),
        )
        .replace("/var/lib/k3rs", &data_dir.display().to_string());
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut u = Unit {
        env: Vec::new(),
        pre: Vec::new(),
        start: Vec::new(),
    };
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("Environment=") {
            let (k, v) = e.split_once('=').context("Environment=K=V")?;
            u.env.push((k.into(), v.into()));
        } else if let Some(c) = line.strip_prefix("ExecStartPre=") {
            let (ignore, c) = match c.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, c),
            };
            u.pre.push((ignore, words(c)));
        } else if let Some(c) = line.strip_prefix("ExecStart=") {
            u.start = words(c);
        }
    }
    ensure!(!u.start.is_empty(), "{name} has no ExecStart");
    Ok(u)
}

#[test]
fn the_per_component_units_make_a_working_node() {
    run_test(super::TIMEOUT, async {
        let mut tb = Testbed::create()?;
        let mut node = K3rsNode::new(&mut tb, "server")?;
        let d = node.data_dir().to_path_buf();
        let ip = node.ip.clone();
        let node_flags: Vec<String> = vec!["--node-name=server".into(), format!("--node-ip={ip}")];
        let kubelet_flags: Vec<String> = vec![
            format!("--root-dir={}/kubelet", d.display()),
            format!("--pod-logs-dir={}/pod-logs", d.display()),
            format!("--containerd-state-dir={}/run", d.display()),
            format!("--cgroup-root=/k3rs-test-{}", node.netns),
        ];
        // What the test adds to each unit's command: this node's name and address, its own paths.
        let extra: BTreeMap<&str, Vec<String>> = [
            ("k3rs-kine.service", vec![]),
            (
                "k3rs-apiserver.service",
                vec![format!("--advertise-address={ip}")],
            ),
            ("k3rs-controller-manager.service", vec![]),
            ("k3rs-scheduler.service", vec![]),
            (
                "k3rs-kubelet.service",
                [node_flags.clone(), kubelet_flags].concat(),
            ),
            ("k3rs-flannel.service", vec!["--node-name=server".into()]),
        ]
        .into_iter()
        .collect();
        let mut before = None;
        for round in 0..2 {
            let mut procs: Vec<Proc> = Vec::new();
            for name in [
                "k3rs-kine.service",
                "k3rs-apiserver.service",
                "k3rs-controller-manager.service",
                "k3rs-scheduler.service",
                "k3rs-kubelet.service",
                "k3rs-flannel.service",
            ] {
                let u = unit(name, &d)?;
                for (ignore, pre) in &u.pre {
                    if pre[0].ends_with("modprobe") {
                        continue;
                    }
                    let mut cmd = Testbed::in_netns(&node.netns, &pre[0]);
                    cmd.args(&pre[1..]).envs(u.env.iter().map(|(k, v)| (k, v)));
                    if pre.iter().any(|w| w == "--join-only") {
                        cmd.args(&node_flags);
                    }
                    let out = cmd.output()?;
                    if !out.status.success() && !ignore {
                        bail!(
                            "{name}: ExecStartPre {pre:?} failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                let mut cmd = Testbed::in_netns(&node.netns, &u.start[0]);
                cmd.args(&u.start[1..])
                    .args(&extra[name])
                    .envs(u.env.iter().map(|(k, v)| (k, v)))
                    .env("K3RS_LOG", "info");
                let log = d.join(format!("{name}.{round}.log"));
                procs.push(Proc::spawn(name, &mut cmd, &log)?);
                if name == "k3rs-apiserver.service" {
                    // kubectl from the root namespace: the admin kubeconfig, once the apiserver wrote it.
                    let admin = d.join("server/cred/admin.kubeconfig");
                    node.wait(
                        "the apiserver's kubeconfig",
                        Duration::from_secs(60),
                        |_| Ok(admin.exists()),
                    )
                    .await?;
                    std::fs::copy(&admin, d.join("k3rs.yaml"))?;
                }
            }
            let tails = |procs: &[Proc]| {
                procs
                    .iter()
                    .map(|p| p.log_tail(15))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            };
            node.wait("the node Ready", Duration::from_secs(120), |s| {
                node_ready(s, "server")
            })
            .await
            .with_context(|| tails(&procs))?;
            node.kubectl_in(&["apply", "-f", "-"], super::single::DEPLOYMENT)?;
            node.wait(
                "the Deployment available",
                Duration::from_secs(90),
                super::single::available,
            )
            .await
            .with_context(|| tails(&procs))?;
            if round == 0 {
                super::single::pod_to_pod(&node)?;
                before = Some(super::single::pods(&node)?);
                // Every unit stopped (SIGTERM, last started first), then started again as systemd would.
                while let Some(mut p) = procs.pop() {
                    p.terminate(Duration::from_secs(30));
                }
                continue;
            }
            let kubelet_log = d.join("k3rs-kubelet.service.1.log");
            node.wait(
                "the restarted kubelet ready",
                Duration::from_secs(90),
                |_| Ok(std::fs::read_to_string(&kubelet_log)?.contains("kubelet ready")),
            )
            .await
            .with_context(|| tails(&procs))?;
            for _ in 0..10 {
                let after = super::single::pods(&node)?;
                ensure!(
                    Some(&after) == before.as_ref(),
                    "the pods changed across the restart:\nbefore {before:?}\nafter  {after:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            drop(procs);
        }
        Ok(())
    });
}
