//! One planning step shared by the operator and the lab: every chain compiled against the world,
//! then each node's program (its tables and its peers' locator routes) and the nodes each chain
//! touches. The operator builds the world from the API server's objects (`operator/src/world.rs`),
//! the lab from its state (`cli/src/lab/orchestrate.rs`); both program the nodes with this.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::compiler::{
    self, chain_order, claim_proxies, conflicted, prepare, take_proxies, ChainRef, ChainVerdict, ClaimInput, Claims, Fail,
};
use crate::compiler::{Index, NodeTables, SidUse, World};
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
    /// The [`Planner`] plan this is (0: none), which that planner can take back as the last
    /// plan it made.
    pub stamp: u64,
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

/// Plans that cost what changed. A planner remembers, of each chain of its last plan, what its
/// compilation depends on (its spec, as a `T` the caller compares, and its namespace's pods and
/// SID registrations, as a digest) and what checking its proxies takes; given that plan back,
/// it compiles again only the chains whose spec or namespace changed (all of them when the
/// nodes changed), checks every chain's proxies again in order (a chain's conflicts depend on
/// the chains before it), and moves the other chains' entries and verdicts from the last plan
/// into the next. The result is the plan [`plan`] makes from scratch (a randomized test holds
/// it to that). With 10,000 chains, compiling all of them on each change was most of the
/// operator's CPU per change.
pub struct Planner<T> {
    memo: HashMap<ChainKey, Memo<T>>,
    world: WorldDigest,
    /// The stamp of the last plan made (0: none).
    stamp: u64,
}

impl<T> Default for Planner<T> {
    fn default() -> Self {
        Planner { memo: HashMap::new(), world: WorldDigest::default(), stamp: 0 }
    }
}

/// What a planner remembers of a chain of its last plan.
struct Memo<T> {
    token: T,
    claim: Option<ClaimInput>,
    adds: bool,
    insert_sources: Box<[IpAddr]>,
    /// Why its proxies failed their check; None if they passed (or it failed before them).
    failed: Option<Fail>,
}

/// Digests of what chains' compilations read of the world: the nodes (every chain's), and per
/// namespace its pods and their SID registrations, in the world's order. Two 64-bit digests
/// each: a change missed would keep a chain's entries until its next change.
#[derive(Default, PartialEq)]
struct WorldDigest {
    nodes: (u64, u64),
    namespaces: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
struct Digest(DefaultHasher, DefaultHasher);

impl Digest {
    /// Two hashers that differ (the second salted), for 128 bits.
    fn salted() -> Self {
        let mut d = Digest::default();
        d.1.write_u8(1);
        d
    }
    fn add(&mut self, v: &impl Hash) {
        v.hash(&mut self.0);
        v.hash(&mut self.1);
    }
    fn finish(&self) -> (u64, u64) {
        (self.0.finish(), self.1.finish())
    }
}

impl WorldDigest {
    fn of(world: &World) -> Self {
        let mut nodes = Digest::salted();
        nodes.add(&world.nodes);
        let mut by_ns: HashMap<&str, Digest> = HashMap::new();
        for p in &world.pods {
            by_ns.entry(&p.namespace).or_insert_with(Digest::salted).add(p);
        }
        for r in &world.registrations {
            let d = by_ns.entry(&r.pod_namespace).or_insert_with(Digest::salted);
            d.add(&1u8);
            d.add(r);
        }
        WorldDigest { nodes: nodes.finish(), namespaces: by_ns.into_iter().map(|(ns, d)| (ns.to_string(), d.finish())).collect() }
    }
}

/// How a chain remembered from the last plan fares in this one.
enum Fate {
    /// Its proxies passed again: its entries and verdict move from the last plan.
    Kept(Vec<(Arc<str>, SidUse)>),
    /// Its proxies fail: no entries, and its verdict says why.
    Failed(Fail),
    /// Its proxies pass now but did not before: compiled again for its entries.
    Compile,
}

static STAMPS: AtomicU64 = AtomicU64::new(1);

impl<T: PartialEq> Planner<T> {
    /// Plans `chains` (each with its token: equal tokens, the same spec) against `world`, from
    /// `previous` when it is this planner's last plan, else from scratch.
    pub fn plan(&mut self, previous: Option<Planned>, world: &World, peers: &[Peer], mut chains: Vec<(ChainRef<'_>, T)>) -> Planned {
        let digest = WorldDigest::of(world);
        let usable = |p: &Planned| p.stamp != 0 && p.stamp == self.stamp && digest.nodes == self.world.nodes;
        let mut old = previous.filter(usable).unwrap_or_default();
        let mut memo = if old.stamp == 0 { HashMap::new() } else { std::mem::take(&mut self.memo) };
        chains.sort_by(|a, b| chain_order(&a.0, &b.0));
        let index = OnceCell::new();
        let mut claims = Claims::default();
        let mut admitted = BTreeMap::new();
        let mut kept: HashMap<Arc<str>, usize> = HashMap::new();
        let mut fresh: BTreeMap<String, Fresh> = BTreeMap::new();
        let mut verdicts = Vec::with_capacity(chains.len());
        let mut chain_nodes = Vec::new();
        let mut next = HashMap::with_capacity(chains.len());
        for (rank, (c, token)) in chains.into_iter().enumerate() {
            let key: ChainKey = (c.namespace.to_string(), c.name.to_string());
            let same_namespace = digest.namespaces.get(c.namespace) == self.world.namespaces.get(c.namespace);
            let remembered = memo.remove(&key).filter(|m: &Memo<T>| m.token == token && same_namespace);
            // (With its verdict in the last plan, as every remembered chain's is.)
            if let Some((mut m, before)) = remembered.and_then(|m| Some((m, old.verdicts.remove(&key)?))) {
                let fate = match (m.claim.as_ref().map(|ci| claim_proxies(ci, &claims)), &m.failed) {
                    (Some(Err(f)), _) => Fate::Failed(f),
                    (Some(Ok(uses)), None) => Fate::Kept(uses),
                    (None, None) => Fate::Kept(Vec::new()),
                    (_, Some(_)) => Fate::Compile,
                };
                match fate {
                    Fate::Kept(uses) => {
                        if m.adds {
                            take_proxies(uses, None, &m.insert_sources, &mut claims, &mut admitted);
                        }
                        verdicts.push((key.clone(), before));
                        if let Some(nodes) = old.chain_nodes.remove(&key) {
                            chain_nodes.push((key.clone(), nodes));
                        }
                        if let Some(ci) = &m.claim {
                            kept.insert(ci.key().clone(), rank);
                        }
                        next.insert(key, m);
                        continue;
                    }
                    Fate::Failed(f) => {
                        verdicts.push((key.clone(), conflicted(before, f.clone())));
                        m.failed = Some(f);
                        next.insert(key, m);
                        continue;
                    }
                    Fate::Compile => {}
                }
            }
            let index = index.get_or_init(|| Index::new(world));
            let mut p = prepare(index, &c);
            let (verdict, failed) = match p.admit(&mut claims, &mut admitted) {
                Err(f) => (conflicted(p.verdict, f.clone()), Some(f)),
                Ok(()) => {
                    let mut tables = p.tables;
                    tables.retain(|_, t| !(t.headends.is_empty() && t.proxies.is_empty() && t.decaps.is_empty()));
                    if !tables.is_empty() {
                        chain_nodes.push((key.clone(), tables.keys().map(|n| index.node_name(n)).collect()));
                    }
                    for (node, t) in tables {
                        fresh.entry(node).or_default().add(rank, t);
                    }
                    (p.verdict, None)
                }
            };
            verdicts.push((key.clone(), verdict));
            next.insert(key, Memo { token, claim: p.claim, adds: p.adds, insert_sources: p.insert_sources.into(), failed });
        }
        let programs = assemble(world, std::mem::take(&mut old.programs), fresh, &kept, admitted);
        self.memo = next;
        self.world = digest;
        self.stamp = STAMPS.fetch_add(1, Ordering::Relaxed);
        Planned {
            programs,
            peers: peers.to_vec(),
            verdicts: verdicts.into_iter().collect(),
            chain_nodes: chain_nodes.into_iter().collect(),
            stamp: self.stamp,
        }
    }
}

/// The entries of the chains compiled again on one node, in the chains' order (they are
/// compiled in that order), with each chain's run of entries in each table: its rank and how
/// many. (Held per chain and node until the end of the plan, they were a transient of
/// 750 MiB when 100,000 chains were compiled from scratch.)
#[derive(Default)]
struct Fresh {
    tables: NodeTables,
    runs: [Vec<(usize, usize)>; 3],
}

impl Fresh {
    fn add(&mut self, rank: usize, t: NodeTables) {
        fn put<E>(to: &mut Vec<E>, runs: &mut Vec<(usize, usize)>, rank: usize, from: Vec<E>) {
            if !from.is_empty() {
                runs.push((rank, from.len()));
                to.extend(from);
            }
        }
        let [h, p, d] = &mut self.runs;
        put(&mut self.tables.headends, h, rank, t.headends);
        put(&mut self.tables.proxies, p, rank, t.proxies);
        put(&mut self.tables.decaps, d, rank, t.decaps);
    }
}

/// Each node's tables: the pods of the world on it, the entries of the chains `kept` (moved
/// from `old`, in the order they were in) and the chains compiled again (`fresh`, by rank),
/// merged in the chains' order, and the sources `admitted`. Nodes of the world, and others
/// that entries name.
fn assemble(
    world: &World,
    mut old: BTreeMap<String, NodeProgram>,
    mut fresh: BTreeMap<String, Fresh>,
    kept: &HashMap<Arc<str>, usize>,
    mut admitted: BTreeMap<String, Vec<IpAddr>>,
) -> BTreeMap<String, NodeProgram> {
    let mut pods: BTreeMap<&str, Vec<IpAddr>> = world.nodes.iter().map(|n| (n.name.as_str(), Vec::new())).collect();
    for p in &world.pods {
        if let Some(ips) = pods.get_mut(p.node.as_str()) {
            ips.extend(p.ips.iter().copied());
        }
    }
    let names: BTreeSet<String> = pods.keys().map(|n| n.to_string()).chain(old.keys().cloned()).chain(fresh.keys().cloned()).collect();
    let mut out = BTreeMap::new();
    for name in names {
        let before = old.remove(&name).map(|p| p.tables).unwrap_or_default();
        let Fresh { tables: new, runs: [h, p, d] } = fresh.remove(&name).unwrap_or_default();
        let node_pods = pods.remove(name.as_str());
        let world_node = node_pods.is_some();
        let tables = NodeTables {
            headends: merge(before.headends, new.headends, h, |h| &h.chain, kept),
            proxies: merge(before.proxies, new.proxies, p, |u| &u.chain, kept),
            decaps: merge(before.decaps, new.decaps, d, |u| &u.chain, kept),
            insert_sources: admitted.remove(&name).unwrap_or_default(),
            pods: node_pods.unwrap_or_default(),
        };
        let entries = !(tables.headends.is_empty() && tables.proxies.is_empty() && tables.decaps.is_empty());
        if entries || world_node {
            out.insert(name, NodeProgram { tables, peers: Vec::new() });
        }
    }
    out
}

/// The entries of `old` whose chain is `kept` (in their order, which is the chains' order)
/// merged with the `fresh` entries, whose chains' runs (rank, count) are `runs`.
fn merge<E>(
    old: Vec<E>,
    fresh: Vec<E>,
    runs: Vec<(usize, usize)>,
    chain: impl Fn(&E) -> &Arc<str>,
    kept: &HashMap<Arc<str>, usize>,
) -> Vec<E> {
    if old.is_empty() {
        let mut out = fresh;
        out.shrink_to_fit();
        return out;
    }
    let mut out = Vec::with_capacity(old.len() + fresh.len());
    let mut fresh = fresh.into_iter();
    let mut runs = runs.into_iter().peekable();
    // A chain's entries come together: its rank is looked up once for them.
    let mut last: Option<(Arc<str>, Option<usize>)> = None;
    for e in old {
        let c = chain(&e);
        let rank = match &last {
            Some((l, rank)) if Arc::ptr_eq(l, c) => *rank,
            _ => {
                let rank = kept.get(&**c).copied();
                last = Some((c.clone(), rank));
                rank
            }
        };
        let Some(rank) = rank else { continue };
        while let Some((_, n)) = runs.next_if(|(r, _)| *r < rank) {
            out.extend(fresh.by_ref().take(n));
        }
        out.push(e);
    }
    out.extend(fresh);
    out.shrink_to_fit();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{NodeInfo, PodInfo, SidRegistration};

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

    /// A small deterministic generator (xorshift64*), so that a failing sequence can be run again.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const NAMESPACES: [&str; 2] = ["a", "b"];
    const APPS: [&str; 5] = ["client", "server", "fw", "ids", "pipe"];

    fn node(i: usize, generation: usize) -> NodeInfo {
        NodeInfo {
            name: format!("n{i}"),
            locator: format!("fcbb:bb{generation:02x}:{i}::/48").parse().unwrap(),
            pod_cidrs: vec![format!("fd00:10:{i}::/64").parse().unwrap()],
        }
    }

    fn random_pod(rng: &mut Rng, k: usize, nodes: usize) -> PodInfo {
        let n = 1 + rng.below(nodes);
        let app = APPS[rng.below(APPS.len())];
        let mut labels: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
        if rng.chance(30) {
            labels.insert("tier".into(), "x".into());
        }
        PodInfo {
            namespace: NAMESPACES[rng.below(2)].into(),
            name: format!("p{k}"),
            node: format!("n{n}"),
            labels,
            ips: vec![format!("fd00:10:{n}::{:x}", k + 2).parse().unwrap()],
            ready: rng.chance(85),
        }
    }

    fn random_spec(rng: &mut Rng, k: usize) -> srv6pipes_crds::ServiceChainSpec {
        use srv6pipes_crds::{FailurePolicy, Function, Match, PodSelector, Protocol, ProxyKind, Sources, StreamDirection, StreamFunction};
        let functions = (0..1 + rng.below(3))
            .map(|i| {
                let app = ["fw", "ids", "pipe"][rng.below(3)];
                let stream = (app == "pipe" && rng.chance(60)).then(|| {
                    let args = [("op".to_string(), "encode".to_string())].into_iter().collect();
                    Box::new(StreamFunction { function: "base64".into(), args, direction: StreamDirection::Forward })
                });
                let proxy = [ProxyKind::Dynamic, ProxyKind::Dynamic, ProxyKind::Static, ProxyKind::Masquerading][rng.below(4)];
                Function {
                    name: format!("f{i}"),
                    pod_selector: PodSelector::labels([("app", app)]),
                    proxy,
                    rewrites_flows: rng.chance(15),
                    stream,
                }
            })
            .collect();
        let destination = match rng.below(3) {
            0 => format!("fd00:10:{}::/64", 1 + rng.below(3)),
            1 => format!("fd00:99:{k:x}::/64"),
            _ => String::new(),
        };
        srv6pipes_crds::ServiceChainSpec {
            sources: Sources { pod_selector: PodSelector::labels([("app", if rng.chance(90) { "client" } else { "nobody" })]) },
            r#match: Match {
                destination_prefixes: if destination.is_empty() { vec![] } else { vec![destination] },
                protocol: [Protocol::Any, Protocol::Tcp, Protocol::Udp][rng.below(3)],
                ..Default::default()
            },
            functions,
            symmetric: rng.chance(30),
            priority: [0, 0, 10][rng.below(3)],
            failure_policy: if rng.chance(50) { FailurePolicy::Open } else { FailurePolicy::Closed },
        }
    }

    /// The world and chains a random sequence of changes made, with each chain's version.
    struct Cluster {
        world: World,
        nodes: usize,
        generation: usize,
        pods: usize,
        chains: BTreeMap<(String, String), (srv6pipes_crds::ServiceChainSpec, u64)>,
        version: u64,
    }

    impl Cluster {
        /// Every VNF pod registered, but for `missing` percent of them.
        fn registrations(&mut self, rng: &mut Rng, missing: u64) {
            self.world.registrations = self
                .world
                .pods
                .iter()
                .enumerate()
                .filter(|(_, p)| p.labels["app"] != "client" && p.labels["app"] != "server" && !rng.chance(missing))
                .map(|(i, p)| SidRegistration {
                    node: p.node.clone(),
                    pod_namespace: p.namespace.clone(),
                    pod_name: p.name.clone(),
                    interface: "net1".into(),
                    sid: crate::sid::Sid(format!("fcbb:bb{:02x}:{}:e{i:03x}::", self.generation, &p.node[1..]).parse().unwrap()),
                })
                .collect();
        }

        fn change(&mut self, rng: &mut Rng) {
            let key = |rng: &mut Rng| (NAMESPACES[rng.below(2)].to_string(), format!("c{}", rng.below(24)));
            self.version += 1;
            match rng.below(20) {
                0..=5 => {
                    let k = key(rng);
                    let spec = random_spec(rng, self.version as usize);
                    self.chains.insert(k, (spec, self.version));
                }
                6..=8 => {
                    let k = key(rng);
                    self.chains.remove(&k);
                }
                9..=10 => {
                    // The same spec again, with a new version (a status write: a new object).
                    let i = rng.below(self.chains.len().max(1));
                    if let Some((_, v)) = self.chains.values_mut().nth(i) {
                        *v = self.version;
                    }
                }
                11..=13 => {
                    let i = rng.below(self.world.pods.len());
                    let name = self.world.pods[i].name.clone();
                    let mut p = random_pod(rng, self.pods, self.nodes);
                    p.name = name;
                    self.world.pods[i] = p;
                }
                14 => {
                    self.pods += 1;
                    let p = random_pod(rng, self.pods, self.nodes);
                    self.world.pods.push(p);
                }
                15 => {
                    let i = rng.below(self.world.pods.len());
                    self.world.pods[i].ready = !self.world.pods[i].ready;
                }
                16..=17 => {
                    let i = rng.below(self.world.registrations.len().max(1));
                    if i < self.world.registrations.len() {
                        self.world.registrations.remove(i);
                    } else {
                        self.registrations(rng, 10);
                    }
                }
                18 => self.registrations(rng, 10),
                _ => {
                    // A node's locator changes (every SID moves), or a node joins or leaves.
                    match rng.below(3) {
                        0 => self.generation += 1,
                        1 => self.nodes = (self.nodes + 1).min(4),
                        _ => self.nodes = (self.nodes - 1).max(2),
                    }
                    self.world.nodes = (1..=self.nodes).map(|i| node(i, self.generation)).collect();
                    self.registrations(rng, 10);
                }
            }
            self.world.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        }

        fn refs(&self) -> Vec<(ChainRef<'_>, u64)> {
            self.chains.iter().map(|((ns, name), (spec, v))| (ChainRef { namespace: ns, name, spec, generation: None }, *v)).collect()
        }
    }

    /// Whatever changes, a planner's plan from its last one is the plan made from scratch;
    /// and it compiles again only what changed (checked through the verdicts it moves).
    #[test]
    fn a_planner_plans_as_from_scratch_whatever_changes() {
        for seed in 1..=12u64 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut c = Cluster { world: World::default(), nodes: 3, generation: 0, pods: 0, chains: BTreeMap::new(), version: 0 };
            c.world.nodes = (1..=3).map(|i| node(i, 0)).collect();
            for _ in 0..16 {
                c.pods += 1;
                let p = random_pod(&mut rng, c.pods, c.nodes);
                c.world.pods.push(p);
            }
            c.world.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            c.registrations(&mut rng, 10);
            let peers: Vec<Peer> = Vec::new();
            let mut planner = Planner::default();
            let mut last: Option<Planned> = None;
            let (mut conflicts, mut ready) = (0, 0);
            for step in 0..150 {
                c.change(&mut rng);
                let chains: Vec<ChainRef> = c.refs().into_iter().map(|(r, _)| r).collect();
                let want = plan(&c.world, &peers, &chains);
                let got = planner.plan(last.take(), &c.world, &peers, c.refs());
                let at = format!("seed {seed}, step {step}");
                assert_eq!(got.verdicts, want.verdicts, "{at}: verdicts");
                assert_eq!(got.programs, want.programs, "{at}: programs");
                assert_eq!(got.chain_nodes, want.chain_nodes, "{at}: chain nodes");
                conflicts += got.verdicts.values().filter(|v| v.reason == compiler::Reason::Conflict).count();
                ready += got.verdicts.values().filter(|v| v.ready).count();
                last = Some(got);
            }
            assert!(conflicts > 0 && ready > 0, "seed {seed}: the sequence never had a conflict ({conflicts}) or a ready chain ({ready})");
        }
    }

    /// A plan from the last one compiles only the chains that changed: the others' entries are
    /// the last plan's own (moved, not made again).
    #[test]
    fn a_planner_moves_the_unchanged_chains_entries() {
        let mut rng = Rng(7);
        let mut c = Cluster { world: World::default(), nodes: 3, generation: 0, pods: 0, chains: BTreeMap::new(), version: 0 };
        c.world.nodes = (1..=3).map(|i| node(i, 0)).collect();
        for k in 0..12 {
            let mut p = random_pod(&mut rng, k, 3);
            (p.namespace, p.ready) = ("a".into(), true);
            p.labels = [("app".to_string(), APPS[k % APPS.len()].to_string())].into();
            c.world.pods.push(p);
        }
        c.world.pods.sort_by(|a, b| a.name.cmp(&b.name));
        c.registrations(&mut rng, 0);
        let mut spec = random_spec(&mut rng, 1);
        spec.functions.truncate(1);
        spec.functions[0].pod_selector = srv6pipes_crds::PodSelector::labels([("app", "fw")]);
        (spec.functions[0].proxy, spec.functions[0].stream, spec.functions[0].rewrites_flows) =
            (srv6pipes_crds::ProxyKind::Dynamic, None, false);
        (spec.symmetric, spec.failure_policy) = (false, srv6pipes_crds::FailurePolicy::Open);
        spec.sources.pod_selector = srv6pipes_crds::PodSelector::labels([("app", "client")]);
        for i in 0..3 {
            spec.r#match.destination_prefixes = vec![format!("fd00:99:{i}::/64")];
            c.chains.insert(("a".into(), format!("c{i}")), (spec.clone(), 1));
        }
        let mut planner = Planner::default();
        let first = planner.plan(None, &c.world, &[], c.refs());
        assert!(first.verdicts.values().all(|v| v.ready), "{:?}", first.verdicts);
        let rule = |p: &Planned, chain: &str| -> Arc<[crate::sid::Sid]> {
            let h = p.programs.values().flat_map(|t| &t.tables.headends).find(|h| &*h.chain == chain).expect("a rule");
            h.segments.clone()
        };
        let (c0, c1) = (rule(&first, "a/c0"), rule(&first, "a/c1"));
        c.chains.get_mut(&("a".to_string(), "c1".to_string())).unwrap().1 = 2;
        let second = planner.plan(Some(first), &c.world, &[], c.refs());
        assert!(Arc::ptr_eq(&rule(&second, "a/c0"), &c0), "an unchanged chain's rules are moved");
        assert!(!Arc::ptr_eq(&rule(&second, "a/c1"), &c1), "a changed chain's are made again");
        // Not its last plan: from scratch.
        let third = planner.plan(Some(second.clone()), &c.world, &[], c.refs());
        let fourth = planner.plan(Some(second), &c.world, &[], c.refs());
        assert!(!Arc::ptr_eq(&rule(&fourth, "a/c0"), &rule(&third, "a/c0")), "a stale plan is not taken back");
        // A pod of the namespace changes: its chains are compiled again.
        let fifth = planner.plan(Some(fourth), &c.world, &[], c.refs());
        let before = rule(&fifth, "a/c0");
        c.world.pods[0].labels.insert("tier".into(), "x".into());
        let sixth = planner.plan(Some(fifth), &c.world, &[], c.refs());
        assert!(!Arc::ptr_eq(&rule(&sixth, "a/c0"), &before), "the namespace changed");
    }
}
