//! Kube mode: pods that came up on this node without srv6pipes although they ask for its
//! network. A pod whose sandbox was made before srv6pipes-cni was installed here (a chart
//! installed beside the pods, or deployments applied with it, as the stream proxies are) runs
//! without its chain interface, for good: CNI ADD runs once per sandbox, and the pod's
//! containers restarting never makes another. Like Cilium's operator with the pods it does not
//! manage, the daemon deletes such a pod when its controller (a ReplicaSet, a StatefulSet or a
//! DaemonSet) makes it again, and names it in its log otherwise. It does so on the node's first
//! start only (no state in the state directory: after a restart or a reboot, the pods being
//! remade go through srv6pipes-cni, and the API may still show their old sandbox's address), and
//! looks only at pods that started before it did: a pod made since went through srv6pipes-cni
//! (its ADD registers the pod before the pod has an address) or was refused by it.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

/// What to do with a pod that asks for the network and has no registration here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Repair {
    /// Delete it (uid): `controller` makes it again, through srv6pipes-cni this time.
    Restart { namespace: String, name: String, uid: String, controller: String },
    /// A pod nobody makes again: only said.
    Report { namespace: String, name: String },
}

/// The pods of `pods` (this node's) to repair: they ask for `network`, have an address (their
/// sandbox is made), started before `since` (this daemon's start), are not on the host's
/// network, are neither being deleted nor done (a finished Job's pod is left as it is), and
/// `registered` (namespace, name) does not hold them. A static pod's mirror (owned by its Node)
/// is only said, as is a pod of any other controller (a Job's would count as a failure).
pub fn unwired(pods: &[Pod], network: &str, since: Timestamp, registered: &BTreeSet<(String, String)>) -> Vec<Repair> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .filter(|p| !p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false))
        .filter(|p| crate::kube::networks_of(p).is_ok_and(|n| n.iter().any(|n| n == network)))
        .filter(|p| {
            let status = p.status.as_ref();
            let addressed = status.is_some_and(|s| s.pod_ip.is_some() || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty()));
            let started = status.and_then(|s| s.start_time.as_ref()).is_some_and(|t| t.0 < since);
            addressed && started
        })
        .filter(|p| !registered.contains(&(p.namespace().unwrap_or_default(), p.name_any())))
        .map(|p| {
            let (namespace, name) = (p.namespace().unwrap_or_default(), p.name_any());
            let remade = ["ReplicaSet", "StatefulSet", "DaemonSet"];
            match p.owner_references().iter().find(|o| o.controller == Some(true) && remade.contains(&o.kind.as_str())) {
                Some(o) => {
                    Repair::Restart { namespace, name, uid: p.uid().unwrap_or_default(), controller: format!("{} {}", o.kind, o.name) }
                }
                None => Repair::Report { namespace, name },
            }
        })
        .collect()
}

/// After this daemon's start (`since`), looks at its node's pods a few times (a pod's first
/// address may take a while: an image pull, a slow runtime) and repairs those [`unwired`]
/// finds; `registered` reads the node's registrations at each look. Each pod is handled once
/// (a delete that failed is tried again at the next look).
pub async fn repair_pods<F, Fut>(client: Client, node: String, network: String, since: Timestamp, registered: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = BTreeSet<(String, String)>>,
{
    let api: Api<Pod> = Api::all(client.clone());
    let list = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut done = BTreeSet::new();
    for wait in [5, 10, 20, 40, 80] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let pods = match api.list(&list).await {
            Ok(l) => l.items,
            Err(e) => {
                warn!(node = %node, error = %e, "cannot list the node's pods to find those without their srv6pipes interface");
                continue;
            }
        };
        for repair in unwired(&pods, &network, since, &registered().await) {
            if !done.contains(&repair) && act(&client, &node, &network, &repair).await {
                done.insert(repair);
            }
        }
    }
}

/// Whether `repair` is done with (a pod deleted, or named).
async fn act(client: &Client, node: &str, network: &str, repair: &Repair) -> bool {
    match repair {
        Repair::Restart { namespace, name, uid, controller } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..Default::default()
            };
            match Api::<Pod>::namespaced(client.clone(), namespace).delete(name, &params).await {
                Ok(_) => {
                    info!(node, pod = %format!("{namespace}/{name}"), %controller, network,
                        "pod started before srv6pipes-cni was installed on the node, without its chain interface: deleted, its controller makes it again");
                    true
                }
                // Already gone, or another pod of that name since: nothing left to do.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
                Err(e) => {
                    warn!(node, pod = %format!("{namespace}/{name}"), error = %e, network,
                        "pod started before srv6pipes-cni was installed on the node, without its chain interface: cannot delete it (tried again)");
                    false
                }
            }
        }
        Repair::Report { namespace, name } => {
            warn!(node, pod = %format!("{namespace}/{name}"), network,
                "pod started before srv6pipes-cni was installed on the node and has no chain interface; no ReplicaSet, StatefulSet or DaemonSet makes it again: delete and create it");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use srv6::node_api::NETWORKS_ANNOTATION;

    fn pod(name: &str, annotation: Option<&str>, ip: bool, started: &str, owner: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}")},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"startTime": started},
        }))
        .unwrap();
        if let Some(a) = annotation {
            p.metadata.annotations = Some([(NETWORKS_ANNOTATION.to_string(), a.to_string())].into());
        }
        if ip {
            p.status.as_mut().unwrap().pod_ip = Some("10.244.1.5".into());
        }
        if owner {
            p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "proxies-7d9", "uid": "rs", "controller": true,
            }))
            .unwrap()]);
        }
        p
    }

    #[test]
    fn only_pods_that_ask_started_before_and_are_not_registered_are_repaired() {
        let since: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let (before, after) = ("2026-12-07T11:59:58Z", "2026-12-07T12:00:01Z");
        let mut host = pod("host", Some("srv6pipes"), true, before, true);
        host.spec.as_mut().unwrap().host_network = Some(true);
        let mut going = pod("going", Some("srv6pipes"), true, before, true);
        going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
        let mut done = pod("done", Some("srv6pipes"), true, before, true);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut mirror = pod("static", Some("srv6pipes"), true, before, true);
        mirror.metadata.owner_references.as_mut().unwrap()[0].kind = "Node".into();
        let mut job = pod("job", Some("srv6pipes"), true, before, true);
        job.metadata.owner_references.as_mut().unwrap()[0].kind = "Job".into();
        let pods = [
            pod("proxy", Some("default/srv6pipes@net1"), true, before, true),
            pod("bare", Some("srv6pipes"), true, before, false),
            pod("registered", Some("srv6pipes"), true, before, true),
            pod("other-network", Some("macvlan"), true, before, true),
            pod("no-annotation", None, true, before, true),
            pod("no-address-yet", Some("srv6pipes"), false, before, true),
            pod("made-since", Some("srv6pipes"), true, after, true),
            host,
            going,
            done,
            mirror,
            job,
        ];
        let registered = BTreeSet::from([("apps".to_string(), "registered".to_string())]);
        assert_eq!(
            unwired(&pods, "srv6pipes", since, &registered),
            [
                Repair::Restart {
                    namespace: "apps".into(),
                    name: "proxy".into(),
                    uid: "uid-proxy".into(),
                    controller: "ReplicaSet proxies-7d9".into()
                },
                Repair::Report { namespace: "apps".into(), name: "bare".into() },
                Repair::Report { namespace: "apps".into(), name: "static".into() },
                Repair::Report { namespace: "apps".into(), name: "job".into() },
            ]
        );
        assert!(unwired(&pods, "other", since, &registered).is_empty(), "another network's pods are not this daemon's");
    }
}
