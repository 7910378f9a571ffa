//! Wire types of the node daemon's unix-socket API: one JSON request per line, one JSON
//! response per line. The CNI plugin registers VNF interfaces; the lab (and later the operator
//! path) reads SIDs and pushes each node's tables.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv6Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compiler::{NodeTables, SidRegistration};
use crate::sid::{Locator, Sid};

pub const DEFAULT_SOCKET: &str = "/run/srv6pipes/node.sock";

/// The mark the node's datapath puts on what it delivers to an End.AD function: this | the low
/// 16 bits of the node-side veth's ifindex (the eBPF datapath's `SP_REPLY_MARK`). The function's
/// netns reflects it onto the replies its stack makes (`fwmark_reflect`: a REJECT's reset or
/// ICMP error), and srv6pipes-cni's rule for it routes them back out of that chain interface.
pub const REPLY_MARK: u32 = 0x5f6d_0000;
/// The bits of a mark that say it is a [`REPLY_MARK`].
pub const REPLY_MARK_MASK: u32 = 0xffff_0000;

/// [`REPLY_MARK`] for the chain interface whose node-side veth is `host_ifindex`.
pub fn reply_mark(host_ifindex: u32) -> u32 {
    REPLY_MARK | (host_ifindex & !REPLY_MARK_MASK)
}

/// The pod annotation that names the secondary networks a pod wants (the Network Plumbing
/// Working Group's convention, which Multus implements).
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// The network names in a [`NETWORKS_ANNOTATION`] value, in either of its two forms: a
/// comma-separated list of `[namespace/]name[@interface]`, or a JSON list of objects with
/// `name` (and optional `namespace`, `interface`). Only names are returned: a CNI plugin
/// compares them with its own network's.
pub fn networks_in_annotation(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.starts_with('[') {
        let list: Vec<serde_json::Value> = serde_json::from_str(value).map_err(|e| format!("{NETWORKS_ANNOTATION}: {e}"))?;
        return list
            .iter()
            .map(|e| match e.get("name").and_then(serde_json::Value::as_str) {
                Some(n) if !n.is_empty() => Ok(n.to_string()),
                _ => Err(format!("{NETWORKS_ANNOTATION}: element without a name: {e}")),
            })
            .collect();
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let name = e.rsplit_once('/').map_or(e, |(_, n)| n);
            let name = name.split_once('@').map_or(name, |(n, _)| n);
            if name.is_empty() {
                Err(format!("{NETWORKS_ANNOTATION}: {e:?} names no network"))
            } else {
                Ok(name.to_string())
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A VNF interface was created by the CNI plugin: give it a proxy SID and attach End.AD.
    Register(Attachment),
    /// The interface is going away (CNI DEL). Unknown attachments are not an error.
    Unregister { container_id: String, ifname: String },
    /// The node's locator and every registration with its SID.
    Sids,
    /// Replace the node's programming with these tables.
    Program(NodeProgram),
    /// Per-SID and per-reason counters.
    Stats,
    /// One attachment and its SID (CNI CHECK).
    Lookup { container_id: String, ifname: String },
    /// Releases every attachment of `network` not in `valid` (CNI GC); answers `Released`.
    Gc { network: String, valid: Vec<AttachmentKey> },
    /// The networks the pod's [`NETWORKS_ANNOTATION`] asks for (kube mode: the daemon reads the
    /// pod from the API server); answers `Networks`. The CNI plugin chained after a cluster's
    /// primary plugin acts only on pods that ask for its network.
    PodNetworks { namespace: String, name: String },
    /// The live monitor (`srv6pipes monitor`): answers `Ok`, then one [`MonitorEvent`] per line
    /// until the caller closes the connection.
    Monitor(MonitorRequest),
}

/// What a monitor wants: drop events, trace events (1 in `sample` packets), of one chain or all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRequest {
    #[serde(default)]
    pub drops: bool,
    #[serde(default)]
    pub traces: bool,
    /// `namespace/name`: only events of this chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// 1 in N drops and traced packets (default 1: every one, within the daemon's rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
}

impl MonitorRequest {
    /// The query of the daemon's `/monitor` endpoint: `type=drop,trace&chain=NS/NAME&sample=N`.
    pub fn to_query(&self) -> String {
        let types: Vec<&str> = [(self.drops, "drop"), (self.traces, "trace")].into_iter().filter(|t| t.0).map(|t| t.1).collect();
        let mut q = format!("type={}", types.join(","));
        if let Some(c) = &self.chain {
            q += &format!("&chain={c}");
        }
        if let Some(n) = self.sample {
            q += &format!("&sample={n}");
        }
        q
    }

    /// The request of a `/monitor` query (no `type`: drops).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut r = MonitorRequest::default();
        let mut typed = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "type" => {
                    typed = true;
                    for t in value.split(',') {
                        match t {
                            "drop" => r.drops = true,
                            "trace" => r.traces = true,
                            other => return Err(format!("type {other:?}: drop or trace")),
                        }
                    }
                }
                "chain" if value.split_once('/').is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty()) => r.chain = Some(value.into()),
                "chain" => return Err(format!("chain {value:?}: NAMESPACE/NAME")),
                "sample" => r.sample = Some(value.parse().ok().filter(|n| *n > 0).ok_or(format!("sample {value:?}: a number from 1"))?),
                other => return Err(format!("unknown parameter {other:?} (type, chain, sample)")),
            }
        }
        if !typed {
            r.drops = true;
        }
        Ok(r)
    }

    /// Whether `e` is for this monitor.
    pub fn wants(&self, e: &MonitorEvent) -> bool {
        let kind = match e.kind.as_str() {
            "drop" => self.drops,
            _ => self.traces,
        };
        kind && self.chain.as_ref().is_none_or(|c| e.chains().any(|x| x == c))
    }
}

/// One event of the live monitor, as a node daemon resolved it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// RFC 3339, UTC.
    pub time: String,
    pub node: String,
    /// `drop` or `trace`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A drop's reason (`no_route`, `inner_ttl`, ...; `unknown` when the program gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the program did with the packet: `drop`, `redirect`, `pass` (to the stack), `next`
    /// (to the next program).
    pub verdict: String,
    /// The program: `uplink`, `vnf` (a VNF's return), `headend` (a pod's traffic), `stream`.
    pub hook: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `namespace/name` of the pod whose interface it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `namespace/name` of the chain (several, comma-separated, when a SID serves several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The SID it arrived at (a drop's SID), else the one it left for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Ipv6Addr>,
    /// The (inner) packet's flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<MonitorFlow>,
    /// The packet's length on the interface (of a drop answered with an ICMP error: the error's).
    pub length: u32,
}

impl MonitorEvent {
    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.chain.as_deref().into_iter().flat_map(|c| c.split(','))
    }
}

/// A 5-tuple: `tcp`, `[fd00::1]:4000`, `[fd00::2]:80`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFlow {
    pub proto: String,
    pub src: String,
    pub dst: String,
}

impl MonitorFlow {
    /// From the datapath's fields: ports only for TCP and UDP.
    pub fn new(proto: u8, src: std::net::IpAddr, sport: u16, dst: std::net::IpAddr, dport: u16) -> Self {
        let name = match (proto, src.is_ipv4()) {
            (6, _) => "tcp".to_string(),
            (17, _) => "udp".to_string(),
            (1, true) => "icmp".to_string(),
            (58, false) => "icmpv6".to_string(),
            (n, _) => n.to_string(),
        };
        let ported = proto == 6 || proto == 17;
        let end = |a: std::net::IpAddr, p: u16| match (ported, a) {
            (false, a) => a.to_string(),
            (true, std::net::IpAddr::V4(a)) => format!("{a}:{p}"),
            (true, std::net::IpAddr::V6(a)) => format!("[{a}]:{p}"),
        };
        MonitorFlow { proto: name, src: end(src, sport), dst: end(dst, dport) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// A VNF interface as the CNI plugin made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The CNI network name the attachment belongs to (GC works per network).
    #[serde(default)]
    pub network: String,
    pub container_id: String,
    /// The interface name inside the pod.
    pub ifname: String,
    /// `CNI_IFNAME` when it differs from `ifname` (chained after a primary plugin, which owns
    /// CNI_IFNAME): the runtime's key for DEL, CHECK and GC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_ifname: Option<String>,
    pub netns: String,
    /// The node-side end of the veth.
    pub host_ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// MAC of the pod-side interface (destination of decapsulated packets).
    pub vnf_mac: String,
    /// MAC of the node-side interface.
    pub host_mac: String,
    /// With `interfaces: pair`, the interface the VNF sends chain traffic back out of (pod side
    /// and node side); without, the VNF returns traffic on `ifname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<OutInterface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutInterface {
    pub ifname: String,
    pub host_ifname: String,
    pub host_mac: String,
}

impl Attachment {
    /// What the runtime names this attachment by: (CNI_CONTAINERID, CNI_IFNAME).
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.runtime_ifname.clone().unwrap_or_else(|| self.ifname.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeProgram {
    pub tables: NodeTables,
    /// Other nodes: their locators are routed via their underlay addresses.
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    pub locator: Locator,
    pub underlay: Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Registered { sid: Sid },
    Sids(NodeSids),
    Stats(NodeStats),
    Attachment { attachment: Box<Attachment>, sid: Sid },
    Released { attachments: Vec<Attachment> },
    Networks { networks: Vec<String> },
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSids {
    pub node: String,
    pub locator: Locator,
    pub source_address: Ipv6Addr,
    pub decap_sid: Sid,
    pub registrations: Vec<SidRegistration>,
    /// The MTU chains carry on this node and VNF interfaces should get (the uplink's less the
    /// largest SRv6 encapsulation); 0 from a daemon that predates it.
    #[serde(default)]
    pub vnf_mtu: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub sids: Vec<SidCounters>,
    /// Drops by reason name, summed over CPUs.
    pub drops: Vec<(String, u64)>,
    /// What this node's headend steered per chain.
    #[serde(default)]
    pub chains: Vec<ChainCounters>,
    /// Datapath events by name (ICMP errors sent and rate limited, MSS clamps), over CPUs.
    #[serde(default)]
    pub events: Vec<(String, u64)>,
    /// SRv6 pipes: each stream proxy's counters per SID, as it last reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<crate::pipes::StreamCounters>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCounters {
    pub chain: String,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidCounters {
    pub sid: Sid,
    pub behavior: String,
    /// End.STREAM: the functions its proxy applies, e.g. `base64(op=encode)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

impl NodeSids {
    /// The node's `NodeSidTable` spec (what the daemon publishes in kube mode).
    pub fn to_spec(&self) -> srv6pipes_crds::NodeSidTableSpec {
        srv6pipes_crds::NodeSidTableSpec {
            locator: self.locator.to_string(),
            source_address: self.source_address.to_string(),
            decap_sid: self.decap_sid.to_string(),
            vnf_mtu: self.vnf_mtu,
            registrations: self
                .registrations
                .iter()
                .map(|r| srv6pipes_crds::SidEntry {
                    pod_namespace: r.pod_namespace.clone(),
                    pod_name: r.pod_name.clone(),
                    interface: r.interface.clone(),
                    sid: r.sid.to_string(),
                })
                .collect(),
        }
    }

    /// Reads node `node`'s published table back; an unparsable address names the field.
    pub fn from_spec(node: &str, spec: &srv6pipes_crds::NodeSidTableSpec) -> Result<Self, String> {
        let addr = |field: &str, v: &str| v.parse::<Ipv6Addr>().map_err(|e| format!("{field} {v:?}: {e}"));
        Ok(NodeSids {
            node: node.into(),
            locator: spec.locator.parse().map_err(|e| format!("locator {:?}: {e}", spec.locator))?,
            source_address: addr("sourceAddress", &spec.source_address)?,
            decap_sid: Sid(addr("decapSid", &spec.decap_sid)?),
            vnf_mtu: spec.vnf_mtu,
            registrations: spec
                .registrations
                .iter()
                .map(|r| {
                    Ok(SidRegistration {
                        node: node.into(),
                        pod_namespace: r.pod_namespace.clone(),
                        pod_name: r.pod_name.clone(),
                        interface: r.interface.clone(),
                        sid: Sid(addr("sid", &r.sid)?),
                    })
                })
                .collect::<Result<_, String>>()?,
        })
    }
}

impl NodeProgram {
    /// The node's `NodeProgram` spec (what the operator published before slices).
    pub fn to_spec(&self) -> srv6pipes_crds::NodeProgramSpec {
        srv6pipes_crds::NodeProgramSpec {
            tables: serde_json::to_value(&self.tables).expect("tables serialize"),
            peers: peer_specs(&self.peers),
        }
    }

    pub fn from_spec(spec: &srv6pipes_crds::NodeProgramSpec) -> Result<Self, String> {
        Self::from_parts(&spec.tables, &spec.peers)
    }

    /// This program as `node`'s slice (one of [`crate::slices::split`]'s).
    pub fn to_slice_spec(&self, node: &str) -> srv6pipes_crds::NodeProgramSliceSpec {
        srv6pipes_crds::NodeProgramSliceSpec {
            node: node.to_string(),
            chains: crate::slices::chains_of(&self.tables).len() as u32,
            tables: serde_json::to_value(&self.tables).expect("tables serialize"),
            peers: peer_specs(&self.peers),
            slices: Vec::new(),
        }
    }

    pub fn from_slice_spec(spec: &srv6pipes_crds::NodeProgramSliceSpec) -> Result<Self, String> {
        Self::from_parts(&spec.tables, &spec.peers)
    }

    fn from_parts(tables: &serde_json::Value, peers: &[srv6pipes_crds::PeerSpec]) -> Result<Self, String> {
        Ok(NodeProgram { tables: serde_json::from_value(tables.clone()).map_err(|e| format!("tables: {e}"))?, peers: peers_of(peers)? })
    }
}

fn peer_specs(peers: &[Peer]) -> Vec<srv6pipes_crds::PeerSpec> {
    peers
        .iter()
        .map(|p| srv6pipes_crds::PeerSpec { node: p.node.clone(), locator: p.locator.to_string(), underlay: p.underlay.to_string() })
        .collect()
}

fn peers_of(specs: &[srv6pipes_crds::PeerSpec]) -> Result<Vec<Peer>, String> {
    specs
        .iter()
        .map(|p| {
            Ok(Peer {
                node: p.node.clone(),
                locator: p.locator.parse().map_err(|e| format!("peer {} locator {:?}: {e}", p.node, p.locator))?,
                underlay: p.underlay.parse().map_err(|e| format!("peer {} underlay {:?}: {e}", p.node, p.underlay))?,
            })
        })
        .collect()
}

/// MACs travel as `aa:bb:cc:dd:ee:ff` in the API.
/// Where DEL queues deregistrations for a daemon that does not answer (restarting,
/// crash-looping): beside its socket, `<socket>.pending`. The daemon applies them when back.
pub fn pending_deletions_dir(socket: &Path) -> std::path::PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".pending");
    socket.with_file_name(name)
}

/// Queues `Unregister { container_id, ifname }` for the daemon of `socket`: one file per
/// attachment (a repeated DEL rewrites it), written whole before it appears (rename).
pub fn queue_deregistration(socket: &Path, container_id: &str, ifname: &str) -> std::io::Result<()> {
    let dir = pending_deletions_dir(socket);
    std::fs::create_dir_all(&dir)?;
    let req = Request::Unregister { container_id: container_id.into(), ifname: ifname.into() };
    let name = format!("{container_id}-{ifname}").replace(['/', '.'], "_");
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&req).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The queued deregistrations: (file, container id, interface); files that are not one are
/// skipped (a partial write is never visible: see `queue_deregistration`).
pub fn queued_deregistrations(socket: &Path) -> Vec<(std::path::PathBuf, String, String)> {
    let Ok(entries) = std::fs::read_dir(pending_deletions_dir(socket)) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter_map(|p| match serde_json::from_slice(&std::fs::read(&p).ok()?).ok()? {
            Request::Unregister { container_id, ifname } => Some((p, container_id, ifname)),
            _ => None,
        })
        .collect()
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    bytes.try_into().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The daemon is not there (no socket, refused): CNI maps this to "try again later".
    #[error("node daemon at {path} is not reachable: {source}")]
    Unreachable { path: String, source: std::io::Error },
    #[error("node daemon at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("node daemon at {path} sent an invalid response: {source}")]
    Decode { path: String, source: serde_json::Error },
    #[error("node daemon: {0}")]
    Refused(String),
}

/// One request/response exchange with the node daemon at `path`.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, CallError> {
    exchange(path, req, timeout).map(|(answer, _)| answer)
}

/// A request to the node daemon at `path` and its answer, with the connection for what follows
/// the answer (a monitor's events), read through the same buffer; `timeout` bounds each read
/// and write until the caller changes it.
pub fn exchange(path: &Path, req: &Request, timeout: Duration) -> Result<(Response, BufReader<UnixStream>), CallError> {
    let p = path.display().to_string();
    let stream = UnixStream::connect(path).map_err(|source| CallError::Unreachable { path: p.clone(), source })?;
    let io = |source| CallError::Io { path: p.clone(), source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    let mut reader = BufReader::new(stream);
    reader.read_line(&mut answer).map_err(io)?;
    match serde_json::from_str(&answer).map_err(|source| CallError::Decode { path: p.clone(), source })? {
        Response::Error { message } => Err(CallError::Refused(message)),
        ok => Ok((ok, reader)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_annotation_in_both_forms() {
        assert_eq!(networks_in_annotation("srv6pipes").unwrap(), ["srv6pipes"]);
        assert_eq!(networks_in_annotation(" kube-system/srv6pipes@net1, other ").unwrap(), ["srv6pipes", "other"]);
        assert_eq!(networks_in_annotation("").unwrap(), Vec::<String>::new());
        let json = r#"[{"name":"srv6pipes","namespace":"kube-system","interface":"net1"},{"name":"b"}]"#;
        assert_eq!(networks_in_annotation(json).unwrap(), ["srv6pipes", "b"]);
        assert!(networks_in_annotation(r#"[{"namespace":"x"}]"#).unwrap_err().contains("without a name"));
        assert!(networks_in_annotation("[nope").is_err());
        assert!(networks_in_annotation("ns/@net1").unwrap_err().contains("names no network"));
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let r = Request::Unregister { container_id: "c1".into(), ifname: "net1".into() };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j, serde_json::json!({"op": "unregister", "container_id": "c1", "ifname": "net1"}));
        let back: Response = serde_json::from_str(r#"{"result":"registered","sid":"fcbb:bb00:1:e001::"}"#).unwrap();
        assert_eq!(back, Response::Registered { sid: Sid("fcbb:bb00:1:e001::".parse().unwrap()) });
    }

    #[test]
    fn kube_specs_round_trip() {
        let locator: Locator = "fcbb:bb00:2::/48".parse().unwrap();
        let sids = NodeSids {
            node: "n2".into(),
            locator,
            source_address: locator.source_address(),
            decap_sid: locator.decap_sid(),
            registrations: vec![SidRegistration {
                node: "n2".into(),
                pod_namespace: "default".into(),
                pod_name: "fw-0".into(),
                interface: "net1".into(),
                sid: locator.sid(0xe001),
            }],
            vnf_mtu: 1324,
        };
        let spec = sids.to_spec();
        assert_eq!(spec.registrations[0].sid, "fcbb:bb00:2:e001::");
        assert_eq!(spec.decap_sid, "fcbb:bb00:2:d6::");
        assert_eq!(NodeSids::from_spec("n2", &spec).unwrap(), sids);
        let mut bad = spec.clone();
        bad.registrations[0].sid = "fcbb::zz".into();
        assert!(NodeSids::from_spec("n2", &bad).unwrap_err().contains("sid \"fcbb::zz\""));

        let program = NodeProgram {
            tables: NodeTables { pods: vec!["fd00:10::2".parse().unwrap()], ..Default::default() },
            peers: vec![Peer { node: "n1".into(), locator: "fcbb:bb00:1::/48".parse().unwrap(), underlay: "fd00::1".parse().unwrap() }],
        };
        let spec = program.to_spec();
        assert_eq!(spec.peers[0].locator, "fcbb:bb00:1::/48");
        assert_eq!(NodeProgram::from_spec(&spec).unwrap(), program);
        let slice = program.to_slice_spec("n2");
        assert_eq!((slice.node.as_str(), slice.chains), ("n2", 0));
        assert_eq!(NodeProgram::from_slice_spec(&slice).unwrap(), program);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01"), Some([2, 0, 0x0a, 0xff, 0x10, 1]));
        assert_eq!(format_mac(&[2, 0, 0x0a, 0xff, 0x10, 1]), "02:00:0a:ff:10:01");
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }

    #[test]
    fn unreachable_daemon_is_distinguished() {
        let err = call(Path::new("/nonexistent/srv6pipes.sock"), &Request::Sids, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, CallError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn deregistrations_queue_beside_the_socket() {
        let dir = std::env::temp_dir().join(format!("srv6pipes-pending-{}", std::process::id()));
        let socket = dir.join("node.sock");
        assert_eq!(pending_deletions_dir(&socket), dir.join("node.sock.pending"));
        assert!(queued_deregistrations(&socket).is_empty(), "nothing queued, no directory");
        queue_deregistration(&socket, "ctr/1", "net1").unwrap();
        queue_deregistration(&socket, "ctr/1", "net1").unwrap();
        queue_deregistration(&socket, "ctr2", "net2").unwrap();
        std::fs::write(pending_deletions_dir(&socket).join(".half.tmp"), b"{").unwrap();
        let mut q: Vec<(String, String)> = queued_deregistrations(&socket).into_iter().map(|(_, c, i)| (c, i)).collect();
        q.sort();
        assert_eq!(q, [("ctr/1".to_string(), "net1".to_string()), ("ctr2".into(), "net2".into())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn monitor_queries_roundtrip_and_reject_nonsense() {
        let r = MonitorRequest { drops: true, traces: true, chain: Some("default/web".into()), sample: Some(8) };
        assert_eq!(r.to_query(), "type=drop,trace&chain=default/web&sample=8");
        assert_eq!(MonitorRequest::from_query(&r.to_query()), Ok(r));
        assert_eq!(MonitorRequest::from_query(""), Ok(MonitorRequest { drops: true, ..Default::default() }), "drops by default");
        assert!(MonitorRequest::from_query("type=flows").unwrap_err().contains("drop or trace"));
        assert!(MonitorRequest::from_query("chain=web").is_err(), "a chain is NAMESPACE/NAME");
        assert!(MonitorRequest::from_query("sample=0").is_err());
        assert!(MonitorRequest::from_query("rate=1").is_err());
    }

    #[test]
    fn monitors_take_their_kinds_and_chain() {
        let e = MonitorEvent { kind: "drop".into(), chain: Some("default/a,default/b".into()), ..Default::default() };
        let r = |drops, traces, chain: Option<&str>| MonitorRequest { drops, traces, chain: chain.map(Into::into), sample: None };
        assert!(r(true, false, None).wants(&e));
        assert!(!r(false, true, None).wants(&e));
        assert!(r(true, false, Some("default/b")).wants(&e), "one of the SID's chains");
        assert!(!r(true, false, Some("default/c")).wants(&e));
        assert!(!r(true, false, Some("default/a")).wants(&MonitorEvent { kind: "drop".into(), ..Default::default() }));
    }

    #[test]
    fn monitor_flows_read_like_addresses() {
        let f = MonitorFlow::new(6, "fd00::1".parse().unwrap(), 4000, "fd00::2".parse().unwrap(), 80);
        assert_eq!((f.proto.as_str(), f.src.as_str(), f.dst.as_str()), ("tcp", "[fd00::1]:4000", "[fd00::2]:80"));
        let f = MonitorFlow::new(1, "10.0.0.1".parse().unwrap(), 0, "10.0.0.2".parse().unwrap(), 0);
        assert_eq!((f.proto.as_str(), f.src.as_str(), f.dst.as_str()), ("icmp", "10.0.0.1", "10.0.0.2"));
        assert_eq!(MonitorFlow::new(17, "10.0.0.1".parse().unwrap(), 53, "10.0.0.2".parse().unwrap(), 5353).dst, "10.0.0.2:5353");
    }
}
