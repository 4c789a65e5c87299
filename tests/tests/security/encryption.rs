//! Secrets encryption at rest: with `--secrets-encryption` the datastore (read with etcdctl) holds only
//! `k8s:enc:aescbc:v1:` ciphertext, Secrets written before stay readable, and rotate-keys re-encrypts
//! every Secret with a new key that survives a restart.

use anyhow::{Result, ensure};
use k3rs_tests::{Cluster, etcdctl};
use serde_json::Value;

const PLAIN: &str = "plaintext-password-1234";

fn raw(c: &Cluster, key: &str) -> Result<String> {
    let out = etcdctl::run(&c.store.endpoint, &["get", key, "--print-value-only"], "")?;
    ensure!(out.success, "etcdctl get {key}: {}", out.stderr);
    Ok(out.stdout)
}

async fn encryption(mut c: Cluster) -> Result<()> {
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "before",
        &format!("--from-literal=password={PLAIN}"),
    ])?;
    ensure!(
        raw(&c, "/registry/secrets/default/before")?.contains("cGxhaW50ZXh0"),
        "stored in the clear before"
    );

    let tokens = c.data_dir().join("tokens.csv");
    std::fs::write(&tokens, crate::TOKENS)?;
    let flag = format!("--token-auth-file={}", tokens.display());
    c.set_extra_args(&[&flag, "--secrets-encryption"]);
    c.restart_apiserver().await?;
    ensure!(
        c.data_dir()
            .join("server/cred/encryption-config.json")
            .exists()
    );

    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "after",
        &format!("--from-literal=password={PLAIN}"),
    ])?;
    let stored = raw(&c, "/registry/secrets/default/after")?;
    ensure!(
        stored.starts_with("k8s:enc:aescbc:v1:aescbckey:"),
        "not encrypted: {stored:?}"
    );
    ensure!(
        !stored.contains(PLAIN) && !stored.contains("cGxhaW50ZXh0") && !stored.contains("password"),
        "plaintext in the datastore"
    );
    for name in ["before", "after"] {
        let v = c.kubectl(&["get", "secret", name, "-o", "jsonpath={.data.password}"])?;
        ensure!(
            v == "cGxhaW50ZXh0LXBhc3N3b3JkLTEyMzQ=",
            "{name} reads back: {v}"
        );
    }
    let status: Value =
        serde_json::from_str(&c.kubectl(&["get", "--raw", "/v1-k3rs/encrypt/status"])?)?;
    ensure!(
        status["enabled"] == true
            && status["activeKey"] == "aescbckey"
            && status["unencrypted"] == 1,
        "{status}"
    );
    // Only admins reach the encryption endpoints.
    let out = c.run_with_token("alice-token", &["get", "--raw", "/v1-k3rs/encrypt/status"])?;
    ensure!(!out.ok && out.stderr.contains("Forbidden"), "{out:?}");

    // rotate-keys: a new key first, every Secret (also the one stored in the clear) re-encrypted with it.
    let body = c.data_dir().join("empty.json");
    std::fs::write(&body, "{}")?;
    let out = c.kubectl(&[
        "create",
        "--raw",
        "/v1-k3rs/encrypt/rotate-keys",
        "-f",
        &body.display().to_string(),
    ])?;
    let rotated: Value = serde_json::from_str(&out)?;
    let active = rotated["activeKey"].as_str().unwrap_or("").to_string();
    ensure!(
        active.starts_with("aescbckey-") && rotated["unencrypted"] == 0,
        "{rotated}"
    );
    let secrets = etcdctl::run(
        &c.store.endpoint,
        &["get", "/registry/secrets/", "--prefix", "--keys-only"],
        "",
    )?;
    let keys: Vec<&str> = secrets.stdout.lines().filter(|l| !l.is_empty()).collect();
    ensure!(keys.len() >= 2, "{keys:?}");
    for key in keys {
        let v = raw(&c, key)?;
        ensure!(
            v.starts_with(&format!("k8s:enc:aescbc:v1:{active}:")),
            "{key} not under the new key"
        );
        ensure!(!v.contains(PLAIN), "{key} in the clear");
    }
    c.restart_apiserver().await?;
    for name in ["before", "after"] {
        let v = c.kubectl(&["get", "secret", name, "-o", "jsonpath={.data.password}"])?;
        ensure!(
            v == "cGxhaW50ZXh0LXBhc3N3b3JkLTEyMzQ=",
            "{name} after rotation and restart: {v}"
        );
    }
    let status: Value =
        serde_json::from_str(&c.kubectl(&["get", "--raw", "/v1-k3rs/encrypt/status"])?)?;
    ensure!(
        status["activeKey"] == active.as_str()
            && status["keys"].as_array().map(Vec::len) == Some(2),
        "{status}"
    );
    Ok(())
}

#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    crate::run(encryption);
}
