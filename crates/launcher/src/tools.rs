//! The multicall helpers: `k3rs kubectl` (the system kubectl with the server's kubeconfig), `k3rs ctr`
//! and `k3rs crictl` (against k3rs's containerd), and `k3rs check-config` (what this machine has of
//! what k3rs needs, as a pass/fail table).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

/// The socket of the containerd the agent supervises.
const CONTAINERD_SOCKET: &str = "/run/k3rs/containerd/containerd.sock";

fn find(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Replaces this process with `program` (exec returns only on failure).
fn exec(program: &str, mut cmd: Command) -> ExitCode {
    let err = cmd.exec();
    eprintln!("k3rs: running {program}: {err}");
    ExitCode::FAILURE
}

/// `k3rs kubectl …`: `KUBECONFIG` when set, else `/etc/k3rs/k3rs.yaml`, else the admin kubeconfig under
/// the default data dir.
pub fn kubectl(args: Vec<OsString>) -> ExitCode {
    let Some(bin) = find("kubectl") else {
        eprintln!("k3rs: kubectl is not installed (Debian: apt-get install kubernetes-client)");
        return ExitCode::FAILURE;
    };
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if std::env::var_os("KUBECONFIG").is_none() {
        for candidate in [
            "/etc/k3rs/k3rs.yaml",
            "/var/lib/k3rs/server/cred/admin.kubeconfig",
        ] {
            if Path::new(candidate).exists() {
                cmd.env("KUBECONFIG", candidate);
                break;
            }
        }
    }
    exec("kubectl", cmd)
}

/// `k3rs ctr …` in containerd's `k8s.io` namespace on k3rs's socket (unless set already).
pub fn ctr(args: Vec<OsString>) -> ExitCode {
    let mut cmd = Command::new("ctr");
    if std::env::var_os("CONTAINERD_ADDRESS").is_none() {
        cmd.env("CONTAINERD_ADDRESS", CONTAINERD_SOCKET);
    }
    if std::env::var_os("CONTAINERD_NAMESPACE").is_none() {
        cmd.env("CONTAINERD_NAMESPACE", "k8s.io");
    }
    cmd.args(args);
    exec("ctr", cmd)
}

/// `k3rs crictl …` on k3rs's socket (unless `CONTAINER_RUNTIME_ENDPOINT` is set).
pub fn crictl(args: Vec<OsString>) -> ExitCode {
    let mut cmd = Command::new("crictl");
    if std::env::var_os("CONTAINER_RUNTIME_ENDPOINT").is_none() {
        cmd.env(
            "CONTAINER_RUNTIME_ENDPOINT",
            format!("unix://{CONTAINERD_SOCKET}"),
        );
    }
    cmd.args(args);
    exec("crictl", cmd)
}

/// One line of `check-config`.
struct Check {
    what: String,
    ok: bool,
    hint: String,
}

fn check(what: impl Into<String>, ok: bool, hint: impl Into<String>) -> Check {
    Check {
        what: what.into(),
        ok,
        hint: hint.into(),
    }
}

fn checks() -> Vec<Check> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has_fs = |fs: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    let mut out = vec![
        check(
            "kernel: overlay filesystem",
            has_fs("overlay") || Path::new("/sys/module/overlay").exists(),
            "modprobe overlay",
        ),
        check(
            "kernel: network namespaces",
            Path::new("/proc/self/ns/net").exists(),
            "a kernel with CONFIG_NET_NS",
        ),
        check(
            "kernel: bridge",
            Path::new("/sys/module/bridge").exists() || Path::new("/proc/sys/net/bridge").exists(),
            "modprobe bridge (loaded on demand by the CNI bridge plugin)",
        ),
        check(
            "kernel: vxlan",
            Path::new("/sys/module/vxlan").exists()
                || std::fs::read_to_string("/proc/modules").is_ok_and(|m| m.contains("vxlan"))
                || has_module("vxlan"),
            "modprobe vxlan (for --flannel-backend vxlan)",
        ),
        check(
            "kernel: ip forwarding writable",
            std::fs::metadata("/proc/sys/net/ipv4/ip_forward")
                .is_ok_and(|m| !m.permissions().readonly()),
            "run as root",
        ),
        check(
            "cgroups mounted",
            has_fs("cgroup") && Path::new("/sys/fs/cgroup").is_dir(),
            "mount cgroups at /sys/fs/cgroup",
        ),
        check(
            "cgroups: memory controller",
            std::fs::read_to_string("/proc/cgroups").is_ok_and(|c| {
                c.lines()
                    .any(|l| l.starts_with("memory") && l.ends_with('1'))
            }),
            "boot with cgroup_enable=memory",
        ),
    ];
    for (bin, pkg) in [
        ("containerd", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
    ] {
        out.push(check(
            format!("binary: {bin}"),
            find(bin).is_some(),
            format!("apt-get install {pkg}"),
        ));
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        out.push(check(
            format!("CNI plugin: {plugin}"),
            Path::new("/usr/lib/cni").join(plugin).is_file(),
            "apt-get install containernetworking-plugins",
        ));
    }
    out
}

fn has_module(name: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dep = format!("/lib/modules/{}/modules.dep", release.trim());
    std::fs::read_to_string(dep).is_ok_and(|d| d.contains(&format!("/{name}.ko")))
}

/// `k3rs check-config`: prints the table; fails when anything required is missing.
pub fn check_config() -> ExitCode {
    let results = checks();
    let width = results.iter().map(|c| c.what.len()).max().unwrap_or(0);
    let mut failed = 0;
    for c in &results {
        let status = if c.ok { "pass" } else { "FAIL" };
        if c.ok {
            println!("{:width$}  {status}", c.what);
        } else {
            failed += 1;
            println!("{:width$}  {status}  ({})", c.what, c.hint);
        }
    }
    if failed == 0 {
        println!("\nall {} checks passed", results.len());
        ExitCode::SUCCESS
    } else {
        println!("\n{failed} of {} checks failed", results.len());
        ExitCode::FAILURE
    }
}
