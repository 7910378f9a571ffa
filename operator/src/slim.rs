//! What the operator keeps of the objects it mirrors: only what it reads, so that its memory
//! grows with the chains and pods of a cluster, not with the size of their objects. Pure.
//!
//! Every kind loses its managed fields and kubectl's last-applied annotation (each a second
//! copy of the object). A ServiceChain keeps its status without hops and paths, and the
//! digest of the full status in the status' local `digest`. A Pod keeps its name, labels, node, IPs and Ready condition; a Node
//! its annotations, pod CIDRs and addresses (not its image list or conditions). A
//! NodeProgramSlice keeps no tables and no peers: the names of the chains it holds, in the
//! local annotation [`CHAINS`] (read by [`chains_of`]), and the digest of its full spec in
//! [`SPEC_DIGEST`]; the publisher compares digests, not specs. (Its tables as JSON values were
//! 1.6 GiB of the operator's 6 GiB at 100,000 chains: every JSON object is a B-tree node of
//! ~550 bytes.)

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use srv6pipes_crds::{NodeProgramSlice, NodeProgramSliceSpec, ServiceChain, ServiceChainStatus};

/// The digest of a slice's spec, on the operator's copies only (never written).
pub const SPEC_DIGEST: &str = "srv6pipes.io/operator-spec-digest";
/// The chains a slice holds, space-separated, on the operator's copies only (never written).
pub const CHAINS: &str = "srv6pipes.io/operator-chains";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A digest of `spec` as serialized: two specs that read the same (maps in tables are sorted)
/// have the same digest.
/// The JSON goes straight into the hasher: no copy of a spec of up to 1 MiB is made for it.
pub fn spec_digest(spec: &NodeProgramSliceSpec) -> String {
    struct Hashing(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Default::default());
    serde_json::to_writer(&mut h, spec).expect("slice spec serializes");
    format!("{:016x}", h.0.finish())
}

/// The digest of a slice's spec: kept on a slim copy, computed for a full one.
pub fn digest_of(s: &NodeProgramSlice) -> String {
    match s.metadata.annotations.as_ref().and_then(|a| a.get(SPEC_DIGEST)) {
        Some(d) => d.clone(),
        None => spec_digest(&s.spec),
    }
}

/// The chains (`namespace/name`) that have entries in a slice: from a slim copy's [`CHAINS`],
/// or from a full one's tables.
pub fn chains_of(s: &NodeProgramSlice) -> BTreeSet<String> {
    match s.metadata.annotations.as_ref().and_then(|a| a.get(CHAINS)) {
        Some(chains) => chains.split(' ').filter(|c| !c.is_empty()).map(str::to_string).collect(),
        None => srv6::slices::chains_of_spec(&s.spec),
    }
}

fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// A chain keeps its status' conditions (their transition times carry over) but not its hops
/// and paths (2 KB a chain, 200 MiB at 100,000 chains): the digest of the full status goes in
/// the status' `digest` instead (never written), and [`status_is`] compares with it.
pub fn chain(c: &mut ServiceChain) {
    meta(&mut c.metadata);
    let Some(status) = c.status.as_mut() else { return };
    if status.hops.is_empty() && status.paths.is_empty() {
        return;
    }
    status.digest = Some(status_digest(status));
    (status.hops, status.paths) = (Vec::new(), Vec::new());
}

/// A digest of a chain's status as serialized.
fn status_digest(status: &ServiceChainStatus) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(status).expect("chain status serializes").hash(&mut h);
    h.finish()
}

/// Whether chain `c` (a slim copy or a full one) has `status`.
pub fn status_is(c: &ServiceChain, status: &ServiceChainStatus) -> bool {
    match c.status.as_ref() {
        Some(ServiceChainStatus { digest: Some(digest), .. }) => *digest == status_digest(status),
        current => current == Some(status),
    }
}

pub fn table(t: &mut srv6pipes_crds::NodeSidTable) {
    meta(&mut t.metadata);
}

pub fn program(p: &mut srv6pipes_crds::NodeProgram) {
    meta(&mut p.metadata);
}

pub fn pod(p: &mut Pod) {
    meta(&mut p.metadata);
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    let node_name = p.spec.as_ref().and_then(|s| s.node_name.clone());
    p.spec = Some(PodSpec { node_name, ..Default::default() });
    p.status = p.status.take().map(|s| PodStatus {
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        conditions: s.conditions.map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
}

pub fn node(n: &mut Node) {
    meta(&mut n.metadata);
    let pod_cidrs = n.spec.as_ref().and_then(|s| s.pod_cidrs.clone());
    n.spec = Some(NodeSpec { pod_cidrs, ..Default::default() });
    n.status = n.status.take().map(|s| NodeStatus { addresses: s.addresses, ..Default::default() });
}

pub fn slice(s: &mut NodeProgramSlice) {
    meta(&mut s.metadata);
    if s.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(SPEC_DIGEST)) {
        return;
    }
    let (digest, chains) = (spec_digest(&s.spec), chains_of(s).into_iter().collect::<Vec<_>>().join(" "));
    let annotations = s.metadata.annotations.get_or_insert_default();
    annotations.insert(SPEC_DIGEST.into(), digest);
    annotations.insert(CHAINS.into(), chains);
    s.spec.tables = serde_json::Value::Null;
    s.spec.peers = Vec::new();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_slim_pod_and_node_read_as_the_full_ones() {
        let full: Pod = obj(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}, "annotations": {"x": "y"},
                         "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}]}]},
            "status": {"podIPs": [{"ip": "fd00::2"}], "podIP": "fd00::2", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]},
        }));
        let mut slim = full.clone();
        pod(&mut slim);
        assert_eq!(crate::world::pod_info(&slim), crate::world::pod_info(&full));
        assert!(crate::world::pod_info(&slim).unwrap().ready);
        assert!(slim.metadata.managed_fields.is_none() && slim.spec.as_ref().unwrap().containers.is_empty());
        assert!(slim.metadata.annotations.is_none() && slim.status.as_ref().unwrap().conditions.as_ref().unwrap().len() == 1);

        let full: Node = obj(json!({
            "metadata": {"name": "n1", "annotations": {"srv6pipes.io/locator": "fcbb:bb00:1::/48", LAST_APPLIED: "{...}"}},
            "spec": {"podCIDRs": ["fd00:10:1::/64"], "providerID": "x"},
            "status": {"addresses": [{"type": "InternalIP", "address": "fd00:ffff::1"}],
                       "images": [{"names": ["registry/a:1"], "sizeBytes": 1}]},
        }));
        let mut slim = full.clone();
        node(&mut slim);
        assert_eq!(crate::world::node_locator(&slim).map(|l| l.unwrap()), crate::world::node_locator(&full).map(|l| l.unwrap()));
        assert_eq!(crate::world::node_underlay(&slim), crate::world::node_underlay(&full));
        assert_eq!(slim.spec.as_ref().unwrap().pod_cidrs, full.spec.as_ref().unwrap().pod_cidrs);
        assert!(slim.status.as_ref().unwrap().images.is_none());
        assert!(!slim.metadata.annotations.as_ref().unwrap().contains_key(LAST_APPLIED));
    }

    #[test]
    fn a_slim_chain_compares_its_status_by_digest() {
        let status: ServiceChainStatus = obj(json!({
            "observedGeneration": 1, "pathCount": 1, "functions": "fw",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Programmed", "message": "",
                            "lastTransitionTime": "2026-12-02T10:00:00Z", "observedGeneration": 1}],
            "hops": [{"function": "fw", "replicas": [{"pod": "fw-0", "node": "n1", "sid": "fcbb:bb00:1:e001::"}]}],
            "paths": [{"segments": ["fcbb:bb00:1:e001::", "fcbb:bb00:2:d6::"]}],
        }));
        let full: ServiceChain = obj(json!({"apiVersion": "srv6pipes.io/v1alpha1", "kind": "ServiceChain",
            "metadata": {"name": "c", "namespace": "ns", "generation": 1},
            "spec": {"sources": {"podSelector": {}}, "match": {"destinationPrefixes": ["fd00:9::/64"]}, "functions": []},
            "status": status}));
        let mut slim = full.clone();
        chain(&mut slim);
        let kept = slim.status.as_ref().unwrap();
        assert!(kept.hops.is_empty() && kept.paths.is_empty(), "hops and paths go");
        assert!(kept.digest.is_some() && serde_json::to_value(kept).unwrap().get("digest").is_none(), "a local digest, never written");
        assert!(!serde_json::to_string(&<ServiceChain as kube::CustomResourceExt>::crd()).unwrap().contains("digest"), "not in the schema");
        assert_eq!(kept.conditions, status.conditions, "conditions stay (their transition times carry over)");
        assert!(status_is(&slim, &status) && status_is(&full, &status));
        // Another replica, path or condition is another status.
        let mut other = status.clone();
        other.paths[0].segments[0] = "fcbb:bb00:1:e002::".into();
        assert!(!status_is(&slim, &other) && !status_is(&full, &other));
        other = status.clone();
        other.conditions[0].status = "False".into();
        assert!(!status_is(&slim, &other));
        // A chain without status has none; slimming a slim copy changes nothing.
        let mut bare = full.clone();
        bare.status = None;
        chain(&mut bare);
        assert!(!status_is(&bare, &status));
        let mut again = slim.clone();
        chain(&mut again);
        assert!(status_is(&again, &status));
    }

    #[test]
    fn a_slim_slice_keeps_its_chains_and_the_digest_of_its_full_spec() {
        let full: NodeProgramSlice = obj(json!({
            "metadata": {"name": "n1.0", "generation": 2},
            "spec": {"node": "n1", "chains": 2, "slices": [0],
                     "tables": {"headends": [{"chain": "ns/a", "x": 1}, {"chain": "ns/a", "x": 2}], "decaps": [{"chain": "ns/b"}]},
                     "peers": [{"node": "n2", "locator": "fcbb:bb00:2::/48", "underlay": "fd00:ffff::2"}]},
        }));
        let mut slim = full.clone();
        slice(&mut slim);
        assert_eq!(chains_of(&slim), srv6::slices::chains_of_spec(&full.spec));
        assert_eq!(chains_of(&slim).into_iter().collect::<Vec<_>>(), ["ns/a", "ns/b"]);
        assert!(slim.spec.tables.is_null(), "no tables kept");
        assert_eq!(digest_of(&slim), digest_of(&full));
        // Slimming a slim copy changes nothing.
        let mut again = slim.clone();
        slice(&mut again);
        assert_eq!((chains_of(&again), digest_of(&again)), (chains_of(&slim), digest_of(&slim)));
        assert_eq!(digest_of(&slim), spec_digest(&full.spec));
        assert!(slim.spec.peers.is_empty());
        // Any change of the full spec changes the digest; key order does not.
        let mut other = full.clone();
        other.spec.tables["headends"][1]["x"] = json!(3);
        assert_ne!(spec_digest(&other.spec), spec_digest(&full.spec));
        let reordered: NodeProgramSliceSpec = serde_json::from_str(
            r#"{"tables": {"decaps": [{"chain": "ns/b"}], "headends": [{"x": 1, "chain": "ns/a"}, {"chain": "ns/a", "x": 2}]},
                "peers": [{"underlay": "fd00:ffff::2", "node": "n2", "locator": "fcbb:bb00:2::/48"}], "slices": [0], "chains": 2, "node": "n1"}"#,
        )
        .unwrap();
        assert_eq!(spec_digest(&reordered), spec_digest(&full.spec));
    }
}
