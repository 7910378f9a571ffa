//! `srv6pipes-operator --check-daemonset NS/NAME` (the chart's `helm test`): is every node
//! daemon scheduled, current and ready? The verdict is pure; the reads sit in [`daemonset`].

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

/// Ok with a one-line summary when every node that should run a daemon runs a ready one of the
/// current template; Err naming what is missing and the pods that are not ready.
pub fn verdict(ds: &DaemonSet, pods: &[Pod]) -> Result<String, String> {
    let name = format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any());
    let Some(status) = &ds.status else { return Err(format!("daemonset {name} has no status yet")) };
    let desired = status.desired_number_scheduled;
    if status.observed_generation < ds.metadata.generation {
        return Err(format!("daemonset {name}: its controller has not seen the current generation yet"));
    }
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let ready = status.number_ready;
    if desired > 0 && ready == desired && updated == desired && status.number_misscheduled == 0 {
        return Ok(format!("daemonset {name}: {ready} of {desired} node daemons ready and current"));
    }
    let mut unready: Vec<String> = pods
        .iter()
        .filter(|p| !pod_ready(p))
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "no node".into());
            format!("{} on {node}", p.name_any())
        })
        .collect();
    unready.sort();
    let mut why = format!("daemonset {name}: {ready} of {desired} node daemons ready, {updated} current");
    if desired == 0 {
        why.push_str(" (no node runs it: nodeSelector, taints?)");
    }
    if !unready.is_empty() {
        why.push_str(&format!("; not ready: {}", unready.join(", ")));
    }
    Err(why)
}

fn pod_ready(p: &Pod) -> bool {
    let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Reads the DaemonSet and its pods and gives the verdict.
pub async fn daemonset(client: kube::Client, namespace: &str, name: &str) -> anyhow::Result<Result<String, String>> {
    let ds = Api::<DaemonSet>::namespaced(client.clone(), namespace).get(name).await?;
    let selector = ds.spec.selector.match_labels.clone().unwrap_or_default();
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(client, namespace).list(&ListParams::default().labels(&labels.join(","))).await?;
    Ok(verdict(&ds, &pods.items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(generation: i64, observed: i64, desired: i32, ready: i32, updated: i32) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "srv6pipes-node", "namespace": "kube-system", "generation": generation},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {}},
            "status": {"observedGeneration": observed, "desiredNumberScheduled": desired, "numberReady": ready,
                       "updatedNumberScheduled": updated, "currentNumberScheduled": desired, "numberMisscheduled": 0}
        }))
        .unwrap()
    }

    fn pod(name: &str, node: &str, ready: bool) -> Pod {
        let status = if ready { "True" } else { "False" };
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": status}]}
        }))
        .unwrap()
    }

    #[test]
    fn every_daemon_ready_and_current() {
        let ok = verdict(&ds(3, 3, 2, 2, 2), &[pod("a", "n1", true), pod("b", "n2", true)]).unwrap();
        assert_eq!(ok, "daemonset kube-system/srv6pipes-node: 2 of 2 node daemons ready and current");
    }

    #[test]
    fn names_the_daemons_that_are_not_ready() {
        let err = verdict(&ds(3, 3, 3, 2, 3), &[pod("b", "n2", false), pod("a", "n1", true), pod("c", "n3", true)]).unwrap_err();
        assert_eq!(err, "daemonset kube-system/srv6pipes-node: 2 of 3 node daemons ready, 3 current; not ready: b on n2");
    }

    #[test]
    fn a_rollout_in_progress_or_unseen_is_not_ready() {
        let err = verdict(&ds(3, 3, 2, 2, 1), &[pod("a", "n1", true), pod("b", "n2", true)]).unwrap_err();
        assert!(err.contains("2 of 2 node daemons ready, 1 current"), "{err}");
        assert!(verdict(&ds(4, 3, 2, 2, 2), &[]).unwrap_err().contains("current generation"));
        assert!(verdict(&ds(1, 1, 0, 0, 0), &[]).unwrap_err().contains("no node runs it"));
    }
}
