//! The `serviceaccount` and `root-ca-cert-publisher` controllers with the apiserver's ServiceAccount
//! admission: every namespace gets `default` and `kube-root-ca.crt` (back when deleted, put right when
//! edited), and pods run as an existing account with the projected token volume mounted. A legacy token
//! Secret gets a token the apiserver accepts (`serviceaccount-token`), gone with its account.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::Backend;
use serde_json::{Value, json};

use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn get(env: &Env, args: &[&str]) -> Result<Option<Value>> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json", "--ignore-not-found"]);
    let out = env.c.kubectl(&all)?;
    if out.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(&out).context("kubectl output")?))
}

async fn accounts_and_root_ca(env: Env) -> Result<()> {
    let c = &env.c;
    let ca = std::fs::read_to_string(c.data_dir().join("server/tls/server-ca.crt"))?;
    c.kubectl(&["create", "namespace", "sa-test"])?;
    eventually("default service account and root CA", WAIT, || {
        Ok(get(&env, &["sa", "default", "-n", "sa-test"])?.is_some()
            && get(&env, &["cm", "kube-root-ca.crt", "-n", "sa-test"])?.is_some())
    })
    .await?;
    let cm = get(&env, &["cm", "kube-root-ca.crt", "-n", "sa-test"])?.unwrap_or_default();
    ensure!(
        cm["data"]["ca.crt"] == ca.as_str(),
        "published CA differs: {cm}"
    );
    ensure!(
        cm["metadata"]["annotations"]["kubernetes.io/description"]
            .as_str()
            .is_some_and(|d| d.contains("kubernetes.default.svc")),
        "{cm}"
    );
    // System namespaces have them too.
    for ns in ["default", "kube-system", "kube-public"] {
        eventually(&format!("account in {ns}"), WAIT, || {
            Ok(get(&env, &["sa", "default", "-n", ns])?.is_some())
        })
        .await?;
    }

    // Deleted: back (a new object); edited: put right.
    let old_uid =
        get(&env, &["sa", "default", "-n", "sa-test"])?.unwrap_or_default()["metadata"]["uid"]
            .clone();
    c.kubectl(&["delete", "sa", "default", "-n", "sa-test"])?;
    eventually("default recreated", WAIT, || {
        Ok(get(&env, &["sa", "default", "-n", "sa-test"])?
            .is_some_and(|sa| sa["metadata"]["uid"] != old_uid))
    })
    .await?;
    c.kubectl(&[
        "patch",
        "cm",
        "kube-root-ca.crt",
        "-n",
        "sa-test",
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"tampered"}}"#,
    ])?;
    eventually("root CA restored", WAIT, || {
        Ok(get(&env, &["cm", "kube-root-ca.crt", "-n", "sa-test"])?
            .is_some_and(|cm| cm["data"]["ca.crt"] == ca.as_str()))
    })
    .await?;
    c.kubectl(&["delete", "cm", "kube-root-ca.crt", "-n", "sa-test"])?;
    eventually("root CA recreated", WAIT, || {
        Ok(get(&env, &["cm", "kube-root-ca.crt", "-n", "sa-test"])?.is_some())
    })
    .await?;

    // A pod runs as `default` with the token volume in every container.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "sa-test"},
        "spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                 "containers": [{"name": "a", "image": "busybox"},
                                {"name": "b", "image": "busybox", "volumeMounts": [{"name": "own", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                 "volumes": [{"name": "own", "emptyDir": {}}]}});
    let out = c.kubectl_in(&["create", "-o", "json", "-f", "-"], &pod.to_string())?;
    let pod: Value = serde_json::from_str(&out)?;
    let spec = &pod["spec"];
    ensure!(spec["serviceAccountName"] == "default", "{spec}");
    let vol = spec["volumes"]
        .as_array()
        .and_then(|v| {
            v.iter().find(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kube-api-access-"))
            })
        })
        .cloned()
        .context("no kube-api-access volume")?;
    let name = vol["name"].as_str().unwrap_or("");
    ensure!(name.len() == "kube-api-access-".len() + 5, "{name}");
    let sources = &vol["projected"]["sources"];
    ensure!(
        sources[0]["serviceAccountToken"]["expirationSeconds"] == 3607,
        "{vol}"
    );
    ensure!(
        sources[1]["configMap"]["name"] == "kube-root-ca.crt",
        "{vol}"
    );
    ensure!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace",
        "{vol}"
    );
    ensure!(vol["projected"]["defaultMode"] == 420, "{vol}");
    for (field, i, mounts) in [
        ("initContainers", 0, 1),
        ("containers", 0, 1),
        ("containers", 1, 1),
    ] {
        let m = spec[field][i]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(m.len() == mounts, "{field}[{i}]: {m:?}");
    }
    ensure!(
        spec["containers"][0]["volumeMounts"][0]["name"] == name,
        "{spec}"
    );
    ensure!(
        spec["containers"][0]["volumeMounts"][0]["readOnly"] == true,
        "{spec}"
    );

    // Automounting off (on the pod, or on the account) leaves the volume out.
    let quiet = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quiet", "namespace": "sa-test"},
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "a", "image": "busybox"}]}});
    let out: Value = serde_json::from_str(
        &c.kubectl_in(&["create", "-o", "json", "-f", "-"], &quiet.to_string())?,
    )?;
    ensure!(out["spec"]["volumes"].is_null(), "{out}");
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "robot", "namespace": "sa-test"}, "automountServiceAccountToken": false}).to_string())?;
    let robot = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "robot", "namespace": "sa-test"},
        "spec": {"serviceAccountName": "robot", "containers": [{"name": "a", "image": "busybox"}]}});
    let out: Value = serde_json::from_str(
        &c.kubectl_in(&["create", "-o", "json", "-f", "-"], &robot.to_string())?,
    )?;
    ensure!(
        out["spec"]["volumes"].is_null() && out["spec"]["serviceAccountName"] == "robot",
        "{out}"
    );

    // An account that does not exist: refused as upstream refuses it.
    let ghost = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ghost", "namespace": "sa-test"},
        "spec": {"serviceAccountName": "missing", "containers": [{"name": "a", "image": "busybox"}]}});
    let err = c.kubectl_err(&["create", "-f", "-"], Some(&ghost.to_string()))?;
    ensure!(
        err.contains(r#"pods "ghost" is forbidden: error looking up service account sa-test/missing: serviceaccount "missing" not found"#),
        "{err}"
    );

    // A legacy token Secret is filled in, and the apiserver accepts its token.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "robot-token", "namespace": "sa-test",
            "annotations": {"kubernetes.io/service-account.name": "robot"}}})
        .to_string(),
    )?;
    let mut token = String::new();
    eventually("token populated", WAIT, || {
        let s = get(&env, &["secret", "robot-token", "-n", "sa-test"])?.unwrap_or_default();
        let decode = |k: &str| {
            s["data"][k].as_str().and_then(|b| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok()
            })
        };
        token = decode("token")
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        Ok(!token.is_empty()
            && decode("ca.crt").as_deref() == Some(ca.as_bytes())
            && decode("namespace").as_deref() == Some(b"sa-test".as_slice()))
    })
    .await?;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}});
    let out: Value = serde_json::from_str(
        &c.kubectl_in(&["create", "-o", "json", "-f", "-"], &review.to_string())?,
    )?;
    ensure!(
        out["status"]["authenticated"] == true
            && out["status"]["user"]["username"] == "system:serviceaccount:sa-test:robot",
        "{out}"
    );
    // The account deleted: its token Secret goes.
    c.kubectl(&["delete", "sa", "robot", "-n", "sa-test"])?;
    eventually("token secret deleted", WAIT, || {
        Ok(get(&env, &["secret", "robot-token", "-n", "sa-test"])?.is_none())
    })
    .await?;
    Ok(())
}

#[test]
fn accounts_root_ca_and_admission() {
    crate::run(Backend::Sqlite, accounts_and_root_ca);
}
