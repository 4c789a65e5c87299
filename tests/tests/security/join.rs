//! Joining a node through the bootstrap client library (`k3rs_common::join`): a token with another CA's
//! hash is refused before anything secret is sent; the right token yields kubelet client and serving
//! certificates the apiserver accepts as `system:node:<name>`; another machine cannot take the name; a
//! bootstrap token joins too; `certificate rotate` and a restart keep every credential working.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use k3rs_common::join::{JoinError, JoinToken, NodeRequest, join};
use k3rs_tests::{Cluster, target_bin};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use crate::table_lines;

/// Serves the kubelet serving certificate and connects to it trusting only the server CA, by `name`.
async fn serving_cert_verifies(ca: &str, cert: &str, key: &str, name: &str) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let serve = tokio::spawn(async move {
        let (s, _) = listener.accept().await?;
        acceptor.accept(s).await.map(|_| ())
    });
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await
        .with_context(|| format!("the kubelet serving certificate for {name}"))?;
    serve.await??;
    Ok(())
}

fn cert_command(c: &Cluster, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(target_bin("k3rs-apiserver"))
        .arg("--data-dir")
        .arg(c.data_dir())
        .arg("certificate")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "certificate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn joining(mut c: Cluster) -> Result<()> {
    let server = format!("https://127.0.0.1:{}", c.port);
    let token_text = std::fs::read_to_string(c.data_dir().join("server/token"))?;
    ensure!(
        token_text.starts_with("K10") && token_text.contains("::server:"),
        "{token_text}"
    );
    let token: JoinToken = token_text.parse()?;
    let node1 = NodeRequest {
        node_name: "node1".into(),
        node_password: "machine-one-password-0001".into(),
        addresses: vec!["127.0.0.1".parse()?],
        hostname: "node1".into(),
    };

    // Another CA's hash: refused, and the server never saw the token.
    let wrong = JoinToken {
        ca_hash: Some("0".repeat(64)),
        ..token.clone()
    };
    match join(&server, &wrong, &node1).await {
        Err(e @ JoinError::CaMismatch { .. }) => {
            ensure!(e.to_string().contains("refusing to send the token"), "{e}")
        }
        other => bail!("a wrong CA hash was not refused: {other:?}"),
    }
    let e = c.kubectl_err(
        &[
            "get",
            "secret",
            "node1.node-password.k3rs",
            "-n",
            "kube-system",
        ],
        None,
    )?;
    ensure!(e.contains("NotFound"), "nothing was sent: {e}");

    // The right token: node credentials the apiserver accepts.
    let creds = join(&server, &token, &node1).await?;
    let kc = c.data_dir().join("node1.kubeconfig");
    std::fs::write(
        &kc,
        k3rs_common::kubeconfig::with_client_cert(
            &server,
            &creds.server_ca_pem,
            &creds.kubelet_client.cert_pem,
            &creds.kubelet_client.key_pem,
        ),
    )?;
    let lines = table_lines(&c.run_with_kubeconfig(&kc, &["auth", "whoami"])?.stdout);
    ensure!(
        lines.contains(&"Username system:node:node1".to_string())
            && lines.contains(&"Groups [system:nodes system:authenticated]".to_string()),
        "{lines:?}"
    );
    ensure!(
        c.run_with_kubeconfig(&kc, &["get", "pods", "-A"])?.ok,
        "a node lists pods"
    );
    serving_cert_verifies(
        &creds.server_ca_pem,
        &creds.kubelet_serving.cert_pem,
        &creds.kubelet_serving.key_pem,
        "node1",
    )
    .await?;
    serving_cert_verifies(
        &creds.server_ca_pem,
        &creds.kubelet_serving.cert_pem,
        &creds.kubelet_serving.key_pem,
        "127.0.0.1",
    )
    .await?;
    let proxy = c.data_dir().join("proxy.kubeconfig");
    std::fs::write(
        &proxy,
        k3rs_common::kubeconfig::with_client_cert(
            &server,
            &creds.server_ca_pem,
            &creds.kube_proxy.cert_pem,
            &creds.kube_proxy.key_pem,
        ),
    )?;
    ensure!(
        c.run_with_kubeconfig(
            &proxy,
            &["auth", "can-i", "list", "endpointslices.discovery.k8s.io"]
        )?
        .stdout
        .trim()
            == "yes"
    );

    // Another machine claiming node1: refused with how to fix a legitimate rejoin; the same machine rejoins.
    let impostor = NodeRequest {
        node_password: "machine-two-password-0002".into(),
        ..node1.clone()
    };
    match join(&server, &token, &impostor).await {
        Err(JoinError::Refused {
            status: 403,
            message,
        }) => ensure!(
            message.contains("node password rejected")
                && message
                    .contains("kubectl -n kube-system delete secret node1.node-password.k3rs"),
            "{message}"
        ),
        other => bail!("a second machine took node1: {other:?}"),
    }
    join(&server, &token, &node1).await?;
    match join(
        &server,
        &JoinToken {
            secret: "not-the-secret".into(),
            ..token.clone()
        },
        &NodeRequest {
            node_name: "node3".into(),
            ..node1.clone()
        },
    )
    .await
    {
        Err(JoinError::Refused { status: 401, .. }) => {}
        other => bail!("a bad secret joined: {other:?}"),
    }

    // A bootstrap token joins as well.
    c.kubectl_in(&["apply", "-f", "-"], r#"
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-abcdef, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData: {token-id: abcdef, token-secret: 0123456789abcdef, usage-bootstrap-authentication: "true", auth-extra-groups: "system:bootstrappers:k3rs:default-node-token"}
"#)?;
    let node2 = NodeRequest {
        node_name: "node2".into(),
        node_password: "machine-three-password-03".into(),
        ..node1.clone()
    };
    let creds2 = join(&server, &"abcdef.0123456789abcdef".parse()?, &node2).await?;
    let kc2 = c.data_dir().join("node2.kubeconfig");
    std::fs::write(
        &kc2,
        k3rs_common::kubeconfig::with_client_cert(
            &server,
            &creds2.server_ca_pem,
            &creds2.kubelet_client.cert_pem,
            &creds2.kubelet_client.key_pem,
        ),
    )?;
    ensure!(
        table_lines(&c.run_with_kubeconfig(&kc2, &["auth", "whoami"])?.stdout)
            .contains(&"Username system:node:node2".to_string())
    );

    // certificate check, then rotate with the server stopped, and a restart: same CA, every credential works.
    let check = cert_command(&c, &["check"])?;
    ensure!(
        check.contains("client-admin.crt") && check.contains("server-ca.crt"),
        "{check}"
    );
    let ca_before = std::fs::read_to_string(c.data_dir().join("server/tls/server-ca.crt"))?;
    let admin_before = std::fs::read_to_string(c.data_dir().join("server/tls/client-admin.crt"))?;
    let old_admin = c.data_dir().join("old-admin.kubeconfig");
    std::fs::copy(c.kubeconfig(), &old_admin)?;
    c.stop_apiserver();
    let rotated = cert_command(&c, &["rotate"])?;
    ensure!(rotated.contains("client-admin.crt"), "{rotated}");
    c.start_apiserver().await?;
    ensure!(
        std::fs::read_to_string(c.data_dir().join("server/tls/server-ca.crt"))? == ca_before,
        "the CA stays"
    );
    ensure!(
        std::fs::read_to_string(c.data_dir().join("server/tls/client-admin.crt"))? != admin_before,
        "a new admin certificate"
    );
    c.kubectl(&["get", "ns"])?;
    ensure!(
        c.run_with_kubeconfig(&old_admin, &["get", "ns"])?.ok,
        "the old admin certificate still works"
    );
    ensure!(
        table_lines(&c.run_with_kubeconfig(&kc, &["auth", "whoami"])?.stdout)
            .contains(&"Username system:node:node1".to_string()),
        "node1 still works"
    );
    ensure!(
        std::fs::read_to_string(c.data_dir().join("server/token"))? == token_text,
        "the join token stays"
    );
    join(&server, &token, &node1).await?;

    // A leaf close to expiry is renewed at start, with a CertificateExpirationWarning event.
    c.stop_apiserver();
    let tls = c.data_dir().join("server/tls");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join("client-ca.key"))?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(tls.join("client-ca.crt"))?,
        ca_key,
    )?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:kube-controller-manager");
    params.not_after = rcgen::date_time_ymd(2027, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    std::fs::write(
        tls.join("client-controller.crt"),
        params.signed_by(&key, &issuer)?.pem(),
    )?;
    std::fs::write(tls.join("client-controller.key"), key.serialize_pem())?;
    let check = cert_command(&c, &["check"])?;
    ensure!(
        check.lines().any(|l| l.starts_with("client-controller.crt")
            && (l.ends_with("WARNING") || l.ends_with("EXPIRED"))),
        "{check}"
    );
    c.start_apiserver().await?;
    let check = cert_command(&c, &["check"])?;
    ensure!(
        check
            .lines()
            .any(|l| l.starts_with("client-controller.crt") && l.ends_with("OK")),
        "renewed: {check}"
    );
    let events: serde_json::Value =
        serde_json::from_str(&c.kubectl(&["get", "events", "-n", "kube-system", "-o", "json"])?)?;
    ensure!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "CertificateExpirationWarning"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("client-controller.crt"))),
        "no CertificateExpirationWarning event: {events}"
    );
    Ok(())
}

#[test]
fn nodes_join_with_the_token_and_credentials_survive_rotation() {
    crate::run(joining);
}
