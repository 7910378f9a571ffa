//! The srv6pipes eBPF datapath: the clang-built object and its typed control surface.
//!
//! Four ingress programs share one set of maps, pinned by name in the node's pin directory
//! so that a restarted daemon finds the same SIDs, caches and counters (attached with tcx, but
//! `sp_vnf` as a cls_bpf filter: see [`Hook::Vnf`]):
//! - `sp_uplink` on the node's uplink (End.AD inbound, decapsulation),
//! - `sp_vnf` on each VNF's node-side veth (End.AD outbound),
//! - `sp_headend` on each source pod's node-side interface (H.Encaps),
//! - `sp_stream_pod` on a stream proxy's chain interface, inside its netns (SRv6 pipes: SYNs to
//!   the listener of their SID).

mod attach;
mod maps;
mod monitor;
mod sids;
mod testrun;
mod upgrade;

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};

use attach::Attached;
pub use attach::{first_tcx_ingress, Hook};
pub use maps::{
    AsKey, DropReason, Event, FragKey, HeadendKey, HeadendKey4, HopKey, HopSlots, L4Key, L4Target, NodeConfig, OuterHdr, SidEntry,
    SidStats, SrcKey, ANY_PROTO, BEHAVIOR_END_AD, BEHAVIOR_END_AM, BEHAVIOR_END_AS, BEHAVIOR_END_DT46, BEHAVIOR_END_STREAM,
    CLASS_SRC_PORTS, MAX_HDR, MAX_SEGS, POLICY_DROP, POLICY_INSERT, REPLICA_SLOTS, SRH_TAG_OFFSET, STREAM_MARK, VNF_AM, VNF_AS,
    VNF_NO_FLOWS, VNF_SHARED, VNF_STREAM,
};
pub use monitor::{Flow, Monitor, MonitorConfig, MonitorRecord, RecordKind, MONITOR_DROPS, MONITOR_TRACE};
pub use testrun::{SkbCtx, TestRun};

/// The compiled object (aligned for the ELF parser).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/srv6pipes.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("load eBPF object (maps pinned in {pin_dir}): {source}")]
    Load { pin_dir: String, source: Box<aya::EbpfError> },
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },
    #[error("attach {program} on {ifname}: {source}")]
    Attach { program: &'static str, ifname: String, source: aya::programs::ProgramError },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, DatapathError>;

/// A stage-2 classifier entry's match: (class, protocol or None = any, port, port block length).
pub type L4Match = (u32, Option<u8>, u16, u8);
/// A fragment rule's match: (class, protocol or None = any).
pub type FragMatch = (u32, Option<u8>);

/// `sizeof(struct flow_key)`; its first field is the interface's ifindex.
const FLOW_KEY_LEN: usize = 44;

/// `BPF_NOEXIST` map update flag (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

pub struct Datapath {
    bpf: Ebpf,
    /// A second instance of the programs on the same pinned maps, loaded when one of ours must
    /// be attached again at the head of a chain it is still in (tcx takes a program once per
    /// chain): `keep_first` alternates between the two.
    spare: Option<Ebpf>,
    pin_dir: std::path::PathBuf,
    links_dir: std::path::PathBuf,
    links: BTreeMap<(Hook, String), Attached>,
    /// Links adopted from the previous daemon, with their pins, until they are taken over.
    adopted: Vec<(Hook, String, std::path::PathBuf)>,
    /// Maps found pinned with another layout and replaced ("map: difference").
    replaced_maps: Vec<String>,
    /// Which of `sp_sid_stats`' slots the installed SIDs hold.
    stats_slots: sids::Slots,
}

/// End.AD's flow recount, on its own handles of the pinned maps: the node daemon runs it each
/// second without holding the node (it walks every per-flow entry).
pub struct FlowCounter {
    flows: aya::maps::Map,
    counts: aya::maps::Map,
}

impl FlowCounter {
    /// Opens the maps a loaded [`Datapath`] pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let open = |map: &'static str| MapData::from_pin(pin_dir.join(map)).map_err(|source| DatapathError::Map { map, source });
        Ok(FlowCounter { flows: aya::maps::Map::LruHashMap(open("sp_ad_flows")?), counts: aya::maps::Map::Array(open("sp_flow_counts")?) })
    }

    /// Recounts End.AD's per-flow entries per chain (SRH tag) from the LRU itself, which the
    /// datapath only counts up (it does not see evictions), and stores the counts the per-chain
    /// quota is checked against. `previous`: the tags counted last time (so emptied ones go to
    /// zero). Returns the counts.
    pub fn recount(&mut self, previous: &BTreeMap<u16, u32>) -> Result<BTreeMap<u16, u32>> {
        let map_err = |map: &'static str| move |source| DatapathError::Map { map, source };
        let flows: HashMap<&MapData, [u8; FLOW_KEY_LEN], OuterHdr> = HashMap::try_from(&self.flows).map_err(map_err("sp_ad_flows"))?;
        let mut counts: BTreeMap<u16, u32> = BTreeMap::new();
        for entry in flows.iter().filter_map(|e| e.ok()) {
            let b = &entry.1.bytes;
            *counts.entry(u16::from_be_bytes([b[SRH_TAG_OFFSET], b[SRH_TAG_OFFSET + 1]])).or_default() += 1;
        }
        let mut m: aya::maps::Array<&mut MapData, u32> = aya::maps::Array::try_from(&mut self.counts).map_err(map_err("sp_flow_counts"))?;
        for tag in previous.keys().filter(|t| !counts.contains_key(t)) {
            m.set(u32::from(*tag), 0, 0).map_err(map_err("sp_flow_counts"))?;
        }
        for (tag, n) in &counts {
            m.set(u32::from(*tag), *n, 0).map_err(map_err("sp_flow_counts"))?;
        }
        Ok(counts)
    }
}

/// Loads the object with its maps pinned in `pin_dir` (reused when already there) and its
/// three programs.
fn load_object(pin_dir: &Path) -> Result<Ebpf> {
    let mut bpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)
        .map_err(|source| DatapathError::Load { pin_dir: pin_dir.display().to_string(), source: Box::new(source) })?;
    for hook in Hook::ALL {
        let program = hook.program();
        let prog: &mut SchedClassifier = bpf
            .program_mut(program)
            .ok_or(DatapathError::Invalid(format!("program {program} missing from the object")))?
            .try_into()
            .map_err(|source| DatapathError::Program { program, source })?;
        prog.load().map_err(|source| DatapathError::Program { program, source })?;
    }
    Ok(bpf)
}

fn classifier(bpf: &mut Ebpf, hook: Hook) -> &mut SchedClassifier {
    bpf.program_mut(hook.program()).expect("loaded").try_into().expect("classifier")
}

impl Datapath {
    /// Loads the object, reusing maps already pinned in `pin_dir` with this object's layout
    /// (created otherwise: see [`Datapath::replaced_maps`]), and adopts the links a previous
    /// daemon pinned there whose interfaces still exist (they run its programs until
    /// [`Datapath::take_over_adopted`]).
    pub fn load(pin_dir: &Path) -> Result<Self> {
        let replaced_maps = upgrade::unpin_changed_maps(pin_dir)?;
        let bpf = load_object(pin_dir)?;
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|e| DatapathError::Invalid(format!("create {}: {e}", links_dir.display())))?;
        let (adopted, links) = (Vec::new(), BTreeMap::new());
        let stats_slots = sids::Slots::default();
        let mut dp = Self { bpf, spare: None, pin_dir: pin_dir.to_path_buf(), links_dir, links, adopted, replaced_maps, stats_slots };
        dp.stats_slots = dp.sid_slots()?;
        dp.adopt_pinned_links()?;
        Ok(dp)
    }

    pub fn set_config(&mut self, cfg: NodeConfig) -> Result<()> {
        let mut m: aya::maps::Array<&mut MapData, NodeConfig> = self.typed("sp_config")?;
        m.set(0, cfg, 0).map_err(|source| DatapathError::Map { map: "sp_config", source })
    }

    /// BPF_NOEXIST: a re-installed policy (restart, re-program) keeps its counters.
    /// (aya 0.13's PerCpuHashMap::get answers zeros for a missing key, so no get first.)
    fn ensure_stats<K: aya::Pod>(&mut self, map: &'static str, key: K) -> Result<()> {
        let mut stats: PerCpuHashMap<&mut MapData, K, SidStats> = self.typed(map)?;
        let cpus = aya::util::nr_cpus().map_err(|(m, e)| DatapathError::Invalid(format!("{m}: {e}")))?;
        let zero = PerCpuValues::try_from(vec![SidStats::default(); cpus]).map_err(|e| DatapathError::Invalid(e.to_string()))?;
        match stats.insert(key, zero, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(DatapathError::Map { map, source }),
        }
    }

    fn read_stats<K: aya::Pod>(&self, map: &'static str, key: K) -> Result<SidStats> {
        let m: PerCpuHashMap<&MapData, K, SidStats> = self.typed_ref(map)?;
        let per_cpu = m.get(&key, 0).map_err(|source| DatapathError::Map { map, source })?;
        Ok(per_cpu.iter().fold(SidStats::default(), |a, s| a.plus(s)))
    }

    /// Installed headend rules: ((ifindex, destination), policy id), both families.
    pub fn headend_rules(&self) -> Result<Vec<((u32, ipnet::IpNet), u32)>> {
        let err = |source| DatapathError::Map { map: "sp_headend_rules", source };
        let mut out = Vec::new();
        let m: LpmTrie<&MapData, HeadendKey, u32> = self.typed_ref("sp_headend_rules")?;
        for r in m.iter() {
            let (k, id) = r.map_err(err)?;
            let len = (k.prefix_len().saturating_sub(32)).min(128) as u8;
            let dst = ipnet::Ipv6Net::new(Ipv6Addr::from(k.data().daddr), len).expect("len <= 128");
            out.push(((k.data().ifindex, dst.into()), id));
        }
        let m: LpmTrie<&MapData, HeadendKey4, u32> = self.typed_ref("sp_headend_rules4")?;
        for r in m.iter() {
            let (k, id) = r.map_err(err)?;
            let len = (k.prefix_len().saturating_sub(32)).min(32) as u8;
            let dst = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(k.data().daddr), len).expect("len <= 32");
            out.push(((k.data().ifindex, dst.into()), id));
        }
        Ok(out)
    }

    pub fn policy_ids(&self) -> Result<Vec<u32>> {
        let m: HashMap<&MapData, u32, OuterHdr> = self.typed_ref("sp_policies")?;
        m.keys().collect::<std::result::Result<_, _>>().map_err(|source| DatapathError::Map { map: "sp_policies", source })
    }

    /// Forgets what End.AD learnt for an interface: its cache and its flows' entries.
    pub fn remove_ad_cache(&mut self, ifindex: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, OuterHdr> = self.typed("sp_ad_cache")?;
        ignore_missing(m.remove(&ifindex), "sp_ad_cache")?;
        let mut flows: HashMap<&mut MapData, [u8; FLOW_KEY_LEN], OuterHdr> = self.typed("sp_ad_flows")?;
        let ours: Vec<[u8; FLOW_KEY_LEN]> = flows.keys().filter_map(|k| k.ok()).filter(|k| k[..4] == ifindex.to_ne_bytes()).collect();
        for k in ours {
            ignore_missing(flows.remove(&k), "sp_ad_flows")?;
        }
        Ok(())
    }

    /// How many flows End.AD learnt on an interface.
    pub fn ad_flows(&self, ifindex: u32) -> Result<usize> {
        let flows: HashMap<&MapData, [u8; FLOW_KEY_LEN], OuterHdr> = self.typed_ref("sp_ad_flows")?;
        Ok(flows.keys().filter_map(|k| k.ok()).filter(|k| k[..4] == ifindex.to_ne_bytes()).count())
    }

    pub fn ad_cache(&self, ifindex: u32) -> Result<Option<OuterHdr>> {
        let m: HashMap<&MapData, u32, OuterHdr> = self.typed_ref("sp_ad_cache")?;
        match m.get(&ifindex, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map { map: "sp_ad_cache", source }),
        }
    }

    /// A headend policy: its H.Encaps header template and flags (`POLICY_DROP`, and bit i for
    /// each hop i whose replica is picked per flow from `set_hop_slots`).
    pub fn set_policy(&mut self, id: u32, header: &[u8], flags: u32) -> Result<()> {
        let mut hdr = OuterHdr::new(header)
            .ok_or_else(|| DatapathError::Invalid(format!("policy {id}: header of {} bytes exceeds {MAX_HDR}", header.len())))?;
        hdr.pad = flags;
        self.ensure_stats("sp_policy_stats", id)?;
        let mut m: HashMap<&mut MapData, u32, OuterHdr> = self.typed("sp_policies")?;
        m.insert(id, hdr, 0).map_err(|source| DatapathError::Map { map: "sp_policies", source })
    }

    /// Classifier stage 2: (class, protocol, port block) -> policy and rank. `proto` None = any
    /// protocol (and any port); `port_len` 0 = any port; a class with `CLASS_SRC_PORTS` holds
    /// source-port blocks.
    pub fn set_l4_rule(&mut self, class: u32, proto: Option<u8>, port: u16, port_len: u8, target: L4Target) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, L4Key, L4Target> = self.typed("sp_l4_rules")?;
        m.insert(&l4_key(class, proto, port, port_len), target, 0).map_err(|source| DatapathError::Map { map: "sp_l4_rules", source })
    }

    pub fn remove_l4_rule(&mut self, class: u32, proto: Option<u8>, port: u16, port_len: u8) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, L4Key, L4Target> = self.typed("sp_l4_rules")?;
        ignore_missing(m.remove(&l4_key(class, proto, port, port_len)), "sp_l4_rules")
    }

    /// Installed stage-2 rules: ((class, proto, port, port_len), target).
    pub fn l4_rules(&self) -> Result<Vec<(L4Match, L4Target)>> {
        let m: LpmTrie<&MapData, L4Key, L4Target> = self.typed_ref("sp_l4_rules")?;
        m.iter()
            .map(|r| {
                let (k, target) = r.map_err(|source| DatapathError::Map { map: "sp_l4_rules", source })?;
                let d = k.data();
                let len = k.prefix_len();
                let proto = (len >= 40).then_some(d.proto);
                Ok(((d.class, proto, u16::from_be_bytes(d.port), len.saturating_sub(40) as u8), target))
            })
            .collect()
    }

    /// Fragments: (class, protocol or None = any) -> policy.
    pub fn set_frag_rule(&mut self, class: u32, proto: Option<u8>, policy: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, FragKey, u32> = self.typed("sp_frag_rules")?;
        m.insert(frag_key(class, proto), policy, 0).map_err(|source| DatapathError::Map { map: "sp_frag_rules", source })
    }

    pub fn remove_frag_rule(&mut self, class: u32, proto: Option<u8>) -> Result<()> {
        let mut m: HashMap<&mut MapData, FragKey, u32> = self.typed("sp_frag_rules")?;
        ignore_missing(m.remove(&frag_key(class, proto)), "sp_frag_rules")
    }

    pub fn frag_rules(&self) -> Result<Vec<(FragMatch, u32)>> {
        let m: HashMap<&MapData, FragKey, u32> = self.typed_ref("sp_frag_rules")?;
        m.iter()
            .map(|r| {
                let (k, id) = r.map_err(|source| DatapathError::Map { map: "sp_frag_rules", source })?;
                Ok(((k.class, (k.proto != ANY_PROTO).then_some(k.proto as u8)), id))
            })
            .collect()
    }

    /// End.AS: what a VNF interface returns (inner `family` 4 or 6) is encapsulated with policy
    /// `policy` (the configured headers of the rest of the chain).
    pub fn set_as_return(&mut self, ifindex: u32, family: u32, policy: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, AsKey, u32> = self.typed("sp_as_return")?;
        m.insert(AsKey { ifindex, family }, policy, 0).map_err(|source| DatapathError::Map { map: "sp_as_return", source })
    }

    pub fn remove_as_return(&mut self, ifindex: u32, family: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, AsKey, u32> = self.typed("sp_as_return")?;
        ignore_missing(m.remove(&AsKey { ifindex, family }), "sp_as_return")
    }

    pub fn as_returns(&self) -> Result<Vec<((u32, u32), u32)>> {
        let m: HashMap<&MapData, AsKey, u32> = self.typed_ref("sp_as_return")?;
        m.iter()
            .map(|r| r.map(|(k, v)| ((k.ifindex, k.family), v)).map_err(|source| DatapathError::Map { map: "sp_as_return", source }))
            .collect()
    }

    /// What a VNF's return interface is: `VNF_AM` (End.AM, de-masquerade what it returns),
    /// `VNF_NO_FLOWS` (its function rewrites flows: End.AD learns and matches per interface only).
    pub fn set_vnf_flags(&mut self, ifindex: u32, flags: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, u32> = self.typed("sp_vnf_flags")?;
        m.insert(ifindex, flags, 0).map_err(|source| DatapathError::Map { map: "sp_vnf_flags", source })
    }

    pub fn remove_vnf_flags(&mut self, ifindex: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, u32> = self.typed("sp_vnf_flags")?;
        ignore_missing(m.remove(&ifindex), "sp_vnf_flags")
    }

    pub fn vnf_flags(&self) -> Result<Vec<(u32, u32)>> {
        let m: HashMap<&MapData, u32, u32> = self.typed_ref("sp_vnf_flags")?;
        m.iter().collect::<std::result::Result<_, _>>().map_err(|source| DatapathError::Map { map: "sp_vnf_flags", source })
    }

    /// End.AM: a source (prefix) besides the cluster's locator block that may address this
    /// node's masquerading SIDs (SRH insertion keeps the pods' own source addresses).
    pub fn set_insert_source(&mut self, prefix: ipnet::Ipv6Net) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, SrcKey, u32> = self.typed("sp_insert_sources")?;
        m.insert(&src_key(prefix), 1, 0).map_err(|source| DatapathError::Map { map: "sp_insert_sources", source })
    }

    pub fn remove_insert_source(&mut self, prefix: ipnet::Ipv6Net) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, SrcKey, u32> = self.typed("sp_insert_sources")?;
        ignore_missing(m.remove(&src_key(prefix)), "sp_insert_sources")
    }

    pub fn insert_sources(&self) -> Result<Vec<ipnet::Ipv6Net>> {
        let m: LpmTrie<&MapData, SrcKey, u32> = self.typed_ref("sp_insert_sources")?;
        m.keys()
            .map(|k| {
                let k = k.map_err(|source| DatapathError::Map { map: "sp_insert_sources", source })?;
                Ok(ipnet::Ipv6Net::new(Ipv6Addr::from(k.data().addr), k.prefix_len().min(128) as u8).expect("len <= 128"))
            })
            .collect()
    }

    /// A hop's replica table (`REPLICA_SLOTS` SIDs) for a policy.
    pub fn set_hop_slots(&mut self, policy: u32, hop: u32, slots: &[Ipv6Addr]) -> Result<()> {
        if slots.len() != REPLICA_SLOTS {
            return Err(DatapathError::Invalid(format!("policy {policy} hop {hop}: {} slots, not {REPLICA_SLOTS}", slots.len())));
        }
        let mut v = HopSlots { sids: [[0; 16]; REPLICA_SLOTS] };
        for (dst, sid) in v.sids.iter_mut().zip(slots) {
            *dst = sid.octets();
        }
        let mut m: HashMap<&mut MapData, HopKey, HopSlots> = self.typed("sp_hop_slots")?;
        m.insert(HopKey { policy, hop }, v, 0).map_err(|source| DatapathError::Map { map: "sp_hop_slots", source })
    }

    pub fn remove_policy(&mut self, id: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, OuterHdr> = self.typed("sp_policies")?;
        ignore_missing(m.remove(&id), "sp_policies")?;
        let mut stats: PerCpuHashMap<&mut MapData, u32, SidStats> = self.typed("sp_policy_stats")?;
        ignore_missing(stats.remove(&id), "sp_policy_stats")?;
        let mut slots: HashMap<&mut MapData, HopKey, HopSlots> = self.typed("sp_hop_slots")?;
        for hop in 0..MAX_SEGS as u32 {
            ignore_missing(slots.remove(&HopKey { policy: id, hop }), "sp_hop_slots")?;
        }
        Ok(())
    }

    pub fn set_headend_rule(&mut self, ifindex: u32, dst: ipnet::IpNet, policy: u32) -> Result<()> {
        let r = match dst {
            ipnet::IpNet::V6(d) => {
                let mut m: LpmTrie<&mut MapData, HeadendKey, u32> = self.typed("sp_headend_rules")?;
                m.insert(&headend_key(ifindex, d), policy, 0)
            }
            ipnet::IpNet::V4(d) => {
                let mut m: LpmTrie<&mut MapData, HeadendKey4, u32> = self.typed("sp_headend_rules4")?;
                m.insert(&headend_key4(ifindex, d), policy, 0)
            }
        };
        r.map_err(|source| DatapathError::Map { map: "sp_headend_rules", source })
    }

    pub fn remove_headend_rule(&mut self, ifindex: u32, dst: ipnet::IpNet) -> Result<()> {
        match dst {
            ipnet::IpNet::V6(d) => {
                let mut m: LpmTrie<&mut MapData, HeadendKey, u32> = self.typed("sp_headend_rules")?;
                ignore_missing(m.remove(&headend_key(ifindex, d)), "sp_headend_rules")
            }
            ipnet::IpNet::V4(d) => {
                let mut m: LpmTrie<&mut MapData, HeadendKey4, u32> = self.typed("sp_headend_rules4")?;
                ignore_missing(m.remove(&headend_key4(ifindex, d)), "sp_headend_rules4")
            }
        }
    }

    /// What the headend steered (or dropped) with a policy, summed over CPUs.
    pub fn policy_stats(&self, id: u32) -> Result<SidStats> {
        self.read_stats("sp_policy_stats", id)
    }

    /// Drops by reason, summed over CPUs, for every reason.
    pub fn drop_reasons(&self) -> Result<Vec<(DropReason, u64)>> {
        self.counters("sp_drop_reasons", &DropReason::ALL, |r| r as u32)
    }

    /// Per-CPU array counters at `keys`, each summed over CPUs.
    fn counters<K: Copy>(&self, map: &'static str, keys: &[K], index: impl Fn(K) -> u32) -> Result<Vec<(K, u64)>> {
        let m: PerCpuArray<&MapData, u64> = self.typed_ref(map)?;
        keys.iter()
            .map(|k| {
                let v = m.get(&index(*k), 0).map_err(|source| DatapathError::Map { map, source })?;
                Ok((*k, v.iter().sum()))
            })
            .collect()
    }

    /// Runs `hook`'s program once on `packet` with BPF_PROG_TEST_RUN (redirects are reported in
    /// the verdict, not performed). Needs root.
    pub fn test_run(&self, hook: Hook, packet: &[u8], ctx: SkbCtx) -> Result<TestRun> {
        let program = hook.program();
        let prog: &SchedClassifier = self.bpf.program(program).expect("loaded").try_into().expect("classifier");
        testrun::run(prog, packet, ctx).map_err(|source| DatapathError::Program { program, source })
    }

    /// Datapath events (ICMP errors sent or rate limited, MSS clamps), summed over CPUs.
    pub fn events(&self) -> Result<Vec<(Event, u64)>> {
        self.counters("sp_events", &Event::ALL, |e| e as u32)
    }

    /// The live monitor's events not sent (over its rate limit, its ring full), summed over CPUs.
    pub fn monitor_not_sent(&self) -> Result<(u64, u64)> {
        Monitor::not_sent_in(self.typed_ref("sp_monitor_state")?)
    }

    pub fn event(&self, event: Event) -> Result<u64> {
        Ok(self.events()?.into_iter().find(|(e, _)| *e == event).map_or(0, |(_, n)| n))
    }

    /// Drops counted for one reason, summed over CPUs.
    pub fn drops(&self, reason: DropReason) -> Result<u64> {
        Ok(self.drop_reasons()?.into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n))
    }

    fn typed<'a, T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(&'a mut self, map: &'static str) -> Result<T> {
        let m = self.bpf.map_mut(map).ok_or(DatapathError::MissingMap(map))?;
        T::try_from(m).map_err(|source| DatapathError::Map { map, source })
    }

    fn typed_ref<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(&'a self, map: &'static str) -> Result<T> {
        let m = self.bpf.map(map).ok_or(DatapathError::MissingMap(map))?;
        T::try_from(m).map_err(|source| DatapathError::Map { map, source })
    }
}

fn l4_key(class: u32, proto: Option<u8>, port: u16, port_len: u8) -> Key<L4Key> {
    let len = match proto {
        None => 32,
        Some(_) => 40 + port_len.min(16) as u32,
    };
    Key::new(len, L4Key { class, proto: proto.unwrap_or(0), port: port.to_be_bytes(), pad: 0 })
}

fn frag_key(class: u32, proto: Option<u8>) -> FragKey {
    FragKey { class, proto: proto.map_or(ANY_PROTO, u32::from) }
}

fn headend_key4(ifindex: u32, dst: ipnet::Ipv4Net) -> Key<HeadendKey4> {
    Key::new(32 + dst.prefix_len() as u32, HeadendKey4 { ifindex, daddr: dst.trunc().network().octets() })
}

fn headend_key(ifindex: u32, dst: ipnet::Ipv6Net) -> Key<HeadendKey> {
    Key::new(32 + dst.prefix_len() as u32, HeadendKey { ifindex, daddr: dst.trunc().network().octets() })
}

fn src_key(prefix: ipnet::Ipv6Net) -> Key<SrcKey> {
    Key::new(prefix.prefix_len() as u32, SrcKey { addr: prefix.trunc().network().octets() })
}

fn ignore_missing(r: std::result::Result<(), aya::maps::MapError>, map: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(DatapathError::Map { map, source }),
    }
}
