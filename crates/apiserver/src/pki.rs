//! First-start PKI: a server CA and a client CA (K3s's file names under `<data-dir>/server/tls/`), the
//! apiserver serving certificate, the admin client certificate, the service-account signing key
//! (`service.key`) and `<data-dir>/server/cred/admin.kubeconfig`.
//! Existing files are reused; the serving certificate is re-issued when a wanted SAN is missing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

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

/// The PEM material the apiserver serves with.
#[derive(Debug, Clone)]
pub struct Pki {
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
}

const LEAF_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// Loads `<name>.crt`/`<name>.key`, or creates a self-signed CA with that common name.
fn ensure_ca(dir: &Path, name: &str, common_name: &str) -> Result<(String, KeyPair), PkiError> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if crt.exists() && key.exists() {
        let cert = std::fs::read_to_string(&crt).map_err(io(&crt))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", key.display())))?;
        return Ok((cert, key));
    }
    let key_pair = KeyPair::generate().map_err(|source| PkiError::Generate {
        what: "a CA key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "{common_name}@{}",
            OffsetDateTime::now_utc().unix_timestamp()
        ),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS);
    let cert = params
        .self_signed(&key_pair)
        .map_err(|source| PkiError::Generate {
            what: "a CA certificate",
            source,
        })?;
    write_private(&key, &key_pair.serialize_pem(), 0o600)?;
    write_private(&crt, &cert.pem(), 0o644)?;
    Ok((cert.pem(), key_pair))
}

fn issue(
    ca_pem: &str,
    ca_key: &KeyPair,
    params: &mut CertificateParams,
    what: &'static str,
) -> Result<(String, String), PkiError> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|source| PkiError::Generate {
        what: "the issuer",
        source,
    })?;
    let key = KeyPair::generate().map_err(|source| PkiError::Generate { what, source })?;
    validity(params, LEAF_DAYS);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate { what, source })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The SANs a serving certificate carries (DNS names and IPs as strings).
fn cert_sans(pem: &str) -> Option<Vec<String>> {
    let der = pem_to_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => out.push(IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => out.push(IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(out)
}

/// The DER of the first PEM block.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// What the serving certificate must cover.
#[derive(Debug, Clone)]
pub struct ServingNames {
    pub hostname: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// Creates or loads the PKI under `<data_dir>/server/tls` and writes the admin kubeconfig for `server_url`.
pub fn ensure(data_dir: &Path, names: &ServingNames, server_url: &str) -> Result<Pki, PkiError> {
    let tls = data_dir.join("server").join("tls");
    let cred = data_dir.join("server").join("cred");
    for d in [&tls, &cred] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let (server_ca, server_ca_key) = ensure_ca(&tls, "server-ca", "k3rs-server-ca")?;
    let (client_ca, client_ca_key) = ensure_ca(&tls, "client-ca", "k3rs-client-ca")?;

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

    let (crt, key) = (
        tls.join("serving-kube-apiserver.crt"),
        tls.join("serving-kube-apiserver.key"),
    );
    let existing = match (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        (Ok(c), Ok(k)) => Some((c, k)),
        _ => None,
    };
    let covered = existing
        .as_ref()
        .and_then(|(c, _)| cert_sans(c))
        .is_some_and(|have| {
            wanted.iter().all(|d| have.contains(d))
                && wanted_ips.iter().all(|ip| have.contains(&ip.to_string()))
        });
    let (serving_cert, serving_key) = match existing {
        Some(pair) if covered => pair,
        _ => {
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
            let (c, k) = issue(
                &server_ca,
                &server_ca_key,
                &mut params,
                "the serving certificate",
            )?;
            write_private(&key, &k, 0o600)?;
            write_private(&crt, &c, 0o644)?;
            (c, k)
        }
    };

    let client = |file: &str, cn: &str, what: &'static str| {
        client_cert(&tls, (&client_ca, &client_ca_key), file, cn, what)
    };
    let (admin_cert, admin_key_pem) =
        client("client-admin", "system:admin", "the admin certificate")?;
    // What the apiserver presents to kubelets (logs, exec, port-forward, node proxy), as K3s's
    // `client-kube-apiserver`.
    let (kubelet_client_cert_pem, kubelet_client_key_pem) = client(
        "client-kube-apiserver",
        "system:apiserver",
        "the apiserver's kubelet client certificate",
    )?;
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
    let kubeconfig = kubeconfig(server_url, &server_ca, &admin_cert, &admin_key_pem);
    write_private(&cred.join("admin.kubeconfig"), &kubeconfig, 0o600)?;
    Ok(Pki {
        server_ca_pem: server_ca,
        client_ca_pem: client_ca,
        serving_cert_pem: serving_cert,
        serving_key_pem: serving_key,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
        service_account_key_pem,
        tls_dir: tls,
    })
}

/// Loads or issues `<tls>/<file>.crt|key`, a client certificate (`CN=cn`, `O=system:masters`) from the
/// client CA.
fn client_cert(
    tls: &Path,
    (ca, ca_key): (&str, &KeyPair),
    file: &str,
    cn: &str,
    what: &'static str,
) -> Result<(String, String), PkiError> {
    let (crt, key) = (
        tls.join(format!("{file}.crt")),
        tls.join(format!("{file}.key")),
    );
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        return Ok((c, k));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (c, k) = issue(ca, ca_key, &mut params, what)?;
    write_private(&key, &k, 0o600)?;
    write_private(&crt, &c, 0o644)?;
    Ok((c, k))
}

/// A kubeconfig with embedded certificates (K3s's `default` cluster/context/user names).
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem)
    )
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
        let sans = cert_sans(&a.serving_cert_pem).unwrap();
        assert!(sans.contains(&"kubernetes.default.svc.cluster.local".to_string()));
        assert!(sans.contains(&"127.0.0.1".to_string()));
        let more = ServingNames {
            dns: vec!["extra.example".into()],
            ..names
        };
        let c = ensure(dir.path(), &more, "https://127.0.0.1:6443").unwrap();
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
        assert_eq!(a.server_ca_pem, c.server_ca_pem);
        assert!(dir.path().join("server/cred/admin.kubeconfig").exists());
    }
}
