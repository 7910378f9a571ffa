//! One planning step shared by the operator and the lab: every chain compiled against the world,
//! then each node's program (its tables and its peers' locator routes) and the nodes each chain
//! touches. The operator builds the world from the API server's objects (`operator/src/world.rs`),
//! the lab from its state (`cli/src/lab/orchestrate.rs`); both program the nodes with this.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::compiler::{self, ChainRef, ChainVerdict, World};
use crate::node_api::{NodeProgram, Peer};

/// `namespace/name` of a chain.
pub type ChainKey = (String, String);

#[derive(Debug, Clone, Default)]
pub struct Planned {
    /// Every node of the world's tables, as a program without peers ([`Planned::program`] has
    /// them): a thousand nodes' programs with their 999 peers each were 92 MiB of the operator.
    pub programs: BTreeMap<String, NodeProgram>,
    /// Every node's locator route; a node's program has all of them but its own.
    pub peers: Vec<Peer>,
    /// Every chain's verdict.
    pub verdicts: BTreeMap<ChainKey, ChainVerdict>,
    /// The nodes each chain's tables touch, in order: one shared name per node (a set of
    /// strings per chain was 80 MiB at 100,000 chains).
    pub chain_nodes: BTreeMap<ChainKey, Vec<Arc<str>>>,
}

impl Planned {
    /// `node`'s whole program: its tables, and every peer but itself.
    pub fn program(&self, node: &str) -> NodeProgram {
        let tables = self.programs.get(node).map(|p| p.tables.clone()).unwrap_or_default();
        NodeProgram { tables, peers: self.peers.iter().filter(|p| p.node != node).cloned().collect() }
    }
}

/// Compiles `chains` against `world`; each node's program has every peer but itself.
pub fn plan(world: &World, peers: &[Peer], chains: &[ChainRef<'_>]) -> Planned {
    let compiled = compiler::compile(world, chains);
    let mut out = Planned { peers: peers.to_vec(), ..Default::default() };
    let mut chain_nodes: BTreeMap<Arc<str>, Vec<Arc<str>>> = BTreeMap::new();
    for (node, mut tables) in compiled.nodes {
        let t = &tables;
        let shared: Arc<str> = Arc::from(node.as_str());
        for chain in t.headends.iter().map(|h| &h.chain).chain(t.proxies.iter().chain(&t.decaps).map(|s| &s.chain)) {
            let nodes = match chain_nodes.get_mut(chain) {
                Some(nodes) => nodes,
                None => chain_nodes.entry(chain.clone()).or_default(),
            };
            // Nodes come in order, each with all of its entries: a node is new to a chain
            // unless it was the last one added.
            if nodes.last().is_none_or(|last| !Arc::ptr_eq(last, &shared)) {
                nodes.push(shared.clone());
            }
        }
        // Grown by pushes: up to half of each table is spare capacity, kept as long as the plan.
        tables.headends.shrink_to_fit();
        tables.proxies.shrink_to_fit();
        tables.decaps.shrink_to_fit();
        tables.pods.shrink_to_fit();
        out.programs.insert(node, NodeProgram { tables, peers: Vec::new() });
    }
    out.chain_nodes = chain_nodes
        .into_iter()
        .filter_map(|(chain, mut nodes)| {
            let (ns, name) = chain.split_once('/')?;
            nodes.shrink_to_fit();
            Some(((ns.to_string(), name.to_string()), nodes))
        })
        .collect();
    out.verdicts = compiled.chains.into_iter().map(|v| ((v.namespace.clone(), v.name.clone()), v)).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::NodeInfo;

    #[test]
    fn each_node_gets_its_program_and_the_other_nodes_as_peers() {
        let node =
            |name: &str, i: u16| NodeInfo { name: name.into(), locator: format!("fcbb:bb00:{i}::/48").parse().unwrap(), pod_cidrs: vec![] };
        let world = World { nodes: vec![node("a", 1), node("b", 2)], ..Default::default() };
        let peer = |name: &str, i: u16| Peer {
            node: name.into(),
            locator: format!("fcbb:bb00:{i}::/48").parse().unwrap(),
            underlay: format!("fd00::{i}").parse().unwrap(),
        };
        let planned = plan(&world, &[peer("a", 1), peer("b", 2)], &[]);
        assert_eq!(planned.programs.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(planned.program("a").peers, vec![peer("b", 2)], "a's peers: b only");
        assert_eq!(planned.program("b").peers, vec![peer("a", 1)]);
        assert!(planned.programs.values().all(|p| p.peers.is_empty()), "the peers once, not per node");
        assert!(planned.verdicts.is_empty() && planned.chain_nodes.is_empty());
    }
}
