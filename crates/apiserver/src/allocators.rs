//! Service ClusterIP and NodePort allocation: one reservation key per address or port, created with the
//! create-if-absent transaction so concurrent apiservers never hand out the same one; released on delete and
//! repaired at start.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::status::{ApiError, Cause};
use crate::storage::{Guarded, Storage, prefix_end};

const IP_PREFIX: &str = "/registry/k3rs/serviceips/";
const PORT_PREFIX: &str = "/registry/k3rs/nodeports/";

/// An IPv4 service range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: u32,
    size: u32,
}

impl IpRange {
    /// Parses `10.43.0.0/16`.
    pub fn parse(cidr: &str) -> Result<Self, String> {
        let (addr, bits) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{cidr:?}: bad address (only IPv4 is supported)"))?;
        let bits: u32 = bits
            .parse()
            .map_err(|_| format!("{cidr:?}: bad prefix length"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{cidr:?}: prefix length must be between 8 and 30"));
        }
        let size = 1u32 << (32 - bits);
        Ok(Self {
            base: u32::from(addr) & !(size - 1),
            size,
        })
    }

    /// The first usable address (the `kubernetes` Service's).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size - 1
    }

    fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1 + i % (self.size - 2))
    }

    fn usable(&self) -> u32 {
        self.size - 2
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            Ipv4Addr::from(self.base),
            32 - self.size.trailing_zeros()
        )
    }
}

/// A node port range (`30000-32767`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range"))?;
        let (low, high): (u16, u16) = (
            a.trim().parse().map_err(|_| format!("{s:?}: bad port"))?,
            b.trim().parse().map_err(|_| format!("{s:?}: bad port"))?,
        );
        if low == 0 || low > high {
            return Err(format!("{s:?}: invalid port range"));
        }
        Ok(Self { low, high })
    }
}

/// Reservations made for one write, released again if the write does not happen.
#[derive(Debug, Default)]
pub struct Reserved {
    pub keys: Vec<String>,
}

/// The allocators of one apiserver.
#[derive(Debug, Clone)]
pub struct Allocators {
    pub ips: IpRange,
    pub ports: PortRange,
}

fn owner(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4();
    let b = b.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl Allocators {
    async fn reserve(
        storage: &Storage,
        key: String,
        who: &str,
        reserved: &mut Reserved,
    ) -> Result<bool, ApiError> {
        match storage.create(&key, who.as_bytes().to_vec()).await? {
            Guarded::Done(_) => {
                reserved.keys.push(key);
                Ok(true)
            }
            Guarded::Changed(Some(cur)) if cur.value == who.as_bytes() => Ok(true),
            Guarded::Changed(_) => Ok(false),
        }
    }

    /// Releases reservations (of a write that failed, or of a deleted Service).
    pub async fn release(storage: &Storage, keys: &[String]) {
        for key in keys {
            if let Ok(Some(cur)) = storage.get(key).await {
                let _ = storage.delete(key, cur.mod_revision).await;
            }
        }
    }

    /// 422 for the Service `name` with one field cause.
    fn invalid(name: &str, field: &str, value: Value, detail: &str) -> ApiError {
        ApiError::invalid(
            "Service",
            "",
            name,
            vec![Cause::invalid(field, &value, detail)],
        )
    }

    /// Assigns `spec.clusterIP(s)` and node ports of a Service about to be created.
    pub async fn on_create(
        &self,
        storage: &Storage,
        svc: &mut Value,
        reserved: &mut Reserved,
    ) -> Result<(), ApiError> {
        let who = owner(svc);
        let svc_type = svc["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        if svc_type != "ExternalName" {
            let requested = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
            let ip = if requested == "None" {
                None
            } else if requested.is_empty() {
                Some(self.allocate_ip(storage, &who, reserved, svc).await?)
            } else {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    Self::invalid(
                        svc["metadata"]["name"].as_str().unwrap_or(""),
                        "spec.clusterIPs[0]",
                        json!(requested),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )
                })?;
                if !self.ips.contains(ip) {
                    return Err(Self::invalid(
                        svc["metadata"]["name"].as_str().unwrap_or(""),
                        "spec.clusterIPs",
                        json!([requested]),
                        &format!(
                            "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                            self.ips
                        ),
                    ));
                }
                if !Self::reserve(storage, format!("{IP_PREFIX}{ip}"), &who, reserved).await? {
                    return Err(Self::invalid(
                        svc["metadata"]["name"].as_str().unwrap_or(""),
                        "spec.clusterIPs",
                        json!([requested]),
                        &format!(
                            "failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    ));
                }
                Some(ip.to_string())
            };
            let ip = ip.unwrap_or_else(|| "None".into());
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
        if matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
            self.assign_node_ports(storage, svc, &who, reserved).await?;
        }
        Ok(())
    }

    /// Keeps allocations across an update: node ports for a Service that became NodePort/LoadBalancer.
    pub async fn on_update(
        &self,
        storage: &Storage,
        old: &Value,
        svc: &mut Value,
        reserved: &mut Reserved,
    ) -> Result<(), ApiError> {
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if svc["spec"].get(f).is_none_or(|v| v.is_null() || v == "")
                && let Some(v) = old["spec"].get(f)
            {
                svc["spec"][f] = v.clone();
            }
        }
        let svc_type = svc["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        if matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
            // Keep the node ports the old object had for the same port.
            if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
                for p in ports.iter_mut() {
                    if p.get("nodePort").is_none() {
                        let same = old["spec"]["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"]);
                        if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                            p["nodePort"] = np.clone();
                        }
                    }
                }
            }
            self.assign_node_ports(storage, svc, &owner(old), reserved)
                .await?;
        }
        Ok(())
    }

    /// The reservation keys a stored Service holds.
    pub fn keys_of(svc: &Value) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        {
            keys.push(format!("{IP_PREFIX}{ip}"));
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_i64() {
                keys.push(format!("{PORT_PREFIX}{np}"));
            }
        }
        keys
    }

    async fn allocate_ip(
        &self,
        storage: &Storage,
        who: &str,
        reserved: &mut Reserved,
        svc: &Value,
    ) -> Result<String, ApiError> {
        let usable = self.ips.usable();
        let start = random_u32() % usable;
        // Random probes first, then a sequential scan from a random point.
        for i in 0..usable.min(4096) {
            let offset = if i < 16 {
                random_u32() % usable
            } else {
                start + i
            };
            let ip = self.ips.nth(offset);
            if ip == self.ips.first() {
                continue;
            }
            if Self::reserve(storage, format!("{IP_PREFIX}{ip}"), who, reserved).await? {
                return Ok(ip.to_string());
            }
        }
        Err(Self::invalid(
            svc["metadata"]["name"].as_str().unwrap_or(""),
            "spec.clusterIPs",
            json!([]),
            "failed to allocate IP: range is full",
        ))
    }

    async fn assign_node_ports(
        &self,
        storage: &Storage,
        svc: &mut Value,
        who: &str,
        reserved: &mut Reserved,
    ) -> Result<(), ApiError> {
        let span = u32::from(self.ports.high - self.ports.low) + 1;
        let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let Some(ports) = svc["spec"]["ports"].as_array_mut() else {
            return Ok(());
        };
        for (i, p) in ports.iter_mut().enumerate() {
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => {
                    let field = format!("spec.ports[{i}].nodePort");
                    if np < i64::from(self.ports.low) || np > i64::from(self.ports.high) {
                        let detail = format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            self.ports.low, self.ports.high
                        );
                        return Err(Self::invalid(&name, &field, json!(np), &detail));
                    }
                    if !Self::reserve(storage, format!("{PORT_PREFIX}{np}"), who, reserved).await? {
                        return Err(Self::invalid(
                            &name,
                            &field,
                            json!(np),
                            "provided port is already allocated",
                        ));
                    }
                }
                None => {
                    let start = random_u32() % span;
                    let mut found = None;
                    for k in 0..span {
                        let port = self.ports.low as u32 + (start + k) % span;
                        if Self::reserve(storage, format!("{PORT_PREFIX}{port}"), who, reserved)
                            .await?
                        {
                            found = Some(port);
                            break;
                        }
                    }
                    let port = found.ok_or_else(|| {
                        ApiError::internal("failed to allocate a nodePort: range is full")
                    })?;
                    p["nodePort"] = json!(port);
                }
            }
        }
        Ok(())
    }

    /// Re-creates reservations of stored Services and drops those no Service holds (run at start).
    pub async fn repair(&self, storage: &Storage) -> Result<(), ApiError> {
        let prefix = "/registry/services/specs/";
        let page = storage
            .range(prefix.as_bytes(), &prefix_end(prefix), 0, 0)
            .await?;
        let mut held = std::collections::HashSet::new();
        for s in &page.items {
            let Ok(svc) = serde_json::from_slice::<Value>(&s.value) else {
                continue;
            };
            let who = owner(&svc);
            for key in Self::keys_of(&svc) {
                let _ = storage.create(&key, who.as_bytes().to_vec()).await?;
                held.insert(key);
            }
        }
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let page = storage
                .range(prefix.as_bytes(), &prefix_end(prefix), 0, 0)
                .await?;
            for s in page.items {
                if !held.contains(&s.key) && s.mod_revision < page.revision {
                    let _ = storage.delete(&s.key, s.mod_revision).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        let r = IpRange::parse("10.43.0.0/16").unwrap();
        assert_eq!(r.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(r.to_string(), "10.43.0.0/16");
        assert!(IpRange::parse("fd00::/64").is_err());
        assert_eq!(PortRange::parse("30000-32767").unwrap().high, 32767);
    }
}
