//! Data-plane scenarios: PDR of the same inner packets through plain forwarding, the
//! kernel-native static proxy and srv6pipes' End.AD / End.AS / End.AM, measured in turns
//! (repetition i of every scenario before repetition i + 1 of any), then the sweeps.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::Context;

use crate::around::{AdAge, Around, Watch};
use crate::cost::Runs;
use crate::packet::{self, Frame, Inner};
use crate::topo::{spread_dst, Bench, Kind, Lane, INNER4_DST, INNER4_SRC, INNER_DST, INNER_SRC, OUTER_SRC, SINK_SID};
use crate::traffic::Path;

pub mod sliced;
pub use sliced::{AlternatedPdr, ALTERNATED, SLICE};

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
    /// Into how many trials in turns each cost trial is cut (see `cost_round`).
    pub cost_parts: u32,
    /// The PDR scenarios to run (by key; empty: all of them).
    pub scenarios: Vec<String>,
    /// The calibration pairs after the VNF sweep ([`calibration_lanes`]: `null/N` and
    /// `trace/N` in `Results::installed_alternating`).
    pub null_lanes: bool,
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
    /// End.AD through a lane with one VNF installed, in turns with `installed` at each N: the
    /// reference `installed` is paired with (`installed/1` is minutes away from the last N).
    pub installed_one: Samples,
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
    /// By changed scenario (age 0, the drop monitor attached), round by round: the ratios of
    /// the pairs of slices that compared it with its base on one stream
    /// ([`sliced::bpf_alternating`]).
    pub bpf_alternating: BTreeMap<String, Vec<Vec<f64>>>,
    /// By changed scenario, round by round: against its base at the edge of their PDR, in
    /// streams marked by side ([`sliced::pdr_alternating`]).
    pub pdr_alternating: BTreeMap<String, Vec<AlternatedPdr>>,
    /// The same for End.AD through the last VNF installed against the lane that keeps one, at
    /// the sweep's last point (by its key, `installed/N`), the two lanes in one stream; and
    /// with `Plan::null_lanes` the calibration pairs (`null/N`, `trace/N`: [`calibration_lanes`]).
    pub installed_alternating: BTreeMap<String, Vec<AlternatedPdr>>,
    /// The same for End.AD spread over N VNFs (`sp/N`, every VNF count) against plain
    /// forwarding spread over as many VNF namespaces of its own lane: the two in one stream.
    pub spread_alternating: BTreeMap<String, Vec<AlternatedPdr>>,
    /// The same for End.AD by VNF count (at half that rate).
    pub scaling_bpf_ns: BTreeMap<String, BTreeMap<String, f64>>,
    /// The same for End.AD through the last of N installed (by N, and SIDs for the table point).
    pub installed_bpf_ns: BTreeMap<String, BTreeMap<String, f64>>,
    /// The same for the lane that keeps one VNF, in the same rounds.
    pub installed_one_bpf_ns: BTreeMap<String, BTreeMap<String, f64>>,
    /// Events each attached monitor received over its scenario's trials.
    pub monitor_events: BTreeMap<String, u64>,
    /// Trials that failed and were left out (the run went on).
    pub failures: Vec<String>,
    /// Scenarios this machine cannot run, with why (the kernel proxy on a kernel without seg6
    /// lightweight tunnels).
    pub unavailable: BTreeMap<String, String>,
    /// Wall seconds of each part, in the order they ran.
    pub seconds: Vec<(String, f64)>,
    /// The same for the VNF sweep's phases, by phase and point (`grow/N`, `turns/N`, ...; the
    /// table point's `table_program/N`, ...).
    pub vnf_seconds: Vec<(String, f64)>,
    /// PDR trials that failed by little and were run again, and how many of those passed.
    pub retries: (u64, u64),
}

impl Results {
    /// No data plane figure: this machine cannot generate traffic (`why`, under
    /// `unavailable.dataplane`).
    pub fn unavailable(why: String) -> Self {
        eprintln!("data plane: unavailable: {why}");
        Results { unavailable: BTreeMap::from([(DATAPLANE.to_string(), why)]), ..Default::default() }
    }
}

/// The key in `unavailable` of a data plane this machine cannot run at all.
pub const DATAPLANE: &str = "dataplane";

struct Scenario {
    key: String,
    path: Path,
    frame: Frame,
    dsts: Vec<Ipv6Addr>,
    /// What changes on the lane for the scenario's trials.
    around: Option<Around>,
}

impl Scenario {
    /// `frame` along `path`, to its own destination, unwatched.
    fn new(key: impl Into<String>, path: Path, frame: Frame) -> Self {
        Scenario { key: key.into(), path, frame, dsts: vec![], around: None }
    }

    /// `f` with the scenario's change to its lane made, if it has one.
    fn watched<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &self.around {
            Some(a) => a.during(f),
            None => f(),
        }
    }
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

/// `trial` tried up to three times: a cost trial that loses packets met a noisy moment (it runs
/// below the PDR). Then `what`'s last failure goes to `failures` and the run goes on without
/// that figure.
fn three_attempts<T>(what: &str, failures: &mut Vec<String>, mut trial: impl FnMut() -> anyhow::Result<T>) -> Option<T> {
    let mut last = String::new();
    for attempt in 1..=3 {
        match trial() {
            Ok(t) => return Some(t),
            Err(e) => {
                last = format!("{e:#}");
                eprintln!("  {what:<28} attempt {attempt}/3: {last}");
            }
        }
    }
    failures.push(format!("BPF cost of {what}: {last} (3 attempts)"));
    None
}

/// Run time and runs of each srv6pipes datapath program while `s` runs at `pps` for `dur`
/// without loss ([`three_attempts`]).
fn bpf_cost(b: &mut Bench, s: &Scenario, pps: f64, dur: Duration, failures: &mut Vec<String>) -> Option<Runs> {
    three_attempts(&s.key, failures, || {
        s.watched(|| crate::cost::bpf_runs(|| b.traffic.loss_free(&s.path, &s.frame, &s.dsts, pps, dur).map(drop).context(s.key.clone())))
    })
}

/// One round of BPF cost trials of `scenarios` (each at its rate): `Plan::cost_parts` short
/// trials of each, in turns; each program's figure is its median over its scenario's parts
/// ([`crate::cost::part_medians`]). The programs' level moves by up to ~100 ns a packet from
/// one trial to the next of the same code, and bursts of noise lift a part by a few hundred:
/// parts in turns (the order reversed every other part: [`crate::search::turn_order`]) give
/// both sides of a comparison the same draws, the median drops a burst. A scenario one of whose
/// parts failed is left out of the round.
fn cost_round(b: &mut Bench, scenarios: &[(&Scenario, f64)], plan: &Plan, failures: &mut Vec<String>) -> crate::cost::Round {
    let cuts = plan.cost_parts.max(1);
    let mut parts: Vec<Option<Vec<BTreeMap<String, f64>>>> = vec![Some(Vec::new()); scenarios.len()];
    for part in 0..cuts as usize {
        for i in crate::search::turn_order(scenarios.len(), part) {
            let (s, pps) = scenarios[i];
            if parts[i].is_none() {
                continue;
            }
            match bpf_cost(b, s, pps, plan.cost_trial / cuts, failures) {
                Some(runs) => parts[i].iter_mut().for_each(|d| d.push(runs.ns_per_run())),
                None => parts[i] = None,
            }
        }
    }
    let mut round = crate::cost::Round::new();
    for ((s, pps), done) in scenarios.iter().zip(parts) {
        let Some(done) = done else { continue };
        let ns = crate::cost::part_medians(&done);
        let per_packet: Vec<f64> = done.iter().map(crate::cost::packet_ns).collect();
        eprintln!(
            "  {:<28} {:?} ns/run at {:.0} kpps (per packet by part: {:.0?})",
            s.key,
            ns.iter().map(|(k, v)| format!("{k} {v:.0}")).collect::<Vec<_>>(),
            pps / 1000.0,
            per_packet
        );
        round.insert(s.key.clone(), ns);
    }
    round
}

/// Repetition i of every scenario, then i + 1; within a repetition, the scenarios' PDR searches
/// run at once with their trials in turns ([`crate::search::interleaved`]), in the order
/// [`crate::search::turn_order`] gives that repetition, each from its PDR in the previous one.
fn in_turns(b: &mut Bench, scenarios: &[Scenario], ceiling_pps: f64, plan: &Plan, out: &mut Samples) -> anyhow::Result<()> {
    for s in scenarios {
        b.traffic.check(&s.key, &s.path, &s.frame, &s.dsts)?;
    }
    for rep in 0..plan.reps {
        eprintln!(" repetition {}/{}", rep + 1, plan.reps);
        let order: Vec<&Scenario> = crate::search::turn_order(scenarios.len(), rep).into_iter().map(|i| &scenarios[i]).collect();
        let hints: Vec<Option<f64>> = order.iter().map(|s| out.get(&s.key).and_then(|v| v.last()).map(|kpps| kpps * 1000.0)).collect();
        let (pdrs, retries) = crate::search::interleaved(&hints, ceiling_pps, plan.steps, |i, pps| {
            let s = order[i];
            s.watched(|| b.traffic.trial(&s.path, &s.frame, &s.dsts, pps, plan.trial)).map(|t| (t.loss(), t.offered_pps))
        });
        b.traffic.retries = (b.traffic.retries.0 + retries.0, b.traffic.retries.1 + retries.1);
        for (s, pdr) in order.into_iter().zip(pdrs) {
            let kpps = pdr.with_context(|| s.key.clone())? / 1000.0;
            eprintln!("  {:<28} {kpps:>8.1} kpps", s.key);
            out.entry(s.key.clone()).or_default().push(kpps);
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
    let sp = pdr(b, plan, ceiling_pps, &mut res, &mut laps)?;
    // Segment list length: segments left after the proxy, 1 (the sink) and more (`Plan::seglist`).
    let seg: Vec<Scenario> = plan
        .seglist
        .iter()
        .map(|&n| Ok(Scenario::new(n.to_string(), with_expect(&sp, SINK_SID), ad_frame(&sp, 0, n - 1)?)))
        .collect::<anyhow::Result<_>>()?;
    eprintln!("segment list sweep: {:?}", plan.seglist);
    in_turns(b, &seg, ceiling_pps, plan, &mut res.seglist)?;
    res.sid_packets.insert(sp.name.clone(), b.sid_packets(&sp)?);
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
/// then their BPF cost; only those `plan.scenarios` names when it names any. Returns End.AD's
/// lane (the segment-list sweep runs on it).
fn pdr(b: &mut Bench, plan: &Plan, ceiling_pps: f64, res: &mut Results, laps: &mut crate::report::Laps) -> anyhow::Result<Lane> {
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
    // The live monitor attached against detached, on one lane (one End.AD VNF), attached for
    // a scenario's trials only: drop events (this traffic drops nothing: the cost of watching),
    // and traces of 1 packet in 64 (the daemon's rate limit on).
    let mut mon = b.lane("mon", Kind::Srv6pipes { ad_age_ms: 1000 }, cpu)?;
    b.grow(&mut mon, 1)?;
    b.program(&mon, &[], &[], 0)?;
    let watched = |b: &Bench, key: &str, traces: bool| -> anyhow::Result<Scenario> {
        let request = srv6::node_api::MonitorRequest { drops: !traces, traces, chain: None, sample: traces.then_some(64) };
        let around = Some(Around::Monitor(Box::new(Watch::new(b, &mon, request)?)));
        Ok(Scenario { around, ..Scenario::new(key, with_expect(&mon, SINK_SID), ad_frame(&mon, 0, 0)?) })
    };

    let mut main = vec![
        Scenario::new("plain", with_expect(&plain, INNER_DST), packet::plain(plain.macs, inner6())),
        Scenario::new("end_ad", with_expect(&sp, SINK_SID), ad_frame(&sp, 0, 0)?),
        // Each pair a target compares runs on one lane, side by side in the PDR turns and in
        // the cost rounds: age 0 here (End.AD's own VNF, the lane's age set to 0 for its
        // trials), the monitor's scenarios below.
        Scenario {
            around: Some(Around::AdAge(AdAge::new(b, &sp, 0))),
            ..Scenario::new("end_ad_age0", with_expect(&sp, SINK_SID), ad_frame(&sp, 0, 0)?)
        },
        Scenario::new("end_as", with_expect(&sp, SINK_SID), packet::encapsulated(sp.macs, OUTER_SRC, &[sid(&sp, 1), SINK_SID], inner6())?),
        Scenario::new("end_am", with_expect(&sp, INNER_DST), packet::inserted(sp.macs, OUTER_SRC, &[sid(&sp, 2)], INNER_DST)?),
        Scenario::new(
            "end_ad_ipv4",
            with_expect(&sp, SINK_SID),
            packet::encapsulated(sp.macs, OUTER_SRC, &[sid(&sp, 3), SINK_SID], Inner::V4 { src: INNER4_SRC, dst: INNER4_DST })?,
        ),
        Scenario::new("end_ad_monitor_none", with_expect(&mon, SINK_SID), ad_frame(&mon, 0, 0)?),
        watched(b, "end_ad_monitor_drops", false)?,
        watched(b, "end_ad_monitor_trace", true)?,
    ];
    if let Some(kernel) = &kernel {
        main.insert(
            1,
            Scenario::new(
                KERNEL_PROXY,
                with_expect(kernel, SINK_SID),
                packet::encapsulated(kernel.macs, OUTER_SRC, &[sid(kernel, 0)], inner6())?,
            ),
        );
    }
    main.retain(|s| plan.scenarios.is_empty() || plan.scenarios.contains(&s.key));
    laps.lap("dataplane_setup");
    eprintln!("data plane: {} scenarios x {} repetitions", main.len(), plan.reps);
    in_turns(b, &main, ceiling_pps, plan, &mut res.pdr)?;
    laps.lap("dataplane_pdr");
    // The changes a target prices by PDR, also with both sides in slices of the same streams.
    let find = |key: &str| main.iter().find(|s| s.key == key);
    let alternated: Vec<(&Scenario, &Scenario)> =
        ALTERNATED.iter().filter_map(|(base, changed)| Some((find(base)?, find(changed)?))).collect();
    sliced::pdr_rounds(b, &alternated, &res.pdr, plan, plan.reps, &mut res.pdr_alternating, &mut res.failures);
    laps.lap("dataplane_pdr_alternating");
    pdr_cost_rounds(b, &main, &alternated, plan, res);
    for s in &main {
        if let Some(Around::Monitor(w)) = &s.around {
            res.monitor_events.insert(s.key.trim_start_matches("end_ad_monitor_").into(), w.events.get());
        }
    }
    laps.lap("dataplane_bpf_cost");
    Ok(sp)
}

/// The BPF run time of `main`'s scenarios but plain forwarding and the kernel proxy, in rounds
/// in turns like the PDRs (a slow moment of the machine shows in one round of every scenario,
/// not in one scenario's only figure); each round also the `alternated` pairs in slices of one
/// stream. Failures are recorded in `res`, and the run goes on.
fn pdr_cost_rounds(b: &mut Bench, main: &[Scenario], alternated: &[(&Scenario, &Scenario)], plan: &Plan, res: &mut Results) {
    eprintln!("BPF run time per program at {:.0} kpps, {} rounds in turns", plan.cost_pps / 1000.0, plan.reps);
    let costed: Vec<(&Scenario, f64)> =
        main.iter().filter(|s| s.key != "plain" && s.key != KERNEL_PROXY).map(|s| (s, plan.cost_pps)).collect();
    // Each round, the two changes a target prices by BPF time also in slices of one stream.
    for _ in 0..plan.reps {
        res.bpf_rounds.push(cost_round(b, &costed, plan, &mut res.failures));
        for (base, changed) in alternated {
            if let Some(ratios) = sliced::bpf_alternating(b, base, changed, plan, &mut res.failures) {
                let s = crate::stats::summarize(&ratios);
                eprintln!(
                    "  {:<28} ÷ {} in {} pairs of slices: median {:.3} ({:.3}–{:.3})",
                    base.key,
                    changed.key,
                    ratios.len(),
                    s.median,
                    s.min,
                    s.max
                );
                res.bpf_alternating.entry(changed.key.clone()).or_default().push(ratios);
            }
        }
    }
    res.bpf_ns = crate::cost::medians(&res.bpf_rounds);
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
        Scenario::new("srv6pipes", with_expect(&sp[0], SINK_SID), packet::encapsulated(sp[0].macs, OUTER_SRC, &segments, inner6())?),
        Scenario::new(
            "plain",
            with_expect(&plain[0], spread_dst(1)),
            packet::plain(plain[0].macs, Inner::V6 { src: INNER_SRC, dst: spread_dst(1) }),
        ),
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

/// Rounds of End.AD ÷ plain spread over N in one stream before the last N: a point takes ~14 s
/// a round, and the full run has 50 minutes. At one VNF in the first such run, five rounds read
/// 1.388-1.413, against 0.78-1.36 by separate trials in the run before.
pub(crate) const SPREAD_ROUNDS: usize = 3;

/// VNF count, one growing set of N VNFs per lane, measured side by side in turns at each N:
/// srv6pipes End.AD spread over all N (`sp/N`: `vnf_scaling`, also `vnf_spread.end_ad`); plain
/// forwarding spread over N VNF namespaces by destination (`plain/N`: `vnf_spread.plain`); the
/// kernel proxy spread over N (`kernel/N`, an `ip rule` per VNF); and End.AD through the last
/// VNF installed alone (`installed/N`: the seed paper's measure, what N idle VNFs cost one),
/// paired with End.AD through a lane that keeps one VNF (`one/N`), measured in the same turns.
/// At every N, End.AD and plain spread over N again in one stream at the edge of their PDR;
/// after the last point, the last installed and the one-VNF lane so ([`installed_edge`]).
fn vnf_sweep(b: &mut Bench, plan: &Plan, ceiling_pps: f64, res: &mut Results) -> anyhow::Result<()> {
    let mut laps = crate::report::Laps::start();
    let cpu = plan.sut_cpu;
    let mut lanes = SweepLanes {
        scale: b.lane("scale", Kind::Srv6pipes { ad_age_ms: 1000 }, cpu)?,
        kscale: if res.unavailable.contains_key(KERNEL_PROXY) { None } else { Some(b.lane("kscale", Kind::Kernel, cpu)?) },
        pscale: b.lane("pscale", Kind::PlainSpread, cpu)?,
        one: one_vnf_lane(b, "one", cpu)?,
    };
    laps.lap("lanes");
    for &n in &plan.vnf_counts {
        vnf_count(b, plan, ceiling_pps, &mut lanes, n, res, &mut laps)?;
    }
    let SweepLanes { scale, one, .. } = &lanes;
    if plan.table_sids > 0 {
        let extra = plan.table_sids.saturating_sub(scale.vnfs.len() as u16);
        eprintln!("VNF sweep: {} VNFs and {} SIDs installed", scale.vnfs.len(), plan.table_sids);
        b.program(scale, &[], &[], extra)?;
        let key = plan.table_sids.to_string();
        laps.lap(&format!("table_program/{key}"));
        let points = vec![spread(scale, &key)?, installed(scale, &key)?, reference(one, &key)?];
        let mut s = Samples::new();
        in_turns(b, &points, ceiling_pps, plan, &mut s)?;
        laps.lap(&format!("table_turns/{key}"));
        installed_cost(b, &points[1], &points[2], &s, plan, res);
        laps.lap(&format!("table_cost/{key}"));
        let mut take = |prefix: &str| s.remove(&format!("{prefix}/{key}")).unwrap_or_default();
        res.scaling.insert(key.clone(), take("sp"));
        res.installed.insert(key.clone(), take("installed"));
        res.installed_one.insert(key.clone(), take("one"));
    }
    // The sweep's last point: the table point's, or the last VNF count's.
    let last = if plan.table_sids > 0 { Some(plan.table_sids) } else { plan.vnf_counts.last().copied() };
    if let Some(key) = last.map(|n| n.to_string()) {
        let (last, reference) = (installed(scale, &key)?, reference(one, &key)?);
        let turns = |s: &Samples, of: &Scenario| (of.key.clone(), s.get(&key).cloned().unwrap_or_default());
        let pdr = Samples::from([turns(&res.installed, &last), turns(&res.installed_one, &reference)]);
        installed_edge(b, &last, &reference, &pdr, plan, res);
        laps.lap(&format!("edge/{key}"));
    }
    res.sid_packets.insert(scale.name.clone(), b.sid_packets(scale)?);
    res.sid_packets.insert(one.name.clone(), b.sid_packets(one)?);
    res.vnf_seconds = laps.laps;
    Ok(())
}

/// The VNF sweep's lanes: End.AD over N VNFs, the kernel proxy over N (where it runs), plain
/// forwarding spread over N, and the lane that keeps one VNF.
struct SweepLanes {
    scale: Lane,
    kscale: Option<Lane>,
    pscale: Lane,
    one: Lane,
}

/// End.AD spread over every SID of `scale` (`sp/{key}`).
fn spread(scale: &Lane, key: &str) -> anyhow::Result<Scenario> {
    let dsts = scale.vnfs.iter().map(|v| v.sid.expect("sid")).collect();
    Ok(Scenario { dsts, ..Scenario::new(format!("sp/{key}"), with_expect(scale, SINK_SID), ad_frame(scale, 0, 0)?) })
}

/// End.AD through the last VNF installed on `scale`, alone (`installed/{key}`).
fn installed(scale: &Lane, key: &str) -> anyhow::Result<Scenario> {
    let last = scale.vnfs.len() - 1;
    Ok(Scenario::new(format!("installed/{key}"), with_expect(scale, SINK_SID), ad_frame(scale, last, 0)?))
}

/// End.AD through the lane that keeps one VNF (`one/{key}`).
fn reference(one: &Lane, key: &str) -> anyhow::Result<Scenario> {
    Ok(Scenario::new(format!("one/{key}"), with_expect(one, SINK_SID), ad_frame(one, 0, 0)?))
}

/// One VNF count of the sweep: the lanes grown to `n`, its points in turns, End.AD and plain
/// spread over `n` in one stream, then the BPF costs; each phase a lap (`vnf_part_seconds`).
fn vnf_count(
    b: &mut Bench,
    plan: &Plan,
    ceiling_pps: f64,
    lanes: &mut SweepLanes,
    n: u16,
    res: &mut Results,
    laps: &mut crate::report::Laps,
) -> anyhow::Result<()> {
    eprintln!("VNF sweep: {n} VNFs");
    let SweepLanes { scale, kscale, pscale, one } = lanes;
    b.grow(scale, n)?;
    b.program(scale, &[], &[], 0)?;
    if let Some(kscale) = kscale.as_mut() {
        b.grow(kscale, n)?;
    }
    b.grow(pscale, n)?;
    let key = n.to_string();
    laps.lap(&format!("grow/{key}"));
    let mut points = vec![
        spread(scale, &key)?,
        Scenario {
            dsts: (1..=n).map(spread_dst).collect(),
            ..Scenario::new(
                format!("plain/{n}"),
                Path { expect: Some(INNER_DST), expect_bytes: 8, ..pscale.path.clone() },
                packet::plain(pscale.macs, Inner::V6 { src: INNER_SRC, dst: spread_dst(1) }),
            )
        },
        installed(scale, &key)?,
        reference(one, &key)?,
    ];
    if let Some(kscale) = kscale.as_ref() {
        points.push(Scenario {
            dsts: kscale.vnfs.iter().map(|v| v.sid.expect("sid")).collect(),
            ..Scenario::new(
                format!("kernel/{n}"),
                with_expect(kscale, SINK_SID),
                packet::encapsulated(kscale.macs, OUTER_SRC, &[sid(kscale, 0)], inner6())?,
            )
        });
    }
    // Every packet plain forwarding delivers went into a VNF (a missing route bypasses them).
    check_through(b, &points[1], |b| Ok(vec![b.vnf_tx_packets(pscale)?]))?;
    let mut s = Samples::new();
    in_turns(b, &points, ceiling_pps, plan, &mut s)?;
    laps.lap(&format!("turns/{key}"));
    // End.AD against plain, both spread over N, in one stream: PDRs of separate trials
    // swing with the host more than the two differ (at 1,000 VNF namespaces; at one, a
    // repetition of five read 0.78 where the others read 1.2-1.4). Before the last N in
    // fewer rounds ([`SPREAD_ROUNDS`]).
    let rounds = if plan.vnf_counts.last() == Some(&n) { plan.reps } else { plan.reps.min(SPREAD_ROUNDS) };
    sliced::pdr_rounds(b, &[(&points[1], &points[0])], &s, plan, rounds, &mut res.spread_alternating, &mut res.failures);
    laps.lap(&format!("stream/{key}"));
    let pps = sweep_cost_pps(plan, &s[&points[0].key]);
    if let Some(ns) = cost_round(b, &[(&points[0], pps)], plan, &mut res.failures).remove(&points[0].key) {
        res.scaling_bpf_ns.insert(key.clone(), ns);
    }
    installed_cost(b, &points[2], &points[3], &s, plan, res);
    laps.lap(&format!("cost/{key}"));
    let mut take = |prefix: &str| s.remove(&format!("{prefix}/{key}")).unwrap_or_default();
    res.scaling.insert(key.clone(), take("sp"));
    res.plain_spread.insert(key.clone(), take("plain"));
    if kscale.is_some() {
        res.kernel_scaling.insert(key.clone(), take("kernel"));
    }
    res.installed.insert(key.clone(), take("installed"));
    res.installed_one.insert(key.clone(), take("one"));
    Ok(())
}

/// A srv6pipes lane with one End.AD VNF.
fn one_vnf_lane(b: &mut Bench, name: &str, cpu: usize) -> anyhow::Result<Lane> {
    let mut lane = b.lane(name, Kind::Srv6pipes { ad_age_ms: 1000 }, cpu)?;
    b.grow(&mut lane, 1)?;
    b.program(&lane, &[], &[], 0)?;
    Ok(lane)
}

/// The sweep's last pair again (End.AD through the last installed, through the lane with one
/// VNF, their PDRs in the turns in `pdr` by key), both lanes in one stream at the edge of their
/// PDR: the PDRs of lanes measured minutes apart swing with the host more than by what N
/// costs. With `Plan::null_lanes`, the calibration pairs too ([`calibration_lanes`]); if they
/// cannot be set up, that goes to the failures and the pair runs alone.
fn installed_edge(b: &mut Bench, installed: &Scenario, one: &Scenario, pdr: &Samples, plan: &Plan, res: &mut Results) {
    let calibration = if plan.null_lanes { calibration_lanes(b, one, plan.sut_cpu) } else { Ok(vec![]) };
    let calibration = calibration.unwrap_or_else(|e| {
        res.failures.push(format!("the calibration lanes: {e:#}"));
        vec![]
    });
    let mut pairs = vec![(one, installed)];
    pairs.extend(calibration.iter().map(|c| (one, c)));
    sliced::pdr_rounds(b, &pairs, pdr, plan, plan.reps, &mut res.installed_alternating, &mut res.failures);
}

/// What calibrates the two-lane measure against `one`: End.AD through a second lane with one
/// VNF (`null/N`: a null change), and through it with the trace monitor attached for the whole
/// stream (`trace/N`: a known cost, 1 packet in 64 traced, ~205 ns of BPF time a packet more).
fn calibration_lanes(b: &mut Bench, one: &Scenario, cpu: usize) -> anyhow::Result<Vec<Scenario>> {
    let lane = one_vnf_lane(b, "null", cpu)?;
    let n = one.key.trim_start_matches("one/");
    let through =
        |key: String| -> anyhow::Result<Scenario> { Ok(Scenario::new(key, with_expect(&lane, SINK_SID), ad_frame(&lane, 0, 0)?)) };
    let null = through(format!("null/{n}"))?;
    b.traffic.check(&null.key, &null.path, &null.frame, &null.dsts)?;
    let request = srv6::node_api::MonitorRequest { drops: false, traces: true, chain: None, sample: Some(64) };
    let around = Some(Around::Monitor(Box::new(Watch::new(b, &lane, request)?)));
    Ok(vec![null, Scenario { around, ..through(format!("trace/{n}"))? }])
}

/// The BPF cost of End.AD through the last VNF installed (`point`, measured into `s`) and
/// through the lane that keeps one VNF (`one`), in the same round's turns, at the spread
/// points' rate: the second figure of `vnf_installed` (does one VNF's packet cost more with N
/// installed?), stable where PDRs are not.
fn installed_cost(b: &mut Bench, point: &Scenario, one: &Scenario, s: &Samples, plan: &Plan, res: &mut Results) {
    let pps = sweep_cost_pps(plan, &s[&point.key]);
    let mut round = cost_round(b, &[(point, pps), (one, pps)], plan, &mut res.failures);
    let n = point.key.trim_start_matches("installed/").to_string();
    if let Some(ns) = round.remove(&point.key) {
        res.installed_bpf_ns.insert(n.clone(), ns);
    }
    if let Some(ns) = round.remove(&one.key) {
        res.installed_one_bpf_ns.insert(n, ns);
    }
}

/// The VNF sweep's BPF cost rate: half the PDR scenarios' cost rate, or half the point's median
/// PDR (`pdr_kpps`, in kpps) when that is lower: spread over 1,000 VNFs, End.AD forwards
/// 110-210 kpps here and plain forwarding 90-160.
fn sweep_cost_pps(plan: &Plan, pdr_kpps: &[f64]) -> f64 {
    (plan.cost_pps / 2.0).min(crate::stats::median(pdr_kpps) * 1000.0 / 2.0)
}

fn topo_macs() -> packet::Macs {
    // The ceiling path's sink takes any frame; the MACs only need to be unicast.
    packet::Macs { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2] }
}
