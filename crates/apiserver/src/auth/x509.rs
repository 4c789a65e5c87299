//! x509 client certificates (already verified by TLS against the client CA or the request-header CA):
//! which CA issued one decides whether it names a user (CN, groups = O) or a front proxy, whose
//! `X-Remote-User`/`X-Remote-Group`/`X-Remote-Extra-*` headers are then trusted (upstream's requestheader
//! authentication).

use super::UserInfo;

/// The user named by a verified client certificate (DER).
pub fn from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    // A certificate without a common name names nobody (upstream skips it).
    if name.is_empty() {
        return None;
    }
    let groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}

/// Who a connection's client certificate speaks for.
#[derive(Debug, Clone)]
pub enum PeerCert {
    /// A user's certificate from the client CA.
    User(UserInfo),
    /// A front proxy's certificate from the request-header CA (its common name).
    Proxy(String),
}

/// The CAs client certificates may come from.
#[derive(Debug, Clone)]
pub struct ClientCas {
    client: Vec<Vec<u8>>,
    request_header: Vec<Vec<u8>>,
}

/// Every certificate (DER) of a PEM bundle.
fn bundle(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

impl ClientCas {
    /// From the CAs' PEM.
    pub fn new(client_pem: &str, request_header_pem: &str) -> Option<Self> {
        let (client, request_header) = (bundle(client_pem), bundle(request_header_pem));
        (!client.is_empty() && !request_header.is_empty()).then_some(Self {
            client,
            request_header,
        })
    }

    /// Classifies a certificate TLS has already verified against one of the two CAs.
    pub fn classify(&self, der: &[u8]) -> Option<PeerCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let signed_by = |cas: &[Vec<u8>]| {
            cas.iter().any(|ca_der| {
                x509_parser::parse_x509_certificate(ca_der)
                    .ok()
                    .is_some_and(|(_, ca)| {
                        cert.issuer() == ca.subject()
                            && cert.verify_signature(Some(ca.public_key())).is_ok()
                    })
            })
        };
        if signed_by(&self.client) {
            return from_certificate(der).map(PeerCert::User);
        }
        if signed_by(&self.request_header) {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())?
                .to_string();
            return Some(PeerCert::Proxy(cn));
        }
        None
    }
}

/// The user a trusted front proxy names in its headers (`None` without `X-Remote-User`).
pub fn from_request_headers(headers: &hyper::HeaderMap) -> Option<UserInfo> {
    let name = headers
        .get("x-remote-user")?
        .to_str()
        .ok()?
        .trim()
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = headers
        .get_all("x-remote-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("x-remote-extra-")
            && let Ok(v) = v.to_str()
        {
            extra
                .entry(key.to_string())
                .or_default()
                .push(v.to_string());
        }
    }
    Some(UserInfo {
        name,
        uid: String::new(),
        groups,
        extra,
    })
}
