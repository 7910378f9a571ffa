//! Tier 2: every program and drop reason through BPF_PROG_TEST_RUN. Crafted packet in, exact
//! bytes and verdict out, maps and counters checked. Runs as root in a throwaway netns with its
//! own pin directory (the FIB lookups need interfaces, routes and neighbours to exist).

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use srv6::codec::{encaps_header, ones_complement_sum, NEXT_HEADER_IPV6};
use srv6::sid::Sid;
use srv6pipes_ebpf::{
    Datapath, DropReason, Event, FlowCounter, Hook, L4Target, Monitor, MonitorConfig, MonitorRecord, NodeConfig, RecordKind, SidEntry,
    SkbCtx, BEHAVIOR_END_AD, BEHAVIOR_END_DT46, CLASS_SRC_PORTS, MONITOR_DROPS, MONITOR_TRACE, POLICY_DROP,
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const TCX_NEXT: i32 = -1;

const VNF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x02];
/// The source pod's MAC, behind src0.
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xdd, 1];

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A netns with an uplink (route to n2's locator via a permanent neighbour), a VNF veth and a
/// source veth, and the datapath loaded with n1's config. Removed on drop.
struct Bench {
    netns: String,
    dp: Datapath,
    uplink: u32,
    vnf: u32,
    src: u32,
    /// Last, so it runs after the datapath is closed; made right after the netns, so a failing
    /// setup (e.g. a verifier rejection) leaves nothing behind either.
    _cleanup: Cleanup,
}

/// Removes a test's netns and pin directory when dropped.
struct Cleanup {
    netns: String,
    pins: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pins) = &self.pins {
            let _ = std::fs::remove_dir_all(pins);
            let _ = pins.parent().map(std::fs::remove_dir);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

impl Bench {
    fn new() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: packet tests need root (BPF_PROG_TEST_RUN, netns)");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let netns = format!("sp-pkt-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let ip = |args: &str| {
            let out = Command::new("ip").args(["-n", &netns]).args(args.split_whitespace()).output().unwrap();
            assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
        };
        assert!(Command::new("ip").args(["netns", "add", &netns]).status().unwrap().success());
        let mut cleanup = Cleanup { netns: netns.clone(), pins: None };
        ip("link add name up0 type veth peer name up0p");
        ip("link add name vnf0 type veth peer name vnf0p");
        ip("link add name src0 type veth peer name src0p");
        for l in ["up0", "up0p", "vnf0", "vnf0p", "src0", "src0p", "lo"] {
            ip(&format!("link set {l} up"));
        }
        ip("addr add fd00:ffff::1/64 dev up0 nodad");
        ip("route add fcbb:bb00:2::/48 via fd00:ffff::2 dev up0");
        ip(&format!("neigh add fd00:ffff::2 lladdr {} dev up0 nud permanent", mac_str(&PEER_MAC)));
        let ns = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
        // This test's thread lives in the netns from here on (setns is per thread).
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        if nix::sys::statfs::statfs("/sys/fs/bpf").map(|s| s.filesystem_type().0 != 0xcafe4a11).unwrap_or(true) {
            let _ = nix::mount::mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>);
        }
        let pins = PathBuf::from(format!("/sys/fs/bpf/srv6pipes-test/{netns}"));
        std::fs::create_dir_all(&pins).unwrap();
        cleanup.pins = Some(pins.clone());
        let mut dp = Datapath::load(&pins).unwrap();
        dp.set_config(config(0)).unwrap();
        let idx = |n: &str| nix::net::if_::if_nametoindex(n).unwrap();
        let (uplink, vnf, src) = (idx("up0"), idx("vnf0"), idx("src0"));
        dp.set_sid(
            a("fcbb:bb00:1:e001::"),
            SidEntry { behavior: BEHAVIOR_END_AD, ifindex: vnf, cache_ifindex: vnf, vnf_mac: VNF_MAC, host_mac: HOST_MAC, stream_port: 0 },
        )
        .unwrap();
        dp.set_sid(a("fcbb:bb00:1:d6::"), SidEntry { behavior: BEHAVIOR_END_DT46, ..Default::default() }).unwrap();
        Some(Self { netns, dp, uplink, vnf, src, _cleanup: cleanup })
    }

    /// A headend rule with no protocol or port match: class `policy` -> `policy`.
    fn rule(&mut self, ifindex: u32, dst: ipnet::IpNet, policy: u32) {
        self.dp.set_l4_rule(policy, None, 0, 0, L4Target { policy, rank: 0 }).unwrap();
        self.dp.set_headend_rule(ifindex, dst, policy).unwrap();
    }

    fn run(&self, hook: Hook, ifindex: u32, packet: &[u8]) -> (i32, Vec<u8>) {
        let r = self.dp.test_run(hook, packet, SkbCtx { ifindex, mark: 0 }).unwrap();
        (r.retval, r.data)
    }

    /// Runs and expects a drop counted under `reason`.
    fn expect_drop(&self, hook: Hook, ifindex: u32, packet: &[u8], reason: DropReason) {
        let before = self.dp.drops(reason).unwrap();
        let (verdict, _) = self.run(hook, ifindex, packet);
        assert_eq!(verdict, TC_ACT_SHOT, "{reason:?}");
        assert_eq!(self.dp.drops(reason).unwrap(), before + 1, "counted as {reason:?}");
    }

    /// Runs and expects a drop counted under `reason`, answered by an ICMP error about it.
    fn expect_icmp(&self, hook: Hook, ifindex: u32, packet: &[u8], reason: DropReason, error: (u8, u8, u32)) -> Vec<u8> {
        let before = (self.dp.drops(reason).unwrap(), self.dp.event(Event::IcmpSent).unwrap());
        let (verdict, out) = self.run(hook, ifindex, packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{reason:?}: {:?}", self.dp.drop_reasons().unwrap());
        assert_eq!(self.dp.drops(reason).unwrap(), before.0 + 1, "counted as {reason:?}");
        assert_eq!(self.dp.event(Event::IcmpSent).unwrap(), before.1 + 1);
        check_icmp_error(packet, &out, error);
        out
    }

    /// The monitor's maps, opened on their pins as the node daemon's reader opens them.
    fn monitor(&self) -> Monitor {
        Monitor::open(self._cleanup.pins.as_deref().unwrap()).unwrap()
    }

    /// Routes to the inner packets' sources (IPv6 and IPv4) out of src0, to [`POD_MAC`].
    fn route_to_the_sources(&self) {
        let ip =
            |args: &str| assert!(Command::new("ip").args(["-n", &self.netns]).args(args.split_whitespace()).status().unwrap().success());
        for addr in [INNER_SRC, "10.10.2.2"] {
            ip(&format!("route add {addr} dev src0"));
            ip(&format!("neigh add {addr} lladdr {} dev src0 nud permanent", mac_str(&POD_MAC)));
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    }

    fn up_mac(&self) -> [u8; 6] {
        let out = Command::new("ip").args(["-n", &self.netns, "-o", "link", "show", "up0"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        parse_mac(text.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap())
    }
}

/// The largest packet the test node's chains carry: a 1500-byte uplink less 176 bytes.
const INNER_MTU: u32 = 1500 - 176;

/// Node n1 of the tests: locator fcbb:bb00:1::/48 in the block fcbb:bb00::/32.
fn config(ad_age_ns: u64) -> NodeConfig {
    NodeConfig {
        locator: a("fcbb:bb00:1::").octets(),
        locator_len: 48,
        block_len: 32,
        block: a("fcbb:bb00::").octets(),
        ad_age_ns,
        src: a("fcbb:bb00:1::1").octets(),
        inner_mtu: INNER_MTU,
        flow_quota: 0,
    }
}

/// Sets the header checksum of the IPv4 packet `p` (a 20-byte header).
fn set_ipv4_checksum(p: &mut [u8]) {
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = !(ones_complement_sum(&p[..20], 0) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// `reply` is the ICMP (IPv4 packet) or ICMPv6 (IPv6 packet) error `(type, code, info)` about
/// `packet`: MACs swapped, to its source, from n1's SRv6 source (IPv6) or the packet's
/// destination (IPv4), quoting as much of it as the minimum MTU (576 for IPv4) allows, with
/// valid checksums.
fn check_icmp_error(packet: &[u8], reply: &[u8], (ty, code, info): (u8, u8, u32)) {
    assert_eq!(&reply[0..6], &packet[6..12], "back to the sender's MAC");
    assert_eq!(&reply[6..12], &packet[0..6]);
    let (ip, orig) = (&reply[14..], &packet[14..]);
    let icmp = if ip[0] >> 4 == 6 {
        assert_eq!(ip[6], 58, "ICMPv6");
        assert_eq!(&ip[8..24], &a("fcbb:bb00:1::1").octets(), "from the node's SRv6 source");
        assert_eq!(&ip[24..40], &orig[8..24], "to the packet's source");
        let icmp = &ip[40..];
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, icmp.len());
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(ones_complement_sum(icmp, ones_complement_sum(&pseudo, 0)), 0xffff, "ICMPv6 checksum");
        assert_eq!(&icmp[8..], &orig[..orig.len().min(1232)], "quote");
        icmp
    } else {
        assert_eq!((ip[0], ip[9]), (0x45, 1), "ICMP");
        assert_eq!(ones_complement_sum(&ip[..20], 0), 0xffff, "IPv4 header checksum");
        assert_eq!(&ip[12..16], &orig[16..20], "from the packet's destination");
        assert_eq!(&ip[16..20], &orig[12..16], "to its source");
        let icmp = &ip[20..];
        assert_eq!(ones_complement_sum(icmp, 0), 0xffff, "ICMP checksum");
        assert_eq!(&icmp[8..], &orig[..orig.len().min(548)], "quote");
        icmp
    };
    assert_eq!((icmp[0], icmp[1], u32::from_be_bytes(icmp[4..8].try_into().unwrap())), (ty, code, info));
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    v.try_into().unwrap()
}

fn eth(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut e = dst.to_vec();
    e.extend_from_slice(&src);
    e.extend_from_slice(&proto.to_be_bytes());
    e
}

/// IPv6 + UDP with a 12-byte payload.
fn inner(src: &str, dst: &str) -> Vec<u8> {
    ipv6_packet(a(src), a(dst), (17, 0x12345), &udp(b"hello, vnf!!"))
}

/// An IPv6 packet from `src` to `dst` carrying `payload` (next header, flow label), hop limit 64.
fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, (next_header, flow_label): (u8, u32), payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    srv6::codec::Ipv6Header { traffic_class: 0, flow_label, payload_len: payload.len() as u16, next_header, hop_limit: 64, src, dst }
        .encode(&mut p);
    p.extend_from_slice(payload);
    p
}

/// UDP 4000 -> 5000 carrying `payload`, checksum left 0.
fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = [4000u16.to_be_bytes(), 5000u16.to_be_bytes(), ((8 + payload.len()) as u16).to_be_bytes(), [0, 0]].concat();
    u.extend_from_slice(payload);
    u
}

/// IPv4 + UDP with a 12-byte payload, header checksum set.
fn inner4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    inner4_ttl(src, dst, 64)
}

fn inner4_ttl(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let payload = b"hello, vnf!!";
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, ttl, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    set_ipv4_checksum(&mut p);
    p.extend_from_slice(&udp(payload));
    p
}

const SRC4: [u8; 4] = [10, 10, 2, 2];
const DST4: [u8; 4] = [10, 20, 0, 5];

/// eth + H.Encaps(path, next header 4) + IPv4 inner, Segments Left as built.
fn srv6_packet4(src: &str, path: &[&str]) -> Vec<u8> {
    srv6_around(src, path, &inner4(SRC4, DST4))
}

const INNER_SRC: &str = "fd00:10:2::2";
const INNER_DST: &str = "fd00:20::5";

/// eth + H.Encaps(path) + inner, as another node sends it to us.
fn srv6_packet(src: &str, path: &[&str], segments_left: Option<u8>) -> Vec<u8> {
    let mut p = srv6_around(src, path, &inner(INNER_SRC, INNER_DST));
    if let Some(sl) = segments_left {
        let outer = &mut p[14..];
        outer[43] = sl;
        // The active segment is Segment List[SL], at 8 + 16 * SL into the SRH.
        let idx = 48 + 16 * sl as usize;
        let da = outer[idx..idx + 16].to_vec();
        outer[24..40].copy_from_slice(&da);
    }
    p
}

/// eth + H.Encaps(path) around the IPv6 or IPv4 packet `inner`.
fn srv6_around(src: &str, path: &[&str], inner: &[u8]) -> Vec<u8> {
    let path: Vec<Ipv6Addr> = path.iter().map(|s| a(s)).collect();
    let next_header = if inner[0] >> 4 == 4 { srv6::codec::NEXT_HEADER_IPV4 } else { NEXT_HEADER_IPV6 };
    let mut outer = encaps_header(a(src), &path, next_header, 64).unwrap();
    let plen = (outer.len() - 40 + inner.len()) as u16;
    outer[4..6].copy_from_slice(&plen.to_be_bytes());
    [eth(HOST_MAC, PEER_MAC, 0x86dd), outer, inner.to_vec()].concat()
}

const PATH: [&str; 3] = ["fcbb:bb00:1:e001::", "fcbb:bb00:2:e001::", "fcbb:bb00:2:d6::"];

#[test]
fn end_ad_inbound_decapsulates_caches_and_redirects_into_the_vnf() {
    let Some(b) = Bench::new() else { return };
    let pkt = srv6_packet("fcbb:bb00:2::1", &PATH, None);
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut want = eth(VNF_MAC, HOST_MAC, 0x86dd);
    want.extend_from_slice(&inner(INNER_SRC, INNER_DST));
    assert_eq!(out, want, "plain inner packet to the VNF's MAC");

    // The cache holds the outer headers after End: SL 2 -> 1, DA = next segment, hop limit -1,
    // payload length and flow label zeroed (set per packet on the way out).
    let cache = b.dp.ad_cache(b.vnf).unwrap().expect("cached");
    let hdr = cache.header();
    let (ip, srh, len) = srv6::codec::decode_srv6(hdr).unwrap();
    assert_eq!(len, 40 + 8 + 48);
    assert_eq!(srh.segments_left, 1);
    assert_eq!(ip.dst, a(PATH[1]));
    assert_eq!(ip.hop_limit, 63);
    assert_eq!((ip.payload_len, ip.flow_label), (0, 0));
    assert_eq!(ip.src, a("fcbb:bb00:2::1"));
    assert_eq!(b.dp.sid_stats(a(PATH[0])).unwrap().packets, 1);
}

#[test]
fn malformed_and_foreign_packets_are_dropped_with_their_reason() {
    let Some(b) = Bench::new() else { return };
    let good = srv6_packet("fcbb:bb00:2::1", &PATH, None);
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        p
    };
    // Offsets: eth 14, IPv6 14..54, SRH 54.. (next 54, hdr ext len 55, type 56, SL 57, LE 58).
    b.expect_drop(Hook::Uplink, b.uplink, &mutate(&|p| p[56] = 0), DropReason::Malformed);
    // RFC 8754 §4.3.1.1: Segments Left beyond Last Entry + 1 -> Parameter Problem pointing at
    // Segments Left (offset 43 of the IPv6 packet).
    b.expect_icmp(Hook::Uplink, b.uplink, &mutate(&|p| p[57] = 4), DropReason::SlRange, (4, 0, 43));
    // Last Entry beyond Hdr Ext Len -> Parameter Problem pointing at Last Entry (offset 44).
    b.expect_icmp(Hook::Uplink, b.uplink, &mutate(&|p| p[58] = 5), DropReason::LastEntry, (4, 0, 44));
    b.expect_drop(Hook::Uplink, b.uplink, &mutate(&|p| p.truncate(60)), DropReason::Malformed);
    // RFC 8986 §4.1: hop limit exhausted -> Time Exceeded; no SRH at a proxy SID -> Parameter
    // Problem, SR Upper-layer Header Error (code 4) pointing at the upper-layer header.
    b.expect_icmp(Hook::Uplink, b.uplink, &mutate(&|p| p[21] = 1), DropReason::HopLimit, (3, 0, 0));
    b.expect_drop(Hook::Uplink, b.uplink, &mutate(&|p| p[54] = 17), DropReason::InnerProto);
    b.expect_icmp(Hook::Uplink, b.uplink, &mutate(&|p| p[20] = 17), DropReason::NoSrh, (4, 4, 40));
    b.expect_drop(Hook::Uplink, b.uplink, &mutate(&|p| p[20] = 44), DropReason::Fragment);
    b.expect_drop(Hook::Uplink, b.uplink, &mutate(&|p| p[22..38].copy_from_slice(&a("2001:db8::1").octets())), DropReason::ForeignSource);
    // An End.AD SID as the last segment (Segments Left 0).
    let last = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:2:e001::", "fcbb:bb00:1:e001::"], Some(0));
    b.expect_icmp(Hook::Uplink, b.uplink, &last, DropReason::SlZero, (4, 4, 40 + 8 + 32));
    // Nine segments: more than the datapath's maximum.
    let nine: Vec<String> = (1..=9).map(|i| format!("fcbb:bb00:2:e{i:03x}::")).collect();
    let mut long = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:1:e001::"], None);
    {
        // Rebuild with nine segments by hand: the codec refuses more than the maximum.
        let mut srh = vec![41u8, 18, 4, 8, 8, 0, 0, 0];
        for s in nine.iter().rev() {
            srh.extend_from_slice(&a(s).octets());
        }
        long.truncate(54);
        long[18..20].copy_from_slice(&((srh.len() + 52) as u16).to_be_bytes());
        long.extend_from_slice(&srh);
        long.extend_from_slice(&inner(INNER_SRC, INNER_DST));
    }
    b.expect_drop(Hook::Uplink, b.uplink, &long, DropReason::TooManySegs);
    // An address of our locator that is no SID.
    let unknown = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:1:e0ff::", "fcbb:bb00:2:d6::"], None);
    b.expect_drop(Hook::Uplink, b.uplink, &unknown, DropReason::UnknownSid);
    // A decapsulation SID with segments left.
    let early = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:1:d6::", "fcbb:bb00:2:d6::"], None);
    b.expect_icmp(Hook::Uplink, b.uplink, &early, DropReason::SlNonzero, (4, 0, 43));
    assert_eq!(b.dp.sid_stats(a(PATH[0])).unwrap().packets, 0, "nothing half-processed was forwarded");
}

#[test]
fn uplink_passes_what_is_not_for_its_sids() {
    let Some(b) = Bench::new() else { return };
    for dst in ["fd00:20::5", "fcbb:bb00:1::1", "fcbb:bb00:2:e001::"] {
        let mut p = eth(HOST_MAC, PEER_MAC, 0x86dd);
        p.extend_from_slice(&inner(INNER_SRC, dst));
        let (verdict, out) = b.run(Hook::Uplink, b.uplink, &p);
        assert_eq!((verdict, &out), (TCX_NEXT, &p), "{dst}: not ours, on to the next program");
    }
    let arp = eth([0xff; 6], PEER_MAC, 0x0806);
    assert_eq!(b.run(Hook::Uplink, b.uplink, &[arp, vec![0; 28]].concat()).0, TCX_NEXT);
}

#[test]
fn decapsulation_sid_pops_and_hands_the_inner_packet_to_the_stack() {
    let Some(b) = Bench::new() else { return };
    let pkt = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:2:e001::", "fcbb:bb00:1:d6::"], Some(0));
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &pkt);
    assert_eq!(verdict, TC_ACT_OK);
    let mut want = eth(HOST_MAC, PEER_MAC, 0x86dd);
    want.extend_from_slice(&inner(INNER_SRC, INNER_DST));
    assert_eq!(out, want);
    assert_eq!(b.dp.sid_stats(a("fcbb:bb00:1:d6::")).unwrap().packets, 1);
}

/// Each SID's entry names its own counters: they count its packets only, survive its
/// re-installation and a restarted daemon, and a SID installed in a removed one's place (its
/// slot given again) starts at zero; a restarted daemon gives no new SID a slot still in use.
#[test]
fn each_sid_counts_its_own_packets_across_reinstalls_and_restarts() {
    let Some(mut b) = Bench::new() else { return };
    let (ad, dt) = (a(PATH[0]), a("fcbb:bb00:1:d6::"));
    let to_ad = srv6_packet("fcbb:bb00:2::1", &PATH, None);
    let to_dt = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:2:e001::", "fcbb:bb00:1:d6::"], Some(0));
    let packets = |dp: &Datapath, sid| dp.sid_stats(sid).unwrap().packets;
    for _ in 0..2 {
        assert_eq!(b.run(Hook::Uplink, b.uplink, &to_ad).0, TC_ACT_REDIRECT);
    }
    assert_eq!(b.run(Hook::Uplink, b.uplink, &to_dt).0, TC_ACT_OK);
    assert_eq!((packets(&b.dp, ad), packets(&b.dp, dt)), (2, 1));
    let entry = b.dp.sids().unwrap().into_iter().find(|(s, _)| *s == ad).unwrap().1;
    b.dp.set_sid(ad, entry).unwrap();
    assert_eq!(packets(&b.dp, ad), 2, "re-installed, its counters kept");

    // A restarted daemon: the pinned SIDs keep their counters and their slots.
    let pins = b._cleanup.pins.clone().unwrap();
    let mut restarted = Datapath::load(&pins).unwrap();
    let fresh = a("fcbb:bb00:1:e0ff::");
    restarted.set_sid(fresh, entry).unwrap();
    assert_eq!(b.run(Hook::Uplink, b.uplink, &to_ad).0, TC_ACT_REDIRECT);
    assert_eq!((packets(&restarted, ad), packets(&restarted, dt), packets(&restarted, fresh)), (3, 1, 0));

    // A SID in a removed one's slot starts at zero.
    restarted.remove_sid(ad).unwrap();
    restarted.remove_sid(fresh).unwrap();
    assert_eq!(packets(&restarted, ad), 0, "gone with its SID");
    let next = a("fcbb:bb00:1:e0fe::");
    restarted.set_sid(next, entry).unwrap();
    assert_eq!(packets(&restarted, next), 0, "a slot given again starts at zero");
    assert_eq!(packets(&restarted, dt), 1);
}

/// The other direction of `p` (an IPv6 or IPv4 packet with TCP or UDP): addresses and ports swapped,
/// hop limit or TTL `ttl` (IPv4 header checksum set).
fn other_direction(p: &[u8], ttl: u8) -> Vec<u8> {
    let mut r = p.to_vec();
    let (addrs, len, l4) = if p[0] >> 4 == 6 { (8, 16, 40) } else { (12, 4, 20) };
    r[addrs..addrs + len].copy_from_slice(&p[addrs + len..addrs + 2 * len]);
    r[addrs + len..addrs + 2 * len].copy_from_slice(&p[addrs..addrs + len]);
    r[l4..l4 + 2].copy_from_slice(&p[l4 + 2..l4 + 4]);
    r[l4 + 2..l4 + 4].copy_from_slice(&p[l4..l4 + 2]);
    if p[0] >> 4 == 6 {
        r[7] = ttl;
    } else {
        r[8] = ttl;
        set_ipv4_checksum(&mut r);
    }
    r
}

/// The ICMP error `p`'s destination sends its source about it (IPv6: port unreachable, quoting
/// it whole; IPv4: port unreachable, quoting its header and 8 bytes), checksums left 0 (the
/// datapath does not check them).
fn icmp_error_about(p: &[u8]) -> Vec<u8> {
    if p[0] >> 4 == 6 {
        let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&p[at..at + 16]).unwrap());
        return icmp6_error(addr(24), addr(8), (1, 4), p);
    }
    let mut e = vec![0x45, 0, 0, 20 + 8 + 28, 0, 0, 0, 0, 64, 1, 0, 0];
    e.extend_from_slice(&p[16..20]);
    e.extend_from_slice(&p[12..16]);
    set_ipv4_checksum(&mut e);
    e.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&p[..28]);
    e
}

/// An ICMPv6 error (`type_code`) from `src` to `dst` quoting `quote`, checksum left 0.
fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, (ty, code): (u8, u8), quote: &[u8]) -> Vec<u8> {
    ipv6_packet(src, dst, (58, 0), &[&[ty, code, 0, 0, 0, 0, 0, 0][..], quote].concat())
}

/// The node's conntrack never sees a steered packet plain (the headend encapsulates before
/// netfilter) and would take its flow's other direction for INVALID, which kube-proxy drops:
/// once the headend steered a flow, the packets of its other direction, plain on the uplink
/// (IPv6 and IPv4) or decapsulated here, and ICMP errors about its packets, are forwarded by the
/// FIB past netfilter, one hop less. Other flows go on to the stack as before.
#[test]
fn a_steered_flows_other_direction_is_forwarded_past_conntrack() {
    let Some(mut b) = Bench::new() else { return };
    let ip = |args: &str| assert!(Command::new("ip").args(["-n", &b.netns]).args(args.split_whitespace()).status().unwrap().success());
    // fd00:10:2::9 and 10.10.2.9: another pod behind src0, which no flow was steered to.
    for (addr, dev) in [(INNER_SRC, "src0"), ("10.10.2.2", "src0"), (INNER_DST, "vnf0"), ("fd00:10:2::9", "src0"), ("10.10.2.9", "src0")] {
        ip(&format!("route add {addr} dev {dev}"));
        ip(&format!("neigh add {addr} lladdr {} dev {dev} nud permanent", mac_str(&POD_MAC)));
    }
    // This thread lives in the test's netns (Bench::new).
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    let src_mac = {
        let out = Command::new("ip").args(["-n", &b.netns, "-o", "link", "show", "src0"]).output().unwrap();
        parse_mac(String::from_utf8_lossy(&out.stdout).split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap())
    };
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(1, &encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap(), 0).unwrap();
    b.dp.set_policy(2, &encaps_header(a("fcbb:bb00:1::1"), &path, 4, 64).unwrap(), 0).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 1);
    b.rule(b.src, "10.20.0.0/16".parse().unwrap(), 2);
    for (forward, proto) in [(inner(INNER_SRC, INNER_DST), 0x86dd), (inner4(SRC4, DST4), 0x0800)] {
        let reply = [eth(HOST_MAC, PEER_MAC, proto), other_direction(&forward, 64)].concat();
        let error = [eth(HOST_MAC, PEER_MAC, proto), icmp_error_about(&forward)].concat();
        assert_eq!(b.run(Hook::Uplink, b.uplink, &reply), (TCX_NEXT, reply.clone()), "no flow steered yet: to the stack");
        assert_eq!(b.run(Hook::Uplink, b.uplink, &error), (TCX_NEXT, error.clone()), "nor an error about it");
        assert_eq!(b.run(Hook::Headend, b.src, &[eth(HOST_MAC, POD_MAC, proto), forward.clone()].concat()).0, TC_ACT_REDIRECT);
        let (verdict, out) = b.run(Hook::Uplink, b.uplink, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT, "the reply of a steered flow ({proto:#x})");
        assert_eq!(out, [eth(POD_MAC, src_mac, proto), other_direction(&forward, 63)].concat(), "to the pod's MAC, one hop less");
        let (verdict, out) = b.run(Hook::Uplink, b.uplink, &error);
        assert_eq!(verdict, TC_ACT_REDIRECT, "an error about the steered flow's packet ({proto:#x})");
        assert_eq!(&out[..12], &eth(POD_MAC, src_mac, proto)[..12], "to the pod");
        // The same error to another pod than the quoted packet's source: not the flow's.
        let mut elsewhere = error.clone();
        if proto == 0x86dd {
            elsewhere[14 + 24..14 + 40].copy_from_slice(&a("fd00:10:2::9").octets());
        } else {
            elsewhere[14 + 16..14 + 20].copy_from_slice(&[10, 10, 2, 9]);
            set_ipv4_checksum(&mut elsewhere[14..34]);
        }
        assert_eq!(b.run(Hook::Uplink, b.uplink, &elsewhere), (TCX_NEXT, elsewhere.clone()), "to the stack");
        // Another flow between the same pods (other ports) is not the steered one.
        let mut other = reply.clone();
        let l4 = 14 + if proto == 0x86dd { 40 } else { 20 };
        other[l4 + 1] ^= 1;
        assert_eq!(b.run(Hook::Uplink, b.uplink, &other), (TCX_NEXT, other.clone()));
    }
    // A symmetric chain's other direction arrives encapsulated, to this node's decapsulation
    // SID: the pod at INNER_DST (on vnf0 here) steered INNER_DST -> INNER_SRC.
    let decap = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:2:e001::", "fcbb:bb00:1:d6::"], Some(0));
    assert_eq!(b.run(Hook::Uplink, b.uplink, &decap).0, TC_ACT_OK, "nothing steered that way yet: to the stack");
    b.rule(b.vnf, "fd00:10::/32".parse().unwrap(), 1);
    let reverse = other_direction(&inner(INNER_SRC, INNER_DST), 64);
    assert_eq!(b.run(Hook::Headend, b.vnf, &[eth(HOST_MAC, POD_MAC, 0x86dd), reverse].concat()).0, TC_ACT_REDIRECT);
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &decap);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut want = inner(INNER_SRC, INNER_DST);
    want[7] = 63;
    assert_eq!(&out[..6], &POD_MAC);
    assert_eq!(&out[12..], &[&[0x86, 0xdd][..], &want].concat()[..], "decapsulated, one hop less");
}

/// A steered flow's other direction reuses the FIB's next hop for at most SP_FIB_CACHE_NS, as
/// encap_forward does: right after the pod's neighbour entry changed its MAC, a reply can still
/// go to the old one (the cached hop: a lookup per packet never would), and once the entry has
/// expired every reply goes to the new one.
#[test]
fn a_steered_returns_next_hop_is_reused_for_its_lifetime_only() {
    let Some(mut b) = Bench::new() else { return };
    const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xdd, 1];
    const MOVED: [u8; 6] = [0x02, 0, 0, 0, 0xee, 3];
    // One `ip -batch` for the test's changes: no fork and exec between the packets (the window
    // looked into is a few ms); `neigh show` answers once the change is made.
    let mut ip = Command::new("ip").args(["-n", &b.netns, "-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let (mut to_ip, mut from_ip) = (ip.stdin.take().unwrap(), BufReader::new(ip.stdout.take().unwrap()));
    writeln!(to_ip, "route add {INNER_SRC} dev src0").unwrap();
    let mut neigh = move |mac: &[u8; 6]| {
        let mac = mac_str(mac);
        writeln!(to_ip, "neigh replace {INNER_SRC} lladdr {mac} dev src0 nud permanent\nneigh show {INNER_SRC} dev src0").unwrap();
        let mut line = String::new();
        from_ip.read_line(&mut line).unwrap();
        assert!(line.contains(&mac), "ip -batch: {line:?}");
    };
    neigh(&POD_MAC);
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(1, &encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap(), 0).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 1);
    let forward = inner(INNER_SRC, INNER_DST);
    assert_eq!(b.run(Hook::Headend, b.src, &[eth(HOST_MAC, POD_MAC, 0x86dd), forward.clone()].concat()).0, TC_ACT_REDIRECT);
    let reply = [eth(HOST_MAC, PEER_MAC, 0x86dd), other_direction(&forward, 64)].concat();
    let next_mac = |b: &Bench| {
        let (verdict, out) = b.run(Hook::Uplink, b.uplink, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT, "the reply of a steered flow");
        <[u8; 6]>::try_from(&out[..6]).unwrap()
    };
    // Twice the lifetime plus a tick of the clock it is measured by (HZ 100: 10 ms).
    let expire = || std::thread::sleep(std::time::Duration::from_millis(35));
    // The entry is fresh until the clock's next tick at most: some tries run both packets
    // within one tick, and those see the hop the first one cached.
    let cached = (0..100).any(|_| {
        neigh(&POD_MAC);
        expire();
        assert_eq!(next_mac(&b), POD_MAC, "an expired entry: the FIB's hop");
        neigh(&MOVED);
        next_mac(&b) == POD_MAC
    });
    assert!(cached, "no reply reused the next hop the reply before it was given");
    expire();
    assert_eq!(next_mac(&b), MOVED, "the neighbour's new MAC once the cached hop expired");
    assert_eq!(next_mac(&b), MOVED, "the neighbour's new MAC from the renewed entry");
    drop(neigh); // ip's stdin: it ends
    assert!(ip.wait().unwrap().success());
}

#[test]
fn end_ad_outbound_restores_the_headers_and_forwards_to_the_next_segment() {
    let Some(b) = Bench::new() else { return };
    // Learn from one inbound packet.
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None)).0, TC_ACT_REDIRECT);
    // The VNF sends the inner packet back (it decremented the hop limit, as routers do).
    let mut back = inner(INNER_SRC, INNER_DST);
    back[7] = 63;
    let mut pkt = eth(HOST_MAC, VNF_MAC, 0x86dd);
    pkt.extend_from_slice(&back);
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &PEER_MAC, "next hop's MAC from the FIB");
    assert_eq!(&out[6..12], &b.up_mac(), "the uplink's MAC");
    let (ip, srh, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
    assert_eq!(ip.dst, a(PATH[1]));
    assert_eq!(srh.segments_left, 1);
    assert_eq!(ip.payload_len as usize, out.len() - 14 - 40, "payload length for this packet");
    assert_ne!(ip.flow_label, 0, "flow label from the inner flow");
    // The label is the flow's: the same for another packet of it, another when its sender
    // changes its own label (repathing) and for another flow.
    let label_of = |p: &[u8]| {
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, p);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        srv6::codec::decode_srv6(&out[14..]).unwrap().0.flow_label
    };
    let mut same_flow = pkt.clone();
    *same_flow.last_mut().unwrap() ^= 0xff; // the payload (UDP checksum 0: not checked)
    assert_eq!(label_of(&same_flow), ip.flow_label, "one flow, one label");
    let mut repathed = pkt.clone();
    repathed[14 + 3] ^= 0x5a; // the inner flow label's low bits
    assert_ne!(label_of(&repathed), ip.flow_label, "the sender's new label");
    let mut other_flow = pkt.clone();
    other_flow[14 + 40 + 1] ^= 1; // the UDP source port
    assert_ne!(label_of(&other_flow), ip.flow_label, "another flow");
    let mut proxied = back.clone();
    proxied[7] = 62;
    assert_eq!(&out[14 + len..], &proxied[..], "inner packet intact but for the proxy's hop");
    // An inner packet at its last hop is not sent on (its source is told: see
    // inner_ttl_expiry_answers_time_exceeded_and_errors_never_answer_errors).
    let mut last_hop = pkt.clone();
    last_hop[14 + 7] = 1;
    let before = b.dp.drops(DropReason::InnerTtl).unwrap();
    assert_eq!(b.run(Hook::Vnf, b.vnf, &last_hop).0, TC_ACT_OK, "a Time Exceeded for the node's routing");
    assert_eq!(b.dp.drops(DropReason::InnerTtl).unwrap(), before + 1);

    // The VNF's own link-local traffic stays on the link; another interface has no cache.
    let mut nd = eth([0x33, 0x33, 0, 0, 0, 1], VNF_MAC, 0x86dd);
    nd.extend_from_slice(&inner("fe80::1", "ff02::1"));
    assert_eq!(b.run(Hook::Vnf, b.vnf, &nd), (TCX_NEXT, nd.clone()));
    b.expect_drop(Hook::Vnf, b.src, &pkt, DropReason::NoCache);
}

#[test]
fn headend_encapsulates_matching_traffic_and_leaves_the_rest() {
    let Some(mut b) = Bench::new() else { return };
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    let hdr = encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap();
    b.dp.set_policy(1, &hdr, 0).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 1);
    let mut pkt = eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd);
    let inner_pkt = inner(INNER_SRC, INNER_DST);
    pkt.extend_from_slice(&inner_pkt);
    let (verdict, out) = b.run(Hook::Headend, b.src, &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (ip, srh, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
    assert_eq!((ip.src, ip.dst), (a("fcbb:bb00:1::1"), path[0]));
    assert_eq!(srh.segments, vec![path[1], path[0]]);
    assert_eq!(ip.payload_len as usize, 8 + 32 + inner_pkt.len());
    assert_eq!(&out[14 + len..], &inner_pkt[..]);
    assert_eq!(&out[0..6], &PEER_MAC);

    // Other destinations, other interfaces and link-scope traffic go on to the next program.
    let mut other = eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd);
    other.extend_from_slice(&inner(INNER_SRC, "fd00:30::1"));
    assert_eq!(b.run(Hook::Headend, b.src, &other), (TCX_NEXT, other.clone()));
    assert_eq!(b.run(Hook::Headend, b.vnf, &pkt), (TCX_NEXT, pkt.clone()));
    let mut nd = eth([0x33, 0x33, 0, 0, 0, 1], [0x02, 0, 0, 0, 0xdd, 1], 0x86dd);
    nd.extend_from_slice(&inner("fe80::5", "ff02::2"));
    assert_eq!(b.run(Hook::Headend, b.src, &nd).0, TCX_NEXT);

    // A first segment on this node: served here (End.AD inline), the inner packet goes straight
    // into the VNF and the cache holds the header after End.
    let local = [a("fcbb:bb00:1:e001::"), a("fcbb:bb00:2:d6::")];
    let hdr = encaps_header(a("fcbb:bb00:1::1"), &local, NEXT_HEADER_IPV6, 64).unwrap();
    b.dp.set_policy(2, &hdr, 0).unwrap();
    b.rule(b.src, "fd00:20::5/128".parse().unwrap(), 2);
    let (verdict, out) = b.run(Hook::Headend, b.src, &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[..12], &[VNF_MAC, HOST_MAC].concat()[..], "most specific rule wins; to the VNF");
    assert_eq!(&out[14..], &inner_pkt[..]);
    let cache = b.dp.ad_cache(b.vnf).unwrap().unwrap();
    let (ip, srh, _) = srv6::codec::decode_srv6(cache.header()).unwrap();
    assert_eq!((ip.dst, srh.segments_left), (local[1], 0));
}

#[test]
fn pods_cannot_reach_sids_or_send_routing_headers() {
    let Some(b) = Bench::new() else { return };
    let from_pod = [0x02, 0, 0, 0, 0xdd, 1];
    // Straight to a SID: that would skip every function before it.
    let mut to_sid = eth(HOST_MAC, from_pod, 0x86dd);
    to_sid.extend_from_slice(&inner(INNER_SRC, "fcbb:bb00:2:e001::"));
    b.expect_drop(Hook::Headend, b.src, &to_sid, DropReason::ClosedDomain);
    // Self-made SRv6 (the pod's own H.Encaps): a routing header leaves no pod.
    let mut srv6 = srv6_packet(INNER_SRC, &["fd00:20::9", "fd00:20::5"], None);
    srv6[..12].copy_from_slice(&[HOST_MAC, from_pod].concat());
    b.expect_drop(Hook::Headend, b.src, &srv6, DropReason::ClosedDomain);
    // ... nor behind Hop-by-Hop and Destination Options headers (RFC 8200 §4.1 order).
    let behind = |b: &Bench, hook: Hook, ifindex: u32, mac: [u8; 6]| {
        let srv6 = srv6_packet(INNER_SRC, &["fd00:20::9", "fd00:20::5"], None);
        let (ip, rest) = srv6[14..].split_at(40);
        let mut ip = ip.to_vec();
        let plen = u16::from_be_bytes([ip[4], ip[5]]) + 16;
        ip[4..6].copy_from_slice(&plen.to_be_bytes());
        ip[6] = 0; // Hop-by-Hop
        let hbh = [60u8, 0, 1, 4, 0, 0, 0, 0]; // -> Destination Options, PadN
        let dst_opts = [43u8, 0, 1, 4, 0, 0, 0, 0]; // -> Routing
        let pkt = [eth(HOST_MAC, mac, 0x86dd), ip, hbh.to_vec(), dst_opts.to_vec(), rest.to_vec()].concat();
        b.expect_drop(hook, ifindex, &pkt, DropReason::ClosedDomain);
    };
    behind(&b, Hook::Headend, b.src, from_pod);
    // A VNF too.
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None)).0, TC_ACT_REDIRECT);
    let mut vnf_to_sid = eth(HOST_MAC, VNF_MAC, 0x86dd);
    vnf_to_sid.extend_from_slice(&inner(INNER_SRC, "fcbb:bb00:1:d6::"));
    b.expect_drop(Hook::Vnf, b.vnf, &vnf_to_sid, DropReason::ClosedDomain);
    behind(&b, Hook::Vnf, b.vnf, VNF_MAC);
    // Extension headers without a routing header are fine.
    let mut hbh_only = inner(INNER_SRC, INNER_DST);
    let plen = u16::from_be_bytes([hbh_only[4], hbh_only[5]]) + 8;
    hbh_only[4..6].copy_from_slice(&plen.to_be_bytes());
    hbh_only[6] = 0;
    hbh_only.splice(40..40, [17u8, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(b.run(Hook::Headend, b.src, &[eth(HOST_MAC, from_pod, 0x86dd), hbh_only].concat()).0, TCX_NEXT, "no chain: next program");
}

#[test]
fn ipv4_inner_through_every_behaviour() {
    let Some(mut b) = Bench::new() else { return };
    let v4 = inner4(SRC4, DST4);
    // End.AD inbound: IPv4 comes out, as an IPv4 frame.
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &srv6_packet4("fcbb:bb00:2::1", &PATH));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, [eth(VNF_MAC, HOST_MAC, 0x0800), v4.clone()].concat());
    // ... and goes back encapsulated with next header 4 in an IPv6 frame.
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x0800), v4.clone()].concat());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let (ip, srh, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
    assert_eq!((ip.dst, srh.next_header), (a(PATH[1]), 4));
    assert_eq!(&out[14 + len..], &inner4_ttl(SRC4, DST4, 63)[..], "TTL - 1, header checksum fixed");
    // The VNF may not answer an IPv4 flow with IPv6 on the learnt headers.
    let mut v6 = eth(HOST_MAC, VNF_MAC, 0x86dd);
    v6.extend_from_slice(&inner(INNER_SRC, INNER_DST));
    b.expect_drop(Hook::Vnf, b.vnf, &v6, DropReason::InnerProto);
    // Decapsulation at the last segment: an IPv4 frame for the stack.
    let last = srv6_packet4("fcbb:bb00:2::1", &["fcbb:bb00:1:d6::"]);
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &last);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, [eth(HOST_MAC, PEER_MAC, 0x0800), v4.clone()].concat());
    // Headend: an IPv4 rule and a next-header-4 policy.
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(7, &encaps_header(a("fcbb:bb00:1::1"), &path, 4, 64).unwrap(), 0).unwrap();
    b.rule(b.src, "10.20.0.0/16".parse().unwrap(), 7);
    let pkt = [eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x0800), v4.clone()].concat();
    let (verdict, out) = b.run(Hook::Headend, b.src, &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let (ip, srh, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
    assert_eq!((ip.dst, srh.next_header, ip.payload_len as usize), (path[0], 4, 8 + 32 + v4.len()));
    assert_eq!(&out[14 + len..], &v4[..]);
    let other = [eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x0800), inner4(SRC4, [10, 30, 0, 1])].concat();
    assert_eq!(b.run(Hook::Headend, b.src, &other).0, TCX_NEXT);
    let rules = b.dp.headend_rules().unwrap();
    assert!(rules.contains(&((b.src, "10.20.0.0/16".parse().unwrap()), 7)), "{rules:?}");
}

#[test]
fn end_ad_age_limits_how_often_the_cache_is_relearnt() {
    let Some(mut b) = Bench::new() else { return };
    let other = ["fcbb:bb00:1:e001::", "fcbb:bb00:3:e001::", "fcbb:bb00:3:d6::"];
    let next_of = |b: &Bench| srv6::codec::decode_srv6(b.dp.ad_cache(b.vnf).unwrap().unwrap().header()).unwrap().0.dst;
    // age 0: every packet is compared, a change lands at once.
    b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None));
    let first = b.dp.ad_cache(b.vnf).unwrap().unwrap();
    b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None));
    assert_eq!(b.dp.ad_cache(b.vnf).unwrap().unwrap().stamp, first.stamp, "unchanged: not rewritten");
    b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &other, None));
    assert_eq!(next_of(&b), a(other[1]));
    // A long age: a fresh cache is not even compared, so the change waits.
    b.dp.set_config(config(60_000_000_000)).unwrap();
    b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None));
    assert_eq!(next_of(&b), a(other[1]), "within the age: kept");
    b.dp.set_config(config(0)).unwrap();
    b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None));
    assert_eq!(next_of(&b), a(PATH[1]));
}

/// Scale: 10,000 proxy SIDs and 1,000 chains' headend rules and policies on one node; the first
/// and the last of each still steer (hash and LPM lookups: no per-chain scan).
#[test]
fn ten_thousand_sids_and_a_thousand_chains() {
    let Some(mut b) = Bench::new() else { return };
    let functs: Vec<u16> = srv6::sid::proxy_functs().take(10_000).collect();
    let sid = |i: u32| format!("fcbb:bb00:1:{:x}::", functs[i as usize]);
    for i in 0..10_000u32 {
        let s: Ipv6Addr = a(&sid(i));
        let ifindex = 100_000 + i; // delivery targets are not followed by BPF_PROG_TEST_RUN
        let entry =
            SidEntry { behavior: BEHAVIOR_END_AD, ifindex, cache_ifindex: ifindex, vnf_mac: VNF_MAC, host_mac: HOST_MAC, stream_port: 0 };
        b.dp.set_sid(s, entry).unwrap();
    }
    for (i, expect_ifindex) in [(0u32, 100_000u32), (9_999, 109_999)] {
        let s = sid(i);
        let (verdict, out) = b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &[&s, PATH[1], PATH[2]], None));
        assert_eq!(verdict, TC_ACT_REDIRECT, "SID #{i}");
        assert_eq!(&out[..6], &VNF_MAC);
        assert!(b.dp.ad_cache(expect_ifindex).unwrap().is_some(), "cache of SID #{i}'s interface");
    }
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    for i in 0..1_000u32 {
        let hdr =
            encaps_header(a("fcbb:bb00:1::1"), &[a(&format!("fcbb:bb00:2:{:x}::", 0xe001 + i)), path[1]], NEXT_HEADER_IPV6, 64).unwrap();
        b.dp.set_policy(i + 1, &hdr, 0).unwrap();
        b.rule(b.src, format!("fd00:{:x}::/32", 0x1000 + i).parse().unwrap(), i + 1);
    }
    for i in [0u32, 999] {
        let mut pkt = eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd);
        pkt.extend_from_slice(&inner(INNER_SRC, &format!("fd00:{:x}::7", 0x1000 + i)));
        let (verdict, out) = b.run(Hook::Headend, b.src, &pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT, "chain #{i}");
        let (ip, _, _) = srv6::codec::decode_srv6(&out[14..]).unwrap();
        assert_eq!(ip.dst, a(&format!("fcbb:bb00:2:{:x}::", 0xe001 + i)), "chain #{i}'s segment list");
    }
}

/// One VNF interface in two chains (or both directions): End.AD keeps headers per flow, so each
/// flow goes back out with its own chain's headers, whatever arrived last; flows it never saw
/// get the interface's last-learnt headers; releasing the interface forgets its flows.
#[test]
fn end_ad_per_flow_cache_serves_several_chains_on_one_interface() {
    let Some(mut b) = Bench::new() else { return };
    let chain_a = ["fcbb:bb00:1:e001::", "fcbb:bb00:2:e001::", "fcbb:bb00:2:d6::"];
    let chain_b = ["fcbb:bb00:1:e001::", "fcbb:bb00:2:e002::", "fcbb:bb00:2:d6::"];
    // Flow A (INNER_SRC -> INNER_DST) arrives on chain a, then flow B (reverse) on chain b.
    let flow_b = |p: &mut Vec<u8>| {
        let n = p.len();
        let inner = inner(INNER_DST, INNER_SRC);
        p.truncate(n - inner.len());
        p.extend_from_slice(&inner);
    };
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &chain_a, None)).0, TC_ACT_REDIRECT);
    let mut pb = srv6_packet("fcbb:bb00:2::1", &chain_b, None);
    flow_b(&mut pb);
    assert_eq!(b.run(Hook::Uplink, b.uplink, &pb).0, TC_ACT_REDIRECT);
    assert_eq!(b.dp.ad_flows(b.vnf).unwrap(), 2);
    let out_da = |b: &Bench, inner_pkt: Vec<u8>| -> Ipv6Addr {
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), inner_pkt].concat());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        srv6::codec::decode_srv6(&out[14..]).unwrap().0.dst
    };
    assert_eq!(out_da(&b, inner(INNER_SRC, INNER_DST)), a(chain_a[1]), "flow A on chain a's headers");
    assert_eq!(out_da(&b, inner(INNER_DST, INNER_SRC)), a(chain_b[1]), "flow B on chain b's");
    assert_eq!(out_da(&b, inner(INNER_SRC, "fd00:99::1")), a(chain_b[1]), "an unknown flow: the interface's last");
    b.dp.remove_ad_cache(b.vnf).unwrap();
    assert_eq!(b.dp.ad_flows(b.vnf).unwrap(), 0);
    b.expect_drop(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), inner(INNER_SRC, INNER_DST)].concat(), DropReason::NoCache);
}

/// One chain (SRH tag) cannot fill the shared per-flow LRU beyond its quota; a function that
/// rewrites flows is never matched per flow (its interface's headers only).
#[test]
fn end_ad_flow_quota_and_flow_rewriting_functions() {
    let Some(mut b) = Bench::new() else { return };
    b.dp.set_config(NodeConfig { flow_quota: 2, ..config(0) }).unwrap();
    const TAG: u16 = 0x5a5a;
    // Flow `sport` of a chain tagged TAG along `path`.
    let flow = |path: &[&str], sport: u16| {
        let mut p = srv6_packet("fcbb:bb00:2::1", path, None);
        p[14 + 46..14 + 48].copy_from_slice(&TAG.to_be_bytes());
        let n = p.len();
        let inner_at = n - inner(INNER_SRC, INNER_DST).len();
        p[inner_at + 40..inner_at + 42].copy_from_slice(&sport.to_be_bytes());
        p
    };
    for sport in [4000, 4001, 4002] {
        assert_eq!(b.run(Hook::Uplink, b.uplink, &flow(&PATH, sport)).0, TC_ACT_REDIRECT);
    }
    assert_eq!(b.dp.ad_flows(b.vnf).unwrap(), 2, "the quota");
    assert_eq!(b.dp.event(Event::FlowQuota).unwrap(), 1);
    // The daemon's counter has its own handles on the pinned maps.
    let mut counter = FlowCounter::open(b._cleanup.pins.as_ref().unwrap()).unwrap();
    let counts = counter.recount(&Default::default()).unwrap();
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), [(TAG, 2)]);
    // Entries gone (here: flushed; in life: evicted) are found by the recount and free quota.
    b.dp.remove_ad_cache(b.vnf).unwrap();
    let counts = counter.recount(&[(TAG, 2)].into()).unwrap();
    assert!(counts.is_empty());
    assert_eq!(b.run(Hook::Uplink, b.uplink, &flow(&PATH, 4003)).0, TC_ACT_REDIRECT);
    assert_eq!(b.dp.ad_flows(b.vnf).unwrap(), 1);

    // Flow 4003 was learnt on PATH; flow 4004 then arrives on another path, which the interface
    // keeps. The VNF returns flow 4003: matched per flow, unless its function rewrites flows.
    let other = ["fcbb:bb00:1:e001::", "fcbb:bb00:2:e00f::", "fcbb:bb00:2:d6::"];
    assert_eq!(b.run(Hook::Uplink, b.uplink, &flow(&other, 4004)).0, TC_ACT_REDIRECT);
    let returned = |b: &Bench| {
        let mut back = inner(INNER_SRC, INNER_DST);
        back[40..42].copy_from_slice(&4003u16.to_be_bytes());
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), back].concat());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        srv6::codec::decode_srv6(&out[14..]).unwrap().0.dst
    };
    assert_eq!(returned(&b), a(PATH[1]), "per flow");
    b.dp.set_vnf_flags(b.vnf, srv6pipes_ebpf::VNF_NO_FLOWS).unwrap();
    assert_eq!(returned(&b), a(other[1]), "per interface only");
    let before = b.dp.ad_flows(b.vnf).unwrap();
    assert_eq!(b.run(Hook::Uplink, b.uplink, &flow(&PATH, 4005)).0, TC_ACT_REDIRECT);
    assert_eq!(b.dp.ad_flows(b.vnf).unwrap(), before, "no flow learnt for a flow-rewriting function");

    // An interface that serves several chains (or both directions of one) never sends a flow it
    // has no entry for on the headers of whichever flow came last: dropped and counted.
    b.dp.set_vnf_flags(b.vnf, srv6pipes_ebpf::VNF_SHARED).unwrap();
    let mut unknown = inner(INNER_SRC, INNER_DST);
    unknown[40..42].copy_from_slice(&4999u16.to_be_bytes());
    b.expect_drop(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), unknown].concat(), DropReason::FlowMiss);
    assert_eq!(returned(&b), a(PATH[1]), "a known flow still takes its own headers");
}

/// Replicas: the headend picks one per hop from the hop's slot table by the flow's
/// direction-independent hash (srv6::flow, whatever the flow label says) — the same for every
/// packet of a flow and for its replies crossing the function at another hop (a symmetric
/// chain's reverse rule), spread over flows; a Closed policy drops and counts.
#[test]
fn headend_picks_replicas_per_flow_and_drops_closed_chains() {
    let Some(mut b) = Bench::new() else { return };
    let replicas: Vec<Sid> = (1..=3).map(|i| Sid(a(&format!("fcbb:bb00:2:e00{i}::")))).collect();
    let decap = a("fcbb:bb00:2:d6::");
    let slots: Vec<Ipv6Addr> = srv6::compiler::replica_slots(&replicas).iter().map(|s| s.0).collect();
    // Forward: the replicas are hop 0. Reverse: another function first, the replicas at hop 1.
    let other = a("fcbb:bb00:2:e00f::");
    let fwd = encaps_header(a("fcbb:bb00:1::1"), &[replicas[0].0, decap], NEXT_HEADER_IPV6, 64).unwrap();
    let rev = encaps_header(a("fcbb:bb00:1::1"), &[other, replicas[0].0, decap], NEXT_HEADER_IPV6, 64).unwrap();
    b.dp.set_hop_slots(3, 0, &slots).unwrap();
    b.dp.set_policy(3, &fwd, 1 << 0).unwrap();
    b.dp.set_hop_slots(6, 1, &slots).unwrap();
    b.dp.set_policy(6, &rev, 1 << 1).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 3);
    b.rule(b.src, "fd00:10:2::/64".parse().unwrap(), 6);
    // A UDP packet (src, dst, sport -> dport, flow label).
    let udp6 = |(src, dst): (&str, &str), (sport, dport): (u16, u16), label: u16| -> Vec<u8> {
        let mut i = inner(src, dst);
        i[40..42].copy_from_slice(&sport.to_be_bytes());
        i[42..44].copy_from_slice(&dport.to_be_bytes());
        i[2..4].copy_from_slice(&label.to_be_bytes());
        i
    };
    // The replica an IPv6 packet is sent to.
    let via = |b: &Bench, i: &[u8]| -> Ipv6Addr {
        let pkt = [&eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd)[..], i].concat();
        let (verdict, out) = b.run(Hook::Headend, b.src, &pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (ip, srh, _) = srv6::codec::decode_srv6(&out[14..]).unwrap();
        let last = srh.segments.len() - 1;
        assert_eq!(srh.segments[last], ip.dst, "the DA is the first segment");
        assert_eq!(srh.segments[0], decap);
        srh.segments[1]
    };
    let chosen = |b: &Bench, addrs: (&str, &str), ports: (u16, u16), label: u16| via(b, &udp6(addrs, ports, label));
    let mut seen = std::collections::BTreeSet::new();
    for sport in 1000..1060 {
        let first = chosen(&b, (INNER_SRC, INNER_DST), (sport, 5000), sport);
        let hash = srv6::flow::flow_hash(a(INNER_SRC).into(), a(INNER_DST).into(), 17, (sport, 5000), false);
        assert_eq!(first, slots[srv6::flow::replica_slot(hash)], "the datapath hashes as srv6::flow does");
        assert_eq!(chosen(&b, (INNER_SRC, INNER_DST), (sport, 5000), sport ^ 0x5a5a), first, "a flow keeps its replica");
        let back = chosen(&b, (INNER_DST, INNER_SRC), (5000, sport), 7);
        assert_eq!(back, first, "the reply crosses the same replica");
        let error = icmp6_error(a(INNER_DST), a(INNER_SRC), (1, 4), &udp6((INNER_SRC, INNER_DST), (sport, 5000), sport));
        assert_eq!(via(&b, &error), first, "so does an ICMP error about the flow");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "60 flows spread over all three replicas: {seen:?}");
    // failurePolicy Closed with a function down: dropped, counted, never sent unsteered.
    b.dp.set_policy(4, &[], srv6pipes_ebpf::POLICY_DROP).unwrap();
    b.rule(b.src, "fd00:20::5/128".parse().unwrap(), 4);
    let pkt = [eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd), inner(INNER_SRC, INNER_DST)].concat();
    b.expect_drop(Hook::Headend, b.src, &pkt, DropReason::NoReplica);
    assert_eq!(b.dp.policy_stats(4).unwrap().drops, 1);
}

/// Classifier stage 2 in the datapath: protocol and port blocks within a class, longest block
/// first; fragments (first or later, IPv4 and IPv6) by protocol alone; source ports for a
/// class with reverse rules, the lower rank winning when both kinds match.
#[test]
fn headend_classifies_by_protocol_ports_and_fragments() {
    let Some(mut b) = Bench::new() else { return };
    let hdr = |sid: &str| encaps_header(a("fcbb:bb00:1::1"), &[a(sid), a("fcbb:bb00:2:d6::")], NEXT_HEADER_IPV6, 64).unwrap();
    b.dp.set_policy(1, &hdr("fcbb:bb00:2:e001::"), 0).unwrap();
    b.dp.set_policy(2, &hdr("fcbb:bb00:2:e002::"), 0).unwrap();
    // Class 9: UDP 8000-8080 -> 1, UDP any port -> 2; UDP fragments -> 1.
    for (port, len) in srv6::classifier::port_blocks(8000, 8080) {
        b.dp.set_l4_rule(9, Some(17), port, len, L4Target { policy: 1, rank: 0 }).unwrap();
    }
    b.dp.set_l4_rule(9, Some(17), 0, 0, L4Target { policy: 2, rank: 1 }).unwrap();
    b.dp.set_frag_rule(9, Some(17), 1).unwrap();
    b.dp.set_headend_rule(b.src, "fd00:20::/64".parse().unwrap(), 9).unwrap();
    let from = [0x02, 0, 0, 0, 0xdd, 1];
    let da = |b: &Bench, pkt: Vec<u8>| -> Option<Ipv6Addr> {
        match b.run(Hook::Headend, b.src, &pkt) {
            (TC_ACT_REDIRECT, out) => Some(srv6::codec::decode_srv6(&out[14..]).unwrap().0.dst),
            (TCX_NEXT, _) => None,
            other => panic!("{other:?}"),
        }
    };
    let udp_to = |dport: u16| {
        let mut i = inner(INNER_SRC, INNER_DST);
        i[42..44].copy_from_slice(&dport.to_be_bytes());
        [eth(HOST_MAC, from, 0x86dd), i].concat()
    };
    assert_eq!(da(&b, udp_to(8080)), Some(a("fcbb:bb00:2:e001::")));
    assert_eq!(da(&b, udp_to(8000)), Some(a("fcbb:bb00:2:e001::")));
    assert_eq!(da(&b, udp_to(8081)), Some(a("fcbb:bb00:2:e002::")), "outside the range: any port");
    let mut tcp = inner(INNER_SRC, INNER_DST);
    tcp[6] = 6;
    assert_eq!(da(&b, [eth(HOST_MAC, from, 0x86dd), tcp].concat()), None, "TCP is not classified");
    // An IPv6 fragment of UDP (Fragment header, offset 1184): no ports to look at.
    let mut frag = inner(INNER_SRC, INNER_DST);
    frag[6] = 44;
    frag.splice(40..40, [17u8, 0, 0x04, 0xa0, 0, 0, 0, 1]);
    assert_eq!(da(&b, [eth(HOST_MAC, from, 0x86dd), frag].concat()), Some(a("fcbb:bb00:2:e001::")));
    // Options headers (Hop-by-Hop, Destination Options: 8 bytes each, PadN) before the UDP header
    // hide nothing: the datagram to port 8080 takes its rule's chain, as it would bare.
    let behind = |kinds: &[u8]| {
        let mut i = inner(INNER_SRC, INNER_DST);
        i[42..44].copy_from_slice(&8080u16.to_be_bytes());
        i[6] = kinds[0];
        // Each header names the next: the following one's kind, the last UDP (17).
        let exts: Vec<u8> = kinds[1..].iter().copied().chain([17]).flat_map(|next| [next, 0, 1, 4, 0, 0, 0, 0]).collect();
        let plen = u16::from_be_bytes([i[4], i[5]]) + exts.len() as u16;
        i[4..6].copy_from_slice(&plen.to_be_bytes());
        i.splice(40..40, exts);
        [eth(HOST_MAC, from, 0x86dd), i].concat()
    };
    assert_eq!(da(&b, behind(&[60])), Some(a("fcbb:bb00:2:e001::")), "behind Destination Options");
    assert_eq!(da(&b, behind(&[0, 60])), Some(a("fcbb:bb00:2:e001::")), "behind Hop-by-Hop and Destination Options");
    // More of them than the headend walks: refused (by the closed domain's guard, which walks
    // as far), not passed on unclassified.
    b.expect_drop(Hook::Headend, b.src, &behind(&[0, 60, 60, 60, 60]), DropReason::ClosedDomain);
    // IPv4: a later fragment (offset != 0) of UDP in class 10.
    b.dp.set_policy(5, &encaps_header(a("fcbb:bb00:1::1"), &[a("fcbb:bb00:2:e001::")], 4, 64).unwrap(), 0).unwrap();
    b.dp.set_frag_rule(10, None, 5).unwrap();
    b.dp.set_headend_rule(b.src, "10.20.0.0/16".parse().unwrap(), 10).unwrap();
    let mut v4 = inner4(SRC4, DST4);
    v4[6] = 0x00;
    v4[7] = 0x10; // fragment offset 16 (x 8 bytes), no ports in this packet
    assert_eq!(da(&b, [eth(HOST_MAC, from, 0x0800), v4].concat()), Some(a("fcbb:bb00:2:e001::")), "any-protocol fragment rule");
    let whole = [eth(HOST_MAC, from, 0x0800), inner4(SRC4, DST4)].concat();
    assert_eq!(da(&b, whole), None, "no stage-2 rule for unfragmented IPv4 in class 10");

    // A symmetric chain's reverse rule in class 11 (flagged): UDP from source port 53 -> 1
    // (rank 1); a higher-priority rule of another chain, UDP to port 5000 -> 2 (rank 0).
    b.dp.set_l4_rule(11 | CLASS_SRC_PORTS, Some(17), 53, 16, L4Target { policy: 1, rank: 1 }).unwrap();
    b.dp.set_l4_rule(11, Some(17), 5000, 16, L4Target { policy: 2, rank: 0 }).unwrap();
    b.dp.set_headend_rule(b.src, "fd00:21::/64".parse().unwrap(), 11 | CLASS_SRC_PORTS).unwrap();
    let udp = |sport: u16, dport: u16| {
        let mut i = inner(INNER_SRC, "fd00:21::1");
        i[40..42].copy_from_slice(&sport.to_be_bytes());
        i[42..44].copy_from_slice(&dport.to_be_bytes());
        [eth(HOST_MAC, from, 0x86dd), i].concat()
    };
    assert_eq!(da(&b, udp(53, 40000)), Some(a("fcbb:bb00:2:e001::")), "a reply from port 53");
    assert_eq!(da(&b, udp(54, 40000)), None, "not from port 53: not the chain's reply");
    assert_eq!(da(&b, udp(53, 5000)), Some(a("fcbb:bb00:2:e002::")), "both match: the lower rank");
    assert_eq!(da(&b, udp(54, 5000)), Some(a("fcbb:bb00:2:e002::")));
}

/// End.AS: inbound like End.AD but nothing is learnt; outbound, the interface's configured
/// return policy (per family) gives the headers, whatever arrived.
#[test]
fn end_as_restores_configured_headers() {
    let Some(mut b) = Bench::new() else { return };
    // The interface served End.AD before (a chain change): its caches still hold headers.
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet4("fcbb:bb00:2::1", &PATH)).0, TC_ACT_REDIRECT);
    b.dp.set_vnf_flags(b.vnf, srv6pipes_ebpf::VNF_AS).unwrap();
    let sid = a("fcbb:bb00:1:e00a::");
    let entry = SidEntry {
        behavior: srv6pipes_ebpf::BEHAVIOR_END_AS,
        ifindex: b.vnf,
        cache_ifindex: b.vnf,
        vnf_mac: VNF_MAC,
        host_mac: HOST_MAC,
        stream_port: 0,
    };
    b.dp.set_sid(sid, entry).unwrap();
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &[&sid.to_string(), PATH[1], PATH[2]], None));
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    assert_eq!(out, [eth(VNF_MAC, HOST_MAC, 0x86dd), inner(INNER_SRC, INNER_DST)].concat());
    let flows = b.dp.ad_flows(b.vnf).unwrap();
    let (verdict, _) = b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &[&sid.to_string(), PATH[1], PATH[2]], None));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(b.dp.ad_flows(b.vnf).unwrap(), flows, "a static proxy learns nothing");
    // Configured return: the rest of the chain (here another SID of n2, then its decap).
    let back = [a("fcbb:bb00:2:e005::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(11, &encaps_header(a("fcbb:bb00:1::1"), &back, NEXT_HEADER_IPV6, 64).unwrap(), 0).unwrap();
    b.dp.set_as_return(b.vnf, 6, 11).unwrap();
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), inner(INNER_SRC, INNER_DST)].concat());
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    let (ip, srh, _) = srv6::codec::decode_srv6(&out[14..]).unwrap();
    assert_eq!((ip.src, ip.dst, srh.segments_left), (a("fcbb:bb00:1::1"), back[0], 1));
    assert_eq!(b.dp.policy_stats(11).unwrap().packets, 1);
    // No IPv4 return configured: an IPv4 packet has nothing to go back with, whatever End.AD
    // learnt there before (never fail open onto another chain's headers).
    b.expect_drop(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x0800), inner4(SRC4, DST4)].concat(), DropReason::NoReturn);
}

/// eth + the inner packet with an SRH inserted after its IPv6 header (H.Insert): `path` in
/// travel order, the packet's own destination as Segment List[0], `sl` segments left, DA the
/// active segment.
fn inserted(pkt_src: &str, pkt_dst: &str, path: &[&str], sl: u8) -> Vec<u8> {
    let plain = inner(pkt_src, pkt_dst);
    let mut travel: Vec<Ipv6Addr> = path.iter().map(|s| a(s)).collect();
    travel.push(a(pkt_dst));
    let mut srh = srv6::codec::Srh::for_path(&travel, plain[6]).unwrap();
    srh.segments_left = sl;
    let mut hdr = Vec::new();
    srh.encode(&mut hdr).unwrap();
    let mut ip = plain[..40].to_vec();
    ip[6] = 43;
    ip[4..6].copy_from_slice(&((plain.len() - 40 + hdr.len()) as u16).to_be_bytes());
    ip[24..40].copy_from_slice(&srh.segments[sl as usize].octets());
    [ip, hdr, plain[40..].to_vec()].concat()
}

#[test]
fn end_am_masquerades_with_an_inserted_srh() {
    let Some(mut b) = Bench::new() else { return };
    const AM: &str = "fcbb:bb00:1:e00b::";
    const NEXT: &str = "fcbb:bb00:2:e001::";
    let entry = SidEntry {
        behavior: srv6pipes_ebpf::BEHAVIOR_END_AM,
        ifindex: b.vnf,
        cache_ifindex: b.vnf,
        vnf_mac: VNF_MAC,
        host_mac: HOST_MAC,
        stream_port: 0,
    };
    b.dp.set_sid(a(AM), entry).unwrap();
    b.dp.set_vnf_flags(b.vnf, srv6pipes_ebpf::VNF_AM).unwrap();
    let ip = |args: &str| {
        let ok = Command::new("ip").args(["-n", &b.netns]).args(args.split_whitespace()).status().unwrap().success();
        assert!(ok, "ip {args}");
    };
    ip("route add fd00:20::/64 via fd00:ffff::2 dev up0");

    // Headend, H.Insert: the SRH goes between the IPv6 header and the UDP header, Segment
    // List[0] is the original destination; the first segment is remote: out of the uplink.
    let tmpl = encaps_header(a("fcbb:bb00:1::1"), &[a(NEXT), Ipv6Addr::UNSPECIFIED], 0, 64).unwrap();
    b.dp.set_policy(7, &tmpl, srv6pipes_ebpf::POLICY_INSERT).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 7);
    let from_pod = [0x02, 0, 0, 0, 0xdd, 1];
    let (verdict, out) = b.run(Hook::Headend, b.src, &[eth(HOST_MAC, from_pod, 0x86dd), inner(INNER_SRC, INNER_DST)].concat());
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    assert_eq!(&out[..12], &[PEER_MAC, b.up_mac()].concat()[..]);
    assert_eq!(&out[14..], &inserted(INNER_SRC, INNER_DST, &[NEXT], 1)[..], "exactly H.Insert");
    assert_eq!(b.dp.policy_stats(7).unwrap().packets, 1);

    // Uplink: End.AM from an admitted pod source. DA <- Segment List[0], SL and hop limit -1,
    // the SRH stays; into the VNF.
    let arriving = [eth(HOST_MAC, PEER_MAC, 0x86dd), inserted(INNER_SRC, INNER_DST, &[AM, NEXT], 2)].concat();
    b.expect_drop(Hook::Uplink, b.uplink, &arriving, DropReason::ForeignSource);
    b.dp.set_insert_source(format!("{INNER_SRC}/128").parse().unwrap()).unwrap();
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &arriving);
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    let mut expect = inserted(INNER_SRC, INNER_DST, &[AM, NEXT], 1);
    expect[24..40].copy_from_slice(&a(INNER_DST).octets());
    expect[7] = 63;
    assert_eq!(out, [eth(VNF_MAC, HOST_MAC, 0x86dd), expect.clone()].concat(), "masqueraded");
    assert_eq!(b.dp.sid_stats(a(AM)).unwrap().packets, 1);
    // Only End.AM takes an inserted SRH: an End.AD SID finds no encapsulated packet.
    let to_ad = [eth(HOST_MAC, PEER_MAC, 0x86dd), inserted("fcbb:bb00:2::1", INNER_DST, &[PATH[0]], 1)].concat();
    b.expect_drop(Hook::Uplink, b.uplink, &to_ad, DropReason::InnerProto);
    let mut sl0 = arriving.clone();
    sl0[14 + 43] = 0;
    b.expect_icmp(Hook::Uplink, b.uplink, &sl0, DropReason::SlZero, (4, 4, 40 + 8 + 48));

    // The VNF forwards it (hop limit -1): de-masqueraded, DA <- the next segment, SRH kept, to
    // the next node.
    let mut back = expect.clone();
    back[7] = 62;
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), back.clone()].concat());
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    let mut restored = back.clone();
    restored[24..40].copy_from_slice(&a(NEXT).octets());
    assert_eq!(out, [eth(PEER_MAC, b.up_mac(), 0x86dd), restored].concat());

    // What a masquerading VNF cannot do (End.AM remembers per flow the SRH it gave): return a
    // flow with another source, or with a segment list of its own making (another SID of the
    // domain, which would skip functions, or an address outside it).
    let mut spoofed = back.clone();
    spoofed[8..24].copy_from_slice(&a("fd00:10:2::99").octets());
    b.expect_drop(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), spoofed].concat(), DropReason::Forged);
    for other in ["fcbb:bb00:2:e00f::", "2001:db8::1"] {
        let mut rerouted = back.clone();
        rerouted[40 + 8 + 16..40 + 8 + 32].copy_from_slice(&a(other).octets()); // Segment List[1]
        b.expect_drop(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), rerouted].concat(), DropReason::Forged);
    }

    // The last proxy (Segments Left 0): the destination is the active segment, the SRH is popped
    // and the packet goes on exactly as the source sent it (but for the hops).
    let to_last = [eth(HOST_MAC, PEER_MAC, 0x86dd), inserted(INNER_SRC, INNER_DST, &[NEXT, AM], 1)].concat();
    assert_eq!(b.run(Hook::Uplink, b.uplink, &to_last).0, TC_ACT_REDIRECT);
    let mut last = inserted(INNER_SRC, INNER_DST, &[NEXT, AM], 0);
    last[7] = 62;
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), last].concat());
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    let mut plain = inner(INNER_SRC, INNER_DST);
    plain[7] = 62;
    assert_eq!(out, [eth(PEER_MAC, b.up_mac(), 0x86dd), plain.clone()].concat(), "SRH popped");

    // Nor send without the SRH.
    b.expect_drop(Hook::Vnf, b.vnf, &[eth(HOST_MAC, VNF_MAC, 0x86dd), plain].concat(), DropReason::NoSrh);
}

#[test]
fn reduced_srh_without_the_first_segment_is_accepted() {
    let Some(b) = Bench::new() else { return };
    // RFC 8754 §4.1.1: the first segment may be left out; Segments Left = Last Entry + 1.
    let mut pkt = srv6_packet("fcbb:bb00:2::1", &[PATH[1], PATH[2]], None);
    pkt[14 + 24..14 + 40].copy_from_slice(&a(PATH[0]).octets());
    pkt[14 + 43] = 2;
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &pkt);
    assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
    assert_eq!(&out[14..], &inner(INNER_SRC, INNER_DST)[..]);
    let cache = b.dp.ad_cache(b.vnf).unwrap().unwrap();
    let (ip, srh, _) = srv6::codec::decode_srv6(cache.header()).unwrap();
    assert_eq!((ip.dst, srh.segments_left), (a(PATH[1]), 1));
}

/// A TCP SYN (options NOP, NOP, SACK permitted, MSS `mss`) over IPv6 or IPv4, checksums set.
fn tcp_syn(v6: bool, mss: u16) -> Vec<u8> {
    tcp_syn_with(v6, &[1, 1, 4, 2], mss, &[])
}

/// A TCP SYN whose options are `before`, MSS `mss`, then `after` (a multiple of 4 bytes in all).
fn tcp_syn_with(v6: bool, before: &[u8], mss: u16, after: &[u8]) -> Vec<u8> {
    let optlen = before.len() + 4 + after.len();
    assert_eq!(optlen % 4, 0);
    let mut tcp = vec![0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, (((20 + optlen) / 4) << 4) as u8, 0x02, 0xff, 0xff, 0, 0, 0, 0];
    tcp.extend_from_slice(before);
    tcp.extend_from_slice(&[2, 4]);
    tcp.extend_from_slice(&mss.to_be_bytes());
    tcp.extend_from_slice(after);
    let (mut ip, pseudo) = if v6 {
        let mut ip = Vec::new();
        srv6::codec::Ipv6Header {
            traffic_class: 0,
            flow_label: 0,
            payload_len: tcp.len() as u16,
            next_header: 6,
            hop_limit: 64,
            src: a(INNER_SRC),
            dst: a(INNER_DST),
        }
        .encode(&mut ip);
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        (ip, pseudo)
    } else {
        let mut ip = inner4(SRC4, DST4)[..20].to_vec();
        ip[9] = 6;
        ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        set_ipv4_checksum(&mut ip);
        let mut pseudo = ip[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        (ip, pseudo)
    };
    let sum = !(ones_complement_sum(&tcp, ones_complement_sum(&pseudo, 0)) as u16);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// An IPv6 (or IPv4) UDP packet of `len` bytes from the source pod.
fn sized(v6: bool, len: usize) -> Vec<u8> {
    let mut p = if v6 { inner(INNER_SRC, INNER_DST) } else { inner4(SRC4, DST4) };
    let grow = len - p.len();
    p.extend(std::iter::repeat_n(0xab, grow));
    if v6 {
        let plen = (len - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p[44..46].copy_from_slice(&plen.to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        set_ipv4_checksum(&mut p);
        p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    }
    p
}

#[test]
fn headend_answers_oversize_packets_and_clamps_tcp_mss() {
    let Some(mut b) = Bench::new() else { return };
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    for (id, inner, dst) in [(1, NEXT_HEADER_IPV6, "fd00:20::/64"), (2, srv6::codec::NEXT_HEADER_IPV4, "10.20.0.0/16")] {
        b.dp.set_policy(id, &encaps_header(a("fcbb:bb00:1::1"), &path, inner, 64).unwrap(), 0).unwrap();
        b.rule(b.src, dst.parse().unwrap(), id);
    }
    let from_pod = [0x02, 0, 0, 0, 0xdd, 1];
    let frame = |v6: bool, ip: Vec<u8>| [eth(HOST_MAC, from_pod, if v6 { 0x86dd } else { 0x0800 }), ip].concat();

    // Up to the inner MTU: carried. One byte more: Packet Too Big (IPv6) / Fragmentation
    // Needed (IPv4) with the MTU, back to the pod, counted as `mtu`.
    for v6 in [true, false] {
        let fits = frame(v6, sized(v6, INNER_MTU as usize));
        assert_eq!(b.run(Hook::Headend, b.src, &fits).0, TC_ACT_REDIRECT, "v6 {v6}: {:?}", b.dp.drop_reasons().unwrap());
        let big = frame(v6, sized(v6, INNER_MTU as usize + 1));
        let error = if v6 { (2, 0, INNER_MTU) } else { (3, 4, INNER_MTU) };
        let reply = b.expect_icmp(Hook::Headend, b.src, &big, DropReason::Mtu, error);
        assert!(reply.len() - 14 <= if v6 { 1280 } else { 576 }, "fits the minimum MTU: {}", reply.len());
    }
    let id = 1;
    assert_eq!(b.dp.policy_stats(id).unwrap().drops, 1, "the chain counts what it could not carry");

    // A SYN announcing more than fits: MSS lowered to the inner MTU less IP and TCP headers,
    // checksum still valid; a SYN announcing less is left alone.
    for (v6, clamped) in [(true, INNER_MTU - 60), (false, INNER_MTU - 40)] {
        let before = b.dp.event(Event::MssClamped).unwrap();
        let (verdict, out) = b.run(Hook::Headend, b.src, &frame(v6, tcp_syn(v6, 1460)));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, _, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
        let want = tcp_syn(v6, clamped as u16);
        assert_eq!(&out[14 + len..], &want[..], "v6 {v6}: MSS {clamped}, checksum fixed");
        assert_eq!(b.dp.event(Event::MssClamped).unwrap(), before + 1);
        let (_, out) = b.run(Hook::Headend, b.src, &frame(v6, tcp_syn(v6, 1200)));
        let (_, _, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
        assert_eq!(&out[14 + len..], &tcp_syn(v6, 1200)[..]);
        // The MSS option at an odd offset (after one NOP), and in the last four bytes of the
        // 40 options may take (behind four 9-byte options of an unknown kind).
        let unknown: Vec<u8> = (0..4).flat_map(|_| [254, 9, 0, 0, 0, 0, 0, 0, 0]).collect();
        for (before, after) in [(&[1u8][..], &[1u8, 1, 1][..]), (&unknown[..], &[][..])] {
            let (_, out) = b.run(Hook::Headend, b.src, &frame(v6, tcp_syn_with(v6, before, 1460, after)));
            let (_, _, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
            let want = tcp_syn_with(v6, before, clamped as u16, after);
            assert_eq!(&out[14 + len..], &want[..], "v6 {v6}, MSS after {} option bytes: clamped, checksum fixed", before.len());
        }
    }
}

/// RFC 6040 and the DSCP: the headend's outer header copies the inner traffic class (ECN and
/// DSCP); decapsulation (End.AD inbound here) marks an ECT inner packet CE under a CE outer,
/// turns ECT(0) into ECT(1) under an ECT(1) outer, drops a Not-ECT one under a CE outer
/// (counted as `ecn`), and keeps the inner DSCP; IPv4's header checksum follows.
#[test]
fn ecn_and_dscp_follow_rfc_6040() {
    let Some(mut b) = Bench::new() else { return };
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(1, &encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap(), 0).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 1);
    let tc6 = |ip: &[u8]| ip[0] << 4 | ip[1] >> 4;
    let set_tc6 = |ip: &mut [u8], tc: u8| {
        ip[0] = 0x60 | tc >> 4;
        ip[1] = (ip[1] & 0x0f) | tc << 4;
    };
    // Push: EF (DSCP 46) with ECT(1) and AF11 with CE go out with the same outer traffic class.
    for tc in [0xb9u8, 0x2b] {
        let mut i = inner(INNER_SRC, INNER_DST);
        set_tc6(&mut i, tc);
        let (verdict, out) = b.run(Hook::Headend, b.src, &[eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd), i.clone()].concat());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (_, _, len) = srv6::codec::decode_srv6(&out[14..]).unwrap();
        assert_eq!(tc6(&out[14..]), tc, "the outer copies the inner traffic class");
        assert_eq!(&out[14 + len..], &i[..], "the inner packet as sent");
    }
    // Decapsulation, IPv6 inner: (outer ECN, inner traffic class) -> inner traffic class, or a drop.
    let outer_len = 40 + 8 + 16 * PATH.len();
    let with = |outer_ecn: u8, inner_tc: u8| {
        let mut p = srv6_packet("fcbb:bb00:2::1", &PATH, None);
        let outer_tc = 0x28 | outer_ecn;
        set_tc6(&mut p[14..], outer_tc);
        set_tc6(&mut p[14 + outer_len..], inner_tc);
        p
    };
    for (outer_ecn, inner_tc, want) in
        [(3, 0x2a, 0x2b), (3, 0x29, 0x2b), (1, 0x2a, 0x29), (2, 0x29, 0x29), (0, 0x2a, 0x2a), (1, 0x28, 0x28)]
    {
        let (verdict, out) = b.run(Hook::Uplink, b.uplink, &with(outer_ecn, inner_tc));
        assert_eq!(verdict, TC_ACT_REDIRECT, "outer ECN {outer_ecn}, inner {inner_tc:#x}");
        assert_eq!(tc6(&out[14..]), want, "outer ECN {outer_ecn}, inner {inner_tc:#x}");
    }
    b.expect_drop(Hook::Uplink, b.uplink, &with(3, 0x28), DropReason::Ecn);
    // IPv4 inner: CE over ECT(0), the TOS byte and a valid header checksum.
    let mut p4 = srv6_packet4("fcbb:bb00:2::1", &PATH);
    set_tc6(&mut p4[14..], 0x03);
    p4[14 + outer_len + 1] = 0x2a;
    set_ipv4_checksum(&mut p4[14 + outer_len..14 + outer_len + 20]);
    let (verdict, out) = b.run(Hook::Uplink, b.uplink, &p4);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[15], 0x2b, "CE, DSCP kept");
    assert_eq!(ones_complement_sum(&out[14..34], 0), 0xffff, "IPv4 header checksum");
}

/// A proxy is a hop of the inner packet on the way back: a packet the VNF returns with its last
/// hop spent is dropped (`inner_ttl`, not the outer `hop_limit`) and its source gets Time
/// Exceeded through the node's routing (the source is not behind the VNF's interface). No ICMP
/// error is ever sent about an ICMP error (RFC 4443 §2.4 (e)).
#[test]
fn inner_ttl_expiry_answers_time_exceeded_and_errors_never_answer_errors() {
    let Some(b) = Bench::new() else { return };
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None)).0, TC_ACT_REDIRECT);
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet4("fcbb:bb00:2::1", &PATH)).0, TC_ACT_REDIRECT);
    for v6 in [true, false] {
        let ip = if v6 {
            let mut i = inner(INNER_SRC, INNER_DST);
            i[7] = 1;
            i
        } else {
            inner4_ttl(SRC4, DST4, 1)
        };
        let pkt = [eth(HOST_MAC, VNF_MAC, if v6 { 0x86dd } else { 0x0800 }), ip].concat();
        let before = (b.dp.drops(DropReason::InnerTtl).unwrap(), b.dp.event(Event::IcmpSent).unwrap());
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, &pkt);
        assert_eq!(verdict, TC_ACT_OK, "to the node's routing");
        assert_eq!(b.dp.drops(DropReason::InnerTtl).unwrap(), before.0 + 1);
        assert_eq!(b.dp.event(Event::IcmpSent).unwrap(), before.1 + 1);
        assert_eq!(&out[..12], &pkt[..12], "the frame's MACs kept: the node itself receives it");
        // check_icmp_error expects the MACs swapped back to a sender: present it that way.
        let as_sent = [&pkt[6..12], &pkt[..6], &pkt[12..]].concat();
        check_icmp_error(&as_sent, &out, if v6 { (3, 0, 0) } else { (11, 0, 0) });
    }
    // An ICMPv6 error that a pod sends too big for the chain: dropped, nobody told.
    let mut b = b;
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(1, &encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap(), 0).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 1);
    let mut err = sized(true, INNER_MTU as usize + 1);
    err[6] = 58;
    err[40] = 1; // destination unreachable
    let sent = b.dp.event(Event::IcmpSent).unwrap();
    b.expect_drop(Hook::Headend, b.src, &[eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd), err].concat(), DropReason::Mtu);
    assert_eq!(b.dp.event(Event::IcmpSent).unwrap(), sent, "no error about an error");
}

/// A route whose MTU is below what a pushed packet needs (an uplink smaller than the one the
/// node's inner MTU was computed from): the outer header comes off again and the source hears
/// the MTU left for the inner packet, back to the pod at the headend, through the node's
/// routing from a VNF. Never a silent `mtu` drop.
#[test]
fn a_route_too_small_for_the_encapsulation_answers_packet_too_big() {
    let Some(mut b) = Bench::new() else { return };
    let set = Command::new("ip").args(["-n", &b.netns, "link", "set", "up0", "mtu", "1390"]).status().unwrap();
    assert!(set.success());
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(1, &encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap(), 0).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 1);
    // Headend: 1,324 bytes fit the inner MTU; with 80 bytes of outer header, not the route.
    let pkt = [eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd), sized(true, INNER_MTU as usize)].concat();
    b.expect_icmp(Hook::Headend, b.src, &pkt, DropReason::Mtu, (2, 0, 1390 - 80));
    // A VNF's packet on End.AD's headers (96 bytes: three segments).
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None)).0, TC_ACT_REDIRECT);
    // A short packet first: the next hop the FIB gave for it (sp_fib_cache) is never reused for
    // a longer packet than it was checked for.
    let short = [eth(HOST_MAC, VNF_MAC, 0x86dd), sized(true, 200)].concat();
    assert_eq!(b.run(Hook::Vnf, b.vnf, &short).0, TC_ACT_REDIRECT, "200 bytes fit");
    let back = [eth(HOST_MAC, VNF_MAC, 0x86dd), sized(true, 1300)].concat();
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &back);
    assert_eq!(verdict, TC_ACT_OK, "to the node's routing: {:?}", b.dp.drop_reasons().unwrap());
    // As the proxy forwarded it (hop limit - 1), presented as check_icmp_error expects.
    let mut as_sent = [&back[6..12], &back[..6], &back[12..]].concat();
    as_sent[14 + 7] -= 1;
    check_icmp_error(&as_sent, &out, (2, 0, 1390 - 96));
    // With a route to the source, the FIB sends the error there, past the node's netfilter.
    const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xdd, 1];
    for args in
        [format!("route add {INNER_SRC} dev src0"), format!("neigh add {INNER_SRC} lladdr {} dev src0 nud permanent", mac_str(&POD_MAC))]
    {
        assert!(Command::new("ip").args(["-n", &b.netns]).args(args.split_whitespace()).status().unwrap().success());
    }
    let (verdict, out) = b.run(Hook::Vnf, b.vnf, &back);
    assert_eq!((verdict, &out[..6]), (TC_ACT_REDIRECT, &POD_MAC[..]), "to the source's next hop");
}

/// encap_forward reuses the FIB's next hop for at most SP_FIB_CACHE_NS (10 ms): a neighbour
/// that changed its MAC is used within that, and the renewed entry holds it.
#[test]
fn a_next_hop_the_fib_gave_is_reused_for_its_lifetime_only() {
    let Some(b) = Bench::new() else { return };
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None)).0, TC_ACT_REDIRECT);
    let pkt = [eth(HOST_MAC, VNF_MAC, 0x86dd), inner(INNER_SRC, INNER_DST)].concat();
    let next_mac = |b: &Bench| {
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, &pkt);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        out[..6].to_vec()
    };
    assert_eq!(next_mac(&b), PEER_MAC);
    let moved = [0x02, 0, 0, 0, 0xee, 0x02];
    let set = Command::new("ip")
        .args(["-n", &b.netns, "neigh", "replace", "fd00:ffff::2", "lladdr", &mac_str(&moved), "dev", "up0", "nud", "permanent"])
        .status()
        .unwrap();
    assert!(set.success());
    // Twice the lifetime plus a tick of the clock it is measured by (HZ 100: 10 ms).
    std::thread::sleep(std::time::Duration::from_millis(35));
    assert_eq!(next_mac(&b), moved, "the neighbour's new MAC once the cached next hop expired");
    // The entry renewed by that lookup holds the new MAC too (not only the packet that did it).
    assert_eq!(next_mac(&b), moved, "the neighbour's new MAC from the renewed entry");
}

#[test]
fn icmp_errors_from_a_vnf_go_to_the_source_not_down_the_chain() {
    let Some(b) = Bench::new() else { return };
    // Learn caches (IPv4, then IPv6: the interface's), so that the VNF's ordinary packets would
    // be encapsulated, and the two flows the errors below quote.
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet4("fcbb:bb00:2::1", &PATH)).0, TC_ACT_REDIRECT);
    assert_eq!(b.run(Hook::Uplink, b.uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None)).0, TC_ACT_REDIRECT);
    // The VNF cannot deliver the chain's packet and says so to its source.
    let quote = inner(INNER_SRC, INNER_DST);
    let err6 = icmp6_error(a("fd00:99::3"), a(INNER_SRC), (1, 1), &quote); // administratively prohibited
    let pkt = [eth(HOST_MAC, VNF_MAC, 0x86dd), err6].concat();
    assert_eq!(b.run(Hook::Vnf, b.vnf, &pkt), (TC_ACT_OK, pkt.clone()), "to the node's routing, unchanged");
    let mut err4 = inner4([10, 99, 0, 3], SRC4)[..20].to_vec();
    err4[9] = 1;
    err4.extend_from_slice(&[3, 13, 0, 0, 0, 0, 0, 0]);
    err4.extend_from_slice(&inner4(SRC4, DST4)[..28]);
    let pkt4 = [eth(HOST_MAC, VNF_MAC, 0x0800), err4].concat();
    assert_eq!(b.run(Hook::Vnf, b.vnf, &pkt4).0, TC_ACT_OK);
    // With a route to the source, the FIB sends them there, past the node's netfilter (whose
    // conntrack never saw the flow plain: INVALID).
    b.route_to_the_sources();
    for p in [&pkt, &pkt4] {
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, p);
        assert_eq!((verdict, &out[..6]), (TC_ACT_REDIRECT, &POD_MAC[..]), "to the source's next hop");
    }
    // An echo request is no error: it takes the chain like anything else the VNF sends.
    let mut echo = pkt.clone();
    echo[14 + 40] = 128;
    assert_eq!(b.run(Hook::Vnf, b.vnf, &echo).0, TC_ACT_REDIRECT);
    // Errors the source sent down the chain, which the VNF forwards, go on down the chain like
    // any of the flow's packets (sent the source's way, they would skip the rest): one about
    // the flow, and one addressed to the source of the packet it quotes, a flow that never came
    // in here.
    let about_the_flow = icmp6_error(a(INNER_SRC), a(INNER_DST), (1, 4), &quote);
    let about_another = icmp6_error(a(INNER_SRC), a(INNER_DST), (1, 4), &inner(INNER_DST, "fd00:99::7"));
    for sent in [about_the_flow, about_another] {
        let (verdict, into_vnf) = b.run(Hook::Uplink, b.uplink, &srv6_around("fcbb:bb00:2::1", &PATH, &sent));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let forwarded = [eth(HOST_MAC, VNF_MAC, 0x86dd), into_vnf[14..].to_vec()].concat();
        let (verdict, out) = b.run(Hook::Vnf, b.vnf, &forwarded);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
        assert_eq!(srv6::codec::decode_srv6(&out[14..]).unwrap().0.dst, a(PATH[1]), "on to the chain's next segment");
    }
}

/// A TCP reset a VNF makes in answer to a chain's packet (a REJECT's: End.AD delivered the
/// packet with the reply mark of the interface it delivered on, which the VNF's stack reflects
/// onto its answer and its rule routes back out of the chain interface) goes to the source by
/// the FIB, past the node's netfilter, IPv6 and IPv4, on an interface that serves one chain or
/// several (where a packet of no learnt flow is dropped), and on a pair's return interface. A
/// reset of the flow itself (the source's, forwarded), a reset carrying data and any other
/// packet of the other direction take the chain. A function that rewrites flows gets no mark.
#[test]
fn a_reset_a_vnf_makes_goes_to_the_source_not_down_the_chain() {
    let Some(mut b) = Bench::new() else { return };
    b.route_to_the_sources();
    // A pair's SID: delivered on the uplink's interface (any other than the return one will do).
    let pair = ["fcbb:bb00:1:e002::", PATH[1], PATH[2]];
    let entry = SidEntry {
        behavior: BEHAVIOR_END_AD,
        ifindex: b.uplink,
        cache_ifindex: b.vnf,
        vnf_mac: VNF_MAC,
        host_mac: HOST_MAC,
        stream_port: 0,
    };
    b.dp.set_sid(a(pair[0]), entry).unwrap();
    let with_flags = |p: &[u8], flags: u8| {
        let mut p = p.to_vec();
        let l4 = if p[0] >> 4 == 6 { 40 } else { 20 };
        p[l4 + 13] = flags;
        p
    };
    let cases = [(&PATH, 0, "one chain"), (&PATH, srv6pipes_ebpf::VNF_SHARED, "shared"), (&pair, 0, "a pair")];
    for ((path, flags, what), v6) in cases.iter().flat_map(|c| [(c, true), (c, false)]) {
        b.dp.set_vnf_flags(b.vnf, *flags).unwrap();
        let syn = tcp_syn(v6, 1000);
        let into = srv6_around("fcbb:bb00:2::1", &path[..], &syn);
        let r = b.dp.test_run(Hook::Uplink, &into, SkbCtx { ifindex: b.uplink, mark: 0 }).unwrap();
        let delivered_on = if path[0] == pair[0] { b.uplink } else { b.vnf };
        assert_eq!((r.retval, r.mark), (TC_ACT_REDIRECT, srv6::node_api::reply_mark(delivered_on)), "into the VNF: {what}, v6 {v6}");
        let from_vnf = |p: &[u8]| [eth(HOST_MAC, VNF_MAC, if v6 { 0x86dd } else { 0x0800 }), p.to_vec()].concat();
        for reset in [with_flags(&other_direction(&syn, 64), 0x14), with_flags(&other_direction(&syn, 64), 0x04)] {
            let (verdict, out) = b.run(Hook::Vnf, b.vnf, &from_vnf(&reset));
            assert_eq!((verdict, &out[..6], &out[14..]), (TC_ACT_REDIRECT, &POD_MAC[..], &reset[..]), "to the source: {what}, v6 {v6}");
        }
        if *flags & srv6pipes_ebpf::VNF_SHARED != 0 {
            continue; // (what is not a made reset drops there as flow_miss)
        }
        // With data (the SYN's options, as a payload: its data offset says 20 bytes).
        let mut with_data = with_flags(&other_direction(&syn, 64), 0x14);
        with_data[if v6 { 40 + 12 } else { 20 + 12 }] = 0x50;
        for p in [with_flags(&syn, 0x14), with_flags(&other_direction(&syn, 64), 0x12), with_data] {
            let (verdict, out) = b.run(Hook::Vnf, b.vnf, &from_vnf(&p));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{:?}", b.dp.drop_reasons().unwrap());
            assert_eq!(srv6::codec::decode_srv6(&out[14..]).unwrap().0.dst, a(PATH[1]), "down the chain: {what}, v6 {v6}");
        }
    }
    b.dp.set_vnf_flags(b.vnf, srv6pipes_ebpf::VNF_NO_FLOWS).unwrap();
    let r = b.dp.test_run(Hook::Uplink, &srv6_packet("fcbb:bb00:2::1", &PATH, None), SkbCtx { ifindex: b.uplink, mark: 0 }).unwrap();
    assert_eq!((r.retval, r.mark), (TC_ACT_REDIRECT, 0), "a function that rewrites flows");
}

/// Every record the ring holds now.
fn drain(m: &mut Monitor) -> Vec<MonitorRecord> {
    std::iter::from_fn(|| m.read()).collect()
}

#[test]
fn the_monitor_reports_drops_and_traces_only_while_attached() {
    let Some(mut b) = Bench::new() else { return };
    let mut m = b.monitor();
    let unknown = srv6_packet("fcbb:bb00:2::1", &["fcbb:bb00:1:e0ff::", "fcbb:bb00:2:d6::"], None);
    let good = srv6_packet("fcbb:bb00:2::1", &PATH, None);

    // Detached: drops are counted, nothing is sent.
    b.expect_drop(Hook::Uplink, b.uplink, &unknown, DropReason::UnknownSid);
    assert_eq!(b.run(Hook::Uplink, b.uplink, &good).0, TC_ACT_REDIRECT);
    assert!(drain(&mut m).is_empty(), "a detached monitor sends nothing");

    // Drops: reason, hook, interface, the SID, the SRH's tag and the inner flow.
    m.configure(MonitorConfig { flags: MONITOR_DROPS, ..Default::default() }).unwrap();
    b.expect_drop(Hook::Uplink, b.uplink, &unknown, DropReason::UnknownSid);
    assert_eq!(b.run(Hook::Uplink, b.uplink, &good).0, TC_ACT_REDIRECT);
    let events = drain(&mut m);
    assert_eq!(events.len(), 1, "one drop, no trace: {events:?}");
    let e = &events[0];
    assert_eq!(
        (e.kind(), e.hook(), e.reason(), e.ifindex, e.verdict),
        (Some(RecordKind::Drop), "uplink", Some(DropReason::UnknownSid), b.uplink, TC_ACT_SHOT)
    );
    assert_eq!(e.sid(), Some(a("fcbb:bb00:1:e0ff::")));
    assert_eq!(e.tag(), Some(0), "encaps_header sets tag 0");
    let f = e.flow().unwrap();
    assert_eq!((f.proto, f.src, f.sport, f.dst, f.dport), (17, a(INNER_SRC).into(), 4000, a(INNER_DST).into(), 5000));

    // A drop answered with an ICMP error (not TC_ACT_SHOT) is a drop too, with the SID it counts
    // against.
    let mut short = good.clone();
    short[21] = 1;
    b.expect_icmp(Hook::Uplink, b.uplink, &short, DropReason::HopLimit, (3, 0, 0));
    let events = drain(&mut m);
    assert_eq!(events.iter().map(|e| (e.reason(), e.sid())).collect::<Vec<_>>(), vec![(Some(DropReason::HopLimit), Some(a(PATH[0])))]);
    let f = events[0].flow().expect("the flow of the packet the error quotes, not the error's");
    assert_eq!((f.proto, f.src, f.dst), (17, a(INNER_SRC).into(), a(INNER_DST).into()));

    // A headend policy that drops (failurePolicy Closed): the policy and the plain flow.
    let path = [a("fcbb:bb00:2:e001::"), a("fcbb:bb00:2:d6::")];
    b.dp.set_policy(7, &encaps_header(a("fcbb:bb00:1::1"), &path, NEXT_HEADER_IPV6, 64).unwrap(), POLICY_DROP).unwrap();
    b.rule(b.src, "fd00:20::/64".parse().unwrap(), 7);
    let plain = [eth(HOST_MAC, [0x02, 0, 0, 0, 0xdd, 1], 0x86dd), inner(INNER_SRC, INNER_DST)].concat();
    b.expect_drop(Hook::Headend, b.src, &plain, DropReason::NoReplica);
    let e = drain(&mut m).pop().expect("the headend's drop");
    assert_eq!((e.hook(), e.reason(), e.policy(), e.sid(), e.ifindex), ("headend", Some(DropReason::NoReplica), Some(7), None, b.src));
    assert_eq!(e.flow().unwrap().dst, std::net::IpAddr::from(a(INNER_DST)));

    // Traces: every packet (sample 1), as it arrived, with its verdict; a sampled-out drop
    // reports nothing.
    m.configure(MonitorConfig { flags: MONITOR_TRACE, ..Default::default() }).unwrap();
    assert_eq!(b.run(Hook::Uplink, b.uplink, &good).0, TC_ACT_REDIRECT);
    let e = drain(&mut m).pop().expect("a trace");
    assert_eq!(
        (e.kind(), e.hook(), e.verdict, e.sid(), e.reason()),
        (Some(RecordKind::Trace), "uplink", TC_ACT_REDIRECT, Some(a(PATH[0])), None)
    );
    assert_eq!(e.len as usize, good.len());
    m.configure(MonitorConfig { flags: MONITOR_DROPS, drop_sample: u32::MAX, ..Default::default() }).unwrap();
    for _ in 0..3 {
        b.expect_drop(Hook::Uplink, b.uplink, &unknown, DropReason::UnknownSid);
    }
    assert!(drain(&mut m).len() <= 1, "1 in 2^32 drops sampled");

    // The rate limit: at most `rate` events per second per CPU, the rest counted.
    m.configure(MonitorConfig { flags: MONITOR_DROPS, rate: 2, ..Default::default() }).unwrap();
    let (limited, _) = m.not_sent().unwrap();
    for _ in 0..5 {
        b.expect_drop(Hook::Uplink, b.uplink, &unknown, DropReason::UnknownSid);
    }
    let sent = drain(&mut m).len();
    assert!(sent <= 2, "{sent} events sent at 2 per second");
    assert_eq!(m.not_sent().unwrap().0 - limited, 5 - sent as u64, "the rest counted as limited");

    // Detached again: nothing more.
    m.configure(MonitorConfig::default()).unwrap();
    b.expect_drop(Hook::Uplink, b.uplink, &unknown, DropReason::UnknownSid);
    assert!(drain(&mut m).is_empty());
}

/// The filters on `dev`'s clsact ingress in the bench's netns (`tc -j`), with their options.
fn ingress_filters(b: &Bench, dev: &str) -> Vec<serde_json::Value> {
    let out = Command::new("tc").args(["-n", &b.netns, "-j", "filter", "show", "dev", dev, "ingress"]).output().unwrap();
    assert!(out.status.success(), "tc filter show: {}", String::from_utf8_lossy(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    all.into_iter().filter(|f| f.get("options").is_some()).collect()
}

/// `sp_vnf` sits on a VNF veth as one direct-action cls_bpf filter, not a tcx link (whose attach
/// waits for an RCU grace period with RTNL held, on the CNI ADD's answer path): attached once
/// however often it is asked, given a restarted daemon's program in place, removed by detach,
/// and a veth of the same name made since is left alone.
/// `keep_first`'s every-second check: the head of an interface's tcx chain by one query.
#[test]
fn the_head_of_a_tcx_chain_is_read_by_one_query() {
    let Some(mut b) = Bench::new() else { return };
    let up0 = nix::net::if_::if_nametoindex("up0").unwrap();
    assert_eq!(srv6pipes_ebpf::first_tcx_ingress(up0), None, "nothing attached yet");
    b.dp.attach(Hook::Uplink, "up0").unwrap();
    assert_eq!(srv6pipes_ebpf::first_tcx_ingress(up0), Some(b.dp.program_id(Hook::Uplink).unwrap()));
    assert!(b.dp.keep_first().unwrap().is_empty(), "ours is first: nothing moved");
    assert_eq!(srv6pipes_ebpf::first_tcx_ingress(u32::MAX), None, "no such interface");
}

#[test]
fn the_vnf_program_is_a_filter_swapped_in_place_and_removed_by_detach() {
    let Some(mut b) = Bench::new() else { return };
    b.dp.attach(Hook::Vnf, "vnf0").unwrap();
    b.dp.attach(Hook::Vnf, "vnf0").unwrap();
    let prog_of = |b: &Bench| -> u64 {
        let filters = ingress_filters(b, "vnf0");
        assert_eq!(filters.len(), 1, "{filters:?}");
        let f = &filters[0];
        assert_eq!((f["pref"].as_u64(), f["kind"].as_str()), (Some(1), Some("bpf")), "{f}");
        assert_eq!(f["options"]["direct-action"], true, "{f}");
        assert_eq!(f["options"]["prog"]["name"], "sp_vnf", "{f}");
        f["options"]["prog"]["id"].as_u64().unwrap()
    };
    let first = prog_of(&b);
    let net = Command::new("ip").args(["netns", "exec", &b.netns, "bpftool", "-j", "net", "show", "dev", "vnf0"]).output().unwrap();
    if net.status.success() {
        let tcx = String::from_utf8_lossy(&net.stdout).matches("tcx/").count();
        assert_eq!(tcx, 0, "no tcx link on the VNF veth: {}", String::from_utf8_lossy(&net.stdout));
    } else {
        eprintln!("bpftool net show unavailable ({}): tcx not checked", String::from_utf8_lossy(&net.stderr).trim());
    }

    // A restarted daemon (a second instance on the same pins) swaps its program in.
    let pins = b._cleanup.pins.clone().unwrap();
    let mut restarted = Datapath::load(&pins).unwrap();
    restarted.attach(Hook::Vnf, "vnf0").unwrap();
    let second = prog_of(&b);
    assert_ne!(first, second, "the restarted daemon's program replaced the first");

    restarted.detach(Hook::Vnf, "vnf0").unwrap();
    assert!(ingress_filters(&b, "vnf0").is_empty(), "detached");
    restarted.detach(Hook::Vnf, "vnf0").unwrap();

    // The first instance still thinks it holds vnf0's filter; the veth is replaced by one of
    // the same name with a filter of its own: detaching the old one leaves the new one.
    let ip = |args: &str| assert!(Command::new("ip").args(["-n", &b.netns]).args(args.split_whitespace()).status().unwrap().success());
    ip("link del vnf0");
    ip("link add name vnf0 type veth peer name vnf0p");
    restarted.attach(Hook::Vnf, "vnf0").unwrap();
    b.dp.detach(Hook::Vnf, "vnf0").unwrap();
    assert_eq!(ingress_filters(&b, "vnf0").len(), 1, "the new veth's filter stays");
}

/// A daemon of another build on the same pins (an upgrade): a map whose layout changed is
/// replaced (loading reused it as it was, for programs that read it another way), the others
/// keep their entries; the link the previous daemon pinned gets this build's program in place
/// (the same link, its pin kept). A restart of the same build replaces no map.
#[test]
fn another_build_on_the_pins_replaces_changed_maps_and_takes_over_the_links() {
    use aya::programs::links::{FdLink, PinnedLink};
    let Some(mut b) = Bench::new() else { return };
    let pins = b._cleanup.pins.clone().unwrap();
    b.dp.attach(Hook::Uplink, "up0").unwrap();
    let pin = pins.join("links").join(format!("uplink-up0-{}", b.uplink));
    let link = || FdLink::from(PinnedLink::from_pin(&pin).unwrap()).info().unwrap();
    let before = link();

    let same = Datapath::load(&pins).unwrap();
    assert_eq!(same.replaced_maps(), [] as [String; 0], "the same build's maps are kept");
    drop(same);

    // The previous build's sp_vnf_flags had 8-byte values.
    let flags = pins.join("sp_vnf_flags");
    std::fs::remove_file(&flags).unwrap();
    let hash = 1; // BPF_MAP_TYPE_HASH
    let old = aya::maps::MapData::create(aya_obj::Map::new_from_params(hash, 4, 8, 16384, 0), "sp_vnf_flags", None).unwrap();
    old.pin(&flags).unwrap();
    let mut upgraded = Datapath::load(&pins).unwrap();
    assert_eq!(upgraded.replaced_maps(), ["sp_vnf_flags: value bytes 8 -> 4"]);
    assert_eq!(aya::maps::MapInfo::from_pin(&flags).unwrap().value_size(), 4, "created afresh");
    upgraded.set_vnf_flags(b.vnf, 1).unwrap();
    assert_eq!(upgraded.sids().unwrap().len(), 2, "sp_sids kept, with its entries");
    assert_eq!(link().program_id(), before.program_id(), "the previous daemon's program until the take-over");

    let taken: Vec<(Hook, String)> = upgraded.take_over_adopted().into_iter().map(Result::unwrap).collect();
    assert_eq!(taken, [(Hook::Uplink, "up0".to_string())]);
    let after = link();
    assert_eq!(after.id(), before.id(), "the same link, in place");
    assert_eq!(after.program_id(), upgraded.program_id(Hook::Uplink).unwrap(), "running this instance's program");
    assert!(upgraded.take_over_adopted().is_empty(), "once");
    upgraded.detach(Hook::Uplink, "up0").unwrap();
    assert!(!pin.exists(), "detached by the instance that took it over");
}
