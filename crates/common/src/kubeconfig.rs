//! Kubeconfig files for a client certificate: what the server writes for its control-plane identities,
//! what a joined node writes for its credentials, and what tests hand to kubectl.

use base64::Engine;

/// A kubeconfig reaching `server` (trusting `ca_pem`) with an embedded client certificate and key, under
/// K3s's `default` cluster, context and user names.
pub fn with_client_cert(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem)
    )
}
