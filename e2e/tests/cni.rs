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

    /// n1's node daemon's pid (read while it answers: `lab status` asks it).
    fn daemon_pid(&self) -> String {
        let st: Value = serde_json::from_slice(&self.lab(&["status", "-o", "json"]).stdout).unwrap();
        st["nodes"][0]["daemon"]["pid"].as_u64().expect("the daemon's pid").to_string()
    }

    fn socket(&self) -> String {
        self.state.join("nodes/n1/node.sock").display().to_string()
    }

    fn netns(&self) -> String {
        format!("/run/netns/{}-default-vnf", self.name)
    }

    /// Runs the plugin in the node's netns with CNI_* env and `conf` on stdin.
    fn cni(&self, command: &str, container: &str, netns: &str, conf: &Value) -> (bool, Value) {
        self.cni_if(command, container, netns, "net1", conf)
    }

    fn cni_if(&self, command: &str, container: &str, netns: &str, ifname: &str, conf: &Value) -> (bool, Value) {
        self.cni_in(command, container, netns, ifname, conf, "/usr/lib/cni")
    }

    /// The plugin with `CNI_PATH` `cni_path` (where the IPAM plugins are looked for).
    fn cni_in(&self, command: &str, container: &str, netns: &str, ifname: &str, conf: &Value, cni_path: &str) -> (bool, Value) {
        let mut child = Command::new(target_dir().join("srv6pipes"))
            .args(["lab", "--name", &self.name, "--state-dir"])
            .arg(&self.state)
            .args(["exec", "--node", "n1", "--", "env"])
            .arg(format!("CNI_COMMAND={command}"))
            .arg(format!("CNI_CONTAINERID={container}"))
            .arg(format!("CNI_NETNS={netns}"))
            .arg(format!("CNI_IFNAME={ifname}"))
            .arg(format!("CNI_PATH={cni_path}"))
            .arg("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vnf")
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
        let out = Command::new("socat")
            .args(["-", &format!("UNIX-CONNECT:{}", self.socket())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
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

fn kill(signal: &str, pid: &str) {
    assert!(Command::new("kill").args([signal, pid]).status().unwrap().success(), "kill {signal} {pid}");
}

fn conf(version: &str, socket: &str) -> Value {
    json!({"cniVersion": version, "name": "srv6pipes", "type": "srv6pipes-cni", "socket": socket, "mtu": 1400})
}

#[test]
fn add_del_every_version_idempotent_and_clean() {
    require_lab!("socat");
    let lab = OneNode::up();
    let links_before = lab.node(&["ip", "-o", "link"]);
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
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
        let pod_link = lab.pod(&["ip", "-o", "link", "show", "net1"]);
        assert!(pod_link.contains("mtu 1400") && pod_link.contains(",UP,LOWER_UP"), "up, with its peer: {pod_link}");
        assert_eq!(lab.pod(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).trim(), "1");
        assert!(lab.pod(&["ip", "-6", "rule"]).contains("iif net1 lookup"), "{}", lab.pod(&["ip", "-6", "rule"]));
        // And out of net1 the replies the pod's stack makes to what the node delivered there:
        // the datapath's reply mark (0x5f6d0000 | the node end's ifindex), reflected.
        let index: u32 = lab.node(&["ip", "-o", "link", "show", &host]).split(':').next().unwrap().trim().parse().unwrap();
        let reply_rule = format!("fwmark {:#x} lookup", 0x5f6d_0000 | (index & 0xffff));
        for family in ["-6", "-4"] {
            assert!(lab.pod(&["ip", family, "rule"]).contains(&reply_rule), "{reply_rule}: {}", lab.pod(&["ip", family, "rule"]));
        }
        for key in ["net.ipv6.fwmark_reflect", "net.ipv4.fwmark_reflect"] {
            assert_eq!(lab.pod(&["sysctl", "-n", key]).trim(), "1", "{key}");
        }
        assert!(lab.pod(&["ip", "-6", "neigh", "show", "dev", "net1"]).contains("PERMANENT"));
        // Node side: the veth, registered with a SID from the node's locator, End.AD's outbound
        // program on it as a direct-action filter.
        assert!(lab.node(&["ip", "-o", "link", "show", &host]).contains(&host));
        let filters = lab.node(&["tc", "filter", "show", "dev", &host, "ingress"]);
        assert!(filters.contains("sp_vnf") && filters.contains("direct-action"), "{filters}");
        let regs = lab.sids()["registrations"].clone();
        assert_eq!(regs.as_array().unwrap().len(), 1, "{regs}");
        // The lowest free proxy SID, but none that an earlier version's DEL released a
        // moment ago (headends elsewhere may still steer to it).
        assert_eq!(regs[0]["sid"], format!("fcbb:bb00:1:e00{}::", i + 1), "lowest free proxy SID that is not cooling down");
        assert_eq!(regs[0]["pod_name"], "vnf");

        // A second ADD for the live attachment is refused and leaves it as it was.
        let (ok, err) = lab.cni("ADD", &container, &lab.netns(), &conf(version, &lab.socket()));
        assert!(!ok && err["code"] == 4, "ADD twice: {err}");
        assert!(err["msg"].as_str().unwrap().contains("second ADD"), "{err}");
        assert!(lab.node(&["ip", "-o", "link", "show", &host]).contains(&host), "still attached");
        assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).contains("net1"));
        assert!(lab.pod(&["ip", "-6", "rule"]).contains("iif net1 lookup"));
        assert_eq!(lab.sids()["registrations"].as_array().unwrap().len(), 1, "still registered");

        // CHECK (0.4.0 on) agrees with what ADD made, and notices when it is tampered with.
        let mut with_prev = conf(version, &lab.socket());
        with_prev["prevResult"] = res.clone();
        let (ok, err) = lab.cni("CHECK", &container, &lab.netns(), &with_prev);
        if version.starts_with("0.3") {
            assert!(!ok && err["code"] == 1, "CHECK is not in {version}: {err}");
        } else {
            assert!(ok, "CHECK {version}: {err}");
            let mark = reply_rule.split_whitespace().nth(1).unwrap();
            let reply = lab.pod(&["ip", "-4", "rule", "show", "fwmark", mark]);
            lab.pod(&["ip", "-4", "rule", "del", "priority", reply.split(':').next().unwrap().trim(), "fwmark", mark]);
            let (ok, err) = lab.cni("CHECK", &container, &lab.netns(), &with_prev);
            assert!(!ok && err["code"] == 100, "CHECK must notice the missing reply rule: {err}");
            // Both gone is no older plugin's attachment either: that one left fwmark_reflect off.
            let reply = lab.pod(&["ip", "-6", "rule", "show", "fwmark", mark]);
            lab.pod(&["ip", "-6", "rule", "del", "priority", reply.split(':').next().unwrap().trim(), "fwmark", mark]);
            let (ok, err) = lab.cni("CHECK", &container, &lab.netns(), &with_prev);
            assert!(!ok && err["code"] == 100, "CHECK must notice both reply rules missing: {err}");
            let table = lab.pod(&["ip", "-6", "rule", "show", "iif", "net1"]);
            let prio = table.split(':').next().unwrap().trim().to_string();
            lab.pod(&["ip", "-6", "rule", "del", "priority", &prio]);
            let (ok, err) = lab.cni("CHECK", &container, &lab.netns(), &with_prev);
            assert!(!ok && err["code"] == 100, "CHECK must notice the missing rule: {err}");
        }

        // DEL removes everything ADD made, and is idempotent.
        for attempt in 0..2 {
            let (ok, res) = lab.cni("DEL", &container, &lab.netns(), &conf(version, &lab.socket()));
            assert!(ok, "DEL #{attempt} {version}: {res}");
        }
        assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty(), "net1 left");
        for family in ["-6", "-4"] {
            let rules = lab.pod(&["ip", family, "rule"]);
            assert!(!rules.contains("iif net1") && !rules.contains("fwmark 0x5f6d"), "{family} rule left: {rules}");
        }
        assert!(lab.pod(&["ip", "-6", "route", "show", "table", "all", "dev", "net1"]).is_empty(), "routes left");
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
    // CHECK of something never added: the plugin's own code, 100.
    let mut c = conf("1.0.0", &lab.socket());
    c["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": []});
    let (ok, err) = lab.cni("CHECK", "ctr-x", &lab.netns(), &c);
    assert!(!ok && err["code"] == 100, "{err}");
    // STATUS and GC are 1.1.0 verbs.
    let (ok, err) = lab.cni("STATUS", "", "", &conf("1.0.0", &lab.socket()));
    assert!(!ok && err["code"] == 1, "{err}");
    let (ok, err) = lab.cni("STATUS", "", "", &conf("1.1.0", &lab.socket()));
    assert!(ok, "STATUS with the daemon up: {err}");
    let (ok, err) = lab.cni("STATUS", "", "", &conf("1.1.0", "/nonexistent/node.sock"));
    assert!(!ok && err["code"] == 50, "{err}");
    // Missing fields and unknown verbs.
    let (_, err) = lab.cni("ADD", "", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert_eq!(err["code"], 4, "no CNI_CONTAINERID: {err}");
    let (_, err) = lab.cni("FROB", "ctr-x", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert_eq!(err["code"], 4, "{err}");
    let no_ipam = json!({"cniVersion": "1.0.0", "name": "x", "type": "srv6pipes-cni", "socket": lab.socket(), "ipam": {"type": "nope"}});
    let (_, err) = lab.cni("ADD", "ctr-x", &lab.netns(), &no_ipam);
    assert_eq!(err["code"], 7, "unknown IPAM plugin: {err}");
    // A name clash with an existing pod interface: an error, and nothing made.
    let (ok, err) = lab.cni_if("ADD", "ctr-x", &lab.netns(), "eth0", &conf("1.0.0", &lab.socket()));
    assert!(!ok && err["msg"].as_str().unwrap().contains("eth0"), "{err}");
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before, "nothing half-created");
    let (ok, v) = lab.cni("VERSION", "", "", &conf("0.4.0", &lab.socket()));
    assert!(ok);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.0.0")));
    assert_eq!(lab.sids()["registrations"], json!([]));
}

/// ADD runs IPAM and the pod's routing beside the registration: when the registration fails,
/// the undo comes after both, so the lease, the pod's rules and routes and both veth ends go.
#[test]
fn a_failed_registration_undoes_the_work_done_beside_it() {
    require_lab!("socat");
    let lab = OneNode::up();
    let links_before = lab.node(&["ip", "-o", "link"]);
    let data = lab.state.join("ipam-undo");
    let mut c = conf("1.0.0", "/nonexistent/node.sock");
    c["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "fd00:78::/64"}]], "dataDir": data.display().to_string()});
    for i in 0..3 {
        let (ok, err) = lab.cni("ADD", &format!("ctr-undo{i}"), &lab.netns(), &c);
        assert!(!ok && err["code"] == 11, "no daemon: try again later: {err}");
        assert_eq!(lab.node(&["ip", "-o", "link"]), links_before, "a veth end left");
        assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty(), "net1 left");
        for family in ["-6", "-4"] {
            let rules = lab.pod(&["ip", family, "rule"]);
            assert!(!rules.contains("iif net1") && !rules.contains("fwmark 0x5f6d"), "rule left: {rules}");
        }
        let leases: Vec<String> = std::fs::read_dir(data.join("srv6pipes"))
            .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).filter(|t| t.contains("ctr-undo")).collect())
            .unwrap_or_default();
        assert!(leases.is_empty(), "IPAM lease left: {leases:?}");
    }
    assert_eq!(lab.sids()["registrations"], json!([]));
}

/// A registration is journaled, not written into the whole state file, and a daemon killed
/// right after it (no program since, so nothing folded the journal in) comes back with it: the
/// same SID, still installed. Its release is journaled the same way, and keeps the SID cooling
/// down across the next kill.
#[test]
fn a_registration_survives_a_kill_through_the_journal() {
    require_lab!("socat");
    let lab = OneNode::up();
    let state_dir = lab.state.join("nodes/n1");
    let (ok, res) = lab.cni("ADD", "kept", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert!(ok, "ADD: {res}");
    let journal = std::fs::read_to_string(state_dir.join("node-state.journal")).expect("the registration is in the journal");
    assert!(journal.contains("\"registered\"") && journal.contains("kept"), "{journal}");
    assert!(!std::fs::read_to_string(state_dir.join("node-state.json")).unwrap().contains("kept"), "not in the state file yet");
    let before = lab.sids()["registrations"].clone();
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");
    kill("-KILL", &lab.daemon_pid());
    assert!(lab.lab(&["restart-node", "n1"]).status.success());
    assert_eq!(lab.sids()["registrations"], before, "the registration and its SID are back");
    assert!(std::fs::read_to_string(state_dir.join("node-state.json")).unwrap().contains("kept"), "folded into the state file at start");
    assert!(!state_dir.join("node-state.journal").exists(), "and the journal gone");
    assert!(lab.cni("DEL", "kept", &lab.netns(), &conf("1.0.0", &lab.socket())).0);
    assert_eq!(lab.sids()["registrations"], json!([]));
    // The released SID cools down across a kill too (its release is journaled with the time):
    // the next pod gets another one.
    kill("-KILL", &lab.daemon_pid());
    assert!(lab.lab(&["restart-node", "n1"]).status.success());
    let (ok, res) = lab.cni("ADD", "next", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert!(ok, "ADD: {res}");
    assert_eq!(before[0]["sid"], "fcbb:bb00:1:e001::");
    assert_eq!(lab.sids()["registrations"][0]["sid"], "fcbb:bb00:1:e002::", "not the SID released before the restart");
    assert!(lab.cni("DEL", "next", &lab.netns(), &conf("1.0.0", &lab.socket())).0);
}

/// DEL never waits on the daemon, so pods never hang in Terminating. With srv6pipes uninstalled
/// (no socket at all) it removes what is local. With the daemon down (killed: its socket stays)
/// it removes what is local too, queues the deregistration beside the socket, and succeeds,
/// twice; the daemon, back, releases the registration: no registration, SID, link or queued
/// file of the pod is left. With the daemon hung (stopped: it accepts, never answers), the
/// same once the call times out.
#[test]
fn del_never_waits_on_the_daemon() {
    require_lab!("socat");
    let lab = OneNode::up();
    let links_before = lab.node(&["ip", "-o", "link"]);
    let local_gone = |host: &str| {
        assert!(lab.node(&["ip", "-o", "link", "show", host]).is_empty(), "{host} left");
        assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty(), "net1 left in the pod");
        assert!(lab.pod(&["ip", "-6", "rule"]).lines().all(|l| !l.contains("net1") && !l.contains("fwmark 0x5f6d")), "pod rule left");
    };
    // No socket: uninstalled. The pod side and the veth go.
    let (ok, res) = lab.cni("ADD", "gone", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert!(ok, "ADD: {res}");
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let (ok, err) = lab.cni("DEL", "gone", &lab.netns(), &conf("1.0.0", "/nonexistent/node.sock"));
    assert!(ok, "DEL after uninstall: {err}");
    local_gone(&host);
    // (This daemon is still up and holds the registration; its DEL releases it.)
    assert!(lab.cni("DEL", "gone", &lab.netns(), &conf("1.0.0", &lab.socket())).0);
    assert_eq!(lab.sids()["registrations"], json!([]));

    // The daemon is down (kill -9; its socket stays): DEL succeeds at once, twice.
    let (ok, res) = lab.cni("ADD", "down", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert!(ok, "ADD: {res}");
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    kill("-KILL", &lab.daemon_pid());
    std::thread::sleep(std::time::Duration::from_millis(200));
    for attempt in 0..2 {
        let (ok, err) = lab.cni("DEL", "down", &lab.netns(), &conf("1.0.0", &lab.socket()));
        assert!(ok, "DEL #{attempt} with the daemon down: {err}");
    }
    local_gone(&host);
    let pending = std::path::PathBuf::from(format!("{}.pending", lab.socket()));
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 1, "the deregistration is queued");
    // Back: the registration and its SID are released, the queue emptied.
    assert!(lab.lab(&["restart-node", "n1"]).status.success());
    common::wait_for("the queue applied", std::time::Duration::from_secs(10), || {
        std::fs::read_dir(&pending).map(|d| d.count() == 0).unwrap_or(true)
    });
    assert_eq!(lab.sids()["registrations"], json!([]));
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);

    // Hung (SIGSTOP): the connection is accepted and never answered.
    let (ok, res) = lab.cni("ADD", "hung", &lab.netns(), &conf("1.0.0", &lab.socket()));
    assert!(ok, "ADD: {res}");
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let pid = lab.daemon_pid();
    kill("-STOP", &pid);
    let (ok, err) = lab.cni("DEL", "hung", &lab.netns(), &conf("1.0.0", &lab.socket()));
    let queued = std::fs::read_dir(&pending).map(|d| d.count()).unwrap_or(0);
    kill("-CONT", &pid);
    assert!(ok, "DEL with the daemon hung: {err}");
    local_gone(&host);
    assert_eq!(queued, 1, "the deregistration is queued");
    common::wait_for("the hung daemon, back, releases it", std::time::Duration::from_secs(10), || {
        std::fs::read_dir(&pending).map(|d| d.count() == 0).unwrap_or(true) && lab.sids()["registrations"] == json!([])
    });
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);
}

/// GC releases what the runtime no longer lists; `interfaces: pair` makes and removes two
/// interfaces; IPAM is delegated to Debian's host-local and released on DEL; a prevResult is
/// extended; an ADD while the daemon is down is "try again later" and works once it is back.
#[test]
fn gc_pair_ipam_chaining_and_daemon_down() {
    require_lab!("socat");
    let lab = OneNode::up();
    let links_before = lab.node(&["ip", "-o", "link"]);
    let c = conf("1.1.0", &lab.socket());
    for (ctr, ifname) in [("keep", "net1"), ("stale", "net3")] {
        let (ok, res) = lab.cni_if("ADD", ctr, &lab.netns(), ifname, &c);
        assert!(ok, "{res}");
    }
    // A GC that lists no valid attachments by either name is refused: read as "none is
    // valid", it would release every pod. SPEC 1.1's first name for the list is read.
    let (ok, err) = lab.cni("GC", "", "", &conf("1.1.0", &lab.socket()));
    assert!(!ok && err["code"] == 7, "GC without a list: {err}");
    let mut gc = conf("1.1.0", &lab.socket());
    gc["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "net1"}, {"containerID": "stale", "ifname": "net3"}]);
    let (ok, err) = lab.cni("GC", "", "", &gc);
    assert!(ok, "GC by cni.dev/attachments: {err}");
    assert_eq!(lab.sids()["registrations"].as_array().unwrap().len(), 2, "both listed, both kept");
    let mut gc = conf("1.1.0", &lab.socket());
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "net1"}]);
    let (ok, err) = lab.cni("GC", "", "", &gc);
    assert!(ok, "GC: {err}");
    let regs = lab.sids()["registrations"].clone();
    assert_eq!(regs.as_array().unwrap().len(), 1, "{regs}");
    assert!(lab.pod(&["ip", "-o", "link", "show", "net3"]).is_empty(), "the stale attachment's veth is gone");
    assert!(!lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty(), "the valid one stays");
    assert!(lab.cni("DEL", "keep", &lab.netns(), &c).0);
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);

    // A pair: net1 in, net2 out; the return route leaves through net2.
    let mut pair = conf("1.0.0", &lab.socket());
    pair["interfaces"] = json!("pair");
    let (ok, res) = lab.cni("ADD", "pair", &lab.netns(), &pair);
    assert!(ok, "{res}");
    let names: Vec<&str> = res["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    assert_eq!((names[1], names[3]), ("net1", "net2"));
    let table = lab.pod(&["ip", "-6", "rule", "show", "iif", "net1"]);
    let table = table.split_whitespace().last().unwrap().to_string();
    assert!(lab.pod(&["ip", "-6", "route", "show", "table", &table]).contains("dev net2"), "return path out of net2");
    // CHECK looks at both interfaces of the pair.
    let mut with_prev = pair.clone();
    with_prev["prevResult"] = res.clone();
    let (ok, err) = lab.cni("CHECK", "pair", &lab.netns(), &with_prev);
    assert!(ok, "CHECK of a pair: {err}");
    lab.pod(&["ip", "link", "set", "net2", "address", "02:00:00:00:00:99"]);
    let (ok, err) = lab.cni("CHECK", "pair", &lab.netns(), &with_prev);
    assert!(!ok && err["code"] == 100 && err["msg"].as_str().unwrap().contains("net2"), "CHECK must notice net2's new MAC: {err}");
    lab.pod(&["ip", "link", "del", "net2"]);
    let (ok, err) = lab.cni("CHECK", "pair", &lab.netns(), &with_prev);
    assert!(!ok && err["code"] == 100, "CHECK must notice net2 gone: {err}");
    assert!(lab.cni("DEL", "pair", &lab.netns(), &pair).0);
    assert!(lab.pod(&["ip", "-o", "link", "show", "net2"]).is_empty());
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);

    // IPAM delegated to host-local, chained after a previous plugin's result.
    let ipam_dir = lab.state.with_extension("ipam");
    let mut with_ipam = conf("0.4.0", &lab.socket());
    with_ipam["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "fd00:99::/64"}]], "dataDir": ipam_dir});
    with_ipam["prevResult"] = json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": lab.netns()}], "ips": []});
    let (ok, res) = lab.cni("ADD", "ipam", &lab.netns(), &with_ipam);
    assert!(ok, "{res}");
    assert_eq!(res["interfaces"][0]["name"], "eth0", "prevResult kept first");
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.starts_with("fd00:99::"), "{res}");
    assert_eq!(res["ips"][0]["interface"], 2, "bound to net1");
    assert!(lab.pod(&["ip", "-6", "addr", "show", "dev", "net1"]).contains(addr.split('/').next().unwrap()));
    let leases = |d: &std::path::Path| std::fs::read_dir(d.join("srv6pipes")).map(|r| r.count()).unwrap_or(0);
    assert!(leases(&ipam_dir) >= 1);
    // The IPAM plugin gone from CNI_PATH: DEL fails (the runtime tries again), but what is
    // srv6pipes' own goes all the same: the veth and the registration.
    let registered = |lab: &OneNode| !lab.sids()["registrations"].as_array().unwrap().is_empty();
    assert_eq!(lab.sids()["registrations"].as_array().unwrap().len(), 1, "only the IPAM pod's: {}", lab.sids());
    let (ok, err) = lab.cni_in("DEL", "ipam", &lab.netns(), "net1", &with_ipam, "/nonexistent");
    assert!(!ok && err["msg"].as_str().is_some_and(|m| m.contains("host-local")), "{err}");
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before, "the veth outlived a DEL whose IPAM plugin is missing");
    assert!(lab.pod(&["ip", "-o", "link", "show", "net1"]).is_empty());
    assert!(!registered(&lab), "the registration outlived a DEL whose IPAM plugin is missing: {}", lab.sids());
    assert!(lab.cni("DEL", "ipam", &lab.netns(), &with_ipam).0);
    let left: Vec<_> = std::fs::read_dir(ipam_dir.join("srv6pipes")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with("fd00:99")), "lease released: {left:?}");

    // The daemon is down: ADD says try again later and makes nothing; once back, it works.
    kill("-KILL", &lab.daemon_pid());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pod_before = (lab.pod(&["ip", "-o", "link"]), lab.pod(&["ip", "-6", "rule"]));
    let (ok, err) = lab.cni("ADD", "later", &lab.netns(), &c);
    assert!(!ok && err["code"] == 11, "{err}");
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);
    assert_eq!((lab.pod(&["ip", "-o", "link"]), lab.pod(&["ip", "-6", "rule"])), pod_before, "rolled back in the pod too");
    // With IPAM, the lease handed out before the registration failed is given back.
    let mut ipam_down = conf("1.0.0", &lab.socket());
    ipam_down["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "fd00:98::/64"}]], "dataDir": ipam_dir});
    let (ok, err) = lab.cni("ADD", "later", &lab.netns(), &ipam_down);
    assert!(!ok && err["code"] == 11, "{err}");
    let leases: Vec<_> = std::fs::read_dir(ipam_dir.join("srv6pipes")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leases.iter().all(|n| !n.to_string_lossy().starts_with("fd00:98")), "lease released on failure: {leases:?}");
    let _ = std::fs::remove_dir_all(&ipam_dir);

    // Chained mode, with the pod's annotations passed by the runtime (the pod-annotations
    // capability): a pod that does not ask for srv6pipes gets ADD and DEL answered without the
    // daemon (down here), its prevResult untouched and nothing queued; one that asks waits for
    // the daemon, as does any pod when the runtime passes no annotations.
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": lab.netns()}], "ips": []});
    let mut chained = conf("1.0.0", &lab.socket());
    chained["annotatedNetwork"] = json!("srv6pipes");
    chained["interfaceName"] = json!("net1");
    chained["prevResult"] = prev.clone();
    chained["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": {"app": "web", "k8s.v1.cni.cncf.io/networks": "macvlan"}});
    let (ok, res) = lab.cni_if("ADD", "plain", &lab.netns(), "eth0", &chained);
    assert!(ok, "a pod not asking for srv6pipes waited on the daemon: {res}");
    assert_eq!(res["interfaces"], prev["interfaces"], "{res}");
    assert!(lab.cni_if("DEL", "plain", &lab.netns(), "eth0", &chained).0);
    let queued = std::fs::read_dir(format!("{}.pending", lab.socket()))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(queued.iter().all(|q| !q.starts_with("plain")), "nothing queued for a pod that is not ours: {queued:?}");
    chained["runtimeConfig"]["io.kubernetes.cri.pod-annotations"]["k8s.v1.cni.cncf.io/networks"] = json!("srv6pipes");
    let (ok, err) = lab.cni_if("ADD", "asks", &lab.netns(), "eth0", &chained);
    assert!(!ok && err["code"] == 11, "{err}");
    chained.as_object_mut().unwrap().remove("runtimeConfig");
    let (ok, err) = lab.cni_if("ADD", "unknown", &lab.netns(), "eth0", &chained);
    assert!(!ok && err["code"] == 11, "without annotations the daemon decides: {err}");
    assert_eq!(lab.node(&["ip", "-o", "link"]), links_before);
    assert_eq!((lab.pod(&["ip", "-o", "link"]), lab.pod(&["ip", "-6", "rule"])), pod_before);

    // A registration in the state file that cannot be read is reported and skipped: the
    // restarted daemon serves, never a crash loop.
    let state_file = lab.state.join("nodes/n1/node-state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["registrations"].as_array_mut().unwrap().push(json!({"attachment": {"pod_name": "broken"}, "sid": "not-a-sid"}));
    std::fs::write(&state_file, state.to_string()).unwrap();
    assert!(lab.lab(&["restart-node", "n1"]).status.success());
    let log = std::fs::read_to_string(lab.state.join("logs/node-n1.log")).unwrap();
    assert!(log.contains("an entry that cannot be read was skipped") && log.contains("broken"), "{log}");
    let (ok, res) = lab.cni("ADD", "later", &lab.netns(), &c);
    assert!(ok, "{res}");
    assert!(lab.cni("DEL", "later", &lab.netns(), &c).0);
}

/// Everything ADD can leave on a node, a pod and the daemon, for before/after comparison.
fn footprint(lab: &OneNode) -> Vec<String> {
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/srv6pipes/lab-{}/n1", lab.name));
    let count_map = |m: &str| -> String {
        let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(pins.join(m)).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        format!("{m}: {} entries", v.as_array().map_or(usize::MAX, Vec::len))
    };
    let pid = lab.daemon_pid();
    let mut files: Vec<String> =
        std::fs::read_dir(lab.state.join("nodes/n1")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    vec![
        lab.node(&["ip", "-o", "link"]),
        lab.node(&["ip", "-6", "route", "show", "table", "all"]),
        lab.node(&["ip", "-6", "addr"]),
        lab.node(&["ip", "-6", "rule"]),
        lab.pod(&["ip", "-o", "link"]),
        lab.pod(&["ip", "-6", "route", "show", "table", "all"]),
        lab.pod(&["ip", "-6", "rule"]),
        lab.pod(&["ip", "-4", "rule"]),
        lab.pod(&["ip", "-4", "route", "show", "table", "all"]),
        lab.pod(&["ip", "neigh", "show", "nud", "permanent"]),
        lab.sids()["registrations"].to_string(),
        count_map("sp_sids"),
        count_map("sp_ad_cache"),
        format!("link pins: {}", std::fs::read_dir(pins.join("links")).unwrap().count()),
        format!("daemon fds: {}", std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()),
        format!("state files: {files:?}"),
    ]
}

/// 1,000 ADD/DEL cycles, four at a time on one node, leave nothing behind: links, routes,
/// rules, neighbours, registrations, map entries, link pins, daemon descriptors, files.
#[test]
fn thousand_add_del_cycles_leak_nothing() {
    require_lab!("socat", "bpftool");
    let lab = OneNode::up();
    let node_ns = std::fs::File::open(format!("/run/netns/{}-n1", lab.name)).unwrap();
    let plugin = target_dir().join("srv6pipes-cni");
    let run = |command: &str, ctr: &str, ifname: &str| -> Value {
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        let ns = node_ns.try_clone().unwrap();
        let mut cmd = Command::new(&plugin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", ctr)
            .env("CNI_NETNS", lab.netns())
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: setns is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf("1.1.0", &lab.socket()).to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{command} {ctr}: {}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    // The baseline after one cycle: ADD turns forwarding on in the pod (a deliberate, pod-wide
    // setting that DEL leaves, as the reference plugins do), which adds router anycast routes.
    run("ADD", "warmup", "net1");
    run("DEL", "warmup", "net1");
    let before = footprint(&lab);
    std::thread::scope(|s| {
        for t in 0..4 {
            let run = &run;
            s.spawn(move || {
                let ifname = format!("net{}", t + 1);
                for i in 0..250 {
                    let ctr = format!("leak-{t}-{i}");
                    let res = run("ADD", &ctr, &ifname);
                    assert_eq!(res["interfaces"][1]["name"], ifname);
                    run("DEL", &ctr, &ifname);
                }
            });
        }
    });
    assert_eq!(footprint(&lab), before);
}

/// The daemon checks what a caller registers: the named node-side interface must be a veth with
/// the given MAC, so End.AD can never be pointed at the uplink or a made-up interface.
#[test]
fn daemon_refuses_registrations_of_non_veths() {
    require_lab!("socat");
    let lab = OneNode::up();
    let register = |host_ifname: &str, mac: &str| -> Value {
        let req = json!({"op": "register", "network": "x", "container_id": "evil", "ifname": "net1",
            "netns": lab.netns(), "host_ifname": host_ifname, "pod_namespace": "default", "pod_name": "vnf",
            "vnf_mac": "02:00:00:00:00:01", "host_mac": mac});
        let mut child = Command::new("socat")
            .args(["-", &format!("UNIX-CONNECT:{}", lab.socket())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{req}\n").as_bytes()).unwrap();
        serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap()
    };
    // The lab's uplink is a veth too: naming it with its real MAC is still refused.
    let link = lab.node(&["ip", "-o", "link", "show", "eth0"]);
    let uplink_mac = link.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let r = register("eth0", &uplink_mac);
    assert_eq!(r["result"], "error", "{r}");
    assert!(r["message"].as_str().unwrap().contains("uplink"), "{r}");
    // The primary plugin's veth of the pod (guarded by the daemon) is not a VNF interface.
    let links = lab.node(&["ip", "-o", "link"]);
    let ptp = links.split_whitespace().find(|w| w.starts_with("veth")).unwrap().split('@').next().unwrap().to_string();
    let r = register(&ptp, "02:00:00:00:00:09");
    assert!(r["message"].as_str().unwrap().contains("primary interface"), "{r}");
    // Any other veth must come with its own MAC.
    lab.node(&["ip", "link", "add", "name", "tst0", "type", "veth", "peer", "name", "tst1"]);
    let r = register("tst0", "02:00:00:00:00:09");
    assert!(r["message"].as_str().unwrap().contains("MAC"), "{r}");
    let lo = register("lo", "00:00:00:00:00:00");
    assert!(lo["message"].as_str().unwrap().contains("not a veth"), "{lo}");
    let r = register("nosuch0", "02:00:00:00:00:02");
    assert!(r["message"].as_str().unwrap().contains("does not exist"), "{r}");
    assert_eq!(lab.sids()["registrations"], json!([]));
}
