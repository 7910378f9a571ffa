//! Lab state on disk, so `up`, `status`, `exec` and `down` are separate invocations. Written
//! after every step of `up`, so `down` can remove whatever a failed `up` left.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use srv6::sid::Locator;
use srv6pipes_crds::ServiceChain;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub underlay_netns: Option<String>,
    pub pin_root: PathBuf,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    pub chains: Vec<ServiceChain>,
    /// Kube mode (`up --kubeconfig`): Nodes, Pods and ServiceChains live in this API server.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Kube mode: the operator the lab runs.
    #[serde(default)]
    pub operator_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub locator: Locator,
    pub underlay6: Ipv6Addr,
    pub underlay4: Ipv4Addr,
    pub pod_cidrs: Vec<IpNet>,
    pub socket: PathBuf,
    pub daemon_pid: Option<u32>,
    /// Kube mode: the API-server forwarder into this node's netns.
    #[serde(default)]
    pub forwarder_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// eth0 was added by the primary CNI (ptp): DEL it on the way down.
    pub primary: bool,
    /// Interfaces srv6pipes-cni added (net1, ...).
    pub chain_ifaces: Vec<String>,
    /// The chain attachment is an interface pair (`interfaces: pair`).
    #[serde(default)]
    pub pair: bool,
    /// Attached by a container runtime, not by the lab (no netns or process of the lab's).
    #[serde(default)]
    pub external: bool,
    /// spec.containers[0].command + args, run in the pod's netns on the host filesystem.
    pub command: Vec<String>,
    pub pid: Option<u32>,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(Self::path(dir)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).context("parse lab state")?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("read lab state"),
        }
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, Self::path(dir)).context("write lab state")
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
