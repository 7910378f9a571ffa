//! The lab file: multi-document YAML of v1 Node, v1 Pod and srv6pipes.io/v1alpha1 ServiceChain.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Context};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use srv6::node_api::{networks_in_annotation, NETWORKS_ANNOTATION};
use srv6::sid::Locator;
use srv6pipes_crds::{ServiceChain, LOCATOR_ANNOTATION};

/// `"true"`: the lab does not create this pod; a container runtime on spec.nodeName attaches
/// it (e.g. podman with srv6pipes-cni). The lab uses its labels and the SIDs its node daemon
/// registered for it.
pub const EXTERNAL_ANNOTATION: &str = "srv6pipes.io/lab-external";
/// `pair`: the pod's chain attachment is an interface pair (in on netN, out on netN+1).
pub const INTERFACES_ANNOTATION: &str = "srv6pipes.io/interfaces";
/// The network name that attaches a pod to srv6pipes (as a Multus secondary network).
pub const NETWORK_NAME: &str = "srv6pipes";
/// The cluster's locator block; lab nodes get LOC = block + node number (/48).
pub const CLUSTER_BLOCK: &str = "fcbb:bb00::/32";

#[derive(Debug, Clone)]
pub struct LabNode {
    pub name: String,
    pub locator: Locator,
    pub pod_cidrs: Vec<IpNet>,
    pub underlay6: Ipv6Addr,
    pub underlay4: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct LabPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub command: Vec<String>,
    /// Interfaces to request from srv6pipes-cni (`net1`, `net2`, ... in annotation order).
    pub chain_ifaces: Vec<String>,
    pub pair: bool,
    pub external: bool,
}

#[derive(Debug, Default)]
pub struct Manifest {
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    pub chains: Vec<ServiceChain>,
}

/// Parses a lab file. Pods may sit on the file's nodes or on `known_nodes` (a running lab's).
pub fn parse(text: &str, known_nodes: &[String]) -> anyhow::Result<Manifest> {
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut chains = Vec::new();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).context("YAML")?;
    for (i, json) in docs.into_iter().enumerate() {
        if json.is_null() {
            continue;
        }
        let kind = json.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let api = json.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let ctx = || format!("document {} ({api} {kind})", i + 1);
        match (api.as_str(), kind.as_str()) {
            ("v1", "Node") => nodes.push(serde_json::from_value::<Node>(json).with_context(ctx)?),
            ("v1", "Pod") => pods.push(serde_json::from_value::<Pod>(json).with_context(ctx)?),
            ("srv6pipes.io/v1alpha1", "ServiceChain") => chains.push(serde_json::from_value::<ServiceChain>(json).with_context(ctx)?),
            _ => bail!("{}: the lab understands v1 Node, v1 Pod and srv6pipes.io/v1alpha1 ServiceChain", ctx()),
        }
    }
    let nodes = nodes.iter().enumerate().map(|(i, n)| lab_node(i + 1, n)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    node_names.extend_from_slice(known_nodes);
    let pods = pods.iter().map(|p| lab_pod(p, &node_names)).collect::<anyhow::Result<Vec<_>>>()?;
    for c in &mut chains {
        c.metadata.namespace.get_or_insert_with(|| "default".into());
        if c.metadata.name.as_deref().unwrap_or_default().is_empty() {
            bail!("a ServiceChain has no metadata.name");
        }
    }
    let m = Manifest { nodes, pods, chains };
    check_unique(&m)?;
    Ok(m)
}

fn lab_node(index: usize, n: &Node) -> anyhow::Result<LabNode> {
    let name = n.metadata.name.clone().filter(|s| !s.is_empty()).ok_or_else(|| anyhow!("a Node has no metadata.name"))?;
    if name.len() > 40 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("node name {name:?}: use letters, digits and '-' (at most 40)");
    }
    let block: ipnet::Ipv6Net = CLUSTER_BLOCK.parse().expect("valid block");
    let locator = match n.metadata.annotations.as_ref().and_then(|a| a.get(LOCATOR_ANNOTATION)) {
        Some(l) => l.parse::<Locator>().with_context(|| format!("node {name}: annotation {LOCATOR_ANNOTATION}"))?,
        None => Locator::nth_in_block(block, 48, index as u64)?,
    };
    locator.within(block).with_context(|| format!("node {name}"))?;
    let spec = n.spec.clone().unwrap_or_default();
    let cidrs: Vec<String> = spec.pod_cidrs.or_else(|| spec.pod_cidr.map(|c| vec![c])).unwrap_or_default();
    if cidrs.is_empty() {
        bail!("node {name} has no spec.podCIDRs");
    }
    let pod_cidrs = cidrs
        .iter()
        .map(|c| c.parse::<IpNet>().with_context(|| format!("node {name}: podCIDR {c:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut underlay6 = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, index as u16);
    let mut underlay4 = Ipv4Addr::new(10, 255, 255, index as u8);
    for a in n.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
        if a.type_ != "InternalIP" {
            continue;
        }
        match a.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => underlay6 = v6,
            Ok(std::net::IpAddr::V4(v4)) => underlay4 = v4,
            Err(_) => bail!("node {name}: InternalIP {:?} is not an address", a.address),
        }
    }
    Ok(LabNode { name, locator, pod_cidrs, underlay6, underlay4 })
}

fn lab_pod(p: &Pod, nodes: &[String]) -> anyhow::Result<LabPod> {
    let name = p.metadata.name.clone().filter(|s| !s.is_empty()).ok_or_else(|| anyhow!("a Pod has no metadata.name"))?;
    let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = p.spec.clone().unwrap_or_default();
    let node = spec.node_name.clone().ok_or_else(|| anyhow!("pod {namespace}/{name} has no spec.nodeName"))?;
    if !nodes.contains(&node) {
        bail!("pod {namespace}/{name}: node {node} is not in the lab");
    }
    let container = spec.containers.first().ok_or_else(|| anyhow!("pod {namespace}/{name} has no container"))?;
    let mut command = container.command.clone().unwrap_or_default();
    command.extend(container.args.clone().unwrap_or_default());
    if command.is_empty() {
        command = vec!["sleep".into(), "infinity".into()];
    }
    let networks = p.metadata.annotations.as_ref().and_then(|a| a.get(NETWORKS_ANNOTATION)).cloned().unwrap_or_default();
    let chain_ifaces = networks_in_annotation(&networks)
        .map_err(|e| anyhow!("pod {namespace}/{name}: {e}"))?
        .into_iter()
        .enumerate()
        .filter(|(_, n)| n == NETWORK_NAME)
        .map(|(i, _)| format!("net{}", i + 1))
        .collect();
    let pair = match p.metadata.annotations.as_ref().and_then(|a| a.get(INTERFACES_ANNOTATION)).map(String::as_str) {
        None | Some("single") => false,
        Some("pair") => true,
        Some(other) => bail!("pod {namespace}/{name}: {INTERFACES_ANNOTATION} is {other:?}, not single or pair"),
    };
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    let external = annotations.get(EXTERNAL_ANNOTATION).is_some_and(|v| v == "true");
    let labels = p.metadata.labels.clone().unwrap_or_default();
    Ok(LabPod { namespace, name, node, labels, command, chain_ifaces, pair, external })
}

fn check_unique(m: &Manifest) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for n in &m.nodes {
        if !seen.insert(("node", String::new(), n.name.clone())) {
            bail!("node {} appears twice", n.name);
        }
    }
    for p in &m.pods {
        if !seen.insert(("pod", p.namespace.clone(), p.name.clone())) {
            bail!("pod {}/{} appears twice", p.namespace, p.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/lab-two-nodes.yaml");

    #[test]
    fn example_parses() {
        let m = parse(EXAMPLE, &[]).unwrap();
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.nodes[0].locator.to_string(), "fcbb:bb00:1::/48");
        assert_eq!(m.nodes[1].underlay6, "fd00:ffff::2".parse::<Ipv6Addr>().unwrap());
        let vnfs: Vec<_> = m.pods.iter().filter(|p| !p.chain_ifaces.is_empty()).collect();
        assert_eq!(vnfs.len(), 2);
        assert_eq!(vnfs[0].chain_ifaces, ["net1"]);
        assert_ne!(vnfs[0].node, vnfs[1].node, "the two VNFs sit on different nodes");
        assert_eq!(m.chains.len(), 1);
        assert_eq!(m.chains[0].spec.functions.len(), 2);
    }

    #[test]
    fn annotations_and_errors() {
        assert_eq!(networks_in_annotation("srv6pipes, other,ns/srv6pipes").unwrap(), ["srv6pipes", "other", "srv6pipes"]);
        assert_eq!(networks_in_annotation(r#"[{"name":"srv6pipes"},{"name":"x"}]"#).unwrap(), ["srv6pipes", "x"]);
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
        assert!(parse(bad, &[]).unwrap_err().to_string().contains("understands"));
        let no_cidr = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n";
        assert!(format!("{:#}", parse(no_cidr, &[]).unwrap_err()).contains("podCIDRs"));
        let orphan = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [fd00::/64]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: n9, containers: [{name: c}]}\n";
        assert!(format!("{:#}", parse(orphan, &[]).unwrap_err()).contains("n9"));
        let loc = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, annotations: {srv6pipes.io/locator: 'fcbb:bb00:99::/48'}}\nspec: {podCIDRs: [fd00::/64]}\n";
        assert_eq!(parse(loc, &[]).unwrap().nodes[0].locator.to_string(), "fcbb:bb00:99::/48");
        let outside = loc.replace("fcbb:bb00:99::/48", "fc00:1::/48");
        let later = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {srv6pipes.io/lab-external: 'true'}}\nspec: {nodeName: n9, containers: [{name: c}]}\n";
        assert!(parse(later, &[]).is_err());
        assert!(parse(later, &["n9".to_string()]).unwrap().pods[0].external, "a running lab's node counts");
        assert!(parse(&outside, &[]).is_err());
    }
}
