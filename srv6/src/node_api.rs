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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeProgram {
    pub tables: NodeTables,
    /// Other nodes: their locators are routed via their underlay addresses.
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    let p = path.display().to_string();
    let stream = UnixStream::connect(path).map_err(|source| CallError::Unreachable { path: p.clone(), source })?;
    let io = |source| CallError::Io { path: p.clone(), source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str(&answer).map_err(|source| CallError::Decode { path: p.clone(), source })? {
        Response::Error { message } => Err(CallError::Refused(message)),
        ok => Ok(ok),
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
}
