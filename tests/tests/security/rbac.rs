//! RBAC: the bootstrap roles (with `edit` aggregated by the controller-manager), `kubectl auth can-i` and
//! `--list` for admin and for a ServiceAccount bound to `edit`, escalation prevention, and
//! NamespaceLifecycle's refusal in a terminating namespace.

use std::time::Duration;

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;

use crate::{eventually, table_lines};

async fn rbac(c: Cluster) -> Result<()> {
    let _cm = c
        .start_controller_manager("clusterrole-aggregation")
        .await?;

    // The bootstrap policy is there, reconciled without clobbering: a user's extra rule on a default role
    // survives a restart, and a deleted default role comes back.
    let roles = c.kubectl(&["get", "clusterroles", "-o", "name"])?;
    for want in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:node",
        "system:kube-scheduler",
        "system:discovery",
        "system:public-info-viewer",
        "system:controller:generic-garbage-collector",
    ] {
        ensure!(
            roles
                .lines()
                .any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{want}")),
            "{want} missing"
        );
    }
    eventually("edit aggregated", Duration::from_secs(30), || {
        let rules = c.kubectl(&[
            "get",
            "clusterrole",
            "edit",
            "-o",
            "jsonpath={.rules[*].resources}",
        ])?;
        Ok(rules.contains("deployments") && rules.contains("secrets"))
    })
    .await?;

    // Admin: everything.
    let lines = table_lines(&c.kubectl(&["auth", "whoami"])?);
    ensure!(
        lines.contains(&"Username system:admin".to_string())
            && lines.contains(&"Groups [system:masters system:authenticated]".to_string()),
        "{lines:?}"
    );
    ensure!(c.kubectl(&["auth", "can-i", "delete", "nodes"])?.trim() == "yes");
    let list = table_lines(&c.kubectl(&["auth", "can-i", "--list"])?);
    ensure!(
        list.contains(&"*.* [] [] [*]".to_string()) && list.contains(&"[*] [] [*]".to_string()),
        "admin --list: {list:?}"
    );

    // A ServiceAccount with an edit RoleBinding in namespace a.
    c.kubectl(&["create", "namespace", "a"])?;
    c.kubectl(&["create", "namespace", "b"])?;
    c.kubectl(&["create", "serviceaccount", "dev", "-n", "a"])?;
    c.kubectl(&[
        "create",
        "rolebinding",
        "dev-edit",
        "-n",
        "a",
        "--clusterrole=edit",
        "--serviceaccount=a:dev",
    ])?;
    let token = c
        .kubectl(&["create", "token", "dev", "-n", "a"])?
        .trim()
        .to_string();
    let can = |args: &[&str]| -> Result<String> {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        Ok(c.run_with_token(&token, &all)?.stdout.trim().to_string())
    };
    ensure!(can(&["create", "deployments.apps", "-n", "a"])? == "yes");
    ensure!(can(&["get", "secrets", "-n", "a"])? == "yes");
    ensure!(can(&["get", "secrets", "-n", "b"])? == "no");
    ensure!(
        can(&["create", "roles", "-n", "a"])? == "no",
        "edit cannot write RBAC"
    );
    ensure!(can(&["get", "pods", "--subresource=log", "-n", "a"])? == "yes");
    ensure!(can(&["list", "nodes"])? == "no");
    let out = c.run_with_token(&token, &["auth", "can-i", "--list", "-n", "a"])?;
    let list = table_lines(&out.stdout);
    for want in [
        "Resources Non-Resource URLs Resource Names Verbs",
        "deployments.apps [] [] [create delete deletecollection patch update get list watch]",
        "secrets [] [] [get list watch create delete deletecollection patch update]",
        "selfsubjectreviews.authentication.k8s.io [] [] [create]",
        "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
        "[/api/*] [] [get]",
        "[/healthz] [] [get]",
    ] {
        ensure!(
            list.contains(&want.to_string()),
            "{want:?} not in dev's --list:\n{}",
            out.stdout
        );
    }
    ensure!(
        !list.iter().any(|l| l.starts_with("roles.rbac")),
        "edit lists no roles:\n{}",
        out.stdout
    );
    let lines = table_lines(&c.run_with_token(&token, &["auth", "whoami"])?.stdout);
    ensure!(
        lines.contains(&"Username system:serviceaccount:a:dev".to_string()),
        "{lines:?}"
    );

    // Escalation: alice may manage RBAC objects in a but holds only pod reads; she cannot grant more.
    c.kubectl_in(&["apply", "-f", "-"], r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: rbac-manager, namespace: a}
rules:
- {apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], verbs: [create, get, list, update]}
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-rbac, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: rbac-manager}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#)?;
    let alice = |args: &[&str], stdin: &str| -> Result<k3rs_tests::apiserver::Output> {
        let files = c.data_dir().join("alice.yaml");
        std::fs::write(&files, stdin)?;
        let f = format!("--filename={}", files.display());
        let mut all = args.to_vec();
        all.push(&f);
        c.run_with_token("alice-token", &all)
    };
    let out = alice(
        &["create"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: a}\nrules:\n- {apiGroups: [\"\"], resources: [pods], verbs: [get]}\n",
    )?;
    ensure!(out.ok, "granting what she holds: {out:?}");
    let out = alice(
        &["create"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: secret-reader, namespace: a}\nrules:\n- {apiGroups: [\"\"], resources: [secrets], verbs: [get]}\n",
    )?;
    ensure!(
        !out.ok
            && out.stderr.trim()
                == "Error from server (Forbidden): error when creating \"".to_string()
                    + &c.data_dir().join("alice.yaml").display().to_string()
                    + "\": roles.rbac.authorization.k8s.io \"secret-reader\" is forbidden: user \"alice\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}",
        "escalating role: {out:?}"
    );
    let out = alice(
        &["create"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: alice-admin, namespace: a}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]\n",
    )?;
    ensure!(
        !out.ok
            && out.stderr.contains("Forbidden")
            && out
                .stderr
                .contains("is attempting to grant RBAC permissions not currently held"),
        "escalating binding: {out:?}"
    );
    ensure!(
        c.run_with_token(
            "alice-token",
            &["auth", "can-i", "get", "secrets", "-n", "a"]
        )?
        .stdout
        .trim()
            == "no"
    );
    // The namespace itself is readable through a RoleBinding in it.
    ensure!(
        c.run_with_token(&token, &["get", "namespace", "a"])?.ok,
        "dev reads its namespace"
    );

    // Aggregation cannot be used to escalate: alice may write ClusterRoles but holds little.
    c.kubectl_in(&["apply", "-f", "-"], r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: role-writer}
rules: [{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [create, get, update, patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-role-writer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: role-writer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#)?;
    let out = alice(
        &["create"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: grab-all}\naggregationRule:\n  clusterRoleSelectors: [{matchLabels: {kubernetes.io/bootstrapping: rbac-defaults}}]\nrules: []\n",
    )?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains("must have cluster-admin privileges to use an aggregationRule"),
        "aggregation rule: {out:?}"
    );
    let out = c.run_with_token(
        "alice-token",
        &[
            "label",
            "clusterrole",
            "cluster-admin",
            "rbac.authorization.k8s.io/aggregate-to-view=true",
        ],
    )?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains("is attempting to grant RBAC permissions not currently held"),
        "labelling cluster-admin into view: {out:?}"
    );

    // Impersonation: the admin may act as the ServiceAccount; alice may not act as bob.
    let out = c.kubectl(&[
        "auth",
        "can-i",
        "create",
        "deployments.apps",
        "-n",
        "a",
        "--as=system:serviceaccount:a:dev",
    ])?;
    ensure!(out.trim() == "yes", "admin as dev: {out}");
    let out = c.run(
        &[
            "auth",
            "can-i",
            "create",
            "deployments.apps",
            "-n",
            "b",
            "--as=system:serviceaccount:a:dev",
        ],
        None,
    )?;
    ensure!(out.stdout.trim() == "no", "admin as dev in b: {out:?}");
    let lines = table_lines(&c.kubectl(&["auth", "whoami", "--as=bob", "--as-group=devs"])?);
    ensure!(
        lines.contains(&"Username bob".to_string())
            && lines.contains(&"Groups [devs system:authenticated]".to_string()),
        "{lines:?}"
    );
    let out = c.run_with_token("alice-token", &["get", "pods", "-n", "a", "--as=bob"])?;
    ensure!(
        !out.ok && out.stderr.contains(r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "alice as bob: {out:?}"
    );

    // A user who changed a default role keeps the change across a restart (reconciliation only adds).
    c.kubectl(&[
        "annotate",
        "clusterrole",
        "system:basic-user",
        "--overwrite",
        "rbac.authorization.kubernetes.io/autoupdate=false",
    ])?;
    c.kubectl(&[
        "patch",
        "clusterrole",
        "system:basic-user",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/rules","value":[]}]"#,
    ])?;
    c.kubectl(&["delete", "clusterrole", "system:public-info-viewer"])?;
    let mut c = c;
    c.restart_apiserver().await?;
    let rules = c.kubectl(&[
        "get",
        "clusterrole",
        "system:basic-user",
        "-o",
        "jsonpath={.rules}",
    ])?;
    ensure!(
        rules.trim() == "[]" || rules.trim().is_empty(),
        "user's change kept: {rules}"
    );
    c.kubectl(&["get", "clusterrole", "system:public-info-viewer"])?;

    // NamespaceLifecycle: nothing new in a namespace that is being deleted.
    c.kubectl(&["delete", "namespace", "b", "--wait=false"])?;
    let e = c.kubectl_err(&["create", "configmap", "x", "-n", "b"], None)?;
    ensure!(
        e.contains(r#"configmaps "x" is forbidden: unable to create new content in namespace b because it is being terminated"#),
        "{e}"
    );
    Ok(())
}

#[test]
fn rbac_can_i_and_escalation_as_upstream() {
    crate::run(rbac);
}
