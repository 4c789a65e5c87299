//! The CNI network configuration list containerd reads: `bridge` (`cni0`, gateway, hairpin, host-local
//! IPAM on the node's podCIDR with its own data directory) and `portmap` for hostPorts — what flannel's
//! CNI plugin delegates to, written out directly.

use std::path::Path;

use serde_json::json;

use crate::Cidr;

/// The file name (K3s's).
pub const CONFLIST: &str = "10-flannel.conflist";

pub fn conflist(subnet: &Cidr, mtu: u32, ipam_dir: &Path) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "forceAddress": true,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir.to_string_lossy(),
                    "ranges": [[{"subnet": subnet.to_string(), "gateway": subnet.gateway().to_string()}]],
                },
            },
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
        ],
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_on_the_pod_cidr() {
        let s: Cidr = "10.42.3.0/24".parse().unwrap();
        let text = conflist(&s, 1450, Path::new("/var/lib/k3rs/agent/cni/networks"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.3.0/24"
        );
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.42.3.1"
        );
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(
            "10.42.3.7/24".parse::<Cidr>().unwrap().to_string(),
            "10.42.3.0/24"
        );
    }
}
