//! CNI plumbing: configuration, environment, results and errors (CNI SPEC 1.0, §3-§5).

use serde::Deserialize;
use serde_json::{json, Value};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const LATEST: &str = "1.0.0";

pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
pub const CODE_INVALID_ENV: u32 = 4;
pub const CODE_IO: u32 = 5;
pub const CODE_DECODE: u32 = 6;
pub const CODE_INVALID_CONFIG: u32 = 7;
pub const CODE_TRY_AGAIN_LATER: u32 = 11;

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
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
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
    /// MTU of the chain interface (inner packets: the underlay MTU less the encapsulation).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

fn default_socket() -> String {
    srv6::node_api::DEFAULT_SOCKET.into()
}

fn default_mtu() -> u32 {
    1400
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(CODE_DECODE, format!("cannot decode network configuration: {e}")))?;
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                CODE_INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported (supported: {})", conf.cni_version, SUPPORTED.join(", ")),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(CODE_INVALID_CONFIG, "network configuration has an empty name"));
        }
        if conf.kind != "srv6pipes-cni" {
            return Err(CniError::new(CODE_INVALID_CONFIG, format!("type {:?} is not srv6pipes-cni", conf.kind)));
        }
        if !(1280..=65535).contains(&conf.mtu) {
            return Err(CniError::new(CODE_INVALID_CONFIG, format!("mtu {} out of range 1280..65535", conf.mtu)));
        }
        Ok(conf)
    }
}

/// The CNI_* environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

impl Env {
    pub fn from_process(command: &str) -> Result<Self, CniError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let container_id = var("CNI_CONTAINERID").ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
        let ifname = var("CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
        if ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
            return Err(CniError::env(format!("CNI_IFNAME {ifname:?} is not a valid interface name")));
        }
        // DEL may come without a netns (the sandbox is gone): that is allowed.
        let netns = match var("CNI_NETNS") {
            Some(n) => n,
            None if command == "DEL" => String::new(),
            None => return Err(CniError::env("CNI_NETNS is not set")),
        };
        let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default());
        let get = |k: &str| args.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        Ok(Self {
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

/// The ADD result in the configuration's version: our interfaces appended to any prevResult.
pub fn add_result(conf: &NetConf, host: (&str, &str), pod: (&str, &str, &str)) -> Value {
    let mut result = conf.prev_result.clone().unwrap_or_else(|| json!({"interfaces": [], "ips": [], "dns": {}}));
    result["cniVersion"] = json!(conf.cni_version);
    if !result["interfaces"].is_array() {
        result["interfaces"] = json!([]);
    }
    let ifaces = result["interfaces"].as_array_mut().expect("array");
    ifaces.push(json!({"name": host.0, "mac": host.1}));
    ifaces.push(json!({"name": pod.0, "mac": pod.1, "sandbox": pod.2}));
    if result.get("ips").is_none() {
        result["ips"] = json!([]);
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
    fn parses_defaults_and_rejects_unknown_versions() {
        let c = NetConf::parse(&conf("1.0.0")).unwrap();
        assert_eq!(c.socket, "/run/srv6pipes/node.sock");
        assert_eq!(c.mtu, 1400);
        assert_eq!(NetConf::parse(&conf("9.9.9")).unwrap_err().code, CODE_INCOMPATIBLE_VERSION);
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, CODE_DECODE);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, CODE_DECODE);
        let bad_mtu = br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":100}"#;
        assert_eq!(NetConf::parse(bad_mtu).unwrap_err().code, CODE_INVALID_CONFIG);
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
    fn result_extends_prev_result() {
        let mut c = NetConf::parse(&conf("0.4.0")).unwrap();
        c.prev_result = Some(json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.2/24"}]}));
        let r = add_result(&c, ("sp1", "02:00:00:00:00:01"), ("net1", "02:00:00:00:00:02", "/run/netns/p"));
        assert_eq!(r["cniVersion"], "0.4.0");
        let names: Vec<&str> = r["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["eth0", "sp1", "net1"]);
        assert_eq!(r["interfaces"][2]["sandbox"], "/run/netns/p");
        assert_eq!(r["ips"][0]["address"], "10.0.0.2/24");
    }

    #[test]
    fn cni_args() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=fw-0");
        assert_eq!(a[1], ("K8S_POD_NAMESPACE".into(), "ns".into()));
        assert_eq!(a.len(), 3);
    }
}
