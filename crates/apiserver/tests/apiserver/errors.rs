//! Bad input gets upstream's Status code and reason, the server keeps serving and nothing stored changes.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;

use crate::{per_backend, raw};

fn post(c: &Cluster, path: &str, body: &str) -> Result<String> {
    let file = c.data_dir().join("body.json");
    std::fs::write(&file, body)?;
    c.kubectl_err(
        &["create", "--raw", path, "-f", &file.display().to_string()],
        None,
    )
}

async fn bad_input(c: Cluster) -> Result<()> {
    let cms = "/api/v1/namespaces/default/configmaps";
    let good =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"keep"},"data":{"k":"v"}}"#;
    let file = c.data_dir().join("good.json");
    std::fs::write(&file, good)?;
    c.kubectl(&["create", "--raw", cms, "-f", &file.display().to_string()])?;
    let before = raw(&c, &format!("{cms}/keep"))?;

    let e = post(
        &c,
        cms,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}"#,
    )?;
    ensure!(e.contains("(BadRequest)"), "malformed JSON: {e}");
    let e = post(
        &c,
        cms,
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
    )?;
    ensure!(e.contains("(BadRequest)"), "wrong kind: {e}");
    let e = post(
        &c,
        cms,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
    )?;
    ensure!(
        e.contains(r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#),
        "invalid name: {e}"
    );
    let e = post(&c, cms, good)?;
    ensure!(
        e.contains(r#"(AlreadyExists): configmaps "keep" already exists"#),
        "duplicate: {e}"
    );
    let e = post(
        &c,
        "/api/v1/namespaces/nope/configmaps",
        &good.replace("keep", "other"),
    )?;
    ensure!(
        e.contains(r#"(NotFound): namespaces "nope" not found"#),
        "missing namespace: {e}"
    );
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"k":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let e = post(&c, cms, &big)?;
    ensure!(
        e.contains("(RequestEntityTooLarge)"),
        "oversized: {}",
        &e[..e.len().min(300)]
    );
    // Duplicate keys: refused under Strict, the last one wins otherwise.
    let dup = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"k":"1","k":"2"}}"#;
    let e = post(&c, &format!("{cms}?fieldValidation=Strict"), dup)?;
    ensure!(
        e.contains(r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: duplicate field "data.k""#),
        "duplicate field: {e}"
    );
    let dup_file = c.data_dir().join("dup.json");
    std::fs::write(&dup_file, dup)?;
    c.kubectl(&[
        "create",
        "--raw",
        &format!("{cms}?fieldValidation=Ignore"),
        "-f",
        &dup_file.display().to_string(),
    ])?;
    ensure!(raw(&c, &format!("{cms}/dup"))?["data"]["k"] == "2");
    let e = post(&c, "/api/v1/namespaces/default/widgets", good)?;
    ensure!(e.contains("(NotFound)"), "unknown resource: {e}");

    // Stale resourceVersion on replace.
    let mut stale = before.clone();
    stale["metadata"]["resourceVersion"] = "1".into();
    stale["data"]["k"] = "changed".into();
    std::fs::write(&file, stale.to_string())?;
    let e = c.kubectl_err(
        &[
            "replace",
            "--raw",
            &format!("{cms}/keep"),
            "-f",
            &file.display().to_string(),
        ],
        None,
    )?;
    ensure!(
        e.contains(r#"(Conflict): Operation cannot be fulfilled on configmaps "keep": the object has been modified; please apply your changes to the latest version and try again"#),
        "stale update: {e}"
    );
    // A name that differs from the URL's.
    let mut renamed = before.clone();
    renamed["metadata"]["name"] = "other".into();
    std::fs::write(&file, renamed.to_string())?;
    let e = c.kubectl_err(
        &[
            "replace",
            "--raw",
            &format!("{cms}/keep"),
            "-f",
            &file.display().to_string(),
        ],
        None,
    )?;
    ensure!(
        e.contains("(BadRequest)") && e.contains("does not match the name on the URL"),
        "{e}"
    );

    // Requests without valid credentials are refused.
    let ca = c.data_dir().join("server/tls/server-ca.crt");
    let server = format!("https://127.0.0.1:{}", c.port);
    let empty = c.data_dir().join("anonymous.kubeconfig");
    std::fs::write(&empty, "apiVersion: v1\nkind: Config\n")?;
    let kubeconfig = format!("--kubeconfig={}", empty.display());
    let anon = |args: &[&str]| -> Result<k3rs_tests::apiserver::Output> {
        // (kubectl prompts for a password when it has no credentials at all, so give it a bogus token.)
        let mut all = vec![
            kubeconfig.as_str(),
            "--token=not-a-token",
            "--server",
            &server,
        ];
        let ca_arg = format!("--certificate-authority={}", ca.display());
        all.push(&ca_arg);
        all.extend_from_slice(args);
        c.run(&all, None)
    };
    let out = anon(&["get", "ns"])?;
    ensure!(
        !out.ok && out.stderr.contains("You must be logged in to the server"),
        "anonymous list: {}",
        out.stderr
    );
    // A token that is not valid is refused even on the public paths (upstream's anonymous access is for
    // requests without credentials; the security suite covers those).
    let out = anon(&["get", "--raw", "/readyz"])?;
    ensure!(
        !out.ok && out.stderr.contains("Unauthorized"),
        "bad token on readyz: {:?}",
        out
    );

    // Nothing stored changed and the server still serves.
    ensure!(
        raw(&c, &format!("{cms}/keep"))? == before,
        "stored object changed"
    );
    Ok(())
}
per_backend!(bad_input_gets_upstream_errors, super::bad_input);
