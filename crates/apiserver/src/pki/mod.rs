//! The server's PKI under `<data-dir>/server/tls/` (K3s's file names): a server CA, a client CA and a
//! request-header CA (10 years; files a user put there are used instead of generating), the apiserver
//! serving certificate, the client certificates of the control-plane identities (1 year), the
//! service-account signing key (`service.key`), and their kubeconfigs under `server/cred/`. At every start
//! a leaf within 120 days of expiry is renewed under the same CA. `check` lists every certificate with its
//! expiry; `rotate` sets leaves aside so the next start issues new ones.

mod certs;
mod manage;

pub use certs::cert_info;
pub use manage::{CertRow, SERVICES, check, rotate, table};

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};

use certs::{ensure_ca, issue};
pub(crate) use certs::{private_dir, write_private};

/// A PKI failure.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A CA: its certificate and key (PEM).
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("tls_dir", &self.tls_dir)
            .field("renewed", &self.renewed)
            .finish_non_exhaustive()
    }
}

impl Ca {
    pub fn key(&self) -> Result<KeyPair, PkiError> {
        KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::Invalid(format!("CA key: {e}")))
    }
}

/// The PEM material the apiserver serves with.
#[derive(Clone)]
pub struct Pki {
    pub server_ca: Ca,
    pub client_ca: Ca,
    pub request_header_ca: Ca,
    pub server_ca_pem: String,
    pub client_ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// The client certificate the apiserver presents to kubelets.
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
    /// The service-account token signing key (PKCS#8 PEM, ECDSA P-256): `service.key`.
    pub service_account_key_pem: String,
    pub tls_dir: PathBuf,
    /// Leaves renewed at this start because they were close to expiry (file names).
    pub renewed: Vec<String>,
}

pub(crate) const LEAF_DAYS: i64 = 365;
pub(crate) const CA_DAYS: i64 = 3650;
/// A leaf closer than this to its expiry is renewed at start.
pub const RENEW_DAYS: i64 = 120;

/// What the serving certificate must cover.
#[derive(Debug, Clone)]
pub struct ServingNames {
    pub hostname: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// A control-plane client identity: (file stem, CN, O, kubeconfig name).
const CLIENTS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "client-admin",
        "system:admin",
        "system:masters",
        Some("admin"),
    ),
    // What the apiserver presents to kubelets (logs, exec, port-forward, node proxy).
    (
        "client-kube-apiserver",
        "system:apiserver",
        "system:masters",
        None,
    ),
    (
        "client-controller",
        "system:kube-controller-manager",
        "",
        Some("controller"),
    ),
    (
        "client-scheduler",
        "system:kube-scheduler",
        "",
        Some("scheduler"),
    ),
    (
        "client-kube-proxy",
        "system:kube-proxy",
        "",
        Some("kube-proxy"),
    ),
    (
        "client-deployer",
        "system:k3rs-deployer",
        "",
        Some("deployer"),
    ),
    ("client-lb", "system:k3rs-lb", "", Some("lb")),
    ("client-dns", "system:k3rs-dns", "", Some("dns")),
    (
        "client-supervisor",
        "system:k3rs-supervisor",
        "system:masters",
        Some("supervisor"),
    ),
];

fn client_params(cn: &str, org: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    if !org.is_empty() {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A client certificate from `ca` for a public key the caller holds the private half of (a CSR's).
pub fn sign_client(
    ca: &Ca,
    cn: &str,
    orgs: &[&str],
    public: &impl rcgen::PublicKeyData,
) -> Result<String, PkiError> {
    let mut params = client_params(cn, "");
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    certs::sign_public(ca, &mut params, public, "a client certificate")
}

/// A serving certificate from `ca` for the given names and addresses.
pub fn sign_serving(
    ca: &Ca,
    cn: &str,
    dns: &[String],
    ips: &[IpAddr],
    public: &impl rcgen::PublicKeyData,
) -> Result<String, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = dns
        .iter()
        .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
        .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
        .collect();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    certs::sign_public(ca, &mut params, public, "a serving certificate")
}

/// Creates or loads the PKI under `<data_dir>/server/tls` and writes the kubeconfigs for `server_url`.
pub fn ensure(data_dir: &Path, names: &ServingNames, server_url: &str) -> Result<Pki, PkiError> {
    let tls = data_dir.join("server").join("tls");
    let cred = data_dir.join("server").join("cred");
    for d in [&tls, &cred] {
        private_dir(d)?;
    }
    let server_ca = ensure_ca(&tls, "server-ca", "k3rs-server-ca")?;
    let client_ca = ensure_ca(&tls, "client-ca", "k3rs-client-ca")?;
    let request_header_ca = ensure_ca(&tls, "request-header-ca", "k3rs-request-header-ca")?;
    let mut renewed = Vec::new();

    let mut wanted: Vec<String> = vec![
        names.hostname.clone(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    wanted.extend(names.dns.iter().cloned());
    let mut wanted_ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    wanted_ips.extend(names.ips.iter().copied());
    wanted.retain(|d| !d.is_empty());
    wanted.sort();
    wanted.dedup();
    wanted_ips.sort();
    wanted_ips.dedup();

    let serving = certs::ensure_leaf(
        &tls,
        "serving-kube-apiserver",
        &server_ca,
        &mut renewed,
        |have| {
            have.is_some_and(|info| {
                wanted.iter().all(|d| info.sans.contains(d))
                    && wanted_ips
                        .iter()
                        .all(|ip| info.sans.contains(&ip.to_string()))
            })
        },
        || {
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            params.subject_alt_names = wanted
                .iter()
                .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
                .chain(wanted_ips.iter().map(|ip| SanType::IpAddress(*ip)))
                .collect();
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params
        },
    )?;

    let mut kubelet_client = None;
    for (file, cn, org, kubeconfig_name) in CLIENTS {
        let (cert, key) = certs::ensure_leaf(
            &tls,
            file,
            &client_ca,
            &mut renewed,
            |have| have.is_some(),
            || client_params(cn, org),
        )?;
        if let Some(name) = kubeconfig_name {
            let kc = k3rs_common::kubeconfig::with_client_cert(
                server_url,
                &server_ca.cert_pem,
                &cert,
                &key,
            );
            write_private(&cred.join(format!("{name}.kubeconfig")), &kc, 0o600)?;
        }
        if *file == "client-kube-apiserver" {
            kubelet_client = Some((cert, key));
        }
    }
    // The front proxy's identity, from the request-header CA.
    certs::ensure_leaf(
        &tls,
        "client-auth-proxy",
        &request_header_ca,
        &mut renewed,
        |have| have.is_some(),
        || client_params("system:auth-proxy", ""),
    )?;
    let (kubelet_client_cert_pem, kubelet_client_key_pem) =
        kubelet_client.ok_or_else(|| PkiError::Invalid("no apiserver kubelet client".into()))?;

    let sa_key = tls.join("service.key");
    let service_account_key_pem = match std::fs::read_to_string(&sa_key) {
        Ok(pem) => pem,
        Err(_) => {
            let key = KeyPair::generate().map_err(|source| PkiError::Generate {
                what: "the service-account signing key",
                source,
            })?;
            let pem = key.serialize_pem();
            write_private(&sa_key, &pem, 0o600)?;
            pem
        }
    };
    for r in &renewed {
        tracing::warn!(certificate = %r, days = RENEW_DAYS, "certificate was close to expiry and has been renewed");
    }
    Ok(Pki {
        server_ca_pem: server_ca.cert_pem.clone(),
        client_ca_pem: client_ca.cert_pem.clone(),
        server_ca,
        client_ca,
        request_header_ca,
        serving_cert_pem: serving.0,
        serving_key_pem: serving.1,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
        service_account_key_pem,
        tls_dir: tls,
        renewed,
    })
}

/// Issues a leaf for a new key with `params` from `ca` (used by tests and the join path).
pub fn issue_leaf(
    ca: &Ca,
    params: &mut CertificateParams,
    what: &'static str,
) -> Result<(String, String), PkiError> {
    issue(ca, params, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_and_reissues_for_new_sans() {
        let dir = tempfile::tempdir().unwrap();
        let names = ServingNames {
            hostname: "node1".into(),
            ips: vec![],
            dns: vec![],
        };
        let a = ensure(dir.path(), &names, "https://127.0.0.1:6443").unwrap();
        let b = ensure(dir.path(), &names, "https://127.0.0.1:6443").unwrap();
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.server_ca_pem, b.server_ca_pem);
        let info = cert_info(&a.serving_cert_pem).unwrap();
        assert!(
            info.sans
                .contains(&"kubernetes.default.svc.cluster.local".to_string())
        );
        assert!(info.sans.contains(&"127.0.0.1".to_string()));
        let more = ServingNames {
            dns: vec!["extra.example".into()],
            ..names
        };
        let c = ensure(dir.path(), &more, "https://127.0.0.1:6443").unwrap();
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
        assert_eq!(a.server_ca_pem, c.server_ca_pem);
        for kc in ["admin", "controller", "scheduler", "supervisor"] {
            assert!(
                dir.path()
                    .join(format!("server/cred/{kc}.kubeconfig"))
                    .exists(),
                "{kc}"
            );
        }
        assert!(c.renewed.is_empty());
    }
}
