//! Tier 3: the example lab on the real kernel, with the real binaries and real traffic.
//! Needs root, iproute2, nftables, tcpdump, socat, ping and Debian's CNI plugins; without them
//! the tests say why and skip. The binaries come from `cargo build --workspace` (or
//! `cargo test --workspace`, which builds them first).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{back_chain, hello, no_reply, ping, pod_ip, repo_root, sid_of, sid_packets, target_dir, wait_for, Lab, Stream};

/// tcpdump on a VNF's chain interface, stopped and read back by `finish`.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// On a pod's chain interface, entered through `srv6pipes lab exec`.
    fn start(lab: &Lab, pod: &str) -> Self {
        let file = lab.state.with_extension(format!("{pod}.pcap"));
        let f = file.display().to_string();
        let cmd = lab.cmd(&["exec", pod, "--", "tcpdump", "--immediate-mode", "-i", "net1", "-nn", "-U", "-w", &f]);
        Self::spawn(cmd, file, "net1")
    }

    /// On the underlay bridge: what travels between nodes.
    fn underlay(lab: &Lab) -> Self {
        let file = lab.state.with_extension("underlay.pcap");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-underlay", lab.name), "tcpdump", "--immediate-mode", "-i", "br0", "-nn", "-U", "-w"])
            .arg(&file);
        Self::spawn(cmd, file, "br0")
    }

    fn spawn(mut cmd: Command, file: PathBuf, iface: &str) -> Self {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        err.read_line(&mut line).unwrap();
        assert!(line.contains(&format!("listening on {iface}")), "tcpdump on {iface}: {line}");
        Capture { child, file }
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe_kill(self.child.id(), 2);
            let _ = self.child.wait();
        }
    }

    /// Stops the capture; returns the decoded packets (one line each).
    fn finish(mut self) -> Vec<String> {
        self.stop();
        let out = Command::new("tcpdump").args(["-r"]).arg(&self.file).args(["-nn", "-v"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

/// A test that fails before `finish` leaves no tcpdump (holding its netns) and no file behind.
impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    // `lab exec` forwards nothing: signal its child (tcpdump) too.
    let _ = Command::new("pkill").arg(format!("-{sig}")).arg("-P").arg(pid.to_string()).status();
}

#[test]
fn example_chain_steers_through_both_vnfs_in_order() {
    require_lab!("nft", "tcpdump", "socat", "ping");
    let lab = Lab::new("chain");
    let example = repo_root().join("examples/lab-two-nodes.yaml");
    let up = lab.ok(&["up", "-f", example.to_str().unwrap()]);
    assert!(up.contains("Programmed"), "{up}");
    let st = lab.status();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(st["nodes"][0]["locator"], "fcbb:bb00:1::/48");
    assert_eq!(st["chains"][0]["status"]["conditions"][0]["status"], "True");
    let paths = &st["chains"][0]["status"]["paths"];
    assert_eq!(paths[0]["segments"].as_array().unwrap().len(), 3, "{paths}");
    let server6 = pod_ip(&st, "server", true);
    let server4 = pod_ip(&st, "server", false);
    let fw6 = pod_ip(&st, "firewall", true);
    // The VNFs' nft rules are set by their pod commands: wait for them.
    wait_for("VNF rules", Duration::from_secs(10), || {
        lab.exec("firewall", &["nft", "list", "table", "ip6", "vnf"]).status.success()
            && lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success()
    });

    let fw_cap = Capture::start(&lab, "firewall");
    let ids_cap = Capture::start(&lab, "ids");
    let wire = Capture::underlay(&lab);
    assert!(ping(&lab, "client", &server6, 5), "client -> server through the chain");
    assert_eq!(hello(&lab, "client", &server6), "hello from server", "{}", lab.status()["drops"]);
    let fw_pkts = fw_cap.finish();
    let ids_pkts = ids_cap.finish();
    let wire_pkts = wire.finish();

    // Both VNFs forwarded the chain's traffic; the ids drops unmarked packets, so everything it
    // passed went through the firewall first.
    let fw = lab.nft_counters("firewall", "ip6 vnf");
    let ids = lab.nft_counters("ids", "ip6 vnf");
    assert!(fw[0] >= 6, "firewall marked {fw:?}");
    assert_eq!(ids[0], 0, "ids saw unmarked packets: {ids:?}");
    assert!(ids[1] >= 6, "ids passed {ids:?}");

    // The VNFs are SR-unaware: they saw plain IPv6, no routing header.
    for (vnf, pkts) in [("firewall", &fw_pkts), ("ids", &ids_pkts)] {
        assert!(pkts.iter().any(|l| l.contains("echo request")), "{vnf} captured no echo request: {pkts:?}");
        assert!(!pkts.iter().any(|l| l.contains("srcrt") || l.contains("RT6")), "{vnf} saw a routing header: {pkts:?}");
        assert!(pkts.iter().filter(|l| l.contains("echo request")).all(|l| l.contains(&server6)), "{pkts:?}");
    }

    // Local next segments never leave the node: between n1 and n2 only the hop to the ids'
    // SID travels encapsulated (the firewall's SID is served by n1's headend, the decapsulation
    // SID by n2's outbound proxy).
    let srv6: Vec<&String> = wire_pkts.iter().filter(|l| l.contains("RT6")).collect();
    assert!(srv6.len() >= 6, "SRv6 on the underlay: {wire_pkts:?}");
    let ids_sid = "fcbb:bb00:2:e001::";
    assert!(srv6.iter().all(|l| l.contains(&format!("> {ids_sid}"))), "{srv6:?}");
    assert!(srv6.iter().all(|l| l.contains("fcbb:bb00:1::1 >")), "outer source is n1's SRv6 source: {srv6:?}");

    // Per-SID counters: both proxies and the decapsulation at the server's node.
    let st = lab.status();
    assert!(sid_packets(&st, "n1", "End.AD") >= 6, "{}", st["sids"]);
    assert!(sid_packets(&st, "n2", "End.AD") >= 6, "{}", st["sids"]);
    assert!(sid_packets(&st, "n2", "End.DT46") >= 6, "{}", st["sids"]);

    // `lab exec` gives a pod its own /sys, as `ip netns exec` does: its interfaces only, with the
    // counters netlink reports.
    let names = |text: String| -> std::collections::BTreeSet<String> {
        text.split_whitespace().filter(|n| *n != "bonding_masters").map(String::from).collect()
    };
    let sys = names(lab.ok(&["exec", "ids", "--", "ls", "/sys/class/net"]));
    let links: Vec<Value> = serde_json::from_str(&lab.ok(&["exec", "ids", "--", "ip", "-j", "link", "show"])).unwrap();
    assert_eq!(sys, links.iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect(), "the pod's /sys/class/net");
    let netlink_rx = || {
        let link: Vec<Value> = serde_json::from_str(&lab.ok(&["exec", "ids", "--", "ip", "-s", "-j", "link", "show", "net1"])).unwrap();
        link[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    };
    let before = netlink_rx();
    let rx = lab.ok(&["exec", "ids", "--", "cat", "/sys/class/net/net1/statistics/rx_packets"]).trim().parse::<u64>().unwrap();
    let after = netlink_rx();
    assert!(before >= 6 && (before..=after).contains(&rx), "net1 rx_packets {rx}, netlink {before}..{after}");

    // Traffic outside the chain's match (IPv4, and IPv6 to another prefix) never enters a VNF.
    let before = (lab.nft_counters("firewall", "ip6 vnf"), lab.nft_counters("ids", "ip6 vnf"), lab.status()["sids"].clone());
    assert!(ping(&lab, "client", &server4, 3), "client -> server over IPv4, outside the chain");
    assert!(ping(&lab, "client", &fw6, 3), "client -> firewall's eth0, outside the chain's prefix");
    assert_eq!(lab.nft_counters("firewall", "ip6 vnf"), before.0);
    assert_eq!(lab.nft_counters("ids", "ip6 vnf"), before.1);
    assert_eq!(lab.status()["sids"], before.2);

    // Take the firewall's marking away: the ids now drops everything, which proves the order.
    assert!(lab.exec("firewall", &["nft", "flush", "chain", "ip6", "vnf", "forward"]).status.success());
    assert!(no_reply(&lab, "client", &server6, 2), "ids must drop traffic the firewall did not mark");
    assert!(lab.nft_counters("ids", "ip6 vnf")[0] >= 2);
}

/// The two-node example lab up, with its status and its two daemons' pids.
fn two_nodes_up(tag: &str) -> (Lab, Value, Vec<u64>) {
    let lab = Lab::new(tag);
    let example = repo_root().join("examples/lab-two-nodes.yaml");
    lab.ok(&["up", "-f", example.to_str().unwrap()]);
    let st = lab.status();
    let pids: Vec<u64> = st["nodes"].as_array().unwrap().iter().filter_map(|n| n["daemon"]["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 2);
    (lab, st, pids)
}

/// After a `down`: no netns, pins, state or process of `pids` left (a daemon left running would
/// keep its node netns, and the veths in it, alive), and a second `down` is a no-op.
fn assert_down_left_nothing(lab: &Lab, pids: Vec<u64>) {
    assert!(lab.netns().is_empty(), "netns left: {:?}", lab.netns());
    assert!(!lab.pin_root().exists(), "pins left in {}", lab.pin_root().display());
    assert!(!lab.state.exists(), "state left in {}", lab.state.display());
    for pid in pids {
        // Exited; reaping the orphan is init's business, so a zombie counts as gone.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "{pid} still running: {stat}");
    }
    let again = lab.run(&["down"]);
    assert!(again.status.success(), "a second down is a no-op");
}

#[test]
fn lab_down_leaves_nothing_behind() {
    require_lab!("nft", "tcpdump", "socat", "ping");
    let (lab, _, pids) = two_nodes_up("down");
    assert_eq!(lab.netns().len(), 7, "underlay + 2 nodes + 4 pods: {:?}", lab.netns());
    assert!(lab.pin_root().join("n1/sp_sids").exists());
    // What `lab exec` leaves running, detached from it (a daemonized server), in a pod's netns
    // and a node's: one that ignores SIGTERM too.
    let mut pids = pids;
    for target in [&["server"][..], &["--node", "n1"]] {
        let mut args = vec!["exec"];
        args.extend(target);
        args.extend(["--", "sh", "-c", "setsid sh -c 'trap \"\" TERM; exec sleep 600' </dev/null >/dev/null 2>&1 & echo $!"]);
        let pid: u64 = lab.ok(&args).trim().parse().expect("the leftover's pid");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        pids.push(pid);
    }

    lab.ok(&["down"]);
    assert_down_left_nothing(&lab, pids);
}

/// A lab whose netns went away without it (a bench killed midway, whose sweep then deleted
/// them; a reboot keeps nothing of /run but leaves the same state in a persistent one): `down`
/// still removes what is left, the state included, instead of failing on every call.
#[test]
fn lab_down_finishes_after_its_netns_went_away() {
    require_lab!("nft", "tcpdump", "socat", "ping");
    let (lab, st, pids) = two_nodes_up("gone");
    let nodes: Vec<&str> = st["nodes"].as_array().unwrap().iter().map(|n| n["netns"].as_str().unwrap()).collect();
    assert_eq!(nodes.len(), 2);
    for netns in nodes {
        let out = Command::new("ip").args(["netns", "del", netns]).output().unwrap();
        assert!(out.status.success(), "ip netns del {netns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = lab.run(&["down"]);
    assert!(out.status.success(), "down: {}", String::from_utf8_lossy(&out.stderr));
    assert_down_left_nothing(&lab, pids);
}

#[test]
fn failed_up_cleans_up_and_says_why() {
    require_lab!("nft", "tcpdump", "socat", "ping");
    let lab = Lab::new("fail");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    // A chain whose second function selects no pod cannot be programmed.
    let broken = text.replace("matchLabels: {vnf: ids}}\n", "matchLabels: {vnf: nobody}}\n");
    assert_ne!(broken, text);
    let out = lab.run_yaml("up", &broken);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NoReplicas") && err.contains("ids"), "{err}");
    assert!(lab.netns().is_empty(), "netns left: {:?}", lab.netns());
    assert!(!lab.pin_root().exists());
    assert!(!lab.state.exists());
}

/// A second chain in the other direction (server on n2 -> client on n1, through the firewall on
/// n1 then the ids on n2) takes every remote branch: the headend pushes toward a remote SID,
/// both proxies receive from the underlay, and the last segment is decapsulated by n1's uplink.
#[test]
fn reverse_chain_takes_the_remote_paths() {
    require_lab!("nft", "ping");
    let lab = Lab::new("rev");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let reverse = format!("{text}---{}", back_chain("fd00:10:1::/64"));
    let up = lab.run_yaml("up", &reverse);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let st = lab.status();
    let back = st["chains"].as_array().unwrap().iter().find(|c| c["metadata"]["name"] == "back").unwrap();
    assert_eq!(back["status"]["paths"][0]["segments"], serde_json::json!(["fcbb:bb00:1:e001::", "fcbb:bb00:2:e001::", "fcbb:bb00:1:d6::"]));
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    let client6 = pod_ip(&st, "client", true);
    assert!(ping(&lab, "server", &client6, 5), "server -> client through the reverse chain");
    let ids = lab.nft_counters("ids", "ip6 vnf");
    assert_eq!(ids[0], 0, "everything the ids saw was marked: {ids:?}");
    // Requests went through `back`; the replies through the example chain.
    assert!(ids[1] >= 10, "{ids:?}");
    let st = lab.status();
    assert!(sid_packets(&st, "n1", "End.DT46") >= 5, "n1 decapsulated from the underlay: {}", st["sids"]);
    let drops: u64 = st["drops"]["n1"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(drops, 0, "{}", st["drops"]);
}

/// tcx link ids of the lab's programs (sp_*), from bpftool.
fn sp_link_ids() -> Vec<u64> {
    let progs: Value = serde_json::from_slice(&Command::new("bpftool").args(["-j", "prog", "show"]).output().unwrap().stdout).unwrap();
    let sp: Vec<u64> = progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("sp_")))
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let links: Value = serde_json::from_slice(&Command::new("bpftool").args(["-j", "link", "list"]).output().unwrap().stdout).unwrap();
    let mut ids: Vec<u64> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| sp.contains(&p)))
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

/// The `sp_vnf` filters on the lab's node-side veths: (node, interface, program id).
fn vnf_filters(lab: &Lab) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for node in ["n1", "n2"] {
        let json = |cmd: &[&str]| -> Value {
            let mut args = vec!["exec", "--node", node, "--"];
            args.extend_from_slice(cmd);
            serde_json::from_slice(&lab.run(&args).stdout).unwrap_or(Value::Null)
        };
        let veths = json(&["ip", "-j", "link", "show", "type", "veth"]);
        for dev in veths.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str()) {
            let filters = json(&["tc", "-j", "filter", "show", "dev", dev, "ingress"]);
            for f in filters.as_array().into_iter().flatten().filter(|f| f["options"]["prog"]["name"] == "sp_vnf") {
                out.push((node.to_string(), dev.to_string(), f["options"]["prog"]["id"].as_u64().unwrap_or(0)));
            }
        }
    }
    out
}

/// A sequenced UDP stream at 25 kpps through the chain while the node daemons are killed (-9)
/// and restarted five times: pinned programs, maps and links keep forwarding; nothing is lost
/// or reordered, and the restarted daemons adopt the same links (and swap their programs into the
/// VNF veths' filters in place).
#[test]
fn daemon_kill_and_restart_under_traffic_loses_nothing() {
    require_lab!("nft", "bpftool");
    let lab = Lab::new("restart");
    let example = repo_root().join("examples/lab-two-nodes.yaml");
    lab.ok(&["up", "-f", example.to_str().unwrap()]);
    let st = lab.status();
    let server6 = pod_ip(&st, "server", true);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    // Links of this lab only: the other tests' labs attach and detach concurrently.
    let ours = |ids: Vec<u64>| -> Vec<u64> {
        let pins = lab.pin_root();
        ids.into_iter()
            .filter(|id| {
                ["n1", "n2"].iter().any(|n| {
                    std::fs::read_dir(pins.join(n).join("links")).into_iter().flatten().flatten().any(|e| {
                        let out = Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(e.path()).output().unwrap();
                        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["id"].as_u64() == Some(*id))
                    })
                })
            })
            .collect()
    };
    let links_before = ours(sp_link_ids());
    assert_eq!(links_before.len(), 6, "uplink x2, pod guard/headend x4: {links_before:?}");
    let filters_before = vnf_filters(&lab);
    assert_eq!(filters_before.len(), 2, "firewall and ids: {filters_before:?}");

    // The stream outlasts the restarts however long they take (a loaded machine took more than
    // 12 s for five): it ends 700 ms after the last one, by its stop file.
    let stop = lab.state.join("stream-stop");
    let stop_arg = stop.to_str().unwrap();
    let mut stream = Stream::start(&lab, ("client", "server"), &server6, &["--rate", "25000", "--seconds", "120", "--stop-file", stop_arg]);
    let t = std::time::Instant::now();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        lab.ok(&["restart-node", node, "--kill"]);
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(stream.sending(), "the five restarts took longer than the stream (120 s): {:?}", t.elapsed());
    std::fs::write(&stop, "").unwrap();
    let (sent, got) = stream.finish();
    let sent_n = sent["sent"].as_u64().unwrap();
    eprintln!("five restarts in {:?}; {sent_n} datagrams sent meanwhile", t.elapsed());
    assert!((25_000 * 4..25_000 * 120).contains(&sent_n), "the stream ended early, or not by its stop file: {sent}");
    assert_eq!(got["received"], sent["sent"], "{got}");
    assert_eq!(got["lost"], 0, "{got}");
    assert_eq!(got["reordered"], 0, "{got}");
    assert_eq!(ours(sp_link_ids()), links_before, "the same links, adopted");
    let interfaces = |f: Vec<(String, String, u64)>| f.into_iter().map(|(n, i, _)| (n, i)).collect::<Vec<_>>();
    assert_eq!(interfaces(vnf_filters(&lab)), interfaces(filters_before), "the VNF filters stay, with the last daemon's program");
    // And the stream really crossed the chain.
    let st = lab.status();
    assert!(sid_packets(&st, "n2", "End.AD") >= sent_n, "{}", st["sids"]);
}

/// The ids attached as an interface pair: End.AD delivers into net1, the ids forwards out of
/// net2, and the proxy re-encapsulates from there (its cache is keyed by the return interface).
/// A restarted daemon keeps the policy ids it gave out. A chain added after another takes the
/// next id although it comes first in the program; after a restart both keep theirs (given out
/// afresh in program order, they would swap between the chains under running traffic).
#[test]
fn policy_ids_survive_a_restart() {
    require_lab!();
    let lab = Lab::new("polids");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let up = lab.run_yaml("up", &text);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let chain_doc = text.split("---\n").find(|d| d.contains("kind: ServiceChain")).unwrap();
    let first = chain_doc.replace("name: web-inspection", "name: aa-inspection").replace("fd00:10:2::/64", "fd00:10:3::/64");
    let applied = lab.run_yaml("apply", &first);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let state = lab.state.join("nodes/n1/node-state.json");
    // Each chain's policy id on n1, from the daemon's state file.
    let ids = || -> Vec<(String, u64)> {
        let v: Value = std::fs::read(&state).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let mut ids: Vec<(String, u64)> = v["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p[0]["chain"].as_str().unwrap_or_default().to_string(), p[1].as_u64().unwrap_or(0)))
            .collect();
        ids.sort();
        ids
    };
    wait_for("both chains' policies on n1", Duration::from_secs(10), || ids().len() == 2);
    let before = ids();
    assert!(
        before[0].0.contains("aa-inspection") && before[0].1 > before[1].1,
        "the later chain, first by name, has the higher id: {before:?}"
    );
    lab.ok(&["restart-node", "n1"]);
    assert_eq!(ids(), before);
}

#[test]
fn pair_attachment_carries_the_chain() {
    require_lab!("nft", "ping", "tcpdump");
    let lab = Lab::new("pair");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let anchor = "  labels: {vnf: ids}\n  annotations:\n";
    assert!(text.contains(anchor));
    let paired = text.replace(anchor, &format!("{anchor}    srv6pipes.io/interfaces: pair\n"));
    let up = lab.run_yaml("up", &paired);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    assert!(lab.exec("ids", &["ip", "link", "show", "net2"]).status.success(), "ids has net2");
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    let st = lab.status();
    let server6 = pod_ip(&st, "server", true);
    let file = lab.state.with_extension("net2.pcap");
    let f = file.display().to_string();
    let cap =
        Capture::spawn(lab.cmd(&["exec", "ids", "--", "tcpdump", "--immediate-mode", "-i", "net2", "-nn", "-U", "-w", &f]), file, "net2");
    assert!(ping(&lab, "client", &server6, 4), "client -> server through a paired ids");
    let out = cap.finish();
    assert!(out.iter().filter(|l| l.contains("echo request")).count() >= 4, "the ids forwarded out of net2: {out:?}");
    let ids = lab.nft_counters("ids", "ip6 vnf");
    assert_eq!(ids[0], 0);
    assert!(ids[1] >= 4, "{ids:?}");
}

/// Sends three SRv6 packets from the pod it runs in, built by hand through a raw socket
/// (IPPROTO_RAW: the header included), as a pod that does SRv6 itself would, whatever its
/// kernel offers (some kernels have no seg6 routes): `SRC DST SEG...` (the segments in the
/// order they are visited), an ICMPv6 echo request from SRC to DST inside.
const SELF_MADE_SRV6: &str = r#"
import socket, struct, sys
src, dst, *segs = sys.argv[1:]
a = lambda x: socket.inet_pton(socket.AF_INET6, x)
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b + b"\0" * (len(b) % 2)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def ip6(src, dst, nh, payload):
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + a(src) + a(dst) + payload
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
for seq in (1, 2, 3):
    echo = struct.pack("!BBHHH", 128, 0, 0, 0x5E6, seq) + b"srv6pipes closed"
    sum_ = checksum(a(src) + a(dst) + struct.pack("!I3xB", len(echo), 58) + echo)
    echo = echo[:2] + struct.pack("!H", sum_) + echo[4:]
    n = len(segs)
    srh = struct.pack("!BBBBBBH", 41, 2 * n, 4, n - 1, n - 1, 0, 0) + b"".join(a(s) for s in reversed(segs))
    sock.sendto(ip6(src, segs[0], 43, srh + ip6(src, dst, 58, echo)), (segs[0], 0))
"#;

/// The SR domain is closed (RFC 8754 §5.1): no pod reaches a SID, not even with SRv6 it builds
/// itself (straight to the ids, then the decapsulation SID), so the ids can never be reached
/// without the firewall. Pods that are no chain source are guarded too.
#[test]
fn pods_cannot_skip_a_function_by_addressing_its_sid() {
    require_lab!("nft", "ping", "python3", "tcpdump");
    let lab = Lab::new("closed");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-two-nodes.yaml").to_str().unwrap()]);
    let st = lab.status();
    let (client6, server6) = (pod_ip(&st, "client", true), pod_ip(&st, "server", true));
    let ids_sid = "fcbb:bb00:2:e001::";
    let drops = |node: &str| lab.status()["drops"][node]["closed_domain"].as_u64().unwrap();
    assert!(no_reply(&lab, "client", ids_sid, 2), "the ids' SID is not reachable from a pod");
    assert!(drops("n1") >= 2);
    assert!(no_reply(&lab, "server", "fcbb:bb00:1:e001::", 2), "nor from a pod that is no chain source");
    assert!(drops("n2") >= 2);
    let before = (lab.nft_counters("ids", "ip6 vnf"), drops("n1"));
    let file = lab.state.with_extension("client.pcap");
    let f = file.display().to_string();
    let cap = Capture::spawn(
        lab.cmd(&["exec", "client", "--", "tcpdump", "--immediate-mode", "-i", "eth0", "-nn", "-U", "-w", &f]),
        file,
        "eth0",
    );
    let sent = lab.exec("client", &["python3", "-c", SELF_MADE_SRV6, &client6, &server6, ids_sid, "fcbb:bb00:2:d6::"]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    // What the pod sent is well-formed SRv6 (an SRH with both segments, the echo request's
    // checksum right inside): what a working chain would carry, had the domain been open.
    let out = cap.finish().join("\n");
    let srh = format!("segleft=1, last-entry=1, flags=0x0, tag=0, [0]fcbb:bb00:2:d6::, [1]{ids_sid})");
    assert_eq!(out.matches(&srh).count(), 3, "{out}");
    assert_eq!(out.matches("[icmp6 sum ok] ICMP6, echo request").count(), 3, "{out}");
    wait_for("the drops counted", Duration::from_secs(5), || drops("n1") >= before.1 + 3);
    assert_eq!(lab.nft_counters("ids", "ip6 vnf"), before.0, "the ids saw nothing");
    assert!(ping(&lab, "client", &server6, 2), "the chain works as before");
}

/// The dual-stack example: IPv4 and IPv6 both cross the firewall then the ids (ICMP and TCP),
/// and a reverse chain applied to the running lab takes IPv4 through every remote branch
/// (headend push toward another node, End.AD from the underlay, decapsulation at the uplink).
#[test]
fn dual_stack_chain_carries_ipv4_and_ipv6() {
    require_lab!("nft", "ping", "socat");
    let lab = Lab::new("dual");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-dual-stack.yaml").to_str().unwrap()]);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "inet", "vnf"]).status.success());
    let st = lab.status();
    let (server4, server6, client4) = (pod_ip(&st, "server", false), pod_ip(&st, "server", true), pod_ip(&st, "client", false));
    assert!(ping(&lab, "client", &server4, 4), "IPv4 through the chain");
    assert!(ping(&lab, "client", &server6, 4), "IPv6 through the chain");
    assert_eq!(hello(&lab, "client", &server4), "hello from server", "{}", lab.status()["drops"]);
    let ids = |lab: &Lab| lab.nft_counters("ids", "inet vnf");
    let counts = ids(&lab);
    assert_eq!((counts[0], counts[1]), (0, 0), "nothing unmarked: {counts:?}");
    assert!(counts[2] >= 11, "{counts:?}");

    let back = back_chain("10.10.1.0/24");
    let applied = lab.run_yaml("apply", &back);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let before = ids(&lab)[2];
    assert!(ping(&lab, "server", &client4, 4), "server -> client over IPv4 through the reverse chain");
    assert!(ids(&lab)[2] >= before + 8, "requests via `back`, replies via the first chain");
    let st = lab.status();
    assert!(sid_packets(&st, "n1", "End.DT46") >= 4, "IPv4 decapsulated at n1's uplink: {}", st["sids"]);
    let drops: u64 = ["n1", "n2"].iter().flat_map(|n| st["drops"][n].as_object().unwrap().values()).map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(drops, 0, "{}", st["drops"]);
}

/// Pods keep their primary MTU (1500); the chain carries 1324 (the uplink less the largest
/// SRv6 headers). Nothing is lost silently: oversize packets are answered with Packet Too Big /
/// Fragmentation Needed and the sender recovers (its fragments are steered too); TCP SYNs get a
/// clamped MSS; an ICMP error a VNF generates reaches the source.
#[test]
fn oversize_packets_and_vnf_errors_reach_the_source() {
    require_lab!("nft", "ping", "socat");
    let lab = Lab::new("mtu");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-dual-stack.yaml").to_str().unwrap()]);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "inet", "vnf"]).status.success());
    let st = lab.status();
    let (server4, server6) = (pod_ip(&st, "server", false), pod_ip(&st, "server", true));
    let ping_out = |args: &[&str]| -> (bool, String) {
        let out = lab.exec("client", &[&["ping", "-i", "0.2", "-W", "2"], args].concat());
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    // (TCP first: once the client knows the path MTU it announces a fitting MSS by itself.)
    assert_eq!(hello(&lab, "client", &server6), "hello from server", "{}", lab.status()["drops"]);
    let (_, out6) = ping_out(&["-6", "-c", "2", "-M", "do", "-s", "1400", &server6]);
    assert!(out6.contains("mtu=1324"), "ICMPv6 Packet Too Big from the headend: {out6}");
    let (_, out4) = ping_out(&["-4", "-c", "2", "-M", "do", "-s", "1400", &server4]);
    assert!(out4.contains("mtu = 1324"), "ICMP Fragmentation Needed from the headend: {out4}");
    // Having learnt the path MTU, the client fragments; every fragment crosses the chain.
    for (fam, server) in [("-6", &server6), ("-4", &server4)] {
        let (ok, out) = ping_out(&[fam, "-c", "3", "-M", "want", "-s", "1400", server]);
        assert!(ok, "{fam} big pings after PMTU discovery: {out}");
    }
    let st = lab.status();
    assert!(st["events"]["n1"]["icmp_sent"].as_u64().unwrap() >= 2, "{}", st["events"]);
    assert!(st["events"]["n1"]["mss_clamped"].as_u64().unwrap() >= 1, "{}", st["events"]);
    assert!(st["drops"]["n1"]["mtu"].as_u64().unwrap() >= 2, "{}", st["drops"]);
    let ids = lab.nft_counters("ids", "inet vnf");
    assert_eq!((ids[0], ids[1]), (0, 0), "fragments and all crossed the firewall first: {ids:?}");

    // The firewall now refuses the chain's traffic: its ICMP errors reach the client (routed
    // back, not sent on down the chain toward the server).
    assert!(lab.exec("firewall", &["nft", "flush", "chain", "inet", "vnf", "forward"]).status.success());
    let rule = ["nft", "add", "rule", "inet", "vnf", "forward", "iifname", "net1", "reject", "with", "icmpx", "type", "admin-prohibited"];
    assert!(lab.exec("firewall", &rule).status.success());
    let (ok, out6) = ping_out(&["-6", "-c", "2", &server6]);
    assert!(!ok && out6.contains("Administratively prohibited"), "{out6}");
    let (ok, out4) = ping_out(&["-4", "-c", "2", &server4]);
    assert!(!ok && out4.contains("Packet filtered"), "{out4}");
}

/// The operator's view: `srv6pipes stats`, `srv6pipes trace CHAIN` and each node daemon's
/// Prometheus endpoint agree with the traffic that was sent, drops included.
#[test]
fn stats_trace_and_metrics_show_the_traffic() {
    require_lab!("nft", "ping", "socat");
    let lab = Lab::new("obs");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-two-nodes.yaml").to_str().unwrap()]);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    let server6 = pod_ip(&lab.status(), "server", true);
    assert!(ping(&lab, "client", &server6, 5));
    assert!(no_reply(&lab, "client", "fcbb:bb00:2:e001::", 1), "a closed-domain drop to count");
    let top_as = |args: &[&str], format: &str| -> String {
        let out = Command::new(target_dir().join("srv6pipes"))
            .args(args)
            .args(["--name", &lab.name, "--state-dir"])
            .arg(&lab.state)
            .args(["-o", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} -o {format}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let top = |args: &[&str]| -> Value { serde_json::from_str(&top_as(args, "json")).unwrap() };
    let stats = top(&["stats"]);
    let chain = &stats["chains"][0];
    assert_eq!((chain["chain"].as_str(), chain["node"].as_str()), (Some("default/web-inspection"), Some("n1")));
    assert!(chain["packets"].as_u64().unwrap() >= 5, "{stats}");
    assert!(stats["drops"]["n1"]["closed_domain"].as_u64().unwrap() >= 1, "{stats}");

    let trace = top(&["trace", "web-inspection"]);
    assert_eq!(trace["ready"], "True");
    assert_eq!(trace["hops"].as_array().unwrap().len(), 2);
    for (hop, node) in [(0, "n1"), (1, "n2")] {
        let r = &trace["hops"][hop]["replicas"][0];
        assert_eq!(r["node"], node);
        assert!(r["counters"]["packets"].as_u64().unwrap() >= 5, "{trace}");
    }
    assert_eq!(trace["decap"]["node"], "n2");
    assert!(trace["decap"]["counters"]["packets"].as_u64().unwrap() >= 5);
    assert!(trace["headends"][0]["packets"].as_u64().unwrap() >= 5);
    assert_eq!(trace["sources"], serde_json::json!([{"pod": "default/client", "node": "n1"}]));

    // The same trace as a picture: Graphviz's dot reads it (and draws it as SVG), Mermaid for docs.
    let dot = top_as(&["trace", "web-inspection"], "dot");
    assert!(dot.contains("s0 -> h0 [label=\"") && dot.contains("r2_0 -> d [label=\""), "{dot}");
    if Command::new("dot").arg("-V").output().is_ok() {
        let svg = top_as(&["trace", "web-inspection"], "svg");
        assert!(svg.contains("<svg") && svg.contains("1: firewall") && svg.contains("pkts"), "{svg}");
    } else {
        eprintln!("skipping trace -o svg: Graphviz's dot is not installed (scripts/deps installs graphviz)");
    }
    let mermaid = top_as(&["trace", "web-inspection"], "mermaid");
    assert!(mermaid.contains("flowchart LR\n") && mermaid.contains("r1_0 -->|"), "{mermaid}");

    let metrics =
        lab.run(&["exec", "--node", "n1", "--", "sh", "-c", "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | socat - TCP6:[::1]:9464"]);
    let text = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    let value = |prefix: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("srv6pipes_chain_packets_total{node=\"n1\",namespace=\"default\",chain=\"web-inspection\"}") >= 5);
    let sid = "srv6pipes_sid_packets_total{node=\"n1\",sid=\"fcbb:bb00:1:e001::\",behavior=\"End.AD\",namespace=\"default\",pod=\"firewall\",interface=\"net1\"}";
    assert!(value(sid) >= 5);
    assert!(value("srv6pipes_drops_total{node=\"n1\",reason=\"closed_domain\"}") >= 1);
    assert!(value("srv6pipes_node_program_apply_duration_seconds_count") >= 1, "the lab programmed n1");
    assert!(value("srv6pipes_build_info{component=\"node\",version=\"") == 1);
    common::promtool_check(text.split_once("\r\n\r\n").map_or("", |(_, b)| b));
    // Every node metric the chart's Grafana dashboard queries is served.
    for name in common::dashboard_metrics().iter().filter(|n| !n.starts_with("srv6pipes_operator_")) {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard queries {name}: not served\n{text}"
        );
    }
}

/// Two ids replicas: flows spread over both, a flow stays on its replica; with the ids down,
/// failurePolicy Closed drops the chain's traffic (counted, never delivered unsteered) and Open
/// bypasses the ids (Degraded).
#[test]
fn replicas_by_flow_hash_and_failure_policies() {
    require_lab!("nft", "ping");
    let lab = Lab::new("repl");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let ids_doc = text.split("---\n").find(|d| d.contains("name: ids\n")).unwrap().to_string();
    let with_b = text.replacen(&ids_doc, &format!("{ids_doc}---\n{}", ids_doc.replace("name: ids\n", "name: ids-b\n")), 1);
    let up = lab.run_yaml("up", &with_b);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    for pod in ["ids", "ids-b"] {
        wait_for("VNF rules", Duration::from_secs(10), || lab.exec(pod, &["nft", "list", "table", "ip6", "vnf"]).status.success());
    }
    let st = lab.status();
    assert_eq!(st["chains"][0]["status"]["hops"][1]["replicas"].as_array().unwrap().len(), 2);
    let server6 = pod_ip(&st, "server", true);
    let per_replica = || -> Vec<u64> {
        let st = lab.status();
        ["default/ids", "default/ids-b"].iter().map(|p| sid_of(&st, p)["packets"].as_u64().unwrap()).collect()
    };
    let seqflow = target_dir().join("seqflow");
    let to = format!("[{server6}]:9000");
    let send = |flows: &str| {
        let out =
            lab.exec("client", &[seqflow.to_str().unwrap(), "send", "--to", &to, "--rate", "2000", "--seconds", "0.5", "--flows", flows]);
        assert!(out.status.success());
    };
    send("32");
    let spread = per_replica();
    assert!(spread.iter().all(|n| *n >= 50), "32 flows use both replicas: {spread:?}");
    send("1");
    let after = per_replica();
    let moved: Vec<u64> = after.iter().zip(&spread).map(|(a, b)| a - b).collect();
    assert!(moved.contains(&0) && moved.iter().sum::<u64>() == 1000, "one flow, one replica: {moved:?}");

    // Both ids replicas go down; the chain is recompiled (lab apply) under each failurePolicy.
    for p in st["pods"].as_array().unwrap().iter().filter(|p| p["name"].as_str().unwrap().starts_with("ids")) {
        Command::new("kill").args(["-9", &p["pid"].to_string()]).status().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let chain_doc = with_b.split("---\n").find(|d| d.contains("kind: ServiceChain")).unwrap().to_string();
    let apply =
        |policy: &str| lab.run_yaml("apply", &chain_doc.replace("  functions:", &format!("  failurePolicy: {policy}\n  functions:")));
    let closed = apply("Closed");
    assert!(!closed.status.success(), "a chain that drops is not Ready");
    assert!(String::from_utf8_lossy(&closed.stderr).contains("NoReplicas"));
    assert!(no_reply(&lab, "client", &server6, 2), "Closed: dropped, not delivered around the ids");
    assert!(lab.status()["drops"]["n1"]["no_replica"].as_u64().unwrap() >= 2);
    let open = apply("Open");
    assert!(open.status.success(), "{}", String::from_utf8_lossy(&open.stderr));
    let st = lab.status();
    let conds = &st["chains"][0]["status"]["conditions"];
    assert_eq!((conds[0]["status"].as_str(), conds[1]["type"].as_str()), (Some("True"), Some("Degraded")), "{conds}");
    let fw_before = sid_of(&st, "default/firewall")["packets"].as_u64().unwrap();
    assert!(ping(&lab, "client", &server6, 3), "Open: the ids is bypassed");
    let fw_after = sid_of(&lab.status(), "default/firewall")["packets"].as_u64().unwrap();
    assert!(fw_after >= fw_before + 3, "still through the firewall");
}

/// Protocol and port matching with priorities: a higher-priority chain for UDP 9000-9001 to the
/// server crosses only the firewall; everything else to the server keeps the example chain.
#[test]
fn chains_match_protocol_and_ports_by_priority() {
    require_lab!("nft", "ping");
    let lab = Lab::new("ports");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-two-nodes.yaml").to_str().unwrap()]);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    let server6 = pod_ip(&lab.status(), "server", true);
    let udp = format!(
        r#"
apiVersion: srv6pipes.io/v1alpha1
kind: ServiceChain
metadata: {{name: udp-fw-only, namespace: default}}
spec:
  priority: 10
  sources: {{podSelector: {{matchLabels: {{app: client}}}}}}
  match: {{destinationPrefixes: ["{server6}/128"], protocol: UDP, destinationPorts: ["9000-9001"]}}
  functions:
    - {{name: firewall, podSelector: {{matchLabels: {{vnf: firewall}}}}}}
"#
    );
    let applied = lab.run_yaml("apply", &udp);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let count = |pod: &str| -> u64 { sid_of(&lab.status(), pod)["packets"].as_u64().unwrap() };
    let seqflow = target_dir().join("seqflow");
    let send = |port: u16| {
        let to = format!("[{server6}]:{port}");
        assert!(lab
            .exec("client", &[seqflow.to_str().unwrap(), "send", "--to", &to, "--rate", "1000", "--seconds", "0.2"])
            .status
            .success());
    };
    let (fw0, ids0) = (count("default/firewall"), count("default/ids"));
    send(9001);
    let (fw1, ids1) = (count("default/firewall"), count("default/ids"));
    assert_eq!((fw1 - fw0, ids1 - ids0), (200, 0), "UDP 9001: the firewall only");
    send(9002);
    let (fw2, ids2) = (count("default/firewall"), count("default/ids"));
    assert_eq!((fw2 - fw1, ids2 - ids1), (200, 200), "UDP 9002: the example chain");
    assert!(ping(&lab, "client", &server6, 2));
    assert!(count("default/ids") >= ids2 + 2, "ICMP: the example chain");
    let stats = lab.status();
    let chains = stats["chains"].as_array().unwrap();
    assert!(chains.iter().all(|c| c["status"]["conditions"][0]["status"] == "True"));
}

/// examples/lab-symmetric.yaml: `symmetric: true` sends the replies back through the ids then
/// the firewall (the ids marks them, the firewall counts them marked), for IPv4 and IPv6, with
/// two ids replicas; then again with the ids replicas attached as interface pairs (both
/// directions in on net1, out on net2: End.AD tells them apart per flow).
#[test]
fn symmetric_chain_returns_through_the_functions_in_reverse() {
    require_lab!("nft", "ping");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-symmetric.yaml")).unwrap();
    let single = "  labels: {vnf: ids}\n  annotations: {k8s.v1.cni.cncf.io/networks: srv6pipes}\n";
    assert_eq!(text.matches(single).count(), 2);
    let pair = "  labels: {vnf: ids}\n  annotations: {k8s.v1.cni.cncf.io/networks: srv6pipes, srv6pipes.io/interfaces: pair}\n";
    for (tag, yaml) in [("sym", text.clone()), ("sympair", text.replace(single, pair))] {
        symmetric_chain_in(tag, &yaml);
    }
}

fn symmetric_chain_in(tag: &str, yaml: &str) {
    let lab = Lab::new(tag);
    let up = lab.run_yaml("up", yaml);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    for pod in ["firewall", "ids-0", "ids-1"] {
        wait_for("VNF rules", Duration::from_secs(10), || lab.exec(pod, &["nft", "list", "table", "inet", "vnf"]).status.success());
    }
    let st = lab.status();
    let (server4, server6) = (pod_ip(&st, "server", false), pod_ip(&st, "server", true));
    assert!(ping(&lab, "client", &server4, 5));
    assert!(ping(&lab, "client", &server6, 5));
    let counters = |pod: &str| lab.nft_counters(pod, "inet vnf");
    let fw = counters("firewall");
    assert!(fw[0] >= 5 && fw[1] >= 5, "requests through the firewall: {fw:?}");
    assert!(fw[2] >= 5 && fw[3] >= 5, "replies reached the firewall marked by the ids: {fw:?}");
    let marked: u64 = ["ids-0", "ids-1"].iter().map(|p| counters(p)[0] + counters(p)[1]).sum();
    assert!(marked >= 10, "{tag}: the ids replicas marked the replies");
    // After the traffic: no node dropped any of it.
    let st = lab.status();
    let drops: u64 = ["n1", "n2"].iter().flat_map(|n| st["drops"][n].as_object().unwrap().values()).map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(drops, 0, "{tag}: {}", st["drops"]);
}

/// examples/lab-static.yaml, a Static function (End.AS): the firewall gets configured return headers (the ids' SID, then
/// the decapsulation) instead of learning them; the chain carries traffic the same.
#[test]
fn static_proxy_carries_the_chain() {
    require_lab!("nft", "ping");
    let lab = Lab::new("static");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-static.yaml").to_str().unwrap()]);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    let st = lab.status();
    let fw = sid_of(&st, "default/firewall").clone();
    assert_eq!(fw["behavior"], "End.AS", "{fw}");
    let server6 = pod_ip(&st, "server", true);
    assert!(ping(&lab, "client", &server6, 4), "through the static firewall and the dynamic ids");
    let ids = lab.nft_counters("ids", "ip6 vnf");
    assert_eq!(ids[0], 0, "everything marked: the firewall came first");
    assert!(ids[1] >= 4);
    // The firewall turns Dynamic and back: its SID takes the new behaviour in the program that
    // changes it (it kept End.AS until the next one, so the End.AD return found no learnt
    // headers), and the chain carries traffic right after each change.
    let text = std::fs::read_to_string(repo_root().join("examples/lab-static.yaml")).unwrap();
    let chain = text.split("---\n").find(|d| d.contains("kind: ServiceChain")).unwrap().to_string();
    for (proxy, behavior) in [("Dynamic", "End.AD"), ("Static", "End.AS")] {
        let applied = lab.run_yaml("apply", &chain.replace("proxy: Static", &format!("proxy: {proxy}")));
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        let fw = sid_of(&lab.status(), "default/firewall").clone();
        assert_eq!(fw["behavior"], behavior, "{fw}");
        assert!(ping(&lab, "client", &server6, 3), "every ping through the firewall as {behavior}");
    }
}

/// examples/lab-masquerading.yaml: End.AM with SRH insertion, both directions. The VNFs see the
/// client's own packet with the server as destination and the SRH inside; between the nodes the
/// packet keeps the client's source (no encapsulation); both arrive exactly as sent.
#[test]
fn masquerading_proxies_carry_a_symmetric_chain() {
    require_lab!("nft", "tcpdump", "socat", "ping");
    let lab = Lab::new("masq");
    let up = lab.ok(&["up", "-f", repo_root().join("examples/lab-masquerading.yaml").to_str().unwrap()]);
    assert!(up.contains("Programmed"), "{up}");
    wait_for("VNF rules", Duration::from_secs(10), || {
        ["firewall", "ids"].iter().all(|p| lab.exec(p, &["nft", "list", "table", "ip6", "vnf"]).status.success())
    });
    let st = lab.status();
    for vnf in ["default/firewall", "default/ids"] {
        assert_eq!(sid_of(&st, vnf)["behavior"], "End.AM", "{}", sid_of(&st, vnf));
    }
    assert_eq!(st["chains"][0]["status"]["paths"][0]["segments"].as_array().unwrap().len(), 2, "no decapsulation SID");
    let (client6, server6) = (pod_ip(&st, "client", true), pod_ip(&st, "server", true));
    let fw_cap = Capture::start(&lab, "firewall");
    let wire = Capture::underlay(&lab);
    assert!(ping(&lab, "client", &server6, 5), "client -> server through both End.AM proxies");
    assert_eq!(hello(&lab, "client", &server6), "hello from server", "{}", lab.status()["drops"]);
    let fw_pkts = fw_cap.finish();
    let wire_pkts = wire.finish();

    // Forward: the firewall marked, the ids saw only marked requests. Reverse: the ids marked
    // the replies before the firewall saw them.
    let fw = lab.nft_counters("firewall", "ip6 vnf");
    let ids = lab.nft_counters("ids", "ip6 vnf");
    assert!(fw[0] >= 5 && ids[0] >= 5, "requests: firewall {fw:?}, ids {ids:?}");
    assert!(ids[1] >= 5 && fw[1] >= 5, "replies: ids {ids:?}, firewall {fw:?}");

    // Masquerading: in the VNF the destination is the final one and the SRH is there.
    let requests: Vec<&String> = fw_pkts.iter().filter(|l| l.contains("echo request")).collect();
    assert!(!requests.is_empty(), "{fw_pkts:?}");
    assert!(requests.iter().all(|l| l.contains(&format!("{client6} > {server6}")) && l.contains("RT6")), "{requests:?}");
    // Insertion: on the wire the client's own source talks to the ids' SID, with no outer header.
    let srv6: Vec<&String> = wire_pkts.iter().filter(|l| l.contains("RT6")).collect();
    assert!(srv6.len() >= 5, "{wire_pkts:?}");
    assert!(srv6.iter().any(|l| l.contains(&format!("{client6} > fcbb:bb00:2:"))), "{srv6:?}");
    assert!(!srv6.iter().any(|l| l.contains("fcbb:bb00:1::1 >")), "nothing encapsulated: {srv6:?}");

    // UDP GSO (UDP_SEGMENT, as QUIC stacks send) both ways: H.Insert, End.AM and its last pop
    // keep the datagrams' boundaries.
    for (pods, addr) in [(("client", "server"), &server6), (("server", "client"), &client6)] {
        let stream = Stream::start(&lab, pods, addr, &["--rate", "10000", "--seconds", "1", "--size", "1200", "--gso", "8"]);
        let (sent, got) = stream.finish();
        let (sent, received) = (sent["sent"].as_u64().unwrap(), got["received"].as_u64().unwrap());
        assert!(received * 100 >= sent * 95, "UDP GSO {pods:?}: {received} of {sent}; drops {}", lab.status()["drops"]);
    }

    let st = lab.status();
    for node in ["n1", "n2"] {
        assert!(sid_packets(&st, node, "End.AM") >= 10, "{node}: {}", st["sids"]);
        let drops: u64 = st["drops"][node].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(drops, 0, "{node}: {}", st["drops"][node]);
    }
}

/// Real TCP with GSO/GRO (iperf3) across the symmetric two-VNF chain, both directions, IPv4 and
/// IPv6: it completes, nothing arrives with a bad checksum, srv6pipes drops nothing, and the
/// firewall saw the data (it crossed the chain).
#[test]
fn tcp_with_gso_crosses_the_chain_both_ways() {
    require_lab!("nft", "iperf3", "nstat");
    let lab = Lab::new("tcp");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-symmetric.yaml").to_str().unwrap()]);
    let st = lab.status();
    let (server4, server6) = (pod_ip(&st, "server", false), pod_ip(&st, "server", true));
    for server in [&server4, &server6] {
        for reverse in [false, true] {
            let bytes = common::iperf3(&lab, server, reverse, &[])["bytes"].as_u64().unwrap();
            assert!(bytes > 10_000_000, "{server} reverse {reverse}: {bytes} bytes");
        }
    }
    for pod in ["client", "server"] {
        let out = lab.exec(pod, &["nstat", "-az", "TcpInCsumErrors", "IpExtInCsumErrors"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let counts: Vec<&str> = text.lines().filter(|l| l.contains("Csum")).filter_map(|l| l.split_whitespace().nth(1)).collect();
        assert_eq!(counts, ["0", "0"], "{pod}: both checksum error counters read, and zero: {text}");
    }
    let st = lab.status();
    for node in ["n1", "n2"] {
        let drops: u64 = st["drops"][node].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(drops, 0, "{node}: {}", st["drops"][node]);
    }
    let fw = sid_of(&st, "default/firewall")["bytes"].as_u64().unwrap();
    assert!(fw > 40_000_000, "the data crossed the firewall: {fw} bytes");
}

/// A chain's segment list changes under a 25 kpps sequenced stream (its second function moves
/// between two ids pods, five times): the headend swaps policies atomically and the proxies'
/// caches follow, so nothing is lost or reordered.
#[test]
fn segment_list_changes_lose_nothing() {
    require_lab!("nft");
    let lab = Lab::new("swap");
    let text = std::fs::read_to_string(repo_root().join("examples/lab-two-nodes.yaml")).unwrap();
    let ids_doc = text.split("---\n").find(|d| d.contains("name: ids\n")).unwrap().to_string();
    let ids_b = ids_doc.replace("name: ids\n", "name: ids-b\n").replace("labels: {vnf: ids}", "labels: {vnf: ids-b}");
    let with_b = text.replacen(&ids_doc, &format!("{ids_doc}---\n{ids_b}"), 1);
    let up = lab.run_yaml("up", &with_b);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    for pod in ["ids", "ids-b"] {
        wait_for("VNF rules", Duration::from_secs(10), || lab.exec(pod, &["nft", "list", "table", "ip6", "vnf"]).status.success());
    }
    let server6 = pod_ip(&lab.status(), "server", true);
    let chain_doc = with_b.split("---\n").find(|d| d.contains("kind: ServiceChain")).unwrap().to_string();
    let stream = Stream::start(&lab, ("client", "server"), &server6, &["--rate", "25000", "--seconds", "8"]);
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(800));
        let target = if i % 2 == 0 { "ids-b" } else { "ids" };
        let applied = lab.run_yaml("apply", &chain_doc.replace("matchLabels: {vnf: ids}", &format!("matchLabels: {{vnf: {target}}}")));
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        let hops = lab.status()["chains"][0]["status"]["hops"][1]["replicas"][0]["pod"].clone();
        assert_eq!(hops, target);
    }
    let (sent, got) = stream.finish();
    assert_eq!(got["received"], sent["sent"], "{got}");
    assert_eq!((got["lost"].as_u64(), got["reordered"].as_u64()), (Some(0), Some(0)), "{got}");
    let st = lab.status();
    let through = |pod: &str| sid_of(&st, pod)["packets"].as_u64().unwrap();
    assert!(through("default/ids") > 10_000 && through("default/ids-b") > 10_000, "both took turns");
}

/// `srv6pipes monitor` as the one that reads a drop: started, it streams the drop a packet meets
/// (its reason, node, program, pod, chain and inner 5-tuple) and, asked for traces, the chain's
/// packets at each program; stopped, the datapath sends nothing more.
#[test]
fn monitor_streams_drops_and_traces_of_a_chain() {
    require_lab!("nft", "ping", "bpftool");
    let lab = Lab::new("mon");
    lab.ok(&["up", "-f", repo_root().join("examples/lab-two-nodes.yaml").to_str().unwrap()]);
    wait_for("VNF rules", Duration::from_secs(10), || lab.exec("ids", &["nft", "list", "table", "ip6", "vnf"]).status.success());
    let st = lab.status();
    let (client6, server6) = (pod_ip(&st, "client", true), pod_ip(&st, "server", true));
    let monitor = |args: &[&str]| -> Child {
        let mut child = Command::new(target_dir().join("srv6pipes"))
            .arg("monitor")
            .args(args)
            .args(["--name", &lab.name, "--state-dir"])
            .arg(&lab.state)
            .args(["-o", "json", "--duration", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Listening once it says so (on stderr): the events of what follows are seen.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("listening on n1, n2"), "{line}");
        child
    };
    let events = |child: Child| -> Vec<Value> {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "monitor: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };

    // Hop limit 2: the firewall forwards it with 1, its proxy's hop takes the last one.
    let drops = monitor(&["--count", "1"]);
    assert!(!lab.exec("client", &["ping", "-6", "-c", "1", "-t", "2", "-W", "2", &server6]).status.success());
    let e = &events(drops)[0];
    assert_eq!(
        (&e["type"], &e["reason"], &e["node"], &e["hook"], &e["pod"], &e["chain"]),
        (&json!("drop"), &json!("inner_ttl"), &json!("n1"), &json!("vnf"), &json!("default/firewall"), &json!("default/web-inspection")),
        "{e}"
    );
    assert_eq!(e["flow"], json!({"proto": "icmpv6", "src": client6, "dst": server6}), "{e}");

    // Traces of the chain: its packets at the headend, at each proxy and at the decapsulation.
    let traces = monitor(&["--type", "trace", "--chain", "web-inspection", "--count", "8"]);
    assert!(ping(&lab, "client", &server6, 3));
    let seen = events(traces);
    for e in &seen {
        assert_eq!((&e["type"], &e["chain"]), (&json!("trace"), &json!("default/web-inspection")), "{e}");
    }
    let hooks: std::collections::BTreeSet<(String, String)> =
        seen.iter().map(|e| (e["node"].as_str().unwrap().to_string(), e["hook"].as_str().unwrap().to_string())).collect();
    assert!(hooks.contains(&("n1".into(), "headend".into())) && hooks.contains(&("n2".into(), "uplink".into())), "{hooks:?}");

    // No one listens any more: every node's datapath is told to send nothing.
    for node in ["n1", "n2"] {
        let pin = lab.pin_root().join(node).join("sp_monitor_config");
        let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&pin).output().unwrap();
        let dump: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(dump[0]["formatted"]["value"]["flags"], 0, "{node}: {dump}");
    }

    // A node whose daemon is stopped (it accepts, then says nothing) or gone is skipped, said on
    // stderr, and the others are read; named with --node, its failure is the command's.
    let n2 = st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "n2").unwrap()["daemon"]["pid"].to_string();
    let once = |args: &[&str]| {
        let mut c = Command::new(target_dir().join("srv6pipes"));
        c.arg("monitor").args(args).args(["--name", &lab.name, "--state-dir"]).arg(&lab.state).args(["--duration", "1s"]);
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(Command::new("kill").args(["-STOP", &n2]).status().unwrap().success());
    let (ok, err) = once(&[]);
    assert!(ok && err.contains("skipped node n2: ") && err.contains("no answer within") && err.contains("listening on n1 ("), "{err}");
    assert!(Command::new("kill").args(["-KILL", &n2]).status().unwrap().success());
    let (ok, err) = once(&[]);
    assert!(ok && err.contains("skipped node n2: connect") && err.contains("listening on n1 ("), "{err}");
    let (ok, err) = once(&["--node", "n2"]);
    assert!(!ok && err.contains("node n2: connect") && !err.contains("listening"), "{err}");
}
