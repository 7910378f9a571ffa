//! The srv6pipes eBPF datapath: the clang-built object and its typed control surface.
//!
//! Three tcx ingress programs share one set of maps, pinned by name in the node's pin directory
//! so that a restarted daemon finds the same SIDs, caches and counters:
//! - `sp_uplink` on the node's uplink (End.AD inbound, decapsulation),
//! - `sp_vnf` on each VNF's node-side veth (End.AD outbound),
//! - `sp_headend` on each source pod's node-side interface (H.Encaps).

mod maps;

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::{tc::SchedClassifierLinkId, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

pub use maps::{DropReason, HeadendKey, NodeConfig, OuterHdr, SidEntry, SidStats, BEHAVIOR_END_AD, BEHAVIOR_END_DT6, MAX_HDR, MAX_SEGS};

/// The compiled object (aligned for the ELF parser).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/srv6pipes.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("load eBPF object (maps pinned in {pin_dir}): {source}")]
    Load { pin_dir: String, source: aya::EbpfError },
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

/// `BPF_NOEXIST` map update flag (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// Which program an interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Uplink,
    Vnf,
    Headend,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::Uplink => "sp_uplink",
            Hook::Vnf => "sp_vnf",
            Hook::Headend => "sp_headend",
        }
    }
}

pub struct Datapath {
    bpf: Ebpf,
    links: BTreeMap<(Hook, String), SchedClassifierLinkId>,
}

impl Datapath {
    /// Loads the object, reusing maps already pinned in `pin_dir` (created otherwise).
    pub fn load(pin_dir: &Path) -> Result<Self> {
        let mut bpf = EbpfLoader::new()
            .map_pin_path(pin_dir)
            .load(OBJECT)
            .map_err(|source| DatapathError::Load { pin_dir: pin_dir.display().to_string(), source })?;
        for hook in [Hook::Uplink, Hook::Vnf, Hook::Headend] {
            let program = hook.program();
            let prog: &mut SchedClassifier = bpf
                .program_mut(program)
                .ok_or(DatapathError::Invalid(format!("program {program} missing from the object")))?
                .try_into()
                .map_err(|source| DatapathError::Program { program, source })?;
            prog.load().map_err(|source| DatapathError::Program { program, source })?;
        }
        Ok(Self { bpf, links: BTreeMap::new() })
    }

    /// Attaches `hook`'s program at tcx ingress of `ifname` (appended after programs already
    /// there, e.g. the primary CNI's). Attaching twice is a no-op.
    pub fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        if self.links.contains_key(&(hook, ifname.to_string())) {
            return Ok(());
        }
        let program = hook.program();
        let prog: &mut SchedClassifier = self.bpf.program_mut(program).expect("loaded").try_into().expect("classifier");
        let id = prog
            .attach(ifname, TcAttachType::Ingress)
            .map_err(|source| DatapathError::Attach { program, ifname: ifname.into(), source })?;
        self.links.insert((hook, ifname.to_string()), id);
        Ok(())
    }

    /// Detaches; an interface that is already gone (its links with it) is not an error.
    pub fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        let Some(id) = self.links.remove(&(hook, ifname.to_string())) else { return Ok(()) };
        let program = hook.program();
        let prog: &mut SchedClassifier = self.bpf.program_mut(program).expect("loaded").try_into().expect("classifier");
        match prog.detach(id) {
            Ok(()) => Ok(()),
            Err(_) if nix::net::if_::if_nametoindex(ifname).is_err() => Ok(()),
            Err(source) => Err(DatapathError::Attach { program, ifname: ifname.into(), source }),
        }
    }

    pub fn attached(&self) -> impl Iterator<Item = (Hook, &str)> {
        self.links.keys().map(|(h, i)| (*h, i.as_str()))
    }

    pub fn set_config(&mut self, cfg: NodeConfig) -> Result<()> {
        let mut m: aya::maps::Array<&mut MapData, NodeConfig> = self.typed("sp_config")?;
        m.set(0, cfg, 0).map_err(|source| DatapathError::Map { map: "sp_config", source })
    }

    /// Installs a local SID and (re)sets its counters to zero if it had none.
    pub fn set_sid(&mut self, sid: Ipv6Addr, entry: SidEntry) -> Result<()> {
        let key = sid.octets();
        {
            // BPF_NOEXIST: a SID re-installed (daemon restart, re-program) keeps its counters.
            // (aya 0.13's PerCpuHashMap::get answers zeros for a missing key, so no get first.)
            let mut stats: PerCpuHashMap<&mut MapData, [u8; 16], SidStats> = self.typed("sp_sid_stats")?;
            let cpus = aya::util::nr_cpus().map_err(|(m, e)| DatapathError::Invalid(format!("{m}: {e}")))?;
            let zero = PerCpuValues::try_from(vec![SidStats::default(); cpus])
                .map_err(|e| DatapathError::Invalid(e.to_string()))?;
            match stats.insert(key, zero, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => return Err(DatapathError::Map { map: "sp_sid_stats", source }),
            }
        }
        let mut sids: HashMap<&mut MapData, [u8; 16], SidEntry> = self.typed("sp_sids")?;
        sids.insert(key, entry, 0).map_err(|source| DatapathError::Map { map: "sp_sids", source })
    }

    pub fn remove_sid(&mut self, sid: Ipv6Addr) -> Result<()> {
        let key = sid.octets();
        let mut sids: HashMap<&mut MapData, [u8; 16], SidEntry> = self.typed("sp_sids")?;
        ignore_missing(sids.remove(&key), "sp_sids")?;
        let mut stats: PerCpuHashMap<&mut MapData, [u8; 16], SidStats> = self.typed("sp_sid_stats")?;
        ignore_missing(stats.remove(&key), "sp_sid_stats")
    }

    pub fn sids(&self) -> Result<Vec<(Ipv6Addr, SidEntry)>> {
        let sids: HashMap<&MapData, [u8; 16], SidEntry> = self.typed_ref("sp_sids")?;
        sids.iter()
            .map(|r| r.map(|(k, v)| (Ipv6Addr::from(k), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DatapathError::Map { map: "sp_sids", source })
    }

    pub fn remove_ad_cache(&mut self, ifindex: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, OuterHdr> = self.typed("sp_ad_cache")?;
        ignore_missing(m.remove(&ifindex), "sp_ad_cache")
    }

    pub fn ad_cache(&self, ifindex: u32) -> Result<Option<OuterHdr>> {
        let m: HashMap<&MapData, u32, OuterHdr> = self.typed_ref("sp_ad_cache")?;
        match m.get(&ifindex, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map { map: "sp_ad_cache", source }),
        }
    }

    pub fn set_policy(&mut self, id: u32, header: &[u8]) -> Result<()> {
        let hdr = OuterHdr::new(header).ok_or_else(|| {
            DatapathError::Invalid(format!("policy {id}: header of {} bytes exceeds {MAX_HDR}", header.len()))
        })?;
        let mut m: HashMap<&mut MapData, u32, OuterHdr> = self.typed("sp_policies")?;
        m.insert(id, hdr, 0).map_err(|source| DatapathError::Map { map: "sp_policies", source })
    }

    pub fn remove_policy(&mut self, id: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, OuterHdr> = self.typed("sp_policies")?;
        ignore_missing(m.remove(&id), "sp_policies")
    }

    pub fn set_headend_rule(&mut self, ifindex: u32, dst: ipnet::Ipv6Net, policy: u32) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, HeadendKey, u32> = self.typed("sp_headend_rules")?;
        m.insert(&headend_key(ifindex, dst), policy, 0)
            .map_err(|source| DatapathError::Map { map: "sp_headend_rules", source })
    }

    pub fn remove_headend_rule(&mut self, ifindex: u32, dst: ipnet::Ipv6Net) -> Result<()> {
        let mut m: LpmTrie<&mut MapData, HeadendKey, u32> = self.typed("sp_headend_rules")?;
        ignore_missing(m.remove(&headend_key(ifindex, dst)), "sp_headend_rules")
    }

    /// Counters of a SID summed over CPUs.
    pub fn sid_stats(&self, sid: Ipv6Addr) -> Result<SidStats> {
        let m: PerCpuHashMap<&MapData, [u8; 16], SidStats> = self.typed_ref("sp_sid_stats")?;
        let per_cpu = m.get(&sid.octets(), 0).map_err(|source| DatapathError::Map { map: "sp_sid_stats", source })?;
        Ok(per_cpu.iter().fold(SidStats::default(), |a, s| SidStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            drops: a.drops + s.drops,
        }))
    }

    /// Drops by reason, summed over CPUs, for every reason.
    pub fn drop_reasons(&self) -> Result<Vec<(DropReason, u64)>> {
        let m: PerCpuArray<&MapData, u64> = self.typed_ref("sp_drop_reasons")?;
        DropReason::ALL
            .iter()
            .map(|r| {
                let v = m.get(&(*r as u32), 0).map_err(|source| DatapathError::Map { map: "sp_drop_reasons", source })?;
                Ok((*r, v.iter().sum()))
            })
            .collect()
    }

    fn typed<'a, T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
        &'a mut self,
        map: &'static str,
    ) -> Result<T> {
        let m = self.bpf.map_mut(map).ok_or(DatapathError::MissingMap(map))?;
        T::try_from(m).map_err(|source| DatapathError::Map { map, source })
    }

    fn typed_ref<'a, T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
        &'a self,
        map: &'static str,
    ) -> Result<T> {
        let m = self.bpf.map(map).ok_or(DatapathError::MissingMap(map))?;
        T::try_from(m).map_err(|source| DatapathError::Map { map, source })
    }
}

fn headend_key(ifindex: u32, dst: ipnet::Ipv6Net) -> Key<HeadendKey> {
    Key::new(32 + dst.prefix_len() as u32, HeadendKey { ifindex, daddr: dst.trunc().network().octets() })
}

fn ignore_missing(r: std::result::Result<(), aya::maps::MapError>, map: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(DatapathError::Map { map, source }),
    }
}
