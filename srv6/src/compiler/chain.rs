//! One chain's compilation, by phase: its spec checked, its hops planned (ready replicas with
//! SIDs; consecutive stream functions on the same proxies merged), then its headend rules:
//! forward at the sources, and backward (a symmetric chain's, or a chain with stream functions,
//! whose relayed replies must come back through the proxies) at the destinations and at each
//! stream proxy. All of that depends on the chain and the world alone ([`prepare`]); its
//! proxies are then checked against what the chains before it claimed ([`claim_proxies`]),
//! which is redone on every plan, also for chains that are not compiled again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv6Net};
use srv6pipes_crds::{FailurePolicy, Protocol, ProxyKind};

use super::claims::{Claims, Clash};
use super::index::Index;
use super::{
    owner_of, parse_destinations, parse_ports, proto_number, Behavior, ChainRef, ChainVerdict, HeadendPolicy, HopVerdict, NodeTables,
    PodInfo, Reason, ReplicaVerdict, SidRegistration, SidUse,
};
use crate::pipes::{self, Pipeline};
use crate::sid::Sid;

pub(crate) type Fail = (Reason, String);

/// A rule's segment lists, shared by every rule of the chain that pushes them: its first path
/// (each hop's first replica) and every hop's replicas, in travel order.
#[derive(Clone)]
struct Route {
    segments: Arc<[Sid]>,
    replicas: Arc<[Vec<Sid>]>,
}

impl Route {
    fn new(replicas: Vec<Vec<Sid>>) -> Self {
        Route { segments: replicas.iter().map(|r| r[0]).collect(), replicas: replicas.into() }
    }
}

/// What the spec says, checked.
struct Checked {
    /// End.AM: H.Insert for the whole chain.
    insert: bool,
    destinations: Vec<IpNet>,
    sources_allowed: Vec<IpNet>,
    ports: Vec<(u16, u16)>,
}

/// A hop of the chain: the ready replicas of one function (or of consecutive stream functions
/// on the same proxies), each with the SID it is reached at.
struct PlannedHop<'w> {
    replicas: Vec<(Sid, &'w PodInfo, &'w SidRegistration)>,
    kind: ProxyKind,
    rewrites: bool,
    /// Stream functions: the pipeline the replicas' (stream) SIDs stand for.
    pipeline: Option<Pipeline>,
    /// The chain's functions this hop does (indices into the spec's functions).
    functions: Vec<usize>,
}

impl PlannedHop<'_> {
    fn sids(&self) -> Vec<Sid> {
        self.replicas.iter().map(|r| r.0).collect()
    }
}

/// A chain compiled against the world alone: everything but the check of its proxies against
/// what the chains before it claimed ([`claim_proxies`] on [`Prepared::claim`]), which depends
/// on the other chains and is done again on every plan. What it yields if its proxies pass:
/// its verdict, its headend rules and decapsulation SIDs, and its proxies (from the check).
pub(crate) struct Prepared {
    /// The verdict if its proxies are not in conflict ([`conflicted`] otherwise).
    pub verdict: ChainVerdict,
    /// What checking its proxies takes; None when the chain failed before they were looked at.
    pub claim: Option<ClaimInput>,
    /// Its headend rules and decapsulation SIDs, by node (nodes of the world only, for rules).
    pub tables: BTreeMap<String, NodeTables>,
    /// Whether its proxies are used (claimed, and in their nodes' tables) when they pass: not
    /// when the chain fails for its sources.
    pub adds: bool,
    /// The sources of its inserted SRHs, admitted at the nodes of its End.AM SIDs.
    pub insert_sources: Vec<IpAddr>,
}

/// What checking a chain's proxies against the claims takes, owned: an unchanged chain's
/// proxies are checked again on every plan (the chains before it may have changed) without
/// compiling the chain again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClaimInput {
    key: Arc<str>,
    symmetric: bool,
    hops: Vec<ClaimHop>,
    /// The last segment after the hops (for End.AS return paths).
    decap: Option<Sid>,
}

#[derive(Debug, Clone, PartialEq)]
struct ClaimHop {
    /// Each replica's SID, node and `namespace/pod:interface`.
    replicas: Vec<(Sid, Arc<str>, Arc<str>)>,
    kind: ProxyKind,
    rewrites: bool,
    pipeline: Option<Pipeline>,
}

impl ClaimHop {
    fn sids(&self) -> Vec<Sid> {
        self.replicas.iter().map(|r| r.0).collect()
    }
}

/// `verdict` (a prepared one) failed at its proxies.
pub(crate) fn conflicted(verdict: ChainVerdict, (reason, message): Fail) -> ChainVerdict {
    ChainVerdict { ready: false, reason, message, degraded: None, ..verdict }
}

pub(crate) fn prepare(world: &Index<'_>, c: &ChainRef<'_>) -> Prepared {
    let verdict = ChainVerdict {
        namespace: c.namespace.into(),
        name: c.name.into(),
        ready: false,
        reason: Reason::Programmed,
        message: String::new(),
        hops: Vec::new(),
        paths: Vec::new(),
        degraded: None,
        functions: c.spec.functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(","),
        generation: c.generation,
    };
    let mut p = Prepared { verdict, claim: None, tables: BTreeMap::new(), adds: false, insert_sources: Vec::new() };
    if let Err((reason, message)) = prepare_into(world, c, &mut p) {
        let v = &mut p.verdict;
        v.ready = false;
        v.reason = reason;
        v.message = message;
    }
    p
}

fn prepare_into(world: &Index<'_>, c: &ChainRef<'_>, p: &mut Prepared) -> Result<(), Fail> {
    let key: Arc<str> = format!("{}/{}", c.namespace, c.name).into();
    let checked = check(c)?;
    let (hops, mut missing) = plan_hops(world, c, &mut p.verdict)?;
    let closed = c.spec.failure_policy == FailurePolicy::Closed;
    let dropping = closed && !missing.is_empty();
    if !closed && hops.is_empty() {
        let (reason, m) = missing.swap_remove(0);
        return Err((reason, format!("{m}; every function is bypassed (failurePolicy Open): nothing is steered")));
    }
    let insert = checked.insert;

    let decap = if insert || dropping { None } else { decap_at(world, &checked.destinations, &hops)? };

    // Paths: path i takes replica i mod n of each hop, so the widest hop decides the count and
    // every replica is used by at least one path. (The headend picks per hop by flow hash;
    // these lists only show the choices.)
    let per_hop: Vec<Vec<Sid>> = hops.iter().map(PlannedHop::sids).chain(decap.iter().map(|(_, d)| vec![*d])).collect();
    let widest = per_hop.iter().map(Vec::len).max().unwrap_or(1);
    if !dropping {
        p.verdict.paths = (0..widest).map(|i| per_hop.iter().map(|h| h[i % h.len()]).collect()).collect();
    }
    let claim = ClaimInput::new(world, &key, c.spec.symmetric, &hops, decap.as_ref().map(|d| d.1));
    let am = claim.hops.iter().any(|h| h.kind == ProxyKind::Masquerading && h.pipeline.is_none());
    p.claim = Some(claim);

    let sources = world.selected(c.namespace, &c.spec.sources.pod_selector).map_err(|m| (Reason::InvalidMatch, format!("sources: {m}")))?;
    let destinations = steered_destinations(&checked.destinations, insert);
    let rules = Rules {
        c,
        index: world,
        key: &key,
        checked: &checked,
        destinations: &destinations,
        dropping,
        hops: &hops,
        decap: decap.as_ref().map(|d| d.1),
    };
    let mut tables = Tables { index: world, tables: &mut p.tables };
    let mut headends = rules.forward(&sources, &mut tables);
    if headends == 0 {
        return Err((Reason::NoSources, "no ready source pod with an address of the destinations' family".into()));
    }
    let (back, reverse_decaps) = rules.backward(&sources, &mut tables);
    headends += back + rules.onward(&mut tables);

    // The sources of this chain's inserted SRHs, admitted at its End.AM SIDs' nodes.
    if am {
        let sources: BTreeSet<IpAddr> = p.tables.values().flat_map(|t| &t.headends).filter(|h| h.insert).map(|h| h.source_ip).collect();
        p.insert_sources = sources.into_iter().collect();
    }
    p.adds = true;
    if dropping {
        let (reason, m) = missing.swap_remove(0);
        return Err((reason, format!("{m}: the chain's traffic is dropped (failurePolicy Closed)")));
    }
    for (node, sid) in decap.into_iter().chain(reverse_decaps) {
        p.tables.entry(node).or_default().decaps.push(SidUse {
            sid,
            behavior: Behavior::EndDT46,
            chain: key.clone(),
            interface: None,
            return_path: Vec::new(),
            rewrites_flows: false,
            both_ways: false,
            pipeline: None,
        });
    }
    let v = &mut p.verdict;
    v.ready = true;
    v.message = format!("{} headend rule(s), {} path(s)", headends, v.paths.len());
    if let Some((reason, m)) = missing.into_iter().next() {
        v.degraded = Some((reason, format!("{m}: bypassed (failurePolicy Open)")));
    }
    Ok(())
}

/// Where a chain's encapsulated packets are decapsulated, and by which SID: at the node owning
/// every destination prefix, else after the last function. (Not for inserted SRHs, which end at
/// the destination itself: the last proxy pops them.)
fn decap_at(world: &Index<'_>, destinations: &[IpNet], hops: &[PlannedHop]) -> Result<Option<(String, Sid)>, Fail> {
    let last_node = hops.last().map(|h| h.replicas[0].1.node.as_str());
    let node = owner_of(world, destinations).map(String::as_str).or(last_node);
    match (node, node.and_then(|d| world.node(d)).map(|n| n.locator.decap_sid())) {
        (Some(n), Some(d)) => Ok(Some((n.to_string(), d))),
        (n, _) => Err((Reason::SidPending, format!("node {} has no locator", n.unwrap_or("?")))),
    }
}

/// The prefixes a chain's headend rules match: its destinations, or every address of the
/// families it can carry (IPv6 only for inserted SRHs).
fn steered_destinations(destinations: &[IpNet], insert: bool) -> Vec<IpNet> {
    if destinations.is_empty() && insert {
        vec![Ipv6Net::default().into()]
    } else if destinations.is_empty() {
        vec![Ipv6Net::default().into(), ipnet::Ipv4Net::default().into()]
    } else {
        destinations.iter().map(IpNet::trunc).collect()
    }
}

/// A chain's own tables by node, as its rules are made: rules go to nodes of the world only.
struct Tables<'a, 'w> {
    index: &'a Index<'w>,
    tables: &'a mut BTreeMap<String, NodeTables>,
}

impl Tables<'_, '_> {
    /// `node`'s tables, if it is a node of the world.
    fn at(&mut self, node: &str) -> Option<&mut NodeTables> {
        self.index.node(node)?;
        if !self.tables.contains_key(node) {
            self.tables.insert(node.to_string(), NodeTables::default());
        }
        self.tables.get_mut(node)
    }
}

/// The spec's own consistency, before anything of the world is looked at.
fn check(c: &ChainRef<'_>) -> Result<Checked, Fail> {
    let functions = &c.spec.functions;
    if functions.is_empty() {
        return Err((Reason::InvalidMatch, "a chain needs at least one function".into()));
    }
    if functions.len() + 1 > crate::MAX_SEGMENTS {
        let m = format!("{} functions + decapsulation exceed {} segments", functions.len(), crate::MAX_SEGMENTS);
        return Err((Reason::TooManySegments, m));
    }
    // SRv6 pipes: every stream function known, with valid arguments, on TCP.
    for f in functions {
        if let Some(s) = &f.stream {
            pipes::check(&f.name, s).map_err(|m| (Reason::InvalidFunction, m))?;
            if matches!(c.spec.r#match.protocol, Protocol::Udp | Protocol::Icmp) {
                let m = format!("function {}: a stream function works on TCP; protocol {:?} carries none", f.name, c.spec.r#match.protocol);
                return Err((Reason::InvalidFunction, m));
            }
        }
    }
    let packet_functions = || functions.iter().filter(|f| f.stream.is_none());
    // End.AM needs the SRH inserted into the original packet (H.Insert), so the whole chain
    // uses insertion: there is then no encapsulated packet for End.AD or End.AS to restore.
    let insert = packet_functions().any(|f| f.proxy == ProxyKind::Masquerading);
    if let Some(f) = functions.iter().find(|f| insert && (f.stream.is_some() || f.proxy != ProxyKind::Masquerading)) {
        let kind = if f.stream.is_some() { "a stream function".to_string() } else { format!("proxy {:?}", f.proxy) };
        let m = format!(
            "function {}: {kind} needs encapsulation, but Masquerading functions need SRH insertion; make every function of the chain Masquerading, or none",
            f.name
        );
        return Err((Reason::Unsupported, m));
    }
    if let Some(f) = packet_functions().find(|f| f.proxy == ProxyKind::Static && c.spec.symmetric) {
        let m = format!("function {}: a Static proxy has one configured return path; a symmetric chain needs Dynamic", f.name);
        return Err((Reason::InvalidMatch, m));
    }
    let destinations = parse_destinations(&c.spec.r#match.destination_prefixes).map_err(|m| (Reason::InvalidMatch, m))?;
    let sources_allowed = parse_destinations(&c.spec.r#match.source_prefixes)
        .map_err(|m| (Reason::InvalidMatch, m.replace("destinationPrefixes", "sourcePrefixes")))?;
    if let Some(p) = destinations.iter().chain(&sources_allowed).find(|p| insert && p.addr().is_ipv4()) {
        let m = format!("{p} is IPv4: Masquerading (End.AM) works by SRH insertion, which exists for IPv6 only");
        return Err((Reason::Unsupported, m));
    }
    let ports = parse_ports(&c.spec.r#match.destination_ports).map_err(|m| (Reason::InvalidMatch, m))?;
    if !ports.is_empty() && c.spec.r#match.protocol == Protocol::Icmp {
        return Err((Reason::InvalidMatch, "destinationPorts need protocol TCP, UDP or Any".into()));
    }
    Ok(Checked { insert, destinations, sources_allowed, ports })
}

/// Hops: every ready replica of every function that has a SID (the status' hops filled in). A
/// function with none is bypassed (failurePolicy Open) or drops the chain's traffic (Closed):
/// it is in the second list. Consecutive stream functions on the same proxies become one hop.
fn plan_hops<'w>(world: &Index<'w>, c: &ChainRef<'_>, v: &mut ChainVerdict) -> Result<(Vec<PlannedHop<'w>>, Vec<Fail>), Fail> {
    let mut hops: Vec<PlannedHop> = Vec::new();
    let mut missing = Vec::new();
    for (i, f) in c.spec.functions.iter().enumerate() {
        let pods = world.selected(c.namespace, &f.pod_selector).map_err(|m| (Reason::InvalidMatch, format!("function {}: {m}", f.name)))?;
        let ready: Vec<&PodInfo> = pods.into_iter().filter(|p| p.ready).collect();
        let replicas: Vec<_> = ready.iter().filter_map(|p| world.registration(p).map(|r| (r.sid, *p, r))).collect();
        v.hops.push(HopVerdict { function: f.name.clone(), replicas: Vec::new() });
        match (ready.is_empty(), replicas.is_empty()) {
            (true, _) => missing.push((Reason::NoReplicas, format!("function {} has no ready replica", f.name))),
            (false, true) => missing.push((Reason::SidPending, format!("function {}: no replica has a SID yet", f.name))),
            _ => {
                let pipeline = f.stream.as_deref().map(|s| Pipeline { stages: vec![s.clone()] });
                let same_proxies = |h: &PlannedHop| h.replicas.iter().map(|r| r.2.sid).eq(replicas.iter().map(|r| r.2.sid));
                match (hops.last_mut(), pipeline) {
                    (Some(last), Some(p)) if last.pipeline.is_some() && same_proxies(last) => {
                        last.pipeline.as_mut().expect("a stream hop").stages.extend(p.stages);
                        last.functions.push(i);
                    }
                    (_, pipeline) => {
                        hops.push(PlannedHop { replicas, kind: f.proxy, rewrites: f.rewrites_flows, pipeline, functions: vec![i] })
                    }
                }
            }
        }
    }
    // A stream hop's replicas are reached at their pipeline's SID.
    for h in &mut hops {
        if let Some(p) = &h.pipeline {
            for r in &mut h.replicas {
                let loc = world.node(&r.1.node).map(|n| n.locator);
                let loc = loc.ok_or_else(|| (Reason::SidPending, format!("node {} has no locator", r.1.node)))?;
                r.0 = p.sid(&loc, r.2.sid).map_err(|m| (Reason::Unsupported, format!("{}/{}: {m}", r.1.namespace, r.1.name)))?;
            }
        }
    }
    crosses_each_proxy_once(c, &hops)?;
    for h in &hops {
        for &f in &h.functions {
            v.hops[f].replicas = h
                .replicas
                .iter()
                .map(|(sid, p, _)| ReplicaVerdict { pod: world.pod_short_name(p), node: world.node_name(&p.node), sid: *sid })
                .collect();
        }
    }
    Ok((hops, missing))
}

/// A connection crosses a stream proxy pod once: at a second crossing the proxy would accept a
/// connection with the very addresses and ports of the one it accepted the first time, in the
/// same network namespace, and the kernel takes its packets for the first's. Two stream hops
/// apart (a packet function between them, or other pods beside) that share a pod conflict.
fn crosses_each_proxy_once(c: &ChainRef<'_>, hops: &[PlannedHop]) -> Result<(), Fail> {
    let mut first: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for h in hops.iter().filter(|h| h.pipeline.is_some()) {
        for (_, pod, _) in &h.replicas {
            if let Some(f) = first.insert((pod.namespace.as_str(), pod.name.as_str()), h.functions[0]) {
                let name = |i: usize| &c.spec.functions[i].name;
                let (a, b) = (name(f), name(h.functions[0]));
                let why = format!(
                    "functions {a} and {b} both run on stream proxy {}/{}: a connection crosses a proxy once",
                    pod.namespace, pod.name
                );
                return Err((Reason::Conflict, why));
            }
        }
    }
    Ok(())
}

impl ClaimInput {
    /// `namespace/name` of the chain, as its entries name it.
    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }

    fn new(world: &Index<'_>, key: &Arc<str>, symmetric: bool, hops: &[PlannedHop], decap: Option<Sid>) -> Self {
        let hops = hops
            .iter()
            .map(|h| ClaimHop {
                replicas: h.replicas.iter().map(|(sid, pod, reg)| (*sid, world.node_name(&pod.node), world.interface_name(reg))).collect(),
                kind: h.kind,
                rewrites: h.rewrites,
                pipeline: h.pipeline.clone(),
            })
            .collect();
        ClaimInput { key: key.clone(), symmetric, hops, decap }
    }
}

/// The proxy SIDs a chain uses (with their nodes), checked against what higher-priority chains
/// claimed: an End.AS interface has one return path, so it serves one chain only; a pod's
/// interface is a stream proxy or a packet function's, not both.
pub(crate) fn claim_proxies(input: &ClaimInput, claims: &Claims) -> Result<Vec<(Arc<str>, SidUse)>, Fail> {
    let key = &input.key;
    let mut proxy_uses: Vec<(Arc<str>, SidUse)> = Vec::new();
    for (i, hop) in input.hops.iter().enumerate() {
        for (sid, node, name) in &hop.replicas {
            let (behavior, return_path) = match (hop.kind, &hop.pipeline) {
                (_, Some(_)) => (Behavior::Stream, Vec::new()),
                (ProxyKind::Static, None) => {
                    (Behavior::EndAS, input.hops[i + 1..].iter().map(ClaimHop::sids).chain(input.decap.map(|d| vec![d])).collect())
                }
                (ProxyKind::Masquerading, None) => (Behavior::EndAM, Vec::new()),
                (ProxyKind::Dynamic, None) => (Behavior::EndAD, Vec::new()),
            };
            // End.AD in front of a flow-rewriting function has one set of headers per interface.
            let one_chain = hop.rewrites && behavior == Behavior::EndAD;
            if one_chain && input.symmetric {
                let m = format!(
                    "{name} rewrites flows: its proxy cannot tell the two directions of a symmetric chain apart; give each direction its own chain and interface"
                );
                return Err((Reason::Conflict, m));
            }
            let stream = behavior == Behavior::Stream;
            // Earlier chains' uses (in `claims`), then this chain's own earlier hops'.
            let own = proxy_uses.iter().map(|(_, u)| u);
            let other = claims.other_kind(name, stream).or_else(|| {
                own.clone()
                    .find(|u| u.interface.as_deref() == Some(&**name) && (u.behavior == Behavior::Stream) != stream)
                    .map(|u| &*u.chain)
            });
            if let Some(chain) = other {
                let m = format!("{name} is selected both by a stream function and by a packet function (chains {chain} and {key})");
                return Err((Reason::Conflict, m));
            }
            // One behaviour per interface; End.AS, and End.AD of a flow-rewriting function, even
            // one chain. Two pipelines on one SID: their handles collided.
            let clashes = |b: Behavior, rewrites: bool, p: &Option<Pipeline>| {
                b == Behavior::EndAS || b != behavior || rewrites || one_chain || *p != hop.pipeline
            };
            let clash = claims.clash(*sid, key, stream, clashes).or_else(|| {
                own.filter(|u| stream && u.sid == *sid).find(|u| clashes(u.behavior, u.rewrites_flows, &u.pipeline)).map(|u| Clash {
                    chain: &u.chain,
                    behavior: u.behavior,
                    rewrites_flows: u.rewrites_flows,
                })
            });
            if let Some(u) = clash {
                let why = if u.rewrites_flows || one_chain { ", and its function rewrites flows" } else { "" };
                let m = format!("{name} is already used by chain {} ({:?}){why}", u.chain, u.behavior);
                return Err((Reason::Conflict, m));
            }
            let usage = SidUse {
                sid: *sid,
                behavior,
                chain: key.clone(),
                interface: Some(name.clone()),
                return_path,
                rewrites_flows: one_chain,
                both_ways: input.symmetric || stream,
                pipeline: hop.pipeline.clone(),
            };
            if !proxy_uses.iter().any(|(_, u)| u.sid == *sid) {
                proxy_uses.push((node.clone(), usage));
            }
        }
    }
    Ok(proxy_uses)
}

/// One chain's headend rules.
struct Rules<'a, 'w> {
    c: &'a ChainRef<'a>,
    index: &'a Index<'w>,
    key: &'a Arc<str>,
    checked: &'a Checked,
    /// The destination prefixes, or "any" of each family.
    destinations: &'a [IpNet],
    dropping: bool,
    hops: &'a [PlannedHop<'w>],
    decap: Option<Sid>,
}

impl Rules<'_, '_> {
    /// The kinds of rules the chain needs, as (protocol, whether stream hops are in): a chain
    /// with stream hops steers TCP through every hop; with `protocol: Any` its other traffic
    /// takes the packet functions alone (if it has any).
    fn variants(&self) -> Vec<(Protocol, bool)> {
        let protocol = self.c.spec.r#match.protocol;
        let streams = self.hops.iter().filter(|h| h.pipeline.is_some()).count();
        match (streams, protocol) {
            (0, p) => vec![(p, false)],
            (n, Protocol::Any) if n < self.hops.len() => vec![(Protocol::Tcp, true), (Protocol::Any, false)],
            _ => vec![(Protocol::Tcp, true)],
        }
    }

    /// Hops `range` of the chain (in chain order) that `variant`'s traffic crosses.
    fn hops_in(&self, range: std::ops::Range<usize>, streams: bool) -> Vec<Vec<Sid>> {
        self.hops[range].iter().filter(|h| streams || h.pipeline.is_none()).map(PlannedHop::sids).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn policy(
        &self,
        source_pod: &PodInfo,
        iface: Option<Arc<str>>,
        src: IpAddr,
        dst: IpNet,
        route: &Route,
        proto: Protocol,
        back: bool,
    ) -> HeadendPolicy {
        let drop = self.dropping && !back;
        HeadendPolicy {
            chain: self.key.clone(),
            source_pod: self.index.pod_name(source_pod),
            source_interface: iface,
            source_ip: src,
            destination: dst,
            segments: if drop { Arc::new([]) } else { route.segments.clone() },
            replicas: if drop { Arc::new([]) } else { route.replicas.clone() },
            drop,
            insert: self.checked.insert,
            proto: proto_number(proto, src),
            ports: if back { Vec::new() } else { self.checked.ports.clone() },
            source_ports: if back { self.checked.ports.clone() } else { Vec::new() },
            priority: self.c.spec.priority,
        }
    }

    /// Forward rules at every ready source (sourcePrefixes select among its own addresses).
    fn forward(&self, sources: &[&PodInfo], tables: &mut Tables) -> usize {
        let routes: Vec<(Protocol, Route)> = self
            .variants()
            .into_iter()
            .map(|(proto, streams)| {
                let replicas = self.hops_in(0..self.hops.len(), streams).into_iter().chain(self.decap.map(|d| vec![d]));
                (proto, Route::new(replicas.collect()))
            })
            .collect();
        let mut n = 0;
        for src in sources.iter().filter(|p| p.ready) {
            let Some(node) = tables.at(&src.node) else { continue };
            for ip in src.ips.iter().copied().filter(|ip| self.allowed(ip)) {
                for dst in self.destinations.iter().filter(|d| d.addr().is_ipv6() == ip.is_ipv6()) {
                    for (proto, route) in &routes {
                        node.headends.push(self.policy(src, None, ip, *dst, route, *proto, false));
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// What each stream proxy sends on toward the server: the hops after it, then the
    /// decapsulation. The datapath continues a connection with the segments its SYN brought
    /// (End.AD per flow) and takes these rules only for a flow it holds no entry for (the per-flow
    /// map full, or the chain's quota reached), choosing replicas by the same hash as the headend.
    fn onward(&self, tables: &mut Tables) -> usize {
        let mut n = 0;
        for (i, hop) in self.hops.iter().enumerate().filter(|(_, h)| h.pipeline.is_some() && !self.dropping) {
            let route = Route::new(self.hops_in(i + 1..self.hops.len(), true).into_iter().chain(self.decap.map(|d| vec![d])).collect());
            for (_, proxy, reg) in &hop.replicas {
                let iface = self.index.interface_name(reg);
                let Some(node) = tables.at(&proxy.node) else { continue };
                for dst in self.destinations {
                    let src = proxy.ips.iter().copied().find(|ip| ip.is_ipv6() == dst.addr().is_ipv6()).unwrap_or(dst.addr());
                    node.headends.push(self.policy(proxy, Some(iface.clone()), src, *dst, &route, Protocol::Tcp, false));
                    n += 1;
                }
            }
        }
        n
    }

    fn allowed(&self, ip: &IpAddr) -> bool {
        self.checked.sources_allowed.is_empty() || self.checked.sources_allowed.iter().any(|p| p.contains(ip))
    }

    /// The way back, for a symmetric chain (every function, in reverse) and for a chain with
    /// stream functions (the proxies own both TCP connections: the server's bytes must come back
    /// through them; packet functions only if symmetric). Rules match exactly the reverse of the
    /// forward match: from a destination address to a source address, the forward destination
    /// ports as source ports; they end at the source's node, decapsulated. They sit at the
    /// destinations' nodes (all the hops) and at each stream proxy's interface (what it relays
    /// back: the hops before it). Returns the rules' count and the decapsulation SIDs needed.
    fn backward(&self, sources: &[&PodInfo], tables: &mut Tables) -> (usize, Vec<(String, Sid)>) {
        let world = self.index;
        let symmetric = self.c.spec.symmetric;
        let streams = self.hops.iter().any(|h| h.pipeline.is_some());
        if self.dropping || !(symmetric || streams) {
            return (0, Vec::new());
        }
        let variants: Vec<(Protocol, bool)> = self.variants().into_iter().filter(|(_, with_streams)| symmetric || *with_streams).collect();
        // Stream hops always; packet hops if symmetric.
        let back_hops = |range: std::ops::Range<usize>, with_streams: bool| -> Vec<Vec<Sid>> {
            let mut h: Vec<Vec<Sid>> = self.hops[range]
                .iter()
                .filter(|h| if h.pipeline.is_some() { with_streams } else { symmetric })
                .map(PlannedHop::sids)
                .collect();
            h.reverse();
            h
        };
        let source_names: Vec<&str> = sources.iter().map(|p| p.name.as_str()).collect();
        let targets = world.pods.iter().filter(|p| p.namespace == self.c.namespace && p.ready && !source_names.contains(&p.name.as_str()));
        // One route per (hops crossed, stream hops in, decapsulation SID), shared by its rules.
        let mut routes: BTreeMap<(usize, bool, Option<Sid>), Route> = BTreeMap::new();
        let mut route = |end: usize, with_streams: bool, decap: Option<Sid>| -> Route {
            let make = || Route::new(back_hops(0..end, with_streams).into_iter().chain(decap.map(|d| vec![d])).collect());
            routes.entry((end, with_streams, decap)).or_insert_with(make).clone()
        };
        let mut n = 0;
        let mut decaps: Vec<(String, Sid)> = Vec::new();
        for dpod in targets {
            for dip in dpod.ips.iter().copied().filter(|ip| self.destinations.iter().any(|d| d.contains(ip))) {
                for src in sources.iter().filter(|p| p.ready) {
                    let Some(src_loc) = world.node(&src.node).map(|n| n.locator) else { continue };
                    let back_decap = (!self.checked.insert).then(|| src_loc.decap_sid());
                    for sip in src.ips.iter().copied().filter(|ip| ip.is_ipv6() == dip.is_ipv6() && self.allowed(ip)) {
                        for &(proto, with_streams) in &variants {
                            let route = route(self.hops.len(), with_streams, back_decap);
                            if let Some(node) = tables.at(&dpod.node) {
                                node.headends.push(self.policy(dpod, None, dip, IpNet::from(sip), &route, proto, true));
                                n += 1;
                            }
                        }
                        // What each stream proxy relays back (its SYN-ACK first of all, before
                        // any reply taught its node the way): the hops before it.
                        for (i, hop) in self.hops.iter().enumerate().filter(|(_, h)| h.pipeline.is_some()) {
                            for (_, proxy, reg) in &hop.replicas {
                                let iface = self.index.interface_name(reg);
                                let route = route(i, true, back_decap);
                                if let Some(node) = tables.at(&proxy.node) {
                                    node.headends.push(self.policy(proxy, Some(iface), dip, IpNet::from(sip), &route, Protocol::Tcp, true));
                                    n += 1;
                                }
                            }
                        }
                        if let Some(d) = back_decap.filter(|_| !decaps.iter().any(|(n, _)| n == &src.node)) {
                            decaps.push((src.node.clone(), d));
                        }
                    }
                }
            }
        }
        (n, decaps)
    }
}

#[cfg(test)]
mod tests {
    use srv6pipes_crds::{Function, Match, ServiceChainSpec, Sources, StreamDirection, StreamFunction};

    use super::super::{compile, NodeInfo, World};
    use super::*;

    fn sel(k: &str, v: &str) -> srv6pipes_crds::PodSelector {
        srv6pipes_crds::PodSelector::labels([(k, v)])
    }

    fn pod(name: &str, node: &str, app: &str, ip: &str) -> PodInfo {
        PodInfo {
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            ready: true,
        }
    }

    /// client (n1) -> fw (n2, End.AD) -> pipes (n3, stream) -> server (n4).
    fn world() -> World {
        let node = |i: u8| NodeInfo {
            name: format!("n{i}"),
            locator: format!("fcbb:bb00:{i}::/48").parse().unwrap(),
            pod_cidrs: vec![format!("fd00:10:{i}::/64").parse().unwrap()],
        };
        let reg = |node: &str, pod: &str, sid: &str| SidRegistration {
            node: node.into(),
            pod_namespace: "default".into(),
            pod_name: pod.into(),
            interface: "net1".into(),
            sid: Sid(sid.parse().unwrap()),
        };
        World {
            nodes: (1..=4).map(node).collect(),
            pods: vec![
                pod("client", "n1", "client", "fd00:10:1::2"),
                pod("fw", "n2", "fw", "fd00:10:2::2"),
                pod("pipes", "n3", "pipes", "fd00:10:3::2"),
                pod("server", "n4", "server", "fd00:10:4::2"),
            ],
            registrations: vec![reg("n2", "fw", "fcbb:bb00:2:e001::"), reg("n3", "pipes", "fcbb:bb00:3:e001::")],
        }
    }

    fn stream(name: &str, function: &str, args: &[(&str, &str)]) -> Function {
        let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let stream = StreamFunction { function: function.into(), args, direction: StreamDirection::Forward };
        Function { name: name.into(), pod_selector: sel("app", "pipes"), stream: Some(Box::new(stream)), ..Default::default() }
    }

    /// The seed's pipeline after a packet firewall, to the server on port 8080.
    fn spec() -> ServiceChainSpec {
        ServiceChainSpec {
            sources: Sources { pod_selector: sel("app", "client") },
            r#match: Match {
                destination_prefixes: vec!["fd00:10:4::/64".into()],
                destination_ports: vec!["8080".into()],
                protocol: Protocol::Tcp,
                ..Default::default()
            },
            functions: vec![
                Function { name: "fw".into(), pod_selector: sel("app", "fw"), ..Default::default() },
                stream("encode", "base64", &[("op", "encode")]),
                stream("swap", "replace", &[("from", "RvZ3"), ("to", "NhdH")]),
                stream("decode", "base64", &[("op", "decode")]),
            ],
            ..Default::default()
        }
    }

    fn segs(h: &HeadendPolicy) -> Vec<String> {
        h.segments.iter().map(Sid::to_string).collect()
    }

    fn run(s: &ServiceChainSpec) -> super::super::Compiled {
        compile(&world(), &[ChainRef { namespace: "default", name: "pipes", spec: s, generation: None }])
    }

    /// Rules that push the same segment lists share them, and every entry of a chain shares its
    /// name: the operator holds every node's tables (500,000 rules at 100,000 chains).
    #[test]
    fn a_chains_entries_share_their_name_and_segment_lists() {
        let mut w = world();
        w.pods.push(pod("client2", "n1", "client", "fd00:10:1::3"));
        w.pods.push(pod("server2", "n4", "server", "fd00:10:4::3"));
        let out = compile(&w, &[ChainRef { namespace: "default", name: "pipes", spec: &spec(), generation: None }]);
        assert!(out.chains[0].ready, "{:?}", out.chains[0]);
        let tables: Vec<&NodeTables> = out.nodes.values().collect();
        let headends: Vec<&HeadendPolicy> = tables.iter().flat_map(|t| &t.headends).collect();
        let uses = tables.iter().flat_map(|t| t.proxies.iter().chain(&t.decaps));
        let names: Vec<&Arc<str>> = headends.iter().map(|h| &h.chain).chain(uses.map(|u| &u.chain)).collect();
        assert!(names.len() > 4 && names.iter().all(|n| Arc::ptr_eq(n, names[0])), "one name for {} entries", names.len());
        // Forward from two clients, back from two servers, onward and back at the proxy.
        assert!(headends.len() >= 6, "{}", headends.len());
        for h in &headends {
            let same = headends.iter().filter(|o| o.replicas == h.replicas);
            assert!(same.clone().all(|o| Arc::ptr_eq(&o.replicas, &h.replicas)), "shared replicas: {h:?}");
            let same = headends.iter().filter(|o| o.segments == h.segments);
            assert!(same.clone().all(|o| Arc::ptr_eq(&o.segments, &h.segments)), "shared segments: {h:?}");
        }
        let routes: BTreeSet<*const [Vec<Sid>]> = headends.iter().map(|h| Arc::as_ptr(&h.replicas)).collect();
        assert!(routes.len() < headends.len(), "{} routes for {} rules", routes.len(), headends.len());
    }

    #[test]
    fn consecutive_stream_functions_on_one_proxy_are_one_hop_at_a_pipeline_sid() {
        let out = run(&spec());
        let v = &out.chains[0];
        assert!(v.ready, "{v:?}");
        let stream_sid = v.hops[1].replicas[0].sid.to_string();
        assert!(stream_sid.starts_with("fcbb:bb00:3:e001:2:"), "LOC:FUNCT of the proxy, base64's id first: {stream_sid}");
        assert!(v.hops[1..].iter().all(|h| h.replicas[0].sid.to_string() == stream_sid), "one process, no other TCP hop");
        assert_eq!(
            v.paths[0].iter().map(Sid::to_string).collect::<Vec<_>>(),
            ["fcbb:bb00:2:e001::", stream_sid.as_str(), "fcbb:bb00:4:d6::"]
        );
        let proxies = &out.nodes["n3"].proxies;
        assert_eq!(proxies.len(), 1);
        assert_eq!(proxies[0].behavior, Behavior::Stream);
        let p = proxies[0].pipeline.as_ref().unwrap();
        assert_eq!(p.describe(), "base64(op=encode) | replace(from=RvZ3,to=NhdH) | base64(op=decode)");
        assert_eq!(out.nodes["n2"].proxies[0].behavior, Behavior::EndAD);
    }

    #[test]
    fn replies_come_back_through_the_proxies_even_when_not_symmetric() {
        let out = run(&spec());
        let stream_sid = out.chains[0].hops[1].replicas[0].sid.to_string();
        // Forward at the client: TCP only, every hop.
        let fwd = &out.nodes["n1"].headends;
        assert_eq!(fwd.len(), 1);
        assert_eq!((fwd[0].proto, fwd[0].ports.clone()), (Some(6), vec![(8080, 8080)]));
        // At the server's node: its replies (source port 8080) to the proxy, then the client's node.
        let back = &out.nodes["n4"].headends;
        assert_eq!(back.len(), 1);
        assert_eq!(segs(&back[0]), [stream_sid.as_str(), "fcbb:bb00:1:d6::"], "not symmetric: the firewall is skipped");
        assert_eq!((back[0].source_ports.clone(), back[0].ports.clone()), (vec![(8080, 8080)], vec![]));
        assert_eq!(back[0].destination.to_string(), "fd00:10:1::2/128");
        // At the proxy's interface: what it relays back goes straight to the client's node; what
        // it sends on (when its node holds no learnt entry for the flow) to the decapsulation.
        let at_proxy = &out.nodes["n3"].headends;
        assert_eq!(at_proxy.len(), 2);
        assert!(at_proxy.iter().all(|h| h.source_interface.as_deref() == Some("default/pipes:net1")));
        let relay = at_proxy.iter().find(|h| !h.source_ports.is_empty()).unwrap();
        assert_eq!(segs(relay), ["fcbb:bb00:1:d6::"]);
        assert_eq!((relay.source_ports.clone(), relay.destination.to_string()), (vec![(8080, 8080)], "fd00:10:1::2/128".into()));
        let onward = at_proxy.iter().find(|h| h.source_ports.is_empty()).unwrap();
        assert_eq!(segs(onward), ["fcbb:bb00:4:d6::"]);
        assert_eq!(
            (onward.ports.clone(), onward.destination.to_string(), onward.proto),
            (vec![(8080, 8080)], "fd00:10:4::/64".into(), Some(6))
        );
        assert_eq!(out.nodes["n1"].decaps.len(), 1, "the client's node decapsulates the replies");

        // Symmetric: the firewall sees the replies too, after the proxy.
        let mut s = spec();
        s.symmetric = true;
        let out = run(&s);
        assert_eq!(segs(&out.nodes["n4"].headends[0]), [stream_sid.as_str(), "fcbb:bb00:2:e001::", "fcbb:bb00:1:d6::"]);
        let relay = out.nodes["n3"].headends.iter().find(|h| !h.source_ports.is_empty()).unwrap();
        assert_eq!(segs(relay), ["fcbb:bb00:2:e001::", "fcbb:bb00:1:d6::"]);
    }

    #[test]
    fn protocol_any_sends_other_traffic_around_the_stream_hops() {
        let mut s = spec();
        s.r#match.protocol = Protocol::Any;
        let out = run(&s);
        let fwd = &out.nodes["n1"].headends;
        assert_eq!(fwd.len(), 2);
        assert_eq!((fwd[0].proto, segs(&fwd[0]).len()), (Some(6), 3), "TCP first (it ranks first in the class)");
        assert_eq!((fwd[1].proto, segs(&fwd[1])), (None, vec!["fcbb:bb00:2:e001::".to_string(), "fcbb:bb00:4:d6::".into()]));
        // Only stream functions: nothing but TCP is steered.
        s.functions.remove(0);
        let out = run(&s);
        assert_eq!(out.nodes["n1"].headends.iter().map(|h| h.proto).collect::<Vec<_>>(), [Some(6)]);
    }

    #[test]
    fn bad_functions_and_protocols_are_invalid_function_and_program_nothing() {
        let mut s = spec();
        s.functions[2] = stream("swap", "replace", &[("from", "RvZ3"), ("too", "NhdH")]);
        let out = run(&s);
        let v = &out.chains[0];
        assert_eq!((v.ready, v.reason), (false, Reason::InvalidFunction));
        assert!(v.message.contains("function swap") && v.message.contains("too"), "{}", v.message);
        assert!(out.nodes.values().all(|t| t.headends.is_empty() && t.proxies.is_empty()));
        let mut s = spec();
        s.functions[1] = stream("encode", "rot13", &[]);
        assert!(run(&s).chains[0].message.contains("rot13"));
        let mut s = spec();
        s.r#match.protocol = Protocol::Udp;
        let v = &run(&s).chains[0];
        assert_eq!(v.reason, Reason::InvalidFunction, "{}", v.message);
    }

    #[test]
    fn a_pod_selected_both_ways_is_a_conflict() {
        let mut s = spec();
        s.functions[0].pod_selector = sel("app", "pipes");
        let v = &run(&s).chains[0];
        assert_eq!((v.ready, v.reason), (false, Reason::Conflict), "{}", v.message);
        assert!(v.message.contains("default/pipes:net1"), "{}", v.message);
    }

    #[test]
    fn stream_functions_apart_are_hops_apart() {
        let mut s = spec();
        s.functions.swap(0, 2); // swap(stream), encode(stream), fw, decode(stream)
                                // decode on a proxy of its own.
        s.functions[3].pod_selector = sel("app", "pipes2");
        let mut w = world();
        w.pods.push(pod("pipes2", "n3", "pipes2", "fd00:10:3::3"));
        w.registrations.push(SidRegistration {
            node: "n3".into(),
            pod_namespace: "default".into(),
            pod_name: "pipes2".into(),
            interface: "net1".into(),
            sid: Sid("fcbb:bb00:3:e002::".parse().unwrap()),
        });
        let v = &compile(&w, &[ChainRef { namespace: "default", name: "pipes", spec: &s, generation: None }]).chains[0];
        assert!(v.ready, "{v:?}");
        assert_eq!(v.paths[0].len(), 4, "pipes, fw, pipes2, decapsulation: {:?}", v.paths);
        assert_eq!(v.hops[0].replicas[0].sid, v.hops[1].replicas[0].sid);
        assert_ne!(v.hops[1].replicas[0].sid, v.hops[3].replicas[0].sid, "another proxy, another SID");
    }

    /// The same proxy pod for two stream hops (a packet function between them): a conflict, not
    /// a chain whose every connection would fail at the second crossing.
    #[test]
    fn a_stream_proxy_crossed_twice_is_a_conflict() {
        let mut s = spec();
        s.functions.swap(0, 2); // swap(stream), encode(stream), fw, decode(stream): all on pipes
        let v = &run(&s).chains[0];
        assert!(!v.ready, "{v:?}");
        assert_eq!(v.reason, Reason::Conflict);
        assert!(v.message.contains("functions swap and decode both run on stream proxy default/pipes"), "{}", v.message);
    }
}
