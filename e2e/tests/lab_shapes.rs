//! Tier 3: the shapes real clusters have (examples/lab-four-nodes.yaml), on the real kernel with
//! real traffic: every function on a node that is neither the source's nor the destination's
//! (each hop pops the encapsulation and pushes it again on another node), a strict conntrack
//! firewall with two replicas in a symmetric chain, TCP with GSO/GRO both ways, UDP GSO
//! (`UDP_SEGMENT`, as QUIC stacks send), IPv4 and IPv6. Needs root, nftables, iperf3 and
//! socat; without them the tests say why and skip.

use std::time::Duration;

use serde_json::Value;

mod common;
use common::{drops, pod_ip, repo_root, wait_for, Lab, Stream};

fn four_nodes(tag: &str) -> Lab {
    let lab = Lab::new(tag);
    lab.ok(&["up", "-f", repo_root().join("examples/lab-four-nodes.yaml").to_str().unwrap()]);
    for pod in ["firewall-0", "firewall-1", "ids"] {
        wait_for("VNF rules", Duration::from_secs(10), || lab.exec(pod, &["nft", "list", "table", "inet", "vnf"]).status.success());
    }
    lab
}

/// The nodes drop what their conntrack calls INVALID, as kube-proxy (`KUBE-FORWARD`) and most
/// host firewalls do; the drops counted per node.
fn drop_invalid_on_every_node(lab: &Lab) {
    for node in ["n1", "n2", "n3", "n4"] {
        let rules =
            "add table inet hostfw; add chain inet hostfw forward { type filter hook forward priority 0; ct state invalid counter drop; }";
        let out = lab.run(&["exec", "--node", node, "--", "nft", rules]);
        assert!(out.status.success(), "{node}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn invalid_drops(lab: &Lab) -> Vec<String> {
    ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| {
            let out = lab.run(&["exec", "--node", n, "--", "nft", "list", "chain", "inet", "hostfw", "forward"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            format!("{n}: {}", text.split("counter ").nth(1).and_then(|c| c.split(" drop").next()).unwrap_or("?"))
        })
        .collect()
}

/// Two replicas of a strict conntrack firewall (a TCP packet of a connection it did not see
/// start is invalid and dropped), on nodes that drop what their own conntrack calls INVALID:
/// 40 sequential connections each over IPv6 and IPv4 all complete, both replicas carry some,
/// none saw an invalid packet (each connection's two directions crossed the same replica), and
/// a 4-stream iperf3 run crosses them too.
#[test]
fn stateful_replicas_see_whole_flows_in_both_directions() {
    require_lab!("nft", "socat", "iperf3", "sysctl");
    let lab = four_nodes("stateful");
    drop_invalid_on_every_node(&lab);
    for fw in ["firewall-0", "firewall-1"] {
        let loose = lab.exec(fw, &["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_loose"]);
        assert_eq!(String::from_utf8_lossy(&loose.stdout).trim(), "0", "{fw} is strict");
    }
    let st = lab.status();
    assert_eq!(st["chains"][0]["status"]["hops"][0]["replicas"].as_array().unwrap().len(), 2, "{}", st["chains"][0]);
    for v6 in [true, false] {
        let server = pod_ip(&st, "server", v6);
        let target = if v6 { format!("TCP6:[{server}]:8080") } else { format!("TCP4:{server}:8080") };
        let script = format!("for i in $(seq 40); do socat -u -T 10 {target},connect-timeout=10 -; done");
        let out = lab.exec("client", &["sh", "-c", &script]);
        let answers = String::from_utf8_lossy(&out.stdout).matches("hello from server").count();
        let fw: Vec<Vec<u64>> = ["firewall-0", "firewall-1"].iter().map(|p| lab.nft_counters(p, "inet vnf")).collect();
        assert_eq!(
            answers,
            40,
            "IPv6 {v6}: every connection completes; firewall counters [invalid, new, all]: {fw:?}; {}; drops {:?}; nodes' INVALID drops {:?}",
            String::from_utf8_lossy(&out.stderr),
            drops(&lab),
            invalid_drops(&lab)
        );
    }
    let fw: Vec<Vec<u64>> = ["firewall-0", "firewall-1"].iter().map(|p| lab.nft_counters(p, "inet vnf")).collect();
    assert!(fw.iter().all(|c| c[1] >= 5), "both replicas carry connections (new): {fw:?}");
    let server6 = pod_ip(&st, "server", true);
    let got = common::iperf3(&lab, &server6, false, &["-P", "4"]);
    assert!(got["bytes"].as_u64().unwrap() > 10_000_000, "{got}");
    let fw: Vec<Vec<u64>> = ["firewall-0", "firewall-1"].iter().map(|p| lab.nft_counters(p, "inet vnf")).collect();
    assert!(fw.iter().all(|c| c[0] == 0), "no invalid packet at either replica: {fw:?}");
    assert_eq!(drops(&lab), [], "srv6pipes dropped nothing");
}

/// ICMP errors about a chain's packets reach its source on nodes that drop what their own
/// conntrack calls INVALID (their conntrack never saw the steered flow plain): the server's
/// port unreachable (back through the symmetric chain, across the replica that carries the
/// flow: the other one's strict conntrack would drop it), srv6pipes' Time Exceeded for a
/// packet whose hop limit runs out at a proxy, and a rejecting firewall's errors and TCP
/// resets, IPv6 and IPv4.
#[test]
fn icmp_errors_about_a_chains_packets_reach_their_source() {
    require_lab!("nft", "ping", "python3");
    let lab = four_nodes("icmp");
    drop_invalid_on_every_node(&lab);
    let st = lab.status();
    // A connected UDP socket hears of the port unreachable as ECONNREFUSED.
    let udp = "import socket,sys\n\
        a = sys.argv[1]\n\
        s = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.settimeout(3)\n\
        s.connect((a, 9))\n\
        s.send(b'x')\n\
        try:\n    s.recv(1)\n    print('answered')\n\
        except ConnectionRefusedError:\n    print('refused')\n\
        except socket.timeout:\n    print('no answer')\n";
    let ping = |args: &[&str]| -> String {
        let out = lab.exec("client", &[&["ping", "-c", "1", "-W", "3"], args].concat());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for v6 in [true, false] {
        let server = pod_ip(&st, "server", v6);
        let out = lab.exec("client", &["python3", "-c", udp, &server]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(said.trim(), "refused", "UDP to {server}:9; nodes' INVALID drops {:?}", invalid_drops(&lab));
        // Hop limit 2: the firewall forwards it with 1, its proxy answers.
        let out = ping(&["-t", "2", &server]);
        assert!(out.contains("exceeded"), "ping -t 2 {server}: {out}; nodes' INVALID drops {:?}", invalid_drops(&lab));
    }
    assert!(drops(&lab).iter().any(|(_, reason, _)| reason == "inner_ttl"), "{:?}", drops(&lab));

    // A rejecting firewall: its ICMP errors and TCP resets reach the client at once. Its stack
    // sends them out of its chain interface, by the mark End.AD put on what they answer (out of
    // its primary interface they would cross its node's conntrack: INVALID).
    let reject = "add rule inet vnf forward iifname net1 meta l4proto { icmp, icmpv6 } reject with icmpx type admin-prohibited; \
                  add rule inet vnf forward iifname net1 tcp dport 8080 reject with tcp reset";
    for fw in ["firewall-0", "firewall-1"] {
        assert!(lab.exec(fw, &["nft", reject]).status.success());
    }
    let tcp = "import socket,sys\n\
        a = sys.argv[1]\n\
        s = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET)\n\
        s.settimeout(3)\n\
        try:\n    s.connect((a, 8080))\n    print('connected')\n\
        except ConnectionRefusedError:\n    print('refused')\n\
        except socket.timeout:\n    print('no answer')\n";
    for v6 in [true, false] {
        let server = pod_ip(&st, "server", v6);
        let out = ping(&[&server]);
        let said = if v6 { "Administratively prohibited" } else { "Packet filtered" };
        assert!(out.contains(said), "ping {server}: {out}; nodes' INVALID drops {:?}", invalid_drops(&lab));
        let out = lab.exec("client", &["python3", "-c", tcp, &server]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(said.trim(), "refused", "TCP to {server}:8080; nodes' INVALID drops {:?}", invalid_drops(&lab));
    }
}

/// Every function remote from both ends: TCP with GSO both ways at ≥ 500 Mbit/s (a GSO packet
/// dropped at a re-encapsulation leaves TCP at kbit/s), and a UDP GSO sender (8 datagrams of
/// 1,200 bytes per send) delivering ≥ 95% of its datagrams both ways, IPv6 and IPv4; then TCP
/// again with GRO on every node's uplink; no srv6pipes drop.
#[test]
fn gso_survives_decapsulation_and_encapsulation_at_every_hop() {
    require_lab!("nft", "iperf3", "ethtool");
    let lab = four_nodes("gso");
    let st = lab.status();
    let tcp_both_ways = |server: &str, gro: &str| {
        for reverse in [false, true] {
            let got = common::iperf3(&lab, server, reverse, &[]);
            let mbps = got["bits_per_second"].as_f64().unwrap() / 1e6;
            assert!(mbps >= 500.0, "TCP to {server} (reverse {reverse}, {gro}): {mbps:.1} Mbit/s; drops {:?}", drops(&lab));
        }
    };
    for v6 in [true, false] {
        let server = pod_ip(&st, "server", v6);
        tcp_both_ways(&server, "GSO");
        let client = pod_ip(&st, "client", v6);
        for (pods, addr) in [(("client", "server"), &server), (("server", "client"), &client)] {
            let stream = Stream::start(&lab, pods, addr, &["--rate", "20000", "--seconds", "1", "--size", "1200", "--gso", "8"]);
            let (sent, got) = stream.finish();
            let (sent, received) = (sent["sent"].as_u64().unwrap(), got["received"].as_u64().unwrap());
            assert!(received * 100 >= sent * 95, "UDP GSO {pods:?} to {addr}: {received} of {sent} datagrams; drops {:?}", drops(&lab));
        }
    }
    // GRO on the nodes' uplinks too (as NICs do): aggregated SRv6 arrives at every hop.
    for node in ["n1", "n2", "n3", "n4"] {
        let out = lab.run(&["exec", "--node", node, "--", "ethtool", "-K", "eth0", "gro", "on"]);
        assert!(out.status.success(), "{node}: {}", String::from_utf8_lossy(&out.stderr));
    }
    tcp_both_ways(&pod_ip(&st, "server", true), "GRO");
    assert_eq!(drops(&lab), [], "srv6pipes dropped nothing");
}

/// An eBPF primary CNI (Cilium, Calico-eBPF) attaches tcx programs on the pods' host-side
/// veths and the uplink that end the tcx chain with `TC_ACT_OK`. A foreign program of that
/// kind (`foreign-tcx`) at the head of the client's veth (n1) and of n2's uplink, attached
/// before a daemon starts and again while it runs: the chain still steers (the firewall and
/// the ids count the pings) and the closed domain still holds (a pod addressing a SID is
/// dropped), because srv6pipes keeps its programs first.
#[test]
fn steering_and_the_closed_domain_hold_beside_an_ebpf_primary_cni() {
    require_lab!("ping", "nft");
    let lab = Lab::new("coexist");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-two-nodes.yaml").to_str().unwrap()]);
    for pod in ["firewall", "ids"] {
        wait_for("VNF rules", Duration::from_secs(10), || lab.exec(pod, &["nft", "list", "table", "ip6", "vnf"]).status.success());
    }
    let st = lab.status();
    let (client6, server6) = (pod_ip(&st, "client", true), pod_ip(&st, "server", true));
    let node_exec = |node: &str, cmd: &[&str]| {
        let mut args = vec!["exec", "--node", node, "--"];
        args.extend_from_slice(cmd);
        lab.run(&args)
    };
    let route = node_exec("n1", &["ip", "-6", "-o", "route", "get", &client6]);
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    let client_veth = route.split(" dev ").nth(1).and_then(|r| r.split_whitespace().next()).expect("the client's veth").to_string();
    let foreign = common::target_dir().join("foreign-tcx");
    let mut n = 0;
    let mut attach_foreign = || {
        for (node, dev) in [("n1", client_veth.as_str()), ("n2", "eth0")] {
            n += 1;
            // Under the lab's pin root: `lab down` removes it, whatever happens here.
            let pin = lab.pin_root().join(format!("foreign-{node}-{n}"));
            let out = node_exec(node, &[foreign.to_str().unwrap(), "attach", "--dev", dev, "--pin", pin.to_str().unwrap()]);
            assert!(out.status.success(), "foreign-tcx on {node}/{dev}: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let steered_and_closed = || {
        let through = |st: &Value, pod: &str| common::sid_of(st, pod)["packets"].as_u64().unwrap();
        let before = lab.status();
        let ok = common::ping(&lab, "client", &server6, 3);
        let after = lab.status();
        let steered = ok
            && through(&after, "default/firewall") >= through(&before, "default/firewall") + 3
            && through(&after, "default/ids") >= through(&before, "default/ids") + 3;
        let closed_before = before["drops"]["n1"]["closed_domain"].as_u64().unwrap();
        let unanswered = common::no_reply(&lab, "client", "fcbb:bb00:2:e001::", 1);
        let closed = unanswered && lab.status()["drops"]["n1"]["closed_domain"].as_u64().unwrap() > closed_before;
        steered && closed
    };
    assert!(steered_and_closed(), "the example chain works to begin with");
    // The foreign programs stay attached (srv6pipes moves itself ahead; it never detaches them)
    // behind srv6pipes' own: `n` of them on each interface.
    let behind = |n: usize| {
        for (node, dev) in [("n1", client_veth.as_str()), ("n2", "eth0")] {
            let out = node_exec(node, &[foreign.to_str().unwrap(), "chain", "--dev", dev]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let names = String::from_utf8_lossy(&out.stdout).into_owned();
            let names: Vec<&str> = names.lines().collect();
            assert!(names.first().is_some_and(|f| f.starts_with("sp_")), "{node}/{dev}: srv6pipes first: {names:?}");
            assert_eq!(names.iter().filter(|p| **p == "foreign_pass").count(), n, "{node}/{dev}: {names:?}");
        }
    };

    // Before the daemons start: both restart (kill -9) with the foreign programs ahead of their
    // pinned links.
    attach_foreign();
    for node in ["n1", "n2"] {
        lab.ok(&["restart-node", node, "--kill"]);
    }
    wait_for("steering and the closed domain after the restarts", Duration::from_secs(10), steered_and_closed);
    behind(1);
    // While they run: a primary CNI re-inserting itself at the head.
    attach_foreign();
    wait_for("steering and the closed domain with a foreign program re-inserted", Duration::from_secs(10), steered_and_closed);
    behind(2);
}
