//! The node: its locator, its SIDs and the datapath state that realises them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ipnet::{IpNet, Ipv6Net};
use nix::net::if_::if_nametoindex;
use srv6::compiler::SidRegistration;
use srv6::node_api::{Attachment, AttachmentKey, ChainCounters, NodeSids, NodeStats, Request, Response, SidCounters};
use srv6::sid::{allocate_proxy_funct, Locator, Sid};
use srv6pipes_ebpf::{
    Datapath, Hook, L4Target, NodeConfig, SidEntry, BEHAVIOR_END_AD, BEHAVIOR_END_AM, BEHAVIOR_END_AS, BEHAVIOR_END_DT46,
    BEHAVIOR_END_STREAM, SRH_TAG_OFFSET, VNF_AM,
};
use tracing::{info, warn};

pub mod program;
mod stream;

use crate::net::Netlink;
use crate::state::{unix_ms, Change, Persisted, PolicyKey, Registration, Released, Store};
use crate::Args;

/// Outer hop limit of packets this node encapsulates.
const ENCAP_HOP_LIMIT: u8 = 64;

/// The CNI installation a node's uninstall removes: `installer uninstall --bin-dir --conf-dir`.
pub struct CniUninstall {
    pub installer: std::path::PathBuf,
    pub bin_dir: std::path::PathBuf,
    pub conf_dir: std::path::PathBuf,
}

pub struct Node {
    name: String,
    /// Where the maps and links are pinned (<pin root>/<node>).
    pin_dir: std::path::PathBuf,
    locator: Locator,
    uplink: String,
    /// The MTU chains carry, and VNF interfaces get: the uplink's less the largest encapsulation.
    inner_mtu: u32,
    datapath: Datapath,
    netlink: Netlink,
    store: Store,
    state: Persisted,
    /// What the last Program installed, to diff against the next one.
    installed: Installed,
    /// End.AD per-flow entries per chain tag at the last recount.
    flow_counts: BTreeMap<u16, u32>,
    /// SRv6 pipes: the channel to each stream proxy on this node.
    channels: stream::Channels,
    /// No state was in the state directory: srv6pipes was not on this node before (or was
    /// uninstalled since), so its pods came up without srv6pipes-cni.
    first_start: bool,
}

/// How long a released proxy SID is not given to another pod (while another is free): other
/// nodes' headends may steer the chains that used it there until they are reprogrammed, and
/// those packets would reach another pod's function (a firewall's traffic through a pod that is
/// none); unassigned, the SID drops them.
pub const SID_REUSE_DELAY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Installed {
    /// Classifier stage 1: (ifindex, destination) -> class.
    rules: BTreeMap<(u32, IpNet), u32>,
    /// Stage 2: (class, protocol, port, port block length) -> policy.
    l4: BTreeMap<(u32, Option<u8>, u16, u8), L4Target>,
    /// Fragments: (class, protocol) -> policy.
    frags: BTreeMap<(u32, Option<u8>), u32>,
    /// End.AS: (return ifindex, family) -> policy.
    as_returns: BTreeMap<(u32, u32), u32>,
    /// VNF return interfaces -> VNF_AM / VNF_NO_FLOWS / VNF_SHARED / VNF_AS.
    vnf_flags: BTreeMap<u32, u32>,
    /// End.AM: pod addresses admitted as sources of inserted SRHs.
    insert_sources: BTreeSet<Ipv6Net>,
    /// Policy id -> a digest of what was written (`policy_digest`; None: found in the map at a
    /// restart, written again by the first program); a policy written as wanted is skipped.
    policies: BTreeMap<u32, Option<u64>>,
    headend_ifaces: BTreeSet<String>,
    decaps: BTreeSet<Sid>,
    peer_routes: BTreeMap<Ipv6Net, Ipv6Addr>,
    /// SRv6 pipes: stream SIDs, and the node-side interfaces of the pods serving them.
    streams: BTreeSet<Sid>,
    stream_pods: BTreeSet<String>,
}

impl Node {
    pub async fn start(args: &Args, locator: Locator, uplink: String) -> anyhow::Result<Self> {
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
        let pin_dir = args.pin_root.join(&args.node_name);
        ensure_bpffs(&args.pin_root)?;
        std::fs::create_dir_all(&pin_dir).with_context(|| format!("create pin dir {}", pin_dir.display()))?;
        let mut datapath = Datapath::load(&pin_dir)?;
        for map in datapath.replaced_maps() {
            warn!(node = %args.node_name, map = %map, "a pinned map had another layout (another build's): replaced; its entries are written again");
        }
        let netlink = Netlink::connect()?;
        let block = args.cluster_block.trunc();
        let uplink_mtu = netlink.mtu(&uplink).await?;
        let inner_mtu = vnf_mtu(uplink_mtu).with_context(|| format!("uplink {uplink}"))?;
        datapath.set_config(NodeConfig {
            locator: locator.prefix().network().octets(),
            locator_len: locator.prefix().prefix_len() as u32,
            block_len: block.prefix_len() as u32,
            block: block.network().octets(),
            ad_age_ns: args.ad_age_ms * 1_000_000,
            src: locator.source_address().octets(),
            inner_mtu,
            flow_quota: args.flow_quota,
        })?;
        datapath.attach(Hook::Uplink, &uplink)?;
        let store = Store::new(&args.state_dir)?;
        let first_start = !store.exists();
        let (state, skipped) = store.load()?;
        for entry in &skipped {
            warn!(node = %args.node_name, entry = %entry, "state file: an entry that cannot be read was skipped");
        }
        let mut node = Node {
            name: args.node_name.clone(),
            pin_dir: pin_dir.clone(),
            locator,
            uplink,
            datapath,
            netlink,
            inner_mtu,
            store,
            state: Persisted::default(),
            installed: Installed::default(),
            flow_counts: BTreeMap::new(),
            channels: stream::Channels::default(),
            first_start,
        };
        node.restore(state).await?;
        node.take_over_adopted();
        node.keep_first()?;
        info!(node = %node.name, locator = %node.locator, uplink = %node.uplink, uplink_mtu, inner_mtu, pins = %pin_dir.display(), "node daemon ready");
        Ok(node)
    }

    /// Rebuilds from the pins and the state directory: what the maps and pinned links hold is
    /// taken as installed, registrations whose interfaces still exist are kept (same SIDs),
    /// leftovers are removed, and the last programming is re-applied as a diff — so a restart
    /// changes nothing under running traffic.
    async fn restore(&mut self, state: Persisted) -> anyhow::Result<()> {
        let dp = &self.datapath;
        let sids = dp.sids()?;
        self.installed = Installed {
            rules: dp.headend_rules()?.into_iter().collect(),
            l4: dp.l4_rules()?.into_iter().collect(),
            frags: dp.frag_rules()?.into_iter().collect(),
            as_returns: dp.as_returns()?.into_iter().collect(),
            vnf_flags: dp.vnf_flags()?.into_iter().collect(),
            insert_sources: dp.insert_sources()?.into_iter().collect(),
            policies: dp.policy_ids()?.into_iter().map(|id| (id, None)).collect(),
            headend_ifaces: dp.attached().filter(|(h, _)| *h == Hook::Headend).map(|(_, i)| i.to_string()).collect(),
            decaps: sids.iter().filter(|(_, e)| e.behavior == BEHAVIOR_END_DT46).map(|(s, _)| Sid(*s)).collect(),
            streams: sids.iter().filter(|(_, e)| e.behavior == BEHAVIOR_END_STREAM).map(|(s, _)| Sid(*s)).collect(),
            stream_pods: dp.attached().filter(|(h, _)| *h == Hook::StreamPod).map(|(_, i)| i.to_string()).collect(),
            peer_routes: state.program.iter().flat_map(|p| &p.peers).map(|p| (p.locator.prefix(), p.underlay)).collect(),
        };
        // The ids and ports the maps and stream proxies were programmed with, kept for the
        // re-apply: given out afresh, they would move between chains under running traffic.
        self.state.policies = state.policies;
        self.state.stream_ports = state.stream_ports;
        self.state.released = state.released;
        for reg in state.registrations {
            let a = &reg.attachment;
            match if_nametoindex(a.host_ifname.as_str()) {
                Ok(idx) if idx == reg.ifindex => match self.install_proxy(&reg) {
                    Ok(()) => {
                        info!(node = %self.name, pod = %pod_of(a), interface = %a.host_ifname, sid = %reg.sid, "restored proxy SID");
                        self.state.registrations.push(reg);
                    }
                    // One registration that cannot be installed (a SID outside this locator, a
                    // full map) is released, never a crash loop that holds up every other pod.
                    Err(e) => {
                        warn!(node = %self.name, pod = %pod_of(a), interface = %a.host_ifname, sid = %reg.sid, error = %format!("{e:#}"), "registration cannot be restored: SID released");
                        self.uninstall_proxy(&reg);
                        self.state.release(Released::now(reg.funct));
                    }
                },
                _ => {
                    warn!(node = %self.name, pod = %pod_of(a), interface = %a.host_ifname, sid = %reg.sid, "interface gone while down: SID released");
                    self.uninstall_proxy(&reg);
                    self.state.release(Released::now(reg.funct));
                }
            }
        }
        // Proxy SIDs and VNF links nobody registered (a crash between install and save).
        let kept: BTreeSet<Ipv6Addr> = self.state.registrations.iter().map(|r| r.sid.0).collect();
        // (Stream SIDs are the programming's: re-applying it below removes those no longer wanted.)
        let programmed = [BEHAVIOR_END_DT46, BEHAVIOR_END_STREAM];
        for (sid, e) in sids.iter().filter(|(s, e)| !programmed.contains(&e.behavior) && !kept.contains(s)) {
            warn!(node = %self.name, sid = %sid, "removing unregistered proxy SID");
            self.datapath.remove_sid(*sid)?;
            self.datapath.remove_ad_cache(e.cache_ifindex)?;
            self.datapath.remove_vnf_flags(e.cache_ifindex)?;
            self.installed.vnf_flags.remove(&e.cache_ifindex);
        }
        let vnf_ifaces: BTreeSet<&str> = self.state.registrations.iter().map(|r| r.return_host_ifname()).collect();
        let orphans: Vec<String> =
            self.datapath.attached().filter(|(h, i)| *h == Hook::Vnf && !vnf_ifaces.contains(i)).map(|(_, i)| i.to_string()).collect();
        for ifname in orphans {
            self.datapath.detach(Hook::Vnf, &ifname)?;
        }
        if let Some(p) = state.program {
            if let Err(e) = self.program(p).await {
                warn!(node = %self.name, error = %format!("{e:#}"), "could not re-apply the last programming");
            }
        }
        self.store.save(&self.state)
    }

    pub async fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Register(a) => self.register(a).await.map(|sid| Response::Registered { sid }),
            Request::Unregister { container_id, ifname } => self.unregister(&container_id, &ifname).map(|_| Response::Ok),
            Request::Sids => Ok(Response::Sids(self.sids())),
            // The server applies programs itself (the node is locked only for the map updates).
            Request::Program(_) => Err(anyhow!("programs are applied by the server, not through the node's handle")),
            Request::Stats => self.stats().map(Response::Stats),
            Request::Lookup { container_id, ifname } => self
                .find(&container_id, &ifname)
                .map(|r| Response::Attachment { attachment: Box::new(r.attachment.clone()), sid: r.sid })
                .ok_or_else(|| anyhow!("no attachment {container_id}/{ifname}")),
            Request::Gc { network, valid } => Ok(Response::Released { attachments: self.gc(&network, &valid) }),
            // The server answers these itself (it holds the API client); never sent here.
            Request::PodNetworks { namespace, name } => Err(anyhow!("pod {namespace}/{name}: not a node request")),
            Request::Monitor(_) => Err(anyhow!("monitors are served by the server, not through the node's handle")),
        };
        r.unwrap_or_else(|e| Response::Error { message: format!("node {}: {e:#}", self.name) })
    }

    fn find(&self, container_id: &str, ifname: &str) -> Option<&Registration> {
        let key = AttachmentKey { container_id: container_id.into(), ifname: ifname.into() };
        self.state.registrations.iter().find(|r| r.attachment.key() == key)
    }

    /// CNI GC: every attachment of `network` that the runtime no longer lists goes. A release
    /// that fails part-way is logged and the rest go on: each is out of the state either way,
    /// and the plugin must hear of every one to remove its veths.
    fn gc(&mut self, network: &str, valid: &[AttachmentKey]) -> Vec<Attachment> {
        let stale: Vec<AttachmentKey> = self
            .state
            .registrations
            .iter()
            .map(|r| &r.attachment)
            .filter(|a| a.network == network && !valid.contains(&a.key()))
            .map(Attachment::key)
            .collect();
        let mut released = Vec::new();
        for k in stale {
            let a = self.find(&k.container_id, &k.ifname).map(|r| r.attachment.clone()).expect("listed above");
            if let Err(e) = self.unregister(&k.container_id, &k.ifname) {
                warn!(node = %self.name, pod = %pod_of(&a), container = %k.container_id, interface = %k.ifname, "GC: {e:#}");
            }
            released.push(a);
        }
        released
    }

    async fn register(&mut self, a: Attachment) -> anyhow::Result<Sid> {
        if let Some(r) = self.find(&a.key().container_id, &a.key().ifname) {
            if r.attachment == a {
                return Ok(r.sid);
            }
            bail!("{} {} is already registered with another interface ({})", pod_of(&a), a.ifname, r.attachment.host_ifname);
        }
        // The caller is root (SO_PEERCRED), but the interface it names must be what it says: a
        // veth with that MAC, so a registration can never point End.AD at the uplink.
        let names = std::iter::once(&a.host_ifname).chain(a.out.as_ref().map(|o| &o.host_ifname));
        for name in names {
            if *name == self.uplink {
                bail!("{} names the uplink {name}", pod_of(&a));
            }
            if let Some(r) = self.state.registrations.iter().find(|r| r.attachment.host_ifname == *name || r.return_host_ifname() == name) {
                bail!("{name} already belongs to {}", pod_of(&r.attachment));
            }
            if self.installed.headend_ifaces.contains(name) {
                bail!("{name} is a pod's primary interface");
            }
        }
        let ifindex = self.netlink.check_veth(&a.host_ifname, &a.host_mac).await?;
        let return_ifindex = match &a.out {
            Some(o) => self.netlink.check_veth(&o.host_ifname, &o.host_mac).await?,
            None => ifindex,
        };
        let taken: BTreeSet<u16> = self.state.registrations.iter().map(|r| r.funct).collect();
        let cooling = self.state.cooling(unix_ms(), SID_REUSE_DELAY);
        let funct = allocate_proxy_funct(self.locator, &taken, &cooling)?;
        let reg = Registration { sid: self.locator.sid(funct), funct, ifindex, return_ifindex, attachment: a };
        if let Err(e) = self.install_proxy(&reg) {
            self.uninstall_proxy(&reg);
            return Err(e);
        }
        self.state.registrations.push(reg.clone());
        if let Err(e) = self.store.record(&Change::Registered(Box::new(reg.clone())), &self.state) {
            self.state.registrations.pop();
            self.uninstall_proxy(&reg);
            return Err(e);
        }
        let a = &reg.attachment;
        info!(node = %self.name, pod = %pod_of(a), interface = %a.host_ifname, sid = %reg.sid, "End.AD SID allocated");
        Ok(reg.sid)
    }

    fn install_proxy(&mut self, reg: &Registration) -> anyhow::Result<()> {
        self.datapath.attach(Hook::Vnf, reg.return_host_ifname())?;
        self.set_proxy_behavior(reg, self.behavior_of(reg))
    }

    fn behavior_of(&self, reg: &Registration) -> u32 {
        proxy_behavior((&self.installed.as_returns, &self.installed.vnf_flags), reg.return_ifindex)
    }

    fn set_proxy_behavior(&mut self, reg: &Registration, behavior: u32) -> anyhow::Result<()> {
        let a = &reg.attachment;
        let entry = SidEntry {
            behavior,
            ifindex: reg.ifindex,
            cache_ifindex: reg.return_ifindex,
            vnf_mac: parse_mac(&a.vnf_mac)?,
            host_mac: parse_mac(&a.host_mac)?,
            stream_port: 0,
        };
        self.datapath.set_sid(reg.sid.0, entry)?;
        Ok(())
    }

    /// Best effort: every step runs even if an earlier one failed. (A SID that was given out
    /// is then released, to cool down: [`SID_REUSE_DELAY`].)
    fn uninstall_proxy(&mut self, reg: &Registration) -> Vec<anyhow::Error> {
        let mut errs = Vec::new();
        if let Err(e) = self.datapath.remove_sid(reg.sid.0) {
            errs.push(e.into());
        }
        if let Err(e) = self.datapath.remove_ad_cache(reg.return_ifindex) {
            errs.push(e.into());
        }
        if let Err(e) = self.datapath.remove_vnf_flags(reg.return_ifindex) {
            errs.push(e.into());
        }
        self.installed.vnf_flags.remove(&reg.return_ifindex);
        for family in [4, 6] {
            if let Err(e) = self.datapath.remove_as_return(reg.return_ifindex, family) {
                errs.push(e.into());
            }
            self.installed.as_returns.remove(&(reg.return_ifindex, family));
        }
        if let Err(e) = self.datapath.detach(Hook::Vnf, reg.return_host_ifname()) {
            errs.push(e.into());
        }
        errs.extend(self.uninstall_streams(reg));
        errs
    }

    fn unregister(&mut self, container_id: &str, ifname: &str) -> anyhow::Result<()> {
        let key = AttachmentKey { container_id: container_id.into(), ifname: ifname.into() };
        let Some(pos) = self.state.registrations.iter().position(|r| r.attachment.key() == key) else {
            return Ok(());
        };
        let reg = self.state.registrations.remove(pos);
        let ports = self.state.stream_ports.len();
        let errs = self.uninstall_proxy(&reg);
        let released = Released::now(reg.funct);
        self.state.release(released);
        if self.state.stream_ports.len() == ports {
            self.store.record(&Change::Released { key, released }, &self.state)?;
        } else {
            // Its stream SIDs' ports went too: the journal has no line for those.
            self.store.save(&self.state)?;
        }
        let a = &reg.attachment;
        info!(node = %self.name, pod = %pod_of(a), interface = %a.host_ifname, sid = %reg.sid, "End.AD SID released");
        match errs.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e.context(format!("release {} of {} ({container_id}/{ifname})", reg.sid, pod_of(&reg.attachment)))),
        }
    }

    /// The pods registered here, by (namespace, name).
    pub fn registered_pods(&self) -> BTreeSet<(String, String)> {
        self.state.registrations.iter().map(|r| (r.attachment.pod_namespace.clone(), r.attachment.pod_name.clone())).collect()
    }

    pub fn sids(&self) -> NodeSids {
        NodeSids {
            node: self.name.clone(),
            locator: self.locator,
            source_address: self.locator.source_address(),
            decap_sid: self.locator.decap_sid(),
            vnf_mtu: self.inner_mtu,
            registrations: self
                .state
                .registrations
                .iter()
                .map(|r| SidRegistration {
                    node: self.name.clone(),
                    pod_namespace: r.attachment.pod_namespace.clone(),
                    pod_name: r.attachment.pod_name.clone(),
                    interface: r.attachment.ifname.clone(),
                    sid: r.sid,
                })
                .collect(),
        }
    }

    /// srv6pipes is being uninstalled: removes what this daemon put on the node. The CNI
    /// configuration goes first, so no new pod is sent to a daemon that is leaving (the binary
    /// stays while pods are attached: their DEL needs it; registrations were refused since the
    /// uninstall began). Then the routes to other nodes'
    /// locators, the VNF veths' filters (each holds its program, and so the maps, for as long as
    /// its pod lives), the pins (programs, maps and links go with the last reference to them,
    /// this process's, at exit) and the state. Best effort: every step runs; the failures are
    /// returned.
    pub async fn uninstall(&mut self, cni: Option<&CniUninstall>) -> Vec<anyhow::Error> {
        let mut errs = Vec::new();
        if let Some(c) = cni {
            let attached = self.state.registrations.len();
            let mut cmd = std::process::Command::new(&c.installer);
            cmd.arg("uninstall").arg("--bin-dir").arg(&c.bin_dir).arg("--conf-dir").arg(&c.conf_dir);
            if attached > 0 {
                let pods: Vec<String> = self.state.registrations.iter().map(|r| pod_of(&r.attachment)).collect();
                warn!(node = %self.name, ?pods, "pods still attached: the CNI binary stays for their DEL; remove it after them");
                cmd.arg("--keep-binary");
            }
            match cmd.status() {
                Ok(s) if s.success() => info!(node = %self.name, conf_dir = %c.conf_dir.display(), "CNI configuration removed"),
                Ok(s) => errs.push(anyhow!("{} uninstall: {s}", c.installer.display())),
                Err(e) => errs.push(anyhow::Error::from(e).context(format!("run {}", c.installer.display()))),
            }
        }
        if let Ok(uplink_idx) = if_nametoindex(self.uplink.as_str()) {
            for (prefix, via) in std::mem::take(&mut self.installed.peer_routes) {
                if let Err(e) = self.netlink.delete_route(prefix, via, uplink_idx).await {
                    errs.push(e.context(format!("route {prefix} via {via}")));
                }
            }
        }
        let vnf_ifaces: Vec<String> = self.state.registrations.iter().map(|r| r.return_host_ifname().to_string()).collect();
        for ifname in vnf_ifaces {
            if let Err(e) = self.datapath.detach(Hook::Vnf, &ifname) {
                errs.push(e.into());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.pin_dir) {
            errs.push(anyhow::Error::from(e).context(format!("remove pins {}", self.pin_dir.display())));
        }
        // The pin root too, once no other node's pins are in it (several lab nodes share one).
        if let Some(root) = self.pin_dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
        if let Err(e) = self.store.remove() {
            errs.push(e);
        }
        info!(node = %self.name, pins = %self.pin_dir.display(), "datapath unpinned, routes and state removed");
        errs
    }

    /// Recounts End.AD's per-flow entries per chain for the quota (the datapath sees new entries,
    /// not the LRU's evictions). Runs every second.
    /// The End.AD flow counts of the last recount (`srv6pipes_ebpf::FlowCounter`, which runs
    /// without the node).
    pub fn set_flow_counts(&mut self, counts: BTreeMap<u16, u32>) {
        self.flow_counts = counts;
    }

    /// The node's netlink handle, for what runs without the node (`server::program`).
    pub fn netlink(&self) -> Netlink {
        self.netlink.clone()
    }

    /// The state directory, for what is written without the node.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Where the datapath's maps are pinned.
    pub fn first_start(&self) -> bool {
        self.first_start
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Applies the deregistrations CNI DEL queued beside `socket` while this daemon did not
    /// answer (`node_api::queue_deregistration`). Returns whether a registration went.
    pub fn apply_queued_deregistrations(&mut self, socket: &std::path::Path) -> bool {
        let mut changed = false;
        for (file, container_id, ifname) in srv6::node_api::queued_deregistrations(socket) {
            let held = self.find(&container_id, &ifname).is_some();
            match self.unregister(&container_id, &ifname) {
                Ok(()) => {
                    changed |= held;
                    let _ = std::fs::remove_file(&file);
                    info!(node = %self.name, container = %container_id, interface = %ifname, held, "applied a deregistration queued while the daemon did not answer");
                }
                Err(e) => {
                    warn!(node = %self.name, container = %container_id, interface = %ifname, error = %format!("{e:#}"), "queued deregistration failed; retrying")
                }
            }
        }
        changed
    }

    /// This build's programs into the links the previous daemon left (after the restore, so
    /// that a map replaced for its layout holds the node's state again first).
    fn take_over_adopted(&mut self) {
        let (mut taken, mut kept) = (0, 0);
        for r in self.datapath.take_over_adopted() {
            match r {
                Ok(_) => taken += 1,
                Err(e) => {
                    kept += 1;
                    warn!(node = %self.name, error = %e, "an adopted link keeps the previous daemon's program");
                }
            }
        }
        info!(node = %self.name, links = taken, kept, "adopted links run this daemon's programs");
    }

    /// Keeps srv6pipes' programs first in every tcx chain they are attached to: a program
    /// inserted in front of one (an eBPF primary CNI attaching or re-inserting itself at the
    /// head, whose `TC_ACT_OK` would end the chain before the headend or the closed-domain guard
    /// ran) is passed again. Runs at start and every second.
    pub fn keep_first(&mut self) -> anyhow::Result<()> {
        for (hook, ifname) in self.datapath.keep_first()? {
            warn!(node = %self.name, interface = %ifname, program = hook.program(), "another tcx program was inserted ahead of ours: attached ours at the head again");
        }
        Ok(())
    }

    /// The node's counters: per SID, per chain at its headend, drops and events by name.
    pub fn stats(&self) -> anyhow::Result<NodeStats> {
        let mut sids = Vec::new();
        let proxies = self.state.registrations.iter().map(|r| {
            let behavior = match self.behavior_of(r) {
                BEHAVIOR_END_AS => "End.AS",
                BEHAVIOR_END_AM => "End.AM",
                _ => "End.AD",
            };
            (r.sid, behavior)
        });
        let decaps = self.installed.decaps.iter().map(|s| (*s, "End.DT46"));
        let streams = self.installed.streams.iter().map(|s| (*s, "End.STREAM"));
        for (sid, behavior) in proxies.chain(decaps).chain(streams) {
            let s = self.datapath.sid_stats(sid.0)?;
            let function = self.stream_function(sid);
            sids.push(SidCounters { sid, behavior: behavior.into(), function, packets: s.packets, bytes: s.bytes, drops: s.drops });
        }
        let drops = self.datapath.drop_reasons()?.into_iter().map(|(r, n)| (r.name().to_string(), n)).collect();
        let mut chains: BTreeMap<&str, ChainCounters> = BTreeMap::new();
        for (key, id) in &self.state.policies {
            let s = self.datapath.policy_stats(*id)?;
            let c = chains.entry(&key.chain).or_insert_with(|| ChainCounters { chain: key.chain.clone(), ..Default::default() });
            c.packets += s.packets;
            c.bytes += s.bytes;
            c.drops += s.drops;
        }
        let mut events: Vec<(String, u64)> = self.datapath.events()?.into_iter().map(|(e, n)| (e.name().to_string(), n)).collect();
        let (limited, lost) = self.datapath.monitor_not_sent()?;
        events.extend([("monitor_limited".to_string(), limited), ("monitor_lost".to_string(), lost)]);
        Ok(NodeStats { sids, drops, chains: chains.into_values().collect(), events, streams: self.channels.counters() })
    }
}

impl Node {
    /// What names the live monitor's events (`crate::monitor`).
    pub fn monitor_names(&self) -> crate::monitor::Names {
        crate::monitor::Names::new(&self.name, self.state.program.as_ref(), &self.state.policies, &self.state.registrations)
    }

    /// Prometheus text exposition of the node's counters and `timings` (`crate::metrics`).
    pub fn metrics(&self, timings: &crate::metrics::Timings) -> anyhow::Result<String> {
        let stats = self.stats()?;
        let funct = |sid: Sid| self.locator.stream_arg_of(sid).map_or(self.locator.funct_of(sid), |a| Some(a.funct));
        let owner = |sid: Sid| {
            self.state.registrations.iter().find(|r| Some(r.funct) == funct(sid)).map_or_else(Default::default, |r| {
                (r.attachment.pod_namespace.clone(), r.attachment.pod_name.clone(), r.attachment.ifname.clone())
            })
        };
        let scrape = crate::metrics::Scrape { node: &self.name, stats: &stats, owner: &owner, sids: self.state.registrations.len() };
        Ok(crate::metrics::encode(&scrape, timings)?)
    }
}

/// The interface has an End.AS return policy (of either family).
fn has_return(as_returns: &BTreeMap<(u32, u32), u32>, return_ifindex: u32) -> bool {
    as_returns.range((return_ifindex, 0)..=(return_ifindex, u32::MAX)).next().is_some()
}

/// Return interfaces' End.AS return policies (by interface and family) and `SP_VNF_*` flags.
type ReturnSide<'a> = (&'a BTreeMap<(u32, u32), u32>, &'a BTreeMap<u32, u32>);

/// A proxy SID's behaviour from what its return interface has: a configured return (End.AS,
/// installed for both families together), the masquerading flag (End.AM), else End.AD.
fn proxy_behavior(installed: ReturnSide, return_ifindex: u32) -> u32 {
    programmed_behavior(installed, installed, return_ifindex)
}

/// The behaviour a proxy SID is written with while a program is applied: from what its return
/// interface has installed *and* the program wants. A return or flag on its way out (removed
/// after the SIDs are written) no longer counts, so the SID leaves End.AS or End.AM in this
/// program, not the next; one whose install failed does not count yet, so the SID never takes
/// a behaviour whose return side is missing.
fn programmed_behavior(installed: ReturnSide, wanted: ReturnSide, return_ifindex: u32) -> u32 {
    let am = |flags: &BTreeMap<u32, u32>| flags.get(&return_ifindex).is_some_and(|f| f & VNF_AM != 0);
    if has_return(installed.0, return_ifindex) && has_return(wanted.0, return_ifindex) {
        BEHAVIOR_END_AS
    } else if am(installed.1) && am(wanted.1) {
        BEHAVIOR_END_AM
    } else {
        BEHAVIOR_END_AD
    }
}

/// Policy ids are stable: a key keeps the id it had (persisted, since counters are per id); a
/// new key takes the lowest id nobody holds: no known key, and no policy still in the maps.
/// One allocator per program: the ids in use are collected once and new ones are taken upward
/// (every id below `next` is in use), so a program of 10,000 new chains costs 10,000 set
/// lookups, not 10,000 collections of every id (1.8 s).
struct PolicyIds<'k> {
    known: &'k BTreeMap<PolicyKey, u32>,
    used: BTreeSet<u32>,
    next: u32,
    ids: BTreeMap<PolicyKey, u32>,
}

impl<'k> PolicyIds<'k> {
    fn new(known: &'k BTreeMap<PolicyKey, u32>, held: &BTreeSet<u32>) -> Self {
        PolicyIds { known, used: known.values().chain(held).copied().collect(), next: 1, ids: BTreeMap::new() }
    }

    fn id(&mut self, key: PolicyKey) -> u32 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.known.get(&key).copied().unwrap_or_else(|| {
            while self.used.contains(&self.next) {
                self.next += 1;
            }
            self.used.insert(self.next);
            self.next
        });
        self.ids.insert(key, id);
        id
    }

    /// The ids of the program's keys.
    fn into_ids(self) -> BTreeMap<PolicyKey, u32> {
        self.ids
    }
}

/// The header template of a policy: every hop's first replica (the datapath swaps in the
/// flow's replica per hop); none for a dropping policy. H.Encaps: the outer IPv6 header and SRH.
/// H.Insert: the same shape with the last segment left for the packet's own destination (the
/// datapath fills it, the SRH's next header and the IPv6 header from the packet).
fn policy_header(src: Ipv6Addr, key: &PolicyKey) -> anyhow::Result<Vec<u8>> {
    if key.drop {
        return Ok(Vec::new());
    }
    let mut path: Vec<Ipv6Addr> = key.replicas.iter().map(|r| r[0].0).collect();
    if key.insert {
        path.push(Ipv6Addr::UNSPECIFIED);
    }
    let mut header = srv6::codec::encaps_header(src, &path, key.inner, ENCAP_HOP_LIMIT)?;
    header[SRH_TAG_OFFSET..SRH_TAG_OFFSET + 2].copy_from_slice(&srv6::compiler::chain_tag(&key.chain).to_be_bytes());
    Ok(header)
}

/// What a chain carries over an uplink of `uplink_mtu`: room is kept for an outer IPv6 header
/// and an SRH of the most segments (srv6::MAX_SEGMENTS), whatever the chain's length.
fn vnf_mtu(uplink_mtu: u32) -> anyhow::Result<u32> {
    let mtu = uplink_mtu.saturating_sub(srv6pipes_ebpf::MAX_HDR as u32);
    if mtu < 1280 {
        bail!("MTU {uplink_mtu} leaves {mtu} bytes after {} bytes of SRv6 headers, below IPv6's minimum 1280", srv6pipes_ebpf::MAX_HDR);
    }
    Ok(mtu)
}

fn pod_of(a: &Attachment) -> String {
    format!("{}/{}", a.pod_namespace, a.pod_name)
}

fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    srv6::node_api::parse_mac(s).ok_or_else(|| anyhow!("invalid MAC {s:?}"))
}

/// Sets a sysctl unless it already has the value: in a container /proc/sys is read-only, and
/// the DaemonSet sets what the daemon needs before it starts.
fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))
}

/// Mounts bpffs at /sys/fs/bpf when the pin root lives there and nothing is mounted yet.
fn ensure_bpffs(pin_root: &Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let bpffs = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(bpffs) {
        return Ok(());
    }
    let st = nix::sys::statfs::statfs(bpffs).context("statfs /sys/fs/bpf")?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).context("mount bpffs at /sys/fs/bpf")
}
