//! The benchmark's network: one generator netns, one sink netns, and per scenario a "lane":
//! a node netns between them (gen veth -> `eth0`, `eth1` -> sink veth) with its VNFs, each VNF a
//! netns with one veth (`v<j>` on the node, `net1` inside) that forwards what it gets back to
//! the node. A lane is plain IPv6 forwarding, the kernel-native static proxy, or srv6pipes
//! (the real srv6pipes-node daemon, VNFs registered over its socket as srv6pipes-cni does).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use srv6::compiler::{Behavior, NodeTables, SidUse};
use srv6::node_api::{self, Attachment, NodeProgram, Request, Response};
use srv6::sid::Sid;

use crate::packet::Macs;
use crate::sys::{self, Cleanup};
use crate::traffic::{Path as TrafficPath, Traffic};

/// The sink's SRv6 locator (every proxied packet leaves towards it) and its decap SID.
pub const SINK_SID: Ipv6Addr = Ipv6Addr::new(0xfcbb, 0xbb00, 0xff, 0, 0, 0, 0, 0xd6);
/// The inner packets' addresses.
pub const INNER_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const INNER_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
pub const INNER4_SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const INNER4_DST: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);
/// The generator's outer source: inside the cluster block, as a headend's is.
pub const OUTER_SRC: Ipv6Addr = Ipv6Addr::new(0xfcbb, 0xbb00, 0x99, 0, 0, 0, 0, 1);
const CLUSTER_BLOCK: &str = "fcbb:bb00::/32";
/// Where plain forwarding and the kernel proxy look up what comes back from a VNF.
const RETURN_TABLE: u32 = 100;
/// Where the spread plain lane looks up what comes from the generator (one rule: `iif eth0`).
const FORWARD_TABLE: u32 = 200;

/// The inner destination that the spread plain lane routes to VNF `j`: inside INNER_DST's /64,
/// which the lane's main table sends to the sink.
pub fn spread_dst(j: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 1, j)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain IPv6 forwarding through the VNF: a route to it, `ip rule iif` back to the sink.
    Plain,
    /// Plain IPv6 forwarding spread over any number of VNFs by destination: what comes from
    /// the generator (one `ip rule iif eth0`) is routed by a /128 per VNF (`spread_dst`),
    /// what comes back from a VNF by the main table's route to the sink. Nothing grows per
    /// VNF but routes and neighbours, as with srv6pipes' SIDs.
    PlainSpread,
    /// seg6local End.DX6 towards each VNF; `ip rule iif` + seg6 encap route back.
    Kernel,
    /// srv6pipes-node with this End.AD learning interval.
    Srv6pipes { ad_age_ms: u64 },
}

pub struct Vnf {
    pub index: u16,
    pub netns: String,
    pub host_if: String,
    pub host_mac: [u8; 6],
    pub vnf_mac: [u8; 6],
    /// The proxy SID: from the daemon (srv6pipes) or chosen here (kernel End.DX6).
    pub sid: Option<Ipv6Addr>,
}

pub struct Lane {
    pub name: String,
    pub k: u8,
    pub kind: Kind,
    pub node_ns: String,
    pub path: TrafficPath,
    pub macs: Macs,
    pub vnfs: Vec<Vnf>,
    pub socket: Option<PathBuf>,
}

pub struct Bench {
    pub tag: String,
    pub gen_ns: String,
    pub sink_ns: String,
    pub dir: PathBuf,
    pub pin_root: PathBuf,
    pub bin_dir: PathBuf,
    pub traffic: Traffic,
    next_k: u8,
    /// The lanes' daemons and netns (`drop_lanes`); before `cleanup`, which removes their pins.
    lanes: Cleanup,
    // Last: dropped after `traffic`, whose links live in the netns it removes.
    pub cleanup: Cleanup,
}

fn mac(kind: u8, k: u8, j: u16, role: u8) -> [u8; 6] {
    [0x02, kind, k, (j >> 8) as u8, j as u8, role]
}

fn fmt_mac(m: [u8; 6]) -> String {
    node_api::format_mac(&m)
}

const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/seg6_enabled", "1"),
    ("net/ipv6/conf/default/seg6_enabled", "1"),
    ("net/ipv4/ip_forward", "1"),
];

impl Bench {
    pub fn new(gen_cpu: usize) -> anyhow::Result<Self> {
        let tag = crate::sweep::own_tag();
        let mut cleanup = Cleanup::default();
        let dir = PathBuf::from(format!("/run/srv6pipes-bench/{tag}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        cleanup.path(&dir);
        ensure_bpffs()?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/srv6pipes-bench-{tag}"));
        cleanup.path(&pin_root);
        let (gen_ns, sink_ns) = (format!("{tag}-gen"), format!("{tag}-sink"));
        for ns in [&gen_ns, &sink_ns] {
            sys::ip(None, &format!("netns add {ns}"))?;
            cleanup.netns(ns);
            sys::ip(Some(ns), "link set lo up")?;
        }
        let bin_dir = std::env::current_exe()?.parent().context("bin dir")?.to_path_buf();
        let traffic = Traffic::load(&gen_ns, gen_cpu)?;
        Ok(Self { tag, gen_ns, sink_ns, dir, pin_root, bin_dir, traffic, next_k: 1, lanes: Cleanup::default(), cleanup })
    }

    /// Why this kernel cannot run the kernel-native static proxy, or None when it can: its
    /// seg6 and seg6local routes need seg6 lightweight tunnels (CONFIG_IPV6_SEG6_LWTUNNEL), which
    /// some kernels leave out. A seg6 route tried in the generator's netns tells.
    pub fn kernel_seg6_missing(&self) -> Option<String> {
        let probe = |verb: &str| {
            sys::ip_batch_with(
                &["-6"],
                Some(&self.gen_ns),
                &[format!("route {verb} fd00:5e6::/128 encap seg6 mode encap segs fd00:5e6::1 dev lo")],
            )
        };
        match probe("add") {
            Ok(()) => {
                let _ = probe("del");
                None
            }
            Err(e) => Some(format!("this kernel has no seg6 lightweight tunnels (CONFIG_IPV6_SEG6_LWTUNNEL): {e:#}").replace('\n', " ")),
        }
    }

    /// Removes every lane made so far (daemons stopped, netns deleted) and waits until the
    /// kernel has cleaned their netns up: lanes left behind, or their clean-up running on, are
    /// other nodes' work on this one kernel, and the next part measured them too (CNI ADD p99
    /// 25.8 ms with the data plane's lanes present, 10.5 ms without: docs/performance.md). A
    /// probe netns deleted last, with a veth into the sink's, tells when: the kernel cleans
    /// netns up in the order they went, and the probe's peer goes with it.
    /// Returns the seconds it took.
    pub fn drop_lanes(&mut self) -> anyhow::Result<f64> {
        let start = Instant::now();
        let probe = format!("{}-settle", self.tag);
        sys::ip(None, &format!("netns add {probe}"))?;
        self.cleanup.netns(&probe);
        sys::ip(None, &format!("link add settle0 netns {probe} type veth peer name settle1 netns {}", self.sink_ns))?;
        self.lanes.run();
        sys::ip(None, &format!("netns del {probe}"))?;
        let deadline = start + Duration::from_secs(600);
        while sys::ifindex(&self.sink_ns, "settle1").is_ok() {
            if Instant::now() > deadline {
                bail!("the kernel had not cleaned the lanes' netns up after 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// A node netns wired to the generator and the sink; RPS sends its receive work to
    /// `sut_cpu`.
    pub fn lane(&mut self, name: &str, kind: Kind, sut_cpu: usize) -> anyhow::Result<Lane> {
        Ok(self.line(name, kind, sut_cpu, 1)?.remove(0))
    }

    /// `hops` node netns in a line between the generator and the sink (gen → `eth0` node 1
    /// `eth1` → `eth0` node 2 … → sink), each routing the sink's locator, the later nodes'
    /// locators and the inner destination's /64 downstream: a chain over remote hops. Every
    /// node's lane has the line's traffic path. RPS sends each node's receive work to `sut_cpu`.
    pub fn line(&mut self, name: &str, kind: Kind, sut_cpu: usize, hops: usize) -> anyhow::Result<Vec<Lane>> {
        let ks: Vec<u8> = (0..hops as u8).map(|i| self.next_k + i).collect();
        self.next_k += hops as u8;
        let names: Vec<String> = (0..hops).map(|i| if hops == 1 { name.to_string() } else { format!("{name}{}", i + 1) }).collect();
        let nss: Vec<String> = names.iter().map(|n| format!("{}-{n}", self.tag)).collect();
        for ns in &nss {
            sys::ip(None, &format!("netns add {ns}"))?;
            self.lanes.netns(ns);
            sys::sysctls(ns, NODE_SYSCTLS)?;
        }
        // eth0 faces upstream (the generator, or the previous node's eth1), eth1 downstream.
        let eth0 = |i: usize| mac(0xaa, ks[i], 0, 2);
        let eth1 = |i: usize| mac(0xab, ks[i], 0, 1);
        let (first, last) = (ks[0], ks[hops - 1]);
        let (gmac, smac) = (mac(0xaa, first, 0, 1), mac(0xab, last, 0, 2));
        let (gen_if, sink_if) = (format!("g{first}"), format!("s{last}"));
        let veth = |a: &str, a_ns: &str, a_mac, b: &str, b_ns: &str, b_mac| {
            format!(
                "link add name {a} netns {a_ns} address {} type veth peer name {b} netns {b_ns} address {}",
                fmt_mac(a_mac),
                fmt_mac(b_mac)
            )
        };
        let mut links = vec![veth(&gen_if, &self.gen_ns, gmac, "eth0", &nss[0], eth0(0))];
        for i in 1..hops {
            links.push(veth("eth1", &nss[i - 1], eth1(i - 1), "eth0", &nss[i], eth0(i)));
        }
        links.push(veth(&sink_if, &self.sink_ns, smac, "eth1", &nss[hops - 1], eth1(hops - 1)));
        sys::ip_batch(None, &links)?;
        sys::ip_batch(Some(&self.gen_ns), &[format!("link set {gen_if} up")])?;
        sys::ip_batch(Some(&self.sink_ns), &[format!("link set {sink_if} up")])?;
        let (sink_ifindex, slot) = self.traffic.add_sink(&self.sink_ns, &sink_if)?;
        let path = TrafficPath { gen_ifindex: sys::ifindex(&self.gen_ns, &gen_if)?, sink_ifindex, slot, expect: None, expect_bytes: 16 };
        let mut lanes = Vec::new();
        for (i, &k) in ks.iter().enumerate() {
            let node_ns = nss[i].clone();
            let up_addr = if i == 0 { format!("fd00:b0:{k:x}::2") } else { format!("fd00:b1:{:x}::2", ks[i - 1]) };
            let next = format!("fd00:b1:{k:x}::2");
            let next_mac = if i + 1 == hops { smac } else { eth0(i + 1) };
            let inner = if kind == Kind::Plain { format!("{INNER_DST}/64 table {RETURN_TABLE}") } else { format!("{INNER_DST}/64") };
            let mut lines = vec![
                "link set lo up".into(),
                "link set eth0 up".into(),
                "link set eth1 up".into(),
                format!("addr add {up_addr}/64 dev eth0 nodad"),
                format!("addr add fd00:b1:{k:x}::1/64 dev eth1 nodad"),
                format!("neigh replace {next} lladdr {} dev eth1 nud permanent", fmt_mac(next_mac)),
                format!("route add fcbb:bb00:ff::/48 via {next} dev eth1"),
                format!("route add {inner} via {next} dev eth1"),
            ];
            lines.extend(ks[i + 1..].iter().map(|later| format!("route add fcbb:bb00:{later:x}::/48 via {next} dev eth1")));
            sys::ip_batch(Some(&node_ns), &lines)?;
            if kind == Kind::PlainSpread {
                sys::ip_batch_with(&["-6"], Some(&node_ns), &[format!("rule add iif eth0 lookup {FORWARD_TABLE} pref 1000")])?;
            }
            // The generator's veth delivers only into a peer with NAPI (GRO on); RPS moves the
            // node's work off the generator's CPU.
            sys::run(sys::command(&node_ns, "ethtool", true)?.args(["-K", "eth0", "gro", "on"]))?;
            let mask = format!("{:x}", 1u64 << sut_cpu);
            sys::run(sys::command(&node_ns, "sh", true)?.args(["-c", &format!("echo {mask} > /sys/class/net/eth0/queues/rx-0/rps_cpus")]))?;
            let mut lane = Lane {
                name: names[i].clone(),
                k,
                kind,
                node_ns,
                path: path.clone(),
                macs: Macs { src: gmac, dst: eth0(0) },
                vnfs: Vec::new(),
                socket: None,
            };
            if let Kind::Srv6pipes { ad_age_ms } = kind {
                self.start_daemon(&mut lane, ad_age_ms)?;
            }
            lanes.push(lane);
        }
        Ok(lanes)
    }

    /// The generator straight into the sink: the generator's own ceiling.
    pub fn ceiling_path(&mut self) -> anyhow::Result<TrafficPath> {
        let (g, s) = ("g0", "s0");
        sys::ip(None, &format!("link add name {g} netns {} type veth peer name {s} netns {}", self.gen_ns, self.sink_ns))?;
        sys::ip(Some(&self.gen_ns), &format!("link set {g} up"))?;
        sys::ip(Some(&self.sink_ns), &format!("link set {s} up"))?;
        let (sink_ifindex, slot) = self.traffic.add_sink(&self.sink_ns, s)?;
        Ok(TrafficPath { gen_ifindex: sys::ifindex(&self.gen_ns, g)?, sink_ifindex, slot, expect: None, expect_bytes: 16 })
    }

    fn start_daemon(&mut self, lane: &mut Lane, ad_age_ms: u64) -> anyhow::Result<()> {
        let socket = self.dir.join(format!("{}.sock", lane.name));
        let log = self.dir.join(format!("{}.log", lane.name));
        let out = std::fs::File::create(&log)?;
        let mut cmd = sys::command(&lane.node_ns, self.bin_dir.join("srv6pipes-node"), false)?;
        // On the generator's CPU, off the one under test: the daemon's once-a-second work (the
        // tcx order check on every interface it attached, the flow recount) would otherwise
        // stall the softirq work measured for milliseconds at a time.
        sys::pinned(&mut cmd, self.traffic.gen_cpu())?;
        cmd.args(["--node-name", &lane.name, "--locator", &format!("fcbb:bb00:{:x}::/48", lane.k), "--uplink", "eth0"])
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(self.dir.join(format!("{}-state", lane.name)))
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(["--cluster-block", CLUSTER_BLOCK, "--ad-age-ms", &ad_age_ms.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("start srv6pipes-node (build it: cargo build --release)")?;
        self.lanes.child(child);
        for _ in 0..500 {
            if node_api::call(&socket, &Request::Sids, Duration::from_secs(1)).is_ok() {
                lane.socket = Some(socket);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("srv6pipes-node for lane {} did not answer: {}", lane.name, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Adds VNFs until the lane has `n`: netns, veth, forwarding back to the node; then what
    /// the lane's kind needs (registration, or End.DX6 route + `ip rule` per VNF).
    pub fn grow(&mut self, lane: &mut Lane, n: u16) -> anyhow::Result<()> {
        let first = lane.vnfs.len() as u16 + 1;
        if first > n {
            return Ok(());
        }
        let k = lane.k;
        let mut root = Vec::new();
        let mut node = Vec::new();
        let mut new = Vec::new();
        for j in first..=n {
            let v = Vnf {
                index: j,
                netns: format!("{}-v{j}", lane.node_ns),
                host_if: format!("v{j}"),
                host_mac: mac(0xac, k, j, 1),
                vnf_mac: mac(0xac, k, j, 2),
                sid: None,
            };
            root.push(format!("netns add {}", v.netns));
            node.push(format!(
                "link add name {} address {} type veth peer name net1 netns {} address {}",
                v.host_if,
                fmt_mac(v.host_mac),
                v.netns,
                fmt_mac(v.vnf_mac)
            ));
            node.push(format!("link set {} up", v.host_if));
            node.push(format!("addr add fd00:c0:{k:x}:{j:x}::1/64 dev {} nodad", v.host_if));
            node.push(format!("neigh replace fd00:c0:{k:x}:{j:x}::2 lladdr {} dev {} nud permanent", fmt_mac(v.vnf_mac), v.host_if));
            new.push(v);
        }
        sys::ip_batch(None, &root)?;
        for v in &new {
            self.lanes.netns(&v.netns);
        }
        sys::ip_batch(Some(&lane.node_ns), &node)?;
        for v in &new {
            configure_vnf(k, v)?;
        }
        route_lane(lane, &mut new, first, n)?;
        lane.vnfs.extend(new);
        Ok(())
    }

    /// Replaces the daemon's program: End.AS (returning to the sink) and End.AM for the given
    /// VNFs, End.AD for the others, plus `decaps` extra End.DT46 SIDs (table size sweeps).
    pub fn program(&self, lane: &Lane, static_vnfs: &[u16], masquerading: &[u16], decaps: u16) -> anyhow::Result<()> {
        let socket = lane.socket.as_ref().context("not an srv6pipes lane")?;
        let mut proxies = Vec::new();
        for v in &lane.vnfs {
            let behavior = if static_vnfs.contains(&v.index) {
                Behavior::EndAS
            } else if masquerading.contains(&v.index) {
                Behavior::EndAM
            } else {
                Behavior::EndAD
            };
            proxies.push(SidUse {
                sid: Sid(v.sid.context("registered")?),
                behavior,
                chain: "bench/chain".into(),
                interface: Some(format!("bench/vnf-{}:net1", v.index).into()),
                return_path: if behavior == Behavior::EndAS { vec![vec![Sid(SINK_SID)]] } else { vec![] },
                rewrites_flows: false,
                both_ways: false,
                pipeline: None,
            });
        }
        let decaps = decap_uses(lane.k, decaps);
        let tables = NodeTables { proxies, decaps, ..Default::default() };
        match node_api::call(socket, &Request::Program(NodeProgram { tables, peers: vec![] }), Duration::from_secs(120))? {
            Response::Ok => Ok(()),
            other => bail!("lane {}: program refused: {other:?}", lane.name),
        }
    }

    /// Packets the node sent into its VNFs (`v<j>` tx), read over netlink: proof that a plain
    /// lane's traffic went through them.
    pub fn vnf_tx_packets(&self, lane: &Lane) -> anyhow::Result<u64> {
        let out = sys::run(sys::command(&lane.node_ns, "ip", false)?.args(["-j", "-s", "link", "show"]))?;
        let links: serde_json::Value = serde_json::from_str(&out).context("ip -j -s link show")?;
        let is_vnf = |name: &str| name.strip_prefix('v').is_some_and(|j| j.parse::<u16>().is_ok());
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["ifname"].as_str().is_some_and(is_vnf))
            .filter_map(|l| l["stats64"]["tx"]["packets"].as_u64())
            .sum())
    }

    /// Packets the daemon's SIDs of this lane counted (proof the proxy carried the traffic).
    pub fn sid_packets(&self, lane: &Lane) -> anyhow::Result<u64> {
        sid_packets(lane.socket.as_ref().context("not an srv6pipes lane")?)
    }
}

/// A new VNF's netns as srv6pipes-cni leaves one (forwarding on, everything going back out
/// of its chain interface, to the node's side of its veth).
fn configure_vnf(k: u8, v: &Vnf) -> anyhow::Result<()> {
    let j = v.index;
    sys::sysctls(
        &v.netns,
        &[
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
        ],
    )?;
    let hm = fmt_mac(v.host_mac);
    sys::ip_batch(
        Some(&v.netns),
        &[
            "link set lo up".into(),
            "link set net1 up".into(),
            format!("addr add fd00:c0:{k:x}:{j:x}::2/64 dev net1 nodad"),
            "addr add 169.254.0.2/30 dev net1".into(),
            format!("neigh replace fe80::1 lladdr {hm} dev net1 nud permanent"),
            format!("neigh replace 169.254.0.1 lladdr {hm} dev net1 nud permanent"),
            "route add default via fe80::1 dev net1".into(),
            "route add default via 169.254.0.1 dev net1 onlink".into(),
        ],
    )?;
    Ok(())
}

/// What each kind of lane needs to carry traffic through its new VNFs `new` (numbered from
/// `first` to `n`): srv6pipes' SIDs from its daemon, the kernel proxy's seg6local routes and
/// return rules, plain forwarding's routes.
fn route_lane(lane: &Lane, new: &mut [Vnf], first: u16, n: u16) -> anyhow::Result<()> {
    let k = lane.k;
    match lane.kind {
        Kind::Srv6pipes { .. } => {
            let socket = lane.socket.clone().expect("srv6pipes lanes have a daemon");
            for v in new.iter_mut() {
                v.sid = Some(register(&socket, &lane.name, v)?);
            }
        }
        Kind::Kernel => {
            let (mut lines, mut rules) = (Vec::new(), Vec::new());
            for v in new.iter_mut() {
                let sid = kernel_sid(k, v.index);
                lines.push(format!(
                    "route add {sid}/128 encap seg6local action End.DX6 nh6 fd00:c0:{k:x}:{:x}::2 dev {}",
                    v.index, v.host_if
                ));
                rules.push(format!("rule add iif {} lookup {RETURN_TABLE} pref {}", v.host_if, 1000 + v.index as u32));
                v.sid = Some(sid);
            }
            if first == 1 {
                // The inner destination only: a default route would catch the encapsulated
                // packet's own lookup (still iif v<j>) and loop.
                lines.push(format!(
                    "route add {INNER_DST}/64 encap seg6 mode encap segs {SINK_SID} via fd00:b1:{k:x}::2 dev eth1 table {RETURN_TABLE}"
                ));
            }
            sys::ip_batch(Some(&lane.node_ns), &lines)?;
            sys::ip_batch_with(&["-6"], Some(&lane.node_ns), &rules)?;
        }
        Kind::PlainSpread => {
            let routes: Vec<String> = new
                .iter()
                .map(|v| {
                    let j = v.index;
                    format!("route add {}/128 via fd00:c0:{k:x}:{j:x}::2 dev {} table {FORWARD_TABLE}", spread_dst(j), v.host_if)
                })
                .collect();
            sys::ip_batch(Some(&lane.node_ns), &routes)?;
        }
        Kind::Plain => {
            if first != 1 || n != 1 {
                bail!("the plain lane has exactly one VNF");
            }
            sys::ip_batch(Some(&lane.node_ns), &[format!("route add {INNER_DST}/64 via fd00:c0:{k:x}:1::2 dev v1")])?;
            sys::ip_batch_with(&["-6"], Some(&lane.node_ns), &[format!("rule add iif v1 lookup {RETURN_TABLE} pref 1001")])?;
        }
    }
    Ok(())
}

/// `n` End.DT46 SIDs of lane `k` (table size sweeps, large programs).
fn decap_uses(k: u8, n: u16) -> Vec<SidUse> {
    (0..n)
        .map(|i| SidUse {
            sid: Sid(decap_sid(k, i)),
            behavior: Behavior::EndDT46,
            chain: "bench/table-size".into(),
            interface: None,
            return_path: vec![],
            rewrites_flows: false,
            both_ways: false,
            pipeline: None,
        })
        .collect()
}

/// Programs the daemon at `socket` (lane `k`) with `n` End.DT46 SIDs and nothing else: a large
/// program that touches no traffic.
pub fn program_decaps(socket: &Path, k: u8, n: u16) -> anyhow::Result<()> {
    let decaps = decap_uses(k, n);
    let tables = NodeTables { decaps, ..Default::default() };
    match node_api::call(socket, &Request::Program(NodeProgram { tables, peers: vec![] }), Duration::from_secs(120))? {
        Response::Ok => Ok(()),
        other => bail!("program of {n} SIDs refused: {other:?}"),
    }
}

/// Packets all SIDs of the daemon at `socket` counted.
pub fn sid_packets(socket: &Path) -> anyhow::Result<u64> {
    match node_api::call(socket, &Request::Stats, Duration::from_secs(10))? {
        Response::Stats(s) => Ok(s.sids.iter().map(|c| c.packets).sum()),
        other => bail!("stats from {}: {other:?}", socket.display()),
    }
}

/// End.DT46 SIDs for the table-size sweep: FUNCT 0x8000 + i, clear of the proxy range.
fn decap_sid(k: u8, i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfcbb, 0xbb00, k as u16, 0x8000 + i, 0, 0, 0, 0)
}

fn kernel_sid(k: u8, j: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfcbb, 0xbb00, k as u16, 0xe000 + j, 0, 0, 0, 0)
}

fn register(socket: &Path, node: &str, v: &Vnf) -> anyhow::Result<Ipv6Addr> {
    let a = Attachment {
        network: "bench".into(),
        container_id: format!("bench-{node}-{}", v.index),
        ifname: "net1".into(),
        runtime_ifname: None,
        netns: sys::netns_path(&v.netns).display().to_string(),
        host_ifname: v.host_if.clone(),
        pod_namespace: "bench".into(),
        pod_name: format!("vnf-{}", v.index),
        vnf_mac: fmt_mac(v.vnf_mac),
        host_mac: fmt_mac(v.host_mac),
        out: None,
    };
    match node_api::call(socket, &Request::Register(a), Duration::from_secs(10))? {
        Response::Registered { sid } => Ok(sid.0),
        other => bail!("register {} on {node}: {other:?}", v.host_if),
    }
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if !mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")) {
        nix::mount::mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).context("mount bpffs")?;
    }
    Ok(())
}
