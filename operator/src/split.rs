//! Each node's program as the slices it is published in, remembered per node: the same program
//! is not split again, and a slice whose shape the splitter kept keeps its digest (the same
//! slices, when no slice changed).
//! Pure (no API calls), so the memory it keeps is measured without an API server
//! (`bench/run --only footprint`).
//!
//! It keeps no program alive: what it remembers of a node's last program is a weak reference
//! (to know the same program again at no cost) and, in the splitter, each chain's entries'
//! digest. Holding every node's last program, it held the old plan's tables while the next plan
//! was compiled: a sixth of the operator's peak at 100,000 chains.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use srv6::node_api::{NodeProgram as Program, Peer};
use srv6::slices;
use srv6pipes_crds::NodeProgramSlice;

use crate::publisher::{Slice, Slices};

/// What is remembered of a node's last split: its program (weakly), its splitter and the
/// slices it was split into.
struct Split {
    program: Weak<Program>,
    peers: Weak<Vec<Peer>>,
    splitter: slices::Splitter,
    slices: Arc<Slices>,
}

/// Per node, the last program split into slices and those slices.
#[derive(Default)]
pub struct SliceCache(HashMap<String, Split>);

impl SliceCache {
    /// `node`'s program in slices (slice 0 with `peers` but the node itself), keeping chains
    /// in the slices that hold them (as this operator last split it, or as `known`, the
    /// mirror's slices of the node, have them after a restart). The same slices (the same
    /// `Arc`) when neither the program nor the peers changed.
    pub fn slices_of(
        &mut self,
        node: &str,
        program: &Arc<Program>,
        peers: &Arc<Vec<Peer>>,
        known: &BTreeMap<String, Arc<NodeProgramSlice>>,
    ) -> Arc<Slices> {
        // The same program of the same plan (each reconcile publishes it): nothing to look at;
        // the weak references keep the addresses from being reused.
        let same = |s: &Split| std::ptr::eq(s.program.as_ptr(), Arc::as_ptr(program)) && std::ptr::eq(s.peers.as_ptr(), Arc::as_ptr(peers));
        if let Some(s) = self.0.get(node).filter(|s| same(s)) {
            return s.slices.clone();
        }
        let s = self.0.entry(node.to_string()).or_insert_with(|| {
            let known = known.iter().filter_map(|(name, s)| Some((slices::slice_index(node, name)?, crate::slim::chains_of(s))));
            Split {
                program: Weak::new(),
                peers: Weak::new(),
                splitter: slices::Splitter::seeded(known.collect()),
                slices: Default::default(),
            }
        });
        (s.program, s.peers) = (Arc::downgrade(program), Arc::downgrade(peers));
        // The splitter keeps the shape (the same `Arc`) of each slice in which nothing
        // changed; such a slice keeps its digest, the others are rendered once for theirs.
        let renderer = slices::Renderer::new(node, program, peers);
        let out: Slices = s
            .splitter
            .split(program, peers)
            .into_values()
            .map(|shape| {
                let name = slices::slice_name(node, shape.index);
                let kept = s.slices.get(&name).filter(|k| Arc::ptr_eq(&k.shape, &shape)).cloned();
                let slice = kept.unwrap_or_else(|| Arc::new(Slice::new(shape, &renderer)));
                (name, slice)
            })
            .collect();
        // Every slice kept: the same slices (no digest of the whole program is needed to know
        // the same program in a new plan).
        if out.len() == s.slices.len() && out.iter().all(|(name, slice)| s.slices.get(name).is_some_and(|k| Arc::ptr_eq(k, slice))) {
            return s.slices.clone();
        }
        s.slices = Arc::new(out);
        s.slices.clone()
    }

    /// Forgets a node that left.
    pub fn forget(&mut self, node: &str) {
        self.0.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use srv6::compiler::NodeTables;

    fn program(pods: &[&str]) -> Arc<Program> {
        let tables = NodeTables { pods: pods.iter().map(|p| p.parse().unwrap()).collect(), ..Default::default() };
        Arc::new(Program { tables, peers: Vec::new() })
    }

    #[test]
    fn the_cache_keeps_no_program_alive_and_knows_the_same_program_again() {
        let mut cache = SliceCache::default();
        let peers = Arc::new(Vec::new());
        let first = program(&["fd00:1::1"]);
        let slices = cache.slices_of("n1", &first, &peers, &BTreeMap::new());
        assert_eq!(slices.len(), 1);
        assert_eq!((Arc::strong_count(&first), Arc::strong_count(&peers)), (1, 1), "nothing held but weakly");
        // The same program, from the same plan or compiled again: the same slices.
        assert!(Arc::ptr_eq(&cache.slices_of("n1", &first, &peers, &BTreeMap::new()), &slices));
        drop(first);
        let again = program(&["fd00:1::1"]);
        assert!(Arc::ptr_eq(&cache.slices_of("n1", &again, &Arc::new(Vec::new()), &BTreeMap::new()), &slices));
        // Another program: slice 0 is split and rendered again, with another digest.
        let other = program(&["fd00:1::1", "fd00:1::2"]);
        let changed = cache.slices_of("n1", &other, &peers, &BTreeMap::new());
        assert!(!Arc::ptr_eq(&changed, &slices));
        assert_ne!(changed["n1.0"].digest, slices["n1.0"].digest);
        // Another node's program is its own.
        assert!(!Arc::ptr_eq(&cache.slices_of("n2", &other, &peers, &BTreeMap::new()), &changed));
    }

    /// A program of `chains` chains (one End.AD SID each; chain 7's interface `interface`).
    fn chains(chains: usize, interface: &str) -> Arc<Program> {
        let mut tables = NodeTables { pods: vec!["fd00:1::1".parse().unwrap()], ..Default::default() };
        for i in 0..chains {
            tables.proxies.push(srv6::compiler::SidUse {
                sid: srv6::sid::Sid(format!("fcbb:bb00:1:{i:x}::").parse().unwrap()),
                behavior: srv6::compiler::Behavior::EndAD,
                chain: format!("default/c{i:04}").into(),
                interface: Some(if i == 7 { interface.into() } else { "default/fw:net1".into() }),
                return_path: vec![],
                rewrites_flows: false,
                both_ways: false,
                pipeline: None,
            });
        }
        Arc::new(Program { tables, peers: Vec::new() })
    }

    #[test]
    fn a_change_in_one_slice_renders_that_slice_alone_and_the_same_entries_keep_every_slice() {
        let (mut cache, peers) = (SliceCache::default(), Arc::new(Vec::new()));
        let first = cache.slices_of("n1", &chains(450, "default/fw:net1"), &peers, &BTreeMap::new());
        assert_eq!(first.len(), 3, "{:?}", first.keys());
        // Chain 7 (slice 0) moves to another interface: slice 0 alone is new.
        let moved = cache.slices_of("n1", &chains(450, "default/fw2:net1"), &peers, &BTreeMap::new());
        assert_ne!(moved["n1.0"].digest, first["n1.0"].digest);
        for name in ["n1.1", "n1.2"] {
            assert!(Arc::ptr_eq(&moved[name], &first[name]), "{name} rebuilt though none of its chains changed");
        }
        // The same entries compiled again (another plan): the very same slices.
        let again = cache.slices_of("n1", &chains(450, "default/fw2:net1"), &peers, &BTreeMap::new());
        assert!(Arc::ptr_eq(&again, &moved));
        // One chain more: it fills the last slice, the others stay.
        let more = cache.slices_of("n1", &chains(451, "default/fw2:net1"), &peers, &BTreeMap::new());
        assert!(!Arc::ptr_eq(&more, &moved));
        assert!(Arc::ptr_eq(&more["n1.1"], &moved["n1.1"]));
        assert_eq!(more["n1.2"].shape.chains.len(), moved["n1.2"].shape.chains.len() + 1);
    }
}
