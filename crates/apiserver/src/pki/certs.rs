//! Certificate mechanics: CAs loaded or made, leaves issued, kept, or renewed when near expiry or no longer
//! from the current CA, and what a certificate says (subject, issuer, expiry, SANs).

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

use super::{CA_DAYS, Ca, LEAF_DAYS, PkiError, RENEW_DAYS};

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` atomically, the file created with `mode` from the start (never readable by
/// others, even for a moment) and synced before it replaces the old one.
pub(crate) fn write_private(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Creates a directory only its owner may read.
pub(crate) fn private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// Loads `<name>.crt`/`<name>.key` (a user's own CA files are used as they are), or creates a self-signed
/// CA with that common name.
pub(crate) fn ensure_ca(dir: &Path, name: &str, common_name: &str) -> Result<Ca, PkiError> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if crt.exists() && key.exists() {
        let cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", key.display())))?;
        return Ok(Ca { cert_pem, key_pem });
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
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
    })
}

/// Signs `params` for `public` with `ca` (1-year validity).
pub(crate) fn sign_public(
    ca: &Ca,
    params: &mut CertificateParams,
    public: &impl rcgen::PublicKeyData,
    what: &'static str,
) -> Result<String, PkiError> {
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca.key()?).map_err(|source| PkiError::Generate {
            what: "the issuer",
            source,
        })?;
    validity(params, LEAF_DAYS);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(public, &issuer)
        .map_err(|source| PkiError::Generate { what, source })?;
    Ok(cert.pem())
}

/// Issues a leaf for a new key.
pub(crate) fn issue(
    ca: &Ca,
    params: &mut CertificateParams,
    what: &'static str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(|source| PkiError::Generate { what, source })?;
    let cert = sign_public(ca, params, &key, what)?;
    Ok((cert, key.serialize_pem()))
}

/// What a certificate says.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub common_name: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: i64,
    pub sans: Vec<String>,
    pub is_ca: bool,
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

/// Parses the first certificate of a PEM.
pub fn cert_info(pem: &str) -> Option<CertInfo> {
    let der = pem_to_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => sans.push(IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => sans.push(IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(CertInfo {
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("")
            .to_string(),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        sans,
        is_ca: cert.is_ca(),
    })
}

/// Loads `<file>.crt|key` if it is from `ca`, acceptable to `accept` and not within [`RENEW_DAYS`] of
/// expiry; otherwise issues a new one from `params` (a renewal is recorded in `renewed`).
pub(crate) fn ensure_leaf(
    tls: &Path,
    file: &str,
    ca: &Ca,
    renewed: &mut Vec<String>,
    accept: impl FnOnce(Option<&CertInfo>) -> bool,
    params: impl FnOnce() -> CertificateParams,
) -> Result<(String, String), PkiError> {
    let (crt, key) = (
        tls.join(format!("{file}.crt")),
        tls.join(format!("{file}.key")),
    );
    let ca_subject = cert_info(&ca.cert_pem)
        .map(|i| i.subject)
        .unwrap_or_default();
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        let info = cert_info(&c);
        let from_ca = info.as_ref().is_some_and(|i| i.issuer == ca_subject);
        let expiring = info
            .as_ref()
            .is_some_and(|i| i.not_after < crate::meta::unix_now() + RENEW_DAYS * 86_400);
        if from_ca && !expiring && accept(info.as_ref()) {
            return Ok((c, k));
        }
        if expiring {
            renewed.push(format!("{file}.crt"));
        }
    }
    let mut p = params();
    let (c, k) = issue(ca, &mut p, "a certificate")?;
    write_private(&key, &k, 0o600)?;
    write_private(&crt, &c, 0o644)?;
    Ok((c, k))
}
