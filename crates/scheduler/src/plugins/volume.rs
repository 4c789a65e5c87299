//! VolumeBinding: a pod's claims must exist; a bound claim's volume must admit the node (its node
//! affinity); an unbound `WaitForFirstConsumer` claim needs an Available volume that fits on the node, or
//! a provisioner. Reserve settles which, PreBind (in `schedule::bind`) writes it — a volume's `claimRef`,
//! or the claim's `volume.kubernetes.io/selected-node` for the provisioner (local-path) — and waits until
//! every claim is Bound, as upstream's `volumebinding`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use crate::cache::{Cache, NodeInfo};
use crate::framework::{CycleState, Event, Plugin, Status, point};
use crate::plugins::node::term_matches;
use crate::pod::PodInfo;
use crate::resources::units;

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

#[derive(Debug, Default, Clone)]
pub struct State {
    /// Volumes of the pod's bound claims.
    bound: Vec<Arc<PersistentVolume>>,
    /// Unbound claims that wait for this pod's node.
    delayed: Vec<Arc<PersistentVolumeClaim>>,
    /// What Reserve decided for the chosen node.
    pub decision: Decision,
}

#[derive(Debug, Default, Clone)]
pub struct Decision {
    /// (volume, claim namespace, claim name, claim uid) to pre-bind.
    pub bind: Vec<(String, String, String, String)>,
    /// (namespace, name) of claims to hand to their provisioner.
    pub provision: Vec<(String, String)>,
    /// Volumes marked claimed in the cache: (name, as it was, as marked), to undo if binding fails.
    pub assumed: Vec<(String, Arc<PersistentVolume>, Arc<PersistentVolume>)>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.bind.is_empty() && self.provision.is_empty()
    }
}

#[derive(Debug)]
pub struct VolumeBinding;

fn volume_admits(pv: &PersistentVolume, node: &NodeInfo) -> bool {
    match pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

fn class_of(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// Whether `pv` can serve `pvc` (class, access modes, volume mode, size, selector, free or pre-bound).
fn volume_fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if let Some(r) = &vs.claim_ref
        && !(r.name.as_deref() == pvc.metadata.name.as_deref()
            && r.namespace.as_deref() == pvc.metadata.namespace.as_deref())
    {
        return false;
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Available")
        && vs.claim_ref.is_none()
    {
        return false;
    }
    if vs.storage_class_name.clone().unwrap_or_default() != class_of(pvc) {
        return false;
    }
    let modes = vs.access_modes.clone().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| modes.contains(m)) {
        return false;
    }
    if vs.volume_mode.as_deref().unwrap_or("Filesystem")
        != cs.volume_mode.as_deref().unwrap_or("Filesystem")
    {
        return false;
    }
    let size = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(|q| k3rs_common::quantity::Quantity::parse(&q.0))
            .map_or(0, |q| units(&q))
    };
    let want = size(
        cs.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    );
    let have = size(vs.capacity.as_ref().and_then(|c| c.get("storage")));
    if have < want {
        return false;
    }
    if let Some(sel) = &cs.selector {
        let labels = pv.metadata.labels.clone().unwrap_or_default();
        if !k3rs_common::selector::matches(sel, &labels) {
            return false;
        }
    }
    true
}

/// The smallest volume that serves `pvc` on `node`, not taken by `taken`.
fn find_volume<'a>(
    cache: &'a Cache,
    pvc: &PersistentVolumeClaim,
    node: &NodeInfo,
    taken: &[String],
) -> Option<&'a Arc<PersistentVolume>> {
    cache
        .volumes
        .values()
        .filter(|pv| {
            let name = pv.metadata.name.clone().unwrap_or_default();
            !taken.contains(&name) && volume_fits(pv, pvc) && volume_admits(pv, node)
        })
        .min_by_key(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .and_then(|q| k3rs_common::quantity::Quantity::parse(&q.0))
                .map_or(0, |q| units(&q))
        })
}

/// Whether the claim's class can provision a volume on `node` (a provisioner, allowed topologies).
fn can_provision(cache: &Cache, pvc: &PersistentVolumeClaim, node: &NodeInfo) -> bool {
    let Some(class) = cache.classes.get(&class_of(pvc)) else {
        return false;
    };
    if class.provisioner == NO_PROVISIONER {
        return false;
    }
    match &class.allowed_topologies {
        Some(topos) if !topos.is_empty() => topos.iter().any(|t| {
            t.match_label_expressions.iter().flatten().all(|e| {
                node.labels
                    .get(&e.key)
                    .is_some_and(|v| e.values.contains(v))
            })
        }),
        _ => true,
    }
}

/// Decides, for `node`, a volume or provisioning for each delayed claim; `None` if one has neither.
fn decide(cache: &Cache, st: &State, node: &NodeInfo) -> Option<Decision> {
    let mut d = Decision::default();
    let mut taken = Vec::new();
    for pvc in &st.delayed {
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        if let Some(pv) = find_volume(cache, pvc, node, &taken) {
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            taken.push(pv_name.clone());
            d.bind.push((
                pv_name,
                ns,
                name,
                pvc.metadata.uid.clone().unwrap_or_default(),
            ));
        } else if can_provision(cache, pvc, node) {
            d.provision.push((ns, name));
        } else {
            return None;
        }
    }
    Some(d)
}

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }
    fn points(&self) -> u32 {
        point::PRE_FILTER | point::FILTER | point::RESERVE | point::PRE_BIND
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd, Event::NodeUpdate, Event::Storage]
    }

    fn pre_filter(&self, cache: &Cache, state: &mut CycleState, pod: &PodInfo) -> Status {
        let claims = &pod.pending().claims;
        if claims.is_empty() {
            return Status::skip();
        }
        let mut st = State::default();
        for name in claims {
            let Some(pvc) = cache.claims.get(&(pod.namespace.to_string(), name.clone())) else {
                return Status::unresolvable(format!("persistentvolumeclaim \"{name}\" not found"));
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Status::unresolvable(format!(
                    "persistentvolumeclaim \"{name}\" is being deleted"
                ));
            }
            let volume = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if !volume.is_empty() {
                match cache.volumes.get(&volume) {
                    Some(pv) => st.bound.push(pv.clone()),
                    None => {
                        return Status::unresolvable(
                            "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)",
                        );
                    }
                }
                continue;
            }
            let delayed = cache
                .classes
                .get(&class_of(pvc))
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            if !delayed {
                return Status::unresolvable("pod has unbound immediate PersistentVolumeClaims");
            }
            st.delayed.push(pvc.clone());
        }
        state.volumes = Some(Box::new(st));
        Status::success()
    }

    fn filter(&self, cache: &Cache, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.volumes.as_deref() else {
            return Status::success();
        };
        if !st.bound.iter().all(|pv| volume_admits(pv, node)) {
            return Status::unresolvable("node(s) had volume node affinity conflict");
        }
        if !st.delayed.is_empty() && decide(cache, st, node).is_none() {
            return Status::unresolvable(
                "node(s) didn't find available persistent volumes to bind",
            );
        }
        Status::success()
    }
}

/// Reserve: settles the decision for the chosen node and marks the volumes it takes as claimed in the
/// cache (so the next pod does not pick them before the watch shows it).
pub fn reserve(cache: &mut Cache, state: &mut CycleState, node: &str) -> Result<(), String> {
    let Some(st) = state.volumes.as_deref_mut() else {
        return Ok(());
    };
    if st.delayed.is_empty() {
        return Ok(());
    }
    let info = cache
        .node(node)
        .ok_or_else(|| format!("node {node} is gone"))?;
    let d = decide(cache, st, info)
        .ok_or_else(|| "node(s) didn't find available persistent volumes to bind".to_string())?;
    let mut d = d;
    for (pv, ns, name, uid) in d.bind.clone() {
        if let Some(vol) = cache.volumes.get(&pv).cloned() {
            let mut v = (*vol).clone();
            if let Some(spec) = v.spec.as_mut() {
                spec.claim_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("PersistentVolumeClaim".into()),
                    api_version: Some("v1".into()),
                    namespace: Some(ns),
                    name: Some(name),
                    uid: Some(uid),
                    ..Default::default()
                });
            }
            let marked = Arc::new(v);
            cache.volumes.insert(pv.clone(), marked.clone());
            d.assumed.push((pv, vol, marked));
        }
    }
    st.decision = d;
    Ok(())
}

/// Unreserve: volumes marked claimed for a pod whose binding failed are free again in the cache,
/// unless the watch has shown them changed since.
pub fn unreserve(cache: &mut Cache, d: &Decision) {
    for (name, before, marked) in &d.assumed {
        if cache
            .volumes
            .get(name)
            .is_some_and(|now| Arc::ptr_eq(now, marked))
        {
            cache.volumes.insert(name.clone(), before.clone());
        }
    }
}

/// Whether every claim of the pod is Bound, per the cache (for PreBind's wait); `Err` when a claim is
/// gone or its provisioning was given up (the selected node was taken back).
pub fn all_bound(
    cache: &Cache,
    namespace: &str,
    claims: &[String],
    provisioned: &[(String, String)],
) -> Result<bool, String> {
    for name in claims {
        let Some(pvc) = cache.claims.get(&(namespace.to_string(), name.clone())) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            && pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|v| !v.is_empty());
        if !bound {
            let waiting_provisioner = provisioned
                .iter()
                .any(|(ns, n)| ns == namespace && n == name);
            if waiting_provisioner
                && !pvc
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(SELECTED_NODE))
            {
                return Err(format!(
                    "provisioning of persistentvolumeclaim \"{name}\" was given up"
                ));
            }
            return Ok(false);
        }
    }
    Ok(true)
}
