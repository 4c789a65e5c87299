//! The namespace controller, after upstream's namespaced-resources deleter: a namespace being deleted is
//! emptied of every namespaced resource the API serves (custom resources included) by collection deletes,
//! its status conditions say what is left and why, and once nothing remains the `kubernetes` finalizer is
//! removed through `namespaces/<name>/finalize` and the namespace deleted for good.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Error as KubeError, ResourceExt};
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::informers::Informer;
use crate::queue::{Outcome, Queue, run_workers};

const FINALIZER: &str = "kubernetes";
/// How long discovery results are reused between namespaces.
const DISCOVERY_TTL: Duration = Duration::from_secs(10);

/// A namespaced resource type that can be listed and deleted.
#[derive(Debug, Clone)]
struct Kind {
    ar: ApiResource,
    delete_collection: bool,
}

impl Kind {
    /// Upstream's GroupResource string: `configmaps`, `widgets.example.com`.
    fn group_resource(&self) -> String {
        if self.ar.group.is_empty() {
            self.ar.plural.clone()
        } else {
            format!("{}.{}", self.ar.plural, self.ar.group)
        }
    }
}

struct Controller {
    client: kube::Client,
    namespaces: Informer<Namespace>,
    discovered: Mutex<Option<(Instant, Arc<Vec<Kind>>)>>,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let namespaces: Informer<Namespace> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    namespaces.on_change(move |ns| {
        if ns.metadata.deletion_timestamp.is_some() {
            q.add(ns.name_any());
        }
    });
    let controller = Arc::new(Controller {
        client: ctx.client.clone(),
        namespaces,
        discovered: Mutex::new(None),
    });
    run_workers(
        "namespace",
        queue,
        5,
        shutdown.clone(),
        move |name: String| {
            let c = controller.clone();
            async move { c.sync(&name).await }
        },
    )
}

/// What is left after a deletion round.
#[derive(Debug, Default)]
struct Remaining {
    /// Objects per resource type (`configmaps` → 3).
    objects: BTreeMap<String, usize>,
    /// Objects waiting for each finalizer.
    finalizers: BTreeMap<String, usize>,
    /// Resource types whose deletion failed.
    failed: Vec<String>,
    /// The longest grace period left on a pod, to wait before looking again.
    wait: Duration,
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
    }
}

fn joined(map: &BTreeMap<String, usize>, what: &str) -> String {
    map.iter()
        .map(|(k, n)| format!("{k} {what} {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Controller {
    async fn kinds(&self) -> Result<Arc<Vec<Kind>>, KubeError> {
        if let Some((at, kinds)) = self.discovered.lock().as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(kinds.clone());
        }
        let discovery = Discovery::new(self.client.clone()).run().await?;
        let mut kinds = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope != Scope::Namespaced
                    || !caps.supports_operation(verbs::LIST)
                    || !caps.supports_operation(verbs::DELETE)
                {
                    continue;
                }
                kinds.push(Kind {
                    delete_collection: caps.supports_operation(verbs::DELETE_COLLECTION),
                    ar,
                });
            }
        }
        let kinds = Arc::new(kinds);
        *self.discovered.lock() = Some((Instant::now(), kinds.clone()));
        Ok(kinds)
    }

    async fn sync(&self, name: &str) -> Outcome {
        self.namespaces.synced().await;
        let Some(ns) = self.namespaces.get(None, name) else {
            return Ok(None);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(None);
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let spec_finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !spec_finalizers.iter().any(|f| f == FINALIZER) {
            return self.delete_when_finalized(&api, &ns).await;
        }
        let mut conditions = Vec::new();
        let remaining = match self.kinds().await {
            Ok(kinds) => {
                conditions.push(condition(
                    "NamespaceDeletionDiscoveryFailure",
                    false,
                    "ResourcesDiscovered",
                    "All resources successfully discovered".into(),
                ));
                self.delete_content(name, &kinds).await
            }
            Err(err) => {
                conditions.push(condition(
                    "NamespaceDeletionDiscoveryFailure",
                    true,
                    "DiscoveryFailed",
                    format!("Discovery failed for some groups: {err}"),
                ));
                self.set_conditions(&api, &ns, conditions).await?;
                return Err(err.into());
            }
        };
        conditions.push(condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ));
        conditions.push(if remaining.failed.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    remaining.failed.len(),
                    remaining.failed.join(", ")
                ),
            )
        });
        conditions.push(if remaining.objects.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!(
                    "Some resources are remaining: {}",
                    joined(&remaining.objects, "has")
                ),
            )
        });
        conditions.push(if remaining.finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    joined(&remaining.finalizers, "in")
                ),
            )
        });
        self.set_conditions(&api, &ns, conditions).await?;
        if !remaining.objects.is_empty() || !remaining.failed.is_empty() {
            // Look again: objects may be waiting for finalizers or graceful termination.
            let wait = remaining
                .wait
                .clamp(Duration::from_millis(500), Duration::from_secs(15));
            tracing::debug!(namespace = %name, remaining = ?remaining.objects, "namespace content remains");
            return Ok(Some(wait));
        }
        // Empty: give up our finalizer, then delete the namespace for good.
        let mut finalized = (*ns).clone();
        if let Some(spec) = finalized.spec.as_mut() {
            spec.finalizers = Some(
                spec_finalizers
                    .into_iter()
                    .filter(|f| f != FINALIZER)
                    .collect(),
            );
        }
        finalized.metadata.managed_fields = None;
        let updated = match api
            .replace_subresource("finalize", name, &PostParams::default(), &finalized)
            .await
        {
            Ok(ns) => ns,
            Err(KubeError::Api(s)) if s.code == 404 => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        tracing::info!(namespace = %name, "namespace emptied and finalized");
        self.delete_when_finalized(&api, &updated).await
    }

    /// Deletes a namespace no finalizer holds any more (the second delete upstream's controller issues).
    async fn delete_when_finalized(&self, api: &Api<Namespace>, ns: &Namespace) -> Outcome {
        let spec_empty = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_none_or(|f| f.is_empty());
        if !spec_empty || !ns.finalizers().is_empty() {
            return Ok(None);
        }
        match api.delete(&ns.name_any(), &DeleteParams::default()).await {
            Ok(_) => Ok(None),
            Err(KubeError::Api(s)) if s.code == 404 => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn set_conditions(
        &self,
        api: &Api<Namespace>,
        ns: &Namespace,
        wanted: Vec<NamespaceCondition>,
    ) -> Result<(), crate::Error> {
        let old = ns
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let mut merged = old.clone();
        let mut changed = false;
        for mut c in wanted {
            match merged.iter_mut().find(|o| o.type_ == c.type_) {
                Some(o) => {
                    if o.status == c.status && o.reason == c.reason && o.message == c.message {
                        continue;
                    }
                    if o.status == c.status {
                        c.last_transition_time = o.last_transition_time.clone();
                    }
                    *o = c;
                    changed = true;
                }
                None => {
                    merged.push(c);
                    changed = true;
                }
            }
        }
        let phase_terminating =
            ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if !changed && phase_terminating {
            return Ok(());
        }
        let mut next = ns.clone();
        next.metadata.managed_fields = None;
        let status = next.status.get_or_insert_with(Default::default);
        status.phase = Some("Terminating".into());
        status.conditions = Some(merged);
        match api
            .replace_status(&ns.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) | Err(KubeError::Api(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes everything in `ns` and says what is left.
    async fn delete_content(&self, ns: &str, kinds: &[Kind]) -> Remaining {
        let mut remaining = Remaining::default();
        for kind in kinds {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &kind.ar);
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            let deleted = if kind.delete_collection {
                api.delete_collection(&dp, &ListParams::default())
                    .await
                    .map(|_| ())
            } else {
                self.delete_each(&api, &dp).await
            };
            match deleted {
                Ok(()) => {}
                Err(KubeError::Api(s)) if s.code == 404 || s.code == 405 => {}
                Err(err) => {
                    tracing::debug!(namespace = %ns, resource = %kind.group_resource(), %err, "deleting content failed");
                    remaining.failed.push(kind.group_resource());
                    continue;
                }
            }
            let left = match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(KubeError::Api(s)) if s.code == 404 => Vec::new(),
                Err(_) => {
                    remaining.failed.push(kind.group_resource());
                    continue;
                }
            };
            if left.is_empty() {
                continue;
            }
            remaining.objects.insert(kind.group_resource(), left.len());
            for obj in &left {
                for f in obj.finalizers() {
                    *remaining.finalizers.entry(f.clone()).or_default() += 1;
                }
                if let Some(g) = obj.metadata.deletion_grace_period_seconds {
                    remaining.wait = remaining.wait.max(Duration::from_secs(g.max(0) as u64));
                }
            }
        }
        remaining
    }

    async fn delete_each(
        &self,
        api: &Api<DynamicObject>,
        dp: &DeleteParams,
    ) -> Result<(), KubeError> {
        for obj in api.list(&ListParams::default()).await?.items {
            match api.delete(&obj.name_any(), dp).await {
                Ok(_) => {}
                Err(KubeError::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}
