//! The chain compiler: ServiceChains + pods + nodes + SID registrations in, per-node tables out.
//!
//! Pure: the lab and the operator gather the world, call [`compile`], and hand each node daemon
//! its [`NodeTables`]. Nothing here touches the kernel or an API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};
use srv6pipes_crds::{Hop, Path, Protocol, Replica, ServiceChainSpec, ServiceChainStatus};

use crate::pipes::Pipeline;
use crate::sid::{Locator, Sid};

mod chain;
mod claims;
mod index;
pub(crate) use chain::{claim_proxies, conflicted, prepare, ClaimInput, Fail, Prepared};
pub(crate) use claims::Claims;
pub(crate) use index::Index;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub locator: Locator,
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub ready: bool,
}

/// A VNF interface registered with its node daemon, which gave it `sid`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SidRegistration {
    pub node: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub interface: String,
    pub sid: Sid,
}

#[derive(Debug, Clone, Default)]
pub struct World {
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    pub registrations: Vec<SidRegistration>,
}

#[derive(Debug, Clone)]
pub struct ChainRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a ServiceChainSpec,
    /// The resource's `metadata.generation`: the spec version its verdict is compiled from.
    pub generation: Option<i64>,
}

/// Classify traffic entering from `source_ip` (a pod on this node) towards `destination` and
/// push `segments` (travel order) with H.Encaps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeadendPolicy {
    /// `namespace/name`, shared by every entry of the chain.
    pub chain: Arc<str>,
    /// `namespace/name`, shared by every rule of the compilation from that pod.
    pub source_pod: Arc<str>,
    /// `namespace/pod:interface` when the rule classifies what a stream proxy sends on its
    /// chain interface (the replies it relays, toward the client) rather than what a pod sends
    /// on its primary one; `source_ip` is then the server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_interface: Option<Arc<str>>,
    pub source_ip: IpAddr,
    /// Same family as `source_ip`; the inner packets are of that family.
    pub destination: IpNet,
    /// The first path (every hop's first replica), in travel order. Shared by the chain's rules
    /// that push it (500,000 rules of 100,000 chains held 180 MiB of copies in the operator).
    pub segments: Arc<[Sid]>,
    /// Every hop's replicas, parallel to `segments`: the headend picks one per hop by flow hash.
    #[serde(default)]
    pub replicas: Arc<[Vec<Sid>]>,
    /// failurePolicy Closed with a function that has no replica: drop (and count) the traffic.
    #[serde(default)]
    pub drop: bool,
    /// H.Insert instead of H.Encaps (a chain of Masquerading functions): the SRH goes into the
    /// packet, with the packet's own destination as its last segment.
    #[serde(default)]
    pub insert: bool,
    /// IP protocol (per the destination's family: ICMP is 1 or 58); None = any.
    #[serde(default)]
    pub proto: Option<u8>,
    /// Destination port ranges, inclusive; empty = any.
    #[serde(default)]
    pub ports: Vec<(u16, u16)>,
    /// Source port ranges, inclusive; empty = any. A symmetric chain's reverse rules: the
    /// forward destination ports, so that they match exactly the replies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ports: Vec<(u16, u16)>,
    #[serde(default)]
    pub priority: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Behavior {
    /// End.AD, dynamic proxy in front of an SR-unaware VNF interface.
    #[serde(rename = "End.AD")]
    EndAD,
    /// End.AS, static proxy: the headers for the way back are configured (`return_path`).
    #[serde(rename = "End.AS")]
    EndAS,
    /// Pop the outer header and route the inner IPv4 or IPv6 packet (End.DT46 semantics on the
    /// main table).
    #[serde(rename = "End.DT46")]
    EndDT46,
    /// End.AM, masquerading proxy: the packet keeps its inserted SRH, the VNF sees the final
    /// destination as DA.
    #[serde(rename = "End.AM")]
    EndAM,
    /// SRv6 pipes: End.AD inbound into an SR-aware stream proxy, which terminates the TCP
    /// connection and applies `SidUse::pipeline`.
    #[serde(rename = "End.STREAM")]
    Stream,
}

/// A SID of this node that some chain uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SidUse {
    pub sid: Sid,
    pub behavior: Behavior,
    pub chain: Arc<str>,
    /// `namespace/pod:interface` for proxies, shared by every use of the compilation of that
    /// interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<Arc<str>>,
    /// End.AS: the hops after this one (replicas each, decapsulation last), pushed on what the
    /// VNF returns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub return_path: Vec<Vec<Sid>>,
    /// The function rewrites flows: End.AD learns and matches per interface only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewrites_flows: bool,
    /// The chain is symmetric: the interface carries both of its directions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub both_ways: bool,
    /// Behavior::Stream: the functions the proxy applies to this SID's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
}

/// End.AD SIDs of a node's proxies that serve several chains, or both directions of one: their
/// per-interface headers belong to whichever flow was learnt last, so a packet the per-flow
/// cache does not know must be dropped there, never sent on another chain's (or direction's)
/// remaining segments.
pub fn shared_proxies(proxies: &[SidUse]) -> BTreeSet<Sid> {
    let mut chains: BTreeMap<Sid, (&str, bool)> = BTreeMap::new();
    let mut shared = BTreeSet::new();
    for u in proxies.iter().filter(|u| u.behavior == Behavior::EndAD) {
        let first = chains.entry(u.sid).or_insert((&u.chain, u.both_ways));
        if u.both_ways || *first.0 != *u.chain {
            shared.insert(u.sid);
        }
    }
    shared
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeTables {
    /// Every pod address on the node: their interfaces get the closed-domain guard.
    #[serde(default)]
    pub pods: Vec<IpAddr>,
    pub headends: Vec<HeadendPolicy>,
    pub proxies: Vec<SidUse>,
    pub decaps: Vec<SidUse>,
    /// Sources that may address this node's End.AM SIDs besides the locator block: SRH
    /// insertion keeps the pods' own addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insert_sources: Vec<IpAddr>,
}

/// Why a chain is not (fully) programmed; names follow the operator's `Degraded` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    Programmed,
    NoReplicas,
    SidPending,
    InvalidMatch,
    NoSources,
    TooManySegments,
    Unsupported,
    /// A static proxy's interface is claimed by another chain (End.AS has one return path), or a
    /// pod is selected both by a stream and by a packet function.
    Conflict,
    /// A stream function is unknown, has a bad argument, or meets a protocol without TCP.
    InvalidFunction,
}

/// A chain as compiled: whether and how it is programmed. Its hops and paths are the status'
/// in a compact form (SIDs as addresses, node names shared): a plan holds every chain's, and
/// as the status' strings they were 2.2 KB a chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainVerdict {
    pub namespace: String,
    pub name: String,
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    pub hops: Vec<HopVerdict>,
    /// The distinct segment lists, in travel order.
    pub paths: Vec<Vec<Sid>>,
    /// Programmed, but not as asked (failurePolicy Open bypassing a function).
    pub degraded: Option<(Reason, String)>,
    /// The functions' names in order, comma-separated (the status' `functions`).
    pub functions: String,
    /// The generation of the chain's spec it was compiled from (its status' observedGeneration:
    /// a plan compiled before the spec's last change says so).
    pub generation: Option<i64>,
}

/// One function of a chain as compiled: its ready replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HopVerdict {
    pub function: String,
    pub replicas: Vec<ReplicaVerdict>,
}

/// A ready replica of a function: its pod (in the chain's namespace), node and SID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaVerdict {
    pub pod: Arc<str>,
    pub node: Arc<str>,
    pub sid: Sid,
}

impl HopVerdict {
    fn status(&self) -> Hop {
        let replica = |r: &ReplicaVerdict| Replica { pod: r.pod.to_string(), node: r.node.to_string(), sid: r.sid.to_string() };
        Hop { function: self.function.clone(), replicas: self.replicas.iter().map(replica).collect() }
    }
}

impl ChainVerdict {
    /// The resource status for this verdict: `Ready` with the reason, plus hops and paths.
    /// `now` stamps the condition (kept pure: the caller owns the clock).
    pub fn status(&self, now: Time) -> ServiceChainStatus {
        let generation = self.generation;
        let mut conditions = vec![Condition {
            type_: "Ready".into(),
            status: if self.ready { "True" } else { "False" }.into(),
            reason: format!("{:?}", self.reason),
            message: self.message.clone(),
            last_transition_time: now.clone(),
            observed_generation: generation,
        }];
        if let Some((reason, message)) = &self.degraded {
            conditions.push(Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: format!("{reason:?}"),
                message: message.clone(),
                last_transition_time: now,
                observed_generation: generation,
            });
        }
        ServiceChainStatus {
            observed_generation: generation,
            conditions,
            hops: self.hops.iter().map(HopVerdict::status).collect(),
            paths: self.paths.iter().map(|p| Path { segments: p.iter().map(Sid::to_string).collect() }).collect(),
            path_count: Some(self.paths.len() as u32),
            functions: Some(self.functions.clone()),
            digest: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub nodes: BTreeMap<String, NodeTables>,
    pub chains: Vec<ChainVerdict>,
}

/// Compiles every chain against the world, from scratch (`crate::plan::Planner` compiles what
/// changed since its last plan, and is checked against this).
pub fn compile(world: &World, chains: &[ChainRef<'_>]) -> Compiled {
    let mut out = Compiled::default();
    for n in &world.nodes {
        out.nodes.entry(n.name.clone()).or_default();
    }
    for p in &world.pods {
        if let Some(t) = out.nodes.get_mut(&p.node) {
            t.pods.extend(p.ips.iter().copied());
        }
    }
    let mut order: Vec<&ChainRef> = chains.iter().collect();
    order.sort_by(|a, b| chain_order(a, b));
    let mut claims = Claims::default();
    let mut admitted = BTreeMap::new();
    let index = Index::new(world);
    for chain in order {
        let mut p = prepare(&index, chain);
        let verdict = match p.admit(&mut claims, &mut admitted) {
            Err(f) => conflicted(p.verdict, f),
            Ok(()) => {
                for (node, t) in p.tables {
                    append(out.nodes.entry(node).or_default(), t);
                }
                p.verdict
            }
        };
        out.chains.push(verdict);
    }
    for (node, sources) in admitted {
        out.nodes.entry(node).or_default().insert_sources = sources;
    }
    out.chains.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The order chains are compiled in: higher priority first, then by namespace and name. A
/// chain's proxies are checked against what the chains before it claimed.
pub(crate) fn chain_order(a: &ChainRef<'_>, b: &ChainRef<'_>) -> std::cmp::Ordering {
    b.spec.priority.cmp(&a.spec.priority).then((a.namespace, a.name).cmp(&(b.namespace, b.name)))
}

/// A chain whose proxies passed the check: they are claimed, in order, and put in the chain's
/// `tables` (when given: an unchanged chain's are in the last plan's tables already); the
/// sources of its inserted SRHs are admitted at the nodes of its End.AM SIDs (`admitted`: each
/// address once per node, in the chains' order).
pub(crate) fn take_proxies(
    uses: Vec<(Arc<str>, SidUse)>,
    mut tables: Option<&mut BTreeMap<String, NodeTables>>,
    insert_sources: &[IpAddr],
    claims: &mut Claims,
    admitted: &mut BTreeMap<String, Vec<IpAddr>>,
) {
    for (node, usage) in uses {
        if usage.behavior == Behavior::EndAM {
            let at = admitted.entry(node.to_string()).or_default();
            for ip in insert_sources {
                if !at.contains(ip) {
                    at.push(*ip);
                }
            }
        }
        claims.add(&usage);
        if let Some(t) = tables.as_deref_mut() {
            t.entry(node.to_string()).or_default().proxies.push(usage);
        }
    }
}

impl Prepared {
    /// Checks the chain's proxies against what the chains before it claimed: when they pass
    /// (or the chain has none), they are taken ([`take_proxies`], into the chain's tables)
    /// when the chain uses them; when they fail, why.
    pub(crate) fn admit(&mut self, claims: &mut Claims, admitted: &mut BTreeMap<String, Vec<IpAddr>>) -> Result<(), Fail> {
        let uses = self.claim.as_ref().map(|c| claim_proxies(c, claims)).transpose()?.unwrap_or_default();
        if self.adds {
            take_proxies(uses, Some(&mut self.tables), &self.insert_sources, claims, admitted);
        }
        Ok(())
    }
}

/// Appends a chain's entries on a node to the node's tables.
pub(crate) fn append(to: &mut NodeTables, from: NodeTables) {
    to.headends.extend(from.headends);
    to.proxies.extend(from.proxies);
    to.decaps.extend(from.decaps);
}

/// The chain's SRH tag (RFC 8754 §2: a class of packets): End.AD's per-flow cache counts its
/// entries per tag against the per-chain quota. A hash of `namespace/name`, the same on every
/// node; two chains sharing a tag share a quota.
pub fn chain_tag(chain: &str) -> u16 {
    let h = chain.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    (h ^ (h >> 16)) as u16
}

/// Slots of a hop's replica table: the headend picks slot `crate::flow::replica_slot` of the
/// flow's direction-independent hash, the same slot for every hop.
pub const REPLICA_SLOTS: usize = 64;

/// Fills a hop's slot table by rendezvous hashing: each slot goes to the replica with the
/// highest hash of (slot, SID). It depends on the function's replicas alone, not on the hop's
/// position, so the forward and the reverse rules of a symmetric chain (where a function sits
/// at different hops) map a flow to the same replica; the functions of a chain are still
/// independent of each other, since their SIDs differ. Deterministic on every node, and when a
/// replica leaves only its own slots move, so the other replicas' flows keep their replicas.
pub fn replica_slots(replicas: &[Sid]) -> Vec<Sid> {
    let weight = |slot: usize, sid: &Sid| -> u64 {
        // FNV-1a 64 over (slot, SID), then a final avalanche (splitmix64).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in (slot as u32).to_le_bytes().iter().chain(&sid.0.octets()) {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    };
    (0..REPLICA_SLOTS).map(|slot| *replicas.iter().max_by_key(|sid| (weight(slot, sid), **sid)).expect("at least one replica")).collect()
}

fn parse_destinations(prefixes: &[String]) -> Result<Vec<IpNet>, String> {
    prefixes.iter().map(|p| p.parse::<IpNet>().map_err(|e| format!("destinationPrefixes: {p:?}: {e}"))).collect()
}

/// The IP protocol number of a match for packets of `ip`'s family.
fn proto_number(p: Protocol, ip: IpAddr) -> Option<u8> {
    match p {
        Protocol::Any => None,
        Protocol::Tcp => Some(6),
        Protocol::Udp => Some(17),
        Protocol::Icmp => Some(if ip.is_ipv6() { 58 } else { 1 }),
    }
}

/// "80" or "8000-8080".
fn parse_ports(ports: &[String]) -> Result<Vec<(u16, u16)>, String> {
    ports
        .iter()
        .map(|p| {
            let bad = || format!("destinationPorts: {p:?} is not a port or a range LOW-HIGH");
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let (lo, hi): (u16, u16) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
            if lo > hi || lo == 0 {
                return Err(bad());
            }
            Ok((lo, hi))
        })
        .collect()
}

fn owner_of<'w>(world: &'w World, destinations: &[IpNet]) -> Option<&'w String> {
    if destinations.is_empty() {
        return None;
    }
    world.nodes.iter().find(|n| destinations.iter().all(|d| n.pod_cidrs.iter().any(|c| c.contains(d)))).map(|n| &n.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use srv6pipes_crds::{FailurePolicy, Function, Match, ProxyKind, Sources};

    fn sel(k: &str, v: &str) -> srv6pipes_crds::PodSelector {
        srv6pipes_crds::PodSelector::labels([(k, v)])
    }

    fn pod(ns: &str, name: &str, node: &str, label: (&str, &str), ip: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            labels: [(label.0.to_string(), label.1.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            ready: true,
        }
    }

    fn reg(node: &str, ns: &str, pod: &str, sid: &str) -> SidRegistration {
        SidRegistration {
            node: node.into(),
            pod_namespace: ns.into(),
            pod_name: pod.into(),
            interface: "net1".into(),
            sid: Sid(sid.parse().unwrap()),
        }
    }

    fn world() -> World {
        World {
            nodes: vec![
                NodeInfo {
                    name: "n1".into(),
                    locator: "fcbb:bb00:1::/48".parse().unwrap(),
                    pod_cidrs: vec!["fd00:10:1::/64".parse().unwrap()],
                },
                NodeInfo {
                    name: "n2".into(),
                    locator: "fcbb:bb00:2::/48".parse().unwrap(),
                    pod_cidrs: vec!["fd00:10:2::/64".parse().unwrap()],
                },
            ],
            pods: vec![
                pod("default", "client", "n1", ("app", "client"), "fd00:10:1::2"),
                pod("default", "server", "n2", ("app", "server"), "fd00:10:2::2"),
                pod("default", "fw-0", "n1", ("vnf", "fw"), "fd00:10:1::3"),
                pod("default", "ids-0", "n2", ("vnf", "ids"), "fd00:10:2::3"),
                pod("other", "fw-x", "n2", ("vnf", "fw"), "fd00:10:2::9"),
            ],
            registrations: vec![
                reg("n1", "default", "fw-0", "fcbb:bb00:1:e001::"),
                reg("n2", "default", "ids-0", "fcbb:bb00:2:e001::"),
                reg("n2", "other", "fw-x", "fcbb:bb00:2:e002::"),
            ],
        }
    }

    fn spec(dst: &[&str]) -> ServiceChainSpec {
        ServiceChainSpec {
            sources: Sources { pod_selector: sel("app", "client") },
            r#match: Match { destination_prefixes: dst.iter().map(|s| s.to_string()).collect(), ..Default::default() },
            functions: vec![
                Function {
                    name: "fw".into(),
                    pod_selector: sel("vnf", "fw"),
                    proxy: ProxyKind::Dynamic,
                    rewrites_flows: false,
                    stream: None,
                },
                Function {
                    name: "ids".into(),
                    pod_selector: sel("vnf", "ids"),
                    proxy: ProxyKind::Dynamic,
                    rewrites_flows: false,
                    stream: None,
                },
            ],
            ..Default::default()
        }
    }

    fn chain<'a>(name: &'a str, spec: &'a ServiceChainSpec) -> ChainRef<'a> {
        ChainRef { namespace: "default", name, spec, generation: None }
    }

    #[test]
    fn two_function_chain_compiles_to_per_node_tables() {
        let s = spec(&["fd00:10:2::/64"]);
        let out = compile(&world(), &[ChainRef { generation: Some(3), ..chain("web", &s) }]);
        let v = &out.chains[0];
        assert!(v.ready, "{v:?}");
        assert_eq!(v.reason, Reason::Programmed);
        let segs = ["fcbb:bb00:1:e001::", "fcbb:bb00:2:e001::", "fcbb:bb00:2:d6::"];
        assert_eq!(v.paths, vec![segs.iter().map(|s| Sid(s.parse().unwrap())).collect::<Vec<_>>()]);
        assert_eq!(&*v.hops[0].replicas[0].pod, "fw-0", "the other namespace's fw-x is never used");
        assert_eq!(v.hops[1].replicas.len(), 1);

        let n1 = &out.nodes["n1"];
        assert_eq!(n1.headends.len(), 1);
        let h = &n1.headends[0];
        assert_eq!(h.source_ip, "fd00:10:1::2".parse::<IpAddr>().unwrap());
        assert_eq!(h.destination, "fd00:10:2::/64".parse::<IpNet>().unwrap());
        assert_eq!(h.segments.iter().map(|s| s.to_string()).collect::<Vec<_>>(), segs);
        assert_eq!(n1.proxies.len(), 1);
        assert!(n1.decaps.is_empty());
        let guarded: Vec<String> = n1.pods.iter().map(|a| a.to_string()).collect();
        assert_eq!(guarded.len(), 2);
        assert_eq!(guarded, ["fd00:10:1::2", "fd00:10:1::3"], "every pod on n1 is guarded");
        let n2 = &out.nodes["n2"];
        assert!(n2.headends.is_empty());
        assert_eq!(n2.proxies[0].interface.as_deref(), Some("default/ids-0:net1"));
        assert_eq!(n2.decaps.len(), 1, "the destination's node decapsulates");
        assert_eq!(n2.decaps[0].behavior, Behavior::EndDT46);

        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let st = v.status(now);
        assert_eq!(st.observed_generation, Some(3), "the generation compiled");
        assert_eq!((st.conditions[0].type_.as_str(), st.conditions[0].status.as_str()), ("Ready", "True"));
        assert_eq!(st.conditions[0].reason, "Programmed");
        assert_eq!(st.paths, vec![Path { segments: segs.iter().map(|s| s.to_string()).collect() }], "the status' paths as text");
        assert_eq!(st.hops[0].replicas[0].sid, "fcbb:bb00:1:e001::");
        assert_eq!((st.hops[0].replicas[0].pod.as_str(), st.hops[0].replicas[0].node.as_str()), ("fw-0", "n1"));
    }

    #[test]
    fn decap_falls_back_to_last_function_node() {
        let s = spec(&["2001:db8::/32"]);
        let out = compile(&world(), &[chain("web", &s)]);
        assert!(out.chains[0].ready);
        assert_eq!(out.nodes["n2"].decaps.len(), 1);
        let s = spec(&[]);
        let out = compile(&world(), &[chain("all", &s)]);
        let dsts: Vec<String> = out.nodes["n1"].headends.iter().map(|h| h.destination.to_string()).collect();
        assert_eq!(dsts, ["::/0"], "no prefix = everything (of the sources' families)");
    }

    #[test]
    fn ipv4_destinations_use_ipv4_sources() {
        let mut w = world();
        w.pods[0].ips.push("10.10.1.2".parse().unwrap());
        let s = spec(&["10.10.2.0/24", "fd00:10:2::/64"]);
        let out = compile(&w, &[chain("web", &s)]);
        assert!(out.chains[0].ready, "{:?}", out.chains[0]);
        let mut h: Vec<(String, String)> =
            out.nodes["n1"].headends.iter().map(|h| (h.source_ip.to_string(), h.destination.to_string())).collect();
        h.sort();
        assert_eq!(h, [("10.10.1.2".into(), "10.10.2.0/24".into()), ("fd00:10:1::2".into(), "fd00:10:2::/64".into())]);
        let v4only = spec(&["10.10.2.0/24"]);
        let out = compile(&world(), &[chain("v4", &v4only)]);
        assert_eq!(out.chains[0].reason, Reason::NoSources, "no IPv4 source address");
    }

    #[test]
    fn replicas_spread_over_paths_without_combinations() {
        let mut w = world();
        for i in 1..3 {
            w.pods.push(pod("default", &format!("ids-{i}"), "n2", ("vnf", "ids"), "fd00:10:2::7"));
            w.registrations.push(reg("n2", "default", &format!("ids-{i}"), &format!("fcbb:bb00:2:e10{i}::")));
        }
        let s = spec(&["fd00:10:2::/64"]);
        let out = compile(&w, &[chain("web", &s)]);
        let v = &out.chains[0];
        assert_eq!(v.hops[1].replicas.len(), 3);
        assert_eq!(v.paths.len(), 3, "as many paths as the widest hop");
        let h = &out.nodes["n1"].headends[0];
        assert_eq!(h.replicas.iter().map(Vec::len).collect::<Vec<_>>(), [1, 3, 1], "per hop, no combinations");
        let used: std::collections::BTreeSet<_> = v.paths.iter().map(|p| p[1]).collect();
        assert_eq!(used.len(), 3, "every replica is on a path");
        assert!(v.paths.iter().all(|p| p[0].to_string() == "fcbb:bb00:1:e001::"));
    }

    #[test]
    fn failure_policy_closed_drops_and_open_bypasses() {
        let mut w = world();
        w.pods[3].ready = false;
        let s = spec(&["fd00:10:2::/64"]);
        let out = compile(&w, &[chain("web", &s)]);
        let v = &out.chains[0];
        assert_eq!((v.ready, v.reason), (false, Reason::NoReplicas));
        assert!(v.message.contains("ids") && v.message.contains("dropped"), "{}", v.message);
        let h = &out.nodes["n1"].headends;
        assert_eq!(h.len(), 1);
        assert!(h[0].drop && h[0].segments.is_empty(), "Closed: the headend drops, never leaks unsteered");
        assert!(v.paths.is_empty());

        let mut open = s.clone();
        open.failure_policy = FailurePolicy::Open;
        let out = compile(&w, &[chain("web", &open)]);
        let v = &out.chains[0];
        assert!(v.ready, "{v:?}");
        assert_eq!(v.degraded.as_ref().map(|d| d.0), Some(Reason::NoReplicas));
        let h = &out.nodes["n1"].headends[0];
        assert!(!h.drop);
        assert_eq!(
            h.segments.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["fcbb:bb00:1:e001::", "fcbb:bb00:2:d6::"],
            "ids bypassed"
        );
        let st = v.status(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(st.conditions[1].type_, "Degraded");

        let mut none = world();
        none.pods[2].ready = false;
        none.pods[3].ready = false;
        let v = &compile(&none, &[chain("web", &open)]).chains[0];
        assert!(!v.ready && v.message.contains("every function is bypassed"), "{v:?}");
    }

    #[test]
    fn replica_slots_spread_and_stay_put() {
        let sids: Vec<Sid> = (1..=3).map(|i| Sid(format!("fcbb:bb00:2:e00{i}::").parse().unwrap())).collect();
        let slots = replica_slots(&sids);
        assert_eq!(slots.len(), REPLICA_SLOTS);
        for sid in &sids {
            let n = slots.iter().filter(|s| *s == sid).count();
            assert!((12..=30).contains(&n), "{sid} has {n} of 64 slots");
        }
        let others: Vec<Sid> = (1..=3).map(|i| Sid(format!("fcbb:bb00:3:e00{i}::").parse().unwrap())).collect();
        let picks = |t: &[Sid], of: &[Sid]| -> Vec<usize> { t.iter().map(|s| of.iter().position(|o| o == s).unwrap()).collect() };
        assert_ne!(picks(&replica_slots(&others), &others), picks(&slots, &sids), "each function's replicas hash on their own");
        let fewer = replica_slots(&sids[..2]);
        for (a, b) in slots.iter().zip(&fewer) {
            if *a != sids[2] {
                assert_eq!(a, b, "a slot of a remaining replica never moves");
            }
        }
        assert_eq!(replica_slots(&sids), slots, "deterministic");
    }

    #[test]
    fn degraded_reasons() {
        let mut w = world();
        let s = spec(&["fd00:10:2::/64"]);
        w.registrations.remove(1);
        let v = &compile(&w, &[chain("web", &s)]).chains[0];
        assert_eq!(v.reason, Reason::SidPending);
        assert!(v.message.contains("ids"), "{}", v.message);

        let bad = spec(&["fd00:10:2::/200"]);
        let v = &compile(&world(), &[chain("web", &bad)]).chains[0];
        assert_eq!(v.reason, Reason::InvalidMatch);

        let mut none = spec(&[]);
        none.functions.clear();
        assert_eq!(compile(&world(), &[chain("x", &none)]).chains[0].reason, Reason::InvalidMatch);

        let mut long = spec(&[]);
        long.functions = vec![long.functions[0].clone(); crate::MAX_SEGMENTS];
        assert_eq!(compile(&world(), &[chain("x", &long)]).chains[0].reason, Reason::TooManySegments);

        let mut nosrc = spec(&[]);
        nosrc.sources.pod_selector = sel("app", "nobody");
        assert_eq!(compile(&world(), &[chain("x", &nosrc)]).chains[0].reason, Reason::NoSources);
    }

    #[test]
    fn overlapping_chains_carry_their_priority_and_match() {
        let low = spec(&["fd00:10:2::/64"]);
        let mut high = spec(&["fd00:10:2::/64"]);
        high.priority = 10;
        high.functions.truncate(1);
        high.r#match.protocol = srv6pipes_crds::Protocol::Tcp;
        high.r#match.destination_ports = vec!["80".into(), "8000-8080".into()];
        let out = compile(&world(), &[chain("a-low", &low), chain("b-high", &high)]);
        let h = &out.nodes["n1"].headends;
        assert_eq!(h.len(), 2, "both rules; the node's classifier orders them");
        assert_eq!(&*h[0].chain, "default/b-high", "higher priority first");
        assert_eq!((h[0].proto, h[0].ports.clone(), h[0].priority), (Some(6), vec![(80, 80), (8000, 8080)], 10));
        assert_eq!((h[1].proto, h[1].ports.is_empty()), (None, true));
    }

    #[test]
    fn symmetric_chains_steer_the_return_traffic_in_reverse() {
        let mut s = spec(&["fd00:10:2::/64"]);
        s.symmetric = true;
        s.r#match.protocol = Protocol::Tcp;
        s.r#match.destination_ports = vec!["443".into(), "8000-8080".into()];
        let out = compile(&world(), &[chain("web", &s)]);
        assert!(out.chains[0].ready, "{:?}", out.chains[0]);
        let back: Vec<&HeadendPolicy> = out.nodes["n2"].headends.iter().collect();
        let server = back.iter().find(|h| &*h.source_pod == "default/server").expect("the server's return traffic");
        assert_eq!(server.destination, "fd00:10:1::2/128".parse::<IpNet>().unwrap(), "back to the client");
        let segs: Vec<String> = server.segments.iter().map(|s| s.to_string()).collect();
        assert_eq!(segs, ["fcbb:bb00:2:e001::", "fcbb:bb00:1:e001::", "fcbb:bb00:1:d6::"], "ids, firewall, client's node");
        assert!(server.ports.is_empty(), "any destination port: the client's");
        assert_eq!(server.source_ports, [(443, 443), (8000, 8080)], "the forward ports, as source ports");
        assert_eq!(server.proto, Some(6));
        assert_eq!(out.nodes["n1"].decaps.len(), 1, "decapsulation at the client's node too");
        assert!(back.iter().all(|h| &*h.source_pod != "default/client"));
        assert!(!back.iter().any(|h| &*h.source_pod == "other/fw-x"), "never another namespace's pods");
    }

    #[test]
    fn proxies_shared_by_chains_or_directions_lose_the_interface_fallback() {
        let one = compile(&world(), &[chain("web", &spec(&["fd00:10:2::/64"]))]);
        assert!(shared_proxies(&one.nodes["n1"].proxies).is_empty(), "one chain, one direction");
        let two = compile(&world(), &[chain("web", &spec(&["fd00:10:2::/64"])), chain("more", &spec(&["fd00:10:9::/64"]))]);
        let fw = two.nodes["n1"].proxies[0].sid;
        assert_eq!(shared_proxies(&two.nodes["n1"].proxies), BTreeSet::from([fw]), "two chains through the firewall");
        let mut s = spec(&["fd00:10:2::/64"]);
        s.symmetric = true;
        let sym = compile(&world(), &[chain("web", &s)]);
        assert_eq!(shared_proxies(&sym.nodes["n1"].proxies), BTreeSet::from([fw]), "both directions");
    }

    #[test]
    fn static_proxies_get_their_return_path_and_one_chain_each() {
        let mut s = spec(&["fd00:10:2::/64"]);
        s.functions[0].proxy = ProxyKind::Static;
        let out = compile(&world(), &[chain("web", &s)]);
        assert!(out.chains[0].ready, "{:?}", out.chains[0]);
        let fw = &out.nodes["n1"].proxies[0];
        assert_eq!(fw.behavior, Behavior::EndAS);
        let back: Vec<Vec<String>> = fw.return_path.iter().map(|h| h.iter().map(Sid::to_string).collect()).collect();
        assert_eq!(back, [vec!["fcbb:bb00:2:e001::"], vec!["fcbb:bb00:2:d6::"]], "the ids, then decapsulation");
        assert_eq!(out.nodes["n2"].proxies[0].behavior, Behavior::EndAD);
        // A second chain through the same static interface is a conflict, reported.
        let mut other = spec(&["fd00:10:9::/64"]);
        other.functions.truncate(1);
        let out = compile(&world(), &[chain("a-web", &s), chain("b-other", &other)]);
        let v = out.chains.iter().find(|v| v.name == "b-other").unwrap();
        assert_eq!(v.reason, Reason::Conflict, "{v:?}");
        assert!(out.nodes["n1"].headends.iter().all(|h| &*h.chain == "default/a-web"), "nothing of the refused chain");
        let mut sym = s.clone();
        sym.symmetric = true;
        assert_eq!(compile(&world(), &[chain("x", &sym)]).chains[0].reason, Reason::InvalidMatch);
    }

    #[test]
    fn match_validation_and_source_prefixes() {
        let mut bad = spec(&["fd00:10:2::/64"]);
        bad.r#match.destination_ports = vec!["90-80".into()];
        assert_eq!(compile(&world(), &[chain("x", &bad)]).chains[0].reason, Reason::InvalidMatch);
        bad.r#match.destination_ports = vec!["http".into()];
        assert_eq!(compile(&world(), &[chain("x", &bad)]).chains[0].reason, Reason::InvalidMatch);
        bad.r#match.destination_ports = vec!["80".into()];
        bad.r#match.protocol = srv6pipes_crds::Protocol::Icmp;
        assert_eq!(compile(&world(), &[chain("x", &bad)]).chains[0].reason, Reason::InvalidMatch);
        let mut icmp = spec(&["fd00:10:2::/64"]);
        icmp.r#match.protocol = srv6pipes_crds::Protocol::Icmp;
        assert_eq!(compile(&world(), &[chain("x", &icmp)]).nodes["n1"].headends[0].proto, Some(58), "ICMPv6");
        let mut src = spec(&["fd00:10:2::/64"]);
        src.r#match.source_prefixes = vec!["fd00:10:9::/64".into()];
        assert_eq!(compile(&world(), &[chain("x", &src)]).chains[0].reason, Reason::NoSources, "client not in sourcePrefixes");
        src.r#match.source_prefixes = vec!["fd00:10:1::2/128".into()];
        assert!(compile(&world(), &[chain("x", &src)]).chains[0].ready);
    }

    #[test]
    fn masquerading_chains_insert_the_srh_ipv6_only() {
        let mut s = spec(&["fd00:10:2::/64"]);
        s.symmetric = true;
        for f in &mut s.functions {
            f.proxy = ProxyKind::Masquerading;
        }
        let out = compile(&world(), &[chain("web", &s)]);
        let v = &out.chains[0];
        assert!(v.ready, "{v:?}");
        let segs = ["fcbb:bb00:1:e001::", "fcbb:bb00:2:e001::"];
        assert_eq!(
            v.paths[0].iter().map(Sid::to_string).collect::<Vec<_>>(),
            segs,
            "no decapsulation: the destination is the last segment"
        );
        let h = &out.nodes["n1"].headends[0];
        assert!(h.insert);
        assert_eq!(h.segments.iter().map(Sid::to_string).collect::<Vec<_>>(), segs);
        assert!(out.nodes.values().all(|t| t.decaps.is_empty()), "insertion needs no decapsulation SID");
        assert!(out.nodes.values().flat_map(|t| &t.proxies).all(|u| u.behavior == Behavior::EndAM));
        let back = out.nodes["n2"].headends.iter().find(|h| &*h.source_pod == "default/server").expect("reverse");
        assert!(back.insert);
        assert_eq!(back.segments.iter().map(Sid::to_string).collect::<Vec<_>>(), ["fcbb:bb00:2:e001::", "fcbb:bb00:1:e001::"]);
        // Both nodes host an End.AM SID: both admit the client and the server as sources.
        for n in ["n1", "n2"] {
            let mut srcs: Vec<String> = out.nodes[n].insert_sources.iter().map(IpAddr::to_string).collect();
            srcs.sort();
            assert_eq!(srcs, ["fd00:10:1::2", "fd00:10:2::2", "fd00:10:2::3"], "{n}: client, and every destination pod");
        }
        // No prefix: IPv6 only.
        let mut any = s.clone();
        any.r#match.destination_prefixes.clear();
        any.symmetric = false;
        let out = compile(&world(), &[chain("any", &any)]);
        let dsts: Vec<String> = out.nodes["n1"].headends.iter().map(|h| h.destination.to_string()).collect();
        assert_eq!(dsts, ["::/0"]);

        // IPv4 is refused with a clear status; so is a mix with encapsulating proxies.
        let mut v4 = s.clone();
        v4.r#match.destination_prefixes.push("10.20.0.0/16".into());
        let v = &compile(&world(), &[chain("v4", &v4)]).chains[0];
        assert_eq!(v.reason, Reason::Unsupported);
        assert!(v.message.contains("10.20.0.0/16 is IPv4"), "{}", v.message);
        let mut mixed = s.clone();
        mixed.functions[1].proxy = ProxyKind::Dynamic;
        let v = &compile(&world(), &[chain("mixed", &mixed)]).chains[0];
        assert_eq!(v.reason, Reason::Unsupported);
        assert!(v.message.contains("function ids"), "{}", v.message);
        // One interface, one behaviour: an End.AD chain through the masquerading firewall clashes.
        let out = compile(&world(), &[chain("a-web", &s), chain("b-plain", &spec(&["fd00:10:9::/64"]))]);
        let v = out.chains.iter().find(|v| v.name == "b-plain").unwrap();
        assert_eq!(v.reason, Reason::Conflict, "{v:?}");
    }

    #[test]
    fn flow_rewriting_functions_get_one_chain_and_direction_per_interface() {
        let mut s = spec(&["fd00:10:2::/64"]);
        s.functions[0].rewrites_flows = true;
        let out = compile(&world(), &[chain("a-nat", &s)]);
        assert!(out.chains[0].ready, "{:?}", out.chains[0]);
        let fw = &out.nodes["n1"].proxies[0];
        assert!(fw.rewrites_flows && fw.behavior == Behavior::EndAD);
        assert!(!out.nodes["n2"].proxies[0].rewrites_flows, "only the declared function");
        // A second chain through the same NAT interface could be mis-steered: refused, reported.
        let other = spec(&["fd00:10:9::/64"]);
        let out = compile(&world(), &[chain("a-nat", &s), chain("b-other", &other)]);
        let v = out.chains.iter().find(|v| v.name == "b-other").unwrap();
        assert_eq!(v.reason, Reason::Conflict, "{v:?}");
        assert!(v.message.contains("rewrites flows"), "{}", v.message);
        assert!(out.nodes["n1"].headends.iter().all(|h| &*h.chain == "default/a-nat"));
        let mut sym = s.clone();
        sym.symmetric = true;
        let v = &compile(&world(), &[chain("sym", &sym)]).chains[0];
        assert_eq!(v.reason, Reason::Conflict);
        assert!(v.message.contains("two directions"), "{}", v.message);
        // Chains' SRH tags: stable, and distinct for these names.
        assert_eq!(chain_tag("default/a-nat"), chain_tag("default/a-nat"));
        assert_ne!(chain_tag("default/a-nat"), chain_tag("default/b-other"));
    }
}
