//! Each node's program as the slices it is published in, remembered per node: a program that
//! did not change is not split again, and a slice whose spec the splitter kept keeps its digest.
//! Pure (no API calls), so the memory it keeps is measured without an API server
//! (`bench/run --only footprint`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use srv6::node_api::{NodeProgram as Program, Peer};
use srv6::slices;
use srv6pipes_crds::NodeProgramSlice;

use crate::publisher::{Slice, Slices};

/// A node's last program and peers, its splitter and the slices it was split into.
struct Split {
    program: Arc<Program>,
    peers: Arc<Vec<Peer>>,
    splitter: slices::Splitter,
    slices: Arc<Slices>,
}

/// Per node, the last program split into slices and those slices.
#[derive(Default)]
pub struct SliceCache(HashMap<String, Split>);

impl SliceCache {
    /// `node`'s program in slices (slice 0 with `peers` but the node itself), keeping chains
    /// in the slices that hold them (as this operator last split it, or as `known`, the
    /// mirror's slices of the node, have them after a restart).
    pub fn slices_of(
        &mut self,
        node: &str,
        program: &Arc<Program>,
        peers: &Arc<Vec<Peer>>,
        known: &BTreeMap<String, Arc<NodeProgramSlice>>,
    ) -> Arc<Slices> {
        if let Some(s) = self.0.get_mut(node) {
            if (Arc::ptr_eq(&s.program, program) || *s.program == **program) && (Arc::ptr_eq(&s.peers, peers) || s.peers == *peers) {
                // The same program in a new plan: compared once, not on every publication of
                // that plan (each reconcile publishes; 1,000 nodes made that most of the CPU).
                (s.program, s.peers) = (program.clone(), peers.clone());
                return s.slices.clone();
            }
        }
        let (s, previous) = match self.0.get_mut(node) {
            Some(s) => {
                let previous = (s.program.clone(), s.peers.clone());
                (s, Some(previous))
            }
            None => {
                let known = known.iter().filter_map(|(name, s)| Some((slices::slice_index(node, name)?, crate::slim::chains_of(s))));
                let split = Split {
                    program: program.clone(),
                    peers: peers.clone(),
                    splitter: slices::Splitter::seeded(known.collect()),
                    slices: Default::default(),
                };
                (self.0.entry(node.to_string()).or_insert(split), None)
            }
        };
        let shapes = s.splitter.split(program, peers, previous.as_ref().map(|(p, peers)| (&**p, &peers[..])));
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
        (s.program, s.peers) = (program.clone(), peers.clone());
        s.slices = Arc::new(out);
        s.slices.clone()
    }

    /// Forgets a node that left.
    pub fn forget(&mut self, node: &str) {
        self.0.remove(node);
    }
}
