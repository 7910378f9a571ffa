//! A node's program in bounded slices (pure). The operator splits each node's [`NodeProgram`]
//! into `NodeProgramSlice` objects so that no object grows with the number of chains; the node
//! daemon merges its node's slices back into one program.
//!
//! - Every chain's entries on a node (headend policies, proxy and decapsulation SIDs) sit whole
//!   in one slice, so a change to one chain rewrites one slice, and a daemon never sees half a
//!   chain.
//! - A slice holds at most [`MAX_SLICE_CHAINS`] chains and about [`MAX_SLICE_BYTES`] of JSON;
//!   a chain larger than that alone gets a slice to itself.
//! - Slice 0 always exists: it carries the node-wide parts (pod addresses, insertion sources,
//!   peers) besides chains.
//! - A chain stays in its slice while it is on the node and its slice is within bounds (it
//!   moves only when it outgrows the slice); new chains fill the lowest slice with room, so
//!   slices emptied by deletions are refilled before new ones are made.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::OnceLock;

use srv6pipes_crds::NodeProgramSliceSpec;

use crate::compiler::{HeadendPolicy, NodeTables, SidUse};
use crate::node_api::{NodeProgram, Peer};

/// Most chains in one slice.
pub const MAX_SLICE_CHAINS: usize = 200;
/// A slice's JSON is kept under this (half the 1 MiB an srv6pipes object may have), unless one
/// chain alone is larger.
pub const MAX_SLICE_BYTES: usize = 512 * 1024;

/// Which chains (`namespace/name`) each slice holds, by index.
pub type Assignment = BTreeMap<u32, BTreeSet<String>>;

/// The object name of `node`'s slice `index`. Node names are DNS subdomains, so `<node>.<index>`
/// is one too, and distinct per (node, index).
pub fn slice_name(node: &str, index: u32) -> String {
    format!("{node}.{index}")
}

/// The index of `node`'s slice named `name`, if it is one of that node's.
pub fn slice_index(node: &str, name: &str) -> Option<u32> {
    name.strip_prefix(node)?.strip_prefix('.')?.parse().ok()
}

/// The chains that have entries in `tables`.
pub fn chains_of(tables: &NodeTables) -> BTreeSet<String> {
    let headends = tables.headends.iter().map(|h| &h.chain);
    headends.chain(tables.proxies.iter().map(|u| &u.chain)).chain(tables.decaps.iter().map(|u| &u.chain)).map(|c| c.to_string()).collect()
}

/// The chains that have entries in a slice's tables as written (JSON), without decoding them.
pub fn chains_of_value(tables: &serde_json::Value) -> BTreeSet<String> {
    ["headends", "proxies", "decaps"]
        .iter()
        .filter_map(|t| tables.get(t)?.as_array())
        .flatten()
        .filter_map(|row| Some(row.get("chain")?.as_str()?.to_string()))
        .collect()
}

pub fn chains_of_spec(spec: &NodeProgramSliceSpec) -> BTreeSet<String> {
    chains_of_value(&spec.tables)
}

/// JSON bytes of `v` (as it will be written), for the size bounds.
fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

/// One chain's entries in a program, borrowed, in the program's order.
#[derive(Default, PartialEq, Hash)]
struct Entries<'a> {
    headends: Vec<&'a HeadendPolicy>,
    proxies: Vec<&'a SidUse>,
    decaps: Vec<&'a SidUse>,
}

impl<'a> Entries<'a> {
    /// The chain's name, as its entries share it.
    fn name(&self) -> Option<&'a Arc<str>> {
        let first = self.headends.first().map(|h| &h.chain);
        first.or_else(|| self.proxies.iter().chain(&self.decaps).next().map(|u| &u.chain))
    }

    /// The JSON bytes these entries add to a slice (each entry and the comma before it).
    fn bytes(&self) -> usize {
        self.headends.iter().map(|h| json_len(h) + 1).sum::<usize>()
            + self.proxies.iter().chain(&self.decaps).map(|u| json_len(u) + 1).sum::<usize>()
    }
}

/// `program`'s entries by chain: of every chain, or (`only`) of those chains alone. Hashed, not
/// ordered: with 10,000 chains on a node, an ordered index of their names was most of a split.
fn entries<'p>(program: &'p NodeProgram, only: Option<&HashSet<&str>>) -> ByChain<'p, Entries<'p>> {
    let mut out: ByChain<Entries> =
        ByChain::with_capacity_and_hasher(only.map_or(program.tables.headends.len(), HashSet::len), Default::default());
    let wanted = |chain: &str| only.is_none_or(|o| o.contains(chain));
    for h in program.tables.headends.iter().filter(|h| wanted(&h.chain)) {
        out.entry(&h.chain).or_default().headends.push(h);
    }
    for u in program.tables.proxies.iter().filter(|u| wanted(&u.chain)) {
        out.entry(&u.chain).or_default().proxies.push(u);
    }
    for u in program.tables.decaps.iter().filter(|u| wanted(&u.chain)) {
        out.entry(&u.chain).or_default().decaps.push(u);
    }
    out
}

/// JSON bytes of slice 0's node-wide parts (pod addresses, insertion sources) and peers.
fn base_bytes(program: &NodeProgram, peers: &[Peer]) -> usize {
    let t = &program.tables;
    json_len(&t.pods) + json_len(&t.insert_sources) + json_len(peers) + 256
}

/// A 64-bit digest of `value`: what is remembered of a value instead of the value (here, of
/// what a split depends on: one chain's entries, slice 0's node-wide parts and peers; in the
/// operator, of a chain's verdict), so that the operator need not keep every node's last
/// program or its last plan while it compiles the next (they were a third of its peak memory
/// at 100,000 chains). Two different values with the same digest would keep the old one's
/// outcome until the next change: a chance of about 2^-64 per changed value.
///
/// foldhash's quality variant, seeded at random once per process (digests are compared within
/// the process only, never stored): SipHash, with a fixed key, took 50 of a split's 70 ms with
/// 10,000 chains of 50 sources each on a node.
pub fn digest(value: &impl Hash) -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| std::hash::RandomState::new().hash_one(0u64));
    foldhash::quality::FixedState::with_seed(seed).hash_one(value)
}

/// Maps keyed by chain name within one split (foldhash: SipHash's per-key cost was a fifth of
/// indexing a program's entries by chain).
type ByChain<'c, V> = HashMap<&'c str, V, foldhash::fast::RandomState>;

/// The digest of slice 0's node-wide parts (pod addresses, insertion sources) and peers.
fn base_digest(program: &NodeProgram, peers: &[Peer]) -> u64 {
    digest(&(&program.tables.pods, &program.tables.insert_sources, peers))
}

/// Which slice each chain goes to, by chain size in bytes: every chain of `previous` stays where
/// it was while it fits (in `previous`' order: by index, then by name), the others fill the
/// lowest index with room, by name. Slice 0 is always there; the chains of each slice come in
/// the compiler's order.
fn place<'c>(bytes: &ByChain<'c, usize>, base_bytes: usize, previous: &[(u32, Vec<&str>)]) -> BTreeMap<u32, Vec<&'c str>> {
    // Fill state per slice: (chains, bytes).
    let mut fill: BTreeMap<u32, (Vec<&'c str>, usize)> = BTreeMap::from([(0, (Vec::new(), base_bytes))]);
    let fits = |f: &(Vec<&'c str>, usize), bytes: usize| f.0.is_empty() || (f.0.len() < MAX_SLICE_CHAINS && f.1 + bytes <= MAX_SLICE_BYTES);
    let mut placed: HashSet<&str, foldhash::fast::RandomState> = HashSet::with_capacity_and_hasher(bytes.len(), Default::default());
    for (index, chains) in previous {
        for chain in chains {
            let Some((&key, &b)) = bytes.get_key_value(*chain) else { continue };
            let f = fill.entry(*index).or_insert_with(|| (Vec::new(), 256));
            if fits(f, b) {
                f.0.push(key);
                f.1 += b;
                placed.insert(key);
            }
        }
    }
    let mut rest: Vec<(&str, usize)> = bytes.iter().filter(|(k, _)| !placed.contains(*k)).map(|(k, b)| (*k, *b)).collect();
    rest.sort_unstable();
    for (key, b) in rest {
        let index = (0..).find(|i| fill.get(i).is_none_or(|f| fits(f, b))).expect("a free index");
        let f = fill.entry(index).or_insert_with(|| (Vec::new(), 256));
        f.0.push(key);
        f.1 += b;
    }
    fill.into_iter()
        .filter(|(index, f)| *index == 0 || !f.0.is_empty())
        .map(|(index, (mut chains, _))| {
            chains.sort_by_key(|c| chain_order(c));
            (index, chains)
        })
        .collect()
}

/// One slice of a node's program as the splitter placed it: which chains it holds, in the
/// compiler's order, and in slice 0 the index of every slice. Its spec is rendered from the
/// program it was split from (or any program with the same entries for those chains and, for
/// slice 0, the same node-wide parts) by a [`Renderer`]; the operator keeps shapes and digests,
/// not specs (the specs of 100,000 chains as JSON values took 2.8 GiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub index: u32,
    /// The chains' names as the program's entries share them.
    pub chains: Vec<Arc<str>>,
    /// The JSON bytes of each chain's entries, parallel to `chains`.
    pub bytes: Vec<u32>,
    /// The digest of each chain's entries, parallel to `chains`.
    pub digests: Vec<u64>,
    /// Slice 0: the indices of every slice of the node's program (0 included); empty otherwise.
    pub indices: Vec<u32>,
}

impl Shape {
    /// The slice's chains, by name.
    fn by_name(&self) -> Vec<&str> {
        let mut chains: Vec<&str> = self.chains.iter().map(|c| &**c).collect();
        chains.sort_unstable();
        chains
    }
}

/// Renders the slices of one node's program. Each slice is rendered from one pass over the
/// program that picks its own chains' entries: a writer renders the one or two slices a change
/// touches, and indexing every chain of the program for each (as this did) cost more than the
/// split.
pub struct Renderer<'p> {
    node: &'p str,
    program: &'p NodeProgram,
    /// Slice 0's peers: these but the node itself.
    peers: &'p [Peer],
}

impl<'p> Renderer<'p> {
    /// `node`'s `program`, whose slice 0 carries `peers` but the node itself.
    pub fn new(node: &'p str, program: &'p NodeProgram, peers: &'p [Peer]) -> Self {
        Renderer { node, program, peers }
    }

    /// The slice as a program: slice 0 with the node-wide parts and the peers.
    fn program(&self, shape: &Shape) -> NodeProgram {
        let mut tables = NodeTables::default();
        let mut peers = Vec::new();
        if shape.index == 0 {
            tables.pods.clone_from(&self.program.tables.pods);
            tables.insert_sources.clone_from(&self.program.tables.insert_sources);
            peers = self.peers.iter().filter(|p| p.node != self.node).cloned().collect();
        }
        let only: HashSet<&str> = shape.chains.iter().map(|c| &**c).collect();
        let entries = entries(self.program, Some(&only));
        for e in shape.chains.iter().filter_map(|c| entries.get(&**c)) {
            tables.headends.extend(e.headends.iter().map(|h| (*h).clone()));
            tables.proxies.extend(e.proxies.iter().map(|u| (*u).clone()));
            tables.decaps.extend(e.decaps.iter().map(|u| (*u).clone()));
        }
        NodeProgram { tables, peers }
    }

    /// The slice's spec as the node's object holds it.
    pub fn spec(&self, shape: &Shape) -> NodeProgramSliceSpec {
        let mut spec = self.program(shape).to_slice_spec(self.node);
        spec.slices.clone_from(&shape.indices);
        spec
    }
}

/// Splits `program` into slices by index, keeping every chain of `previous` where it was while
/// it fits. Slice 0 is always there, with the node-wide parts and the peers.
pub fn split(program: &NodeProgram, previous: &Assignment) -> BTreeMap<u32, NodeProgram> {
    let mut splitter = Splitter::seeded(previous.clone());
    // (The program's own peers: none is the node itself, whose name is not needed.)
    let renderer = Renderer::new("", program, &program.peers);
    splitter.split(program, &program.peers).into_values().map(|shape| (shape.index, renderer.program(&shape))).collect()
}

/// [`split`] as the objects' specs by name, slice 0 listing every index.
pub fn split_specs(node: &str, program: &NodeProgram, previous: &Assignment) -> BTreeMap<String, NodeProgramSliceSpec> {
    let mut splitter = Splitter::seeded(previous.clone());
    let renderer = Renderer::new(node, program, &program.peers);
    splitter.split(program, &program.peers).into_values().map(|shape| (slice_name(node, shape.index), renderer.spec(&shape))).collect()
}

/// A node's program split into slices, remembered so that the next program costs what changed:
/// the same slices as [`split`] with the last split's assignment as `previous`, but only the
/// chains whose entries changed since the previous program are measured (serialized), and a
/// slice whose chains and entries did not change keeps its shape (the same `Arc`), so that its
/// digest need not be computed again. With 10,000 chains on a node, re-splitting every chain
/// for each change was a fifth of the operator's work per change. It keeps its shapes only
/// (chain names and sizes): the entries are the programs'.
#[derive(Default)]
pub struct Splitter {
    /// The chains to keep in place on the first split (the slices as a mirror has them, after
    /// a restart).
    seed: Assignment,
    base_bytes: usize,
    /// The digest of the last split's node-wide parts and peers.
    base: u64,
    /// The last split's slices by index.
    built: BTreeMap<u32, Arc<Shape>>,
}

impl Splitter {
    /// A splitter that keeps the chains of `previous` where they are; its first split builds
    /// every slice.
    pub fn seeded(previous: Assignment) -> Self {
        Splitter { seed: previous, ..Default::default() }
    }

    /// `program`'s slices by index, slice 0 with `peers`. A chain whose entries have the
    /// digest they had in the last split is not measured again, and a slice of such chains only
    /// (and for slice 0, the same node-wide parts, peers and slice indices) keeps its shape.
    pub fn split(&mut self, program: &NodeProgram, peers: &[Peer]) -> BTreeMap<u32, Arc<Shape>> {
        let now = entries(program, None);
        let mut changed: HashSet<&str> = HashSet::new();
        let mut measured: ByChain<(usize, u64)> = ByChain::with_capacity_and_hasher(now.len(), Default::default());
        {
            // Each chain's size and digest as last measured.
            let last: ByChain<(u32, u64)> = self
                .built
                .values()
                .flat_map(|s| s.chains.iter().map(|c| &**c).zip(s.bytes.iter().copied().zip(s.digests.iter().copied())))
                .collect();
            for (chain, e) in &now {
                let d = digest(e);
                let b = match last.get(*chain) {
                    Some((b, before)) if *before == d => *b as usize,
                    _ => {
                        changed.insert(chain);
                        e.bytes()
                    }
                };
                measured.insert(chain, (b, d));
            }
        }
        let bytes: ByChain<usize> = measured.iter().map(|(c, (b, _))| (*c, *b)).collect();
        let base = base_digest(program, peers);
        let base_same = !self.built.is_empty() && self.base == base;
        if !base_same {
            (self.base, self.base_bytes) = (base, base_bytes(program, peers));
        }
        // The last split's slices (the seed's before the first), each by name.
        let previous: Vec<(u32, Vec<&str>)> = if self.built.is_empty() {
            self.seed.iter().map(|(i, chains)| (*i, chains.iter().map(String::as_str).collect())).collect()
        } else {
            self.built.iter().map(|(i, s)| (*i, s.by_name())).collect()
        };
        let placed = place(&bytes, self.base_bytes, &previous);
        // (The seed counts for the first split only.)
        self.seed.clear();
        let indices: Vec<u32> = placed.keys().copied().collect();
        let mut built = BTreeMap::new();
        for (index, chains) in &placed {
            let kept = self.built.get(index).filter(|s| {
                s.chains.iter().map(|c| &**c).eq(chains.iter().copied())
                    && !chains.iter().any(|c| changed.contains(c))
                    && (*index != 0 || (base_same && s.indices == indices))
            });
            let shape = match kept {
                Some(s) => s.clone(),
                None => Arc::new(Shape {
                    index: *index,
                    chains: chains.iter().map(|c| now[c].name().cloned().unwrap_or_else(|| Arc::from(*c))).collect(),
                    bytes: chains.iter().map(|c| u32::try_from(bytes[c]).unwrap_or(u32::MAX)).collect(),
                    digests: chains.iter().map(|c| measured[c].1).collect(),
                    indices: if *index == 0 { indices.clone() } else { Vec::new() },
                }),
            };
            built.insert(*index, shape);
        }
        self.built = built;
        self.built.clone()
    }
}

/// The slices to program a node from, by index, out of those seen (by index): every slice that
/// slice 0 lists, once all of them are there; None while one is missing (being written, or
/// slice 0 itself). Slices that slice 0 does not list (being deleted) are left out.
pub fn complete<'a>(seen: &BTreeMap<u32, &'a NodeProgramSliceSpec>) -> Option<BTreeMap<u32, &'a NodeProgramSliceSpec>> {
    let zero = seen.get(&0)?;
    let mut listed = zero.slices.clone();
    if !listed.contains(&0) {
        listed.push(0);
    }
    listed.iter().map(|i| Some((*i, *seen.get(i)?))).collect()
}

/// `namespace/name` as (namespace, name): the compiler's order of chains.
fn chain_order(chain: &str) -> (&str, &str) {
    chain.split_once('/').unwrap_or((chain, ""))
}

/// One program from a node's slices: the node-wide parts and peers of slice 0, every slice's
/// chains. A chain found in two slices (it is moving from one to the other) is taken from the
/// lower one only: one whole version of it, never a mix. Headend policies come higher priority
/// first, then by chain, as the compiler emits them (equal rules are told apart by their
/// order); SID uses by chain.
pub fn merge<'a>(slices: impl IntoIterator<Item = (u32, &'a NodeProgram)>) -> NodeProgram {
    let mut out = NodeProgram { tables: NodeTables::default(), peers: Vec::new() };
    let mut slices: Vec<(u32, &NodeProgram)> = slices.into_iter().collect();
    slices.sort_by_key(|(i, _)| *i);
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (index, p) in slices {
        if index == 0 {
            out.tables.pods.clone_from(&p.tables.pods);
            out.tables.insert_sources.clone_from(&p.tables.insert_sources);
            out.peers.clone_from(&p.peers);
        }
        let chains = chains_of(&p.tables);
        let fresh = |chain: &str| !taken.contains(chain);
        out.tables.headends.extend(p.tables.headends.iter().filter(|h| fresh(&h.chain)).cloned());
        out.tables.proxies.extend(p.tables.proxies.iter().filter(|u| fresh(&u.chain)).cloned());
        out.tables.decaps.extend(p.tables.decaps.iter().filter(|u| fresh(&u.chain)).cloned());
        taken.extend(chains);
    }
    out.tables.headends.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| chain_order(&a.chain).cmp(&chain_order(&b.chain))));
    out.tables.proxies.sort_by(|a, b| chain_order(&a.chain).cmp(&chain_order(&b.chain)));
    out.tables.decaps.sort_by(|a, b| chain_order(&a.chain).cmp(&chain_order(&b.chain)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{Behavior, HeadendPolicy, SidUse};
    use crate::sid::Sid;

    fn headend(chain: &str, priority: i32, sources: usize) -> Vec<HeadendPolicy> {
        (0..sources)
            .map(|i| HeadendPolicy {
                chain: chain.into(),
                source_pod: format!("default/client-{i}").into(),
                source_interface: None,
                source_ip: format!("fd00:1::{:x}", i + 1).parse().unwrap(),
                destination: "fd00:99::/64".parse().unwrap(),
                segments: vec![Sid("fcbb:bb00:1:1::".parse().unwrap()), Sid("fcbb:bb00:2::d".parse().unwrap())].into(),
                replicas: Arc::new([]),
                drop: false,
                insert: false,
                proto: None,
                ports: vec![],
                source_ports: vec![],
                priority,
            })
            .collect()
    }

    fn sid_use(chain: &str, behavior: Behavior) -> SidUse {
        SidUse {
            sid: Sid("fcbb:bb00:1:1::".parse().unwrap()),
            behavior,
            chain: chain.into(),
            interface: Some("default/fw:net1".into()),
            return_path: vec![],
            rewrites_flows: false,
            both_ways: false,
            pipeline: None,
        }
    }

    /// `n` chains named c0000.. (priority = index mod 3) with `sources` headend policies each,
    /// a proxy and a decapsulation each, in the compiler's order.
    fn program(n: usize, sources: usize) -> NodeProgram {
        let mut tables = NodeTables { pods: vec!["fd00:1::1".parse().unwrap()], ..Default::default() };
        for i in 0..n {
            let chain = format!("default/c{i:04}");
            tables.headends.extend(headend(&chain, (i % 3) as i32, sources));
            tables.proxies.push(sid_use(&chain, Behavior::EndAD));
            tables.decaps.push(sid_use(&chain, Behavior::EndDT46));
        }
        let peers = vec![Peer { node: "n2".into(), locator: "fcbb:bb00:2::/48".parse().unwrap(), underlay: "fd00:ff::2".parse().unwrap() }];
        merge([(0, &NodeProgram { tables, peers })])
    }

    fn assignment(slices: &BTreeMap<u32, NodeProgram>) -> Assignment {
        slices.iter().map(|(i, p)| (*i, chains_of(&p.tables))).collect()
    }

    #[test]
    fn names_round_trip_per_node() {
        assert_eq!(slice_name("node-a.example", 12), "node-a.example.12");
        assert_eq!(slice_index("node-a.example", "node-a.example.12"), Some(12));
        assert_eq!(slice_index("node-a", "node-a.example.12"), None, "another node's slice");
        assert_eq!(slice_index("node-a", "node-a.x"), None);
    }

    #[test]
    fn slices_are_bounded_and_merge_back_to_the_program() {
        let p = program(1000, 2);
        let slices = split(&p, &Assignment::new());
        assert_eq!(slices.len(), 1000usize.div_ceil(MAX_SLICE_CHAINS), "{:?}", slices.keys());
        for (i, s) in &slices {
            assert!(chains_of(&s.tables).len() <= MAX_SLICE_CHAINS);
            assert!(json_len(s) <= MAX_SLICE_BYTES, "slice {i}: {} bytes", json_len(s));
            assert_eq!(!s.peers.is_empty(), *i == 0, "peers in slice 0 only");
            assert_eq!(!s.tables.pods.is_empty(), *i == 0, "pods in slice 0 only");
        }
        assert_eq!(merge(slices.iter().map(|(i, s)| (*i, s))), p);
        let spec = slices[&1].to_slice_spec("n1");
        assert_eq!(chains_of_spec(&spec), chains_of(&slices[&1].tables));
        assert_eq!(spec.chains as usize, MAX_SLICE_CHAINS);
    }

    #[test]
    fn the_byte_bound_holds_for_large_chains_and_a_huge_one_stands_alone() {
        // ~250 bytes per policy: 20 chains of 200 sources (~50 KB each) and one of 3,000.
        let mut p = program(20, 200);
        let huge = headend("default/huge", 0, 3000);
        p.tables.headends.extend(huge);
        let slices = split(&p, &Assignment::new());
        for (i, s) in &slices {
            let chains = chains_of(&s.tables);
            assert!(json_len(s) <= MAX_SLICE_BYTES || chains.len() == 1, "slice {i}: {} bytes, {} chains", json_len(s), chains.len());
        }
        assert!(slices.values().any(|s| chains_of(&s.tables) == BTreeSet::from(["default/huge".to_string()])));
        assert!(slices.len() >= 3, "20 x 50 KB need two slices besides the huge chain's");
        assert_eq!(merge(slices.iter().map(|(i, s)| (*i, s))), merge([(0, &p)]));
    }

    #[test]
    fn a_change_to_one_chain_rewrites_one_slice() {
        let p = program(1000, 1);
        let before = split(&p, &Assignment::new());
        // One chain changes (a source more); one goes; one comes.
        let mut q = p.clone();
        q.tables.headends.extend(headend("default/c0500", 1, 2).into_iter().skip(1));
        q.tables.headends.retain(|h| h.chain.as_ref() != "default/c0007");
        q.tables.proxies.retain(|u| u.chain.as_ref() != "default/c0007");
        q.tables.decaps.retain(|u| u.chain.as_ref() != "default/c0007");
        q.tables.headends.extend(headend("default/new", 0, 1));
        let after = split(&merge([(0, &q)]), &assignment(&before));
        let changed: Vec<u32> = after.iter().filter(|(i, s)| before.get(i) != Some(s)).map(|(i, _)| *i).collect();
        assert_eq!(changed.len(), 2, "c0500's slice, and c0007's which gets the new chain: {changed:?}");
        assert!(chains_of(&after[&0].tables).contains("default/new"), "the new chain fills the hole in slice 0");
        assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
        assert_eq!(merge(after.iter().map(|(i, s)| (*i, s))), merge([(0, &q)]));
    }

    #[test]
    fn emptied_slices_go_and_the_lowest_with_room_is_filled_first() {
        let p = program(600, 1);
        let before = split(&p, &Assignment::new());
        assert_eq!(before.len(), 3);
        // Slice 1's chains all go: it is no longer written; then 10 new chains land in slice 1,
        // the lowest index with room.
        let gone = chains_of(&before[&1].tables);
        let mut q = p.clone();
        q.tables.headends.retain(|h| !gone.contains(&*h.chain));
        q.tables.proxies.retain(|u| !gone.contains(&*u.chain));
        q.tables.decaps.retain(|u| !gone.contains(&*u.chain));
        let after = split(&q, &assignment(&before));
        assert_eq!(after.keys().copied().collect::<Vec<_>>(), [0, 2]);
        for i in 0..10 {
            q.tables.headends.extend(headend(&format!("other/n{i}"), 0, 1));
        }
        let refilled = split(&merge([(0, &q)]), &assignment(&after));
        assert_eq!(refilled.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(chains_of(&refilled[&1].tables).len(), 10);
        assert_eq!(refilled[&0], after[&0]);
        assert_eq!(refilled[&2], after[&2]);
    }

    #[test]
    fn a_chain_that_outgrows_its_slice_moves_alone() {
        let p = program(MAX_SLICE_CHAINS, 1);
        let before = split(&p, &Assignment::new());
        assert_eq!(before.len(), 1);
        let mut q = p.clone();
        q.tables.headends.retain(|h| h.chain.as_ref() != "default/c0100");
        q.tables.headends.extend(headend("default/c0100", 1, 2500));
        let after = split(&merge([(0, &q)]), &assignment(&before));
        assert_eq!(after.len(), 2);
        assert_eq!(chains_of(&after[&1].tables), BTreeSet::from(["default/c0100".to_string()]));
        assert_eq!(chains_of(&after[&0].tables).len(), MAX_SLICE_CHAINS - 1);
    }

    #[test]
    fn a_node_is_programmed_only_from_a_complete_set_of_slices() {
        let specs = split_specs("n1", &program(450, 1), &Assignment::new());
        assert_eq!(specs.keys().collect::<Vec<_>>(), ["n1.0", "n1.1", "n1.2"]);
        assert_eq!(specs["n1.0"].slices, [0, 1, 2]);
        assert!(specs["n1.1"].slices.is_empty() && specs["n1.1"].peers.is_empty());
        let by_index = |names: &[&str]| -> BTreeMap<u32, &NodeProgramSliceSpec> {
            names.iter().map(|n| (slice_index("n1", n).unwrap(), &specs[*n])).collect()
        };
        assert!(complete(&by_index(&["n1.1", "n1.2"])).is_none(), "no slice 0");
        assert!(complete(&by_index(&["n1.0", "n1.2"])).is_none(), "slice 1 not there yet");
        let all = complete(&by_index(&["n1.0", "n1.1", "n1.2"])).unwrap();
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        // A slice being deleted (no longer listed) is left out.
        let mut seen = by_index(&["n1.0", "n1.1", "n1.2"]);
        let stale = specs["n1.1"].clone();
        seen.insert(7, &stale);
        assert_eq!(complete(&seen).unwrap().keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn a_chain_in_two_slices_is_taken_whole_from_the_lower() {
        let old = NodeProgram { tables: NodeTables { headends: headend("d/moving", 0, 1), ..Default::default() }, peers: vec![] };
        let mut new = NodeProgram { tables: NodeTables { headends: headend("d/moving", 0, 3), ..Default::default() }, peers: vec![] };
        new.tables.decaps.push(sid_use("d/moving", Behavior::EndDT46));
        new.tables.headends.extend(headend("d/other", 0, 1));
        let merged = merge([(4, &new), (1, &old)]);
        assert_eq!(merged.tables.headends.iter().filter(|h| &*h.chain == "d/moving").count(), 1, "slice 1's version only");
        assert!(merged.tables.decaps.is_empty(), "none of slice 4's version of the chain");
        assert_eq!(merged.tables.headends.iter().filter(|h| &*h.chain == "d/other").count(), 1);
    }

    #[test]
    fn headends_merge_by_priority_then_chain_as_the_compiler_orders_them() {
        let a = NodeProgram { tables: NodeTables { headends: headend("b-x/z", 5, 1), ..Default::default() }, peers: vec![] };
        let b = NodeProgram {
            tables: NodeTables { headends: [headend("b/a", 0, 1), headend("b/z", 5, 1)].concat(), ..Default::default() },
            peers: vec![],
        };
        let merged = merge([(1, &a), (0, &b)]);
        let order: Vec<&str> = merged.tables.headends.iter().map(|h| &*h.chain).collect();
        // (namespace, name) order: "b" < "b-x", though "b-x/z" < "b/z" as strings.
        assert_eq!(order, ["b/z", "b-x/z", "b/a"]);
    }

    #[test]
    fn a_remembering_splitter_splits_as_from_scratch_and_rebuilds_only_what_changed() {
        // A random walk of programs: chains come, go, grow and shrink, the node's pods change.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut chains: BTreeMap<String, (i32, usize)> = (0..500).map(|i| (format!("default/c{i:04}"), (i % 3, 1))).collect();
        let mut pods = vec!["fd00:1::1".parse().unwrap()];
        let mut splitter = Splitter::default();
        // The last split's program, shapes and rendered specs.
        type Split = (NodeProgram, BTreeMap<u32, Arc<Shape>>, BTreeMap<String, NodeProgramSliceSpec>);
        let mut previous: Option<Split> = None;
        let (mut kept_total, mut rebuilt_total, mut counts) = (0, 0, BTreeSet::new());
        for round in 0..40 {
            for _ in 0..next(4) {
                let name = format!("default/c{:04}", next(700));
                match next(3) {
                    0 => drop(chains.remove(&name)),
                    1 => drop(chains.insert(name, (next(3) as i32, 1 + next(3) as usize))),
                    _ => drop(chains.insert(name, (0, 200 + next(400) as usize))), // large: some move
                }
            }
            if round % 15 == 14 {
                pods.push(format!("fd00:1::{:x}", round + 2).parse().unwrap());
            }
            let mut tables = NodeTables { pods: pods.clone(), ..Default::default() };
            for (chain, (priority, sources)) in &chains {
                tables.headends.extend(headend(chain, *priority, *sources));
                tables.proxies.push(sid_use(chain, Behavior::EndAD));
            }
            let program = merge([(0, &NodeProgram { tables, peers: vec![] })]);
            let assignment: Assignment = previous
                .iter()
                .flat_map(|(_, _, specs)| specs.iter().map(|(name, spec)| (slice_index("n1", name).unwrap(), chains_of_spec(spec))))
                .collect();
            let shapes = splitter.split(&program, &[]);
            let renderer = Renderer::new("n1", &program, &[]);
            let remembered: BTreeMap<String, NodeProgramSliceSpec> =
                shapes.values().map(|s| (slice_name("n1", s.index), renderer.spec(s))).collect();
            let scratch = split_specs("n1", &program, &assignment);
            assert_eq!(remembered, scratch, "round {round}");
            for (index, shape) in &shapes {
                let name = slice_name("n1", *index);
                // Kept (the same Arc) exactly when it did not change.
                let kept = previous.as_ref().and_then(|p| p.1.get(index)).is_some_and(|p| Arc::ptr_eq(p, shape));
                let same = previous.as_ref().and_then(|p| p.2.get(&name)) == Some(&remembered[&name]);
                assert!(!kept || same, "round {round}: slice {name} kept though it changed");
                // (Rebuilt with the same content would be wasted work.)
                assert!(kept || !same, "round {round}: slice {name} rebuilt though nothing in it changed");
                (kept_total, rebuilt_total) = (kept_total + usize::from(kept), rebuilt_total + usize::from(!kept));
            }
            counts.insert(shapes.len());
            previous = Some((program, shapes, remembered));
        }
        assert!(kept_total > rebuilt_total && rebuilt_total > 0, "kept {kept_total}, rebuilt {rebuilt_total}");
        assert!(counts.len() > 1, "the walk never changed the number of slices: {counts:?}");
    }
}
