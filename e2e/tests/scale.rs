//! The scale tier (`scripts/test --scale`; outside CI's time, so `#[ignore]`d otherwise):
//! 10,000 ServiceChains whose sources sit on one node, each to its own /64, in the kube-mode lab
//! on a real kube-apiserver. All must be Ready within 15 minutes of their creation, no
//! srv6pipes object may exceed 1 MiB (the node's program is in bounded slices), and the first
//! and the last chain must steer. Needs root and the lab's tools (skips, saying why, without).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ping, pod_ip, repo_root, sid_packets, ApiServer, Lab};
use serde_json::Value;

const CHAINS: usize = 10_000;
const READY_WITHIN: Duration = Duration::from_secs(15 * 60);

fn chain(i: usize, prefix: &str) -> String {
    format!(
        "apiVersion: srv6pipes.io/v1alpha1\nkind: ServiceChain\nmetadata: {{name: c{i:05}, namespace: default}}\n\
         spec:\n  sources: {{podSelector: {{matchLabels: {{app: client}}}}}}\n  match: {{destinationPrefixes: [\"{prefix}\"]}}\n\
         \x20 functions: [{{name: firewall, podSelector: {{matchLabels: {{vnf: firewall}}}}}}]\n"
    )
}

/// Chains by their Ready condition's status and reason ("True/Programmed", "False/ProgramFailed",
/// "none" while a chain has no condition yet), with counts.
fn readiness(api: &ApiServer) -> BTreeMap<String, usize> {
    let list: Value = serde_json::from_str(&api.k(&["get", "servicechains", "-o", "json"])).unwrap();
    let mut by = BTreeMap::new();
    for c in list["items"].as_array().unwrap() {
        let ready = c["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
        let key = ready
            .map_or("none".to_string(), |r| format!("{}/{}", r["status"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or("?")));
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

/// Chains Ready, of those counted by [`readiness`].
fn ready(by: &BTreeMap<String, usize>) -> usize {
    by.iter().filter(|(k, _)| k.starts_with("True/")).map(|(_, n)| n).sum()
}

#[test]
#[ignore = "the scale tier: scripts/test --scale"]
fn ten_thousand_chains_on_one_node_become_ready_and_steer() {
    require_lab!("nft", "kubectl");
    let Some(api) = ApiServer::start("scale") else { return };
    let lab = Lab::new("scale");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let nodes_and_pods: Vec<&str> = text.split("\n---\n").filter(|d| !d.contains("kind: ServiceChain")).collect();
    let file = lab.state.with_extension("nodes.yaml");
    std::fs::write(&file, nodes_and_pods.join("\n---\n")).unwrap();
    lab.ok(&["up", "-f", file.to_str().unwrap(), "--kubeconfig", api.kubeconfig.to_str().unwrap()]);

    // The first chain goes to the server's /64 (its replies come back through the chain), the
    // others each to a /64 of their own.
    let server = pod_ip(&lab.status(), "server", true);
    let s = server.parse::<std::net::Ipv6Addr>().unwrap().segments();
    let server_net = format!("{}/64", std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0));
    let prefix = |i: usize| if i == 0 { server_net.clone() } else { format!("fd00:99:{i:x}::/64") };
    let chains: Vec<String> = (0..CHAINS).map(|i| chain(i, &prefix(i))).collect();
    let started = Instant::now();
    for (n, batch) in chains.chunks(1000).enumerate() {
        let file = lab.state.with_extension(format!("chains-{n}.yaml"));
        std::fs::write(&file, batch.join("---\n")).unwrap();
        api.k(&["create", "-f", file.to_str().unwrap()]);
    }
    eprintln!("scale: {CHAINS} chains created in {:.0} s", started.elapsed().as_secs_f64());
    let mut last = BTreeMap::new();
    let all_ready = loop {
        let by = readiness(&api);
        let n = ready(&by);
        if by != last {
            eprintln!("scale: {n} chains Ready after {:.0} s ({by:?})", started.elapsed().as_secs_f64());
            last = by;
        }
        if n == CHAINS {
            break started.elapsed();
        }
        assert!(started.elapsed() < READY_WITHIN, "{n} of {CHAINS} chains Ready after {:?} ({last:?})", started.elapsed());
        std::thread::sleep(Duration::from_secs(10));
    };

    // n1 holds every chain's headend, in slices none of which is over 1 MiB, all programmed.
    let programmed = || -> (Vec<Value>, usize, bool) {
        let list: Value = serde_json::from_str(&api.k(&["get", "nodeprogramslices", "-l", "srv6pipes.io/node=n1", "-o", "json"])).unwrap();
        let items = list["items"].as_array().unwrap().clone();
        let headends = items.iter().map(|s| s["spec"]["tables"]["headends"].as_array().map_or(0, |h| h.len())).sum();
        let observed = items.iter().all(|s| s["status"]["observedGeneration"] == s["metadata"]["generation"]);
        (items, headends, observed)
    };
    let (slices, programmed_after) = loop {
        let (items, headends, observed) = programmed();
        if headends == CHAINS && observed {
            break (items, started.elapsed());
        }
        assert!(started.elapsed() < READY_WITHIN, "n1 programmed {headends} of {CHAINS} headends (all slices observed: {observed})");
        std::thread::sleep(Duration::from_secs(5));
    };
    let sizes: Vec<usize> = slices.iter().map(|s| serde_json::to_vec(s).unwrap().len()).collect();
    let largest = *sizes.iter().max().unwrap();
    assert!(largest < 1 << 20, "a slice of {largest} bytes");
    for kind in ["servicechains", "nodesidtables", "nodeprogramslices"] {
        let list: Value = serde_json::from_str(&api.k(&["get", kind, "-A", "-o", "json"])).unwrap();
        for o in list["items"].as_array().unwrap() {
            let bytes = serde_json::to_vec(o).unwrap().len();
            assert!(bytes < 1 << 20, "{kind} {} is {bytes} bytes", o["metadata"]["name"]);
        }
    }
    eprintln!(
        "scale: all {CHAINS} Ready after {:.0} s, n1 programmed after {:.0} s, in {} slices of at most {} KiB",
        all_ready.as_secs_f64(),
        programmed_after.as_secs_f64(),
        slices.len(),
        largest / 1024
    );

    // The first chain carries the pings to the server and back; the last steers its /64's
    // traffic into the firewall (nothing answers there).
    let before = sid_packets(&lab.status(), "n1", "End.AD");
    assert!(ping(&lab, "client", &server, 5), "the first chain carries the pings");
    let after_first = sid_packets(&lab.status(), "n1", "End.AD");
    assert!(after_first >= before + 5, "the first chain steered {} packets", after_first - before);
    let last = format!("fd00:99:{:x}::1", CHAINS - 1);
    ping(&lab, "client", &last, 5);
    let after_last = sid_packets(&lab.status(), "n1", "End.AD");
    assert!(after_last >= after_first + 5, "the last chain steered {} packets", after_last - after_first);
    eprintln!("scale: first chain {} packets steered, last chain {}", after_first - before, after_last - after_first);
    let _ = std::fs::remove_file(&file);
}
