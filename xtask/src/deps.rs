//! `cargo xtask deps`: installs (idempotently, saying what) the Debian packages builds and tests need.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util;

/// (package, why).
pub const PACKAGES: &[(&str, &str)] = &[
    ("protobuf-compiler", "protoc, for the etcd gRPC definitions"),
    ("libprotobuf-dev", "protobuf's well-known .proto files"),
    (
        "etcd-server",
        "the real etcd, the reference for kine's tests and benchmark",
    ),
    ("etcd-client", "etcdctl, the client the kine tests drive"),
    (
        "postgresql",
        "a PostgreSQL server for kine's postgres backend",
    ),
    (
        "mariadb-server",
        "a MariaDB server for kine's mysql backend",
    ),
    ("mariadb-client", "the mariadb CLI, to create the test user"),
    ("nftables", "nft, for the test guard table"),
    (
        "iproute2",
        "ip, to find the default route for the guard table",
    ),
    ("procps", "ps/kill, to stop fixtures by PID"),
    (
        "containerd",
        "the container runtime the kubelet drives over CRI (its own instance, never the system's)",
    ),
    ("runc", "the OCI runtime containerd starts containers with"),
    (
        "containernetworking-plugins",
        "the CNI plugins (bridge, host-local, portmap, loopback) pods are networked with",
    ),
    (
        "iptables",
        "what the CNI portmap plugin writes hostPort rules with (iptables-nft)",
    ),
    (
        "busybox-static",
        "the static busybox `cargo xtask images` builds the busybox test image from",
    ),
    (
        "tzdata",
        "the time-zone database CronJobs' timeZone is read from",
    ),
    (
        "kubernetes-client",
        "kubectl, the client the apiserver tests drive (skipped when /usr/bin/kubectl exists)",
    ),
    ("shellcheck", "checks deploy/'s install scripts"),
    (
        "docker-registry",
        "a local OCI registry (on the testbed bridge) that registries.yaml mirrors are tested against",
    ),
    ("skopeo", "copies the test images into that registry"),
    (
        "systemd",
        "systemd-analyze, which verifies deploy/'s units (nothing is started with it)",
    ),
];

fn installed(pkg: &str) -> bool {
    // Any kubectl will do; a newer one than Debian's may already be on the machine.
    if pkg == "kubernetes-client" && std::path::Path::new("/usr/bin/kubectl").exists() {
        return true;
    }
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// What building and using a development cluster needs (a subset of `PACKAGES`).
pub const CLUSTER: &[&str] = &[
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-client",
    "kubernetes-client",
    "nftables",
    "iproute2",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "busybox-static",
];

/// Installs every package tests and benchmarks need, and the Python client the apiserver tests drive.
pub fn install() -> Result<()> {
    install_only(&PACKAGES.iter().map(|(p, _)| *p).collect::<Vec<_>>())?;
    python_client().map(drop)
}

/// The Python `kubernetes` client's version (from PyPI) the tests drive.
const PYTHON_CLIENT: &str = "32.0.1";

/// A virtualenv under `target/` with the Python `kubernetes` client; returns its interpreter.
pub fn python_client() -> Result<std::path::PathBuf> {
    let venv = util::root().join("target/k3rs-python");
    let python = venv.join("bin/python");
    let has = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import kubernetes, sys; sys.exit(kubernetes.__version__ != {PYTHON_CLIENT:?})"
            ),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Ok(python);
    }
    eprintln!(
        "deps: installing the Python kubernetes client {PYTHON_CLIENT} into {}",
        venv.display()
    );
    util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes=={PYTHON_CLIENT}")),
    )?;
    Ok(python)
}

/// Installs those of `wanted` (names from `PACKAGES`) that are missing.
pub fn install_only(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!(
            "deps: all {} host packages needed are installed",
            wanted.len()
        );
        return Ok(());
    }
    for (p, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("deps: will install {p} ({why})");
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "apt-get not found: install these packages by hand: {}",
            missing.join(" ")
        );
    }
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    util::run(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    util::run(&mut apt(&args))?;
    eprintln!("deps: installed {}", missing.join(" "));
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
