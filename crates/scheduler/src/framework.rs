//! The scheduling framework, after upstream's `framework/interface.go`: a plugin implements some of the
//! extension points (PreFilter, Filter, PreScore, Score with NormalizeScore, Reserve; PostFilter is
//! preemption, PreBind the volume binding), returns a `Status` in upstream's codes, and keeps what it
//! computes once per pod in the `CycleState`. A `Profile` is the ordered plugin list of one
//! `schedulerName`.

use std::sync::Arc;

use crate::cache::{Cache, NodeInfo};
use crate::pod::PodInfo;

/// The best score a plugin gives a node (`framework.MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    /// The node does not fit now; removing pods (preemption) might help.
    Unschedulable,
    /// The node does not fit and preemption cannot change that.
    UnschedulableAndUnresolvable,
    Error,
    /// The plugin has nothing to do for this pod (its later points are skipped).
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<String>,
    pub plugin: &'static str,
}

impl Status {
    pub const fn success() -> Self {
        Self {
            code: Code::Success,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    pub const fn skip() -> Self {
        Self {
            code: Code::Skip,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Self {
            code,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }

    pub fn unschedulable(reason: impl Into<String>) -> Self {
        Self::new(Code::Unschedulable, reason)
    }

    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Self::new(Code::UnschedulableAndUnresolvable, reason)
    }

    pub fn error(reason: impl Into<String>) -> Self {
        Self::new(Code::Error, reason)
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    pub fn is_rejection(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        )
    }

    pub fn with_plugin(mut self, plugin: &'static str) -> Self {
        self.plugin = plugin;
        self
    }

    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }
}

/// Cluster changes that can make a rejected pod schedulable (upstream's `ClusterEvent`s, coarsely).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    NodeAdd,
    /// A node's labels, taints, allocatable, images or schedulability changed.
    NodeUpdate,
    AssignedPodAdd,
    AssignedPodUpdate,
    AssignedPodDelete,
    Storage,
    NamespaceLabels,
    /// Pods rejected for too long are retried anyway (upstream's 5 minutes).
    Timeout,
}

/// Extension points a plugin takes part in.
pub mod point {
    pub const PRE_FILTER: u32 = 1;
    pub const FILTER: u32 = 2;
    pub const POST_FILTER: u32 = 4;
    pub const PRE_SCORE: u32 = 8;
    pub const SCORE: u32 = 16;
    pub const RESERVE: u32 = 32;
    pub const PRE_BIND: u32 = 64;
    pub const BIND: u32 = 128;
    pub const QUEUE_SORT: u32 = 256;
    pub const PRE_ENQUEUE: u32 = 512;
}

/// What plugins compute once per pod and read per node.
#[derive(Debug, Default)]
pub struct CycleState {
    pub inter_pod: Option<Box<crate::plugins::inter_pod::FilterState>>,
    pub inter_pod_score: Option<Box<crate::plugins::inter_pod::ScoreState>>,
    pub spread: Option<Box<crate::plugins::spread::FilterState>>,
    pub spread_score: Option<Box<crate::plugins::spread::ScoreState>>,
    pub volumes: Option<Box<crate::plugins::volume::State>>,
    /// Plugins whose PreFilter or PreScore returned Skip.
    pub skip_filter: Vec<&'static str>,
    pub skip_score: Vec<&'static str>,
}

/// A scheduling plugin. Every method has a neutral default; `points` says which ones it implements.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// The extension points implemented (`point::*`).
    fn points(&self) -> u32;
    /// The cluster events that can turn this plugin's rejection into a fit.
    fn events(&self) -> &'static [Event] {
        &[]
    }

    fn pre_filter(&self, _cache: &Cache, _state: &mut CycleState, _pod: &PodInfo) -> Status {
        Status::success()
    }

    fn filter(
        &self,
        _cache: &Cache,
        _state: &CycleState,
        _pod: &PodInfo,
        _node: &NodeInfo,
    ) -> Status {
        Status::success()
    }

    /// Preemption's what-if: `other` is added to (or, with `add = false`, removed from) `node` in the
    /// PreFilter state.
    fn adjust(
        &self,
        _cache: &Cache,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _other: &PodInfo,
        _node: &NodeInfo,
        _add: bool,
    ) {
    }

    fn pre_score(
        &self,
        _cache: &Cache,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _nodes: &[&NodeInfo],
    ) -> Status {
        Status::success()
    }

    fn score(&self, _cache: &Cache, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> i64 {
        0
    }

    /// Brings raw scores into 0..=100 (index-aligned with `nodes`).
    fn normalize(&self, _state: &CycleState, _nodes: &[&NodeInfo], _scores: &mut [i64]) {}
}

/// Upstream's `DefaultNormalizeScore`: scales to 0..=`max` by the highest score, reversed if asked.
pub fn default_normalize(max: i64, reverse: bool, scores: &mut [i64]) {
    let highest = scores.iter().copied().max().unwrap_or(0);
    if highest == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = max);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = max * *s / highest;
        if reverse {
            *s = max - *s;
        }
    }
}

/// The plugins of one scheduler profile, per extension point, in order.
#[derive(Debug, Clone)]
pub struct Profile {
    pub scheduler_name: String,
    pub pre_filter: Vec<Arc<dyn Plugin>>,
    pub filter: Vec<Arc<dyn Plugin>>,
    pub pre_score: Vec<Arc<dyn Plugin>>,
    pub score: Vec<(Arc<dyn Plugin>, i64)>,
    /// DefaultPreemption enabled (the only PostFilter).
    pub preemption: bool,
    /// VolumeBinding's Reserve and PreBind enabled.
    pub volume_binding: bool,
    /// `percentageOfNodesToScore` (0: upstream's adaptive default).
    pub percentage_of_nodes_to_score: i32,
}

impl Profile {
    /// Whether `plugin` rejects pods for reasons `event` can change (`None`: rejected for no plugin).
    pub fn cares(&self, plugin: &str, event: Event) -> bool {
        if event == Event::Timeout {
            return true;
        }
        self.filter
            .iter()
            .chain(&self.pre_filter)
            .find(|p| p.name() == plugin)
            .is_none_or(|p| p.events().contains(&event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_follows_upstream() {
        let mut s = [0, 5, 10];
        default_normalize(100, false, &mut s);
        assert_eq!(s, [0, 50, 100]);
        let mut s = [0, 5, 10];
        default_normalize(100, true, &mut s);
        assert_eq!(s, [100, 50, 0]);
        let mut s = [0, 0];
        default_normalize(100, true, &mut s);
        assert_eq!(s, [100, 100]);
    }
}
