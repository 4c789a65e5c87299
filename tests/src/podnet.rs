//! A stand-in pod network for tests that proxy to pods before the kubelet and flannel exist: a network
//! namespace joined to the root namespace by a veth pair, with a /30 from 198.18.0.0/15 (the benchmarking
//! range, neither private nor routed anywhere: the traffic stays on this machine), and an HTTP server
//! inside it. The namespace, link and server are removed on drop.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Proc;

/// The namespace and its addresses.
pub struct PodNet {
    pub netns: String,
    host_if: String,
    /// The address inside the namespace (the "pod IP").
    pub pod_ip: String,
    server: Option<Proc>,
}

/// Runs `ip` with `args`, failing with its error output.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl PodNet {
    /// Creates the namespace `k3rs-pod-<pid>-<n>` with its link up.
    pub fn create() -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id();
        // One /30 per (process, namespace): 198.18.0.0/15 holds 32768 of them.
        let slot = (id.wrapping_mul(8).wrapping_add(n)) % 32768;
        let base = (198u32 << 24) | (18 << 16) | (slot * 4);
        let addr = |k: u32| std::net::Ipv4Addr::from(base + k).to_string();
        let tag = format!("{:x}", (id << 4 | n) & 0xff_ffff);
        let net = PodNet {
            netns: format!("k3rs-pod-{id}-{n}"),
            host_if: format!("k3h{tag}"),
            pod_ip: addr(2),
            server: None,
        };
        let pod_if = format!("k3p{tag}");
        ip(&["netns", "add", &net.netns])?;
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &pod_if,
        ])?;
        ip(&["link", "set", &pod_if, "netns", &net.netns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", addr(1)),
            "dev",
            &net.host_if,
        ])?;
        ip(&["link", "set", &net.host_if, "up"])?;
        ip(&[
            "-n",
            &net.netns,
            "addr",
            "add",
            &format!("{}/30", net.pod_ip),
            "dev",
            &pod_if,
        ])?;
        ip(&["-n", &net.netns, "link", "set", &pod_if, "up"])?;
        ip(&["-n", &net.netns, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// Serves `dir` over HTTP on `port` inside the namespace (Python's `http.server`), once it answers.
    pub fn serve_http(&mut self, python: &Path, dir: &Path, port: u16, log: &Path) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(python)
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                &self.pod_ip,
            ])
            .arg("--directory")
            .arg(dir);
        let mut proc = Proc::spawn("pod http server", &mut cmd, log)?;
        let start = Instant::now();
        let addr: std::net::SocketAddr = format!("{}:{port}", self.pod_ip).parse()?;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if !proc.alive() || start.elapsed() > Duration::from_secs(20) {
                bail!("the pod HTTP server did not start:\n{}", proc.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(proc);
        Ok(())
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}
