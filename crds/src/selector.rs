//! `podSelector`: a Kubernetes label selector (the same JSON and schema as `LabelSelector`),
//! held compactly. Its `matchLabels` is a sorted list rather than a `BTreeMap`, which allocates
//! a node for eleven entries even for one: four selectors a chain made 2.4 KB of every chain the
//! operator keeps (240 MiB at 100,000 chains).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A label query over pods: `matchLabels` and `matchExpressions` ANDed; an empty selector
/// selects every pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<Labels>,
}

impl PodSelector {
    /// The selector of the pods that have every one of `labels`.
    pub fn labels<const N: usize>(labels: [(&str, &str); N]) -> Self {
        PodSelector { match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()), ..Default::default() }
    }
}

impl JsonSchema for PodSelector {
    fn schema_name() -> Cow<'static, str> {
        LabelSelector::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        LabelSelector::json_schema(generator)
    }
}

/// Label keys and values, sorted by key, each key once (a JSON object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(String, String)]>);

impl Labels {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.into_iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> (&'a String, &'a String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// The last value of a key given twice wins, as in a map.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Labels(pairs.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What Kubernetes' own type reads and writes, this one does too.
    #[test]
    fn the_same_json_as_a_label_selector() {
        let cases = [
            json!({}),
            json!({"matchLabels": {"b": "2", "a": "1"}}),
            json!({"matchLabels": {}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}),
            json!({"matchLabels": null, "unknown": 1}),
        ];
        for case in cases {
            let ours: PodSelector = serde_json::from_value(case.clone()).unwrap();
            let theirs: LabelSelector = serde_json::from_value(case.clone()).unwrap();
            assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&theirs).unwrap(), "{case}");
        }
        let ours: PodSelector = serde_json::from_value(json!({"matchLabels": {"b": "2", "a": "1"}})).unwrap();
        let labels = ours.match_labels.unwrap();
        assert_eq!(labels.iter().collect::<Vec<_>>(), [(&"a".to_string(), &"1".to_string()), (&"b".to_string(), &"2".to_string())]);
        assert_eq!(labels.get("b").map(String::as_str), Some("2"));
        assert_eq!(labels.get("c"), None);
        assert!(serde_json::from_value::<PodSelector>(json!({"matchLabels": {"a": 1}})).is_err(), "values are strings");
    }

    #[test]
    fn the_same_schema_as_a_label_selector() {
        let mut ours = SchemaGenerator::default();
        let mut theirs = SchemaGenerator::default();
        assert_eq!(ours.subschema_for::<PodSelector>(), theirs.subschema_for::<LabelSelector>());
        assert_eq!(PodSelector::json_schema(&mut ours), LabelSelector::json_schema(&mut theirs));
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value() {
        let labels: Labels = [("a".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())].into();
        assert_eq!(labels.iter().count(), 1);
        assert_eq!(labels.get("a").map(String::as_str), Some("2"));
    }
}
