//! Kube mode: the node's locator comes from its Node (annotation srv6pipes.io/locator, set by
//! the operator or the node's maker), its SIDs are published as the NodeSidTable named after the
//! node, and it programs what the operator publishes in the NodeProgram of that name, reporting
//! the outcome in its status. Field manager `srv6pipes-node`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use srv6::node_api::{NodeProgram, NodeSids};
use srv6::sid::Locator;
use srv6pipes_crds::{NodeProgram as NodeProgramCr, NodeSidTable, LOCATOR_ANNOTATION};
use tracing::{info, warn};

pub const MANAGER: &str = "srv6pipes-node";

pub struct KubePlane {
    client: Client,
    /// The Node's InternalIP addresses (the underlay interface is the one holding them).
    pub internal_ips: Vec<std::net::IpAddr>,
    node: String,
    /// The Node's uid: the published table is owned by it (removed with the node).
    node_uid: String,
}

impl KubePlane {
    /// Connects and waits for the node's locator annotation; `expected` (--locator), when given,
    /// must agree with it.
    pub async fn connect(kubeconfig: Option<&std::path::Path>, node: &str, expected: Option<Locator>) -> anyhow::Result<(Self, Locator)> {
        let client = srv6pipes_crds::client(kubeconfig).await.map_err(anyhow::Error::msg)?;
        let nodes: Api<KubeNode> = Api::all(client.clone());
        let mut logged = false;
        let (uid, internal_ips, locator) = loop {
            let n = nodes.get_opt(node).await.with_context(|| format!("get node {node}"))?;
            if let Some((n, v)) = n.as_ref().and_then(|n| Some((n, n.annotations().get(LOCATOR_ANNOTATION)?))) {
                let l: Locator = v.parse().with_context(|| format!("node {node}: annotation {LOCATOR_ANNOTATION}={v:?}"))?;
                let ips = n.status.iter().flat_map(|s| s.addresses.iter().flatten());
                let ips = ips.filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect();
                break (n.metadata.uid.clone().unwrap_or_default(), ips, l);
            }
            if !logged {
                info!(
                    node,
                    registered = n.is_some(),
                    annotation = LOCATOR_ANNOTATION,
                    "waiting for the node's locator (the operator allocates it)"
                );
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if let Some(e) = expected.filter(|e| *e != locator) {
            bail!("--locator {e} disagrees with node {node}'s annotation {LOCATOR_ANNOTATION}={locator}");
        }
        info!(node, %locator, "locator from the node");
        Ok((KubePlane { client, internal_ips, node: node.into(), node_uid: uid }, locator))
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Server-side applies the node's SID table.
    pub async fn publish(&self, sids: &NodeSids) -> anyhow::Result<()> {
        let api: Api<NodeSidTable> = Api::all(self.client.clone());
        let body = json!({
            "apiVersion": "srv6pipes.io/v1alpha1",
            "kind": "NodeSidTable",
            "metadata": {
                "name": self.node,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.node_uid}],
            },
            "spec": sids.to_spec(),
        });
        api.patch(&self.node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .with_context(|| format!("publish NodeSidTable {}", self.node))?;
        info!(node = %self.node, sids = sids.registrations.len(), "published SID table");
        Ok(())
    }

    /// The node's NodeProgram, each time it changes.
    pub fn programs(&self) -> impl Stream<Item = NodeProgramCr> + Send + 'static {
        let api: Api<NodeProgramCr> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.node));
        let node = self.node.clone();
        watcher(api, config).default_backoff().applied_objects().filter_map(move |r| {
            let node = node.clone();
            async move { r.map_err(|e| warn!(node = %node, error = %e, "watching the node program failed; retrying")).ok() }
        })
    }

    /// Reports in the program's status whether `generation` is in the datapath.
    pub async fn report(&self, program: &NodeProgramCr, result: &Result<(), String>) -> anyhow::Result<()> {
        let (status, reason, message) = match result {
            Ok(()) => ("True", "Programmed", format!("generation {} is in the datapath", program.metadata.generation.unwrap_or_default())),
            Err(e) => ("False", "ProgramFailed", e.clone()),
        };
        let generation = program.metadata.generation;
        let unchanged = program.status.as_ref().is_some_and(|s| {
            s.observed_generation == generation
                && s.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == status && c.message == message)
        });
        if unchanged {
            return Ok(());
        }
        let condition = Condition {
            type_: "Programmed".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            observed_generation: generation,
        };
        let api: Api<NodeProgramCr> = Api::all(self.client.clone());
        let body = json!({
            "apiVersion": "srv6pipes.io/v1alpha1",
            "kind": "NodeProgram",
            "status": {"observedGeneration": generation, "conditions": [condition]},
        });
        api.patch_status(&self.node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .with_context(|| format!("report NodeProgram {} status", self.node))?;
        Ok(())
    }
}

/// The networks pod `namespace/name` asks for in its networks annotation (none without one).
pub async fn pod_networks(client: Client, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, namespace);
    let pod = pods.get(name).await.with_context(|| format!("get pod {namespace}/{name}"))?;
    match pod.annotations().get(srv6::node_api::NETWORKS_ANNOTATION) {
        Some(v) => srv6::node_api::networks_in_annotation(v).map_err(|e| anyhow::anyhow!("pod {namespace}/{name}: {e}")),
        None => Ok(vec![]),
    }
}

/// The spec as the daemon's API type.
pub fn program_of(p: &NodeProgramCr) -> Result<NodeProgram, String> {
    NodeProgram::from_spec(&p.spec).map_err(|e| format!("NodeProgram {}: {e}", p.name_any()))
}

/// `NAMESPACE/NAME` of the DaemonSet a daemon runs in (--daemonset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSetRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for DaemonSetRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(DaemonSetRef { namespace: ns.into(), name: name.into() })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for DaemonSetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a terminating daemon does with the node, and why.
#[derive(Debug, PartialEq, Eq)]
pub enum Departure {
    /// srv6pipes is being uninstalled: remove it from the node.
    Uninstall(String),
    /// A restart, an upgrade, or no way to tell: leave everything, traffic keeps flowing.
    Stay(String),
}

/// What this daemon saw of its DaemonSet's deletion while it could still read it: a watch from
/// start, so the signal survives `helm uninstall` deleting the daemon's credentials in the same
/// pass (a watch that is open keeps its events).
#[derive(Clone, Default)]
pub struct DeletionSeen {
    seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl DeletionSeen {
    pub fn get(&self) -> bool {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set(&self) {
        self.seen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the deletion is (or, within `wait`, becomes) seen.
    pub async fn within(&self, wait: Duration) -> bool {
        let notified = self.notify.notified();
        self.get() || tokio::time::timeout(wait, notified).await.is_ok() || self.get()
    }
}

/// Watches the DaemonSet (list and watch of that one name) for its deletion, in the background.
pub fn watch_deletion(client: Client, ds: &DaemonSetRef) -> DeletionSeen {
    let seen = DeletionSeen::default();
    let api: Api<DaemonSet> = Api::namespaced(client, &ds.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", ds.name));
    let (out, name) = (seen.clone(), ds.to_string());
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Delete(_)) => {
                    info!(daemonset = %name, "the DaemonSet was deleted");
                    out.set();
                }
                Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) if d.metadata.deletion_timestamp.is_some() => {
                    info!(daemonset = %name, "the DaemonSet is being deleted");
                    out.set();
                }
                Ok(_) => {}
                Err(e) => warn!(daemonset = %name, error = %e, "watching the DaemonSet"),
            }
        }
    });
    seen
}

/// Decides from what the API server said about the daemon's DaemonSet and whether its deletion
/// was seen. Gone, being deleted, or seen deleted is an uninstall. A refusal of this daemon's
/// identity (401, 403: an RBAC regression in an upgrade, a token hiccup) is not, nor is any
/// other error: a credentials problem never wipes a node's datapath.
pub fn departure(ds: &DaemonSetRef, got: Result<Option<DaemonSet>, kube::Error>, deletion_seen: bool) -> Departure {
    if deletion_seen {
        return Departure::Uninstall(format!("DaemonSet {ds} was seen deleted"));
    }
    match got {
        Ok(None) => Departure::Uninstall(format!("DaemonSet {ds} is gone")),
        Ok(Some(d)) if d.metadata.deletion_timestamp.is_some() => Departure::Uninstall(format!("DaemonSet {ds} is being deleted")),
        Ok(Some(_)) => Departure::Stay(format!("DaemonSet {ds} remains (a pod restart or an upgrade)")),
        Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => Departure::Stay(format!(
            "cannot read DaemonSet {ds} ({} {}) and its deletion was not seen: not wiping the node on a credentials problem",
            s.code, s.message
        )),
        Err(e) => Departure::Stay(format!("cannot tell whether DaemonSet {ds} remains: {e}")),
    }
}

/// Asks the API server about the DaemonSet, for at most 3 s (within the pod's grace period); a
/// refused or failed answer waits up to 2 s more for the watch's word (its event may be on the way).
pub async fn departure_of(client: Client, ds: &DaemonSetRef, seen: &DeletionSeen) -> Departure {
    let api: Api<DaemonSet> = Api::namespaced(client, &ds.namespace);
    let got = match tokio::time::timeout(Duration::from_secs(3), api.get_opt(&ds.name)).await {
        Ok(got) => got,
        Err(_) => {
            return departure(ds, Err(kube::Error::Service("no answer within 3 s".into())), seen.within(Duration::from_secs(2)).await)
        }
    };
    let settled = got.is_ok();
    let deletion_seen = if settled { seen.get() } else { seen.within(Duration::from_secs(2)).await };
    departure(ds, got, deletion_seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ds(deleting: bool) -> DaemonSet {
        let deletion_timestamp = deleting.then(|| Time(k8s_openapi::jiff::Timestamp::now()));
        DaemonSet {
            metadata: ObjectMeta { name: Some("srv6pipes-node".into()), deletion_timestamp, ..Default::default() },
            ..Default::default()
        }
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("refused", "Refused").with_code(code).boxed())
    }

    #[test]
    fn only_a_deleted_daemonset_uninstalls_never_a_refused_identity() {
        let r: DaemonSetRef = "kube-system/srv6pipes-node".parse().unwrap();
        let uninstall = |d: Departure| matches!(d, Departure::Uninstall(_));
        assert!(uninstall(departure(&r, Ok(None), false)), "gone");
        assert!(uninstall(departure(&r, Ok(Some(ds(true))), false)), "being deleted");
        assert_eq!(
            departure(&r, Ok(Some(ds(false))), false),
            Departure::Stay("DaemonSet kube-system/srv6pipes-node remains (a pod restart or an upgrade)".into())
        );
        // A refused identity (an RBAC regression, a token hiccup) is no uninstall...
        assert!(!uninstall(departure(&r, Err(api_error(401)), false)), "401");
        assert!(!uninstall(departure(&r, Err(api_error(403)), false)), "403");
        // ... unless the watch saw the DaemonSet deleted (helm uninstall removes the credentials
        // in the same pass).
        assert!(uninstall(departure(&r, Err(api_error(403)), true)), "403 after the deletion was seen");
        assert!(uninstall(departure(&r, Err(api_error(401)), true)));
        assert!(!uninstall(departure(&r, Err(api_error(500)), false)), "an API server error is not an uninstall");
        assert!(!uninstall(departure(&r, Err(api_error(429)), false)));
    }

    #[tokio::test]
    async fn a_deletion_seen_wakes_the_wait() {
        let seen = DeletionSeen::default();
        assert!(!seen.within(Duration::from_millis(20)).await);
        let later = seen.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.set();
        });
        assert!(seen.within(Duration::from_secs(5)).await);
        assert!(seen.get());
    }

    #[test]
    fn daemonset_ref_is_namespace_slash_name() {
        assert_eq!("ns/x".parse::<DaemonSetRef>().unwrap(), DaemonSetRef { namespace: "ns".into(), name: "x".into() });
        for bad in ["x", "/x", "ns/", "a/b/c", ""] {
            assert!(bad.parse::<DaemonSetRef>().is_err(), "{bad}");
        }
    }
}
