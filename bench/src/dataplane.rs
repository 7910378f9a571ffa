//! Data-plane scenarios: PDR of the same inner packets through plain forwarding, the
//! kernel-native static proxy and srv6pipes' End.AD / End.AS / End.AM, measured in turns
//! (repetition i of every scenario before repetition i + 1 of any), then the sweeps.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::Context;

use crate::packet::{self, Frame, Inner};
use crate::topo::{spread_dst, Bench, Kind, Lane, INNER4_DST, INNER4_SRC, INNER_DST, INNER_SRC, OUTER_SRC, SINK_SID};
use crate::traffic::{Path, Search};

#[derive(Clone, Debug)]
pub struct Plan {
    pub reps: usize,
    pub trial: Duration,
    pub steps: u32,
    pub sut_cpu: usize,
    pub vnf_counts: Vec<u16>,
    /// SIDs installed for the table-size point of the sweep (0: skip it).
    pub table_sids: u16,
    pub seglist: Vec<usize>,
    /// The fixed rate (pps) of the BPF cost trials, below every scenario's PDR, and their length.
    pub cost_pps: f64,
    pub cost_trial: Duration,
    /// The PDR scenarios to run (by key; empty: all of them).
    pub scenarios: Vec<String>,
}

/// The kernel-native static proxy's scenario (seg6local End.DX6 in, seg6 encapsulation back).
pub const KERNEL_PROXY: &str = "kernel_static_proxy";

/// kpps per repetition, by scenario key.
pub type Samples = BTreeMap<String, Vec<f64>>;

#[derive(Default)]
pub struct Results {
    pub ceiling_kpps: Vec<f64>,
    pub pdr: Samples,
    pub scaling: Samples,
    pub kernel_scaling: Samples,
    /// Plain forwarding spread over N VNF namespaces, by N.
    pub plain_spread: Samples,
    /// End.AD through the last of N VNFs installed, by N (and by SIDs for the table point).
    pub installed: Samples,
    /// The three-function chain over three nodes: "srv6pipes" and "plain".
    pub chain3: Samples,
    pub seglist: Samples,
    /// Packets srv6pipes' SIDs counted per lane over the whole run (proof of the path taken).
    pub sid_packets: BTreeMap<String, u64>,
    /// ns per run of each srv6pipes program at `Plan::cost_pps`, by scenario, then program:
    /// the median over `bpf_rounds`.
    pub bpf_ns: BTreeMap<String, BTreeMap<String, f64>>,
    /// The same, round by round (every scenario once per round, `Plan::reps` rounds in turns).
    pub bpf_rounds: Vec<crate::cost::Round>,
    /// The same for End.AD by VNF count (at half that rate).
    pub scaling_bpf_ns: BTreeMap<String, BTreeMap<String, f64>>,
    /// The same for End.AD through the last of N installed (by N, and SIDs for the table point).
    pub installed_bpf_ns: BTreeMap<String, BTreeMap<String, f64>>,
    /// Events each attached monitor received over its scenario's trials.
    pub monitor_events: BTreeMap<String, u64>,
    /// Trials that failed and were left out (the run went on).
    pub failures: Vec<String>,
    /// Scenarios this machine cannot run, with why (the kernel proxy on a kernel without seg6
    /// lightweight tunnels).
    pub unavailable: BTreeMap<String, String>,
    /// Wall seconds of each part, in the order they ran.
    pub seconds: Vec<(String, f64)>,
    /// PDR trials that failed by little and were run again, and how many of those passed.
    pub retries: (u64, u64),
}

/// A `srv6pipes monitor` attached to a lane's node daemon (its socket), draining the events as
/// the CLI does; detached (the socket shut) when dropped, returning the events it counted.
struct Subscriber {
    socket: std::os::unix::net::UnixStream,
    reader: std::thread::JoinHandle<u64>,
}

impl Subscriber {
    fn attach(lane: &Lane, request: srv6::node_api::MonitorRequest) -> anyhow::Result<Self> {
        use std::io::{BufRead, Write};
        let path = lane.socket.as_ref().context("not an srv6pipes lane")?;
        let mut socket = std::os::unix::net::UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        writeln!(socket, "{}", serde_json::to_string(&srv6::node_api::Request::Monitor(request))?)?;
        let mut r = std::io::BufReader::new(socket.try_clone()?);
        let mut first = String::new();
        r.read_line(&mut first)?;
        anyhow::ensure!(first.contains("\"ok\""), "{}: monitor refused: {first}", lane.name);
        let reader = std::thread::spawn(move || r.lines().map_while(Result::ok).count() as u64);
        Ok(Subscriber { socket, reader })
    }

    fn detach(self) -> u64 {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.reader.join().unwrap_or(0)
    }
}

struct Scenario {
    key: String,
    path: Path,
    frame: Frame,
    dsts: Vec<Ipv6Addr>,
}

fn inner6() -> Inner {
    Inner::V6 { src: INNER_SRC, dst: INNER_DST }
}

fn sid(lane: &Lane, j: usize) -> Ipv6Addr {
    lane.vnfs[j].sid.expect("proxy SID")
}

fn with_expect(lane: &Lane, expect: Ipv6Addr) -> Path {
    Path { expect: Some(expect), ..lane.path.clone() }
}

fn ad_frame(lane: &Lane, j: usize, extra: usize) -> anyhow::Result<Frame> {
    let mut path = vec![sid(lane, j), SINK_SID];
    path.extend((1..=extra as u16).map(|i| Ipv6Addr::new(0xfcbb, 0xbb00, 0xff, 0, 0, 0, 0, i)));
    packet::encapsulated(lane.macs, OUTER_SRC, &path, inner6())
}

/// ns per run of each srv6pipes datapath program while `s` runs at `pps` without loss. A cost
/// trial that loses packets (a noisy moment: it runs below the PDR) is tried again, up to three
/// times; then its failure goes to `failures` and the run goes on without that figure.
fn bpf_cost(b: &mut Bench, s: &Scenario, pps: f64, plan: &Plan, failures: &mut Vec<String>) -> Option<BTreeMap<String, f64>> {
    let mut last = String::new();
    for attempt in 1..=3 {
        let ns = crate::cost::bpf_ns_per_run(|| {
            let t = b.traffic.trial(&s.path, &s.frame, &s.dsts, pps, plan.cost_trial)?;
            if t.loss() > crate::traffic::LOSS_BOUND {
                anyhow::bail!(
                    "{}: {:.1} % loss at {:.0} kpps in the cost trial (it must be below the PDR)",
                    s.key,
                    t.loss() * 100.0,
                    pps / 1000.0
                );
            }
            Ok(())
        });
        match ns {
            Ok(ns) => {
                eprintln!(
                    "  {:<28} {:?} ns/run at {:.0} kpps",
                    s.key,
                    ns.iter().map(|(k, v)| format!("{k} {v:.0}")).collect::<Vec<_>>(),
                    pps / 1000.0
                );
                return Some(ns);
            }
            Err(e) => {
                last = format!("{e:#}");
                eprintln!("  {:<28} attempt {attempt}/3: {last}", s.key);
            }
        }
    }
    failures.push(format!("BPF cost of {}: {last} (3 attempts)", s.key));
    None
}

/// `s`'s PDR in kpps; `last`: its PDR in the previous repetition, where the search starts.
fn measure(b: &mut Bench, s: &Scenario, ceiling_pps: f64, plan: &Plan, last: Option<f64>) -> anyhow::Result<f64> {
    let search = Search { steps: plan.steps, trial: plan.trial };
    let hint = last.map(|kpps| kpps * 1000.0);
    let pps = b.traffic.pdr(&s.path, &s.frame, &s.dsts, ceiling_pps, hint, search).with_context(|| s.key.clone())?;
    eprintln!("  {:<28} {:>8.1} kpps", s.key, pps / 1000.0);
    Ok(pps / 1000.0)
}

/// Repetition i of every scenario, then i + 1.
fn in_turns(b: &mut Bench, scenarios: &[Scenario], ceiling_pps: f64, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    for s in scenarios {
        b.traffic.check(&s.key, &s.path, &s.frame, &s.dsts)?;
    }
    for rep in 0..plan.reps {
        eprintln!(" repetition {}/{}", rep + 1, plan.reps);
        for s in scenarios {
            let last = out.get(&s.key).and_then(|v| v.last().copied());
            let v = measure(b, s, ceiling_pps, plan, last)?;
            out.entry(s.key.clone()).or_default().push(v);
        }
    }
    Ok(())
}

/// The generator's ceiling (and the results it starts), and what this machine cannot run.
fn start(b: &mut Bench, plan: &Plan) -> anyhow::Result<(Results, f64)> {
    let mut res = Results { ceiling_kpps: ceiling(b, plan)?, ..Default::default() };
    if let Some(why) = b.kernel_seg6_missing() {
        eprintln!("data plane: no kernel static proxy here: {why}");
        res.unavailable.insert(KERNEL_PROXY.into(), why);
    }
    let ceiling_pps = crate::stats::median(&res.ceiling_kpps) * 1000.0;
    Ok((res, ceiling_pps))
}

pub fn run(b: &mut Bench, plan: &Plan) -> anyhow::Result<Results> {
    let mut laps = crate::report::Laps::start();
    let (mut res, ceiling_pps) = start(b, plan)?;
    let (sp, age0) = pdr(b, plan, ceiling_pps, &mut res, &mut laps)?;
    // Segment list length: segments left after the proxy, 1 (the sink) and more (`Plan::seglist`).
    let seg: Vec<Scenario> = plan
        .seglist
        .iter()
        .map(|&n| Ok(Scenario { key: n.to_string(), path: with_expect(&sp, SINK_SID), frame: ad_frame(&sp, 0, n - 1)?, dsts: vec![] }))
        .collect::<anyhow::Result<_>>()?;
    eprintln!("segment list sweep: {:?}", plan.seglist);
    in_turns(b, &seg, ceiling_pps, plan, &mut res.seglist)?;
    for l in [&sp, &age0] {
        res.sid_packets.insert(l.name.clone(), b.sid_packets(l)?);
    }
    laps.lap("seglist");
    chain3(b, plan, ceiling_pps, &mut res)?;
    laps.lap("chain3");
    vnf_sweep(b, plan, ceiling_pps, &mut res)?;
    laps.lap("vnfs");
    res.seconds = laps.laps;
    res.retries = b.traffic.retries;
    Ok(res)
}

/// The PDR scenarios, (a)-(e), IPv4 inner, age 0 vs 1 s and the monitor, side by side in turns,
/// then their BPF cost; only those `plan.scenarios` names when it names any. Returns the
/// lanes of End.AD with age 1 s and 0 (the segment-list sweep runs on the first).
fn pdr(b: &mut Bench, plan: &Plan, ceiling_pps: f64, res: &mut Results, laps: &mut crate::report::Laps) -> anyhow::Result<(Lane, Lane)> {
    let cpu = plan.sut_cpu;
    let mut plain = b.lane("plain", Kind::Plain, cpu)?;
    b.grow(&mut plain, 1)?;
    let kernel = if res.unavailable.contains_key(KERNEL_PROXY) {
        None
    } else {
        let mut kernel = b.lane("kernel", Kind::Kernel, cpu)?;
        b.grow(&mut kernel, 1)?;
        Some(kernel)
    };
    let mut sp = b.lane("sp", Kind::Srv6pipes { ad_age_ms: 1000 }, cpu)?;
    b.grow(&mut sp, 4)?;
    // VNF 1: End.AD (IPv6 inner), 2: End.AS, 3: End.AM, 4: End.AD with IPv4 inner.
    b.program(&sp, &[2], &[3], 0)?;
    let mut age0 = b.lane("age0", Kind::Srv6pipes { ad_age_ms: 0 }, cpu)?;
    b.grow(&mut age0, 1)?;
    b.program(&age0, &[], &[], 0)?;
    // The live monitor attached against detached: drop events (this traffic drops nothing: the
    // cost of watching), and traces of 1 packet in 64 (the daemon's rate limit on).
    // Three lanes alike (one End.AD VNF each), so that only the monitor differs.
    let one_vnf = |b: &mut Bench, name: &str| -> anyhow::Result<Lane> {
        let mut lane = b.lane(name, Kind::Srv6pipes { ad_age_ms: 1000 }, cpu)?;
        b.grow(&mut lane, 1)?;
        b.program(&lane, &[], &[], 0)?;
        Ok(lane)
    };
    let mon_none = one_vnf(b, "mon0")?;
    let (mon_drops, mon_trace) = (one_vnf(b, "mond")?, one_vnf(b, "mont")?);
    let watch = |traces: bool| srv6::node_api::MonitorRequest { drops: !traces, traces, chain: None, sample: traces.then_some(64) };
    let (drops_sub, trace_sub) = (Subscriber::attach(&mon_drops, watch(false))?, Subscriber::attach(&mon_trace, watch(true))?);

    let mut main = vec![
        Scenario { key: "plain".into(), path: with_expect(&plain, INNER_DST), frame: packet::plain(plain.macs, inner6()), dsts: vec![] },
        Scenario { key: "end_ad".into(), path: with_expect(&sp, SINK_SID), frame: ad_frame(&sp, 0, 0)?, dsts: vec![] },
        // Each pair a target compares runs side by side, in the PDR turns and in the cost rounds
        // (age 0 and age 1 s here, the monitor's lanes below): the machine's slow moments last
        // seconds, and move both sides of a pair when they are neighbours.
        Scenario { key: "end_ad_age0".into(), path: with_expect(&age0, SINK_SID), frame: ad_frame(&age0, 0, 0)?, dsts: vec![] },
        Scenario {
            key: "end_as".into(),
            path: with_expect(&sp, SINK_SID),
            frame: packet::encapsulated(sp.macs, OUTER_SRC, &[sid(&sp, 1), SINK_SID], inner6())?,
            dsts: vec![],
        },
        Scenario {
            key: "end_am".into(),
            path: with_expect(&sp, INNER_DST),
            frame: packet::inserted(sp.macs, OUTER_SRC, &[sid(&sp, 2)], INNER_DST)?,
            dsts: vec![],
        },
        Scenario {
            key: "end_ad_ipv4".into(),
            path: with_expect(&sp, SINK_SID),
            frame: packet::encapsulated(sp.macs, OUTER_SRC, &[sid(&sp, 3), SINK_SID], Inner::V4 { src: INNER4_SRC, dst: INNER4_DST })?,
            dsts: vec![],
        },
        Scenario {
            key: "end_ad_monitor_none".into(),
            path: with_expect(&mon_none, SINK_SID),
            frame: ad_frame(&mon_none, 0, 0)?,
            dsts: vec![],
        },
        Scenario {
            key: "end_ad_monitor_drops".into(),
            path: with_expect(&mon_drops, SINK_SID),
            frame: ad_frame(&mon_drops, 0, 0)?,
            dsts: vec![],
        },
        Scenario {
            key: "end_ad_monitor_trace".into(),
            path: with_expect(&mon_trace, SINK_SID),
            frame: ad_frame(&mon_trace, 0, 0)?,
            dsts: vec![],
        },
    ];
    if let Some(kernel) = &kernel {
        main.insert(
            1,
            Scenario {
                key: KERNEL_PROXY.into(),
                path: with_expect(kernel, SINK_SID),
                frame: packet::encapsulated(kernel.macs, OUTER_SRC, &[sid(kernel, 0)], inner6())?,
                dsts: vec![],
            },
        );
    }
    main.retain(|s| plan.scenarios.is_empty() || plan.scenarios.contains(&s.key));
    laps.lap("dataplane_setup");
    eprintln!("data plane: {} scenarios x {} repetitions", main.len(), plan.reps);
    in_turns(b, &main, ceiling_pps, plan, &mut res.pdr)?;
    laps.lap("dataplane_pdr");
    // In turns like the PDRs, so that a slow moment of the machine shows in one round of every
    // scenario rather than in one scenario's only figure.
    eprintln!("BPF run time per program at {:.0} kpps, {} rounds in turns", plan.cost_pps / 1000.0, plan.reps);
    for _ in 0..plan.reps {
        let mut round = crate::cost::Round::new();
        for s in main.iter().filter(|s| s.key != "plain" && s.key != KERNEL_PROXY) {
            if let Some(ns) = bpf_cost(b, s, plan.cost_pps, plan, &mut res.failures) {
                round.insert(s.key.clone(), ns);
            }
        }
        res.bpf_rounds.push(round);
    }
    res.bpf_ns = crate::cost::medians(&res.bpf_rounds);
    res.monitor_events.insert("drops".into(), drops_sub.detach());
    res.monitor_events.insert("trace".into(), trace_sub.detach());
    laps.lap("dataplane_bpf_cost");
    Ok((sp, age0))
}

/// Proof of the path taken: in a loss-free check trial of `s`, every counter `count` returns
/// (packets one hop of the path handled) grows by at least what the sink counted.
fn check_through(b: &mut Bench, s: &Scenario, count: impl Fn(&Bench) -> anyhow::Result<Vec<u64>>) -> anyhow::Result<()> {
    let (before, sink) = (count(b)?, b.traffic.delivered(&s.path)?);
    b.traffic.check(&s.key, &s.path, &s.frame, &s.dsts)?;
    let into_sink = b.traffic.delivered(&s.path)? - sink;
    for (hop, (after, before)) in count(b)?.into_iter().zip(before).enumerate() {
        anyhow::ensure!(
            after - before >= into_sink,
            "{}: the sink got {into_sink} packets, hop {} only {}: a route bypasses it",
            s.key,
            hop + 1,
            after - before
        );
    }
    Ok(())
}

/// A three-function chain over three nodes, End.AD on each (pop, the VNF, push, then a remote
/// hop to the next node's SID), against plain forwarding of the same inner packets through a
/// line of three nodes with a VNF each, routed by destination: `chain3_kpps.{srv6pipes,plain}`.
fn chain3(b: &mut Bench, plan: &Plan, ceiling_pps: f64, res: &mut Results) -> anyhow::Result<()> {
    let mut sp = b.line("c3sp", Kind::Srv6pipes { ad_age_ms: 1000 }, plan.sut_cpu, 3)?;
    let mut plain = b.line("c3plain", Kind::PlainSpread, plan.sut_cpu, 3)?;
    for lane in sp.iter_mut().chain(plain.iter_mut()) {
        b.grow(lane, 1)?;
    }
    for lane in &sp {
        b.program(lane, &[], &[], 0)?;
    }
    let segments: Vec<Ipv6Addr> = sp.iter().map(|l| sid(l, 0)).chain([SINK_SID]).collect();
    let points = vec![
        Scenario {
            key: "srv6pipes".into(),
            path: with_expect(&sp[0], SINK_SID),
            frame: packet::encapsulated(sp[0].macs, OUTER_SRC, &segments, inner6())?,
            dsts: vec![],
        },
        Scenario {
            key: "plain".into(),
            path: with_expect(&plain[0], spread_dst(1)),
            frame: packet::plain(plain[0].macs, Inner::V6 { src: INNER_SRC, dst: spread_dst(1) }),
            dsts: vec![],
        },
    ];
    eprintln!("three-function chain over three nodes: srv6pipes and plain");
    check_through(b, &points[0], |b| sp.iter().map(|l| b.sid_packets(l)).collect())?;
    check_through(b, &points[1], |b| plain.iter().map(|l| b.vnf_tx_packets(l)).collect())?;
    in_turns(b, &points, ceiling_pps, plan, &mut res.chain3)
}

/// The generator's ceiling (kpps per repetition): straight into the sink, as fast as it goes.
fn ceiling(b: &mut Bench, plan: &Plan) -> anyhow::Result<Vec<f64>> {
    let path = b.ceiling_path()?;
    let probe = packet::plain(topo_macs(), inner6());
    let mut kpps = Vec::new();
    for _ in 0..plan.reps.max(3) {
        let t = b.traffic.trial(&path, &probe, &[], 0.0, Duration::from_millis(500))?;
        kpps.push(t.received as f64 / t.sent.max(1) as f64 * t.offered_pps / 1000.0);
    }
    eprintln!("generator ceiling: {:.0} kpps", crate::stats::median(&kpps));
    Ok(kpps)
}

/// Which parts of the data plane `run_parts` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parts {
    pub pdr: bool,
    pub chain3: bool,
    pub vnfs: bool,
}

/// Parts of the data plane alone (`--only pdr,vnfs,chain3`), with the generator's ceiling they
/// need.
pub fn run_parts(b: &mut Bench, plan: &Plan, parts: Parts) -> anyhow::Result<Results> {
    let mut laps = crate::report::Laps::start();
    let (mut res, ceiling_pps) = start(b, plan)?;
    if parts.pdr {
        pdr(b, plan, ceiling_pps, &mut res, &mut laps)?;
    }
    if parts.chain3 {
        self::chain3(b, plan, ceiling_pps, &mut res)?;
        laps.lap("chain3");
    }
    if parts.vnfs {
        vnf_sweep(b, plan, ceiling_pps, &mut res)?;
        laps.lap("vnfs");
    }
    res.seconds = laps.laps;
    res.retries = b.traffic.retries;
    Ok(res)
}

/// VNF count, one growing set of N VNFs per lane, measured side by side in turns at each N:
/// srv6pipes End.AD spread over all N (`sp/N`: `vnf_scaling`, also `vnf_spread.end_ad`); plain
/// forwarding spread over N VNF namespaces by destination (`plain/N`: `vnf_spread.plain`); the
/// kernel proxy spread over N (`kernel/N`, an `ip rule` per VNF); and End.AD through the last
/// VNF installed alone (`installed/N`: the seed paper's measure, what N idle VNFs cost one).
fn vnf_sweep(b: &mut Bench, plan: &Plan, ceiling_pps: f64, res: &mut Results) -> anyhow::Result<()> {
    let cpu = plan.sut_cpu;
    let mut scale = b.lane("scale", Kind::Srv6pipes { ad_age_ms: 1000 }, cpu)?;
    let mut kscale = if res.unavailable.contains_key(KERNEL_PROXY) { None } else { Some(b.lane("kscale", Kind::Kernel, cpu)?) };
    let mut pscale = b.lane("pscale", Kind::PlainSpread, cpu)?;
    let sids = |lane: &Lane| -> Vec<Ipv6Addr> { lane.vnfs.iter().map(|v| v.sid.expect("sid")).collect() };
    // End.AD spread over every SID, and through the last VNF installed alone.
    let spread = |scale: &Lane, key: &str| -> anyhow::Result<Scenario> {
        Ok(Scenario { key: format!("sp/{key}"), path: with_expect(scale, SINK_SID), frame: ad_frame(scale, 0, 0)?, dsts: sids(scale) })
    };
    let installed = |scale: &Lane, key: &str| -> anyhow::Result<Scenario> {
        let last = scale.vnfs.len() - 1;
        Ok(Scenario { key: format!("installed/{key}"), path: with_expect(scale, SINK_SID), frame: ad_frame(scale, last, 0)?, dsts: vec![] })
    };
    for &n in &plan.vnf_counts {
        eprintln!("VNF sweep: {n} VNFs");
        b.grow(&mut scale, n)?;
        b.program(&scale, &[], &[], 0)?;
        if let Some(kscale) = kscale.as_mut() {
            b.grow(kscale, n)?;
        }
        b.grow(&mut pscale, n)?;
        let key = n.to_string();
        let mut points = vec![
            spread(&scale, &key)?,
            Scenario {
                key: format!("plain/{n}"),
                path: Path { expect: Some(INNER_DST), expect_bytes: 8, ..pscale.path.clone() },
                frame: packet::plain(pscale.macs, Inner::V6 { src: INNER_SRC, dst: spread_dst(1) }),
                dsts: (1..=n).map(spread_dst).collect(),
            },
            installed(&scale, &key)?,
        ];
        if let Some(kscale) = &kscale {
            points.push(Scenario {
                key: format!("kernel/{n}"),
                path: with_expect(kscale, SINK_SID),
                frame: packet::encapsulated(kscale.macs, OUTER_SRC, &[sid(kscale, 0)], inner6())?,
                dsts: sids(kscale),
            });
        }
        // Every packet plain forwarding delivers went into a VNF (a missing route bypasses them).
        check_through(b, &points[1], |b| Ok(vec![b.vnf_tx_packets(&pscale)?]))?;
        let mut s = Samples::new();
        in_turns(b, &points, ceiling_pps, plan, &mut s)?;
        // Below this point's PDR (1,000 VNFs forward ~50 kpps here, spread or plain).
        let pps = (plan.cost_pps / 2.0).min(crate::stats::median(&s[&points[0].key]) * 1000.0 / 2.0);
        if let Some(ns) = bpf_cost(b, &points[0], pps, plan, &mut res.failures) {
            res.scaling_bpf_ns.insert(n.to_string(), ns);
        }
        installed_cost(b, &points[2], &s, plan, res);
        let mut take = |prefix: &str| s.remove(&format!("{prefix}/{key}")).unwrap_or_default();
        res.scaling.insert(key.clone(), take("sp"));
        res.plain_spread.insert(key.clone(), take("plain"));
        if kscale.is_some() {
            res.kernel_scaling.insert(key.clone(), take("kernel"));
        }
        res.installed.insert(key.clone(), take("installed"));
    }
    if plan.table_sids > 0 {
        let extra = plan.table_sids.saturating_sub(scale.vnfs.len() as u16);
        eprintln!("VNF sweep: {} VNFs and {} SIDs installed", scale.vnfs.len(), plan.table_sids);
        b.program(&scale, &[], &[], extra)?;
        let key = plan.table_sids.to_string();
        let points = vec![spread(&scale, &key)?, installed(&scale, &key)?];
        let mut s = Samples::new();
        in_turns(b, &points, ceiling_pps, plan, &mut s)?;
        installed_cost(b, &points[1], &s, plan, res);
        let mut take = |prefix: &str| s.remove(&format!("{prefix}/{key}")).unwrap_or_default();
        res.scaling.insert(key.clone(), take("sp"));
        res.installed.insert(key.clone(), take("installed"));
    }
    res.sid_packets.insert(scale.name.clone(), b.sid_packets(&scale)?);
    Ok(())
}

/// The BPF cost of End.AD through the last VNF installed (`point`, measured into `s`), at the
/// spread points' rate: the second figure of `vnf_installed` (does one VNF's packet cost more
/// with N installed?), stable where PDRs are not.
fn installed_cost(b: &mut Bench, point: &Scenario, s: &Samples, plan: &Plan, res: &mut Results) {
    let pps = (plan.cost_pps / 2.0).min(crate::stats::median(&s[&point.key]) * 1000.0 / 2.0);
    if let Some(ns) = bpf_cost(b, point, pps, plan, &mut res.failures) {
        let n = point.key.trim_start_matches("installed/").to_string();
        res.installed_bpf_ns.insert(n, ns);
    }
}

fn topo_macs() -> packet::Macs {
    // The ceiling path's sink takes any frame; the MACs only need to be unicast.
    packet::Macs { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2] }
}
