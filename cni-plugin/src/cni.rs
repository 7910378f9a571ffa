//! CNI plumbing: configuration, environment, results and errors (CNI SPEC 1.1, §3-§5).

use serde::Deserialize;
use serde_json::{json, Value};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
pub const CODE_INVALID_ENV: u32 = 4;
pub const CODE_IO: u32 = 5;
pub const CODE_DECODE: u32 = 6;
pub const CODE_INVALID_CONFIG: u32 = 7;
pub const CODE_TRY_AGAIN_LATER: u32 = 11;
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific (SPEC: 100+): CHECK found the attachment differs from what ADD made.
pub const CODE_CHECK_FAILED: u32 = 100;

#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(CODE_INVALID_ENV, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(CODE_IO, msg)
    }
    pub fn check(msg: impl Into<String>) -> Self {
        Self::new(CODE_CHECK_FAILED, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(CODE_INVALID_CONFIG, msg)
    }
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interfaces {
    /// One interface: the VNF receives and returns chain traffic on it.
    #[default]
    Single,
    /// Two interfaces: chain traffic enters on CNI_IFNAME and leaves on the next one.
    Pair,
}

/// The network configuration on stdin.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The node daemon's socket.
    #[serde(default = "default_socket")]
    pub socket: String,
    /// MTU of the chain interface(s): inner packets, so the underlay MTU less the encapsulation.
    /// Default: what the node daemon says its chains carry (uplink MTU less the largest SRv6
    /// encapsulation).
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub interfaces: Interfaces,
    /// The pod-side interface to create. Default: CNI_IFNAME. Chained after a primary plugin
    /// (which owns CNI_IFNAME, e.g. eth0), set it, e.g. "net1".
    #[serde(default)]
    pub interface_name: Option<String>,
    /// With `interfaces: pair`, the name of the outbound interface (default: CNI_IFNAME with its
    /// trailing number + 1, e.g. net1 -> net2).
    #[serde(default)]
    pub out_interface: Option<String>,
    #[serde(default)]
    pub ipam: Option<Value>,
    /// Chained after a cluster's primary plugin (in its conflist): act only on pods whose
    /// `k8s.v1.cni.cncf.io/networks` annotation names this network; pass every other pod's
    /// result through untouched. The node daemon reads the pod from the API server.
    #[serde(default)]
    pub annotated_network: Option<String>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// What the runtime passes for the capabilities the configuration declares; with
    /// `"capabilities": {"io.kubernetes.cri.pod-annotations": true}` containerd and CRI-O pass
    /// the pod's annotations here.
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// GC (SPEC 1.1): the attachments the runtime still has.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
    /// The same, by the name SPEC 1.1 first gave it (until containernetworking/cni#1103,
    /// 2024-07): runtimes written to that text send only this key; libcni sends both.
    #[serde(default, rename = "cni.dev/attachments")]
    spec_attachments: Option<Vec<ValidAttachment>>,
    /// The configuration as given, for delegation to IPAM plugins.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

fn default_socket() -> String {
    srv6::node_api::DEFAULT_SOCKET.into()
}

impl NetConf {
    /// GC's list of the attachments still valid, by either name. A GC that lists none by
    /// either is refused: read as "nothing is valid", it would release every pod of the
    /// network on the node.
    pub fn valid_attachments(&self) -> Result<&[ValidAttachment], CniError> {
        self.valid_attachments.as_deref().or(self.spec_attachments.as_deref()).ok_or_else(|| {
            CniError::config("GC without cni.dev/valid-attachments (or cni.dev/attachments): refusing to release every attachment")
        })
    }

    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let mut conf: NetConf =
            serde_json::from_slice(stdin).map_err(|e| CniError::new(CODE_DECODE, format!("cannot decode network configuration: {e}")))?;
        conf.raw = stdin.to_vec();
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                CODE_INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported (supported: {})", conf.cni_version, SUPPORTED.join(", ")),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::config("network configuration has an empty name"));
        }
        if conf.kind != "srv6pipes-cni" {
            return Err(CniError::config(format!("type {:?} is not srv6pipes-cni", conf.kind)));
        }
        if let Some(mtu) = conf.mtu.filter(|m| !(1280..=65535).contains(m)) {
            return Err(CniError::config(format!("mtu {mtu} out of range 1280..65535")));
        }
        if conf.annotated_network.as_deref() == Some("") {
            return Err(CniError::config("annotatedNetwork is empty"));
        }
        if let Some(ipam) = &conf.ipam {
            if ipam.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(CniError::config("ipam needs a \"type\""));
            }
        }
        Ok(conf)
    }

    /// The pod's annotations, when the runtime passed them (`runtimeConfig`, capability
    /// [`POD_ANNOTATIONS`]).
    pub fn pod_annotations(&self) -> Option<&serde_json::Map<String, Value>> {
        self.runtime_config.as_ref()?.get(POD_ANNOTATIONS)?.as_object()
    }

    /// Chained mode, decided from the pod's annotations when the runtime passed them: whether
    /// the pod asks for this network. `None`: not chained (every pod is ours), or no annotations
    /// passed (the node daemon has to read the pod).
    pub fn asks_for_us(&self) -> Option<Result<bool, CniError>> {
        let network = self.annotated_network.as_ref()?;
        let annotations = self.pod_annotations()?;
        let Some(value) = annotations.get(srv6::node_api::NETWORKS_ANNOTATION) else { return Some(Ok(false)) };
        let Some(value) = value.as_str() else {
            return Some(Err(CniError::config(format!("pod annotation {} is not a string", srv6::node_api::NETWORKS_ANNOTATION))));
        };
        Some(srv6::node_api::networks_in_annotation(value).map(|names| names.contains(network)).map_err(CniError::config))
    }

    /// The pod-side interface for the runtime's CNI_IFNAME.
    pub fn pod_ifname(&self, cni_ifname: &str) -> Result<String, CniError> {
        match &self.interface_name {
            Some(n) => valid_ifname(n).map(|_| n.clone()),
            None => Ok(cni_ifname.to_string()),
        }
    }

    /// The outbound interface name for a pair, or None for a single interface.
    pub fn out_ifname(&self, ifname: &str) -> Result<Option<String>, CniError> {
        if self.interfaces == Interfaces::Single {
            return Ok(None);
        }
        let name = match &self.out_interface {
            Some(n) => n.clone(),
            None => next_ifname(ifname).ok_or_else(|| CniError::config(format!("{ifname} has no trailing number: set outInterface")))?,
        };
        valid_ifname(&name)?;
        if name == ifname {
            return Err(CniError::config("outInterface equals CNI_IFNAME"));
        }
        Ok(Some(name))
    }
}

/// `net1` -> `net2`.
/// The CNI capability under which containerd and CRI-O pass a pod's annotations.
pub const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

pub fn next_ifname(ifname: &str) -> Option<String> {
    let digits = ifname.len() - ifname.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let (stem, n) = ifname.split_at(ifname.len() - digits);
    Some(format!("{stem}{}", n.parse::<u64>().ok()? + 1))
}

pub fn valid_ifname(name: &str) -> Result<(), CniError> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) || name == "." || name == ".." {
        return Err(CniError::env(format!("{name:?} is not a valid interface name")));
    }
    Ok(())
}

pub fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(version) >= parse(min)
}

/// The CNI_* environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// CNI_ARGS named the pod (K8S_POD_NAMESPACE and K8S_POD_NAME): a Kubernetes runtime.
    pub from_kubernetes: bool,
}

impl Env {
    pub fn from_process(command: &str) -> Result<Self, CniError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let container_id = var("CNI_CONTAINERID").ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
        let ifname = var("CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
        valid_ifname(&ifname)?;
        // DEL may come without a netns (the sandbox is gone): that is allowed.
        let netns = match var("CNI_NETNS") {
            Some(n) => n,
            None if command == "DEL" => String::new(),
            None => return Err(CniError::env("CNI_NETNS is not set")),
        };
        let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default());
        let get = |k: &str| args.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        Ok(Self {
            from_kubernetes: get("K8S_POD_NAMESPACE").is_some() && get("K8S_POD_NAME").is_some(),
            pod_namespace: get("K8S_POD_NAMESPACE").unwrap_or_else(|| "default".into()),
            pod_name: get("K8S_POD_NAME").unwrap_or_else(|| container_id.clone()),
            container_id,
            netns,
            ifname,
        })
    }
}

pub fn parse_cni_args(s: &str) -> Vec<(String, String)> {
    s.split(';').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn peek_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin).ok()?.get("cniVersion")?.as_str().map(str::to_string)
}

/// VERSION answers with the configuration's version when it has one (SPEC §3).
pub fn version_json(stdin: &[u8]) -> String {
    let v = peek_version(stdin).filter(|v| SUPPORTED.contains(&v.as_str())).unwrap_or_else(|| LATEST.into());
    json!({"cniVersion": v, "supportedVersions": SUPPORTED}).to_string()
}

/// One interface of the result: (name, mac, sandbox).
pub type Iface<'a> = (&'a str, &'a str, Option<&'a str>);

/// The ADD result in the configuration's version: our interfaces appended to any prevResult,
/// and the IPAM result's addresses bound to the pod-side interface.
pub fn add_result(conf: &NetConf, ifaces: &[Iface<'_>], pod_iface: usize, ipam: Option<&Value>) -> Value {
    let mut result = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    result["cniVersion"] = json!(conf.cni_version);
    if !result["interfaces"].is_array() {
        result["interfaces"] = json!([]);
    }
    let list = result["interfaces"].as_array_mut().expect("array");
    let base = list.len();
    for (name, mac, sandbox) in ifaces {
        let mut i = json!({"name": name, "mac": mac});
        if let Some(s) = sandbox {
            i["sandbox"] = json!(s);
        }
        list.push(i);
    }
    if !result["ips"].is_array() {
        result["ips"] = json!([]);
    }
    if let Some(ipam) = ipam {
        let legacy = !version_at_least(&conf.cni_version, "0.4.0");
        for ip in ipam["ips"].as_array().into_iter().flatten() {
            let mut ip = ip.clone();
            ip["interface"] = json!(base + pod_iface);
            if legacy {
                let v6 = ip["address"].as_str().is_some_and(|a| a.contains(':'));
                ip["version"] = json!(if v6 { "6" } else { "4" });
            } else if let Some(o) = ip.as_object_mut() {
                o.remove("version");
            }
            result["ips"].as_array_mut().expect("array").push(ip);
        }
        // The routes IPAM gave net1 join the previous plugins'; their DNS, if any, stays.
        if let Some(routes) = ipam["routes"].as_array().filter(|r| !r.is_empty()) {
            match result["routes"].as_array_mut() {
                Some(list) => list.extend(routes.iter().cloned()),
                None => result["routes"] = json!(routes),
            }
        }
        if !ipam["dns"].is_null() && result["dns"].is_null() {
            result["dns"] = ipam["dns"].clone();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: &str) -> Vec<u8> {
        format!(r#"{{"cniVersion":"{v}","name":"srv6pipes","type":"srv6pipes-cni"}}"#).into_bytes()
    }

    #[test]
    fn parses_defaults_and_rejects_bad_configs() {
        let c = NetConf::parse(&conf("1.1.0")).unwrap();
        assert_eq!(c.socket, "/run/srv6pipes/node.sock");
        assert_eq!(c.mtu, None, "the node daemon's by default");
        assert_eq!(c.interfaces, Interfaces::Single);
        assert_eq!(NetConf::parse(&conf("9.9.9")).unwrap_err().code, CODE_INCOMPATIBLE_VERSION);
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, CODE_DECODE);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, CODE_DECODE);
        let bad_mtu = br#"{"cniVersion":"1.0.0","name":"n","type":"srv6pipes-cni","mtu":100}"#;
        assert_eq!(NetConf::parse(bad_mtu).unwrap_err().code, CODE_INVALID_CONFIG);
        let bad_type = br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;
        assert_eq!(NetConf::parse(bad_type).unwrap_err().code, CODE_INVALID_CONFIG);
        let bad_ipam = br#"{"cniVersion":"1.0.0","name":"n","type":"srv6pipes-cni","ipam":{}}"#;
        assert_eq!(NetConf::parse(bad_ipam).unwrap_err().code, CODE_INVALID_CONFIG);
        let bad_mode = br#"{"cniVersion":"1.0.0","name":"n","type":"srv6pipes-cni","interfaces":"triple"}"#;
        assert_eq!(NetConf::parse(bad_mode).unwrap_err().code, CODE_DECODE);
    }

    #[test]
    fn gc_reads_the_valid_attachments_by_either_name_and_refuses_neither() {
        let gc = |keys: Value| {
            let mut c = json!({"cniVersion": "1.1.0", "name": "n", "type": "srv6pipes-cni"});
            c.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
            NetConf::parse(c.to_string().as_bytes()).unwrap()
        };
        let ids = |c: &NetConf| c.valid_attachments().unwrap().iter().map(|a| a.container_id.clone()).collect::<Vec<_>>();
        let a = json!([{"containerID": "a", "ifname": "net1"}]);
        assert_eq!(ids(&gc(json!({"cni.dev/valid-attachments": a}))), ["a"]);
        assert_eq!(ids(&gc(json!({"cni.dev/attachments": a}))), ["a"], "SPEC 1.1's first name");
        let both = gc(json!({"cni.dev/valid-attachments": a, "cni.dev/attachments": [{"containerID": "b", "ifname": "net1"}]}));
        assert_eq!(ids(&both), ["a"], "libcni sends both; the current name wins");
        assert!(gc(json!({"cni.dev/valid-attachments": []})).valid_attachments().unwrap().is_empty(), "an empty list is a list");
        assert_eq!(gc(json!({})).valid_attachments().unwrap_err().code, CODE_INVALID_CONFIG);
    }

    #[test]
    fn chained_mode_decides_from_the_pod_annotations_the_runtime_passed() {
        let with = |runtime_config: Value| {
            let mut c = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "srv6pipes-cni", "annotatedNetwork": "srv6pipes"});
            if !runtime_config.is_null() {
                c["runtimeConfig"] = runtime_config;
            }
            NetConf::parse(c.to_string().as_bytes()).unwrap()
        };
        let annotated = |v: &str| with(json!({POD_ANNOTATIONS: {"k8s.v1.cni.cncf.io/networks": v, "other": "x"}}));
        assert!(annotated("srv6pipes").asks_for_us().unwrap().unwrap());
        assert!(annotated("default/srv6pipes@net1, other").asks_for_us().unwrap().unwrap());
        assert!(annotated(r#"[{"name": "srv6pipes", "interface": "net1"}]"#).asks_for_us().unwrap().unwrap());
        assert!(!annotated("macvlan").asks_for_us().unwrap().unwrap());
        assert!(!with(json!({POD_ANNOTATIONS: {"app": "web"}})).asks_for_us().unwrap().unwrap(), "no networks annotation: not ours");
        assert_eq!(annotated("[{").asks_for_us().unwrap().unwrap_err().code, CODE_INVALID_CONFIG);
        assert!(with(Value::Null).asks_for_us().is_none(), "no annotations passed: the daemon reads the pod");
        assert!(with(json!({"portMappings": []})).asks_for_us().is_none());
        let unchained = NetConf::parse(&conf("1.0.0")).unwrap();
        assert!(unchained.asks_for_us().is_none(), "not chained: every pod is ours");
    }

    #[test]
    fn pair_names() {
        let pair = br#"{"cniVersion":"1.0.0","name":"n","type":"srv6pipes-cni","interfaces":"pair"}"#;
        let c = NetConf::parse(pair).unwrap();
        assert_eq!(c.out_ifname("net1").unwrap().as_deref(), Some("net2"));
        assert_eq!(c.out_ifname("eth9").unwrap().as_deref(), Some("eth10"));
        assert_eq!(c.out_ifname("in").unwrap_err().code, CODE_INVALID_CONFIG);
        assert_eq!(NetConf::parse(&conf("1.0.0")).unwrap().out_ifname("net1").unwrap(), None);
        assert_eq!(next_ifname("x"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(!version_at_least("1.0.0", "1.1.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
    }

    #[test]
    fn version_answers_in_config_version() {
        let v: Value = serde_json::from_str(&version_json(&conf("0.4.0"))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), SUPPORTED.len());
        let v: Value = serde_json::from_str(&version_json(b"")).unwrap();
        assert_eq!(v["cniVersion"], LATEST);
    }

    #[test]
    fn result_extends_prev_result_and_binds_ipam() {
        let mut c = NetConf::parse(&conf("0.3.1")).unwrap();
        c.prev_result = Some(
            json!({"cniVersion": "0.3.1", "interfaces": [{"name": "eth0"}], "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}]}),
        );
        let ipam = json!({"ips": [{"address": "fd00::5/64"}], "routes": [{"dst": "fd01::/64"}]});
        let ifaces: [Iface; 2] = [("sp1", "02:00:00:00:00:01", None), ("net1", "02:00:00:00:00:02", Some("/run/netns/p"))];
        let r = add_result(&c, &ifaces, 1, Some(&ipam));
        assert_eq!(r["cniVersion"], "0.3.1");
        let names: Vec<&str> = r["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["eth0", "sp1", "net1"]);
        assert_eq!(r["interfaces"][2]["sandbox"], "/run/netns/p");
        assert!(r["interfaces"][1].get("sandbox").is_none());
        assert_eq!(r["ips"][0]["address"], "10.0.0.2/24");
        assert_eq!(r["ips"][1]["interface"], 2, "bound to net1 in the merged list");
        assert_eq!(r["ips"][1]["version"], "6", "0.3.x results carry ip versions");
        assert_eq!(r["routes"][0]["dst"], "fd01::/64");
        // Chained after a primary plugin whose result has routes (and DNS): both plugins'
        // routes, the primary's DNS.
        c.prev_result.as_mut().unwrap()["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]);
        c.prev_result.as_mut().unwrap()["dns"] = json!({"nameservers": ["10.96.0.10"]});
        let with_dns = json!({"ips": [{"address": "fd00::5/64"}], "routes": [{"dst": "fd01::/64"}], "dns": {"nameservers": ["fd00::53"]}});
        let r = add_result(&c, &ifaces, 1, Some(&with_dns));
        let routes: Vec<&str> = r["routes"].as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap()).collect();
        assert_eq!(routes, ["0.0.0.0/0", "fd01::/64"]);
        assert_eq!(r["dns"]["nameservers"], json!(["10.96.0.10"]));
        let c = NetConf::parse(&conf("1.0.0")).unwrap();
        let r = add_result(&c, &ifaces, 1, Some(&json!({"ips": [{"address": "fd00::5/64", "version": "6"}]})));
        assert!(r["ips"][0].get("version").is_none(), "1.0 results do not");
        assert_eq!(r["ips"][0]["interface"], 1);
    }

    #[test]
    fn cni_args() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=fw-0");
        assert_eq!(a[1], ("K8S_POD_NAMESPACE".into(), "ns".into()));
        assert_eq!(a.len(), 3);
    }
}
