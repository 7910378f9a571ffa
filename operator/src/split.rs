//! Each node's program as the slices it is published in, remembered per node: a program that
//! did not change is not split again, and a slice whose spec the splitter kept keeps its digest.
//! Pure (no API calls), so the memory it keeps is measured without an API server
//! (`bench/run --only footprint`).
//!
//! It keeps no program alive: what it remembers of a node's last program is a weak reference
//! (to know the same program again at no cost) and digests (of the whole program, and in the
//! splitter of each chain's entries). Holding every node's last program, it held the old plan's
//! tables while the next plan was compiled: a sixth of the operator's peak at 100,000 chains.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use srv6::node_api::{NodeProgram as Program, Peer};
use srv6::slices;
use srv6pipes_crds::NodeProgramSlice;

use crate::publisher::{Slice, Slices};

/// What is remembered of a node's last split: its program (weakly) and the digest of that
/// program and its peers, its splitter and the slices it was split into.
struct Split {
    program: Weak<Program>,
    peers: Weak<Vec<Peer>>,
    digest: u64,
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
        // The same program of the same plan (each reconcile publishes it): no digest needed;
        // the weak references keep the addresses from being reused.
        let same = |s: &Split| std::ptr::eq(s.program.as_ptr(), Arc::as_ptr(program)) && std::ptr::eq(s.peers.as_ptr(), Arc::as_ptr(peers));
        if let Some(s) = self.0.get(node).filter(|s| same(s)) {
            return s.slices.clone();
        }
        let d = slices::digest(&(&**program, &peers[..]));
        let s = self.0.entry(node.to_string()).or_insert_with(|| {
            let known = known.iter().filter_map(|(name, s)| Some((slices::slice_index(node, name)?, crate::slim::chains_of(s))));
            Split {
                program: Weak::new(),
                peers: Weak::new(),
                digest: !d, // (anything but d: the first split builds every slice)
                splitter: slices::Splitter::seeded(known.collect()),
                slices: Default::default(),
            }
        });
        (s.program, s.peers) = (Arc::downgrade(program), Arc::downgrade(peers));
        if s.digest == d {
            // The same program in a new plan: hashed once, not on every publication of that
            // plan (each reconcile publishes; 1,000 nodes made that most of the CPU).
            return s.slices.clone();
        }
        s.digest = d;
        let shapes = s.splitter.split(program, peers);
        // A slice whose shape the splitter kept keeps its digest; the others are rendered once
        // for theirs.
        let renderer = slices::Renderer::new(node, program, peers);
        let out: Slices = shapes
            .into_values()
            .map(|shape| {
                let name = slices::slice_name(node, shape.index);
                let kept = s.slices.get(&name).filter(|k| Arc::ptr_eq(&k.shape, &shape)).cloned();
                let slice = kept.unwrap_or_else(|| Arc::new(Slice::new(shape, &renderer)));
                (name, slice)
            })
            .collect();
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
}
