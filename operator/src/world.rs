//! From API objects to the compiler's world and back to what the operator writes: pure, so the
//! reconcilers stay thin and this is unit-tested without an API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use srv6::compiler::{ChainRef, ChainVerdict, NodeInfo, PodInfo, World};
use srv6::node_api::{NodeProgram, NodeSids, Peer};
use srv6::plan::{Planned, Planner};
use srv6::sid::Locator;
use srv6pipes_crds::{NodeProgramSlice, NodeSidTable, ServiceChain, ServiceChainStatus, LOCATOR_ANNOTATION};

/// `namespace/name` of a chain, as the compiler's tables name it.
pub use srv6::plan::ChainKey;

/// What the whole cluster should look like after one compilation.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The program of every node that has a locator (published in slices), without peers.
    pub programs: BTreeMap<String, Arc<NodeProgram>>,
    /// Every node's locator route: each node's slice 0 has all of them but its own.
    pub peers: Arc<Vec<Peer>>,
    /// Every chain's verdict (chains being deleted are left out of the compilation).
    pub verdicts: BTreeMap<ChainKey, ChainVerdict>,
    /// Nodes whose table or program is in the way of a chain, with why: no locator, a SID
    /// table that cannot be read, a daemon that failed to program its generation.
    pub node_problems: BTreeMap<String, String>,
    /// The nodes each chain's tables touch, in order.
    pub chain_nodes: BTreeMap<ChainKey, Vec<Arc<str>>>,
    /// Which planner's plan this is ([`srv6::plan::Planned::stamp`]).
    pub stamp: u64,
}

impl Plan {
    /// What one chain's status reads of this plan (its verdict and nodes, the node problems):
    /// what a reconcile keeps while it waits for its nodes' writes, rather than the plan.
    pub fn for_chain(&self, key: &ChainKey) -> Plan {
        Plan {
            programs: BTreeMap::new(),
            peers: Arc::default(),
            verdicts: self.verdicts.get(key).map(|v| (key.clone(), v.clone())).into_iter().collect(),
            node_problems: self.node_problems.clone(),
            chain_nodes: self.chain_nodes.get(key).map(|n| (key.clone(), n.clone())).into_iter().collect(),
            stamp: 0,
        }
    }
}

/// The node's locator from its annotation (set by the operator or by whoever made the node).
pub fn node_locator(node: &Node) -> Option<Result<Locator, String>> {
    let v = node.annotations().get(LOCATOR_ANNOTATION)?;
    Some(v.parse::<Locator>().map_err(|e| format!("annotation {LOCATOR_ANNOTATION}={v:?}: {e}")))
}

/// The node's underlay address for locator routes: its first IPv6 InternalIP.
pub fn node_underlay(node: &Node) -> Option<Ipv6Addr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    addrs.iter().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse::<Ipv6Addr>().ok())
}

pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let status = pod.status.as_ref()?;
    let ips: Vec<IpAddr> = match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|i| i.ip.parse().ok()).collect(),
        _ => status.pod_ip.iter().filter_map(|i| i.parse().ok()).collect(),
    };
    let ready =
        pod.metadata.deletion_timestamp.is_none() && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    Some(PodInfo { namespace: pod.namespace().unwrap_or_default(), name: pod.name_any(), node, labels: pod.labels().clone(), ips, ready })
}

/// The `Programmed` condition of a daemon's report on a slice, when it is about the slice's
/// current generation.
pub fn slice_failure(s: &NodeProgramSlice) -> Option<String> {
    let status = s.status.as_ref()?;
    if status.observed_generation != s.metadata.generation {
        return None;
    }
    let c = status.conditions.iter().find(|c| c.type_ == "Programmed")?;
    (c.status == "False").then(|| format!("node {}: slice {}: {}", s.spec.node, s.name_any(), c.message))
}

/// By namespace and name.
fn sorted<K: ResourceExt>(mut v: Vec<&K>) -> Vec<&K> {
    v.sort_unstable_by(|a, b| namespaced_name(*a).cmp(&namespaced_name(*b)));
    v
}

/// An object's namespace and name, borrowed.
fn namespaced_name<K: ResourceExt>(o: &K) -> (&str, &str) {
    let m = o.meta();
    (m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default())
}

pub fn key_of(chain: &ServiceChain) -> ChainKey {
    (chain.namespace().unwrap_or_default(), chain.name_any())
}

/// Compiles every live chain (not being deleted) against the pods (in (namespace, name) order,
/// as [`crate::pods::Pods`] keeps them), nodes and SID tables; programs go to every node with a
/// locator. The other inputs come from caches in no particular order: they are sorted first,
/// so the same world always gives the same programs (and the operator never rewrites a
/// program whose content only moved).
pub fn plan(chains: &[&ServiceChain], pods: Vec<PodInfo>, nodes: &[&Node], tables: &[&NodeSidTable], slices: &[&NodeProgramSlice]) -> Plan {
    let (world, peers, node_problems) = gather(pods, nodes, tables, slices);
    let refs: Vec<ChainRef> = chains.iter().filter(|c| live(c)).map(|c| chain_ref(c)).collect();
    finish(node_problems, srv6::plan::plan(&world, &peers, &refs))
}

/// A chain's spec as the planner tells its versions apart: its uid and generation (the API
/// server moves the generation with every change of the spec, and with nothing else: status
/// and finalizer writes keep it). A chain without either is never the same as before. (The
/// mirror's object itself, compared by address, held every object a status write replaced
/// until the next plan, and made that plan compile every chain after a cold start: 162 MiB
/// and a second plan from scratch at 100,000 chains.)
pub struct Version(Option<(String, i64)>);

impl Version {
    fn of(c: &ServiceChain) -> Self {
        Version(c.metadata.uid.clone().zip(c.metadata.generation))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        matches!((&self.0, &other.0), (Some(a), Some(b)) if a == b)
    }
}

/// [`plan`], by `planner` from `previous` (its last plan, if it is): only the chains that
/// changed, or whose namespace's pods or SIDs changed, are compiled again.
pub fn replan(
    planner: &mut Planner<Version>,
    previous: Option<Plan>,
    chains: &[Arc<ServiceChain>],
    pods: Vec<PodInfo>,
    nodes: &[&Node],
    tables: &[&NodeSidTable],
    slices: &[&NodeProgramSlice],
) -> Plan {
    let (world, peers, node_problems) = gather(pods, nodes, tables, slices);
    let chains = chains.iter().filter(|c| live(c)).map(|c| (chain_ref(c), Version::of(c))).collect();
    let previous = previous.map(|p| {
        let programs = p.programs.into_iter().map(|(n, p)| (n, Arc::try_unwrap(p).unwrap_or_else(|p| (*p).clone()))).collect();
        Planned { programs, peers: Vec::new(), verdicts: p.verdicts, chain_nodes: p.chain_nodes, stamp: p.stamp }
    });
    finish(node_problems, planner.plan(previous, &world, &peers, chains))
}

fn live(c: &ServiceChain) -> bool {
    c.metadata.deletion_timestamp.is_none()
}

fn chain_ref(c: &ServiceChain) -> ChainRef<'_> {
    let (namespace, name) = namespaced_name(c);
    ChainRef { namespace, name, spec: &c.spec, generation: c.metadata.generation }
}

/// The compiler's world (the nodes with a locator, their SID tables' registrations and the
/// pods on them), the nodes' locator routes, and the nodes' problems.
fn gather(
    pods: Vec<PodInfo>,
    nodes: &[&Node],
    tables: &[&NodeSidTable],
    slices: &[&NodeProgramSlice],
) -> (World, Vec<Peer>, BTreeMap<String, String>) {
    let (nodes, tables): (Vec<&Node>, Vec<&NodeSidTable>) = (sorted(nodes.to_vec()), sorted(tables.to_vec()));
    let mut problems = BTreeMap::new();
    let mut world = World::default();
    let mut peers = Vec::new();
    for n in &nodes {
        let name = n.name_any();
        let locator = match node_locator(n) {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                problems.insert(name, e);
                continue;
            }
            None => {
                problems.insert(name.clone(), format!("node {name} has no SRv6 locator yet"));
                continue;
            }
        };
        let pod_cidrs = n.spec.as_ref().and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        world.nodes.push(NodeInfo { name: name.clone(), locator, pod_cidrs: pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect() });
        match node_underlay(n) {
            Some(underlay) => peers.push(Peer { node: name, locator, underlay }),
            None => {
                problems.insert(name.clone(), format!("node {name} has no IPv6 InternalIP for its locator route"));
            }
        }
    }
    let located: BTreeMap<&str, Locator> = world.nodes.iter().map(|n| (n.name.as_str(), n.locator)).collect();
    for t in &tables {
        let name = t.name_any();
        let Some(locator) = located.get(name.as_str()) else { continue };
        match NodeSids::from_spec(&name, &t.spec) {
            // A table from before a locator change names SIDs the node no longer owns.
            Ok(sids) if sids.locator == *locator => world.registrations.extend(sids.registrations),
            Ok(sids) => {
                problems.insert(name.clone(), format!("node {name}: SID table is for locator {}, not {locator}", sids.locator));
            }
            Err(e) => {
                problems.insert(name.clone(), format!("node {name}: SID table: {e}"));
            }
        }
    }
    world.pods = pods;
    world.pods.retain(|p| located.contains_key(p.node.as_str()));
    for s in slices {
        if let Some(e) = slice_failure(s) {
            problems.insert(s.spec.node.clone(), e);
        }
    }
    (world, peers, problems)
}

fn finish(node_problems: BTreeMap<String, String>, planned: Planned) -> Plan {
    Plan {
        programs: planned.programs.into_iter().map(|(node, p)| (node, Arc::new(p))).collect(),
        peers: Arc::new(planned.peers),
        verdicts: planned.verdicts,
        node_problems,
        chain_nodes: planned.chain_nodes,
        stamp: planned.stamp,
    }
}

/// The status to write for a chain: the compiler's verdict, made not-ready when a node it
/// uses failed to program it, and with a reason for SIDs that wait on a node. A condition whose
/// status did not change keeps its lastTransitionTime, so an unchanged world writes nothing.
pub fn chain_status(plan: &Plan, unpublished: &BTreeMap<String, String>, chain: &ServiceChain, now: Time) -> Option<ServiceChainStatus> {
    let key = key_of(chain);
    let verdict = plan.verdicts.get(&key)?;
    // Stamped with the generation the verdict was compiled from: a plan older than the chain's
    // last change (held, or waiting for the compile budget) claims no newer spec.
    let mut status = verdict.status(now);
    let failures: Vec<String> = plan
        .chain_nodes
        .get(&key)
        .into_iter()
        .flatten()
        .flat_map(|n| plan.node_problems.get(&**n).cloned().into_iter().chain(unpublished.get(&**n).map(|e| format!("node {n}: {e}"))))
        .collect();
    let ready = &mut status.conditions[0];
    if !failures.is_empty() && verdict.ready {
        ready.status = "False".into();
        ready.reason = "ProgramFailed".into();
        ready.message = failures.join("; ");
    } else if !verdict.ready && ready.reason == "SidPending" && !plan.node_problems.is_empty() {
        let nodes: Vec<&String> = plan.node_problems.values().collect();
        ready.message = format!("{}; {}", ready.message, nodes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "));
    }
    if let Some(old) = &chain.status {
        for c in &mut status.conditions {
            if let Some(prev) = old.conditions.iter().find(|p| p.type_ == c.type_ && p.status == c.status) {
                c.last_transition_time = prev.last_transition_time.clone();
            }
        }
    }
    Some(status)
}

/// The Ready condition of a status, if any.
pub fn ready_condition(status: Option<&ServiceChainStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == "Ready")
}

/// Whether a node's tables (a slice's, or a pre-slice NodeProgram's) have entries of chain `ns/name`.
pub fn tables_hold(tables: &serde_json::Value, ns: &str, name: &str) -> bool {
    srv6::slices::chains_of_value(tables).contains(&format!("{ns}/{name}"))
}

/// Locators held by nodes (valid annotations only).
pub fn taken_locators(nodes: &[&Node]) -> BTreeSet<Locator> {
    nodes.iter().filter_map(|n| node_locator(n)?.ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn world() -> (Vec<Node>, Vec<Pod>, Vec<NodeSidTable>, ServiceChain) {
        let node = |n: u8| -> Node {
            obj(json!({"metadata": {"name": format!("n{n}"), "annotations": {LOCATOR_ANNOTATION: format!("fcbb:bb00:{n}::/48")}},
                       "spec": {"podCIDRs": [format!("fd00:10:{n}::/64")]},
                       "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "InternalIP", "address": format!("fd00:ffff::{n}")}]}}))
        };
        let pod = |name: &str, node: &str, label: (&str, &str), ip: &str| -> Pod {
            obj(json!({"metadata": {"name": name, "namespace": "default", "labels": {label.0: label.1}},
                       "spec": {"nodeName": node, "containers": []},
                       "status": {"podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}}))
        };
        let table: NodeSidTable = obj(json!({"metadata": {"name": "n1"}, "spec": {
            "locator": "fcbb:bb00:1::/48", "sourceAddress": "fcbb:bb00:1::1", "decapSid": "fcbb:bb00:1:d6::",
            "registrations": [{"podNamespace": "default", "podName": "fw", "interface": "net1", "sid": "fcbb:bb00:1:e001::"}]}}));
        let chain: ServiceChain = obj(json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain",
            "metadata": {"name": "c", "namespace": "default", "generation": 1},
            "spec": {"sources": {"podSelector": {"matchLabels": {"app": "client"}}}, "match": {"destinationPrefixes": ["fd00:10:2::/64"]},
                     "functions": [{"name": "fw", "podSelector": {"matchLabels": {"vnf": "fw"}}}]}}));
        (
            vec![node(1), node(2)],
            vec![pod("client", "n1", ("app", "client"), "fd00:10:1::2"), pod("fw", "n1", ("vnf", "fw"), "fd00:10:1::3")],
            vec![table],
            chain,
        )
    }

    fn refs<T>(v: &[T]) -> Vec<&T> {
        v.iter().collect()
    }

    /// The pods as the pod mirror has them: in (namespace, name) order.
    fn infos(pods: &[Pod]) -> Vec<PodInfo> {
        let mut infos: Vec<PodInfo> = pods.iter().filter_map(pod_info).collect();
        infos.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        infos
    }

    #[test]
    fn plan_uses_ipv6_internal_ips_and_names_the_chains_nodes() {
        let (nodes, pods, tables, chain) = world();
        let p = plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[]);
        let n2 = p.peers.iter().find(|peer| peer.node == "n2").unwrap();
        assert_eq!(n2.underlay.to_string(), "fd00:ffff::2", "the IPv6 InternalIP, not the first");
        let key = ("default".to_string(), "c".to_string());
        assert!(p.verdicts[&key].ready, "{:?}", p.verdicts[&key]);
        assert_eq!(p.chain_nodes[&key].iter().map(|n| &**n).collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(p.node_problems.is_empty(), "{:?}", p.node_problems);
    }

    #[test]
    fn the_same_world_in_any_order_gives_the_same_programs() {
        let (mut nodes, mut pods, tables, chain) = world();
        let mut server: Pod = pods[0].clone();
        server.metadata.name = Some("server".into());
        server.spec.as_mut().unwrap().node_name = Some("n2".into());
        pods.push(server);
        let a = plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[]);
        pods.reverse();
        nodes.reverse();
        let b = plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[]);
        assert_eq!((a.programs, a.peers), (b.programs, b.peers));
    }

    #[test]
    fn failed_programs_and_stale_tables_make_chains_not_ready() {
        let (nodes, pods, mut tables, chain) = world();
        let program: NodeProgramSlice = obj(json!({"metadata": {"name": "n2.3", "generation": 3}, "spec": {"node": "n2", "tables": {}},
            "status": {"observedGeneration": 3, "conditions": [{"type": "Programmed", "status": "False", "reason": "ProgramFailed",
                       "message": "sp_sids full", "lastTransitionTime": "2026-11-21T10:00:00Z"}]}}));
        let p = plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[&program]);
        let status = chain_status(&p, &BTreeMap::new(), &chain, Time(k8s_openapi::jiff::Timestamp::now())).unwrap();
        assert_eq!((status.conditions[0].status.as_str(), status.conditions[0].reason.as_str()), ("False", "ProgramFailed"));
        assert_eq!(status.conditions[0].message, "node n2: slice n2.3: sp_sids full");
        // A report about an older generation is not held against the current one.
        let mut older = program.clone();
        older.metadata.generation = Some(4);
        assert!(plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[&older]).node_problems.is_empty());
        // A table published under another locator does not count.
        tables[0].spec.locator = "fcbb:bb00:9::/48".into();
        let p = plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[]);
        let status = chain_status(&p, &BTreeMap::new(), &chain, Time(k8s_openapi::jiff::Timestamp::now())).unwrap();
        assert_eq!(status.conditions[0].reason, "SidPending");
        assert!(status.conditions[0].message.contains("SID table is for locator fcbb:bb00:9::/48"), "{}", status.conditions[0].message);
    }

    /// The planner compiles a chain again when its generation moves (its spec changed), not
    /// when a write replaced its object without one (a status or a finalizer).
    #[test]
    fn a_chain_is_compiled_again_when_its_generation_moves_not_when_its_object_is_replaced() {
        let (nodes, pods, tables, mut chain) = world();
        chain.metadata.uid = Some("u1".into());
        let mut planner = Planner::default();
        let mut plan = |previous: Option<Plan>, chain: &ServiceChain| {
            replan(&mut planner, previous, &[Arc::new(chain.clone())], infos(&pods), &refs(&nodes), &refs(&tables), &[])
        };
        let segments = |p: &Plan| p.programs["n1"].tables.headends[0].segments.clone();
        let first = plan(None, &chain);
        let compiled = segments(&first);
        // Another object (as a status write makes), the same uid and generation: moved.
        let second = plan(Some(first), &chain);
        assert!(Arc::ptr_eq(&segments(&second), &compiled), "compiled again for a new object");
        // The spec changed, and the generation with it: compiled again.
        chain.metadata.generation = Some(2);
        let third = plan(Some(second), &chain);
        assert!(!Arc::ptr_eq(&segments(&third), &compiled), "not compiled again for a new generation");
        // Without a uid, a chain is never taken for the one before.
        let compiled = segments(&third);
        chain.metadata.uid = None;
        let fourth = plan(Some(third), &chain);
        let compiled_again = segments(&fourth);
        assert!(!Arc::ptr_eq(&compiled_again, &compiled));
        assert!(!Arc::ptr_eq(&segments(&plan(Some(fourth), &chain)), &compiled_again));
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let (nodes, pods, tables, mut chain) = world();
        let p = plan(&[&chain], infos(&pods), &refs(&nodes), &refs(&tables), &[]);
        let t0 = Time("2026-11-21T10:00:00Z".parse().unwrap());
        let first = chain_status(&p, &BTreeMap::new(), &chain, t0.clone()).unwrap();
        chain.status = Some(first.clone());
        let later = chain_status(&p, &BTreeMap::new(), &chain, Time("2026-11-21T11:00:00Z".parse().unwrap())).unwrap();
        assert_eq!(later, first, "same world, same status: nothing to write");
        assert_eq!(later.conditions[0].last_transition_time, t0);
        // Deleting the chain's only function replica flips Ready: a new transition time.
        let p = plan(&[&chain], infos(&pods[..1]), &refs(&nodes), &refs(&tables), &[]);
        let t2 = Time("2026-11-21T12:00:00Z".parse().unwrap());
        let flipped = chain_status(&p, &BTreeMap::new(), &chain, t2.clone()).unwrap();
        assert_eq!(flipped.conditions[0].status, "False");
        assert_eq!(flipped.conditions[0].last_transition_time, t2);
    }
}
