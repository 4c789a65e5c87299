//! The supervisor API on the apiserver's port (K3s's agent join path): `GET /cacerts` gives anyone the
//! server CA (the agent checks it against the hash in its token before sending the token), and
//! `POST /v1-k3rs/node-credentials`, authenticated by the join token (or a bootstrap token), signs the
//! node's certificate requests: its kubelet client (`system:node:<name>`, `O=system:nodes`), kubelet
//! serving (SANs: its addresses and hostname), kube-proxy and flannel certificates. A per-node password,
//! kept hashed in the Secret `kube-system/<node>.node-password.k3rs`, stops another machine from taking
//! over an existing node name.
//!
//! The join token is K3s's: `K10<sha256 of the server CA file>::server:<secret>`, written to
//! `<data-dir>/server/token` (and `agent-token` with user `node` when an agent token is set); the bare
//! secret is accepted as a short token.

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use sha2::Digest;

use crate::api::Api;
use crate::handlers::{Body, error_response, json_response, read_body, text_response};
use crate::pki::{Ca, Pki};
use crate::status::ApiError;

/// What the supervisor signs with and accepts.
#[derive(Clone)]
pub struct Supervisor {
    pub server_ca: Ca,
    pub client_ca: Ca,
    /// (user, secret) pairs that may join: `server` (the server token) and `node` (the agent token).
    secrets: Vec<(String, String)>,
    /// Handed to every joining agent.
    agent_settings: crate::config::AgentSettings,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

/// A failure to set up the join tokens.
#[derive(Debug, thiserror::Error)]
#[error("join token: {0}")]
pub struct TokenError(String);

pub use k3rs_common::join::ca_hash;

/// The secret of a token given as `K10<hash>::<user>:<secret>` or bare.
fn secret_of(token: &str) -> String {
    match token.strip_prefix("K10").and_then(|t| t.split_once("::")) {
        Some((_, creds)) => creds.split_once(':').map_or(creds, |(_, s)| s).to_string(),
        None => token.to_string(),
    }
}

fn random_secret() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // The system RNG failing is not something to continue after.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Supervisor {
    /// Loads or creates `server/token` (from `token` when given) and `server/agent-token`.
    pub fn setup(
        data_dir: &Path,
        pki: &Pki,
        token: Option<&str>,
        agent_token: Option<&str>,
        agent_settings: crate::config::AgentSettings,
    ) -> Result<Self, TokenError> {
        let hash = ca_hash(&pki.server_ca.cert_pem);
        let server_dir = data_dir.join("server");
        let path = server_dir.join("token");
        let existing = std::fs::read_to_string(&path)
            .ok()
            .map(|t| secret_of(t.trim()));
        let secret = match (token, existing) {
            (Some(t), _) => secret_of(t.trim()),
            (None, Some(s)) if !s.is_empty() => s,
            _ => random_secret(),
        };
        if secret.is_empty() || secret.contains(char::is_whitespace) {
            return Err(TokenError(
                "the token must be non-empty and without spaces".into(),
            ));
        }
        let write = |file: &str, user: &str, secret: &str| -> Result<(), TokenError> {
            let p = server_dir.join(file);
            let text = format!("K10{hash}::{user}:{secret}\n");
            crate::pki::write_private(&p, &text, 0o600).map_err(|e| TokenError(e.to_string()))
        };
        write("token", "server", &secret)?;
        let mut secrets = vec![("server".to_string(), secret)];
        if let Some(a) = agent_token {
            let s = secret_of(a.trim());
            write("agent-token", "node", &s)?;
            secrets.push(("node".into(), s));
        }
        Ok(Self {
            server_ca: pki.server_ca.clone(),
            client_ca: pki.client_ca.clone(),
            secrets,
            agent_settings,
        })
    }

    /// The server token joins anyone (as K3s's does); the agent token joins only as `node`.
    fn secret_ok(&self, user: Option<&str>, secret: &str) -> bool {
        self.secrets.iter().any(|(u, s)| {
            (u == "server" || user.is_none_or(|want| want == u))
                && crate::auth::constant_time_eq(s.as_bytes(), secret.as_bytes())
        })
    }
}

/// Whether a path is the supervisor's (served before the Kubernetes authentication chain).
pub fn is_supervisor_path(path: &str) -> bool {
    path == "/cacerts" || path == "/v1-k3rs/node-credentials"
}

/// Whether the request carries a valid join token.
async fn joiner(api: &Api, sup: &Supervisor, headers: &hyper::HeaderMap) -> bool {
    let Some(value) = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, cred)) = value.trim().split_once(' ') else {
        return false;
    };
    if scheme.eq_ignore_ascii_case("basic") {
        let Some(decoded) = base64::engine::general_purpose::STANDARD
            .decode(cred.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return false;
        };
        let (user, secret) = decoded.split_once(':').unwrap_or(("", &decoded));
        return sup.secret_ok(Some(user), secret);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        let cred = cred.trim();
        if sup.secret_ok(None, cred) {
            return true;
        }
        // A bootstrap token (`k3rs token create`) joins too.
        if crate::auth::bootstrap_token(cred).is_some() {
            return api
                .authn
                .token(api, cred, &[])
                .await
                .is_ok_and(|a| a.user.in_group("system:bootstrappers"));
        }
    }
    false
}

fn refused(message: String) -> ApiError {
    ApiError::forbidden_plain(message)
}

/// Serves a supervisor request.
pub async fn serve(api: &Api, req: Request<Incoming>) -> Response<Body> {
    let Some(sup) = api.supervisor.as_ref() else {
        return crate::handlers::refuse(req, &ApiError::route_not_found()).await;
    };
    let path = req.uri().path().to_string();
    if path == "/cacerts" {
        let mut resp = text_response(200, sup.server_ca.cert_pem.clone());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-pem-file"),
        );
        return resp;
    }
    if req.method() != hyper::Method::POST {
        let err = ApiError::method_not_allowed(req.method().as_str(), "node-credentials", "");
        return crate::handlers::refuse(req, &err).await;
    }
    if !joiner(api, sup, req.headers()).await {
        return crate::handlers::refuse(req, &ApiError::unauthorized()).await;
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    match node_credentials(api, sup, &body).await {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    }
}

fn csr_public(pem: &str, what: &str) -> Result<rcgen::CertificateSigningRequestParams, ApiError> {
    rcgen::CertificateSigningRequestParams::from_pem(pem).map_err(|e| {
        ApiError::bad_request(format!(
            "{what}: not a valid certificate signing request: {e}"
        ))
    })
}

async fn node_credentials(api: &Api, sup: &Supervisor, body: &[u8]) -> Result<Value, ApiError> {
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("error decoding the node credentials request: {e}"))
    })?;
    let node = req["nodeName"].as_str().unwrap_or("").to_string();
    let name_errors = crate::meta::name_errors(&node, crate::resources::NameRule::Subdomain);
    if node.is_empty() || !name_errors.is_empty() {
        return Err(ApiError::bad_request(format!(
            "invalid node name {node:?}: {}",
            name_errors.join("; ")
        )));
    }
    let password = req["nodePassword"].as_str().unwrap_or("");
    if password.len() < 16 {
        return Err(ApiError::bad_request(
            "a node password of at least 16 characters is required",
        ));
    }
    check_node_password(api, &node, password).await?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in req["addresses"].as_array().into_iter().flatten() {
        let ip = a
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad_request(format!("invalid node address {a}")))?;
        ips.push(ip);
    }
    // The hostname becomes a SAN of a certificate from the server CA: only a plain DNS name, and never
    // one of the apiserver's own.
    let hostname = req["hostname"].as_str().unwrap_or(&node).to_string();
    let host_errors = crate::meta::name_errors(&hostname, crate::resources::NameRule::Subdomain);
    if !host_errors.is_empty() || hostname == "kubernetes" || hostname.starts_with("kubernetes.") {
        return Err(ApiError::bad_request(format!(
            "invalid node hostname {hostname:?}: {}",
            if host_errors.is_empty() {
                "reserved for the apiserver".to_string()
            } else {
                host_errors.join("; ")
            }
        )));
    }
    let csr = &req["csr"];
    let pem = |k: &str| csr[k].as_str().unwrap_or("").to_string();
    let map_err = |e: crate::pki::PkiError| ApiError::internal(e);
    let client = csr_public(&pem("kubeletClient"), "kubeletClient")?;
    let serving = csr_public(&pem("kubeletServing"), "kubeletServing")?;
    let proxy = csr_public(&pem("kubeProxy"), "kubeProxy")?;
    let flannel = csr_public(&pem("flannel"), "flannel")?;
    let node_user = format!("system:node:{node}");
    let mut dns = vec![hostname.clone()];
    if node != hostname {
        dns.push(node.clone());
    }
    let out = json!({
        "serverCA": sup.server_ca.cert_pem,
        "clientCA": sup.client_ca.cert_pem,
        "kubeletClient": crate::pki::sign_client(&sup.client_ca, &node_user, &["system:nodes"], &client.public_key).map_err(map_err)?,
        "kubeletServing": crate::pki::sign_serving(&sup.server_ca, &node, &dns, &ips, &serving.public_key).map_err(map_err)?,
        "kubeProxy": crate::pki::sign_client(&sup.client_ca, "system:kube-proxy", &[], &proxy.public_key).map_err(map_err)?,
        "flannel": crate::pki::sign_client(&sup.client_ca, "system:k3rs-flannel", &[], &flannel.public_key).map_err(map_err)?,
        "config": sup.agent_settings,
    });
    tracing::info!(node = %node, "issued node credentials");
    Ok(out)
}

fn password_hash(node: &str, password: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts the node's password if it matches the one its name was first joined with (or stores it).
async fn check_node_password(api: &Api, node: &str, password: &str) -> Result<(), ApiError> {
    let name = format!("{node}.node-password.k3rs");
    let key = format!("/registry/secrets/kube-system/{name}");
    let hash = password_hash(node, password);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for _ in 0..3 {
        match api.storage.get(&key).await? {
            Some(stored) => {
                let secret: Value = serde_json::from_slice(&stored.value)
                    .map_err(|e| ApiError::internal(format!("decoding {key}: {e}")))?;
                if secret["data"]["hash"].as_str() == Some(b64(&hash).as_str()) {
                    return Ok(());
                }
                return Err(refused(format!(
                    "node password rejected: a node named {node:?} already joined with another password (duplicate hostname, or this machine's node password file changed). If this machine legitimately replaces it, delete the old entry with `kubectl -n kube-system delete secret {name}` and join again; otherwise give this machine a unique node name"
                )));
            }
            None => {
                let mut obj = json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "k3rs.io/node-password",
                    "metadata": {"name": name, "namespace": "kube-system", "uid": crate::meta::new_uid(),
                                 "creationTimestamp": crate::meta::now_rfc3339(), "labels": {"k3rs.io/node": node}},
                    "data": {"hash": b64(&hash)},
                });
                let info = api
                    .registry
                    .get("", "v1", "secrets")
                    .ok_or_else(|| ApiError::internal("secrets are not served"))?;
                crate::strategy::prepare_create(&info, &mut obj);
                if let crate::storage::Guarded::Done(_) = api
                    .storage
                    .create(&key, crate::handlers::to_stored(&obj))
                    .await?
                {
                    return Ok(());
                }
            }
        }
    }
    Err(ApiError::internal("the node password entry kept changing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        assert_eq!(secret_of("K10abc::server:s3cret"), "s3cret");
        assert_eq!(secret_of("s3cret"), "s3cret");
        assert_eq!(secret_of("K10abc::node:a:b"), "a:b");
        assert_eq!(ca_hash("x").len(), 64);
        assert_ne!(password_hash("a", "b"), password_hash("ab", ""));
    }
}
