//! The second line of defence (DESIGN.md §5): an nft table in the root namespace that counts and drops any
//! packet to the cluster, service or testbed ranges leaving through the default-route interface. A test run
//! fails if the counter moved.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util;

const TABLE: &str = "k3rs-guard";
/// Ranges the project uses: cluster CIDR, service CIDR, testbed bridge.
pub const RANGES: &[&str] = &["10.42.0.0/16", "10.43.0.0/16", "172.31.240.0/20"];

#[derive(Debug)]
pub struct Guard {
    active: bool,
}

fn default_route_iface() -> Result<Option<String>> {
    let out = util::output(Command::new("ip").args(["-o", "route", "show", "default"]))?;
    let iface = out
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(String::from);
    Ok(iface)
}

impl Guard {
    pub fn install() -> Result<Self> {
        let Some(iface) =
            default_route_iface().context("reading the default route (install iproute2)")?
        else {
            eprintln!(
                "guard: no default route, nothing can leave this machine; no guard table needed"
            );
            return Ok(Self { active: false });
        };
        let set = RANGES.join(", ");
        let rules = format!(
            "table inet {TABLE} {{\n\
               counter leaked {{ }}\n\
               chain guard_out {{ type filter hook output priority 0; policy accept; oifname \"{iface}\" ip daddr {{ {set} }} counter name leaked drop; }}\n\
               chain guard_fwd {{ type filter hook forward priority 0; policy accept; oifname \"{iface}\" ip daddr {{ {set} }} counter name leaked drop; }}\n\
             }}\n"
        );
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", TABLE])
            .stderr(Stdio::null())
            .status();
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft (install nftables: `cargo xtask deps`)")?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("nft stdin")?;
            stdin.write_all(rules.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("nft refused the guard table");
        }
        eprintln!("guard: nft table inet {TABLE} drops {set} leaving via {iface}");
        Ok(Self { active: true })
    }

    /// Leaves the table in place after this process (for `cluster-up`; `cluster-down` removes it).
    pub fn keep(mut self) {
        self.active = false;
    }

    /// Packets the guard caught so far.
    pub fn leaked(&self) -> Result<u64> {
        if !self.active {
            return Ok(0);
        }
        let out =
            util::output(Command::new("nft").args(["list", "counter", "inet", TABLE, "leaked"]))?;
        let packets = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("parsing the guard counter")?;
        Ok(packets)
    }
}

/// Whether the guard table is in place.
pub fn exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes the guard table if it exists.
pub fn remove() {
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", TABLE])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.active {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", TABLE])
                .status();
        }
    }
}
