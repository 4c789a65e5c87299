//! The pod as the controllers cache it: decoded straight from the API's JSON with only the fields a
//! controller reads (metadata, the scheduling and identity part of the spec, the containers that name
//! ports, the claims its volumes use, the whole status), so 10,000 cached pods cost a fraction of `k8s_openapi`'s `Pod` (whose spec
//! alone is 1.4 KB and each container 2 KB, however empty) and no full pod is ever built to be thrown away.
//! It cannot be serialized: a controller never writes a cached pod back, only patches the fields it owns
//! (pods are created from templates as `k8s_openapi` pods).

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{NodeAffinity, PodStatus, Toleration};
use kube::api::ObjectMeta;
use serde::Deserialize;

/// A whole pod, as controllers create them.
pub use k8s_openapi::api::core::v1::Pod as NewPod;

/// A cached pod (`v1` `Pod`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

/// What controllers read of a pod's spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    pub tolerations: Option<Vec<Toleration>>,
    pub affinity: Option<Affinity>,
    pub restart_policy: Option<String>,
    pub host_network: Option<bool>,
    /// Only the containers that name ports (Services' named target ports resolve against them).
    #[serde(default, deserialize_with = "named_port_containers")]
    pub containers: Vec<Container>,
    /// Only the volumes that are claims.
    #[serde(default, rename = "volumes", deserialize_with = "claim_volumes")]
    pub claims: Vec<ClaimVolume>,
}

/// A volume backed by a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimVolume {
    /// `persistentVolumeClaim.claimName`.
    Named(String),
    /// An ephemeral volume (by volume name): its claim is `<pod>-<volume>`.
    Ephemeral(String),
}

impl Pod {
    /// The names of the claims the pod's volumes use.
    pub fn claim_names(&self) -> Vec<String> {
        let pod = self.metadata.name.as_deref().unwrap_or("");
        self.spec
            .iter()
            .flat_map(|s| s.claims.iter())
            .map(|c| match c {
                ClaimVolume::Named(n) => n.clone(),
                ClaimVolume::Ephemeral(v) => format!("{pod}-{v}"),
            })
            .collect()
    }
}

fn claim_volumes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ClaimVolume>, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Claim {
        claim_name: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Volume {
        #[serde(default)]
        name: String,
        persistent_volume_claim: Option<Claim>,
        ephemeral: Option<serde::de::IgnoredAny>,
    }
    let all: Option<Vec<Volume>> = Option::deserialize(d)?;
    Ok(all
        .into_iter()
        .flatten()
        .filter_map(|v| match (v.persistent_volume_claim, v.ephemeral) {
            (Some(c), _) => Some(ClaimVolume::Named(c.claim_name)),
            (None, Some(_)) => Some(ClaimVolume::Ephemeral(v.name)),
            _ => None,
        })
        .collect())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    pub name: String,
    pub ports: Vec<ContainerPort>,
}

/// A named container port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: String,
    pub container_port: i32,
    pub protocol: Option<String>,
}

fn named_port_containers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Container>, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Port {
        name: Option<String>,
        container_port: i32,
        protocol: Option<String>,
    }
    #[derive(Deserialize)]
    struct Full {
        #[serde(default)]
        name: String,
        #[serde(default)]
        ports: Option<Vec<Port>>,
    }
    let all: Option<Vec<Full>> = Option::deserialize(d)?;
    Ok(all
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let ports: Vec<ContainerPort> = c
                .ports
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some(ContainerPort {
                        name: p.name.filter(|n| !n.is_empty())?,
                        container_port: p.container_port,
                        protocol: p.protocol,
                    })
                })
                .collect();
            (!ports.is_empty()).then_some(Container {
                name: c.name,
                ports,
            })
        })
        .collect())
}

impl kube::Resource for Pod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_controllers_read() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "restartPolicy": "Never",
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "volumes": [{"name": "v", "emptyDir": {}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}],
                "containers": [
                    {"name": "plain", "image": "busybox", "ports": [{"containerPort": 80}]},
                    {"name": "web", "image": "nginx", "env": [{"name": "A", "value": "b"}],
                     "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9}]}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5"}}))
        .unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, "web");
        assert_eq!(spec.containers[0].ports[0].name, "http");
        assert_eq!(spec.containers[0].ports.len(), 1);
        assert_eq!(pod.claim_names(), ["data", "p-scratch"]);
        assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some("10.42.0.5"));
    }
}
