//! SRv6 pipes on the node: the channel to each stream proxy, and the plan of its SIDs.
//!
//! The channel is an abstract unix socket bound *inside the proxy pod's netns*
//! (`srv6::pipes::CHANNEL`): only that pod's processes can reach it, so the proxy needs no
//! credentials and the daemon's own socket stays root-only. The daemon writes the pod's
//! [`StreamTable`] as one JSON line on connect and on every change; the proxy writes its
//! [`StreamCounters`] as one JSON line (an array) each second.

use std::collections::{BTreeMap, BTreeSet};
use std::os::linux::net::SocketAddrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use srv6::compiler::{Behavior, SidUse};
use srv6::pipes::{StreamCounters, StreamEntry, StreamTable};
use srv6::sid::Sid;
use srv6pipes_ebpf::{Hook, SidEntry, BEHAVIOR_END_STREAM};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tracing::{info, warn};

use super::program::step;
use crate::state::Registration;

/// The first listener port handed to a proxy's SIDs (ports are per pod: its own netns).
pub const FIRST_PORT: u16 = 40000;

/// Stream SIDs a program wants, by registration (index into the daemon's registrations).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub by_registration: BTreeMap<usize, Vec<StreamEntry>>,
}

/// The stream SIDs of `proxies`, each on the registration whose FUNCT it carries (`funct_of`
/// maps a stream SID to it), with a listener port: the one it had (`ports`), else the lowest
/// free one of its pod from FIRST_PORT. Pure.
pub fn plan(proxies: &[SidUse], registration_of: impl Fn(Sid) -> Option<usize>, ports: &BTreeMap<Sid, u16>) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for u in proxies.iter().filter(|u| u.behavior == Behavior::Stream) {
        let pipeline = u.pipeline.clone().with_context(|| format!("stream SID {} of chain {} has no pipeline", u.sid, u.chain))?;
        let reg =
            registration_of(u.sid).with_context(|| format!("stream SID {} (chain {}) is on no registered interface", u.sid, u.chain))?;
        let entries = plan.by_registration.entry(reg).or_default();
        match entries.iter_mut().find(|e| e.sid == u.sid) {
            Some(e) if !e.chains.iter().any(|c| **c == *u.chain) => e.chains.push(u.chain.to_string()),
            Some(_) => {}
            None => entries.push(StreamEntry { sid: u.sid, port: 0, chains: vec![u.chain.to_string()], pipeline }),
        }
    }
    for entries in plan.by_registration.values_mut() {
        for e in entries.iter_mut() {
            e.port = ports.get(&e.sid).copied().unwrap_or(0);
        }
        let mut taken: BTreeSet<u16> = entries.iter().map(|e| e.port).filter(|p| *p != 0).collect();
        for e in entries.iter_mut().filter(|e| e.port == 0) {
            let port = (FIRST_PORT..=u16::MAX).find(|p| !taken.contains(p)).context("no listener port left")?;
            taken.insert(port);
            e.port = port;
        }
    }
    Ok(plan)
}

/// One proxy's channel: its table, and what it last reported.
struct Channel {
    table: watch::Sender<StreamTable>,
    counters: Arc<Mutex<Vec<StreamCounters>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The channels of this node's stream proxies, by the node-side name of their interface.
#[derive(Default)]
pub struct Channels {
    open: BTreeMap<String, Channel>,
}

impl Channels {
    /// Publishes `table` to the proxy behind `host_ifname`, opening its channel in `netns` first
    /// if needed.
    pub fn publish(&mut self, host_ifname: &str, netns: &Path, table: StreamTable) -> anyhow::Result<()> {
        if let Some(c) = self.open.get(host_ifname) {
            c.table.send_if_modified(|t| {
                let changed = *t != table;
                *t = table;
                changed
            });
            return Ok(());
        }
        let listener = bind_in(netns).with_context(|| format!("stream channel of {} in {}", table.pod, netns.display()))?;
        let pod = table.pod.clone();
        let (tx, rx) = watch::channel(table);
        let counters = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, rx, counters.clone(), pod.clone()));
        info!(pod = %pod, interface = %host_ifname, "stream proxy channel open");
        self.open.insert(host_ifname.to_string(), Channel { table: tx, counters, task });
        Ok(())
    }

    /// Closes the channels of proxies not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.open.retain(|k, _| keep.contains(k));
    }

    /// Every proxy's last counters, with its pod.
    pub fn counters(&self) -> Vec<StreamCounters> {
        let mut all = Vec::new();
        for c in self.open.values() {
            let pod = c.table.borrow().pod.clone();
            all.extend(c.counters.lock().expect("not poisoned").iter().cloned().map(|mut s| {
                s.pod = pod.clone();
                s
            }));
        }
        all
    }
}

/// A listening abstract socket bound inside the netns at `netns`.
fn bind_in(netns: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let file = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    let std_listener = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<std::os::unix::net::UnixListener> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("enter the pod's netns")?;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(srv6::pipes::CHANNEL.as_bytes())?;
            Ok(std::os::unix::net::UnixListener::bind_addr(&addr)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in the pod's netns panicked"))?
    })?;
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(std_listener)?)
}

async fn serve(
    listener: tokio::net::UnixListener,
    table: watch::Receiver<StreamTable>,
    counters: Arc<Mutex<Vec<StreamCounters>>>,
    pod: String,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(pod = %pod, error = %e, "stream channel accept");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        tokio::spawn(session(stream, table.clone(), counters.clone(), pod.clone()));
    }
}

/// One proxy connection: the table now and on each change; its counters as they come. When
/// it ends (the proxy exited) its connections are gone: none is counted active any more.
async fn session(
    stream: tokio::net::UnixStream,
    table: watch::Receiver<StreamTable>,
    counters: Arc<Mutex<Vec<StreamCounters>>>,
    pod: String,
) {
    relay_session(stream, table, &counters, &pod).await;
    for c in counters.lock().expect("not poisoned").iter_mut() {
        c.active = 0;
    }
}

async fn relay_session(
    stream: tokio::net::UnixStream,
    mut table: watch::Receiver<StreamTable>,
    counters: &Mutex<Vec<StreamCounters>>,
    pod: &str,
) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    table.mark_changed();
    loop {
        tokio::select! {
            changed = table.changed() => {
                if changed.is_err() {
                    return;
                }
                let mut line = serde_json::to_vec(&*table.borrow_and_update()).expect("a table serializes");
                line.push(b'\n');
                if w.write_all(&line).await.is_err() {
                    return;
                }
            }
            line = lines.next_line() => match line {
                Ok(Some(l)) => match serde_json::from_str::<Vec<StreamCounters>>(&l) {
                    Ok(c) => *counters.lock().expect("not poisoned") = c,
                    Err(e) => warn!(pod = %pod, error = %e, "stream proxy sent counters that do not parse"),
                },
                _ => return,
            }
        }
    }
}

impl super::Node {
    /// The stream SIDs `proxies` ask for, on this node's registrations, with their ports.
    pub(super) fn stream_plan(&self, proxies: &[SidUse]) -> anyhow::Result<Plan> {
        let regs = &self.state.registrations;
        let locator = self.locator;
        let registration_of = |sid: Sid| {
            let funct = locator.stream_arg_of(sid)?.funct;
            regs.iter().position(|r| r.funct == funct)
        };
        let ports: BTreeMap<Sid, u16> = self.state.stream_ports.iter().copied().collect();
        plan(proxies, registration_of, &ports)
    }

    /// The node-side (index, name) of the chain interface `namespace/pod:ifname`.
    pub(super) fn chain_interface(&self, name: &str) -> anyhow::Result<(u32, String)> {
        let reg = self
            .state
            .registrations
            .iter()
            .find(|r| format!("{}:{}", super::pod_of(&r.attachment), r.attachment.ifname) == name)
            .with_context(|| format!("{name} is not registered on node {}", self.name))?;
        Ok((reg.return_ifindex, reg.return_host_ifname().to_string()))
    }

    /// Installs `plan`, best effort: for each proxy, the pod-side program, its stream SIDs
    /// (End.AD inbound, marked for its listener) and its table on its channel; then removes what
    /// is no longer planned. What is installed is recorded step by step, so a failure part-way
    /// leaves nothing unaccounted for (the next programming, or the registration's removal,
    /// removes it), and one proxy that cannot be programmed (its pod's netns gone before its
    /// DEL) holds up no other.
    pub(super) fn program_streams(&mut self, plan: &Plan, errs: &mut Vec<anyhow::Error>) {
        let mut sids = BTreeSet::new();
        let mut pods = BTreeSet::new();
        for (&i, entries) in &plan.by_registration {
            let reg = self.state.registrations[i].clone();
            // Planned, so kept even if programming it fails now: the next programming retries.
            sids.extend(entries.iter().map(|e| e.sid));
            pods.insert(reg.attachment.host_ifname.clone());
            let r = self.program_stream_proxy(&reg, entries);
            step(errs, r, || format!("stream proxy of {}:{}", super::pod_of(&reg.attachment), reg.attachment.ifname));
        }
        let stale: Vec<Sid> = self.installed.streams.difference(&sids).copied().collect();
        for sid in stale {
            if step(errs, self.datapath.remove_sid(sid.0), || format!("remove stream SID {sid}")) {
                self.installed.streams.remove(&sid);
            }
        }
        let unplanned: Vec<String> = self.installed.stream_pods.difference(&pods).cloned().collect();
        for ifname in unplanned {
            if step(errs, self.datapath.detach(Hook::StreamPod, &ifname), || format!("detach the stream proxy from {ifname}")) {
                self.installed.stream_pods.remove(&ifname);
            }
        }
        self.channels.retain(&pods);
        self.state.stream_ports = plan.by_registration.values().flatten().map(|e| (e.sid, e.port)).collect();
    }

    /// One proxy of a plan: its pod-side program, its stream SIDs, its table.
    fn program_stream_proxy(&mut self, reg: &Registration, entries: &[StreamEntry]) -> anyhow::Result<()> {
        let a = &reg.attachment;
        let netns = Path::new(&a.netns);
        self.datapath.attach_in_pod(&a.host_ifname, netns, &a.ifname)?;
        self.installed.stream_pods.insert(a.host_ifname.clone());
        for e in entries {
            let entry = SidEntry {
                behavior: BEHAVIOR_END_STREAM,
                ifindex: reg.ifindex,
                cache_ifindex: reg.return_ifindex,
                vnf_mac: super::parse_mac(&a.vnf_mac)?,
                host_mac: super::parse_mac(&a.host_mac)?,
                stream_port: e.port as u32,
            };
            self.datapath.set_sid(e.sid.0, entry)?;
            self.installed.streams.insert(e.sid);
        }
        let sid_block_len = self.locator.prefix().prefix_len() + srv6::sid::FUNCT_BITS;
        let table = StreamTable {
            pod: super::pod_of(a),
            interface: a.ifname.clone(),
            sid_block: format!("{}/{sid_block_len}", reg.sid),
            entries: entries.to_vec(),
        };
        self.channels.publish(&a.host_ifname, netns, table)
    }

    /// What a stream SID of the last programming applies (`base64(op=encode) | ...`).
    pub(super) fn stream_function(&self, sid: Sid) -> Option<String> {
        let p = self.state.program.as_ref()?;
        p.tables.proxies.iter().find(|u| u.sid == sid).and_then(|u| u.pipeline.as_ref()).map(|p| p.describe())
    }

    /// A registration goes: its stream SIDs, pod-side program and channel with it.
    pub(super) fn uninstall_streams(&mut self, reg: &Registration) -> Vec<anyhow::Error> {
        let mut errs = Vec::new();
        let funct = reg.funct;
        let locator = self.locator;
        let mine: Vec<Sid> =
            self.installed.streams.iter().copied().filter(|s| locator.stream_arg_of(*s).is_some_and(|a| a.funct == funct)).collect();
        for sid in mine {
            if let Err(e) = self.datapath.remove_sid(sid.0) {
                errs.push(e.into());
            }
            self.installed.streams.remove(&sid);
            self.state.stream_ports.retain(|(s, _)| *s != sid);
        }
        let host = &reg.attachment.host_ifname;
        if let Err(e) = self.datapath.detach(Hook::StreamPod, host) {
            errs.push(e.into());
        }
        self.installed.stream_pods.remove(host);
        self.channels.retain(&self.installed.stream_pods.clone());
        errs
    }
}

#[cfg(test)]
mod tests {
    use srv6::pipes::{Pipeline, Stage};

    use super::*;

    /// A proxy's counters as it last sent them, but none of its connections active once its
    /// channel closes (it exited: its connections went with it).
    #[tokio::test]
    async fn a_proxy_gone_counts_no_active_connection() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut proxy) = tokio::net::UnixStream::pair().unwrap();
        let counters = Arc::new(Mutex::new(Vec::new()));
        let (_tables, table) = watch::channel(StreamTable::default());
        let task = tokio::spawn(session(ours, table, counters.clone(), "apps/p".into()));
        let sent: StreamCounters = serde_json::from_value(serde_json::json!({
            "sid": "fcbb:bb00:1:e001:2::", "function": "identity", "active": 3, "total": 5, "failed": 0,
            "forward_in": 0, "forward_out": 0, "reverse_in": 0, "reverse_out": 0, "errors": {},
        }))
        .unwrap();
        proxy.write_all(format!("{}\n", serde_json::to_string(&[&sent]).unwrap()).as_bytes()).await.unwrap();
        for _ in 0..200 {
            if !counters.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(counters.lock().unwrap()[0].active, 3);
        drop(proxy);
        task.await.unwrap();
        let c = &counters.lock().unwrap()[0];
        assert_eq!((c.active, c.total), (0, 5));
    }

    fn stream_use(sid: &str, chain: &str, function: &str) -> SidUse {
        SidUse {
            sid: Sid(sid.parse().unwrap()),
            behavior: Behavior::Stream,
            chain: chain.into(),
            interface: None,
            return_path: Vec::new(),
            rewrites_flows: false,
            both_ways: true,
            pipeline: Some(Pipeline { stages: vec![Stage { function: function.into(), ..Default::default() }] }),
        }
    }

    #[test]
    fn ports_stay_with_their_sid_and_new_ones_take_the_lowest_free() {
        let a = "fcbb:bb00:1:e001:1:1::";
        let b = "fcbb:bb00:1:e001:1:2::";
        let c = "fcbb:bb00:1:e002:1:1::";
        let proxies = vec![
            stream_use(a, "ns/x", "identity"),
            stream_use(b, "ns/x", "identity"),
            stream_use(a, "ns/y", "identity"),
            stream_use(c, "ns/x", "identity"),
        ];
        let reg = |s: Sid| Some(if s.to_string().contains("e001") { 0 } else { 1 });
        let kept: BTreeMap<Sid, u16> = [(Sid(b.parse().unwrap()), FIRST_PORT)].into();
        let p = plan(&proxies, reg, &kept).unwrap();
        let ports: Vec<(String, u16, usize)> = p.by_registration[&0].iter().map(|e| (e.sid.to_string(), e.port, e.chains.len())).collect();
        assert_eq!(ports, [(a.to_string(), FIRST_PORT + 1, 2), (b.to_string(), FIRST_PORT, 1)]);
        assert_eq!(p.by_registration[&1][0].port, FIRST_PORT, "ports are per pod");
        assert!(plan(&proxies, |_| None, &kept).is_err(), "a stream SID must be on a registered interface");
    }
}
