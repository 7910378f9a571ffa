//! srv6pipes-cni driven directly, as a runtime drives it (env + stdin, in the node's netns),
//! against a real node daemon in a one-node lab: ADD per spec version, DEL idempotence,
//! nothing left behind, and the error codes a runtime acts on.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

mod common;
use common::target_dir;

const ONE_NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: ["fd00:77::/64"]}
---
apiVersion: v1
kind: Pod
metadata: {name: vnf}
spec:
  nodeName: n1
  containers: [{name: c, command: ["sleep", "infinity"]}]
"#;

struct OneNode {
    name: String,
    state: PathBuf,
}

impl OneNode {
    fn up() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("c{}-{n}", std::process::id() % 100_000);
        let state = std::env::temp_dir().join(format!("srv6pipes-e2e-{name}"));
        let file = state.with_extension("yaml");
        std::fs::write(&file, ONE_NODE).unwrap();
        let lab = Self { name, state };
        let out = lab.lab(&["up", "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "lab up: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    fn lab(&self, args: &[&str]) -> Output {
        Command::new(target_dir().join("srv6pipes"))
            .args(["lab", "--name", &self.name, "--state-dir"])
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }

    fn node(&self, cmd: &[&str]) -> String {
        let mut args = vec!["exec", "--node", "n1", "--"];
        args.extend_from_slice(cmd);
        String::from_utf8_lossy(&self.lab(&args).stdout).into_owned()
    }

    fn pod(&self, cmd: &[&str]) -> String {
        let mut args = vec!["exec", "vnf", "--"];
        args.extend_from_slice(cmd);
        String::from_utf8_lossy(&self.lab(&args).stdout).into_owned()
    }

    fn socket(&self) -> String {
        self.state.join("nodes/n1/node.sock").display().to_string()
    }

    fn netns(&self) -> String {
        format!("/run/netns/{}-default-vnf", self.name)
    }

    /// Runs the plugin in the node's netns with CNI_* env and `conf` on stdin.
    fn cni(&self, command: &str, container: &str, netns: &str, conf: &Value) -> (bool, Value) {
        let mut child = Command::new(target_dir().join("srv6pipes"))
            .args(["lab", "--name", &self.name, "--state-dir"])
            .arg(&self.state)
            .args(["exec", "--node", "n1", "--", "env"])
            .arg(format!("CNI_COMMAND={command}"))
            .arg(format!("CNI_CONTAINERID={container}"))
            .arg(format!("CNI_NETNS={netns}"))
            .arg("CNI_IFNAME=net1")
            .arg("CNI_PATH=/usr/lib/cni")
            .arg("CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=vnf")
            .arg(target_dir().join("srv6pipes-cni"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).expect("CNI output is JSON") };
        (out.status.success(), v)
    }

    fn sids(&self) -> Value {
        let out = Command::new("socat").args(["-", &format!("UNIX-CONNECT:{}", self.socket())]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
        let mut child = out.unwrap();
        child.stdin.take().unwrap().write_all(b"{\"op\":\"sids\"}\n").unwrap();
        serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap()
    }
}

impl Drop for OneNode {
    fn drop(&mut self) {
        let _ = self.lab(&["down"]);
    }
}

fn conf(version: &str, socket: &str) -> Value {
    json!({"cniVersion": version, "name": "srv6pipes", "type": "srv6pipes-cni", "socket": socket, "mtu": 1400})
}

#[test]
fn add_del_every_version_idempotent_and_clean() {
    require_lab!("socat");
    let lab = OneNode::up();
    let links_before = lab.node(&["ip", "-o", "link"]);
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
        let container = format!("ctr{i}");
        let (ok, res) = lab.cni("ADD", &container, &lab.netns(), &conf(version, &lab.socket()));
        assert!(ok, "ADD {version}: {res}");
        assert_eq!(res["cniVersion"], version, "answers in the config's version");
        let ifaces = res["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 2);
        assert_eq!(ifaces[1]["name"], "net1");
        assert_eq!(ifaces[1]["sandbox"], lab.netns());
        let host = ifaces[0]["name"].as_str().unwrap().to_string();

        // Pod side: the interface, forwarding, and the return path out of net1.
        assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).contains("mtu 1400"));
        assert_eq!(lab.pod(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).trim(), "1");
        assert!(lab.pod(&["ip", "-6", "rule"]).contains("iif net1 lookup"), "{}", lab.pod(&["ip", "-6", "rule"]));
        assert!(lab.pod(&["ip", "-6", "neigh", "show", "dev", "net1"]).contains("PERMANENT"));
        // Node side: the veth, registered with a SID from the node's locator.
        assert!(lab.node(&["ip", "-o", "link", "show", &host]).contains(&host));
        let regs = lab.sids()["registrations"].clone();
        assert_eq!(regs.as_array().unwrap().len(), 1, "{regs}");
        assert_eq!(regs[0]["sid"], "fcbb:bb00:1:e001::", "lowest free proxy SID");
        assert_eq!(regs[0]["pod_name"], "vnf");

        // DEL removes everything ADD made, and is idempotent.
        for attempt in 0..2 {
            let (ok, res) = lab.cni("DEL", &container, &lab.netns(), &conf(version, &lab.socket()));
            assert!(ok, "DEL #{attempt} {version}: {res}");
        }
        assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty(), "net1 left");
        assert!(!lab.pod(&["ip", "-6", "rule"]).contains("iif net1"), "rule left");
        assert!(lab.node(&["ip", "-o", "link", "show", &host]).is_empty(), "{host} left");
        assert_eq!(lab.sids()["registrations"], json!([]), "SID left");
        // A DEL without a netns (the sandbox is gone) succeeds too.
        let (ok, res) = lab.cni("DEL", &container, "", &conf(version, &lab.socket()));
        assert!(ok, "DEL without netns: {res}");
    }
    assert_eq!(lab.node(&["ip", "-o", "link"]).lines().count(), links_before.lines().count());
}

#[test]
fn errors_carry_spec_codes_and_leave_nothing() {
    require_lab!("socat");
    let lab = OneNode::up();
    let links_before = lab.node(&["ip", "-o", "link"]);
    // Node daemon unreachable: code 11 (try again later), the veth is rolled back.
    let (ok, err) = lab.cni("ADD", "ctr-x", &lab.netns(), &conf("1.0.0", "/nonexistent/node.sock"));
    assert!(!ok);
    assert_eq!(err["code"], 11, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0");
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before, "nothing half-created");
    assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty());
    // Unknown version: code 1. Undecodable config: code 6. Not a netns: code 4.
    let (_, err) = lab.cni("ADD", "ctr-x", &lab.netns(), &conf("9.9.9", &lab.socket()));
    assert_eq!(err["code"], 1, "{err}");
    let (_, err) = lab.cni("ADD", "ctr-x", &lab.netns(), &json!("not an object"));
    assert_eq!(err["code"], 6, "{err}");
    let (_, err) = lab.cni("ADD", "ctr-x", "/etc/hostname", &conf("1.0.0", &lab.socket()));
    assert_eq!(err["code"], 4, "{err}");
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);
    // CHECK is not there yet: a proper error, not a crash. VERSION lists what we speak.
    let (ok, err) = lab.cni("CHECK", "ctr-x", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert!(!ok && err["code"] == 4 && err["msg"].as_str().unwrap().contains("CHECK"), "{err}");
    let (ok, v) = lab.cni("VERSION", "", "", &conf("0.4.0", &lab.socket()));
    assert!(ok);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.0.0")));
    assert_eq!(lab.sids()["registrations"], json!([]));
}
