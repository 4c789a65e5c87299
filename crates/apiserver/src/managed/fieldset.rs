//! Field sets as structured-merge-diff keeps them (`fieldsV1`): a trie of path elements (`f:name`,
//! `k:{"name":"x"}`, `v:"value"`, `i:0`) where `.` marks a path that is itself a member.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A set of field paths. `member` says this path itself is in the set; `children` hold the longer paths.
/// Invariant: no child is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    pub member: bool,
    pub children: BTreeMap<String, Set>,
}

impl Set {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub fn child(&self, pe: &str) -> Option<&Set> {
        self.children.get(pe)
    }

    /// Adds `path` (a list of path elements) as a member.
    pub fn insert(&mut self, path: &[String]) {
        let mut at = self;
        for pe in path {
            at = at.children.entry(pe.clone()).or_default();
        }
        at.member = true;
    }

    /// Whether `path` is a member.
    pub fn has(&self, path: &[&str]) -> bool {
        let mut at = self;
        for pe in path {
            match at.children.get(*pe) {
                Some(c) => at = c,
                None => return false,
            }
        }
        at.member
    }

    pub fn union_with(&mut self, other: &Set) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union_with(c);
        }
    }

    /// The members of `self` that are not members of `other` (paths compared exactly).
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(oc) => c.difference(oc),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// `self` without the members of `other` and everything below them.
    pub fn recursive_difference(&self, other: &Set) -> Set {
        if other.member {
            return Set::new();
        }
        let mut out = Set {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(oc) => c.recursive_difference(oc),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(oc) = other.children.get(k) {
                let i = c.intersection(oc);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Every member path, parents before children, children in set order.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect(&mut prefix, &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Parses a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        let Some(obj) = v.as_object() else {
            return Err(format!("expected an object in fieldsV1, found {v}"));
        };
        let mut set = Set::new();
        for (k, c) in obj {
            if k == "." {
                set.member = true;
                continue;
            }
            let valid = k.starts_with("f:")
                || k.starts_with("k:")
                || k.starts_with("v:")
                || k.starts_with("i:");
            if !valid {
                return Err(format!("unknown path element {k:?} in fieldsV1"));
            }
            let child = Set::from_fields_v1(c)?;
            if !child.is_empty() {
                set.children.insert(k.clone(), child);
            } else if c.as_object().is_some_and(Map::is_empty) {
                // `"f:x": {}` is a member leaf.
                set.children.insert(
                    k.clone(),
                    Set {
                        member: true,
                        children: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(set)
    }

    /// The `fieldsV1` form: members are `{}` leaves, or `".": {}` beside their children.
    pub fn to_fields_v1(&self) -> Value {
        let mut obj = Map::new();
        if self.member && !self.children.is_empty() {
            obj.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            obj.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(obj)
    }
}

/// A path as upstream prints it in conflict messages: `.spec.containers[name="app"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        let (kind, rest) = pe.split_at(2.min(pe.len()));
        match kind {
            "f:" => {
                out.push('.');
                out.push_str(rest);
            }
            "k:" => {
                let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(rest)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", show(v))).collect())
                    .unwrap_or_else(|_| vec![rest.to_string()]);
                out.push('[');
                out.push_str(&fields.join(","));
                out.push(']');
            }
            "v:" => {
                let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                out.push_str(&format!("[={}]", show(&v)));
            }
            "i:" => out.push_str(&format!("[{rest}]")),
            _ => out.push_str(pe),
        }
    }
    out
}

/// Go's `value.ToString`: strings quoted, everything else as JSON.
fn show(v: &Value) -> String {
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}}}});
        let s = Set::from_fields_v1(&v).unwrap();
        assert!(s.has(&["f:metadata", "f:labels"]));
        assert!(s.has(&["f:metadata", "f:labels", "f:app"]));
        assert!(!s.has(&["f:metadata"]));
        assert!(s.has(&["f:spec", "f:containers", "k:{\"name\":\"a\"}", "f:image"]));
        assert_eq!(s.to_fields_v1(), v);
        assert!(Set::from_fields_v1(&json!({"x": {}})).is_err());
        assert!(Set::from_fields_v1(&json!([])).is_err());
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::new();
        a.insert(&p(&["f:spec", "f:replicas"]));
        a.insert(&p(&["f:spec", "f:paused"]));
        a.insert(&p(&["f:status"]));
        let mut b = Set::new();
        b.insert(&p(&["f:spec", "f:replicas"]));
        b.insert(&p(&["f:status"]));
        let d = a.difference(&b);
        assert_eq!(d.paths(), vec![p(&["f:spec", "f:paused"])]);
        let i = a.intersection(&b);
        assert_eq!(i.paths().len(), 2);
        let mut spec = Set::new();
        spec.insert(&p(&["f:spec"]));
        assert_eq!(
            a.recursive_difference(&spec).paths(),
            vec![p(&["f:status"])]
        );
        assert!(a.difference(&spec).has(&["f:spec", "f:paused"]));
        let mut u = d.clone();
        u.union_with(&b);
        assert_eq!(u, a);
    }

    #[test]
    fn paths_print_as_upstream() {
        assert_eq!(display(&p(&["f:spec", "f:replicas"])), ".spec.replicas");
        assert_eq!(
            display(&p(&[
                "f:spec",
                "f:ports",
                "k:{\"port\":80,\"protocol\":\"TCP\"}",
                "f:name"
            ])),
            ".spec.ports[port=80,protocol=\"TCP\"].name"
        );
        assert_eq!(
            display(&p(&["f:metadata", "f:finalizers", "v:\"a\""])),
            ".metadata.finalizers[=\"a\"]"
        );
    }
}
