//! The scheduler's configuration: a `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1) file,
//! decoded strictly as upstream does (unknown fields are errors), turned into one `Profile` per
//! `schedulerName` with plugins enabled and disabled per extension point and their weights and args.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k3rs_common::leader;
use serde::Deserialize;
use serde_json::Value;

use crate::framework::{Plugin, Profile, point};
use crate::plugins;

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Parses a Go duration (`15s`, `1m30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub leader_elect: bool,
    pub settings: leader::Settings,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    pub health_bind_address: Option<SocketAddr>,
    pub leader_election: LeaderElection,
    pub profiles: Vec<Profile>,
    /// `podInitialBackoffSeconds` and `podMaxBackoffSeconds`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bindings written at once at most.
    pub parallel_bindings: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            health_bind_address: None,
            leader_election: LeaderElection {
                leader_elect: true,
                settings: leader::Settings::scheduler(),
            },
            profiles: vec![
                profile(
                    &ProfileFile {
                        scheduler_name: Some(DEFAULT_SCHEDULER.into()),
                        ..Default::default()
                    },
                    0,
                )
                .expect("the default profile builds"),
            ],
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            parallel_bindings: 32,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    /// Accepted for compatibility: one attempt runs at a time here, on purpose.
    #[serde(rename = "parallelism")]
    _parallelism: Option<serde::de::IgnoredAny>,
    leader_election: Option<LeaderElectionFile>,
    client_connection: Option<ClientConnection>,
    #[serde(rename = "enableProfiling")]
    _enable_profiling: Option<serde::de::IgnoredAny>,
    #[serde(rename = "enableContentionProfiling")]
    _enable_contention_profiling: Option<serde::de::IgnoredAny>,
    percentage_of_nodes_to_score: Option<i32>,
    pod_initial_backoff_seconds: Option<u64>,
    pod_max_backoff_seconds: Option<u64>,
    #[serde(default)]
    profiles: Vec<ProfileFile>,
    #[serde(default)]
    extenders: Vec<Value>,
    /// Caches always start only once leading here.
    #[serde(rename = "delayCacheUntilActive")]
    _delay_cache_until_active: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaderElectionFile {
    leader_elect: Option<bool>,
    lease_duration: Option<String>,
    renew_deadline: Option<String>,
    retry_period: Option<String>,
    resource_lock: Option<String>,
    resource_name: Option<String>,
    resource_namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientConnection {
    kubeconfig: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFile {
    scheduler_name: Option<String>,
    percentage_of_nodes_to_score: Option<i32>,
    plugins: Option<PluginsFile>,
    #[serde(default)]
    plugin_config: Vec<PluginConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PluginsFile {
    pre_enqueue: Option<PluginSet>,
    queue_sort: Option<PluginSet>,
    pre_filter: Option<PluginSet>,
    filter: Option<PluginSet>,
    post_filter: Option<PluginSet>,
    pre_score: Option<PluginSet>,
    score: Option<PluginSet>,
    reserve: Option<PluginSet>,
    permit: Option<PluginSet>,
    pre_bind: Option<PluginSet>,
    bind: Option<PluginSet>,
    post_bind: Option<PluginSet>,
    multi_point: Option<PluginSet>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PluginSet {
    #[serde(default)]
    enabled: Vec<PluginRef>,
    #[serde(default)]
    disabled: Vec<PluginRef>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PluginRef {
    name: String,
    weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginConfig {
    name: String,
    args: Option<Value>,
}

/// Plugins enabled at one extension point, in order, with weights.
type Enabled = Vec<(String, i64)>;

fn apply(list: &mut Enabled, set: Option<&PluginSet>, default_weight: impl Fn(&str) -> i64) {
    let Some(set) = set else {
        return;
    };
    for d in &set.disabled {
        if d.name == "*" {
            list.clear();
        } else {
            list.retain(|(n, _)| *n != d.name);
        }
    }
    for e in &set.enabled {
        let w = e.weight.unwrap_or_else(|| default_weight(&e.name));
        match list.iter_mut().find(|(n, _)| *n == e.name) {
            Some(slot) => slot.1 = w,
            None => list.push((e.name.clone(), w)),
        }
    }
}

fn default_weight(name: &str) -> i64 {
    plugins::DEFAULTS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(1, |(_, w)| (*w).max(1))
}

fn profile(p: &ProfileFile, global_percentage: i32) -> Result<Profile, String> {
    let name = p
        .scheduler_name
        .clone()
        .unwrap_or_else(|| DEFAULT_SCHEDULER.into());
    let args: HashMap<&str, &Value> = p
        .plugin_config
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.args.as_ref()?)))
        .collect();
    let plugins_file = p.plugins.as_ref();
    let mut multi: Enabled = plugins::DEFAULTS
        .iter()
        .map(|(n, w)| (n.to_string(), *w))
        .collect();
    apply(
        &mut multi,
        plugins_file.and_then(|f| f.multi_point.as_ref()),
        default_weight,
    );
    // Build each named plugin once.
    let mut built: HashMap<String, Option<Arc<dyn Plugin>>> = HashMap::new();
    let mut get = |n: &str| -> Result<Option<Arc<dyn Plugin>>, String> {
        if let Some(p) = built.get(n) {
            return Ok(p.clone());
        }
        let p = plugins::build(n, args.get(n).copied())?;
        built.insert(n.to_string(), p.clone());
        Ok(p)
    };
    for (n, _) in &multi {
        get(n)?;
    }
    // Per extension point: what multiPoint gives that point, then that point's own set.
    let mut at = |bit: u32, set: Option<&PluginSet>, builtin: &[&str]| -> Result<Enabled, String> {
        let mut list: Enabled = Vec::new();
        for (n, w) in &multi {
            let implements = match get(n)? {
                Some(p) => p.points() & bit != 0,
                None => builtin.contains(&n.as_str()),
            };
            if implements {
                list.push((n.clone(), *w));
            }
        }
        apply(&mut list, set, default_weight);
        for (n, _) in &list {
            get(n)?;
        }
        Ok(list)
    };
    let f = |sel: fn(&PluginsFile) -> Option<&PluginSet>| plugins_file.and_then(sel);
    let pre_filter = at(point::PRE_FILTER, f(|p| p.pre_filter.as_ref()), &[])?;
    let filter = at(point::FILTER, f(|p| p.filter.as_ref()), &[])?;
    let post_filter = at(
        point::POST_FILTER,
        f(|p| p.post_filter.as_ref()),
        &["DefaultPreemption"],
    )?;
    let pre_score = at(point::PRE_SCORE, f(|p| p.pre_score.as_ref()), &[])?;
    let score = at(point::SCORE, f(|p| p.score.as_ref()), &[])?;
    let reserve = at(point::RESERVE, f(|p| p.reserve.as_ref()), &[])?;
    let pre_bind = at(point::PRE_BIND, f(|p| p.pre_bind.as_ref()), &[])?;
    let bind = at(point::BIND, f(|p| p.bind.as_ref()), &["DefaultBinder"])?;
    let queue_sort = at(
        point::QUEUE_SORT,
        f(|p| p.queue_sort.as_ref()),
        &["PrioritySort"],
    )?;
    let pre_enqueue = at(
        point::PRE_ENQUEUE,
        f(|p| p.pre_enqueue.as_ref()),
        &["SchedulingGates"],
    )?;
    if queue_sort.iter().any(|(n, _)| n != "PrioritySort") || queue_sort.is_empty() {
        return Err("queueSort: only PrioritySort is supported".into());
    }
    if let Some((n, _)) = pre_enqueue.iter().find(|(n, _)| n != "SchedulingGates") {
        return Err(format!("plugin \"{n}\" does not exist"));
    }
    for set in [f(|p| p.permit.as_ref()), f(|p| p.post_bind.as_ref())]
        .into_iter()
        .flatten()
    {
        if let Some(e) = set.enabled.first() {
            return Err(format!("plugin \"{}\" does not exist", e.name));
        }
    }
    if bind.is_empty() {
        return Err(format!(
            "profile \"{name}\": at least one bind plugin is needed"
        ));
    }
    let objects = |list: &Enabled| -> Vec<Arc<dyn Plugin>> {
        list.iter()
            .filter_map(|(n, _)| built.get(n).cloned().flatten())
            .collect()
    };
    let score_list: Vec<(Arc<dyn Plugin>, i64)> = score
        .iter()
        .filter_map(|(n, w)| Some((built.get(n).cloned().flatten()?, (*w).max(1))))
        .collect();
    Ok(Profile {
        scheduler_name: name,
        pre_filter: objects(&pre_filter),
        filter: objects(&filter),
        pre_score: objects(&pre_score),
        score: score_list,
        preemption: post_filter.iter().any(|(n, _)| n == "DefaultPreemption"),
        volume_binding: reserve.iter().any(|(n, _)| n == "VolumeBinding")
            && pre_bind.iter().any(|(n, _)| n == "VolumeBinding"),
        percentage_of_nodes_to_score: p.percentage_of_nodes_to_score.unwrap_or(global_percentage),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding {path}: {message}")]
    Decode { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads a `KubeSchedulerConfiguration` file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        match (file.api_version.as_deref(), file.kind.as_deref()) {
            (Some("kubescheduler.config.k8s.io/v1"), Some("KubeSchedulerConfiguration")) => {}
            (v, k) => {
                return Err(format!(
                    "no kind \"{}\" is registered for version \"{}\" (want kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration)",
                    k.unwrap_or(""),
                    v.unwrap_or("")
                ));
            }
        }
        if !file.extenders.is_empty() {
            return Err("extenders are not supported by k3rs-scheduler".into());
        }
        let mut c = Config::default();
        if let Some(path) = file
            .client_connection
            .and_then(|c| c.kubeconfig)
            .filter(|p| !p.is_empty())
        {
            c.kubeconfig = Some(path.into());
        }
        let pct = file.percentage_of_nodes_to_score.unwrap_or(0);
        if !(0..=100).contains(&pct) {
            return Err(format!(
                "percentageOfNodesToScore: Invalid value: {pct}: not in valid range [0-100]"
            ));
        }
        if let Some(le) = file.leader_election {
            if let Some(lock) = le.resource_lock.as_deref().filter(|l| *l != "leases") {
                return Err(format!(
                    "leaderElection.resourceLock: Unsupported value: \"{lock}\": supported values: \"leases\""
                ));
            }
            let l = &mut c.leader_election;
            if let Some(on) = le.leader_elect {
                l.leader_elect = on;
            }
            for (field, v, slot) in [
                (
                    "leaseDuration",
                    le.lease_duration,
                    &mut l.settings.lease_duration,
                ),
                (
                    "renewDeadline",
                    le.renew_deadline,
                    &mut l.settings.renew_deadline,
                ),
                ("retryPeriod", le.retry_period, &mut l.settings.retry_period),
            ] {
                if let Some(v) = v {
                    *slot =
                        parse_duration(&v).map_err(|e| format!("leaderElection.{field}: {e}"))?;
                }
            }
            if let Some(n) = le.resource_name {
                l.settings.name = n;
            }
            if let Some(n) = le.resource_namespace {
                l.settings.namespace = n;
            }
        }
        if let Some(s) = file.pod_initial_backoff_seconds {
            c.initial_backoff = Duration::from_secs(s.max(1));
        }
        if let Some(s) = file.pod_max_backoff_seconds {
            c.max_backoff = Duration::from_secs(s);
        }
        if c.max_backoff < c.initial_backoff {
            return Err("podMaxBackoffSeconds: Invalid value: must be greater than or equal to PodInitialBackoffSeconds".into());
        }
        let files = if file.profiles.is_empty() {
            vec![ProfileFile::default()]
        } else {
            file.profiles
        };
        c.profiles.clear();
        for (i, p) in files.iter().enumerate() {
            let built = profile(p, pct).map_err(|e| format!("profiles[{i}]: {e}"))?;
            if c.profiles
                .iter()
                .any(|q| q.scheduler_name == built.scheduler_name)
            {
                return Err(format!(
                    "profiles[{i}].schedulerName: Duplicate value: \"{}\"",
                    built.scheduler_name
                ));
            }
            c.profiles.push(built);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn default_profile_has_upstreams_plugins() {
        let c = Config::default();
        let p = &c.profiles[0];
        let filters: Vec<&str> = p.filter.iter().map(|p| p.name()).collect();
        assert_eq!(
            filters,
            [
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "VolumeBinding",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        let weights: Vec<(&str, i64)> = p.score.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert!(weights.contains(&("TaintToleration", 3)));
        assert!(weights.contains(&("InterPodAffinity", 2)));
        assert!(p.preemption && p.volume_binding);
    }

    #[test]
    fn profiles_enable_disable_and_configure() {
        let c = Config::from_yaml(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    multiPoint:
      disabled: [{name: PodTopologySpread}]
    score:
      enabled: [{name: ImageLocality, weight: 5}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy: {type: MostAllocated}
"#,
        )
        .unwrap();
        assert_eq!(c.profiles.len(), 2);
        let p = &c.profiles[1];
        assert!(p.filter.iter().all(|p| p.name() != "PodTopologySpread"));
        assert!(
            p.score
                .iter()
                .any(|(p, w)| p.name() == "ImageLocality" && *w == 5)
        );
        let err = Config::from_yaml(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- plugins:\n    filter:\n      enabled: [{name: Nope}]\n",
        )
        .unwrap_err();
        assert!(err.contains("plugin \"Nope\" does not exist"), "{err}");
        assert!(Config::from_yaml("apiVersion: v1\nkind: Pod\n").is_err());
    }
}
