//! The scheduler's view of the cluster, as upstream's `internal/cache`: every node with the pods on it
//! and what they request, fed by the watches, plus pods this scheduler has placed but whose binding the
//! watch has not confirmed yet ("assumed"), so a burst never waits for watch echoes. Storage objects,
//! namespaces' labels and the workloads whose selectors drive default spreading sit beside it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Taint};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::pod::{HostPort, PodInfo};
use crate::resources::Resources;

/// A node and what runs on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    /// Images the node reports: normalized name → size in bytes.
    pub images: HashMap<String, i64>,
    pub pods: Vec<Arc<PodInfo>>,
    pub requested: Resources,
    /// Requests counting upstream's defaults for pods that ask for nothing (scoring).
    pub non_zero: (i64, i64),
    pub ports: Vec<HostPort>,
    /// Pods here with any pod (anti-)affinity, and those with required anti-affinity.
    pub with_affinity: usize,
    pub with_required_anti: usize,
}

impl NodeInfo {
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable: Resources::default(),
            images: HashMap::new(),
            pods: Vec::new(),
            requested: Resources::default(),
            non_zero: (0, 0),
            ports: Vec::new(),
            with_affinity: 0,
            with_required_anti: 0,
        }
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero.0 = self.non_zero.0.saturating_add(pod.non_zero.0);
        self.non_zero.1 = self.non_zero.1.saturating_add(pod.non_zero.1);
        self.ports.extend(pod.host_ports.iter().cloned());
        if pod.has_affinity() {
            self.with_affinity += 1;
        }
        if pod.has_required_anti() {
            self.with_required_anti += 1;
        }
        self.pods.push(pod);
    }

    /// Takes the pod with `uid` off this node; whether it was here.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| &*p.uid == uid)?;
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero.0 = self.non_zero.0.saturating_sub(pod.non_zero.0);
        self.non_zero.1 = self.non_zero.1.saturating_sub(pod.non_zero.1);
        for hp in &pod.host_ports {
            if let Some(j) = self.ports.iter().position(|p| p == hp) {
                self.ports.swap_remove(j);
            }
        }
        if pod.has_affinity() {
            self.with_affinity -= 1;
        }
        if pod.has_required_anti() {
            self.with_required_anti -= 1;
        }
        Some(pod)
    }

    /// The pod count as the `pods` resource counts it.
    pub fn pod_count(&self) -> i64 {
        self.pods.len() as i64
    }
}

/// Where a cached pod stands.
#[derive(Debug, Clone)]
struct Placed {
    node: Arc<str>,
    /// Placed by this scheduler; the watch has not shown the binding yet.
    assumed: bool,
}

/// A workload or Service whose selector default spreading reads.
#[derive(Debug, Clone)]
pub struct Selecting {
    pub namespace: String,
    pub selector: LabelSelector,
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: HashMap<Arc<str>, NodeInfo>,
    /// Node names in the order filtering walks them (zones interleaved, as upstream's node tree).
    order: Vec<Arc<str>>,
    order_dirty: bool,
    pods: HashMap<Arc<str>, Placed>,
    /// Pods bound (per the watch) to nodes the cache does not know yet.
    orphans: HashMap<Arc<str>, Vec<Arc<PodInfo>>>,
    /// How many nodes have each image (ImageLocality's spread factor).
    image_nodes: HashMap<String, usize>,
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    pub claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    pub volumes: HashMap<String, Arc<PersistentVolume>>,
    pub classes: HashMap<String, Arc<StorageClass>>,
    /// Services, ReplicationControllers, ReplicaSets and StatefulSets by (kind, namespace, name).
    pub selecting: HashMap<(&'static str, String, String), Selecting>,
    /// PodDisruptionBudgets by (namespace, name): selector and `status.disruptionsAllowed` (preemption
    /// prefers victims whose eviction breaks none).
    pub budgets: HashMap<(String, String), (LabelSelector, i32)>,
    /// Pending pods nominated to a node by preemption: node → pods.
    pub nominated: HashMap<Arc<str>, Vec<Arc<PodInfo>>>,
    /// Where the last search stopped (upstream's `nextStartNodeIndex`).
    pub next_start: usize,
}

impl Cache {
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// Every node, in search order.
    pub fn node_list(&mut self) -> Vec<&NodeInfo> {
        self.refresh_order();
        self.order
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .collect()
    }

    /// Node names in search order (call [`Cache::refresh_order`] first).
    pub fn ordered_names(&self) -> &[Arc<str>] {
        &self.order
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn refresh_order(&mut self) {
        if !self.order_dirty {
            return;
        }
        // Zones in turn, as upstream's nodeTree: one node of each zone, then the next of each.
        let mut zones: BTreeMap<String, Vec<Arc<str>>> = BTreeMap::new();
        let mut names: Vec<&Arc<str>> = self.nodes.keys().collect();
        names.sort();
        for n in names {
            let labels = &self.nodes[n].labels;
            let zone = format!(
                "{}:\u{0}:{}",
                labels
                    .get("topology.kubernetes.io/region")
                    .map_or("", String::as_str),
                labels
                    .get("topology.kubernetes.io/zone")
                    .map_or("", String::as_str)
            );
            zones.entry(zone).or_default().push(n.clone());
        }
        let lists: Vec<Vec<Arc<str>>> = zones.into_values().collect();
        let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
        self.order.clear();
        for i in 0..longest {
            for l in &lists {
                if let Some(n) = l.get(i) {
                    self.order.push(n.clone());
                }
            }
        }
        self.order_dirty = false;
    }

    /// Adds or updates a node from its API object.
    pub fn set_node(&mut self, node: &k8s_openapi::api::core::v1::Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let name: Arc<str> = name.into();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let alloc_src = status.allocatable.or(status.capacity).unwrap_or_default();
        let alloc: BTreeMap<String, String> =
            alloc_src.into_iter().map(|(k, v)| (k, v.0)).collect();
        let mut images = HashMap::new();
        for img in status.images.iter().flatten() {
            for n in img.names.iter().flatten() {
                images.insert(crate::pod::normalize_image(n), img.size_bytes.unwrap_or(0));
            }
        }
        let is_new = !self.nodes.contains_key(&name);
        let entry = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| NodeInfo::new(name.clone()));
        if entry.labels != labels {
            self.order_dirty = true;
        }
        entry.labels = labels;
        entry.taints = spec.taints.unwrap_or_default();
        entry.unschedulable = spec.unschedulable.unwrap_or(false);
        entry.allocatable = Resources::from_list(alloc.iter());
        if entry.images != images {
            for old in entry.images.keys() {
                if let Some(c) = self.image_nodes.get_mut(old) {
                    *c = c.saturating_sub(1);
                }
            }
            for new in images.keys() {
                *self.image_nodes.entry(new.clone()).or_default() += 1;
            }
            self.image_nodes.retain(|_, c| *c > 0);
            entry.images = images;
        }
        if is_new {
            self.order_dirty = true;
            if let Some(pods) = self.orphans.remove(&name) {
                for p in pods {
                    entry.add_pod(p);
                }
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.remove(name) {
            for img in n.images.keys() {
                if let Some(c) = self.image_nodes.get_mut(img) {
                    *c = c.saturating_sub(1);
                }
            }
            self.image_nodes.retain(|_, c| *c > 0);
            // Its pods stay known until the watch deletes them (as upstream's cache keeps them).
            if !n.pods.is_empty() {
                self.orphans.insert(n.name.clone(), n.pods);
            }
            self.order_dirty = true;
        }
    }

    /// Nodes that report `image`.
    pub fn image_node_count(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    /// Whether the pod is placed (assumed or bound) in the cache.
    pub fn is_placed(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: &Arc<str>) {
        match self.nodes.get_mut(node) {
            Some(n) => n.add_pod(pod),
            None => self.orphans.entry(node.clone()).or_default().push(pod),
        }
    }

    fn unplace(&mut self, uid: &str, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.remove_pod(uid);
        } else if let Some(list) = self.orphans.get_mut(node) {
            list.retain(|p| &*p.uid != uid);
            if list.is_empty() {
                self.orphans.remove(node);
            }
        }
    }

    /// Puts a pod this scheduler chose a node for on that node before the binding is written.
    pub fn assume(&mut self, pod: &PodInfo, node: &Arc<str>) {
        let mut bound = pod.bound_form();
        bound.node_name = Some(node.clone());
        let uid = bound.uid.clone();
        self.place(Arc::new(bound), node);
        self.pods.insert(
            uid,
            Placed {
                node: node.clone(),
                assumed: true,
            },
        );
    }

    /// Takes back an assumed pod whose binding failed.
    pub fn forget(&mut self, uid: &str) {
        if let Some(p) = self.pods.get(uid)
            && p.assumed
        {
            let node = p.node.clone();
            self.pods.remove(uid);
            self.unplace(uid, &node);
        }
    }

    /// A bound pod as the watch shows it (added, changed, or the echo of an assumed binding); whether
    /// anything placement reads of it changed.
    pub fn set_bound_pod(&mut self, pod: &PodInfo) -> bool {
        let Some(node) = pod.node_name.clone() else {
            return false;
        };
        let uid = pod.uid.clone();
        let new = Arc::new(pod.bound_form());
        let mut changed = true;
        if let Some(old) = self.pods.get(&uid).cloned() {
            let before = self
                .nodes
                .get(&old.node)
                .and_then(|n| n.pods.iter().find(|p| p.uid == uid).cloned());
            changed = old.node != node || before.is_none_or(|b| *b != *new);
            self.unplace(&uid, &old.node);
        }
        self.place(new, &node);
        self.pods.insert(
            uid,
            Placed {
                node,
                assumed: false,
            },
        );
        changed
    }

    /// A pod that is gone (deleted, finished); whether it held a place.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        match self.pods.remove(uid) {
            Some(p) => {
                self.unplace(uid, &p.node);
                true
            }
            None => false,
        }
    }

    /// Bound pods the cache holds that are not in `seen` (after a relist): they are gone.
    pub fn retain_bound(&mut self, seen: &std::collections::HashSet<Arc<str>>) {
        let gone: Vec<Arc<str>> = self
            .pods
            .iter()
            .filter(|(uid, p)| !p.assumed && !seen.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.remove_pod(&uid);
        }
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Records (or with `None` clears) a pending pod's nomination.
    pub fn nominate(&mut self, pod: &Arc<PodInfo>, node: Option<Arc<str>>) {
        self.clear_nomination(&pod.uid);
        if let Some(n) = node {
            self.nominated.entry(n).or_default().push(pod.clone());
        }
    }

    /// Forgets a pod's nomination (bound, assumed, gone, or preemption gave it up).
    pub fn clear_nomination(&mut self, uid: &str) {
        for list in self.nominated.values_mut() {
            list.retain(|p| &*p.uid != uid);
        }
        self.nominated.retain(|_, l| !l.is_empty());
    }

    /// The node a pending pod is nominated to.
    pub fn nominated_node(&self, uid: &str) -> Option<Arc<str>> {
        self.nominated
            .iter()
            .find(|(_, l)| l.iter().any(|p| &*p.uid == uid))
            .map(|(n, _)| n.clone())
    }

    /// Label selectors of the Services and controllers that select `pod` (upstream's
    /// `helper.DefaultSelector`): default spreading counts the pods they also select.
    pub fn default_selectors(&self, pod: &PodInfo) -> Vec<&LabelSelector> {
        let mut out = Vec::new();
        for ((kind, ns, name), s) in &self.selecting {
            if ns.as_str() != &*pod.namespace {
                continue;
            }
            let applies = if *kind == "Service" {
                k3rs_common::selector::matches(&s.selector, &pod.labels)
            } else {
                pod.controller
                    .as_ref()
                    .is_some_and(|(k, n)| &**k == *kind && &**n == name.as_str())
            };
            if applies {
                out.push(&s.selector);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::WirePod;
    use serde_json::json;

    fn pod(uid: &str, cpu: &str) -> PodInfo {
        let w: WirePod = serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
        .unwrap();
        w.info()
    }

    fn node(name: &str) -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}}))
        .unwrap()
    }

    #[test]
    fn assumed_pods_count_until_forgotten_or_confirmed() {
        let mut c = Cache::default();
        c.set_node(&node("n1"));
        let n1: Arc<str> = "n1".into();
        let p = pod("a", "500m");
        c.assume(&p, &n1);
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 500);
        assert!(c.is_assumed("a"));
        c.forget("a");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        c.assume(&p, &n1);
        let mut bound = p.clone();
        bound.node_name = Some(n1.clone());
        c.set_bound_pod(&bound);
        assert!(!c.is_assumed("a"));
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        assert!(c.remove_pod("a"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn pods_on_unknown_nodes_wait_for_the_node() {
        let mut c = Cache::default();
        let mut p = pod("a", "1");
        p.node_name = Some("late".into());
        c.set_bound_pod(&p);
        c.set_node(&node("late"));
        assert_eq!(c.node("late").unwrap().requested.milli_cpu, 1000);
    }

    #[test]
    fn search_order_takes_zones_in_turn() {
        let mut c = Cache::default();
        for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            let mut node = node(n);
            node.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("topology.kubernetes.io/zone".into(), z.into());
            c.set_node(&node);
        }
        let names: Vec<String> = c.node_list().iter().map(|n| n.name.to_string()).collect();
        assert_eq!(names, ["a1", "b1", "a2"]);
    }
}
