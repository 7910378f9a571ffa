//! Kube mode: the node's locator comes from its Node (annotation srv6pipes.io/locator, set by
//! the operator or the node's maker), its SIDs are published as the NodeSidTable named after the
//! node, and it programs what the operator publishes in the NodeProgram of that name, reporting
//! the outcome in its status. Field manager `srv6pipes-node`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
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
                info!(node, registered = n.is_some(), annotation = LOCATOR_ANNOTATION, "waiting for the node's locator (the operator allocates it)");
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
            async move {
                r.map_err(|e| warn!(node = %node, error = %e, "watching the node program failed; retrying")).ok()
            }
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
