//! Per-namespace service-account plumbing, as upstream's `serviceaccount` and `root-ca-cert-publisher`
//! controllers: every active namespace gets the `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap (the CA that verifies the apiserver, mounted into pods by the ServiceAccount admission's
//! projected volume); both come back when deleted and the ConfigMap is put right when edited.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::informers::Informer;
use crate::queue::{Outcome, Queue, run_workers};

/// The ServiceAccounts every namespace gets (upstream's `ServiceAccountsToEnsure`).
const ENSURE: &[&str] = &["default"];
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using \
internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed \
across distributions of Kubernetes clusters.";

fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

fn already_exists(err: &KubeError) -> bool {
    matches!(err, KubeError::Api(s) if s.code == 409)
}

/// Gone or going: nothing to write into it (upstream ignores these errors).
fn namespace_gone(err: &KubeError) -> bool {
    matches!(err, KubeError::Api(s) if s.code == 404 || (s.code == 403 && s.message.contains("being terminated")))
}

/// The `serviceaccount` controller.
pub fn start_serviceaccounts(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let namespaces: Informer<Namespace> = ctx.informers.get();
    let accounts: Informer<ServiceAccount> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    namespaces.on_change(move |ns| q.add(ns.name_any()));
    let q = queue.clone();
    accounts.on_change(move |sa| {
        if ENSURE.contains(&sa.name_any().as_str())
            && let Some(ns) = sa.namespace()
        {
            q.add(ns);
        }
    });
    let client = ctx.client.clone();
    run_workers(
        "serviceaccount",
        queue,
        3,
        shutdown.clone(),
        move |ns: String| {
            let (client, namespaces, accounts) =
                (client.clone(), namespaces.clone(), accounts.clone());
            async move { sync_accounts(client, &namespaces, &accounts, ns).await }
        },
    )
}

async fn sync_accounts(
    client: kube::Client,
    namespaces: &Informer<Namespace>,
    accounts: &Informer<ServiceAccount>,
    ns: String,
) -> Outcome {
    namespaces.synced().await;
    accounts.synced().await;
    let Some(namespace) = namespaces.get(None, &ns) else {
        return Ok(None);
    };
    if !active(&namespace) {
        return Ok(None);
    }
    let api: Api<ServiceAccount> = Api::namespaced(client, &ns);
    for name in ENSURE {
        if accounts.get(Some(&ns), name).is_some() {
            continue;
        }
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = %ns, name, "created service account"),
            Err(e) if already_exists(&e) || namespace_gone(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The `root-ca-cert-publisher` controller; `root_ca` is the PEM bundle to publish.
pub fn start_root_ca_publisher(
    ctx: &Ctx,
    root_ca: Arc<String>,
    shutdown: &CancellationToken,
) -> JoinSet<()> {
    let namespaces: Informer<Namespace> = ctx.informers.get();
    let maps: Informer<ConfigMap> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    namespaces.on_change(move |ns| q.add(ns.name_any()));
    let q = queue.clone();
    maps.on_change(move |cm| {
        if cm.name_any() == ROOT_CA_CONFIGMAP
            && let Some(ns) = cm.namespace()
        {
            q.add(ns);
        }
    });
    let client = ctx.client.clone();
    run_workers(
        "root-ca-cert-publisher",
        queue,
        3,
        shutdown.clone(),
        move |ns: String| {
            let (client, namespaces, maps, ca) = (
                client.clone(),
                namespaces.clone(),
                maps.clone(),
                root_ca.clone(),
            );
            async move { sync_root_ca(client, &namespaces, &maps, &ca, ns).await }
        },
    )
}

async fn sync_root_ca(
    client: kube::Client,
    namespaces: &Informer<Namespace>,
    maps: &Informer<ConfigMap>,
    ca: &str,
    ns: String,
) -> Outcome {
    namespaces.synced().await;
    maps.synced().await;
    match namespaces.get(None, &ns) {
        Some(n) if active(&n) => {}
        _ => return Ok(None),
    }
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let data: BTreeMap<String, String> = [("ca.crt".to_string(), ca.to_string())].into();
    let described = |cm: &ConfigMap| {
        cm.annotations()
            .get("kubernetes.io/description")
            .map(String::as_str)
            == Some(DESCRIPTION)
    };
    match maps.get(Some(&ns), ROOT_CA_CONFIGMAP) {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    annotations: Some(
                        [("kubernetes.io/description".into(), DESCRIPTION.into())].into(),
                    ),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => tracing::debug!(namespace = %ns, "published the root CA"),
                Err(e) if already_exists(&e) || namespace_gone(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(cm) if cm.data.as_ref() != Some(&data) || !described(&cm) => {
            let mut cm = (*cm).clone();
            cm.data = Some(data);
            cm.binary_data = None;
            cm.annotations_mut()
                .insert("kubernetes.io/description".into(), DESCRIPTION.into());
            match api
                .replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
                .await
            {
                Ok(_) => tracing::info!(namespace = %ns, "put the root CA config map right"),
                Err(e) if namespace_gone(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(_) => {}
    }
    Ok(None)
}
