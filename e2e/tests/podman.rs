//! A real container runtime drives srv6pipes-cni: Debian's podman with its CNI backend, run
//! inside a lab node (as a kubelet's runtime would be), attaches two VNF containers — one from
//! a standalone conflist, one chained after ptp — whose SIDs a chain then uses; `podman rm`
//! triggers DEL. Needs podman, runc and busybox-static (scripts/deps installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::{ping, pod_ip, repo_root, sid_of, sid_packets, target_dir, wait_for, Lab};

/// Podman with private storage, configuration and plugin directories, inside a lab node.
struct Podman<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl<'a> Podman<'a> {
    fn new(lab: &'a Lab) -> Self {
        let dir = lab.state.with_extension("podman");
        let netd = dir.join("net.d");
        std::fs::create_dir_all(&netd).unwrap();
        let rootfs = dir.join("rootfs/bin");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "cat", "ip"] {
            std::os::unix::fs::symlink("busybox", rootfs.join(applet)).unwrap();
        }
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
            target_dir().display(),
            netd.display()
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        let p = Self { lab, dir };
        let tar = Command::new("tar").arg("-C").arg(p.dir.join("rootfs")).args(["-c", "."]).output().unwrap();
        let mut import = p.cmd(&["import", "-", "localhost/sp-busybox:test"]);
        import.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = import.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &tar.stdout).unwrap();
        assert!(child.wait().unwrap().success(), "podman import");
        p
    }

    fn network(&self, name: &str, conflist: Value) {
        std::fs::write(self.dir.join("net.d").join(format!("{name}.conflist")), conflist.to_string()).unwrap();
    }

    /// podman ... in node n2's netns (setns through `srv6pipes lab exec --node`).
    fn cmd(&self, args: &[&str]) -> Command {
        let root = self.dir.join("storage");
        let runroot = self.dir.join("run");
        let mut all =
            vec!["exec", "--node", "n2", "--", "podman", "--root", root.to_str().unwrap(), "--runroot", runroot.to_str().unwrap()];
        all.extend_from_slice(&["--cgroup-manager", "cgroupfs", "--runtime", "runc"]);
        all.extend_from_slice(args);
        let mut c = self.lab.cmd(&all);
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, name: &str, network: &str) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            network,
            "localhost/sp-busybox:test",
            "sleep",
            "1000",
        ]);
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-a", "-f", "-t", "0"]).output();
        let _ = self.cmd(&["rmi", "-a", "-f"]).output();
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("storage")).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn registrations(lab: &Lab) -> Vec<Value> {
    let sock = lab.state.join("nodes/n2/node.sock");
    let out = Command::new("socat")
        .args(["-", &format!("UNIX-CONNECT:{}", sock.display())])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), b"{\"op\":\"sids\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["registrations"].as_array().unwrap().clone()
}

#[test]
fn podman_containers_are_chain_vnfs() {
    require_lab!("podman", "runc", "socat", "nft");
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIPPED: needs busybox-static (/bin/busybox)");
        return;
    }
    let lab = Lab::new("podman");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-two-nodes.yaml").to_str().unwrap()]);
    let podman = Podman::new(&lab);
    let socket = lab.state.join("nodes/n2/node.sock").display().to_string();
    podman.network(
        "sp-alone",
        json!({"cniVersion": "1.0.0", "name": "sp-alone",
        "plugins": [{"type": "srv6pipes-cni", "socket": socket}]}),
    );
    podman.network(
        "sp-chained",
        json!({"cniVersion": "1.0.0", "name": "sp-chained", "plugins": [
        {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
            "dataDir": podman.dir.join("ipam").display().to_string()}},
        {"type": "srv6pipes-cni", "socket": socket, "interfaceName": "net1"}]}),
    );
    let (alone, chained) = (format!("{}-alone", lab.name), format!("{}-chained", lab.name));
    podman.run(&alone, "sp-alone:interface_name=net1");
    podman.run(&chained, "sp-chained");
    let ifaces = podman.ok(&["exec", &chained, "ip", "-o", "link"]);
    assert!(ifaces.contains("eth0") && ifaces.contains("net1"), "ptp's eth0 and our net1: {ifaces}");
    let regs = registrations(&lab);
    let names: Vec<&str> = regs.iter().map(|r| r["pod_name"].as_str().unwrap()).collect();
    assert!(names.contains(&alone.as_str()) && names.contains(&chained.as_str()), "{names:?}");

    // A chain through both containers (on n2, so the second hop is local to the node), more
    // specific than the example's chain for the server's address.
    let st = lab.status();
    let server6 = pod_ip(&st, "server", true);
    let chain = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {alone}, labels: {{vnf: podman-a}}, annotations: {{srv6pipes.io/lab-external: "true"}}}}
spec: {{nodeName: n2, containers: [{{name: c}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {chained}, labels: {{vnf: podman-b}}, annotations: {{srv6pipes.io/lab-external: "true"}}}}
spec: {{nodeName: n2, containers: [{{name: c}}]}}
---
apiVersion: srv6pipes.io/v1alpha1
kind: ServiceChain
metadata: {{name: via-podman, namespace: default}}
spec:
  sources: {{podSelector: {{matchLabels: {{app: client}}}}}}
  match: {{destinationPrefixes: ["{server6}/128"]}}
  functions:
    - {{name: a, podSelector: {{matchLabels: {{vnf: podman-a}}}}}}
    - {{name: b, podSelector: {{matchLabels: {{vnf: podman-b}}}}}}
"#
    );
    let applied = lab.run_yaml("apply", &chain);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let rx = |c: &str| -> u64 { podman.ok(&["exec", c, "cat", "/sys/class/net/net1/statistics/rx_packets"]).trim().parse().unwrap() };
    let before = (rx(&alone), rx(&chained));
    wait_for("the podman chain", std::time::Duration::from_secs(5), || ping(&lab, "client", &server6, 1));
    let ids_packets = || sid_of(&lab.status(), "default/ids")["packets"].as_u64().unwrap();
    let ids_before = ids_packets();
    assert!(ping(&lab, "client", &server6, 5), "client -> server through both containers");
    assert!(rx(&alone) >= before.0 + 5 && rx(&chained) >= before.1 + 5, "both containers received the chain's packets");
    let st = lab.status();
    assert!(sid_packets(&st, "n2", "End.AD") >= 10, "{}", st["sids"]);
    // The example chain's VNFs are bypassed for this more specific destination.
    let ids_sid = ids_packets();
    assert_eq!(ids_sid, ids_before, "the example chain's ids is bypassed");

    // podman rm: DEL through the runtime; the SIDs and node-side veths go.
    podman.ok(&["rm", "-f", "-t", "0", &alone, &chained]);
    let left: Vec<Value> = registrations(&lab).into_iter().filter(|r| r["pod_name"] != "ids").collect();
    assert!(left.is_empty(), "{left:?}");
    let links = String::from_utf8_lossy(&lab.run(&["exec", "--node", "n2", "--", "ip", "-o", "link"]).stdout).into_owned();
    assert_eq!(links.matches(" sp").count(), 1, "only the ids' veth is left: {links}");
    assert_eq!(sid_of(&lab.status(), "default/ids")["packets"], ids_sid);
}
