//! The in-tree plugins, upstream's default set and weights, and building a plugin from its name and
//! `pluginConfig` arguments.

pub mod fit;
pub mod images;
pub mod inter_pod;
pub mod node;
pub mod spread;
pub mod volume;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::framework::Plugin;

/// Upstream's default plugins (multiPoint, in order) with their score weights.
pub const DEFAULTS: &[(&str, i64)] = &[
    ("SchedulingGates", 0),
    ("PrioritySort", 0),
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodePorts", 0),
    ("NodeResourcesFit", 1),
    ("VolumeBinding", 0),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    ("DefaultPreemption", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("DefaultBinder", 0),
];

/// Upstream plugins this scheduler does not implement (naming them to disable is fine).
pub const NOT_IMPLEMENTED: &[&str] = &[
    "VolumeRestrictions",
    "NodeVolumeLimits",
    "VolumeZone",
    "DynamicResources",
];

/// Plugins that are built into the framework rather than objects: gates, queue order, preemption and
/// binding.
pub const BUILTIN: &[&str] = &[
    "SchedulingGates",
    "PrioritySort",
    "DefaultPreemption",
    "DefaultBinder",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FitArgs {
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "kind")]
    _kind: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    ignored_resources: Vec<String>,
    #[serde(default)]
    ignored_resource_groups: Vec<String>,
    scoring_strategy: Option<ScoringStrategy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScoringStrategy {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
    requested_to_capacity_ratio: Option<Ratio>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResourceSpec {
    name: String,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Ratio {
    shape: Vec<ShapePoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ShapePoint {
    utilization: i64,
    score: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BalancedArgs {
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "kind")]
    _kind: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpreadArgs {
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "kind")]
    _kind: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    default_constraints: Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>,
    defaulting_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InterPodArgs {
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "kind")]
    _kind: Option<serde::de::IgnoredAny>,
    hard_pod_affinity_weight: Option<i64>,
    #[serde(default)]
    ignore_preferred_terms_of_existing_pods: bool,
}

fn parse<T: for<'de> Deserialize<'de>>(
    name: &str,
    args: Option<&Value>,
) -> Result<Option<T>, String> {
    args.map(|a| serde_json::from_value(a.clone()))
        .transpose()
        .map_err(|e| format!("pluginConfig {name}: {e}"))
}

fn resources(list: Vec<ResourceSpec>) -> Vec<(String, i64)> {
    if list.is_empty() {
        return fit::default_resources();
    }
    list.into_iter()
        .map(|r| (r.name, r.weight.unwrap_or(1).max(1)))
        .collect()
}

/// Builds the plugin `name` with its `pluginConfig` arguments (`None`: defaults). Built-in ones yield
/// `Ok(None)`.
pub fn build(name: &str, args: Option<&Value>) -> Result<Option<Arc<dyn Plugin>>, String> {
    let plugin: Arc<dyn Plugin> = match name {
        "NodeUnschedulable" => Arc::new(node::NodeUnschedulable),
        "NodeName" => Arc::new(node::NodeName),
        "TaintToleration" => Arc::new(node::TaintToleration),
        "NodeAffinity" => Arc::new(node::NodeAffinity),
        "NodePorts" => Arc::new(node::NodePorts),
        "ImageLocality" => Arc::new(images::ImageLocality),
        "VolumeBinding" => Arc::new(volume::VolumeBinding),
        "NodeResourcesFit" => {
            let mut f = fit::Fit::default();
            if let Some(a) = parse::<FitArgs>(name, args)? {
                f.ignored = a.ignored_resources.clone();
                f.ignored_groups = a.ignored_resource_groups.clone();
            }
            if let Some(a) = parse::<FitArgs>(name, args)?
                && let Some(s) = a.scoring_strategy
            {
                f.resources = resources(s.resources);
                f.strategy = match s.type_.as_deref().unwrap_or("LeastAllocated") {
                    "LeastAllocated" => fit::Strategy::LeastAllocated,
                    "MostAllocated" => fit::Strategy::MostAllocated,
                    "RequestedToCapacityRatio" => {
                        let shape = s
                            .requested_to_capacity_ratio
                            .ok_or("pluginConfig NodeResourcesFit: scoringStrategy.requestedToCapacityRatio: Required value")?
                            .shape;
                        if shape.is_empty() {
                            return Err("pluginConfig NodeResourcesFit: scoringStrategy.requestedToCapacityRatio.shape: Required value".into());
                        }
                        fit::Strategy::RequestedToCapacityRatio(
                            shape
                                .into_iter()
                                .map(|p| (p.utilization, p.score))
                                .collect(),
                        )
                    }
                    other => {
                        return Err(format!(
                            "pluginConfig NodeResourcesFit: scoringStrategy.type: Unsupported value: \"{other}\": supported values: \"LeastAllocated\", \"MostAllocated\", \"RequestedToCapacityRatio\""
                        ));
                    }
                };
            }
            Arc::new(f)
        }
        "NodeResourcesBalancedAllocation" => {
            let mut b = fit::Balanced::default();
            if let Some(a) = parse::<BalancedArgs>(name, args)? {
                b.resources = resources(a.resources);
            }
            Arc::new(b)
        }
        "PodTopologySpread" => {
            let mut p = spread::PodTopologySpread::default();
            if let Some(a) = parse::<SpreadArgs>(name, args)? {
                p.defaults = match a.defaulting_type.as_deref().unwrap_or("System") {
                    "System" if !a.default_constraints.is_empty() => {
                        return Err("pluginConfig PodTopologySpread: defaultConstraints: Invalid value: when .defaultingType is \"System\", .defaultConstraints must be empty".into());
                    }
                    "System" => spread::Defaults::System,
                    "List" => spread::Defaults::List(a.default_constraints),
                    other => {
                        return Err(format!(
                            "pluginConfig PodTopologySpread: defaultingType: Unsupported value: \"{other}\": supported values: \"System\", \"List\""
                        ));
                    }
                };
            }
            Arc::new(p)
        }
        "InterPodAffinity" => {
            let mut p = inter_pod::InterPodAffinity::default();
            let a = parse::<InterPodArgs>(name, args)?;
            p.ignore_existing_preferred = a
                .as_ref()
                .is_some_and(|a| a.ignore_preferred_terms_of_existing_pods);
            if let Some(w) = a.and_then(|a| a.hard_pod_affinity_weight) {
                if !(0..=100).contains(&w) {
                    return Err(format!(
                        "pluginConfig InterPodAffinity: hardPodAffinityWeight: Invalid value: {w}: not in valid range [0-100]"
                    ));
                }
                p.hard_weight = w;
            }
            Arc::new(p)
        }
        n if BUILTIN.contains(&n) => return Ok(None),
        n if NOT_IMPLEMENTED.contains(&n) => {
            return Err(format!(
                "plugin \"{n}\" is not implemented by k3rs-scheduler"
            ));
        }
        n => return Err(format!("plugin \"{n}\" does not exist")),
    };
    Ok(Some(plugin))
}
