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
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

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

/// Which program an interface gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Uplink,
    /// On srv6pipes' own VNF veths, where no other program runs, so it needs no place in a tcx
    /// chain: it is a cls_bpf filter (direct action) on the interface's clsact ingress. A tcx
    /// attach publishes the device's new program array with `synchronize_rcu()` under RTNL
    /// (`tcx_entry_sync`): 10-40 ms on a CNI ADD's answer path, during which every netlink
    /// request on the node waits; a filter on a fresh clsact is in place in ~0.1 ms.
    Vnf,
    Headend,
    /// Inside a stream proxy's netns; keyed (and pinned) by the node-side end of its veth.
    StreamPod,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::Uplink => "sp_uplink",
            Hook::Vnf => "sp_vnf",
            Hook::Headend => "sp_headend",
            Hook::StreamPod => "sp_stream_pod",
        }
    }

    const ALL: [Hook; 4] = [Hook::Uplink, Hook::Vnf, Hook::Headend, Hook::StreamPod];

    fn tag(self) -> &'static str {
        match self {
            Hook::Uplink => "uplink",
            Hook::Vnf => "vnf",
            Hook::Headend => "headend",
            Hook::StreamPod => "streampod",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Hook::ALL.into_iter().find(|h| h.tag() == tag)
    }
}

/// How a hook's program is attached to an interface. Both outlive the daemon (restarts and
/// upgrades do not touch traffic).
enum Attached {
    /// A tcx link pinned at `<pin dir>/links/<hook>-<ifname>-<ifindex>`, until it is unpinned or
    /// its interface goes away. The ifindex in the name tells a live pin from one whose interface
    /// was replaced; kept here so that the order check needs no lookup by name. (VNF links
    /// pinned by a daemon before filters are adopted and kept.)
    Link { link: PinnedLink, ifindex: u32 },
    /// A cls_bpf filter at [`FILTER_PRIORITY`]/[`FILTER_HANDLE`] on `ifindex`'s clsact ingress: it
    /// goes with the interface, and a restarted daemon replaces it with its own program.
    Filter { ifindex: u32 },
}

/// Where `sp_vnf`'s filter sits on a VNF veth's clsact ingress.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

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

    fn adopt_pinned_links(&mut self) -> Result<()> {
        let entries =
            std::fs::read_dir(&self.links_dir).map_err(|e| DatapathError::Invalid(format!("read {}: {e}", self.links_dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = parse_link_pin(&name);
            let live =
                parsed.as_ref().is_some_and(|(_, ifname, ifindex)| nix::net::if_::if_nametoindex(ifname.as_str()).ok() == Some(*ifindex));
            match (parsed, live) {
                (Some((hook, ifname, ifindex)), true) => {
                    let link =
                        PinnedLink::from_pin(&path).map_err(|e| DatapathError::Invalid(format!("adopt link {}: {e}", path.display())))?;
                    self.links.insert((hook, ifname.clone()), Attached::Link { link, ifindex });
                    self.adopted.push((hook, ifname, path));
                }
                // The interface is gone (its link with it) or was replaced: drop the stale pin.
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// Attaches `hook`'s program at the head of `ifname`'s tcx ingress chain (before programs
    /// already there, e.g. the primary CNI's, which may end the chain with `TC_ACT_OK`; ours
    /// returns `TCX_NEXT` for what is not its own) and pins the link; [`Hook::Vnf`]'s as a
    /// filter instead. Attaching twice is a no-op.
    pub fn attach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        if self.links.contains_key(&(hook, ifname.to_string())) {
            return Ok(());
        }
        let attached = match hook {
            Hook::Vnf => Attached::Filter { ifindex: self.attach_filter(hook, ifname)? },
            _ => self.attach_first(hook, ifname, false)?,
        };
        self.links.insert((hook, ifname.to_string()), attached);
        Ok(())
    }

    /// `hook`'s program as the direct-action filter at [`FILTER_PRIORITY`]/[`FILTER_HANDLE`] of
    /// `ifname`'s clsact ingress (the qdisc added if missing). A filter already there (a previous
    /// daemon's) gets this instance's program, swapped in atomically. Returns the ifindex.
    fn attach_filter(&mut self, hook: Hook, ifname: &str) -> Result<u32> {
        let program = hook.program();
        let attach_err = |source| DatapathError::Attach { program, ifname: ifname.into(), source };
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: {e}")))?;
        match aya::programs::tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(attach_err(e.into())),
        }
        let prog = classifier(&mut self.bpf, hook);
        let options = TcAttachOptions::Netlink(NlOptions { priority: FILTER_PRIORITY, handle: FILTER_HANDLE, classid: None });
        let id = match prog.attach_with_options(ifname, TcAttachType::Ingress, options) {
            Ok(id) => id,
            Err(aya::programs::ProgramError::TcError(TcError::NetlinkError(e))) if e.raw_os_error() == Some(libc::EEXIST) => {
                let there = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, FILTER_PRIORITY, FILTER_HANDLE, None)
                    .map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: {e}")))?;
                prog.attach_to_link(there).map_err(attach_err)?
            }
            Err(e) => return Err(attach_err(e)),
        };
        // The filter must outlive this process, but a link dropped (or left with the program,
        // dropped at exit) removes it; it holds no descriptor, so forgetting it leaks nothing.
        std::mem::forget(prog.take_link(id).map_err(attach_err)?);
        Ok(ifindex)
    }

    /// A new link of `hook`'s program (of the spare instance with `spare`) at the head of
    /// `ifname`'s tcx ingress, pinned at its path (replacing an older pin there atomically: the
    /// older link, once its last descriptor goes, is detached; until then both run, the new one
    /// first, so no packet misses the program).
    fn attach_first(&mut self, hook: Hook, ifname: &str, spare: bool) -> Result<Attached> {
        self.attach_first_in(hook, ifname, spare, None)
    }

    /// `attach_first`, on `pod`'s interface (netns path, interface name) instead of `ifname`,
    /// which still names the pin: the node-side end of the pod's veth.
    fn attach_first_in(&mut self, hook: Hook, ifname: &str, spare: bool, pod: Option<(&Path, &str)>) -> Result<Attached> {
        let program = hook.program();
        let attach_err = |source| DatapathError::Attach { program, ifname: ifname.into(), source };
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: {e}")))?;
        let bpf = if spare {
            if self.spare.is_none() {
                self.spare = Some(load_object(&self.pin_dir)?);
            }
            self.spare.as_mut().expect("loaded")
        } else {
            &mut self.bpf
        };
        let prog = classifier(bpf, hook);
        let first = TcAttachOptions::TcxOrder(LinkOrder::first());
        let id = match pod {
            None => prog.attach_with_options(ifname, TcAttachType::Ingress, first).map_err(attach_err)?,
            Some((netns, pod_if)) => in_netns(netns, || prog.attach_with_options(pod_if, TcAttachType::Ingress, first))?
                .map_err(|source| DatapathError::Attach { program, ifname: format!("{pod_if} in {}", netns.display()), source })?,
        };
        let link: FdLink = prog
            .take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|e| DatapathError::Invalid(format!("attach {program} on {ifname}: not a tcx link ({e})")))?;
        let path = self.links_dir.join(format!("{}-{ifname}-{ifindex}", hook.tag()));
        // bpffs refuses names with a dot; a leftover "new-" pin is not a link name: adoption drops it.
        let fresh = self.links_dir.join(format!("new-{}-{ifname}-{ifindex}", hook.tag()));
        let pin_err = |e: &dyn std::fmt::Display| DatapathError::Invalid(format!("pin link {}: {e}", path.display()));
        let _ = std::fs::remove_file(&fresh);
        let pinned = link.pin(&fresh).map_err(|e| pin_err(&e))?;
        std::fs::rename(&fresh, &path).map_err(|e| pin_err(&e))?;
        drop(pinned); // its path is gone; the pin at `path` holds the link
        Ok(Attached::Link { link: PinnedLink::from_pin(&path).map_err(|e| pin_err(&e))?, ifindex })
    }

    /// Attaches `sp_stream_pod` on a stream proxy's chain interface `pod_ifname` inside its netns
    /// `netns`, pinned under the node-side end `host_ifname` of its veth (the link goes with the
    /// pod's netns; adoption after a restart checks the node-side end). Twice is a no-op.
    pub fn attach_in_pod(&mut self, host_ifname: &str, netns: &Path, pod_ifname: &str) -> Result<()> {
        let key = (Hook::StreamPod, host_ifname.to_string());
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let attached = self.attach_first_in(Hook::StreamPod, host_ifname, false, Some((netns, pod_ifname)))?;
        self.links.insert(key, attached);
        Ok(())
    }

    /// Puts our program back at the head of every interface where another program was inserted
    /// in front of it since (a primary CNI re-inserting itself; one attached before this daemon
    /// started, ahead of adopted links): attached again first — from the instance that is not
    /// in that chain yet — then the old link released. Returns the (hook, interface) pairs
    /// moved. An interface that is gone is skipped.
    pub fn keep_first(&mut self) -> Result<Vec<(Hook, String)>> {
        let mut ours = BTreeMap::new();
        for hook in Hook::ALL.into_iter().filter(|h| *h != Hook::StreamPod) {
            ours.insert(hook, self.program_id(hook)?);
        }
        // Every second on every interface (hundreds on a node with many pods): one query for
        // the head's id, by the ifindex kept with the link, answers the usual case (a lookup
        // by name would open a socket each time: ~20 µs, 20 ms a second at 1,000 interfaces);
        // only another head costs the full query (which opens each program of the chain).
        let displaced: Vec<(Hook, String)> = self
            .links
            .iter()
            .filter_map(|((hook, ifname), a)| match a {
                Attached::Link { ifindex, .. } if ours.get(hook).is_some_and(|id| first_tcx_ingress(*ifindex) != Some(*id)) => {
                    Some((*hook, ifname.clone()))
                }
                _ => None,
            })
            .collect();
        let mut moved = Vec::new();
        for (hook, ifname) in displaced {
            let Ok((_, progs)) = SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress) else { continue };
            if progs.first().and_then(|p| p.name_as_str()) == Some(hook.program()) {
                continue;
            }
            let spare = progs.iter().any(|p| p.id() == ours[&hook]);
            let attached = self.attach_first(hook, &ifname, spare)?;
            // The replaced link's descriptor goes with it (its pin is already gone).
            self.links.insert((hook, ifname.clone()), attached);
            moved.push((hook, ifname));
        }
        Ok(moved)
    }

    /// Unpins and so detaches (removes the filter); an interface that is already gone (its link
    /// or filter with it) is fine.
    pub fn detach(&mut self, hook: Hook, ifname: &str) -> Result<()> {
        let Some(a) = self.links.remove(&(hook, ifname.to_string())) else { return Ok(()) };
        let link = match a {
            Attached::Link { link, .. } => link,
            Attached::Filter { ifindex } => return detach_filter(hook, ifname, ifindex),
        };
        match link.unpin() {
            Ok(fd) => drop(fd),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::Invalid(format!("unpin {} link on {ifname}: {e}", hook.program()))),
        }
        Ok(())
    }

    pub fn attached(&self) -> impl Iterator<Item = (Hook, &str)> {
        self.links.keys().map(|(h, i)| (*h, i.as_str()))
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

/// `<hook>-<ifname>-<ifindex>` (interface names may contain '-').
/// Runs `f` on a thread of its own moved into the network namespace at `netns`.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = std::fs::File::open(netns).map_err(|e| DatapathError::Invalid(format!("open netns {}: {e}", netns.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| DatapathError::Invalid(format!("enter netns {}: {e}", netns.display())))?;
            Ok(f())
        })
        .join()
        .map_err(|_| DatapathError::Invalid(format!("thread in netns {} panicked", netns.display())))?
    })
}

/// Removes `hook`'s filter from `ifname` if that name still has `ifindex` (a veth of the same
/// name made since is not ours to touch).
fn detach_filter(hook: Hook, ifname: &str, ifindex: u32) -> Result<()> {
    if nix::net::if_::if_nametoindex(ifname).ok() != Some(ifindex) {
        return Ok(());
    }
    let link = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, FILTER_PRIORITY, FILTER_HANDLE, None);
    let gone = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT));
    let result = match link {
        Ok(link) => {
            use aya::programs::links::Link as _;
            link.detach()
        }
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(DatapathError::Invalid(format!("detach {} on {ifname}: {e}", hook.program()))),
    };
    match result {
        Err(aya::programs::ProgramError::NetlinkError(e) | aya::programs::ProgramError::TcError(TcError::NetlinkError(e)))
            if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) =>
        {
            Ok(())
        }
        r => r.map_err(|source| DatapathError::Attach { program: hook.program(), ifname: ifname.into(), source }),
    }
}

fn parse_link_pin(name: &str) -> Option<(Hook, String, u32)> {
    let (hook, rest) = name.split_once('-')?;
    let (ifname, ifindex) = rest.rsplit_once('-')?;
    Some((Hook::from_tag(hook)?, ifname.to_string(), ifindex.parse().ok()?))
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

/// The id of the first program in `ifindex`'s tcx ingress chain, by one BPF_PROG_QUERY that
/// opens no program; None if the chain is empty or the query fails (the interface is gone).
pub fn first_tcx_ingress(ifindex: u32) -> Option<u32> {
    /// `union bpf_attr`'s BPF_PROG_QUERY part (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct ProgQuery {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    let mut first = 0u32;
    let mut q = ProgQuery {
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        prog_ids: &mut first as *mut u32 as u64,
        prog_cnt: 1,
        ..Default::default()
    };
    // SAFETY: `q` is a valid BPF_PROG_QUERY attribute of the size passed; the kernel writes at
    // most `prog_cnt` (1) ids to `prog_ids`, which points at `first`, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut ProgQuery, std::mem::size_of::<ProgQuery>()) };
    // ENOSPC: more programs than the one id asked for; the first is written all the same.
    let answered = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC);
    (answered && q.prog_cnt > 0 && first != 0).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_roundtrip() {
        assert_eq!(parse_link_pin("vnf-sp12ab-7"), Some((Hook::Vnf, "sp12ab".into(), 7)));
        assert_eq!(parse_link_pin("headend-veth-a-b-12"), Some((Hook::Headend, "veth-a-b".into(), 12)));
        assert_eq!(parse_link_pin("uplink-eth0-x"), None);
        assert_eq!(parse_link_pin("other-eth0-1"), None);
    }
}
