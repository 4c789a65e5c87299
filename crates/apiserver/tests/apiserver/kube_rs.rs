//! kube-rs: a `watcher`/`reflector` over 2,000 objects stays correct across an apiserver restart and across
//! a compaction of the revisions it was watching from (a 410 makes it relist).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures_util::{StreamExt, TryStreamExt};
use k3rs_tests::Cluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::per_backend;

fn configmap(i: usize) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bulk-{i:04}"), "labels": {"bulk": "yes"}},
        "data": {"i": i.to_string()},
    }))
    .expect("a valid ConfigMap")
}

async fn client(c: &Cluster) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(c.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The store's view (name → data) once it equals what a fresh list returns, or an error after `timeout`.
async fn converged(
    store: &reflector::Store<ConfigMap>,
    api: &Api<ConfigMap>,
    timeout: Duration,
) -> Result<usize> {
    let start = std::time::Instant::now();
    loop {
        let listed: BTreeMap<String, Option<BTreeMap<String, String>>> = api
            .list(&ListParams::default().labels("bulk=yes"))
            .await?
            .items
            .into_iter()
            .map(|cm| (cm.metadata.name.unwrap_or_default(), cm.data))
            .collect();
        let cached: BTreeMap<String, Option<BTreeMap<String, String>>> = store
            .state()
            .iter()
            .map(|cm| {
                (
                    cm.metadata.name.clone().unwrap_or_default(),
                    cm.data.clone(),
                )
            })
            .collect();
        if listed == cached {
            return Ok(listed.len());
        }
        ensure!(
            start.elapsed() < timeout,
            "the reflector did not converge: {} cached, {} listed",
            cached.len(),
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn watcher_survives(mut c: Cluster) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client(&c).await?, "default");
    futures_util::stream::iter(0..2000)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &configmap(i)).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .context("creating 2000 ConfigMaps")?;

    // The reflector uses its own client, so it reconnects by itself when the apiserver restarts.
    let watched: Api<ConfigMap> = Api::namespaced(client(&c).await?, "default");
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(watched, watcher::Config::default().labels("bulk=yes")),
    )
    .default_backoff()
    .applied_objects();
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    store.wait_until_ready().await?;
    ensure!(converged(&store, &api, Duration::from_secs(60)).await? == 2000);

    // An apiserver restart: the watch breaks, the watcher resumes from its resourceVersion.
    c.restart_apiserver().await?;
    for i in 0..50 {
        api.delete(&format!("bulk-{i:04}"), &DeleteParams::default())
            .await?;
    }
    let patch = Patch::Merge(serde_json::json!({"data": {"i": "changed"}}));
    for i in 50..100 {
        api.patch(&format!("bulk-{i:04}"), &PatchParams::default(), &patch)
            .await?;
    }
    ensure!(converged(&store, &api, Duration::from_secs(60)).await? == 1950);

    // Compaction while the apiserver is down: the watcher's resourceVersion is gone, the apiserver answers
    // 410 Expired and the watcher relists.
    c.stop_apiserver();
    let mut etcd = c.store.client().await?;
    let mut head = 0;
    for i in 0..20 {
        head = etcd
            .put(format!("/k3rs-test/filler-{i}"), "x", None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
    }
    etcd.compact(head, None).await?;
    c.start_apiserver().await?;
    api.delete("bulk-0100", &DeleteParams::default()).await?;
    api.create(&PostParams::default(), &configmap(5000)).await?;
    ensure!(converged(&store, &api, Duration::from_secs(60)).await? == 1950);
    ensure!(
        c.log().contains("watch from a compacted revision"),
        "the watcher never resumed from a compacted revision:\n{}",
        c.log()
    );
    driver.abort();
    Ok(())
}
per_backend!(
    kube_rs_reflector_survives_restart_and_compaction,
    super::watcher_survives
);

/// The API error of a kube-rs call, or a failure if it succeeded.
fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> Result<Box<kube::core::Status>> {
    match r {
        Err(kube::Error::Api(status)) => Ok(status),
        other => anyhow::bail!("expected an API error, got {other:?}"),
    }
}

/// Server-side apply through kube-rs (`Patch::Apply`): create, a 409 whose causes name the field and the
/// other manager, forcing, and the option errors upstream returns (no field manager; `force` on a
/// non-apply patch).
async fn apply_with_kube_rs(c: Cluster) -> Result<()> {
    let client = client(&c).await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let desired = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied", "labels": {"team": "a"}},
        "data": {"mode": "fast"},
    });
    let created = api
        .patch(
            "applied",
            &PatchParams::apply("controller-a"),
            &Patch::Apply(&desired),
        )
        .await?;
    let fields = created.metadata.managed_fields.clone().unwrap_or_default();
    ensure!(
        fields.len() == 1
            && fields[0].manager.as_deref() == Some("controller-a")
            && fields[0].operation.as_deref() == Some("Apply"),
        "{fields:?}"
    );
    let mut theirs = desired.clone();
    theirs["data"]["mode"] = "slow".into();
    theirs["metadata"]
        .as_object_mut()
        .map(|m| m.remove("labels"));
    let status = api_error(
        api.patch(
            "applied",
            &PatchParams::apply("controller-b"),
            &Patch::Apply(&theirs),
        )
        .await,
    )?;
    ensure!(
        status.code == 409 && status.reason == "Conflict",
        "{status:?}"
    );
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    ensure!(
        causes.len() == 1
            && causes[0].reason == "FieldManagerConflict"
            && causes[0].field == ".data.mode"
            && causes[0].message == r#"conflict with "controller-a""#,
        "{causes:?}"
    );
    ensure!(api.get("applied").await?.data.unwrap_or_default()["mode"] == "fast");
    let forced = api
        .patch(
            "applied",
            &PatchParams::apply("controller-b").force(),
            &Patch::Apply(&theirs),
        )
        .await?;
    ensure!(forced.data.unwrap_or_default()["mode"] == "slow");
    ensure!(forced.metadata.labels.unwrap_or_default()["team"] == "a");

    // Option errors, sent raw since kube-rs checks them client-side too.
    let path = "/api/v1/namespaces/default/configmaps/applied";
    let send = |query: &str, content_type: &str, body: &str| {
        hyper::Request::builder()
            .method("PATCH")
            .uri(format!("{path}?{query}"))
            .header("Content-Type", content_type)
            .body(body.as_bytes().to_vec())
            .expect("a request")
    };
    let status = api_error(
        client
            .request_text(send(
                "",
                "application/apply-patch+yaml",
                &theirs.to_string(),
            ))
            .await,
    )?;
    ensure!(
        status.code == 422
            && status.message
                == r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch"#,
        "{status:?}"
    );
    let status = api_error(
        client
            .request_text(send(
                "force=true",
                "application/merge-patch+json",
                r#"{"data":{"x":"y"}}"#,
            ))
            .await,
    )?;
    ensure!(
        status.code == 422
            && status.message
                == r#"PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch"#,
        "{status:?}"
    );
    let status = api_error(
        client
            .request_text(send(
                "fieldManager=x",
                "application/apply-patch+yaml",
                "data: {a: b}",
            ))
            .await,
    )?;
    ensure!(status.code == 400, "{status:?}");
    ensure!(api.get("applied").await?.data.unwrap_or_default().len() == 1);
    Ok(())
}
per_backend!(server_side_apply_with_kube_rs, super::apply_with_kube_rs);
