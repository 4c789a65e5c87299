//! Endpoints and EndpointSlices follow pods as upstream's controllers make them: named target ports
//! resolved per pod, readiness flips reflected within a second, terminating pods kept in slices only,
//! `publishNotReadyAddresses`, headless Services, 100 endpoints per slice, selector-less Services'
//! Endpoints mirrored, and everything gone with the Service.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k3rs_tests::{Backend, Cluster};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::fake_kubelet;
use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn pod(name: &str, app: &str, port_name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "ports": [{"name": port_name, "containerPort": 8080}, {"containerPort": 9090}]}]}})
}

fn apply(c: &Cluster, v: &Value) -> Result<()> {
    c.kubectl_in(&["apply", "-f", "-"], &v.to_string())?;
    Ok(())
}

fn set_ready(c: &Cluster, pod: &str, ready: bool) -> Result<()> {
    let s = if ready { "True" } else { "False" };
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": s, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    c.kubectl(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])?;
    Ok(())
}

async fn slices_of(api: &Api<EndpointSlice>, svc: &str) -> Result<Vec<EndpointSlice>> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    Ok(api.list(&lp).await?.items)
}

/// (ready, not ready) addresses of the Endpoints.
fn addresses(e: &Endpoints) -> (Vec<String>, Vec<String>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for s in e.subsets.iter().flatten() {
        ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

fn pod_ip(c: &Cluster, pod: &str) -> Result<String> {
    Ok(
        c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?
            .trim()
            .to_string(),
    )
}

/// The slice endpoint of `ip`: (ready, serving, terminating).
fn conditions(slices: &[EndpointSlice], ip: &str) -> Option<(bool, bool, bool)> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .find(|e| e.addresses[0] == ip)
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
            )
        })
}

async fn follow(env: Env) -> Result<()> {
    let c = &env.c;
    let _kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    let client = fake_kubelet::client(&c.kubeconfig()).await?;
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());

    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9090, "targetPort": 9090}]}}),
    )?;
    for i in 0..3 {
        apply(c, &pod(&format!("web-{i}"), "web", "web"))?;
    }
    // A pod without the named port: only the metrics port reaches it (its own subset).
    apply(c, &pod("odd", "web", "other"))?;
    eventually("4 ready addresses", WAIT, || {
        let e = c.kubectl(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "json",
            "--ignore-not-found",
        ])?;
        let Ok(e) = serde_json::from_str::<Endpoints>(&e) else {
            return Ok(false);
        };
        Ok(addresses(&e).0.len() == 4)
    })
    .await?;
    let e = eps.get("web").await?;
    ensure!(
        e.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tier"))
            .map(String::as_str)
            == Some("front"),
        "{e:?}"
    );
    let subsets = e.subsets.clone().unwrap_or_default();
    ensure!(subsets.len() == 2, "{subsets:?}");
    let full = subsets
        .iter()
        .find(|s| s.ports.as_ref().is_some_and(|p| p.len() == 2))
        .context("two-port subset")?;
    ensure!(full.addresses.as_ref().map_or(0, Vec::len) == 3, "{full:?}");
    let http = full
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .context("http port")?;
    ensure!(http.port == 8080, "{http:?}");
    let target = &full.addresses.as_ref().unwrap()[0].target_ref;
    ensure!(
        target.as_ref().and_then(|t| t.kind.as_deref()) == Some("Pod"),
        "{target:?}"
    );
    let s = slices_of(&slices, "web").await?;
    ensure!(s.len() == 2, "one slice per port set: {s:?}");
    for slice in &s {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        ensure!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some("endpointslice-controller.k8s.io"),
            "{labels:?}"
        );
        ensure!(
            labels.get("tier").map(String::as_str) == Some("front"),
            "{labels:?}"
        );
        ensure!(slice.address_type == "IPv4");
        ensure!(
            slice
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o[0].kind == "Service" && o[0].controller == Some(true))
        );
    }

    // A readiness flip shows in both within a second.
    let ip = pod_ip(c, "web-1")?;
    let start = Instant::now();
    set_ready(c, "web-1", false)?;
    loop {
        let e = eps.get("web").await?;
        let s = slices_of(&slices, "web").await?;
        if addresses(&e).1.contains(&ip) && conditions(&s, &ip) == Some((false, false, false)) {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("not-ready pod not reflected: {e:?} {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    eprintln!("readiness flip reflected in {took:?}");
    ensure!(
        took < Duration::from_secs(1),
        "readiness flip took {took:?}"
    );
    let start = Instant::now();
    set_ready(c, "web-1", true)?;
    loop {
        let e = eps.get("web").await?;
        let s = slices_of(&slices, "web").await?;
        if addresses(&e).0.contains(&ip) && conditions(&s, &ip) == Some((true, true, false)) {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(1),
            "ready again took {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Terminating (held by a finalizer): out of Endpoints, in slices as serving and terminating.
    c.kubectl(&[
        "patch",
        "pod",
        "web-2",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])?;
    let ip2 = pod_ip(c, "web-2")?;
    c.kubectl(&["delete", "pod", "web-2", "--wait=false"])?;
    eventually("terminating endpoint", WAIT, || {
        let e = c.kubectl(&["get", "endpoints", "web", "-o", "json"])?;
        let e: Endpoints = serde_json::from_str(&e)?;
        let s: Vec<EndpointSlice> = serde_json::from_value(json_items(
            c,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ],
        )?)?;
        Ok(!addresses(&e).0.contains(&ip2) && conditions(&s, &ip2) == Some((false, true, true)))
    })
    .await?;
    c.kubectl(&[
        "patch",
        "pod",
        "web-2",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])?;

    // publishNotReadyAddresses: a not-ready pod is a ready address.
    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": {"app": "peer"}}}),
    )?;
    apply(c, &pod("peer-0", "peer", "web"))?;
    eventually("peer has an address", WAIT, || {
        Ok(!pod_ip(c, "peer-0")?.is_empty())
    })
    .await?;
    set_ready(c, "peer-0", false)?;
    let peer_ip = pod_ip(c, "peer-0")?;
    eventually("published not-ready peer", WAIT, || {
        let e = c.kubectl(&[
            "get",
            "endpoints",
            "peers",
            "-o",
            "json",
            "--ignore-not-found",
        ])?;
        let Ok(e) = serde_json::from_str::<Endpoints>(&e) else {
            return Ok(false);
        };
        Ok(addresses(&e).0 == vec![peer_ip.clone()])
    })
    .await?;
    // Headless without ports: addresses without ports, marked headless.
    let e = eps.get("peers").await?;
    ensure!(
        e.subsets.as_ref().is_some_and(|s| s[0].ports.is_none()),
        "{e:?}"
    );
    ensure!(
        e.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("service.kubernetes.io/headless")),
        "{e:?}"
    );
    let s = slices_of(&slices, "peers").await?;
    ensure!(
        s.iter().all(|s| s
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("service.kubernetes.io/headless"))),
        "{s:?}"
    );

    // Selector-less Service: its Endpoints are the user's, mirrored into a slice.
    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "external"},
        "spec": {"ports": [{"name": "db", "port": 5432}]}}),
    )?;
    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "external"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "notReadyAddresses": [{"ip": "192.0.2.11"}],
                     "ports": [{"name": "db", "port": 5432}]}]}),
    )?;
    eventually("mirrored slice", WAIT, || {
        let s: Vec<EndpointSlice> = serde_json::from_value(json_items(
            c,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=external",
            ],
        )?)?;
        Ok(s.len() == 1
            && s[0]
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
                .map(String::as_str)
                == Some("endpointslicemirroring-controller.k8s.io")
            && conditions(&s, "192.0.2.10").map(|c| c.0) == Some(true)
            && conditions(&s, "192.0.2.11").map(|c| c.0) == Some(false))
    })
    .await?;
    let user = eps.get("external").await?;
    ensure!(
        addresses(&user).0 == vec!["192.0.2.10".to_string()],
        "the user's Endpoints were changed: {user:?}"
    );
    // The apiserver's own `kubernetes` Endpoints are not mirrored (skip-mirror).
    let k: Vec<EndpointSlice> = serde_json::from_value(json_items(
        c,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=kubernetes",
        ],
    )?)?;
    ensure!(
        k.iter().all(|s| s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
            .map(String::as_str)
            != Some("endpointslicemirroring-controller.k8s.io")),
        "{k:?}"
    );

    // 105 pods: slices of at most 100.
    apply(
        c,
        &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "many"},
        "spec": {"replicas": 105, "selector": {"matchLabels": {"app": "many"}},
                 "template": {"metadata": {"labels": {"app": "many"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
    )?;
    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "many"},
        "spec": {"selector": {"app": "many"}, "ports": [{"port": 80}]}}),
    )?;
    eventually("105 endpoints in slices of 100", WAIT, || {
        let s: Vec<EndpointSlice> = serde_json::from_value(json_items(
            c,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=many",
            ],
        )?)?;
        let mut sizes: Vec<usize> = s.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        Ok(sizes == vec![5, 100])
    })
    .await?;

    // The Service goes: its Endpoints and slices follow.
    c.kubectl(&["delete", "service", "web"])?;
    eventually("endpoints and slices gone", WAIT, || {
        let e = c.kubectl(&[
            "get",
            "endpoints",
            "web",
            "--ignore-not-found",
            "-o",
            "name",
        ])?;
        let s = c.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ])?;
        Ok(e.trim().is_empty() && s.trim().is_empty())
    })
    .await?;
    Ok(())
}

fn json_items(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let v: Value = serde_json::from_str(&c.kubectl(&all)?)?;
    Ok(v["items"].clone())
}

#[test]
fn endpoints_follow_pods() {
    crate::run(Backend::Sqlite, follow);
}
