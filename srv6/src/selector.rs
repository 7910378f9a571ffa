//! Kubernetes label selectors (matchLabels + matchExpressions), evaluated without an API server.

use std::collections::BTreeMap;

use srv6pipes_crds::PodSelector;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unknown selector operator {0:?} (In, NotIn, Exists, DoesNotExist)")]
    UnknownOperator(String),
    #[error("operator {op} on key {key:?} needs values")]
    MissingValues { op: String, key: String },
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything, as in Kubernetes.
pub fn matches(selector: &PodSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return Err(SelectorError::MissingValues { op: e.operator.clone(), key: e.key.clone() }),
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => return Err(SelectorError::UnknownOperator(other.into())),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement { key: key.into(), operator: op.into(), values: Some(values.iter().map(|s| s.to_string()).collect()) }
    }

    #[test]
    fn match_labels_and_expressions() {
        let sel = PodSelector {
            match_labels: Some([("vnf".to_string(), "fw".to_string())].into()),
            match_expressions: Some(vec![expr("tier", "In", &["a", "b"]), expr("canary", "DoesNotExist", &[])]),
        };
        assert!(matches(&sel, &labels(&[("vnf", "fw"), ("tier", "a")])).unwrap());
        assert!(!matches(&sel, &labels(&[("vnf", "fw"), ("tier", "c")])).unwrap());
        assert!(!matches(&sel, &labels(&[("vnf", "fw"), ("tier", "a"), ("canary", "1")])).unwrap());
        assert!(!matches(&sel, &labels(&[("vnf", "ids"), ("tier", "a")])).unwrap());
        assert!(matches(&PodSelector::default(), &labels(&[])).unwrap());
        let not_in = PodSelector { match_expressions: Some(vec![expr("x", "NotIn", &["1"])]), ..Default::default() };
        assert!(matches(&not_in, &labels(&[])).unwrap());
        assert!(!matches(&not_in, &labels(&[("x", "1")])).unwrap());
    }

    #[test]
    fn bad_operators_are_errors() {
        let sel = PodSelector { match_expressions: Some(vec![expr("x", "Near", &["1"])]), ..Default::default() };
        assert_eq!(matches(&sel, &labels(&[])), Err(SelectorError::UnknownOperator("Near".into())));
        let sel = PodSelector { match_expressions: Some(vec![expr("x", "In", &[])]), ..Default::default() };
        assert!(matches!(matches(&sel, &labels(&[])), Err(SelectorError::MissingValues { .. })));
    }
}
