//! Label selectors as upstream evaluates them: `matchLabels` and `matchExpressions` (In, NotIn, Exists,
//! DoesNotExist), all of which must hold; and node selector terms (the node affinity of pods,
//! DaemonSets and volumes), with Gt/Lt and `metadata.name` fields.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match a selector (matchLabels and matchExpressions, as upstream's label selectors).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether a workload's selector picks `labels`: as upstream's `LabelSelectorAsSelector`, an absent
/// selector picks nothing and an empty one everything.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_some_and(|s| matches(s, labels))
}

/// Whether a node selector requirement holds for `value` (the label's, or the field's).
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node (its labels and name) satisfies a node selector term: every label expression and
/// every `metadata.name` field expression; an empty term matches nothing.
pub fn node_term_matches(
    t: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_holds(r, Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selector_operators() {
        let labels = BTreeMap::from([
            ("zone".to_string(), "a".to_string()),
            ("cores".to_string(), "8".to_string()),
        ]);
        let term = |key: &str, op: &str, values: &[&str]| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_fields: None,
        };
        assert!(node_term_matches(
            &term("zone", "In", &["a", "b"]),
            &labels,
            "n"
        ));
        assert!(!node_term_matches(
            &term("zone", "NotIn", &["a"]),
            &labels,
            "n"
        ));
        assert!(node_term_matches(
            &term("cores", "Gt", &["4"]),
            &labels,
            "n"
        ));
        assert!(!node_term_matches(
            &term("cores", "Lt", &["4"]),
            &labels,
            "n"
        ));
        assert!(node_term_matches(
            &term("gpu", "DoesNotExist", &[]),
            &labels,
            "n"
        ));
        assert!(!node_term_matches(
            &NodeSelectorTerm::default(),
            &labels,
            "n"
        ));
        let by_name = NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec!["n".into()]),
            }]),
            match_expressions: None,
        };
        assert!(node_term_matches(&by_name, &labels, "n"));
        assert!(!node_term_matches(&by_name, &labels, "m"));
    }
}
