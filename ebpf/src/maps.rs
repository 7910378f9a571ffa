//! `#[repr(C)]` mirrors of `bpf/lib/common.h`. Sizes are checked against the object's BTF-free
//! expectations in the tests below; change both sides together.

/// `SP_MAX_SEGS`: equals `srv6::MAX_SEGMENTS`.
pub const MAX_SEGS: usize = 8;
/// `SP_MAX_HDR`: IPv6 header + SRH with `MAX_SEGS` segments.
pub const MAX_HDR: usize = 40 + 8 + 16 * MAX_SEGS;

/// `SP_POLICY_DROP`: the headend drops the policy's traffic (failurePolicy Closed).
pub const POLICY_DROP: u32 = 1 << 31;
/// `SP_POLICY_INSERT`: H.Insert (SRH insertion, End.AM chains) instead of H.Encaps.
pub const POLICY_INSERT: u32 = 1 << 30;
/// `SP_REPLICA_SLOTS`: slots of a hop's replica table.
pub const REPLICA_SLOTS: usize = 64;

pub const BEHAVIOR_END_AD: u32 = 1;
pub const BEHAVIOR_END_AS: u32 = 3;
pub const BEHAVIOR_END_DT46: u32 = 2;
pub const BEHAVIOR_END_AM: u32 = 4;
/// `SP_END_STREAM`: End.AD inbound into a stream proxy, marked for the SID's listener.
pub const BEHAVIOR_END_STREAM: u32 = 5;
/// `SP_STREAM_MARK`: the high half of the mark on what the node delivers to a stream proxy (the
/// low half is the SID's listener port).
pub const STREAM_MARK: u32 = 0x5f6e_0000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SidEntry {
    pub behavior: u32,
    pub ifindex: u32,
    pub cache_ifindex: u32,
    pub vnf_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub stream_port: u32,
}

/// `struct sid_entry` as the map holds it: the entry and its counters' index in `sp_sid_stats`
/// (the datapath's to give, not the caller's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SidValue {
    pub entry: SidEntry,
    pub stats: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHdr {
    pub len: u32,
    pub pad: u32,
    /// End.AD cache: when it was last learnt (ns, CLOCK_MONOTONIC).
    pub stamp: u64,
    pub bytes: [u8; MAX_HDR],
}

impl OuterHdr {
    pub fn new(header: &[u8]) -> Option<Self> {
        if header.len() > MAX_HDR {
            return None;
        }
        let mut bytes = [0u8; MAX_HDR];
        bytes[..header.len()].copy_from_slice(header);
        Some(Self { len: header.len() as u32, pad: 0, stamp: 0, bytes })
    }

    pub fn header(&self) -> &[u8] {
        &self.bytes[..(self.len as usize).min(MAX_HDR)]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadendKey {
    pub ifindex: u32,
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadendKey4 {
    pub ifindex: u32,
    pub daddr: [u8; 4],
}

/// `struct l4_key` without its prefix length (aya's `Key` carries that).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct L4Key {
    pub class: u32,
    pub proto: u8,
    pub port: [u8; 2],
    pub pad: u8,
}

/// `struct l4_target`: stage 2's policy and the rule's rank in its class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct L4Target {
    pub policy: u32,
    pub rank: u32,
}

/// `SP_CLASS_SRC_PORTS`: a class with source-port rules (stage 1), and their stage-2 key space.
pub const CLASS_SRC_PORTS: u32 = 1 << 31;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FragKey {
    pub class: u32,
    /// `ANY_PROTO` for any.
    pub proto: u32,
}

/// `SP_ANY_PROTO`.
pub const ANY_PROTO: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AsKey {
    pub ifindex: u32,
    /// 4 or 6.
    pub family: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopKey {
    pub policy: u32,
    pub hop: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopSlots {
    pub sids: [[u8; 16]; REPLICA_SLOTS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SidStats {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

impl SidStats {
    /// The sum of two counters (e.g. of two CPUs).
    pub fn plus(self, o: &SidStats) -> SidStats {
        SidStats { packets: self.packets + o.packets, bytes: self.bytes + o.bytes, drops: self.drops + o.drops }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub locator: [u8; 16],
    pub locator_len: u32,
    pub block_len: u32,
    pub block: [u8; 16],
    /// End.AD re-learns a cache at most this often (0: on every packet).
    pub ad_age_ns: u64,
    /// This node's SRv6 source address (also the source of its ICMPv6 errors).
    pub src: [u8; 16],
    /// Largest packet a chain carries (uplink MTU - `MAX_HDR`); bigger ones get Packet Too Big,
    /// TCP SYNs a clamped MSS. 0: no check.
    pub inner_mtu: u32,
    /// End.AD per-flow cache entries one chain (SRH tag) may hold. 0: no limit.
    pub flow_quota: u32,
}

/// `SP_VNF_AM`: the interface returns End.AM packets (SRH inside) to de-masquerade.
pub const VNF_AM: u32 = 1 << 0;
/// `SP_VNF_NO_FLOWS`: the function rewrites flows; End.AD never matches its traffic per flow.
pub const VNF_NO_FLOWS: u32 = 1 << 1;
/// `SP_VNF_SHARED`: the interface serves several chains or both directions of one; End.AD drops
/// (`flow_miss`) what its per-flow cache does not know instead of using the interface's headers.
pub const VNF_SHARED: u32 = 1 << 2;
/// `SP_VNF_AS`: End.AS; what the VNF returns takes the configured return policy or is dropped.
pub const VNF_AS: u32 = 1 << 3;
/// `SP_VNF_STREAM`: a stream proxy: learned flows, else the chains' rules for its interface.
pub const VNF_STREAM: u32 = 1 << 4;
/// Offset of the SRH's Tag in a header: the chain the per-flow quota counts against.
pub const SRH_TAG_OFFSET: usize = 40 + 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcKey {
    pub addr: [u8; 16],
}

// SAFETY: plain `repr(C)` data without padding-dependent invariants or pointers.
unsafe impl aya::Pod for SidEntry {}
unsafe impl aya::Pod for SidValue {}
unsafe impl aya::Pod for OuterHdr {}
unsafe impl aya::Pod for HeadendKey {}
unsafe impl aya::Pod for HeadendKey4 {}
unsafe impl aya::Pod for HopKey {}
unsafe impl aya::Pod for AsKey {}
unsafe impl aya::Pod for L4Key {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for L4Target {}
unsafe impl aya::Pod for HopSlots {}
unsafe impl aya::Pod for SidStats {}
unsafe impl aya::Pod for SrcKey {}
unsafe impl aya::Pod for NodeConfig {}

/// `enum sp_event` in common.h: what the datapath did besides forwarding and dropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Event {
    IcmpSent = 0,
    IcmpLimited,
    MssClamped,
    FlowQuota,
}

impl Event {
    pub const ALL: [Event; 4] = [Self::IcmpSent, Self::IcmpLimited, Self::MssClamped, Self::FlowQuota];

    pub fn name(self) -> &'static str {
        match self {
            Self::IcmpSent => "icmp_sent",
            Self::IcmpLimited => "icmp_limited",
            Self::MssClamped => "mss_clamped",
            Self::FlowQuota => "flow_quota",
        }
    }
}

/// `enum sp_drop` in common.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum DropReason {
    Malformed = 1,
    NoSrh,
    SlZero,
    SlNonzero,
    HopLimit,
    UnknownSid,
    ForeignSource,
    InnerProto,
    NoCache,
    NoRoute,
    Mtu,
    Adjust,
    TooManySegs,
    ClosedDomain,
    NoReplica,
    Fragment,
    SlRange,
    FlowMiss,
    InnerTtl,
    LastEntry,
    Ecn,
    NoReturn,
    Forged,
}

impl DropReason {
    pub const ALL: [DropReason; 23] = [
        Self::Malformed,
        Self::NoSrh,
        Self::SlZero,
        Self::SlNonzero,
        Self::HopLimit,
        Self::UnknownSid,
        Self::ForeignSource,
        Self::InnerProto,
        Self::NoCache,
        Self::NoRoute,
        Self::Mtu,
        Self::Adjust,
        Self::TooManySegs,
        Self::ClosedDomain,
        Self::NoReplica,
        Self::Fragment,
        Self::SlRange,
        Self::FlowMiss,
        Self::InnerTtl,
        Self::LastEntry,
        Self::Ecn,
        Self::NoReturn,
        Self::Forged,
    ];

    /// The reason numbered `raw` in `enum sp_drop` (None for 0 and unknown numbers).
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == raw)
    }

    /// The C enumerator's suffix in lower case (`SP_DROP_NO_SRH` -> `no_srh`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NoSrh => "no_srh",
            Self::SlZero => "sl_zero",
            Self::SlNonzero => "sl_nonzero",
            Self::HopLimit => "hop_limit",
            Self::UnknownSid => "unknown_sid",
            Self::ForeignSource => "foreign_source",
            Self::InnerProto => "inner_proto",
            Self::NoCache => "no_cache",
            Self::NoRoute => "no_route",
            Self::Mtu => "mtu",
            Self::Adjust => "adjust",
            Self::TooManySegs => "too_many_segs",
            Self::ClosedDomain => "closed_domain",
            Self::NoReplica => "no_replica",
            Self::Fragment => "fragment",
            Self::SlRange => "sl_range",
            Self::FlowMiss => "flow_miss",
            Self::InnerTtl => "inner_ttl",
            Self::LastEntry => "last_entry",
            Self::Ecn => "ecn",
            Self::NoReturn => "no_return",
            Self::Forged => "forged",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every map key and value mirror against the struct the compiled object's BTF describes
    /// (`bpftool btf dump`): its size and each field's offset, by name. The mirrors of LPM keys
    /// leave out the leading `prefixlen` (aya's `Key` carries it).
    #[test]
    fn mirrors_match_the_objects_btf() {
        use std::mem::{offset_of, size_of};
        let obj = std::env::temp_dir().join(format!("srv6pipes-btf-{}.o", std::process::id()));
        std::fs::write(&obj, crate::OBJECT).unwrap();
        let out = std::process::Command::new("bpftool").args(["-j", "btf", "dump", "file"]).arg(&obj).output();
        let _ = std::fs::remove_file(&obj);
        let Ok(out) = out else {
            eprintln!("SKIPPED: bpftool is not installed (scripts/deps installs it)");
            return;
        };
        assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
        let btf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let structs = btf["types"].as_array().unwrap();
        let check = |name: &str, size: usize, lpm: bool, fields: &[(&str, usize)]| {
            let t = structs
                .iter()
                .find(|t| t["kind"] == "STRUCT" && t["name"] == name)
                .unwrap_or_else(|| panic!("struct {name} in the object's BTF"));
            let skip = if lpm { 4 } else { 0 };
            assert_eq!(t["size"].as_u64().unwrap() as usize, size + skip, "sizeof(struct {name})");
            let members = t["members"].as_array().unwrap();
            let named: Vec<&str> = members.iter().map(|m| m["name"].as_str().unwrap()).filter(|n| !(lpm && *n == "prefixlen")).collect();
            let mirrored: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
            assert_eq!(named, mirrored, "struct {name}: fields");
            for (field, offset) in fields {
                let m = members.iter().find(|m| m["name"] == *field).unwrap();
                assert_eq!(m["bits_offset"].as_u64().unwrap() as usize, (offset + skip) * 8, "struct {name}.{field}");
            }
        };
        macro_rules! fields {
            ($t:ty: $($($f:ident).+),*) => { &[$((stringify!($($f).+).rsplit('.').next().unwrap(), offset_of!($t, $($f).+))),*] };
        }
        check(
            "sid_entry",
            size_of::<SidValue>(),
            false,
            fields!(SidValue: entry.behavior, entry.ifindex, entry.cache_ifindex, entry.vnf_mac, entry.host_mac, entry.stream_port, stats),
        );
        check("outer_hdr", size_of::<OuterHdr>(), false, fields!(OuterHdr: len, pad, stamp, bytes));
        use crate::monitor::{MonitorConfig, MonitorRecord, MonitorState};
        check(
            "monitor_event",
            size_of::<MonitorRecord>(),
            false,
            fields!(MonitorRecord: ts, ifindex, len, kind, hook, reason, flags, verdict, policy, tag, family, proto, sport, dport, sid, saddr, daddr),
        );
        check("monitor_config", size_of::<MonitorConfig>(), false, fields!(MonitorConfig: flags, drop_sample, trace_sample, rate));
        check("monitor_state", size_of::<MonitorState>(), false, fields!(MonitorState: window, sent, limited, lost));
        check("headend_key", size_of::<HeadendKey>(), true, fields!(HeadendKey: ifindex, daddr));
        check("headend_key4", size_of::<HeadendKey4>(), true, fields!(HeadendKey4: ifindex, daddr));
        check("l4_key", size_of::<L4Key>(), true, fields!(L4Key: class, proto, port, pad));
        check("l4_target", size_of::<L4Target>(), false, fields!(L4Target: policy, rank));
        check("frag_key", size_of::<FragKey>(), false, fields!(FragKey: class, proto));
        check("as_key", size_of::<AsKey>(), false, fields!(AsKey: ifindex, family));
        check("hop_key", size_of::<HopKey>(), false, fields!(HopKey: policy, hop));
        check("hop_slots", size_of::<HopSlots>(), false, fields!(HopSlots: sids));
        check("src_key", size_of::<SrcKey>(), true, fields!(SrcKey: addr));
        check("sid_stats", size_of::<SidStats>(), false, fields!(SidStats: packets, bytes, drops));
        check(
            "node_config",
            size_of::<NodeConfig>(),
            false,
            fields!(NodeConfig: locator, locator_len, block_len, block, ad_age_ns, src, inner_mtu, flow_quota),
        );
    }

    /// The C side's `#define`s and enums (which the object's BTF does not keep) must agree
    /// with these mirrors.
    #[test]
    fn constants_match_the_c_header() {
        let h = include_str!("../bpf/lib/common.h");
        assert!(h.contains(&format!("#define SP_MAX_SEGS {MAX_SEGS}")));
        assert!(h.contains(&format!("#define SP_REPLICA_SLOTS {REPLICA_SLOTS}")));
        assert_eq!(REPLICA_SLOTS, srv6::compiler::REPLICA_SLOTS);
        assert!(h.contains("#define SP_POLICY_DROP (1u << 31)") && POLICY_DROP == 1 << 31);
        assert!(h.contains(&format!("#define SP_ANY_PROTO {ANY_PROTO}")));
        assert_eq!(MAX_SEGS, srv6::MAX_SEGMENTS);
        assert!(h.contains(&format!("SP_END_AD = {BEHAVIOR_END_AD},")));
        assert!(h.contains(&format!("SP_END_DT46 = {BEHAVIOR_END_DT46},")));
        assert!(h.contains(&format!("SP_END_AS = {BEHAVIOR_END_AS},")));
        assert!(h.contains(&format!("SP_END_AM = {BEHAVIOR_END_AM},")));
        assert!(h.contains("#define SP_POLICY_INSERT (1u << 30)") && POLICY_INSERT == 1 << 30);
        assert!(h.contains(&format!("#define SP_REPLY_MARK {:#x}u", srv6::node_api::REPLY_MARK)));
        assert!(h.contains("#define SP_VNF_AM (1u << 0)") && VNF_AM == 1);
        assert!(h.contains("#define SP_VNF_NO_FLOWS (1u << 1)") && VNF_NO_FLOWS == 2);
        assert!(h.contains("#define SP_VNF_SHARED (1u << 2)") && VNF_SHARED == 4);
        assert!(h.contains("#define SP_VNF_AS (1u << 3)") && VNF_AS == 8);
        assert!(h.contains("#define SP_CLASS_SRC_PORTS (1u << 31)") && CLASS_SRC_PORTS == 1 << 31);
        // An enum's enumerators (without PREFIX and _MAX), in order, lower case.
        let c_enum = |prefix: &str| -> Vec<String> {
            h.lines()
                .filter_map(|l| l.trim().strip_prefix(prefix))
                .map(|l| l.split([' ', ',', '=']).next().unwrap().to_lowercase())
                .filter(|n| n != "max")
                .collect()
        };
        let rust: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(c_enum("SP_DROP_"), rust, "enum sp_drop order and names");
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "{r:?}");
        }
        let rust: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(c_enum("SP_EV_"), rust, "enum sp_event order and names");
    }
}
