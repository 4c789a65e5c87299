//! Resource lists as the scheduler and the kubelet add and compare them: milli-CPU, bytes of memory and
//! ephemeral storage, a pod count, and extended resources (`example.com/gpu`, `hugepages-2Mi`) by name; and a pod's
//! effective request as upstream's `resourcehelper.PodRequests` computes it.

use std::collections::BTreeMap;

use crate::quantity::Quantity;

/// What the scheduler counts when a pod asks for nothing (upstream's `DefaultMilliCPURequest` and
/// `DefaultMemoryRequest`): used only for scoring, so empty pods still spread.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources and hugepages, sorted by name.
    pub scalar: Vec<(Box<str>, i64)>,
}

/// A quantity in whole units, rounded up (upstream's `Quantity.Value()`).
pub fn units(q: &Quantity) -> i64 {
    let n = q.nanos;
    let v = if n >= 0 {
        (n + 999_999_999) / 1_000_000_000
    } else {
        n / 1_000_000_000
    };
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// A quantity in thousandths, rounded up (upstream's `Quantity.MilliValue()`).
pub fn millis(q: &Quantity) -> i64 {
    let n = q.nanos;
    let v = if n >= 0 {
        (n + 999_999) / 1_000_000
    } else {
        n / 1_000_000
    };
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Resources {
    /// Parses a resource list (`{"cpu": "500m", "memory": "1Gi", …}`); unparsable values count as zero.
    pub fn from_list<'a>(list: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut r = Self::default();
        for (name, value) in list {
            let Some(q) = Quantity::parse(value) else {
                continue;
            };
            r.set(name, &q);
        }
        r.scalar.sort();
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            "cpu" => self.milli_cpu = millis(q),
            "memory" => self.memory = units(q),
            "ephemeral-storage" => self.ephemeral_storage = units(q),
            "pods" => self.pods = units(q),
            // Upstream's scheduler counts only extended resources (domain-prefixed names) and hugepages.
            n if n.contains('/') || n.starts_with("hugepages-") => {
                self.scalar.push((n.into(), units(q)))
            }
            _ => {}
        }
    }

    /// The value of `name` (`cpu` in millis).
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            n => self.scalar_value(n),
        }
    }

    pub fn scalar_value(&self, name: &str) -> i64 {
        self.scalar
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Resources) {
        // Saturating: absurd quantities from the API must not wrap or panic.
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        self.pods = self.pods.saturating_add(o.pods);
        for (name, v) in &o.scalar {
            match self.scalar.iter_mut().find(|(n, _)| n == name) {
                Some((_, have)) => *have = have.saturating_add(*v),
                None => {
                    self.scalar.push((name.clone(), *v));
                    self.scalar.sort();
                }
            }
        }
    }

    /// Takes `o` out of `self`.
    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
        self.pods = self.pods.saturating_sub(o.pods);
        for (name, v) in &o.scalar {
            if let Some((_, have)) = self.scalar.iter_mut().find(|(n, _)| n == name) {
                *have = have.saturating_sub(*v);
            }
        }
        self.scalar.retain(|(_, v)| *v != 0);
    }

    /// Each resource the larger of the two (an init container against the running set).
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (name, v) in &o.scalar {
            match self.scalar.iter_mut().find(|(n, _)| n == name) {
                Some((_, have)) => *have = (*have).max(*v),
                None => {
                    self.scalar.push((name.clone(), *v));
                    self.scalar.sort();
                }
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.iter().all(|(_, v)| *v == 0)
    }
}

/// One container's requests as the scheduler reads them: `requests`, or `limits` where a request is
/// missing (the apiserver's defaulting does the same).
#[derive(Debug, Clone, Default)]
pub struct ContainerRequests {
    pub requests: Resources,
    /// A restartable init container (a sidecar) keeps running beside the app containers.
    pub sidecar: bool,
}

pub fn container_requests(
    requests: Option<&BTreeMap<String, String>>,
    limits: Option<&BTreeMap<String, String>>,
) -> Resources {
    let mut merged: BTreeMap<&String, &String> = BTreeMap::new();
    if let Some(l) = limits {
        merged.extend(l.iter());
    }
    if let Some(r) = requests {
        merged.extend(r.iter());
    }
    Resources::from_list(merged)
}

/// A pod's effective request (upstream's `PodRequests`): the app containers and sidecars together, or
/// any init container's peak if higher (a plain init container runs beside the sidecars started
/// before it), plus the pod's overhead. With `non_zero`, containers asking for no CPU or memory count
/// upstream's defaults (for scoring).
pub fn pod_requests(
    containers: &[Resources],
    init: &[ContainerRequests],
    overhead: Option<&Resources>,
    non_zero: bool,
) -> Resources {
    let fix = |r: &Resources| {
        let mut r = r.clone();
        if non_zero {
            if r.milli_cpu == 0 {
                r.milli_cpu = DEFAULT_MILLI_CPU;
            }
            if r.memory == 0 {
                r.memory = DEFAULT_MEMORY;
            }
        }
        r
    };
    let mut total = Resources::default();
    for c in containers {
        total.add(&fix(c));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in init {
        let r = fix(&c.requests);
        if c.sidecar {
            sidecars.add(&r);
            init_peak.max_with(&sidecars);
        } else {
            let mut with = sidecars.clone();
            with.add(&r);
            init_peak.max_with(&with);
        }
    }
    total.add(&sidecars);
    total.max_with(&init_peak);
    if let Some(o) = overhead {
        total.add(o);
    }
    total.pods = 0;
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: &str, mem: &str) -> Resources {
        let (c, m) = ("cpu".to_string(), "memory".to_string());
        let (cv, mv) = (cpu.to_string(), mem.to_string());
        Resources::from_list([(&c, &cv), (&m, &mv)])
    }

    #[test]
    fn init_containers_count_at_their_peak() {
        let app = [res("100m", "100Mi"), res("200m", "100Mi")];
        let init = [ContainerRequests {
            requests: res("1", "50Mi"),
            sidecar: false,
        }];
        let r = pod_requests(&app, &init, None, false);
        assert_eq!((r.milli_cpu, r.memory), (1000, 200 * 1024 * 1024));
        let sidecar = [ContainerRequests {
            requests: res("50m", "10Mi"),
            sidecar: true,
        }];
        let r = pod_requests(&app, &sidecar, Some(&res("10m", "0")), false);
        assert_eq!(r.milli_cpu, 360);
    }

    #[test]
    fn empty_requests_count_defaults_only_for_scoring() {
        let r = pod_requests(&[Resources::default()], &[], None, true);
        assert_eq!((r.milli_cpu, r.memory), (DEFAULT_MILLI_CPU, DEFAULT_MEMORY));
        assert!(pod_requests(&[Resources::default()], &[], None, false).is_zero());
    }

    #[test]
    fn extended_resources_add_and_subtract() {
        let (g, one) = ("example.com/gpu".to_string(), "2".to_string());
        let mut a = Resources::from_list([(&g, &one)]);
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.scalar_value("example.com/gpu"), 4);
        a.sub(&b);
        assert_eq!(a.get("example.com/gpu"), 2);
    }
}
