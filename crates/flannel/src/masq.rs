//! Masquerading of pod traffic leaving the cluster CIDR, as flannel's `--ip-masq` rules, in an nftables
//! table of its own (`ip k3rs-flannel`), replaced whole on each apply so it never holds stale rules.

use tokio::io::AsyncWriteExt;

use crate::{Cidr, Error};

pub const TABLE: &str = "k3rs-flannel";

/// The ruleset for pods of `subnet` in `cluster`.
pub fn ruleset(cluster: &Cidr, subnet: &Cidr) -> String {
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {subnet} ip daddr {cluster} return\n    ip saddr {cluster} ip daddr 224.0.0.0/4 return\n    ip saddr {cluster} ip daddr != {cluster} masquerade fully-random\n  }}\n}}\n"
    )
}

/// Installs the table with `nft -f -`.
pub async fn apply(cluster: &Cidr, subnet: &Cidr) -> Result<(), Error> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset(cluster, subnet).as_bytes())
            .await
            .map_err(|e| Error::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
