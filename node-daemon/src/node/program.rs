//! Programming a node: the route lookups of its interfaces ([`Lookups`], netlink, without the
//! node's lock), what the program wants ([`desired`], pure), the classifier's new tables and
//! whether they steer differently from what is installed ([`classifier`], [`same_steering`],
//! pure), the map updates, best effort, which record in `Installed` exactly what they changed
//! (under the node's lock, no netlink call), then the peer routes ([`Routes`], netlink, without
//! the lock) and what they did.
//!
//! A failed step never leaves a rule half-way: a new classifier gets class ids that no installed
//! rule uses, its stage-2 and fragment entries are written first, and a stage-1 rule switches to
//! its new class (one atomic map update) only when that class is complete, so every rule steers
//! either by the old program or by the new one, never through another chain's class. What
//! failed is reported (the `Programmed` condition) and retried by the next program, which diffs
//! against what is really installed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ipnet::{IpNet, Ipv6Net};
use nix::net::if_::{if_indextoname, if_nametoindex};
use srv6::classifier;
use srv6::codec::{NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use srv6::compiler::{replica_slots, shared_proxies, Behavior};
use srv6::node_api::NodeProgram;
use srv6::sid::{Locator, Sid};
use srv6pipes_ebpf::{
    Hook, L4Target, SidEntry, BEHAVIOR_END_DT46, CLASS_SRC_PORTS, POLICY_DROP, POLICY_INSERT, VNF_AM, VNF_AS, VNF_NO_FLOWS, VNF_SHARED,
    VNF_STREAM,
};
use tracing::{info, warn};

use super::{has_return, policy_header, programmed_behavior, Node, PolicyIds};
use crate::net::Netlink;
use crate::state::{PolicyKey, Registration};

/// The classifier as the datapath keys it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Classifier {
    /// Stage 1: (ifindex, destination) -> class (with `CLASS_SRC_PORTS`).
    pub rules: BTreeMap<(u32, IpNet), u32>,
    /// Stage 2: (class, protocol, port, port block length) -> policy and rank.
    pub l4: BTreeMap<(u32, Option<u8>, u16, u8), L4Target>,
    /// Fragments: (class, protocol) -> policy.
    pub frags: BTreeMap<(u32, Option<u8>), u32>,
}

/// A headend rule's source: its address, and the chain interface of a stream proxy (its name
/// as the program's rules share it) when the rule is for what the proxy relays.
pub type Source = (IpAddr, Option<Arc<str>>);

/// The interfaces a program's headends and pods resolve to on this node (route lookups).
#[derive(Debug, Default)]
pub struct Resolved {
    /// Source -> (ifindex, name).
    pub sources: BTreeMap<Source, (u32, String)>,
    /// The pods' primary interfaces (the guard goes on them).
    pub guarded: BTreeSet<String>,
}

/// Everything a program wants installed, computed before anything changes.
#[derive(Debug, Default)]
pub(super) struct Desired {
    /// Policies with their stable ids and header templates.
    pub policies: Vec<(PolicyKey, u32, Vec<u8>)>,
    pub ids: BTreeMap<PolicyKey, u32>,
    pub classify: Vec<classifier::Rule<u32>>,
    pub ifaces: BTreeSet<String>,
    pub as_returns: BTreeMap<(u32, u32), u32>,
    pub vnf_flags: BTreeMap<u32, u32>,
    pub insert_sources: BTreeSet<Ipv6Net>,
    pub decaps: BTreeSet<Sid>,
    pub peers: BTreeMap<Ipv6Net, Ipv6Addr>,
}

/// What a program wants, from the program, the node's resolved interfaces, its registrations,
/// the policy ids it already gave out (and those its maps still hold) and its stream proxies'
/// SIDs. Every header is built (and so validated) here: a program that cannot be installed
/// changes nothing.
pub(super) fn desired(
    p: &NodeProgram,
    locator: &Locator,
    resolved: &Resolved,
    registrations: &[Registration],
    known: &BTreeMap<PolicyKey, u32>,
    held: &BTreeSet<u32>,
    stream_sids: &BTreeSet<Sid>,
) -> anyhow::Result<Desired> {
    let mut d = Desired { ifaces: resolved.guarded.clone(), ..Default::default() };
    let mut ids = PolicyIds::new(known, held);
    for h in &p.tables.headends {
        let source = (h.source_ip, h.source_interface.clone());
        let (oif, ifname) =
            resolved.sources.get(&source).with_context(|| format!("chain {}: source {} unresolved", h.chain, h.source_ip))?;
        let inner = if h.destination.addr().is_ipv4() { NEXT_HEADER_IPV4 } else { NEXT_HEADER_IPV6 };
        let replicas = if h.replicas.is_empty() { h.segments.iter().map(|s| vec![*s]).collect() } else { h.replicas.to_vec() };
        let key = PolicyKey { chain: h.chain.to_string(), role: String::new(), replicas, inner, drop: h.drop, insert: h.insert };
        let id = ids.id(key);
        d.classify.push(classifier::Rule {
            source: *oif,
            destination: h.destination,
            proto: h.proto,
            ports: h.ports.clone(),
            source_ports: h.source_ports.clone(),
            priority: h.priority,
            target: id as usize,
        });
        // A stream proxy's rules sit on its chain interface, which has its own program.
        if h.source_interface.is_none() {
            d.ifaces.insert(ifname.clone());
        }
    }
    // End.AS: each static proxy's interface returns through a policy holding the rest of the
    // chain (per inner family), in the same id space as the headend's.
    for u in p.tables.proxies.iter().filter(|u| u.behavior == Behavior::EndAS) {
        let Some(reg) = registrations.iter().find(|r| r.sid == u.sid) else {
            warn!(sid = %u.sid, chain = %u.chain, "End.AS for a SID that is not registered here");
            continue;
        };
        for (family, inner) in [(4u32, NEXT_HEADER_IPV4), (6, NEXT_HEADER_IPV6)] {
            let role = format!("End.AS {}", u.sid);
            let key = PolicyKey { chain: u.chain.to_string(), role, replicas: u.return_path.clone(), inner, drop: false, insert: false };
            let id = ids.id(key);
            d.as_returns.insert((reg.return_ifindex, family), id);
        }
    }
    d.vnf_flags = vnf_flags(p, registrations, &d.as_returns, stream_sids);
    d.insert_sources = p
        .tables
        .insert_sources
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(a) => Some(Ipv6Net::from(*a)),
            IpAddr::V4(_) => None,
        })
        .collect();
    d.decaps = p.tables.decaps.iter().map(|u| u.sid).collect();
    if let Some(s) = d.decaps.iter().find(|s| locator.funct_of(**s).is_none()) {
        bail!("decapsulation SID {s} is not in locator {locator}");
    }
    d.peers = p.peers.iter().map(|peer| (peer.locator.prefix(), peer.underlay)).collect();
    d.ids = ids.into_ids();
    let src = locator.source_address();
    d.policies = d
        .ids
        .iter()
        .map(|(key, id)| Ok((key.clone(), *id, policy_header(src, key).with_context(|| format!("chain {}: segment list", key.chain))?)))
        .collect::<anyhow::Result<_>>()?;
    Ok(d)
}

/// Each registered VNF's flags by its return interface (those with none left out): End.AM,
/// flows rewritten, shared by chains, a stream proxy, an End.AS return.
fn vnf_flags(
    p: &NodeProgram,
    registrations: &[Registration],
    as_returns: &BTreeMap<(u32, u32), u32>,
    stream_sids: &BTreeSet<Sid>,
) -> BTreeMap<u32, u32> {
    let sids_of = |keep: &dyn Fn(&srv6::compiler::SidUse) -> bool| -> BTreeSet<Sid> {
        p.tables.proxies.iter().filter(|u| keep(u)).map(|u| u.sid).collect()
    };
    let am = sids_of(&|u| u.behavior == Behavior::EndAM);
    let rewriting = sids_of(&|u| u.rewrites_flows);
    let shared = shared_proxies(&p.tables.proxies);
    let flag = |set: &BTreeSet<Sid>, sid: &Sid, bit: u32| if set.contains(sid) { bit } else { 0 };
    registrations
        .iter()
        .map(|r| {
            let flags = flag(&am, &r.sid, VNF_AM)
                | flag(&rewriting, &r.sid, VNF_NO_FLOWS)
                | flag(&shared, &r.sid, VNF_SHARED)
                | flag(stream_sids, &r.sid, VNF_STREAM)
                | if has_return(as_returns, r.return_ifindex) { VNF_AS } else { 0 };
            (r.return_ifindex, flags)
        })
        .filter(|(_, f)| *f != 0)
        .collect()
}

fn class_of(c: u32) -> u32 {
    c & !CLASS_SRC_PORTS
}

/// The classifier of `rules` with its classes numbered from `base`.
pub(super) fn classifier(rules: &[classifier::Rule<u32>], base: u32) -> Classifier {
    let t = classifier::build(rules);
    let id = |class: u32, src_ports: bool| (class + base - 1) | if src_ports { CLASS_SRC_PORTS } else { 0 };
    Classifier {
        rules: t.classes.iter().map(|c| ((c.source, c.destination), id(c.class, c.source_ports))).collect(),
        l4: t
            .l4
            .iter()
            .map(|e| ((id(e.class, e.by_source), e.proto, e.port, e.port_len), L4Target { policy: e.target as u32, rank: e.rank }))
            .collect(),
        frags: t.frags.iter().map(|f| ((id(f.class, false), f.proto), f.target as u32)).collect(),
    }
}

/// The number of classes of a classifier.
#[cfg(test)]
fn classes(c: &Classifier) -> BTreeSet<u32> {
    c.rules.values().map(|c| class_of(*c)).collect()
}

/// What a class steers by, apart from its id: whether its rules match source ports, its
/// stage-2 entries (source-port ones flagged) and its fragment entries.
type Content = (bool, Vec<((bool, Option<u8>, u16, u8), L4Target)>, Vec<(Option<u8>, u32)>);

/// Each class's content, by class id (without the flag).
fn contents(c: &Classifier) -> BTreeMap<u32, Content> {
    let mut out: BTreeMap<u32, Content> = BTreeMap::new();
    for &class in c.rules.values() {
        out.entry(class_of(class)).or_default().0 |= class & CLASS_SRC_PORTS != 0;
    }
    for (&(class, proto, port, len), &target) in &c.l4 {
        out.entry(class_of(class)).or_default().1.push(((class & CLASS_SRC_PORTS != 0, proto, port, len), target));
    }
    for (&(class, proto), &policy) in &c.frags {
        out.entry(class_of(class)).or_default().2.push((proto, policy));
    }
    out
}

/// `probe` (classes numbered from 1) renumbered against what is installed: each class whose
/// content an installed class has keeps that class (the one its rules point at, when it can),
/// and the others get ids no installed entry uses. Returns the renumbered classifier and its
/// fresh classes, the only ones whose stage-2 and fragment entries must be written: a change to
/// one chain of 10,000 writes its own class and rule, not every class and rule again.
pub(super) fn reuse_classes(installed: &Classifier, probe: &Classifier) -> (Classifier, BTreeSet<u32>) {
    let have = contents(installed);
    let mut by_content: BTreeMap<&Content, Vec<u32>> = BTreeMap::new();
    for (id, content) in &have {
        by_content.entry(content).or_default().push(*id);
    }
    let want = contents(probe);
    let mut ids: BTreeMap<u32, u32> = BTreeMap::new();
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    // First the class a rule of the probe class points at now, if it holds the same.
    for (key, &class) in &probe.rules {
        let (c, now) = (class_of(class), installed.rules.get(key).map(|i| class_of(*i)));
        if let Some(now) = now.filter(|n| !ids.contains_key(&c) && !taken.contains(n) && have.get(n) == want.get(&c)) {
            ids.insert(c, now);
            taken.insert(now);
        }
    }
    // Then any installed class of the same content; else a fresh id.
    let used: BTreeSet<u32> = installed
        .rules
        .values()
        .chain(installed.l4.keys().map(|k| &k.0))
        .chain(installed.frags.keys().map(|k| &k.0))
        .map(|c| class_of(*c))
        .collect();
    let mut fresh = BTreeSet::new();
    let mut next = 1;
    for (c, content) in &want {
        if ids.contains_key(c) {
            continue;
        }
        let same = by_content.get_mut(content).and_then(|v| {
            while let Some(i) = v.pop() {
                if !taken.contains(&i) {
                    return Some(i);
                }
            }
            None
        });
        let id = same.unwrap_or_else(|| {
            while used.contains(&next) || taken.contains(&next) {
                next += 1;
            }
            fresh.insert(next);
            next
        });
        taken.insert(id);
        ids.insert(*c, id);
    }
    let id = |class: u32| ids[&class_of(class)] | (class & CLASS_SRC_PORTS);
    let renumbered = Classifier {
        rules: probe.rules.iter().map(|(k, c)| (*k, id(*c))).collect(),
        l4: probe.l4.iter().map(|(&(c, p, port, len), t)| ((id(c), p, port, len), *t)).collect(),
        frags: probe.frags.iter().map(|(&(c, p), t)| ((id(c), p), *t)).collect(),
    };
    (renumbered, fresh)
}

/// Whether two classifiers steer alike: the same rules, whose classes hold the same entries,
/// whatever the class ids. (A stage-2 entry of no rule's class makes them differ: rebuilding
/// removes it.)
pub(super) fn same_steering(a: &Classifier, b: &Classifier) -> bool {
    if a.rules.len() != b.rules.len() {
        return false;
    }
    let mut map: BTreeMap<u32, u32> = BTreeMap::new();
    for ((ka, ca), (kb, cb)) in a.rules.iter().zip(&b.rules) {
        if ka != kb || ca & CLASS_SRC_PORTS != cb & CLASS_SRC_PORTS || *map.entry(class_of(*ca)).or_insert(class_of(*cb)) != class_of(*cb) {
            return false;
        }
    }
    if map.values().collect::<BTreeSet<_>>().len() != map.len() {
        return false;
    }
    let tr = |c: u32| map.get(&class_of(c)).map(|m| m | (c & CLASS_SRC_PORTS));
    let l4: Option<BTreeMap<_, _>> = a.l4.iter().map(|(&(c, p, port, len), t)| Some(((tr(c)?, p, port, len), *t))).collect();
    let frags: Option<BTreeMap<_, _>> = a.frags.iter().map(|(&(c, p), t)| Some(((tr(c)?, p), *t))).collect();
    l4.as_ref() == Some(&b.l4) && frags.as_ref() == Some(&b.frags)
}

/// What a policy was written with: its header, and through its key its flags and its hops'
/// replica tables (all of them functions of the key).
fn policy_digest(key: &PolicyKey, header: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    header.hash(&mut h);
    (key.drop, key.insert, &key.replicas).hash(&mut h);
    h.finish()
}

/// Runs one step; a failure is recorded (with what it was) and the apply goes on.
pub(super) fn step<E: Into<anyhow::Error>>(errs: &mut Vec<anyhow::Error>, r: Result<(), E>, what: impl FnOnce() -> String) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            errs.push(e.into().context(what()));
            false
        }
    }
}

/// What resolving a program's interfaces takes, read from the node under its lock; the route
/// lookups then run without it ([`Lookups::run`]).
pub struct Lookups {
    node: String,
    uplink: String,
    /// Stream proxies' chain interfaces are known from their registrations already.
    known: Resolved,
    /// Headend sources to look up: (address, the source pod for messages).
    sources: Vec<(IpAddr, Arc<str>)>,
    pods: Vec<IpAddr>,
}

impl Lookups {
    /// The route lookups (`ip route get`) of every headend source and pod.
    pub async fn run(self, netlink: &Netlink) -> anyhow::Result<Resolved> {
        let mut r = self.known;
        for (ip, pod) in self.sources {
            let oif = netlink.route_oif(ip).await.with_context(|| format!("source pod {pod}"))?;
            let ifname = if_indextoname(oif).with_context(|| format!("ifindex {oif}"))?.to_string_lossy().into_owned();
            if ifname == self.uplink {
                bail!("source pod {pod} ({ip}) is not on node {}", self.node);
            }
            r.sources.insert((ip, None), (oif, ifname));
        }
        // Every pod gets the guard (the same program: without a rule it only enforces the
        // closed domain). A pod that is gone has no route: nothing to guard.
        let uplink = if_nametoindex(self.uplink.as_str()).ok();
        for ip in self.pods {
            match netlink.route_oif(ip).await {
                Ok(oif) if Some(oif) != uplink => {
                    if let Ok(name) = if_indextoname(oif) {
                        r.guarded.insert(name.to_string_lossy().into_owned());
                    }
                }
                _ => warn!(node = %self.node, pod_ip = %ip, "no local route to pod: not guarded"),
            }
        }
        Ok(r)
    }
}

/// The peer routes a program adds and removes: netlink calls, made without the node's lock.
pub struct Routes {
    uplink: u32,
    add: Vec<(Ipv6Net, Ipv6Addr)>,
    remove: Vec<(Ipv6Net, Ipv6Addr)>,
}

/// What [`Routes::run`] did.
pub struct RoutesDone {
    added: Vec<(Ipv6Net, Ipv6Addr)>,
    removed: Vec<Ipv6Net>,
    errs: Vec<anyhow::Error>,
}

impl Routes {
    pub async fn run(&self, netlink: &Netlink) -> RoutesDone {
        let mut done = RoutesDone { added: Vec::new(), removed: Vec::new(), errs: Vec::new() };
        for &(prefix, via) in &self.add {
            if step(&mut done.errs, netlink.replace_route(prefix, via, self.uplink).await, || format!("route {prefix} via {via}")) {
                done.added.push((prefix, via));
            }
        }
        for &(prefix, via) in &self.remove {
            if step(&mut done.errs, netlink.delete_route(prefix, via, self.uplink).await, || format!("remove route {prefix} via {via}")) {
                done.removed.push(prefix);
            }
        }
        done
    }
}

/// A program between its map updates and its routes.
pub struct Pending {
    ids: BTreeMap<PolicyKey, u32>,
    pub routes: Routes,
    errs: Vec<anyhow::Error>,
}

impl Node {
    /// Applies a program in one go (at start, re-applying the last one); the server runs the
    /// same phases with the node unlocked around the netlink calls (`server::program`).
    pub async fn program(&mut self, p: NodeProgram) -> anyhow::Result<()> {
        let resolved = self.lookups(&p)?.run(&self.netlink).await?;
        let pending = self.apply_maps(&p, &resolved)?;
        let done = pending.routes.run(&self.netlink).await;
        let saved = self.store.save_program(&p);
        self.finish(p, pending, done)?;
        saved
    }

    /// What resolving `p`'s interfaces takes (phase 1, under the node's lock).
    pub fn lookups(&self, p: &NodeProgram) -> anyhow::Result<Lookups> {
        let mut l = Lookups {
            node: self.name.clone(),
            uplink: self.uplink.clone(),
            known: Resolved::default(),
            sources: Vec::new(),
            pods: p.tables.pods.clone(),
        };
        let mut seen = BTreeSet::new();
        for h in &p.tables.headends {
            let source = (h.source_ip, h.source_interface.clone());
            if !seen.insert(source.clone()) {
                continue;
            }
            match &h.source_interface {
                Some(name) => {
                    let iface = self.chain_interface(name).with_context(|| format!("chain {}", h.chain))?;
                    l.known.sources.insert(source, iface);
                }
                None => l.sources.push((h.source_ip, h.source_pod.clone())),
            }
        }
        Ok(l)
    }

    /// Computes what `p` wants and applies it to the maps and attachments, best effort (phase
    /// 2, under the node's lock; no netlink call). The peer routes are left to [`Routes::run`].
    pub fn apply_maps(&mut self, p: &NodeProgram, resolved: &Resolved) -> anyhow::Result<Pending> {
        let streams = self.stream_plan(&p.tables.proxies)?;
        let stream_sids: BTreeSet<Sid> = streams.by_registration.keys().map(|i| self.state.registrations[*i].sid).collect();
        let known: BTreeMap<PolicyKey, u32> = self.state.policies.iter().cloned().collect();
        let held: BTreeSet<u32> = self.installed.policies.keys().copied().collect();
        let d = desired(p, &self.locator, resolved, &self.state.registrations, &known, &held, &stream_sids)?;
        let uplink = if_nametoindex(self.uplink.as_str()).with_context(|| format!("uplink {}", self.uplink))?;

        let mut errs = Vec::new();
        let failed_policies = self.apply_policies(&d, &mut errs);
        self.apply_classifier(&d, &failed_policies, &mut errs);
        for ifname in &d.ifaces {
            if step(&mut errs, self.datapath.attach(Hook::Headend, ifname), || format!("attach the headend to {ifname}")) {
                self.installed.headend_ifaces.insert(ifname.clone());
            }
        }
        for sid in &d.decaps {
            let entry = SidEntry { behavior: BEHAVIOR_END_DT46, ..Default::default() };
            if step(&mut errs, self.datapath.set_sid(sid.0, entry), || format!("decapsulation SID {sid}")) {
                self.installed.decaps.insert(*sid);
            }
        }
        for (&(ifindex, family), &id) in d.as_returns.iter().filter(|(_, id)| !failed_policies.contains(id)) {
            if step(&mut errs, self.datapath.set_as_return(ifindex, family, id), || format!("End.AS return of ifindex {ifindex}")) {
                self.installed.as_returns.insert((ifindex, family), id);
            }
        }
        for prefix in &d.insert_sources {
            if step(&mut errs, self.datapath.set_insert_source(*prefix), || format!("End.AM source {prefix}")) {
                self.installed.insert_sources.insert(*prefix);
            }
        }
        // Interface flags before their SIDs turn End.AM (what the VNF returns is then
        // de-masqueraded), removed after a SID stops being End.AM.
        for (&ifindex, &flags) in &d.vnf_flags {
            if step(&mut errs, self.datapath.set_vnf_flags(ifindex, flags), || format!("flags of ifindex {ifindex}")) {
                self.installed.vnf_flags.insert(ifindex, flags);
            }
        }
        for reg in self.state.registrations.clone() {
            let installed = (&self.installed.as_returns, &self.installed.vnf_flags);
            let behavior = programmed_behavior(installed, (&d.as_returns, &d.vnf_flags), reg.return_ifindex);
            let r = self.set_proxy_behavior(&reg, behavior);
            step(&mut errs, r, || format!("proxy SID {}", reg.sid));
        }
        self.program_streams(&streams, &mut errs);
        self.remove_unwanted(&d, &mut errs);
        let installed = &self.installed.peer_routes;
        let routes = Routes {
            uplink,
            add: d.peers.iter().map(|(p, v)| (*p, *v)).collect(),
            remove: installed.iter().filter(|(p, _)| !d.peers.contains_key(*p)).map(|(p, v)| (*p, *v)).collect(),
        };
        Ok(Pending { ids: d.ids, routes, errs })
    }

    /// Records the routes and the program (phase 3, under the node's lock); the error lists
    /// the steps that failed, which the next program retries.
    pub fn finish(&mut self, p: NodeProgram, pending: Pending, done: RoutesDone) -> anyhow::Result<()> {
        let mut errs = pending.errs;
        self.installed.peer_routes.extend(done.added);
        for prefix in done.removed {
            self.installed.peer_routes.remove(&prefix);
        }
        errs.extend(done.errs);
        let i = &self.installed;
        info!(node = %self.name, headend_rules = i.rules.len(), policies = i.policies.len(), decaps = i.decaps.len(), peers = i.peer_routes.len(), failed_steps = errs.len(), "programmed");
        self.state.policies = pending.ids.into_iter().collect();
        self.state.program = Some(p);
        self.store.save(&self.state)?;
        if errs.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = errs.iter().take(3).map(|e| format!("{e:#}")).collect();
        Err(anyhow!("{} step(s) failed, the next program retries them: {}", errs.len(), shown.join("; ")))
    }

    /// Sets every wanted policy that is not installed as it is wanted (hop tables first, so a
    /// policy never points at a missing one); returns the ids that failed.
    fn apply_policies(&mut self, d: &Desired, errs: &mut Vec<anyhow::Error>) -> BTreeSet<u32> {
        let mut failed = BTreeSet::new();
        for (key, id, header) in &d.policies {
            let written = policy_digest(key, header);
            if self.installed.policies.get(id) == Some(&Some(written)) {
                continue;
            }
            let mut flags = if key.drop { POLICY_DROP } else { 0 } | if key.insert { POLICY_INSERT } else { 0 };
            let mut ok = true;
            for (hop, replicas) in key.replicas.iter().enumerate().filter(|(_, r)| r.len() > 1) {
                let slots: Vec<Ipv6Addr> = replica_slots(replicas).iter().map(|s| s.0).collect();
                ok &= step(errs, self.datapath.set_hop_slots(*id, hop as u32, &slots), || format!("chain {}: hop {hop}", key.chain));
                flags |= 1 << hop;
            }
            if ok && step(errs, self.datapath.set_policy(*id, header, flags), || format!("chain {}: policy {id}", key.chain)) {
                self.installed.policies.insert(*id, Some(written));
            } else {
                failed.insert(*id);
            }
        }
        failed
    }

    /// Installs the new classifier when it steers differently: the classes it shares with what
    /// is installed are kept as they are; stage 2 and fragments of its fresh classes are
    /// written, then each stage-1 rule that changes switches to its class if that class is
    /// complete, then the entries of classes no rule points at go.
    fn apply_classifier(&mut self, d: &Desired, failed_policies: &BTreeSet<u32>, errs: &mut Vec<anyhow::Error>) {
        let installed =
            Classifier { rules: self.installed.rules.clone(), l4: self.installed.l4.clone(), frags: self.installed.frags.clone() };
        let probe = classifier(&d.classify, 1);
        if same_steering(&installed, &probe) {
            return;
        }
        let (new, fresh) = reuse_classes(&installed, &probe);
        let mut broken: BTreeSet<u32> = BTreeSet::new();
        // A class whose policy failed is incomplete, fresh or kept (its rules stay as they are);
        // only fresh classes' entries are written.
        for (&(class, proto, port, len), &target) in &new.l4 {
            if failed_policies.contains(&target.policy) {
                broken.insert(class_of(class));
            } else if fresh.contains(&class_of(class)) {
                if step(errs, self.datapath.set_l4_rule(class, proto, port, len, target), || format!("class {class} port {port}")) {
                    self.installed.l4.insert((class, proto, port, len), target);
                } else {
                    broken.insert(class_of(class));
                }
            }
        }
        for (&(class, proto), &policy) in &new.frags {
            if failed_policies.contains(&policy) {
                broken.insert(class_of(class));
            } else if fresh.contains(&class_of(class)) {
                if step(errs, self.datapath.set_frag_rule(class, proto, policy), || format!("class {class} fragments")) {
                    self.installed.frags.insert((class, proto), policy);
                } else {
                    broken.insert(class_of(class));
                }
            }
        }
        let changed: Vec<((u32, IpNet), u32)> =
            new.rules.iter().filter(|(k, c)| self.installed.rules.get(k) != Some(c)).map(|(k, c)| (*k, *c)).collect();
        for ((oif, dst), class) in changed {
            if broken.contains(&class_of(class)) {
                warn!(node = %self.name, ifindex = oif, destination = %dst, "rule kept on the previous program: its new class is incomplete");
            } else if step(errs, self.datapath.set_headend_rule(oif, dst, class), || format!("rule {dst} on ifindex {oif}")) {
                self.installed.rules.insert((oif, dst), class);
            }
        }
        let gone: Vec<(u32, IpNet)> = self.installed.rules.keys().filter(|k| !new.rules.contains_key(k)).copied().collect();
        for (oif, dst) in gone {
            if step(errs, self.datapath.remove_headend_rule(oif, dst), || format!("remove rule {dst} on ifindex {oif}")) {
                self.installed.rules.remove(&(oif, dst));
            }
        }
        let live: BTreeSet<u32> = self.installed.rules.values().map(|c| class_of(*c)).collect();
        let dead_l4: Vec<_> = self.installed.l4.keys().filter(|k| !live.contains(&class_of(k.0))).copied().collect();
        for (class, proto, port, len) in dead_l4 {
            if step(errs, self.datapath.remove_l4_rule(class, proto, port, len), || format!("remove class {class} port {port}")) {
                self.installed.l4.remove(&(class, proto, port, len));
            }
        }
        let dead_frags: Vec<_> = self.installed.frags.keys().filter(|k| !live.contains(&class_of(k.0))).copied().collect();
        for (class, proto) in dead_frags {
            if step(errs, self.datapath.remove_frag_rule(class, proto), || format!("remove class {class} fragments")) {
                self.installed.frags.remove(&(class, proto));
            }
        }
    }

    /// Removes what the program no longer wants (after the adds, so nothing points at a
    /// removed entry); a policy goes only when nothing installed points at it.
    fn remove_unwanted(&mut self, d: &Desired, errs: &mut Vec<anyhow::Error>) {
        let wanted: BTreeSet<u32> = d.ids.values().copied().collect();
        let referenced: BTreeSet<u32> = self
            .installed
            .l4
            .values()
            .map(|t| t.policy)
            .chain(self.installed.frags.values().copied())
            .chain(self.installed.as_returns.values().copied())
            .collect();
        let i = &self.installed;
        let policies: Vec<u32> = i.policies.keys().filter(|id| !wanted.contains(id) && !referenced.contains(id)).copied().collect();
        let ifaces: Vec<String> = i.headend_ifaces.difference(&d.ifaces).cloned().collect();
        let decaps: Vec<Sid> = i.decaps.difference(&d.decaps).copied().collect();
        let as_returns: Vec<(u32, u32)> = i.as_returns.keys().filter(|k| !d.as_returns.contains_key(k)).copied().collect();
        let vnf_flags: Vec<u32> = i.vnf_flags.keys().filter(|k| !d.vnf_flags.contains_key(k)).copied().collect();
        let insert_sources: Vec<Ipv6Net> = i.insert_sources.difference(&d.insert_sources).copied().collect();
        for id in policies {
            if step(errs, self.datapath.remove_policy(id), || format!("remove policy {id}")) {
                self.installed.policies.remove(&id);
            }
        }
        for ifname in ifaces {
            if step(errs, self.datapath.detach(Hook::Headend, &ifname), || format!("detach the headend from {ifname}")) {
                self.installed.headend_ifaces.remove(&ifname);
            }
        }
        for sid in decaps {
            if step(errs, self.datapath.remove_sid(sid.0), || format!("remove decapsulation SID {sid}")) {
                self.installed.decaps.remove(&sid);
            }
        }
        for (ifindex, family) in as_returns {
            if step(errs, self.datapath.remove_as_return(ifindex, family), || format!("remove End.AS return of ifindex {ifindex}")) {
                self.installed.as_returns.remove(&(ifindex, family));
            }
        }
        for ifindex in vnf_flags {
            if step(errs, self.datapath.remove_vnf_flags(ifindex), || format!("remove flags of ifindex {ifindex}")) {
                self.installed.vnf_flags.remove(&ifindex);
            }
        }
        for prefix in insert_sources {
            if step(errs, self.datapath.remove_insert_source(prefix), || format!("remove End.AM source {prefix}")) {
                self.installed.insert_sources.remove(&prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::proxy_behavior;
    use srv6pipes_ebpf::{BEHAVIOR_END_AD, BEHAVIOR_END_AM, BEHAVIOR_END_AS};

    fn rule(source: u32, dst: &str, port: Option<u16>, target: usize) -> classifier::Rule<u32> {
        classifier::Rule {
            source,
            destination: dst.parse().unwrap(),
            proto: port.map(|_| 6),
            ports: port.map(|p| vec![(p, p)]).unwrap_or_default(),
            source_ports: vec![],
            priority: 0,
            target,
        }
    }

    /// Installs what `apply_classifier` writes of `new` (its fresh classes' entries, the rules
    /// that change) and removes what it removes; returns the number of writes.
    fn install(installed: &mut Classifier, new: &Classifier, fresh: &BTreeSet<u32>) -> usize {
        let mut writes = 0;
        for (k, t) in new.l4.iter().filter(|(k, _)| fresh.contains(&class_of(k.0))) {
            writes += usize::from(installed.l4.insert(*k, *t).is_none());
        }
        for (k, t) in new.frags.iter().filter(|(k, _)| fresh.contains(&class_of(k.0))) {
            writes += usize::from(installed.frags.insert(*k, *t).is_none());
        }
        for (k, c) in &new.rules {
            writes += usize::from(installed.rules.insert(*k, *c) != Some(*c));
        }
        installed.rules.retain(|k, _| new.rules.contains_key(k));
        let live: BTreeSet<u32> = installed.rules.values().map(|c| class_of(*c)).collect();
        installed.l4.retain(|k, _| live.contains(&class_of(k.0)));
        installed.frags.retain(|k, _| live.contains(&class_of(k.0)));
        writes
    }

    #[test]
    fn a_new_classifier_keeps_the_installed_classes_it_shares_and_numbers_the_rest_afresh() {
        // A random walk of rule sets (overlapping prefixes, ports, priorities, two sources).
        let mut rng = 0x853c_49e6_748f_ea9bu64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut rules: Vec<classifier::Rule<u32>> = Vec::new();
        let mut installed = Classifier::default();
        for round in 0..200 {
            for _ in 0..1 + next(3) {
                if next(3) == 0 && !rules.is_empty() {
                    rules.remove(next(rules.len() as u64) as usize);
                } else {
                    let dst = match next(3) {
                        0 => format!("fd00:{:x}::/32", next(3)),
                        _ => format!("fd00:{:x}:{:x}::/48", next(3), next(6)),
                    };
                    let mut r = rule(3 + next(2) as u32, &dst, (next(2) == 0).then(|| 80 + next(3) as u16), 1 + next(5) as usize);
                    r.priority = next(3) as i32;
                    rules.retain(|o| (o.source, o.destination, &o.ports) != (r.source, r.destination, &r.ports));
                    rules.push(r);
                }
            }
            let probe = classifier(&rules, 1);
            let (new, fresh) = reuse_classes(&installed, &probe);
            assert!(same_steering(&new, &probe), "round {round}: renumbered, it steers as built");
            let before = contents(&installed);
            for (class, content) in contents(&new) {
                match before.get(&class) {
                    // Never an id that an installed entry uses, even a dead one.
                    _ if fresh.contains(&class) => assert!(!before.contains_key(&class), "round {round}: fresh {class} in use"),
                    Some(had) => assert_eq!(*had, content, "round {round}: class {class} kept with other entries"),
                    None => panic!("round {round}: class {class} is neither fresh nor installed"),
                }
            }
            install(&mut installed, &new, &fresh);
            assert!(same_steering(&installed, &probe), "round {round}: installed, it steers as built");
        }
        // 200 rules, each a prefix of its own: one more writes its class and its rule.
        let rules: Vec<_> = (0..200).map(|i| rule(3, &format!("fd00:99:{i:x}::/64"), None, i + 1)).collect();
        let mut installed = Classifier::default();
        let (new, fresh) = reuse_classes(&installed, &classifier(&rules, 1));
        assert_eq!(install(&mut installed, &new, &fresh), 600, "the first program writes everything (stage 2, fragments, rules)");
        let mut more = rules.clone();
        more.push(rule(3, "fd00:99:ffff::/64", None, 999));
        let (new, fresh) = reuse_classes(&installed, &classifier(&more, 1));
        assert_eq!(fresh.len(), 1);
        assert_eq!(install(&mut installed, &new, &fresh), 3, "one stage-2 entry, one fragment entry, one rule");
        let (new, fresh) = reuse_classes(&installed, &classifier(&rules, 1));
        assert!(fresh.is_empty());
        assert_eq!(install(&mut installed, &new, &fresh), 0, "removing it writes nothing (it deletes)");
        assert_eq!(installed.rules.len(), 200);
    }

    #[test]
    fn steering_is_compared_whatever_the_class_ids() {
        let rules = vec![rule(3, "fd00:20::/64", Some(80), 1), rule(3, "fd00:20::/64", None, 2), rule(4, "10.0.0.0/8", None, 2)];
        let a = classifier(&rules, 1);
        let b = classifier(&rules, 1000);
        assert_ne!(a, b);
        assert!(same_steering(&a, &b), "renumbered classes steer alike");
        assert!(classes(&b).iter().all(|c| *c >= 1000));
        // Another policy for one rule, a new rule, a removed rule: different.
        let mut other = rules.clone();
        other[0].target = 5;
        assert!(!same_steering(&a, &classifier(&other, 1)));
        let mut more = rules.clone();
        more.push(rule(4, "10.1.0.0/16", None, 1));
        assert!(!same_steering(&a, &classifier(&more, 1)));
        assert!(!same_steering(&a, &classifier(&rules[1..], 1)));
        // A stage-2 entry of no rule's class (left by a failed apply) is a difference.
        let mut leftover = a.clone();
        leftover.l4.insert((999, Some(6), 443, 16), L4Target { policy: 1, rank: 0 });
        assert!(!same_steering(&leftover, &b));
        assert!(same_steering(&Classifier::default(), &classifier(&[], 1)));
    }

    #[test]
    fn a_proxy_sid_takes_its_new_behaviour_in_the_program_that_changes_it() {
        let (returns, none, no_flags) = (BTreeMap::from([((9, 4), 1), ((9, 6), 2)]), BTreeMap::new(), BTreeMap::new());
        let (flags_as, flags_am) = (BTreeMap::from([(9, VNF_AS)]), BTreeMap::from([(9, VNF_AM)]));
        // End.AS -> End.AD: the old return and flag are still installed when the SID is written.
        assert_eq!(programmed_behavior((&returns, &flags_as), (&none, &no_flags), 9), BEHAVIOR_END_AD);
        // End.AD -> End.AS: the returns are installed first; one that failed keeps End.AD.
        assert_eq!(programmed_behavior((&returns, &flags_as), (&returns, &flags_as), 9), BEHAVIOR_END_AS);
        assert_eq!(programmed_behavior((&none, &flags_as), (&returns, &flags_as), 9), BEHAVIOR_END_AD);
        // End.AS -> End.AM (flags rewritten, the return on its way out), End.AM -> End.AD.
        assert_eq!(programmed_behavior((&returns, &flags_am), (&none, &flags_am), 9), BEHAVIOR_END_AM);
        assert_eq!(programmed_behavior((&none, &flags_am), (&none, &no_flags), 9), BEHAVIOR_END_AD);
        // Another interface's entries say nothing about this one.
        assert_eq!(programmed_behavior((&returns, &flags_am), (&returns, &flags_am), 8), BEHAVIOR_END_AD);
        assert_eq!(proxy_behavior((&returns, &flags_am), 9), BEHAVIOR_END_AS);
    }

    #[test]
    fn a_new_policy_takes_the_lowest_id_nobody_holds_and_a_known_one_keeps_its_own() {
        let key =
            |chain: &str| PolicyKey { chain: chain.into(), role: String::new(), replicas: vec![], inner: 41, drop: false, insert: false };
        let known = BTreeMap::from([(key("a"), 1), (key("b"), 2), (key("c"), 4), (key("gone"), 6)]);
        let mut ids = PolicyIds::new(&known, &BTreeSet::new());
        let got: Vec<u32> = ["new1", "c", "new2", "a", "new3", "new1"].iter().map(|c| ids.id(key(c))).collect();
        assert_eq!(got, [3, 4, 5, 1, 7, 3], "3 and 5 were free; 6 is still held by a key of the last program");
        assert_eq!(ids.into_ids().len(), 5);
        // A policy the maps still hold (an older program's, kept while a rule that failed to
        // move points at it) is not given to another key, even when no known key has its id.
        let held = BTreeSet::from([3, 5, 9]);
        let mut ids = PolicyIds::new(&known, &held);
        let got: Vec<u32> = ["new1", "new2", "a"].iter().map(|c| ids.id(key(c))).collect();
        assert_eq!(got, [7, 8, 1]);
    }

    fn registration(sid: &str, ifindex: u32) -> Registration {
        serde_json::from_value(serde_json::json!({
            "attachment": {"container_id": "c", "ifname": "net1", "netns": "/run/netns/x", "host_ifname": format!("sp{ifindex}"),
                           "pod_namespace": "default", "pod_name": "fw", "vnf_mac": "02:00:00:00:00:01", "host_mac": "02:00:00:00:00:02"},
            "sid": sid, "funct": 0xe001, "ifindex": ifindex, "return_ifindex": ifindex,
        }))
        .unwrap()
    }

    fn program(decap: &str) -> NodeProgram {
        serde_json::from_value(serde_json::json!({
            "tables": {
                "pods": ["fd00:10:1::2"],
                "headends": [
                    {"chain": "default/web", "source_pod": "default/client", "source_ip": "fd00:10:1::2", "destination": "fd00:20::/64",
                     "segments": ["fcbb:bb00:1:e001::", "fcbb:bb00:2:d6::"], "proto": 6, "ports": [[80, 80]]},
                    {"chain": "default/dns", "source_pod": "default/client", "source_ip": "fd00:10:1::2", "destination": "fd00:53::/64",
                     "segments": ["fcbb:bb00:2:d6::"], "drop": true},
                ],
                "proxies": [{"sid": "fcbb:bb00:1:e001::", "behavior": "End.AS", "chain": "default/web",
                             "return_path": [["fcbb:bb00:2:d6::"]]}],
                "decaps": [{"sid": decap, "behavior": "End.DT46", "chain": "default/web"}],
            },
            "peers": [{"node": "n2", "locator": "fcbb:bb00:2::/48", "underlay": "fd00:ffff::2"}],
        }))
        .unwrap()
    }

    #[test]
    fn what_a_program_wants_is_computed_before_anything_changes() {
        let locator: Locator = "fcbb:bb00:1::/48".parse().unwrap();
        let mut resolved = Resolved::default();
        resolved.sources.insert(("fd00:10:1::2".parse().unwrap(), None), (7, "veth-client".into()));
        resolved.guarded.insert("veth-client".into());
        let regs = [registration("fcbb:bb00:1:e001::", 9)];
        let d = desired(&program("fcbb:bb00:1:d6::"), &locator, &resolved, &regs, &BTreeMap::new(), &BTreeSet::new(), &BTreeSet::new())
            .unwrap();
        // Two headend policies and the End.AS return (one per inner family), ids from 1.
        assert_eq!(d.ids.len(), 4, "{:?}", d.ids);
        assert_eq!(d.classify.len(), 2);
        assert!(d.classify.iter().all(|r| r.source == 7));
        assert_eq!(d.ifaces, BTreeSet::from(["veth-client".to_string()]));
        assert_eq!(d.as_returns.keys().copied().collect::<Vec<_>>(), [(9, 4), (9, 6)]);
        assert_eq!(d.vnf_flags.get(&9), Some(&VNF_AS));
        assert_eq!(d.peers.len(), 1);
        let dropping = d.policies.iter().find(|(k, _, _)| k.drop).unwrap();
        assert!(dropping.2.is_empty(), "a dropping policy has no header");
        assert!(d.policies.iter().filter(|(k, _, _)| !k.drop).all(|(_, _, h)| !h.is_empty()));
        // Ids stay with their keys across programs.
        let again = desired(&program("fcbb:bb00:1:d6::"), &locator, &resolved, &regs, &d.ids, &BTreeSet::new(), &BTreeSet::new()).unwrap();
        assert_eq!(again.ids, d.ids);
        // A decapsulation SID outside the locator, or a source not resolved: refused whole.
        let e = desired(&program("fcbb:bb00:9:d6::"), &locator, &resolved, &regs, &BTreeMap::new(), &BTreeSet::new(), &BTreeSet::new())
            .unwrap_err();
        assert!(e.to_string().contains("not in locator"), "{e}");
        let e = desired(
            &program("fcbb:bb00:1:d6::"),
            &locator,
            &Resolved::default(),
            &regs,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert!(e.unwrap_err().to_string().contains("unresolved"));
    }
}
