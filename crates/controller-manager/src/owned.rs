//! What the workload controllers share about the objects they own: setting owner references (adoption
//! and release, guarded by uid and resourceVersion), creating and deleting pods under expectations with
//! upstream's events, and ControllerRevisions of a pod template.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::future::join_all;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Error as KubeError, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::informers::{Informer, controller_of, key_of};
use crate::pod::{NewPod, Pod};

/// Sets `obj`'s owner references, guarded by its uid and resourceVersion: `None` if it changed or went
/// meanwhile (the caller looks again later).
pub async fn set_owner_refs<K>(
    api: &Api<K>,
    obj: &K,
    refs: Vec<OwnerReference>,
) -> Result<Option<K>, KubeError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": obj.meta().uid,
        "resourceVersion": obj.meta().resource_version,
    }});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(err) => Err(err),
    }
}

/// Deletes `pods` of `owner` (queue key `key`) concurrently, each guarded by its uid, under deletion
/// expectations, recording `SuccessfulDelete`/`FailedDelete`; the first failure is returned.
pub async fn delete_pods<O: Resource<DynamicType = ()>>(
    client: &kube::Client,
    events: &Recorder,
    expectations: &Expectations,
    owner: &O,
    key: &str,
    pods: &[Arc<Pod>],
) -> Result<(), KubeError> {
    if pods.is_empty() {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    expectations.expect_deletions(key, pods.iter().map(|p| key_of(p.as_ref())));
    let results = join_all(pods.iter().map(|p| {
        let api = api.clone();
        async move {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: p.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            (p, api.delete(&p.name_any(), &dp).await)
        }
    }))
    .await;
    let mut failure = None;
    for (p, r) in results {
        match r {
            Ok(_) => events.normal(
                owner,
                "SuccessfulDelete",
                format!("Deleted pod: {}", p.name_any()),
            ),
            Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => {
                expectations.deletion_observed(key, &key_of(p.as_ref()));
            }
            Err(err) => {
                expectations.deletion_observed(key, &key_of(p.as_ref()));
                events.warning(owner, "FailedDelete", format!("Error deleting: {err}"));
                failure.get_or_insert(err);
            }
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// The ControllerRevision of an owner's current template.
pub struct Revision {
    /// `<owner>-<hash>`.
    pub name: String,
    pub hash: String,
    /// Every revision the owner has (as cached before this sync).
    pub all: Vec<Arc<ControllerRevision>>,
}

/// Makes sure the revision of `template` exists and is the newest (creating it, or moving an older
/// one up as a rollback does), and deletes the oldest revisions beyond `history_limit` whose label
/// value (`label_of`) no pod of the namespace carries.
#[allow(clippy::too_many_arguments)]
pub async fn sync_revision(
    client: &kube::Client,
    revisions: &Informer<ControllerRevision>,
    pods: &Informer<Pod>,
    owner: OwnerReference,
    namespace: &str,
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
    collisions: Option<i32>,
    history_limit: usize,
    label_key: &str,
    label_of: fn(&Revision) -> String,
) -> Result<Revision, KubeError> {
    let hash = crate::deployment::util::template_hash(template, collisions);
    let name = format!("{}-{hash}", owner.name);
    let all: Vec<Arc<ControllerRevision>> = revisions
        .list_in(namespace)
        .into_iter()
        .filter(|r| controller_of(r.as_ref(), &owner.kind).is_some_and(|(_, u)| u == owner.uid))
        .collect();
    let rev = Revision {
        name: name.clone(),
        hash,
        all,
    };
    let max = rev.all.iter().map(|r| r.revision).max().unwrap_or(0);
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    match rev.all.iter().find(|r| r.name_any() == name) {
        Some(r) if r.revision == max => {}
        Some(r) => {
            let mut r = (**r).clone();
            r.revision = max + 1;
            r.metadata.managed_fields = None;
            api.replace(&name, &PostParams::default(), &r).await?;
        }
        None => {
            let mut labels = labels;
            labels.insert(label_key.into(), label_of(&rev));
            let new = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.into()),
                    labels: Some(labels),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                data: Some(RawExtension(json!({"spec": {"template": {
                    "$patch": "replace", "metadata": template.metadata, "spec": template.spec}}}))),
                revision: max + 1,
            };
            match api.create(&PostParams::default(), &new).await {
                Ok(_) => {}
                Err(KubeError::Api(s)) if s.code == 409 => {}
                Err(err) => return Err(err),
            }
        }
    }
    let used: Vec<String> = pods
        .list_in(namespace)
        .iter()
        .filter_map(|p| p.labels().get(label_key).cloned())
        .collect();
    let mut old: Vec<&Arc<ControllerRevision>> = rev
        .all
        .iter()
        .filter(|r| {
            r.name_any() != name && !r.labels().get(label_key).is_some_and(|h| used.contains(h))
        })
        .collect();
    if old.len() > history_limit {
        old.sort_by_key(|r| r.revision);
        for r in old.iter().take(old.len() - history_limit) {
            match api.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) | Err(KubeError::Api(_)) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(rev)
}

/// The pod template a revision recorded.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    serde_json::from_value(rev.data.as_ref()?.0["spec"]["template"].clone()).ok()
}

/// Creates `pods` for `owner` (queue key `key`) under creation expectations, in slow-start batches of 1,
/// 2, 4, … that stop at the first batch with a failure (upstream's `slowStartBatch`), recording
/// `SuccessfulCreate`/`FailedCreate` (a namespace being deleted is no failure of ours to report).
/// Returns how many were created, or the first error.
pub async fn create_pods<O: Resource<DynamicType = ()>>(
    client: &kube::Client,
    events: &Recorder,
    expectations: &Expectations,
    owner: &O,
    key: &str,
    pods: Vec<NewPod>,
) -> Result<usize, KubeError> {
    if pods.is_empty() {
        return Ok(0);
    }
    let api: Api<NewPod> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    expectations.expect_creations(key, pods.len());
    let mut created = 0;
    let mut batch = 1;
    let mut rest = pods.as_slice();
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        rest = later;
        let pp = PostParams::default();
        let results = join_all(now.iter().map(|p| api.create(&pp, p))).await;
        let mut failure = None;
        for r in results {
            match r {
                Ok(p) => {
                    created += 1;
                    events.normal(
                        owner,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                }
                Err(err) => {
                    expectations.creation_observed(key);
                    let terminating = matches!(&err, KubeError::Api(s) if s.code == 403 && s.message.contains("being terminated"));
                    if !terminating {
                        events.warning(owner, "FailedCreate", format!("Error creating: {err}"));
                    }
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            // The pods never tried will not appear either.
            for _ in 0..rest.len() {
                expectations.creation_observed(key);
            }
            return Err(err);
        }
        batch *= 2;
    }
    Ok(created)
}
