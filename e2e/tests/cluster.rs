//! Tier 6: srv6pipes on a real two-node Kubernetes (kubelet + containerd + runc, API server with
//! Node,RBAC, kube-proxy) made by e2e/cluster/up, deployed from the chart with Helm (its stream
//! proxies too, which start before srv6pipes-cni is on their node and are remade by the
//! daemons' pod repair), then the scenario shared with kind (e2e/scenario.sh), in a namespace of
//! its own: steering, return path, Ready, SRv6 pipes (a packet VNF and a stream function in one
//! chain), a DaemonSet pod recreated and an upgrade under a steady flow without loss, RBAC
//! refusals, unsteering, and an uninstall that leaves the nodes clean.
//! e2e/cluster/down runs whatever happens. Needs root, containerd, runc, etcd, gcc and the
//! Kubernetes binaries scripts/kube-build makes; skips, saying why, without them.

use std::process::Command;

mod common;
use common::{has_tool, is_root, repo_root};

struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let out = Command::new(repo_root().join("e2e/cluster/down")).output().expect("run e2e/cluster/down");
        assert!(out.status.success() || std::thread::panicking(), "down failed: {}", String::from_utf8_lossy(&out.stderr));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn chain_on_a_real_cluster_deployed_from_the_chart() {
    if !is_root() {
        eprintln!("SKIP chain_on_a_real_cluster_deployed_from_the_chart: needs root");
        return;
    }
    if let Some(t) =
        ["containerd", "runc", "ctr", "iptables", "nft", "gcc", "kubectl", "busybox", "jq", "curl"].into_iter().find(|t| !has_tool(t))
    {
        eprintln!("SKIP chain_on_a_real_cluster_deployed_from_the_chart: {t} is missing (scripts/deps installs it)");
        return;
    }
    // What e2e/cluster/up runs (built once, or skipped without Go to build them).
    let components = ["kube-apiserver", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl", "etcd", "helm"];
    if common::kube_build(&components).is_none() {
        return;
    }
    let root = repo_root();
    let kubeconfig = root.join("e2e/cluster/.state/kubeconfig");
    let _down = Down;
    let up = Command::new(root.join("e2e/cluster/up")).status().expect("run e2e/cluster/up");
    assert!(up.success(), "e2e/cluster/up failed (logs under e2e/cluster/.state)");
    assert!(kubeconfig.exists(), "up wrote no kubeconfig at {}", kubeconfig.display());
    // The upgrade: the same chart with the image's other tag (a new pod template: fresh daemons
    // reload and re-attach their BPF objects under the flow).
    let deploy = root.join("e2e/cluster/deploy");
    let deploy = deploy.to_str().unwrap();
    let scenario = Command::new(root.join("e2e/scenario.sh"))
        .args(["sp6k-node1", "sp6k-node2", deploy, "--set", "image.node.tag=latest", "::", deploy, "--uninstall"])
        .env("KUBECONFIG", &kubeconfig)
        .env("SRV6PIPES_CLI", common::target_dir().join("srv6pipes"))
        .status()
        .expect("run e2e/scenario.sh");
    assert!(scenario.success(), "the scenario failed (see its output above; logs under e2e/cluster/.state)");
}
