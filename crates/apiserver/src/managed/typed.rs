//! Values walked with their schema, as structured-merge-diff does: which objects are granular (owned field by
//! field) or atomic, which lists are atomic, sets or maps keyed by fields, and the four operations apply needs
//! (field set of a value, comparison, merge, prune). The schema is the built-in type table or a CRD's
//! structural schema; anything else is untyped (objects granular, lists atomic).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::fieldset::{Set, display};
use crate::schema::{Catalog, Field, Kind};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Where a value sits in the schema.
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    /// A built-in message type (by definition name).
    Type(&'a str),
    /// A repeated built-in field.
    List(&'a Field),
    /// A map-valued built-in field.
    Map(&'a Field),
    Scalar,
    /// A node of a CRD's structural schema; `root` for the object itself (whose `metadata` is ObjectMeta).
    Crd(&'a Value, bool),
    Untyped,
}

/// How a list is owned.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    Atomic,
    Set,
    /// Items identified by these fields.
    Map(Vec<String>),
}

/// The schema plus the catalog it refers to.
#[derive(Clone, Copy)]
pub struct Typed<'a> {
    pub catalog: &'a Catalog,
}

impl<'a> Typed<'a> {
    fn of_field(&self, f: &'a Field) -> Node<'a> {
        if f.repeated {
            return Node::List(f);
        }
        match (&f.kind, &f.reference) {
            (Kind::Map(_), _) => Node::Map(f),
            (Kind::Message, Some(r)) => Node::Type(r),
            _ => Node::Scalar,
        }
    }

    /// Whether an object at this node is owned whole.
    pub fn atomic_object(&self, node: Node<'a>) -> bool {
        match node {
            Node::Type(def) => {
                crate::schema::opaque(def) || self.catalog.get(def).is_some_and(|t| t.atomic)
            }
            Node::Map(f) => f.map_type.as_deref() == Some("atomic"),
            Node::Crd(s, _) => {
                s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
            }
            Node::Untyped => false,
            Node::List(_) | Node::Scalar => true,
        }
    }

    /// The node of an object's key, and whether it is a declared (struct) field rather than a map entry.
    pub fn child(&self, node: Node<'a>, key: &str) -> (Node<'a>, bool) {
        match node {
            Node::Type(def) => match self.catalog.field(def, key) {
                Some(f) => (self.of_field(f), true),
                None => (Node::Untyped, false),
            },
            Node::Map(f) => (self.map_value(f), false),
            Node::Crd(s, root) => {
                if root {
                    match key {
                        "metadata" => return (Node::Type(OBJECT_META), true),
                        "apiVersion" | "kind" => return (Node::Scalar, true),
                        _ => {}
                    }
                }
                if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
                    return (Node::Crd(p, false), true);
                }
                match s.get("additionalProperties") {
                    Some(ap) if ap.is_object() => (Node::Crd(ap, false), false),
                    _ => (Node::Untyped, false),
                }
            }
            Node::Untyped | Node::List(_) | Node::Scalar => (Node::Untyped, false),
        }
    }

    fn map_value(&self, f: &'a Field) -> Node<'a> {
        match (&f.kind, &f.reference) {
            (Kind::Map(inner), Some(r)) if **inner == Kind::Message => Node::Type(r),
            _ => Node::Scalar,
        }
    }

    pub fn list_kind(&self, node: Node<'a>) -> ListKind {
        match node {
            Node::List(f) => match f.list_type.as_deref() {
                Some("map") if !f.list_map_keys.is_empty() => {
                    ListKind::Map(f.list_map_keys.clone())
                }
                Some("set") => ListKind::Set,
                Some(_) => ListKind::Atomic,
                None => match (&f.patch_strategy, &f.patch_merge_key) {
                    (Some(ps), Some(key)) if ps.split(',').any(|s| s == "merge") => {
                        ListKind::Map(vec![key.clone()])
                    }
                    (Some(ps), None) if ps.split(',').any(|s| s == "merge") => ListKind::Set,
                    _ => ListKind::Atomic,
                },
            },
            Node::Crd(s, _) => match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => ListKind::Map(
                    s.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|keys| {
                            keys.iter()
                                .filter_map(|k| k.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                Some("set") => ListKind::Set,
                _ => ListKind::Atomic,
            },
            _ => ListKind::Atomic,
        }
    }

    pub fn item(&self, node: Node<'a>) -> Node<'a> {
        match node {
            Node::List(f) => match (&f.kind, &f.reference) {
                (Kind::Message, Some(r)) => Node::Type(r),
                _ => Node::Scalar,
            },
            Node::Crd(s, _) => match s.get("items") {
                Some(items) if items.is_object() => Node::Crd(items, false),
                _ => Node::Untyped,
            },
            _ => Node::Untyped,
        }
    }

    /// The path element naming a list item: `k:{…}` for keyed lists, `v:…` for sets.
    pub fn item_pe(&self, node: Node<'a>, kind: &ListKind, item: &Value, index: usize) -> String {
        match kind {
            ListKind::Map(keys) => {
                let Some(obj) = item.as_object() else {
                    return format!("i:{index}");
                };
                let builtin = matches!(node, Node::List(_));
                let mut key = Map::new();
                for k in keys {
                    match obj.get(k) {
                        Some(v) => {
                            key.insert(k.clone(), v.clone());
                        }
                        // Upstream's schema defaults `protocol` of ports to TCP, and keys use defaults.
                        None if builtin && k == "protocol" => {
                            key.insert(k.clone(), Value::from("TCP"));
                        }
                        None => {}
                    }
                }
                format!("k:{}", Value::Object(key))
            }
            ListKind::Set => format!("v:{item}"),
            ListKind::Atomic => format!("i:{index}"),
        }
    }

    fn index<'v>(
        &self,
        node: Node<'a>,
        kind: &ListKind,
        items: &'v [Value],
    ) -> (Vec<String>, HashMap<String, &'v Value>) {
        let mut pes = Vec::with_capacity(items.len());
        let mut by = HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let pe = self.item_pe(node, kind, item, i);
            by.entry(pe.clone()).or_insert(item);
            pes.push(pe);
        }
        (pes, by)
    }

    /// Upstream's checks of an apply configuration: keyed list items are objects carrying their key fields,
    /// and no item appears twice. Errors read as structured-merge-diff's
    /// (`.spec.ports: duplicate entries for key [port=80,protocol="TCP"]`).
    pub fn check_config(
        &self,
        node: Node<'a>,
        value: &Value,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        match value {
            Value::Object(obj) if !self.atomic_object(node) => {
                for (k, v) in obj {
                    let (cnode, _) = self.child(node, k);
                    path.push(format!("f:{k}"));
                    self.check_config(cnode, v, path)?;
                    path.pop();
                }
            }
            Value::Array(items) => {
                let kind = self.list_kind(node);
                if kind == ListKind::Atomic {
                    return Ok(());
                }
                let inode = self.item(node);
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if let ListKind::Map(keys) = &kind {
                        let builtin = matches!(node, Node::List(_));
                        let Some(obj) = item.as_object() else {
                            return Err(format!(
                                "{}: element {i}: associative list can only contain objects",
                                display(path)
                            ));
                        };
                        if let Some(k) = keys
                            .iter()
                            .find(|k| !(obj.contains_key(*k) || (builtin && *k == "protocol")))
                        {
                            return Err(format!(
                                "{}: element {i}: associative list with keys has an element that omits key field {k:?} (and doesn't have default value)",
                                display(path)
                            ));
                        }
                    }
                    let pe = self.item_pe(node, &kind, item, i);
                    if !seen.insert(pe.clone()) {
                        return Err(format!(
                            "{}: duplicate entries for key {}",
                            display(path),
                            display(std::slice::from_ref(&pe))
                        ));
                    }
                    path.push(pe);
                    self.check_config(inode, item, path)?;
                    path.pop();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The fields a value sets (upstream's `ToFieldSet`).
    pub fn to_set(&self, node: Node<'a>, value: &Value, set: &mut Set) {
        match value {
            Value::Object(obj) if !self.atomic_object(node) => {
                for (k, v) in obj {
                    let (cnode, declared) = self.child(node, k);
                    let mut cset = Set::new();
                    self.to_set(cnode, v, &mut cset);
                    if v.is_null() || v.as_object().is_some_and(Map::is_empty) || !declared {
                        cset.member = true;
                    }
                    if !cset.is_empty() {
                        set.children.insert(format!("f:{k}"), cset);
                    }
                }
            }
            Value::Array(items) => {
                let kind = self.list_kind(node);
                if kind == ListKind::Atomic {
                    set.member = true;
                    return;
                }
                let inode = self.item(node);
                for (i, item) in items.iter().enumerate() {
                    let mut cset = Set::new();
                    self.to_set(inode, item, &mut cset);
                    cset.member = true;
                    set.children
                        .entry(self.item_pe(node, &kind, item, i))
                        .or_default()
                        .union_with(&cset);
                }
            }
            _ => set.member = true,
        }
    }

    /// Compares `lhs` with `rhs` (upstream's `Compare`): leaves that differ are modified; fields, map
    /// entries and list items present on one side only are added or removed, with everything below them.
    /// Paths that are members of `ignore` are skipped.
    pub fn compare(
        &self,
        node: Node<'a>,
        lhs: Option<&Value>,
        rhs: Option<&Value>,
        ignore: Option<&Set>,
        path: &mut Vec<String>,
        out: &mut Comparison,
    ) {
        if ignore.is_some_and(|i| i.member) {
            return;
        }
        let objects = matches!(
            (lhs, rhs),
            (Some(Value::Object(_)), Some(Value::Object(_)))
                | (Some(Value::Object(_)), None)
                | (None, Some(Value::Object(_)))
        );
        if objects && !self.atomic_object(node) {
            let empty = Map::new();
            let l = lhs.and_then(Value::as_object).unwrap_or(&empty);
            let r = rhs.and_then(Value::as_object).unwrap_or(&empty);
            let keys: Vec<&String> = l
                .keys()
                .chain(r.keys().filter(|k| !l.contains_key(*k)))
                .collect();
            for k in keys {
                let pe = format!("f:{k}");
                let cignore = ignore.and_then(|i| i.child(&pe));
                if cignore.is_some_and(|i| i.member) {
                    continue;
                }
                let (cnode, _) = self.child(node, k);
                path.push(pe);
                let (lv, rv) = (l.get(k), r.get(k));
                self.compare(cnode, lv, rv, cignore, path, out);
                post_item(lv, rv, path, out);
                path.pop();
            }
            return;
        }
        let arrays = matches!(
            (lhs, rhs),
            (Some(Value::Array(_)), Some(Value::Array(_)))
                | (Some(Value::Array(_)), None)
                | (None, Some(Value::Array(_)))
        );
        let kind = self.list_kind(node);
        if arrays && kind != ListKind::Atomic {
            let l = lhs
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let r = rhs
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let (lpes, lby) = self.index(node, &kind, l);
            let (rpes, rby) = self.index(node, &kind, r);
            let inode = self.item(node);
            let mut seen = HashSet::new();
            for pe in lpes.iter().chain(rpes.iter()) {
                if !seen.insert(pe.as_str()) {
                    continue;
                }
                let (lv, rv) = (lby.get(pe).copied(), rby.get(pe).copied());
                path.push(pe.clone());
                self.compare(inode, lv, rv, ignore.and_then(|i| i.child(pe)), path, out);
                post_item(lv, rv, path, out);
                path.pop();
            }
            return;
        }
        match (lhs, rhs) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            (Some(l), Some(r)) if l != r => out.modified.insert(path),
            _ => {}
        }
    }

    /// Merges an apply configuration into the live value (upstream's `Merge`): the configuration wins on
    /// leaves; granular objects and keyed lists merge item by item.
    pub fn merge(&self, node: Node<'a>, live: Option<&Value>, config: &Value) -> Value {
        match (live, config) {
            (live, Value::Object(c)) if !self.atomic_object(node) => {
                let mut out = match live {
                    Some(Value::Object(l)) => l.clone(),
                    _ => Map::new(),
                };
                for (k, cv) in c {
                    if cv.is_null() {
                        out.remove(k);
                        continue;
                    }
                    let (cnode, _) = self.child(node, k);
                    let merged = self.merge(cnode, out.get(k), cv);
                    out.insert(k.clone(), merged);
                }
                Value::Object(out)
            }
            (live, Value::Array(c)) => {
                let kind = self.list_kind(node);
                let l = match live {
                    Some(Value::Array(l)) if kind != ListKind::Atomic => l.as_slice(),
                    _ => return config.clone(),
                };
                Value::Array(self.merge_list(node, &kind, l, c))
            }
            _ => config.clone(),
        }
    }

    /// structured-merge-diff's list merge: shared items follow the configuration's order, live-only items
    /// keep their place, configuration-only items come where the configuration puts them.
    fn merge_list(&self, node: Node<'a>, kind: &ListKind, l: &[Value], r: &[Value]) -> Vec<Value> {
        let (lpes, lby) = self.index(node, kind, l);
        let (rpes, rby) = self.index(node, kind, r);
        let inode = self.item(node);
        let shared: Vec<&String> = rpes.iter().filter(|pe| lby.contains_key(*pe)).collect();
        let mut shared = shared.into_iter();
        let mut next_shared = shared.next();
        let mut merged_rhs: HashSet<&str> = HashSet::new();
        let mut out = Vec::with_capacity(l.len().max(r.len()));
        let (mut li, mut ri) = (0, 0);
        while li < l.len() || ri < r.len() {
            if li < l.len() && ri < r.len() {
                let pe = &lpes[li];
                if *pe == rpes[ri] {
                    merged_rhs.insert(pe);
                    out.push(self.merge(inode, lby.get(pe).copied(), rby[pe]));
                    li += 1;
                    ri += 1;
                    next_shared = shared.next();
                    continue;
                }
                if rby.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                    li += 1;
                    continue;
                }
            }
            if li < l.len() {
                let pe = &lpes[li];
                if !rby.contains_key(pe) {
                    out.push(l[li].clone());
                    li += 1;
                    continue;
                } else if merged_rhs.contains(pe.as_str()) {
                    li += 1;
                    continue;
                }
            }
            if ri < r.len() {
                let pe = &rpes[ri];
                merged_rhs.insert(pe);
                out.push(self.merge(inode, lby.get(pe).copied(), rby[pe]));
                ri += 1;
                if next_shared.is_some_and(|n| n == pe) {
                    next_shared = shared.next();
                }
            }
        }
        out
    }

    /// Removes from `value` what the applier set last time (`last`) and no manager keeps (`keep`), as
    /// structured-merge-diff prunes: a path the applier owned that nobody owns now goes with everything below
    /// it (defaults filled in under it included); owned paths are looked into; what the applier never
    /// owned stays. A declared (struct) field counts as owned when something below it is, as upstream's
    /// `EnsureNamedFieldsAreMembers` has it. Returns whether `value` itself goes.
    pub fn prune(
        &self,
        node: Node<'a>,
        value: &mut Value,
        last: &Set,
        keep: Option<&Set>,
        declared: bool,
    ) -> bool {
        let owned_last = last.member || (declared && !last.children.is_empty());
        let kept = keep.is_some_and(|k| k.member || (declared && !k.children.is_empty()));
        if owned_last && !kept {
            return true;
        }
        match value {
            Value::Object(obj) if !self.atomic_object(node) => {
                let mut gone = Vec::new();
                for (k, v) in obj.iter_mut() {
                    let pe = format!("f:{k}");
                    let Some(lc) = last.child(&pe) else { continue };
                    let (cnode, child_declared) = self.child(node, k);
                    let kc = keep.and_then(|s| s.child(&pe));
                    if self.prune(cnode, v, lc, kc, child_declared) {
                        gone.push(k.clone());
                    }
                }
                for k in gone {
                    obj.remove(&k);
                }
            }
            Value::Array(items) => {
                let kind = self.list_kind(node);
                if kind == ListKind::Atomic {
                    return false;
                }
                let inode = self.item(node);
                let mut keep_items = Vec::with_capacity(items.len());
                for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                    let pe = self.item_pe(node, &kind, &item, i);
                    let drop = match last.child(&pe) {
                        Some(lc) => {
                            let kc = keep.and_then(|s| s.child(&pe));
                            self.prune(inode, &mut item, lc, kc, false)
                        }
                        None => false,
                    };
                    if !drop {
                        keep_items.push(item);
                    }
                }
                *items = keep_items;
            }
            _ => {}
        }
        false
    }
}

fn post_item(lhs: Option<&Value>, rhs: Option<&Value>, path: &[String], out: &mut Comparison) {
    match (lhs, rhs) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        _ => {}
    }
}

/// What changed between two values.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub removed: Set,
    pub modified: Set,
}

impl Comparison {
    /// Added and modified paths: what the writer now sets.
    pub fn changed(&self) -> Set {
        let mut s = self.added.clone();
        s.union_with(&self.modified);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

    fn typed() -> Typed<'static> {
        Typed {
            catalog: crate::schema::catalog(),
        }
    }

    #[test]
    fn field_sets_follow_the_schema() {
        let t = typed();
        let d = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}], "nodeSelector": {"a": "b"}}}}});
        let mut s = Set::new();
        t.to_set(Node::Type(DEPLOYMENT), &d, &mut s);
        assert!(s.has(&["f:metadata", "f:labels", "f:app"]));
        assert!(!s.has(&["f:metadata", "f:labels"]));
        assert!(s.has(&["f:spec", "f:replicas"]));
        // LabelSelector is atomic: owned whole.
        assert!(s.has(&["f:spec", "f:selector"]));
        assert!(!s.has(&["f:spec", "f:selector", "f:matchLabels"]));
        let c = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"c\"}",
        ];
        assert!(s.has(&c));
        let port = [
            &c[..],
            &["f:ports", "k:{\"containerPort\":80,\"protocol\":\"TCP\"}"],
        ]
        .concat();
        assert!(s.has(&port));
        // nodeSelector is an atomic map.
        assert!(s.has(&["f:spec", "f:template", "f:spec", "f:nodeSelector"]));
    }

    #[test]
    fn comparison_finds_added_removed_and_modified() {
        let t = typed();
        let a = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let b = json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"replicas": 2}});
        let mut out = Comparison::default();
        t.compare(
            Node::Type(DEPLOYMENT),
            Some(&a),
            Some(&b),
            None,
            &mut Vec::new(),
            &mut out,
        );
        assert!(out.modified.has(&["f:spec", "f:replicas"]));
        assert!(out.removed.has(&["f:metadata", "f:labels", "f:b"]));
        assert!(out.added.has(&["f:metadata", "f:labels", "f:c"]));
        assert!(!out.modified.has(&["f:metadata", "f:labels", "f:a"]));
        let mut ignore = Set::new();
        ignore.insert(&["f:spec".to_string()]);
        let mut out = Comparison::default();
        t.compare(
            Node::Type(DEPLOYMENT),
            Some(&a),
            Some(&b),
            Some(&ignore),
            &mut Vec::new(),
            &mut out,
        );
        assert!(out.modified.is_empty());
    }

    #[test]
    fn merge_keeps_live_items_and_follows_config_order() {
        let t = typed();
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1", "args": ["x"]}, {"name": "side", "image": "s"}]}}}});
        let config = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "b:2"}, {"name": "a", "image": "a:1"}, {"name": "new", "image": "n"}]}}}});
        let merged = t.merge(Node::Type(DEPLOYMENT), Some(&live), &config);
        let names: Vec<&str> = merged["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // As structured-merge-diff orders it: live-only items keep their place among the shared ones.
        assert_eq!(names, ["b", "side", "a", "new"]);
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][0]["image"],
            "b:2"
        );
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["x"])
        );
        // Atomic lists are replaced.
        let live = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}}}});
        let config =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["3"]}]}}}});
        let merged = t.merge(Node::Type(DEPLOYMENT), Some(&live), &config);
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["3"])
        );
    }

    #[test]
    fn prune_removes_only_what_the_applier_dropped() {
        let t = typed();
        let mut merged = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}, "spec": {"replicas": 2, "paused": true}});
        let mut last = Set::new();
        for p in [
            ["f:metadata", "f:labels", "f:a"],
            ["f:metadata", "f:labels", "f:b"],
        ] {
            last.insert(&p.map(String::from));
        }
        last.insert(&["f:spec".into(), "f:paused".into()]);
        let mut keep = Set::new();
        keep.insert(&["f:metadata".into(), "f:labels".into(), "f:a".into()]);
        keep.insert(&["f:spec".into(), "f:replicas".into()]);
        assert!(!t.prune(
            Node::Type(DEPLOYMENT),
            &mut merged,
            &last,
            Some(&keep),
            false
        ));
        assert_eq!(
            merged,
            json!({"metadata": {"labels": {"a": "1", "other": "x"}}, "spec": {"replicas": 2}})
        );
    }

    #[test]
    fn a_dropped_list_item_goes_whole_with_its_defaults() {
        let t = typed();
        let svc = "io.k8s.api.core.v1.Service";
        let mut merged = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 443},
            {"name": "alt", "port": 8443}]}});
        let mut last = Set::new();
        t.to_set(
            Node::Type(svc),
            &json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "https", "port": 443}]}}),
            &mut last,
        );
        let mut keep = Set::new();
        t.to_set(
            Node::Type(svc),
            &json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "alt", "port": 8443}]}}),
            &mut keep,
        );
        t.prune(Node::Type(svc), &mut merged, &last, Some(&keep), false);
        let ports: Vec<i64> = merged["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert_eq!(ports, [80, 8443]);
        assert_eq!(merged["spec"]["ports"][0]["protocol"], "TCP");
        // Dropping everything under a struct field drops the field, defaults below it included.
        let mut d = json!({"spec": {"strategy": {"type": "Recreate", "x": 1}, "replicas": 1}});
        let mut last = Set::new();
        last.insert(&["f:spec".into(), "f:strategy".into(), "f:type".into()]);
        last.insert(&["f:spec".into(), "f:replicas".into()]);
        let mut keep = Set::new();
        keep.insert(&["f:spec".into(), "f:replicas".into()]);
        t.prune(Node::Type(DEPLOYMENT), &mut d, &last, Some(&keep), false);
        assert_eq!(d, json!({"spec": {"replicas": 1}}));
    }

    #[test]
    fn apply_configs_with_bad_list_keys_are_refused() {
        let t = typed();
        let dup =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        assert_eq!(
            t.check_config(Node::Type(DEPLOYMENT), &dup, &mut Vec::new()),
            Err(".spec.template.spec.containers: duplicate entries for key [name=\"a\"]".into())
        );
        let missing = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert!(
            t.check_config(Node::Type(DEPLOYMENT), &missing, &mut Vec::new())
                .unwrap_err()
                .contains("omits key field \"name\"")
        );
        // Ports key on (containerPort, protocol); protocol has a default.
        let ok = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}]}}}});
        assert!(
            t.check_config(Node::Type(DEPLOYMENT), &ok, &mut Vec::new())
                .is_ok()
        );
    }

    #[test]
    fn crd_schemas_give_list_types() {
        let t = typed();
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                "items": {"type": "object", "properties": {"id": {"type": "integer"}, "v": {"type": "string"}}}},
            "tags": {"type": "array", "items": {"type": "string"}}}}}});
        let v = json!({"metadata": {"name": "x"}, "spec": {"items": [{"id": 1, "v": "a"}], "tags": ["t"]}});
        let mut s = Set::new();
        t.to_set(Node::Crd(&schema, true), &v, &mut s);
        assert!(s.has(&["f:spec", "f:items", "k:{\"id\":1}", "f:v"]));
        assert!(s.has(&["f:spec", "f:tags"]));
        assert!(s.has(&["f:metadata", "f:name"]));
    }
}
