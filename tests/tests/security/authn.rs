//! Authentication: anonymous access only to the public paths, bad tokens and foreign certificates refused,
//! static tokens, ServiceAccount tokens from `kubectl create token` (bound ones die with their pod), expired
//! tokens, TokenReview and `kubectl auth whoami`.

use std::time::Duration;

use anyhow::{Result, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use k3rs_tests::Cluster;
use serde_json::{Value, json};

use crate::{eventually, table_lines};

/// A token signed with the cluster's service-account key from the given claims (what a stolen or stale
/// token would look like).
fn sign(c: &Cluster, claims: &Value) -> Result<String> {
    let pem = std::fs::read_to_string(c.data_dir().join("server/tls/service.key"))?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(
        base64::engine::general_purpose::STANDARD.decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )?,
    );
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("service.key: {e}"))?;
    let mut input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"ES256"}"#),
        B64.encode(claims.to_string())
    );
    let sig = key
        .sign(&rng, input.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing"))?;
    input.push('.');
    input.push_str(&B64.encode(sig.as_ref()));
    Ok(input)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn authentication(c: Cluster) -> Result<()> {
    // Without credentials: the public paths answer, everything else is 401 with upstream's Status.
    let (code, body) = c.raw_get("/readyz", None)?;
    ensure!(
        code == 200 && body == "ok",
        "anonymous readyz: {code} {body}"
    );
    let (code, body) = c.raw_get("/version", None)?;
    ensure!(
        code == 200 && body.contains("gitVersion"),
        "anonymous version: {code} {body}"
    );
    let (code, body) = c.raw_get("/api/v1/namespaces", None)?;
    ensure!(code == 401, "anonymous list: {code} {body}");
    let status: Value = serde_json::from_str(&body)?;
    ensure!(
        status["reason"] == "Unauthorized"
            && status["code"] == 401
            && status["message"] == "Unauthorized",
        "{status}"
    );
    let (code, _) = c.raw_get("/api", None)?;
    ensure!(code == 401, "anonymous discovery: {code}");
    // A bad token is refused everywhere, even on the public paths.
    for path in ["/api/v1/namespaces", "/readyz"] {
        let (code, _) = c.raw_get(path, Some("not-a-token"))?;
        ensure!(code == 401, "bad token on {path}: {code}");
    }
    let (code, _) = c.raw_get("/api/v1/namespaces", Some("abcdef.0123456789abcdef"))?;
    ensure!(code == 401, "unknown bootstrap token: {code}");

    // A client certificate from another CA: the TLS handshake is refused.
    let foreign = {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "evil-ca");
        let ca = params.self_signed(&key)?;
        let issuer = rcgen::Issuer::new(params, key);
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new())?;
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        leaf.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_key = rcgen::KeyPair::generate()?;
        let cert = leaf.signed_by(&leaf_key, &issuer)?;
        let _ = ca;
        let server_ca = std::fs::read_to_string(c.data_dir().join("server/tls/server-ca.crt"))?;
        let path = c.data_dir().join("evil.kubeconfig");
        let server = format!("https://127.0.0.1:{}", c.port);
        std::fs::write(
            &path,
            k3rs_common::kubeconfig::with_client_cert(
                &server,
                &server_ca,
                &cert.pem(),
                &leaf_key.serialize_pem(),
            ),
        )?;
        path
    };
    let out = c.run_with_kubeconfig(&foreign, &["get", "ns"])?;
    ensure!(
        !out.ok && out.stderr.contains("tls:"),
        "foreign client certificate: {out:?}"
    );

    // A front proxy's certificate (request-header CA) makes its X-Remote-* headers trusted; a user's
    // certificate does not.
    let tls = c.data_dir().join("server/tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f));
    let (proxy_cert, proxy_key) = (
        read("client-auth-proxy.crt")?,
        read("client-auth-proxy.key")?,
    );
    let remote = |user: &str| -> Vec<(String, String)> {
        vec![
            ("X-Remote-User".into(), user.into()),
            ("X-Remote-Group".into(), "devs".into()),
        ]
    };
    let (code, body) = c.raw_request(
        "/api/v1/namespaces/default/pods",
        &remote("carol"),
        Some((&proxy_cert, &proxy_key)),
    )?;
    ensure!(
        code == 403 && body.contains(r#"User \"carol\" cannot list resource \"pods\""#),
        "front proxy: {code} {body}"
    );
    let (code, _) = c.raw_request(
        "/api/v1/namespaces/default/pods",
        &[],
        Some((&proxy_cert, &proxy_key)),
    )?;
    ensure!(code == 401, "front proxy without a user: {code}");
    let (admin_cert, admin_key) = (read("client-admin.crt")?, read("client-admin.key")?);
    let (code, _) = c.raw_request(
        "/api/v1/namespaces/default/pods",
        &remote("carol"),
        Some((&admin_cert, &admin_key)),
    )?;
    ensure!(code == 200, "a user's certificate is not a proxy: {code}");

    // A static token (`--token-auth-file`) names its user and groups.
    let out = c.run_with_token("alice-token", &["auth", "whoami"])?;
    let lines = table_lines(&out.stdout);
    ensure!(
        lines.contains(&"Username alice".to_string())
            && lines.contains(&"UID 1001".to_string())
            && lines.contains(&"Groups [devs system:authenticated]".to_string()),
        "alice whoami: {out:?}"
    );
    let e = c.run_with_token("alice-token", &["get", "secrets", "-n", "default"])?;
    ensure!(
        !e.ok && e.stderr.contains(r#"Error from server (Forbidden): secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "default""#),
        "alice lists secrets: {e:?}"
    );

    // ServiceAccount tokens: a reader of namespace a cannot read a Secret in b.
    c.kubectl(&["create", "namespace", "a"])?;
    c.kubectl(&["create", "namespace", "b"])?;
    c.kubectl(&["create", "serviceaccount", "reader", "-n", "a"])?;
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "b",
        "--from-literal=k=v",
    ])?;
    let token = c
        .kubectl(&["create", "token", "reader", "-n", "a"])?
        .trim()
        .to_string();
    let out = c.run_with_token(&token, &["auth", "whoami"])?;
    let lines = table_lines(&out.stdout);
    ensure!(
        lines.contains(&"Username system:serviceaccount:a:reader".to_string())
            && lines.contains(
                &"Groups [system:serviceaccounts system:serviceaccounts:a system:authenticated]"
                    .to_string()
            )
            && out
                .stdout
                .contains("authentication.kubernetes.io/credential-id"),
        "reader whoami: {out:?}"
    );
    let e = c.run_with_token(&token, &["get", "secret", "s", "-n", "b"])?;
    ensure!(
        !e.ok
            && e.stderr.trim()
                == r#"Error from server (Forbidden): secrets "s" is forbidden: User "system:serviceaccount:a:reader" cannot get resource "secrets" in API group "" in the namespace "b""#,
        "cross-namespace secret read: {e:?}"
    );

    // TokenReview says the same as the authenticator.
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let out = c.kubectl_in(&["create", "-f", "-", "-o", "json"], &review.to_string())?;
    let v: Value = serde_json::from_str(&out)?;
    ensure!(
        v["status"]["authenticated"] == true
            && v["status"]["user"]["username"] == "system:serviceaccount:a:reader",
        "token review: {v}"
    );
    let bad = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "x.y.z"}});
    let v: Value = serde_json::from_str(
        &c.kubectl_in(&["create", "-f", "-", "-o", "json"], &bad.to_string())?,
    )?;
    ensure!(
        v["status"]["authenticated"] != true && v["status"]["error"].is_string(),
        "bad token review: {v}"
    );

    // A token bound to a pod stops working once the pod is gone.
    c.kubectl_in(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"a"},"spec":{"serviceAccountName":"reader","containers":[{"name":"c","image":"busybox"}]}}"#,
    )?;
    let bound = c
        .kubectl(&[
            "create",
            "token",
            "reader",
            "-n",
            "a",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
        ])?
        .trim()
        .to_string();
    let out = c.run_with_token(&bound, &["auth", "whoami"])?;
    ensure!(
        out.ok
            && out.stdout.contains("authentication.kubernetes.io/pod-name")
            && out.stdout.contains("[p]"),
        "pod-bound whoami: {out:?}"
    );
    c.kubectl(&[
        "delete",
        "pod",
        "p",
        "-n",
        "a",
        "--grace-period=0",
        "--force",
    ])?;
    // Successful authentications are remembered for 10 s, as upstream's token cache.
    eventually("pod-bound token refused", Duration::from_secs(20), || {
        let (code, _) = c.raw_get("/api/v1/namespaces/a/pods", Some(&bound))?;
        Ok(code == 401)
    })
    .await?;

    // An expired token (correctly signed) is refused; so is one for an audience the server does not accept.
    let sa: Value =
        serde_json::from_str(&c.kubectl(&["get", "sa", "reader", "-n", "a", "-o", "json"])?)?;
    let uid = sa["metadata"]["uid"].as_str().unwrap_or("");
    let claims = |exp: i64, aud: &str| {
        json!({
            "iss": "https://kubernetes.default.svc.cluster.local", "aud": [aud], "sub": "system:serviceaccount:a:reader",
            "iat": exp - 3600, "nbf": exp - 3600, "exp": exp,
            "kubernetes.io": {"namespace": "a", "serviceaccount": {"name": "reader", "uid": uid}},
        })
    };
    let good = sign(
        &c,
        &claims(now() + 600, "https://kubernetes.default.svc.cluster.local"),
    )?;
    let (code, _) = c.raw_get("/api/v1/namespaces/a/serviceaccounts", Some(&good))?;
    ensure!(
        code == 403,
        "a valid hand-signed token authenticates (then lacks RBAC): {code}"
    );
    let expired = sign(
        &c,
        &claims(now() - 60, "https://kubernetes.default.svc.cluster.local"),
    )?;
    let (code, _) = c.raw_get("/api/v1/namespaces/a/serviceaccounts", Some(&expired))?;
    ensure!(code == 401, "expired token: {code}");
    let other_aud = sign(&c, &claims(now() + 600, "vault"))?;
    let (code, _) = c.raw_get("/api/v1/namespaces/a/serviceaccounts", Some(&other_aud))?;
    ensure!(code == 401, "token for another audience: {code}");

    // Deleting the ServiceAccount ends its tokens.
    c.kubectl(&["delete", "sa", "reader", "-n", "a"])?;
    eventually(
        "token of a deleted service account refused",
        Duration::from_secs(20),
        || {
            let (code, _) = c.raw_get("/api/v1/namespaces/a/pods", Some(&token))?;
            Ok(code == 401)
        },
    )
    .await?;
    // TokenRequest bounds: 10 minutes at least.
    c.kubectl(&["create", "serviceaccount", "short", "-n", "a"])?;
    let e = c.kubectl_err(
        &["create", "token", "short", "-n", "a", "--duration=1m"],
        None,
    )?;
    ensure!(
        e.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{e}"
    );
    Ok(())
}

#[test]
fn authentication_refuses_and_accepts_as_upstream() {
    crate::run(authentication);
}
