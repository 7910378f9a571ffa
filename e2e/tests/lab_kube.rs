//! The lab in kube mode (`lab up --kubeconfig`) on a real kube-apiserver: `kubectl apply` of a
//! ServiceChain steers real traffic through the VNFs, `kubectl delete` unsteers it, `lab down`
//! leaves nothing registered. Needs root and the lab's tools (skips, saying why, without).

mod common;

use std::time::Duration;

use common::{ping, pod_ip, repo_root, sid_packets, wait_for, ApiServer, Lab};

/// The two-node example split into its Nodes and Pods (for `lab up`) and its chain (for kubectl).
fn example() -> (String, String) {
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let (chains, rest): (Vec<&str>, Vec<&str>) = docs.into_iter().partition(|d| d.contains("kind: ServiceChain"));
    (rest.join("\n---\n"), chains.join("\n---\n"))
}

#[test]
fn kubectl_apply_and_delete_steer_and_unsteer_lab_traffic() {
    require_lab!("nft", "kubectl");
    let Some(api) = ApiServer::start("lab") else { return };
    let lab = Lab::new("kube");
    let (nodes_and_pods, chain) = example();
    let file = lab.state.with_extension("nodes.yaml");
    std::fs::write(&file, &nodes_and_pods).unwrap();
    lab.ok(&["up", "-f", file.to_str().unwrap(), "--kubeconfig", api.kubeconfig.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);

    // The lab registered what a kubelet would.
    let nodes = api.k(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.annotations.srv6pipes\\.io/locator}"]);
    assert_eq!(nodes, "fcbb:bb00:1::/48 fcbb:bb00:2::/48");
    let phases = api.k(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"]);
    assert_eq!(phases, "Running Running Running Running");
    // The daemons published their SIDs through the API (NodeSidTables).
    let sids = api.k(&["get", "nodesidtables", "-o", "jsonpath={.items[*].spec.registrations[*].sid}"]);
    assert_eq!(sids, "fcbb:bb00:1:e001:: fcbb:bb00:2:e001::");
    // A daemon's table deleted: published again. Its Node deleted and registered again under
    // its name (the operator removes what the node had): the table comes back owned by the new
    // Node (whose uid the garbage collector checks).
    api.k(&["delete", "nodesidtable", "n1"]);
    let table_of = |node: &str| api.get(&["nodesidtable", node]);
    wait_for("n1's table published again", Duration::from_secs(15), || {
        table_of("n1").is_some_and(|t| t["spec"]["registrations"][0]["sid"] == "fcbb:bb00:1:e001::")
    });
    let mut n1 = api.get(&["node", "n1"]).unwrap();
    let old_uid = n1["metadata"]["uid"].as_str().unwrap().to_string();
    let node_status = n1["status"].clone();
    for field in ["uid", "resourceVersion", "creationTimestamp", "managedFields"] {
        n1["metadata"].as_object_mut().unwrap().remove(field);
    }
    n1.as_object_mut().unwrap().remove("status");
    api.k(&["delete", "node", "n1"]);
    api.apply(&n1.to_string());
    api.k(&["patch", "node", "n1", "--subresource=status", "--type=merge", "-p", &serde_json::json!({"status": node_status}).to_string()]);
    let new_uid = api.get(&["node", "n1"]).unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
    assert_ne!(new_uid, old_uid);
    wait_for("n1's table owned by the new Node", Duration::from_secs(30), || {
        table_of("n1").is_some_and(|t| {
            t["metadata"]["ownerReferences"][0]["uid"] == new_uid.as_str() && t["spec"]["registrations"][0]["sid"] == "fcbb:bb00:1:e001::"
        })
    });

    let status = lab.status();
    let server = pod_ip(&status, "server", true);
    assert!(ping(&lab, "client", &server, 2), "client reaches the server before any chain");
    assert_eq!(sid_packets(&lab.status(), "n1", "End.AD"), 0, "no proxy crossed before any chain");

    // kubectl apply: steered through both VNFs.
    api.apply(&chain);
    wait_for("the chain to be Ready", Duration::from_secs(30), || {
        api.k(&["get", "servicechains"])
            .lines()
            .any(|l| l.starts_with("web-inspection") && l.contains(" True ") && l.contains("Programmed"))
    });
    wait_for("both nodes to program the chain", Duration::from_secs(30), || {
        api.k(&["get", "nodeprogramslices", "-o", "jsonpath={.items[*].status.conditions[0].status}"]) == "True True"
            && api.get(&["nodeprogramslice", "n1.0"]).unwrap()["spec"]["tables"]["headends"].as_array().is_some_and(|h| !h.is_empty())
    });
    // Each daemon says it is ready: its node's current program is in the datapath.
    for n in ["n1", "n2"] {
        let got = lab.run(&["exec", "--node", n, "--", "sh", "-c", "printf 'GET /readyz HTTP/1.1\\r\\n\\r\\n' | socat - TCP6:[::1]:9464"]);
        let got = String::from_utf8_lossy(&got.stdout).into_owned();
        assert!(got.starts_with("HTTP/1.0 200 OK") && got.ends_with("\r\n\r\nok\n"), "{n}'s /readyz: {got:?}");
    }
    let table = api.k(&["get", "servicechains"]);
    println!("kubectl get servicechains:\n{table}");
    // The printer columns: condition, functions and the number of paths; the raw segment lists
    // only with -o wide; every srv6pipes kind under `kubectl get srv6pipes`.
    let row: Vec<&str> = table.lines().find(|l| l.starts_with("web-inspection")).unwrap().split_whitespace().collect();
    assert_eq!(row[..5], ["web-inspection", "True", "Programmed", "firewall,ids", "1"], "{table}");
    assert!(!table.contains("fcbb:"), "segments only with -o wide: {table}");
    let wide = api.k(&["get", "servicechains", "-o", "wide"]);
    assert!(wide.contains("[\"fcbb:bb00:1:e001::\",\"fcbb:bb00:2:e001::\",\"fcbb:bb00:2:d6::\"]"), "{wide}");
    // The CLI through the API server (--kubeconfig addresses the cluster, not the lab): the same
    // chain row; the lab's daemons are no pods, so their counters are missing, each node named.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::target_dir().join("srv6pipes"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .output()
            .unwrap();
        assert!(out.status.success(), "srv6pipes {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let chains = cli(&["chains"]);
    assert!(chains.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["default/web-inspection", "True", "Programmed", "firewall,ids", "1", "-"]), "{chains}");
    let trace: serde_json::Value = serde_json::from_str(&cli(&["trace", "web-inspection", "-o", "json"])).unwrap();
    assert_eq!(trace["hops"][1]["replicas"][0]["node"], "n2", "{trace}");
    assert_eq!(trace["sources"], serde_json::json!([{"pod": "default/client", "node": "n1"}]), "{trace}");
    assert_eq!(trace["unreachable"]["n1"], "no srv6pipes-node pod runs there", "{trace}");
    assert!(cli(&["wait", "web-inspection", "--timeout", "5s"]).starts_with("default/web-inspection: Ready (Programmed)"));
    let all = api.k(&["get", "srv6pipes", "-o", "name"]);
    for kind in ["servicechain.srv6pipes.io/web-inspection", "nodesidtable.srv6pipes.io/n1", "nodeprogramslice.srv6pipes.io/n1.0"] {
        assert!(all.lines().any(|l| l == kind), "kubectl get srv6pipes lists {kind}: {all}");
    }
    assert!(ping(&lab, "client", &server, 5), "the chain carries the pings");
    let status = lab.status();
    assert!(sid_packets(&status, "n1", "End.AD") >= 5, "firewall's SID steered: {}", status["sids"]);
    assert!(sid_packets(&status, "n2", "End.AD") >= 5, "ids's SID steered: {}", status["sids"]);
    let ids = lab.nft_counters("ids", "ip6 vnf");
    assert!(ids[1] >= 5 && ids[0] == 0, "the ids saw marked packets only: {ids:?}");

    // kubectl delete: unsteered, once the finalizer has cleaned the nodes.
    api.k(&["delete", "servicechain", "web-inspection", "--timeout=30s"]);
    wait_for("n1 to drop the headend", Duration::from_secs(30), || {
        let p = api.get(&["nodeprogramslice", "n1.0"]).unwrap();
        p["spec"]["tables"]["headends"].as_array().is_some_and(|h| h.is_empty())
            && p["status"]["observedGeneration"] == p["metadata"]["generation"]
    });
    let before = sid_packets(&lab.status(), "n1", "End.AD");
    assert!(ping(&lab, "client", &server, 3), "direct path after the chain is gone");
    assert_eq!(sid_packets(&lab.status(), "n1", "End.AD"), before, "nothing steered after kubectl delete");

    // lab down unregisters its Nodes, Pods and their srv6pipes objects. A chain applied again
    // stays, but without the cleanup finalizer no operator would remove once the lab's stops:
    // deleting it later does not hang.
    api.apply(&chain);
    wait_for("the chain's finalizer", Duration::from_secs(30), || {
        api.get(&["servicechain", "web-inspection"])
            .is_some_and(|c| c["metadata"]["finalizers"] == serde_json::json!(["srv6pipes.io/cleanup"]))
    });
    lab.ok(&["down"]);
    assert_eq!(api.k(&["get", "nodes,pods,nodeprogramslices,nodeprograms,nodesidtables", "-o", "name"]), "");
    api.k(&["delete", "servicechain", "web-inspection", "--timeout=10s"]);
    assert_eq!(api.k(&["get", "servicechains", "-A", "-o", "name"]), "");
}
