//! The live monitor: one reader of the datapath's ring buffer, fanned out to every `srv6pipes
//! monitor` connected (over the socket in a lab, `/monitor` through the API server in a
//! cluster). The datapath sends events only while someone listens: the configuration is the
//! union of what the subscribers ask for, and all zero when the last one leaves.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use srv6::node_api::{MonitorEvent, MonitorFlow, MonitorRequest, NodeProgram};
use srv6pipes_ebpf::{Monitor, MonitorConfig, MonitorRecord, RecordKind, MONITOR_DROPS, MONITOR_TRACE};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::state::{PolicyKey, Registration};

/// What names an event: the chains, pods and interfaces behind its numbers.
#[derive(Debug, Default)]
pub struct Names {
    node: String,
    /// The SRH tag of every chain the node's program has (`srv6::compiler::chain_tag`).
    by_tag: HashMap<u16, String>,
    /// The chains each of the node's SIDs serves, comma-separated.
    by_sid: HashMap<Ipv6Addr, String>,
    by_policy: HashMap<u32, String>,
    /// VNF interfaces (node side): name, pod and SID.
    by_ifindex: HashMap<u32, (String, String, Ipv6Addr)>,
}

impl Names {
    pub fn new(node: &str, program: Option<&NodeProgram>, policies: &[(PolicyKey, u32)], registrations: &[Registration]) -> Self {
        let mut n = Names { node: node.to_string(), ..Default::default() };
        if let Some(p) = program {
            let t = &p.tables;
            let chains = t.headends.iter().map(|h| &h.chain).chain(t.proxies.iter().chain(&t.decaps).map(|u| &u.chain));
            for c in chains {
                n.by_tag.entry(srv6::compiler::chain_tag(c)).or_insert_with(|| c.to_string());
            }
            for u in t.proxies.iter().chain(&t.decaps) {
                let e = n.by_sid.entry(u.sid.0).or_default();
                if !e.split(',').any(|c| c == &*u.chain) {
                    if !e.is_empty() {
                        e.push(',');
                    }
                    e.push_str(&u.chain);
                }
            }
        }
        n.by_policy = policies.iter().map(|(k, id)| (*id, k.chain.clone())).collect();
        for r in registrations {
            let pod = format!("{}/{}", r.attachment.pod_namespace, r.attachment.pod_name);
            n.by_ifindex.insert(r.ifindex, (r.attachment.host_ifname.clone(), pod.clone(), r.sid.0));
            n.by_ifindex.insert(r.return_ifindex, (r.return_host_ifname().to_string(), pod, r.sid.0));
        }
        n
    }

    /// The event of a record; `wall`: the record's time on the wall clock.
    pub fn event(&self, r: &MonitorRecord, wall: String) -> MonitorEvent {
        let drop = r.kind() == Some(RecordKind::Drop);
        let vnf = self.by_ifindex.get(&r.ifindex);
        // The most specific first: the policy that dropped it, the chain its SRH names, the
        // chains of the SID it was at, those of the VNF interface it came from.
        let chain = r
            .policy()
            .and_then(|p| self.by_policy.get(&p))
            .or_else(|| r.tag().and_then(|t| self.by_tag.get(&t)))
            .or_else(|| r.sid().and_then(|s| self.by_sid.get(&s)))
            .or_else(|| vnf.and_then(|v| self.by_sid.get(&v.2)))
            .cloned();
        let (interface, pod) = match vnf {
            Some((ifname, pod, _)) => (Some(ifname.clone()), Some(pod.clone())),
            None => (interface_name(r.ifindex), None),
        };
        MonitorEvent {
            time: wall,
            node: self.node.clone(),
            kind: if drop { "drop" } else { "trace" }.into(),
            reason: drop.then(|| r.reason().map_or("unknown", |r| r.name()).to_string()),
            verdict: verdict_name(r.verdict),
            hook: r.hook().into(),
            interface,
            pod,
            chain,
            sid: r.sid(),
            flow: r.flow().map(|f| MonitorFlow::new(f.proto, f.src, f.sport, f.dst, f.dport)),
            length: r.len,
        }
    }
}

fn verdict_name(v: i32) -> String {
    match v {
        2 => "drop".into(),
        7 => "redirect".into(),
        0 => "pass".into(),
        -1 => "next".into(),
        n => n.to_string(),
    }
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    // SAFETY: on success p points into buf, NUL-terminated.
    (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// CLOCK_MONOTONIC in ns (the datapath's bpf_ktime_get_ns).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `ts` (monotonic ns) on the wall clock, RFC 3339.
fn wall_time(ts: u64) -> String {
    let age = monotonic_ns().saturating_sub(ts);
    let when = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_nanos(age as i64);
    when.to_string()
}

/// The datapath's configuration for these subscribers: the union of the kinds, the smallest
/// sample, the daemon's rate.
pub fn config_for<'a>(subscribers: impl Iterator<Item = &'a MonitorRequest>, rate: u32) -> MonitorConfig {
    let mut c = MonitorConfig::default();
    let mut sample = u32::MAX;
    for s in subscribers {
        c.flags |= if s.drops { MONITOR_DROPS } else { 0 } | if s.traces { MONITOR_TRACE } else { 0 };
        sample = sample.min(s.sample.unwrap_or(1));
    }
    if c.flags != 0 {
        (c.drop_sample, c.trace_sample, c.rate) = (sample, sample, rate);
    }
    c
}

/// The subscribers and the datapath's configuration for them.
pub struct Hub {
    control: Mutex<Control>,
    events: broadcast::Sender<Arc<MonitorEvent>>,
    rate: u32,
}

/// The handle that configures the datapath, and for whom.
struct Control {
    monitor: Monitor,
    subscribers: HashMap<u64, MonitorRequest>,
    last_id: u64,
}

impl Control {
    fn reconfigure(&mut self, rate: u32) -> anyhow::Result<()> {
        Ok(self.monitor.configure(config_for(self.subscribers.values(), rate))?)
    }
}

/// A subscriber's events; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    request: MonitorRequest,
    events: broadcast::Receiver<Arc<MonitorEvent>>,
}

impl Hub {
    /// Opens the monitor's maps in `pin_dir` twice (one handle configures, the reader's reads)
    /// and starts the reader; `names` gives the current names (called at most once a second).
    pub fn start<F>(pin_dir: &std::path::Path, rate: u32, names: F) -> anyhow::Result<Arc<Hub>>
    where
        F: Fn() -> futures::future::BoxFuture<'static, Arc<Names>> + Send + 'static,
    {
        let mut control = Monitor::open(pin_dir)?;
        // A daemon that died with monitors attached left the datapath sending: nobody listens now.
        control.configure(MonitorConfig::default())?;
        let reader = Monitor::open(pin_dir)?;
        let (events, _) = broadcast::channel(4096);
        let control = Control { monitor: control, subscribers: HashMap::new(), last_id: 0 };
        let hub = Arc::new(Hub { control: Mutex::new(control), events: events.clone(), rate });
        tokio::spawn(read(reader, events, names));
        Ok(hub)
    }

    pub fn subscribe(self: &Arc<Self>, request: MonitorRequest) -> anyhow::Result<Subscription> {
        let events = self.events.subscribe();
        let id = {
            let mut c = self.control.lock().expect("not poisoned");
            c.last_id += 1;
            let id = c.last_id;
            c.subscribers.insert(id, request.clone());
            c.reconfigure(self.rate)?;
            id
        };
        Ok(Subscription { hub: self.clone(), id, request, events })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut c = self.hub.control.lock().expect("not poisoned");
        c.subscribers.remove(&self.id);
        if let Err(e) = c.reconfigure(self.hub.rate) {
            warn!(error = %e, "reconfiguring the monitor failed");
        }
    }
}

impl Subscription {
    /// Sends this subscriber's events as JSON lines into `out` until it is closed. Events a slow
    /// subscriber missed are reported as one line, `{"type":"lost","count":N}`.
    pub async fn forward(mut self, out: mpsc::Sender<String>) {
        loop {
            let line = tokio::select! {
                _ = out.closed() => return,
                e = self.events.recv() => match e {
                    Ok(e) if self.request.wants(&e) => serde_json::to_string(&*e).expect("serializable") + "\n",
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => format!("{{\"type\":\"lost\",\"count\":{n}}}\n"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if out.send(line).await.is_err() {
                return;
            }
        }
    }
}

/// The reader: waits for the ring to be readable, drains it, names and broadcasts the events.
async fn read<F>(reader: Monitor, events: broadcast::Sender<Arc<MonitorEvent>>, names: F)
where
    F: Fn() -> futures::future::BoxFuture<'static, Arc<Names>>,
{
    // SAFETY: the Monitor owns the ring's fd, open and the same until it is dropped with the
    // AsyncFd.
    let mut ring = match unsafe { tokio::io::unix::AsyncFd::register(reader) } {
        Ok(r) => r,
        Err(e) => return warn!(error = %e, "the monitor's ring buffer cannot be polled; srv6pipes monitor gets no events"),
    };
    let mut named: Option<(Instant, Arc<Names>)> = None;
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => return warn!(error = %e, "polling the monitor's ring buffer failed"),
        };
        let records: Vec<MonitorRecord> = std::iter::from_fn(|| guard.get_inner_mut().read()).take(4096).collect();
        // Not ready any more only once a read found the ring empty: the kernel wakes a reader
        // that has caught up, and an event committed since is caught by the next read.
        if records.is_empty() {
            guard.clear_ready();
            continue;
        }
        drop(guard);
        let current = match &named {
            Some((at, n)) if at.elapsed() < Duration::from_secs(1) => n.clone(),
            _ => {
                let n = names().await;
                named = Some((Instant::now(), n.clone()));
                n
            }
        };
        for r in &records {
            // No subscriber: nothing to do (the configuration is being cleared).
            let _ = events.send(Arc::new(current.event(r, wall_time(r.ts))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(drops: bool, traces: bool, sample: Option<u32>) -> MonitorRequest {
        MonitorRequest { drops, traces, chain: None, sample }
    }

    #[test]
    fn the_datapath_sends_what_any_subscriber_wants() {
        assert_eq!(config_for(std::iter::empty(), 1000), MonitorConfig::default(), "detached: nothing");
        let subs = [req(true, false, None), req(false, true, Some(64))];
        let c = config_for(subs.iter(), 1000);
        assert_eq!(c.flags, MONITOR_DROPS | MONITOR_TRACE);
        assert_eq!((c.drop_sample, c.trace_sample, c.rate), (1, 1, 1000), "the smallest sample wins");
        let c = config_for(subs[1..].iter(), 500);
        assert_eq!((c.flags, c.trace_sample, c.rate), (MONITOR_TRACE, 64, 500));
    }

    #[test]
    fn verdicts_read_as_words() {
        assert_eq!([2, 7, 0, -1, 3].map(verdict_name), ["drop".to_string(), "redirect".into(), "pass".into(), "next".into(), "3".into()]);
    }
}
