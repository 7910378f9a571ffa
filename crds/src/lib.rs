//! Rust types of srv6pipes' custom resources (API group `srv6pipes.io`, version `v1alpha1`).
//!
//! The lab reads these from YAML, the operator reconciles them, and the CRD YAML is generated
//! from them, with `docs/reference.md` ([`reference::reference_md`]). The doc comments of these
//! types are the descriptions users read (`kubectl explain`, the reference): write them for users.
//! Field names are a user-facing contract: extend, never rename.

pub mod reference;
mod selector;

pub use selector::{Labels, PodSelector};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A chain of SR-unaware network functions that matching traffic crosses in order.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "srv6pipes.io",
    version = "v1alpha1",
    kind = "ServiceChain",
    namespaced,
    status = "ServiceChainStatus",
    shortname = "sfc",
    category = "srv6pipes",
    doc = "A chain of SR-unaware network functions (and SRv6 pipes' bytestream functions) that the matching traffic of the selected source pods crosses in order, steered with IPv6 Segment Routing.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Functions", "type": "string", "jsonPath": ".status.functions"}"#,
    printcolumn = r#"{"name": "Paths", "type": "integer", "description": "Segment lists in use (one per headend and direction)", "jsonPath": ".status.pathCount"}"#,
    printcolumn = r#"{"name": "Degraded", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Degraded\")].reason"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Segments", "type": "string", "priority": 1, "jsonPath": ".status.paths[*].segments"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChainSpec {
    /// Whose traffic enters the chain; the headend is the node of each selected pod.
    pub sources: Sources,
    /// Which of the sources' traffic is steered; all fields are ANDed.
    #[serde(default)]
    pub r#match: Match,
    /// Ordered SR-unaware functions (at least one).
    #[schemars(length(min = 1))]
    pub functions: Vec<Function>,
    /// Return traffic crosses the same functions in reverse.
    #[serde(default)]
    pub symmetric: bool,
    /// Higher wins among overlapping chains.
    #[serde(default)]
    pub priority: i32,
    /// What happens when a function has no ready replica.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

/// Whose traffic enters a chain.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sources {
    /// The source pods, in the chain's namespace.
    pub pod_selector: PodSelector,
}

/// Which of the sources' traffic a chain steers; all fields are ANDed, an empty match steers all of it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// IPv4 or IPv6 prefixes ("fd00:20::/64", "10.20.0.0/16"); none: any destination.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*)/[0-9]{1,3}$")))]
    pub destination_prefixes: Vec<String>,
    /// Among the sources' own addresses, those in these prefixes; none: all.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*)/[0-9]{1,3}$")))]
    pub source_prefixes: Vec<String>,
    /// The transport protocol (TCP, UDP, ICMP); Any by default.
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination ports ("80") or ranges ("8000-8080") of TCP or UDP; none: any port.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^[0-9]{1,5}(-[0-9]{1,5})?$")))]
    pub destination_ports: Vec<String>,
}

/// A transport protocol to match.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "ICMP")]
    Icmp,
    #[default]
    Any,
}

/// One function of a chain: the pods that implement it, and how the traffic reaches them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Function {
    /// The function's name, unique in the chain (status and metrics name the hop by it).
    pub name: String,
    /// The function's replicas, pods in the chain's namespace wired by the srv6pipes CNI plugin;
    /// flows are spread over the ready ones and stay on one.
    pub pod_selector: PodSelector,
    /// The SR proxy in front of the function (Dynamic by default).
    #[serde(default)]
    pub proxy: ProxyKind,
    /// The function rewrites flows (NAT, L4/L7 proxies): what it returns cannot be matched to
    /// what it received per flow, so its proxy keeps one set of headers per interface, and the
    /// interface serves one chain in one direction (a conflict is reported otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewrites_flows: bool,
    /// SRv6 pipes: a bytestream function, done by the selected `srv6pipes-stream` pods (SR-aware
    /// transparent TCP proxies) on the TCP payload. `proxy` is ignored then.
    // (Boxed: inline, it made every function of 100,000 chains 48 bytes larger in the operator.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Box<StreamFunction>>,
}

/// A stream function of a chain (SRv6 pipes).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct StreamFunction {
    /// The function's name: identity, base64, replace, xor, compress.
    pub function: String,
    /// Its arguments, strings each (documented per function in docs/architecture.md).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub args: std::collections::BTreeMap<String, String>,
    /// Which bytes it rewrites (Forward by default).
    #[serde(default)]
    pub direction: StreamDirection,
}

/// Which bytes of the connection a stream function rewrites.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamDirection {
    /// The client's bytes, toward the server.
    #[default]
    Forward,
    /// The server's reply bytes, toward the client.
    Reverse,
    /// Both directions' bytes.
    Both,
}

/// The SR proxy behaviour in front of a function (draft-ietf-spring-sr-service-programming).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum ProxyKind {
    /// End.AD: the proxy learns the headers to restore from the inbound packets.
    #[default]
    Dynamic,
    /// End.AS: the headers to restore are configured.
    Static,
    /// End.AM: IPv6 only, SRH insertion.
    Masquerading,
}

/// What a chain does while a function has no ready replica.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Drop the chain's traffic while a function has no ready replica.
    #[default]
    Closed,
    /// Bypass a function that has no ready replica.
    Open,
}

/// What the operator made of a chain (written by the operator only).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChainStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True once every headend node has programmed the chain; False with the reason
    /// (NoReplicas, NoSources, Conflict, InvalidMatch, ProgramFailed naming the node, ...) otherwise. `Degraded`: present and
    /// True while the chain runs, but not as asked (failurePolicy Open bypassing a function).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Each function's replicas, with their nodes and SIDs, in chain order.
    #[serde(default)]
    pub hops: Vec<Hop>,
    /// The distinct segment lists the headends push.
    #[serde(default)]
    pub paths: Vec<Path>,
    /// How many segment lists are in use (`paths`' length), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_count: Option<u32>,
    /// The functions' names in chain order, comma-separated, for `kubectl get` (whose columns
    /// show only the first element of a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<String>,
    /// Never read nor written: on the operator's slim copies of a chain, the digest of the full
    /// status whose hops and paths they dropped (an annotation was a map of ~600 bytes a chain).
    #[serde(skip)]
    #[schemars(skip)]
    pub digest: Option<u64>,
}

/// One function of a chain as programmed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// The function's name (`spec.functions[].name`).
    pub function: String,
    /// Its ready replicas.
    pub replicas: Vec<Replica>,
}

/// One replica of a function.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    /// The pod's name (in the chain's namespace).
    pub pod: String,
    /// The node it runs on.
    pub node: String,
    /// The SR proxy SID in front of it (an address in its node's locator).
    pub sid: String,
}

/// A segment list.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Path {
    /// The SIDs in the order the packet visits them, the last one the egress node's decapsulation SID.
    pub segments: Vec<String>,
}

/// A kube client from `kubeconfig` when given, else the usual inference (KUBECONFIG,
/// ~/.kube/config, in-cluster service account). Shared by the operator, the node daemon in
/// kube mode and the lab.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    kube::Client::try_from(config(kubeconfig).await?).map_err(|e| format!("kube client: {e}"))
}

/// The client configuration [`client`] uses, for a client built with layers of its own.
pub async fn config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, String> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| format!("no kubeconfig found (KUBECONFIG, ~/.kube/config, in-cluster): {e}"))?,
    })
}

/// The operator's finalizer on a ServiceChain: the chain's entries leave every node before the
/// chain goes.
pub const CLEANUP_FINALIZER: &str = "srv6pipes.io/cleanup";

/// The Node annotation holding the node's locator (allocated by the operator, or set by whoever
/// registers the node, as the lab does).
pub const LOCATOR_ANNOTATION: &str = "srv6pipes.io/locator";

/// A node's SRv6 SIDs, published by its node daemon (field manager `srv6pipes-node`); the
/// operator compiles chains from them. Cluster-scoped, named after the Node, owned by it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "srv6pipes.io",
    version = "v1alpha1",
    kind = "NodeSidTable",
    shortname = "nst",
    category = "srv6pipes",
    doc = "A node's SRv6 SIDs, published by its node daemon: its locator, its decapsulation SID and the proxy SID of every VNF interface the CNI plugin registered. Cluster-scoped, named after the Node.",
    printcolumn = r#"{"name": "Locator", "type": "string", "jsonPath": ".spec.locator"}"#,
    printcolumn = r#"{"name": "Decap", "type": "string", "jsonPath": ".spec.decapSid"}"#,
    printcolumn = r#"{"name": "SIDs", "type": "string", "jsonPath": ".spec.registrations[*].sid"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSidTableSpec {
    /// The node's locator (LOC of its SIDs), e.g. "fcbb:bb00:1::/48".
    pub locator: String,
    /// Outer source address of what this node encapsulates (LOC::1).
    pub source_address: String,
    /// The node's End.DT46 SID.
    pub decap_sid: String,
    /// MTU of the node's VNF interfaces (the uplink's less the largest SRv6 encapsulation).
    #[serde(default)]
    pub vnf_mtu: u32,
    /// Every VNF interface registered by the CNI plugin, with the proxy SID it got.
    #[serde(default)]
    pub registrations: Vec<SidEntry>,
}

/// One VNF interface and its proxy SID.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidEntry {
    /// The VNF pod's namespace.
    pub pod_namespace: String,
    /// The VNF pod's name.
    pub pod_name: String,
    /// The VNF's interface in the pod (e.g. net1).
    pub interface: String,
    /// The proxy SID allocated to it.
    pub sid: String,
}

/// Deprecated: what one node daemon programmed before [`NodeProgramSlice`]s (releases up to
/// 0.1): its whole program in one object, named after the Node. The operator no longer writes
/// it; it deletes a node's once that node's daemon has reported on its slices, and a daemon
/// still programs from it while its node has no slice (an upgrade's first minutes).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "srv6pipes.io",
    version = "v1alpha1",
    kind = "NodeProgram",
    shortname = "np",
    category = "srv6pipes",
    doc = "Deprecated (releases up to 0.1): one node's whole program in one object, named after the Node. The operator writes NodeProgramSlices instead and deletes these once the node's daemon reports on its slices.",
    status = "NodeProgramStatus",
    printcolumn = r#"{"name": "Programmed", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name": "Generation", "type": "integer", "jsonPath": ".metadata.generation"}"#,
    printcolumn = r#"{"name": "Observed", "type": "integer", "jsonPath": ".status.observedGeneration"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeProgramSpec {
    /// The node's tables as the chain compiler emits them (headends, proxies, decaps, pod
    /// addresses, insertion sources; see docs/architecture.md). Kept open in the schema: the
    /// compiler's types are the contract between the operator and the daemon of one release.
    #[schemars(schema_with = "open_object")]
    pub tables: serde_json::Value,
    /// Other nodes: their locators are routed via their underlay addresses.
    #[serde(default)]
    pub peers: Vec<PeerSpec>,
}

/// Another node, as a node daemon routes to it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// The Node's name.
    pub node: String,
    /// Its locator.
    pub locator: String,
    /// Its underlay (InternalIP) address, the next hop for its locator.
    pub underlay: String,
}

/// What a node daemon reports on a program object (written by the daemon of that node only).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeProgramStatus {
    /// The spec generation the daemon last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Programmed`: True once the datapath holds that generation; False with the error (a full
    /// map, a missing interface) otherwise.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One bounded slice of a node's program (what replaced the one `NodeProgram` per node, which
/// grew with the chains until etcd refused it). Cluster-scoped, named `<node>.<index>`, labeled
/// [`NODE_LABEL`]`=<node>` and owned by the Node. Slice 0 always exists and carries the node-wide
/// parts (pod addresses, insertion sources, peers) besides chains; every chain's entries on a node
/// sit whole in one slice (see docs/architecture.md, "Node program slices", for the bounds). The
/// node daemon programs the union of its node's slices and reports on each in `status`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "srv6pipes.io",
    version = "v1alpha1",
    kind = "NodeProgramSlice",
    shortname = "nps",
    category = "srv6pipes",
    doc = "One bounded slice of a node's program, written by the operator: the node's daemon programs the union of its node's slices once it has all of them, and reports on each in status. Cluster-scoped, named <node>.<index>, labeled srv6pipes.io/node.",
    status = "NodeProgramStatus",
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".spec.node"}"#,
    printcolumn = r#"{"name": "Chains", "type": "integer", "jsonPath": ".spec.chains"}"#,
    printcolumn = r#"{"name": "Programmed", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name": "Generation", "type": "integer", "jsonPath": ".metadata.generation"}"#,
    printcolumn = r#"{"name": "Observed", "type": "integer", "jsonPath": ".status.observedGeneration"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeProgramSliceSpec {
    /// The node this slice programs (admission checks a node daemon's status writes against it).
    pub node: String,
    /// How many chains have entries in this slice.
    #[serde(default)]
    pub chains: u32,
    /// This slice's part of the node's tables, in the compiler's form (as `NodeProgram.spec.tables`).
    #[schemars(schema_with = "open_object")]
    pub tables: serde_json::Value,
    /// Other nodes' locators and underlay addresses: in slice 0 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerSpec>,
    /// In slice 0 only: the indices of every slice of the node's program (0 included). The
    /// daemon programs the node once it has all of them (and only them), so a program written
    /// in several objects is never applied half-way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<u32>,
}

/// The label that names a NodeProgramSlice's node (the daemon lists its slices by it).
pub const NODE_LABEL: &str = "srv6pipes.io/node";

fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// srv6pipes' CRDs, generated from these types, in the order they are documented.
pub fn crds() -> [k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition; 4] {
    use kube::CustomResourceExt;
    [ServiceChain::crd(), NodeSidTable::crd(), NodeProgram::crd(), NodeProgramSlice::crd()]
}

/// The CRD manifests generated from these types (`cargo run -p srv6pipes-crds --bin crdgen`
/// writes them to [`CRD_FILE`], where a test checks them for drift).
pub fn crd_yaml() -> String {
    let mut out = String::from("# Generated from crds/src/lib.rs by `cargo run -p srv6pipes-crds --bin crdgen`: do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serializes"));
    }
    out
}

/// Where the generated CRDs are committed, relative to the repository root.
pub const CRD_FILE: &str = "crds/srv6pipes.io.yaml";

/// The same CRDs as the Helm chart's template: Helm never upgrades a chart's `crds/`
/// directory, so the chart templates them, with `helm.sh/resource-policy: keep` so that an
/// uninstall leaves them (and every ServiceChain) in place.
pub const CHART_CRD_FILE: &str = "charts/srv6pipes/templates/crds.yaml";

pub fn chart_crd_yaml() -> String {
    let mut out = String::from("{{- if .Values.crds.install }}\n");
    out.push_str("# Generated from crds/src/lib.rs by `cargo run -p srv6pipes-crds --bin crdgen`: do not edit.\n");
    for mut crd in crds() {
        crd.metadata.annotations.get_or_insert_with(Default::default).insert("helm.sh/resource-policy".into(), "keep".into());
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serializes"));
    }
    out.push_str("{{- end }}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when the committed CRD differs from what the types generate.
    #[test]
    fn committed_crd_matches_the_types() {
        let committed = include_str!("../srv6pipes.io.yaml");
        assert!(committed == crd_yaml(), "{CRD_FILE} is stale: run `cargo run -p srv6pipes-crds --bin crdgen`");
        let chart = include_str!("../../charts/srv6pipes/templates/crds.yaml");
        assert!(chart == chart_crd_yaml(), "{CHART_CRD_FILE} is stale: run `cargo run -p srv6pipes-crds --bin crdgen`");
        let reference = include_str!("../../docs/reference.md");
        assert!(
            reference == reference::reference_md(),
            "{} is stale: run `cargo run -p srv6pipes-crds --bin crdgen`",
            reference::REFERENCE_FILE
        );
        assert!(
            !chart_crd_yaml().replace("{{- if .Values.crds.install }}", "").replace("{{- end }}", "").contains("{{"),
            "no template syntax in the CRDs"
        );
        let crds: Vec<serde_json::Value> = serde_saphyr::from_multiple(committed).unwrap();
        let names: Vec<&str> = crds.iter().map(|c| c["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["servicechains.srv6pipes.io", "nodesidtables.srv6pipes.io", "nodeprograms.srv6pipes.io", "nodeprogramslices.srv6pipes.io"]
        );
        for c in &crds[1..] {
            assert_eq!(c["spec"]["scope"], "Cluster", "{}", c["metadata"]["name"]);
        }
        for c in &crds[2..] {
            let tables = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["tables"];
            assert_eq!(tables["x-kubernetes-preserve-unknown-fields"], true);
        }
        let v = &crds[0]["spec"]["versions"][0];
        let columns: Vec<&str> = v["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(columns, ["Ready", "Reason", "Functions", "Paths", "Degraded", "Age", "Segments"]);
        let wide: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"] == 1)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(wide, ["Segments"], "the raw segment lists only with -o wide");
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["functions"]["minItems"], 1);
        let proxy = &spec["properties"]["functions"]["items"]["properties"]["proxy"]["enum"];
        assert_eq!(proxy, &serde_json::json!(["Dynamic", "Static", "Masquerading"]));
        assert!(v["subresources"]["status"].is_object());
    }

    /// Every resource and every field carries a description written for users (not kube's
    /// "Auto-generated derived type"), and every resource is in the `srv6pipes` category.
    #[test]
    fn the_resources_explain_themselves() {
        // Every property is described; an array's items are described by their array.
        fn undescribed(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
            if !path.ends_with("[]") && schema["description"].as_str().is_none_or(|d| d.trim().is_empty() || d.contains("Auto-generated")) {
                out.push(path.to_string());
            }
            if let Some(properties) = schema["properties"].as_object() {
                for (name, field) in properties {
                    if name != "metadata" && name != "apiVersion" && name != "kind" {
                        undescribed(&format!("{path}.{name}"), field, out);
                    }
                }
            }
            if schema["items"].is_object() {
                undescribed(&format!("{path}[]"), &schema["items"], out);
            }
        }
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap();
            assert_eq!(crd.spec.names.categories.as_deref(), Some(&["srv6pipes".to_string()][..]), "{name}");
            let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            let mut missing = Vec::new();
            undescribed(&name, &schema, &mut missing);
            assert!(missing.is_empty(), "fields without a description: {missing:?}");
        }
    }

    #[test]
    fn brief_example_parses_with_defaults() {
        let chain: ServiceChain = serde_json::from_value(serde_json::json!({
            "apiVersion": "srv6pipes.io/v1alpha1",
            "kind": "ServiceChain",
            "metadata": {"name": "web-inspection", "namespace": "default"},
            "spec": {
                "sources": {"podSelector": {"matchLabels": {"app": "client"}}},
                "match": {"destinationPrefixes": ["fd00:20::/64"], "protocol": "TCP",
                          "destinationPorts": ["80", "8000-8080"]},
                "functions": [
                    {"name": "firewall", "podSelector": {"matchLabels": {"vnf": "firewall"}}, "proxy": "Static"},
                    {"name": "ids", "podSelector": {"matchLabels": {"vnf": "ids"}}}
                ],
                "symmetric": true
            }
        }))
        .unwrap();
        let spec = &chain.spec;
        assert_eq!(spec.r#match.protocol, Protocol::Tcp);
        assert_eq!(spec.functions[0].proxy, ProxyKind::Static);
        assert_eq!(spec.functions[1].proxy, ProxyKind::Dynamic);
        assert_eq!(spec.failure_policy, FailurePolicy::Closed);
        assert_eq!(spec.priority, 0);
        assert!(spec.symmetric);
    }

    #[test]
    fn unknown_proxy_kind_is_rejected() {
        let err = serde_json::from_value::<Function>(serde_json::json!({
            "name": "fw", "podSelector": {}, "proxy": "Magic"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("Magic"), "{err}");
    }
}
