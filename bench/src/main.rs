//! srv6pipes-bench: every benchmark in one run on one machine, side by side. See
//! docs/performance.md for what is measured and how; `bench/run` builds and runs it.

mod alternate;
mod around;
mod control;
mod cost;
mod dataplane;
mod footprint;
mod noise;
mod packet;
mod report;
mod search;
mod sim;
mod stats;
mod stream;
mod sweep;
mod sys;
mod topo;
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dataplane::KERNEL_PROXY;

/// Measures srv6pipes against plain IPv6 forwarding and the kernel-native static proxy (PDR at
/// 0.5 % loss, XDP live-frames generator), sweeps VNF count, SID table size, End.AD learning
/// and segment list length, TCP goodput through a chain, CNI ADD latency against Debian's ptp
/// and chain apply -> steered latency; writes <out>/<date>.json, latest.json, latest.md and
/// latest.png. Needs root; builds its own network namespaces and removes them.
#[derive(Parser, Debug)]
#[command(name = "srv6pipes-bench", version)]
struct Args {
    /// Smoke run (under 3 minutes): 2 repetitions of short trials, small sweeps. Its numbers
    /// prove the benchmark works, not how fast anything is.
    #[arg(long)]
    quick: bool,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Repetitions per scenario (default: 5, or 2 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// CPU the generator runs on.
    #[arg(long, default_value_t = 1)]
    gen_cpu: usize,
    /// CPU the system under test (node, VNFs, sink) runs on, by RPS.
    #[arg(long, default_value_t = 0)]
    sut_cpu: usize,
    /// Run only these parts (comma-separated; in the full run's order, the data plane's first)
    /// and print their JSON; writes no files. For working on them without the whole run's 45
    /// minutes.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// With `--only pdr`: only these PDR scenarios (comma-separated keys: plain,
    /// kernel_static_proxy, end_ad, end_as, end_am, end_ad_ipv4, end_ad_age0,
    /// end_ad_monitor_none, end_ad_monitor_drops, end_ad_monitor_trace), e.g. to profile one.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// In the VNF sweep (`--only vnfs` or a full run): after its last point, a second lane with
    /// one VNF against the first, both in one stream at the PDR's edge as the last installed
    /// is, to calibrate that measure: as it is (a null change, `vnf_installed_alternating."null/N"`)
    /// and with the trace monitor attached (a known cost, `"trace/N"`); ~3 minutes more.
    #[arg(long)]
    null_lanes: bool,
    /// Nodes of the scale simulation (`--only sim`).
    #[arg(long, default_value_t = 1000)]
    sim_nodes: usize,
    /// ServiceChains of the scale simulation.
    #[arg(long, default_value_t = 100_000)]
    sim_chains: usize,
    /// Replicas of each function in the scale simulation (each node has 10 VNF pods).
    #[arg(long, default_value_t = 2)]
    sim_replicas: usize,
    /// Chains created and deleted one at a time after the scale simulation converged (each a
    /// sample of created -> Ready, writes and CPU per change).
    #[arg(long, default_value_t = 20)]
    sim_samples: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The PDR scenarios (plain, kernel proxy, End.AD/AS/AM, age 0, IPv4, monitor) and their
    /// BPF cost, in turns (see --scenario).
    Pdr,
    /// CNI ADD latency, srv6pipes-cni, ptp and bridge.
    Cni,
    /// Chain applied -> first steered packet, with many chains present.
    Chains,
    /// TCP goodput through a two-VNF chain and unchained.
    Tcp,
    /// SRv6 pipes: HTTP through stream proxies vs a router VNF, lossy links, functions, memory.
    Stream,
    /// The data plane's VNF-count sweep: End.AD spread and through the last installed, plain
    /// forwarding and the kernel proxy spread, side by side (a third of a full run).
    Vnfs,
    /// Three functions over three nodes, srv6pipes End.AD against plain forwarding.
    Chain3,
    /// The operator at cluster scale on a real API server, no daemons (not in full runs:
    /// 1,000 nodes and 100,000 chains by default, see --sim-nodes; docs/performance.md).
    Sim,
    /// The operator's memory by stage at the scale simulation's size, without an API server
    /// (not in full runs; sized by --sim-nodes, --sim-chains and --sim-replicas).
    Footprint,
    /// The host's noise: a pointer chase in L1 and one through 4 MiB (the L3 shared with the
    /// VM's neighbours) in turns on the SUT CPU for 60 s, before anything else runs. A full
    /// run samples it for 15 s at its start and at its end (`host_noise`).
    Noise,
}

/// The control-plane parts' results; each is run when asked for.
#[derive(Default)]
struct Control {
    cni: Option<control::CniSamples>,
    background_chains: usize,
    chains: Option<control::ChainApply>,
    /// What one change costs the operator, by background chains present.
    change: std::collections::BTreeMap<String, control::ChangeCost>,
    /// Chain applied -> steered with 10,000 chains present (full runs).
    chains_10k: Option<control::ChainApply>,
    /// Why the 10,000-chain part did not complete (the run goes on without it).
    scale_failure: Option<String>,
    tcp: Option<control::Tcp>,
    stream: Option<serde_json::Value>,
    sim: Option<serde_json::Value>,
    footprint: Option<serde_json::Value>,
    /// Wall seconds of each part, in the order they ran.
    seconds: Vec<(String, f64)>,
}

fn run_control(b: &mut topo::Bench, args: &Args, parts: &[Part]) -> anyhow::Result<Control> {
    let mut c = Control::default();
    let mut laps = report::Laps::start();
    if parts.contains(&Part::Cni) {
        // ptp waits ~1.8 s for DAD on every ADD: it takes 30 of them (`control::cni_add`).
        let n = if args.quick { 20 } else { 100 };
        eprintln!("CNI ADD: {n} x srv6pipes-cni, ptp and bridge");
        c.cni = Some(control::cni_add(b, n, args.sut_cpu)?);
        laps.lap("cni");
    }
    if parts.contains(&Part::Chains) || parts.contains(&Part::Tcp) {
        let (background, samples, reps, secs) = if args.quick { (100, 5, 2, 2) } else { (1000, 50, args.reps.unwrap_or(5), 5) };
        let changes = if args.quick { 2 } else { 10 };
        let mut k = control::KubeLab::up(b, 100)?;
        if parts.contains(&Part::Chains) {
            eprintln!("control cost: {changes} chains created and deleted with 100 chains present");
            c.change.insert("100".into(), control::change_cost(&k, changes)?);
        }
        k.grow(background)?;
        c.background_chains = background;
        if parts.contains(&Part::Chains) {
            eprintln!("chain apply: {samples} samples with {background} chains present");
            c.chains = Some(control::chain_apply(&k, samples)?);
        }
        laps.lap("chains");
        if parts.contains(&Part::Tcp) {
            eprintln!("TCP: {reps} x {secs} s iperf3, chained and unchained");
            c.tcp = Some(control::tcp(&k, reps, secs, (args.gen_cpu, args.sut_cpu))?);
            laps.lap("tcp");
        }
        // 10,000 chains on n1 (4-7 minutes to create and program): a failure is recorded and
        // the run goes on.
        if !args.quick && parts.contains(&Part::Chains) {
            // Fewer samples than at 1,000 chains: this is the run's longest part already.
            let (changes, samples) = (3, 10);
            let scale = (|| {
                k.grow(10_000)?;
                eprintln!("control cost and chain apply: {changes} changes, {samples} samples with 10,000 chains present");
                anyhow::Ok((control::change_cost(&k, changes)?, control::chain_apply(&k, samples)?))
            })();
            match scale {
                Ok((cost, apply)) => {
                    c.change.insert("10000".into(), cost);
                    c.chains_10k = Some(apply);
                }
                Err(e) => {
                    eprintln!("10,000 chains: {e:#}; recorded, going on");
                    c.scale_failure = Some(format!("{e:#}"));
                }
            }
            laps.lap("chains_10k");
        }
    }
    if parts.contains(&Part::Stream) {
        let plan = if args.quick {
            stream::Plan { reps: 2, secs: 1, lossy_secs: 3, idle: 1000, fn_mib: 4 }
        } else {
            stream::Plan { reps: args.reps.unwrap_or(5), secs: 5, lossy_secs: 5, idle: 10_000, fn_mib: 64 }
        };
        eprintln!(
            "SRv6 pipes: {} x wrk through proxies and a router VNF, lossy links, functions, {} idle connections",
            plan.reps, plan.idle
        );
        c.stream = Some(stream::run(b, &plan));
        laps.lap("stream");
    }
    if parts.contains(&Part::Sim) {
        let size = sim::Size {
            nodes: args.sim_nodes,
            vnfs: 10,
            sources: 50,
            replicas: args.sim_replicas,
            chains: args.sim_chains,
            samples: args.sim_samples,
        };
        c.sim = Some(sim::run(b, &size)?);
        laps.lap("sim");
    }
    if parts.contains(&Part::Footprint) {
        let size =
            sim::Size { nodes: args.sim_nodes, vnfs: 10, sources: 50, replicas: args.sim_replicas, chains: args.sim_chains, samples: 0 };
        c.footprint = Some(footprint::run(&size)?);
        laps.lap("footprint");
    }
    c.seconds = laps.laps;
    Ok(c)
}

/// srv6pipes' programs in one more TCP run of each path, statistics on: the run's goodput, the
/// programs' share of a CPU's time, their ns per Mbit received, and each one's ns per run and
/// runs per Mbit (how large the packets it saw were).
fn tcp_bpf(t: &control::Tcp) -> serde_json::Value {
    let paths = t.bpf.iter().map(|(path, (mbps, runs))| {
        let mbit = mbps * f64::from(t.secs);
        let total: u64 = runs.totals().values().map(|(ns, _)| ns).sum();
        let runs_per_mbit: serde_json::Map<String, serde_json::Value> =
            runs.totals().iter().map(|(p, (_, n))| (p.clone(), serde_json::json!(*n as f64 / mbit))).collect();
        let v = serde_json::json!({
            "mbps": mbps,
            "cpu_share": total as f64 / (f64::from(t.secs) * 1e9),
            "ns_per_mbit": total as f64 / mbit,
            "ns_per_run": runs.ns_per_run(),
            "runs_per_mbit": runs_per_mbit,
        });
        (path.clone(), v)
    });
    serde_json::Value::Object(paths.collect())
}

/// The control-plane parts' JSON fields (null where a part did not run).
fn control_json(c: &Control) -> serde_json::Map<String, serde_json::Value> {
    use report::latency;
    let per_change = |f: fn(&control::ChangeCost) -> f64| -> serde_json::Map<String, serde_json::Value> {
        c.change.iter().map(|(k, x)| (k.clone(), serde_json::json!(f(x)))).collect()
    };
    let tcp = c.tcp.as_ref().map(|t| {
        serde_json::json!({
            "chained_mbps": stats::median(&t.chained_mbps),
            "unchained_mbps": stats::median(&t.unchained_mbps),
            "ratio": stats::ratios(&t.chained_mbps, &t.unchained_mbps),
            "detail": {"chained": stats::summarize(&t.chained_mbps), "unchained": stats::summarize(&t.unchained_mbps)},
            "sid_packets": {"n1": t.sid_packets[0], "n2": t.sid_packets[1]},
            "bpf": tcp_bpf(t),
            "how": "iperf3 -6 from a pod through a chain of two VNFs (End.AD, one per node) to a pod on the other node, alternating with a pod on the same node whose traffic no chain selects; goodput received; iperf3 -A: the client on the generator CPU, the server on the SUT CPU; bpf: one more run of each path with kernel.bpf_stats_enabled, srv6pipes' programs' run time and runs in it",
        })
    });
    let json = serde_json::json!({
        "cni_add_ms": c.cni.as_ref().map(|s| latency(&s.srv6pipes_ms)),
        "cni_del_ms": c.cni.as_ref().map(|s| latency(&s.srv6pipes_del_ms)),
        "cni_add_steps_ms": c.cni.as_ref().map(|s| s.steps_ms.iter().map(|(k, v)| (k.clone(), serde_json::json!({"p50": stats::percentile(v, 50.0), "p99": stats::percentile(v, 99.0)}))).collect::<serde_json::Map<_, _>>()),
        "ptp_add_ms": c.cni.as_ref().map(|s| latency(&s.ptp_ms)),
        "bridge_add_ms": c.cni.as_ref().map(|s| latency(&s.bridge_ms)),
        "host_local_add_ms": c.cni.as_ref().map(|s| latency(&s.ipam_ms)),
        "cni_add_during_program_ms": c.cni.as_ref().map(|s| latency(&s.during_program_ms)),
        "program_10k_sids_ms": c.cni.as_ref().map(|s| latency(&s.program_ms)),
        "chain_apply_ms": c.chains.as_ref().map(|s| latency(&s.ms)),
        "chain_apply_kubectl_ms": c.chains.as_ref().map(|s| latency(&s.kubectl_ms)),
        "chain_apply_background_chains": c.chains.as_ref().map(|_| c.background_chains),
        "chain_apply_10k_ms": c.chains_10k.as_ref().map(|s| latency(&s.ms)),
        "control_writes_per_change": per_change(|x| stats::median(&x.writes)),
        "control_cpu_ms_per_change": per_change(|x| stats::median(&x.cpu_ms)),
        "control_change_detail": c.change.iter().map(|(k, x)| (k.clone(), serde_json::json!({
            "writes": stats::summarize(&x.writes), "cpu_ms": stats::summarize(&x.cpu_ms),
        }))).collect::<serde_json::Map<_, _>>(),
        "control_change_how": "per change (a chain created, Ready; or deleted, gone from n1), with N chains present: the writes the API server served of what only the operator writes (program slices, chain status and finalizer, Events, Node patches; apiserver_request_total) and the operator's CPU time (/proc/PID/task/*/schedstat), until it wrote nothing for 2 s",
        "scale_failure": c.scale_failure,
        "tcp_goodput_mbps": tcp,
        "stream": c.stream,
        "scale_sim": c.sim,
        "operator_footprint": c.footprint,
    });
    json.as_object().cloned().unwrap_or_default()
}

/// What the data plane measures: a smoke run's or a full run's.
fn dataplane_plan(args: &Args) -> dataplane::Plan {
    if args.quick {
        dataplane::Plan {
            reps: args.reps.unwrap_or(2),
            trial: Duration::from_millis(150),
            steps: 6,
            sut_cpu: args.sut_cpu,
            vnf_counts: vec![1, 10],
            table_sids: 0,
            seglist: vec![1, 6],
            cost_pps: 100_000.0,
            cost_trial: Duration::from_millis(500),
            cost_parts: 2,
            scenarios: args.scenario.clone(),
            null_lanes: args.null_lanes,
        }
    } else {
        dataplane::Plan {
            reps: args.reps.unwrap_or(5),
            trial: Duration::from_millis(500),
            steps: 8,
            sut_cpu: args.sut_cpu,
            vnf_counts: vec![1, 10, 100, 1000],
            table_sids: 10_000,
            // 3 and 5 add nothing the line through 1, 2, 4 and 6 does not show (and ~1 minute).
            seglist: vec![1, 2, 4, 6],
            cost_pps: 100_000.0,
            cost_trial: Duration::from_secs(2),
            cost_parts: 4,
            scenarios: args.scenario.clone(),
            null_lanes: args.null_lanes,
        }
    }
}

/// Each costed PDR scenario's time per packet in srv6pipes' programs, round by round.
fn bpf_per_packet(dp: &dataplane::Results) -> serde_json::Value {
    let per: std::collections::BTreeMap<String, Vec<f64>> =
        dp.bpf_ns.keys().map(|s| (s.clone(), cost::per_packet(&dp.bpf_rounds, s))).filter(|(_, v)| !v.is_empty()).collect();
    report::details(&per)
}

/// The changes priced in slices of one stream (`bpf_alternating`): each round's pairs, the
/// figure over the rounds, and beside it the same ratio from the cost rounds' separate trials.
fn bpf_alternating_json(dp: &dataplane::Results) -> serde_json::Value {
    let by_changed: serde_json::Map<String, serde_json::Value> = dataplane::ALTERNATED
        .iter()
        .filter_map(|(base, changed)| {
            let rounds = dp.bpf_alternating.get(*changed)?;
            Some((
                changed.to_string(),
                serde_json::json!({
                    "base": base,
                    "ratio": alternate::over_rounds(rounds),
                    "rounds": rounds.iter().filter(|r| !r.is_empty()).map(|r| stats::summarize(r)).collect::<Vec<_>>(),
                    "ratio_by_separate_trials": cost::cost_ratios(&dp.bpf_rounds, changed, base),
                }),
            ))
        })
        .collect();
    serde_json::Value::Object(by_changed)
}

/// The changes priced at the edge of the PDR in marked slices (`pdr_alternating`): each
/// round's streams (their rates, their ratios), the figure over the rounds (each round's
/// median), and beside it the ratio of the separate trials' PDRs in the turns.
fn pdr_alternating_json(dp: &dataplane::Results) -> serde_json::Value {
    let by_changed: serde_json::Map<String, serde_json::Value> = dataplane::ALTERNATED
        .iter()
        .filter_map(|(base, changed)| {
            let rounds = dp.pdr_alternating.get(*changed)?;
            let separate = stats::ratios(dp.pdr.get(*changed)?, dp.pdr.get(*base)?);
            Some((changed.to_string(), edge_json(base, rounds, Some(separate))))
        })
        .collect();
    serde_json::Value::Object(by_changed)
}

/// One pair at the edge of the PDR in marked slices: its base, the figure over the rounds,
/// each round's streams (their rates, their ratios), and the separate trials' ratio beside.
fn edge_json(base: &str, rounds: &[dataplane::sliced::AlternatedPdr], separate: Option<stats::Summary>) -> serde_json::Value {
    serde_json::json!({
        "base": base,
        "ratio": edge_ratio(rounds),
        "rounds": rounds.iter().map(|r| serde_json::json!({"kpps": stats::summarize(&r.rates_kpps), "ratios": stats::summarize(&r.ratios)})).collect::<Vec<_>>(),
        "ratio_by_separate_trials": separate,
    })
}

/// A pair's ratio at the edge of the PDR in marked slices: each round's median, their spread
/// over the rounds.
fn edge_ratio(rounds: &[dataplane::sliced::AlternatedPdr]) -> Option<stats::Summary> {
    let ratios: Vec<Vec<f64>> = rounds.iter().map(|r| r.ratios.clone()).collect();
    alternate::over_rounds(&ratios)
}

/// How `pdr_alternating` measures, from its constants.
fn pdr_alternating_method(plan: &dataplane::Plan) -> String {
    use dataplane::sliced::*;
    format!(
        "after the PDR turns, each round: streams of the base's traffic on its lane, {:.1} s each, the first at {OVERLOAD}x the higher of the two sides' last PDRs in the turns (the base's alone where only it has one: the calibration pairs; later rounds: the last round's rates); the generator marks each frame's side in its last four payload bytes (checksum kept) and the sink counts by mark; the first {} ms of a stream count for neither side, then slices of {} ms a side in the order base, changed, changed, base, ... (every other stream from the changed side), each between two {} ms guards whose frames count for neither side (the change made before and unmade after them; the marks set from the generator's CPU; for a pair of lanes, vnf_installed_alternating and vnf_spread_alternating, the change is the lane: the generator redirects the changed side's slices, guards included, to the other lane's veth, and each lane's sink counts its side's marks); a stream in which each side lost at least {}% and both together under {}% overloaded both, and gives the changed side's share delivered / the base side's under the same overload (a per-packet cost lowers it as it lowers a PDR: a null change reads 1, the trace monitor's cost what its BPF time predicts, docs/performance.md); after one that did not, the next offers 5% more or less; {EDGE_STREAMS} such streams a round (at most {MAX_STREAMS} run), the round's median, the target's spread over the rounds",
        plan.trial.as_secs_f64() * f64::from(STREAM_TRIALS),
        WARM_UP.as_millis(),
        MARK_SLICE.as_millis(),
        MARK_GUARD.as_millis(),
        OVERLOADED_FROM * 100.0,
        OVERLOADED_UP_TO * 100.0,
    )
}

/// `changed` ÷ its base at the edge of the PDR in marked slices ([`edge_ratio`]).
fn pdr_alternating_ratio(dp: &dataplane::Results, changed: &str) -> Option<stats::Summary> {
    edge_ratio(dp.pdr_alternating.get(changed)?)
}

/// End.AD through the last installed against the lane that keeps one VNF, both lanes in one
/// stream at the edge of their PDR, by the sweep's last point (N); with `--null-lanes`, the
/// calibration pairs too (`null/N`, `trace/N`).
fn installed_alternating_json(dp: &dataplane::Results) -> serde_json::Map<String, serde_json::Value> {
    dp.installed_alternating
        .iter()
        .map(|(key, rounds)| {
            let (kind, n) = key.split_once('/').unwrap_or(("", key));
            let separate =
                dp.installed.get(n).zip(dp.installed_one.get(n)).map(|(v, one)| stats::ratios(v, one)).filter(|_| kind == "installed");
            let name = if kind == "installed" { n.to_string() } else { key.clone() };
            (name, edge_json(&format!("one/{n}"), rounds, separate))
        })
        .collect()
}

/// End.AD against plain forwarding, both spread over N, in one stream at the edge of their
/// PDR, by N.
fn spread_alternating_json(dp: &dataplane::Results) -> serde_json::Map<String, serde_json::Value> {
    dp.spread_alternating
        .iter()
        .map(|(key, rounds)| {
            let n = key.trim_start_matches("sp/");
            let separate = dp.scaling.get(n).zip(dp.plain_spread.get(n)).map(|(end_ad, plain)| stats::ratios(end_ad, plain));
            (n.to_string(), edge_json(&format!("plain/{n}"), rounds, separate))
        })
        .collect()
}

/// The VNF-count sweep's JSON fields: End.AD through the last of N installed, End.AD and plain
/// forwarding spread over N, the kernel proxy spread over N.
fn vnf_json(dp: &dataplane::Results) -> serde_json::Map<String, serde_json::Value> {
    use report::{details, medians};
    let spread = |f: &dyn Fn(&[f64], &[f64]) -> serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
        dp.plain_spread.iter().filter_map(|(n, plain)| dp.scaling.get(n).map(|end_ad| (n.clone(), f(plain, end_ad)))).collect()
    };
    let plain_1 = dp.plain_spread.get("1").cloned().unwrap_or_default();
    let json = serde_json::json!({
        "vnf_installed_kpps": medians(&dp.installed),
        "vnf_installed_detail": details(&dp.installed),
        "vnf_installed_one_kpps": medians(&dp.installed_one),
        "vnf_installed_one_detail": details(&dp.installed_one),
        "vnf_installed_alternating": installed_alternating_json(dp),
        "vnf_spread_alternating": spread_alternating_json(dp),
        "vnf_installed_paired": dp.installed.iter().filter_map(|(n, v)| dp.installed_one.get(n).map(|one| (n.clone(), serde_json::json!(stats::ratios(v, one))))).collect::<serde_json::Map<_, _>>(),
        "vnf_spread_kpps": spread(&|plain, end_ad| serde_json::json!({"plain": stats::median(plain), "end_ad": stats::median(end_ad)})),
        "vnf_spread_detail": spread(&|plain, end_ad| serde_json::json!({
            "plain": stats::summarize(plain), "end_ad": stats::summarize(end_ad), "end_ad/plain": stats::ratios(end_ad, plain),
        })),
        "vnf_spread_plain_scaling": dp.plain_spread.iter().map(|(n, v)| (n.clone(), serde_json::json!(stats::ratios(v, &plain_1)))).collect::<serde_json::Map<_, _>>(),
        "vnf_scaling_kpps": medians(&dp.scaling),
        "vnf_scaling_detail": details(&dp.scaling),
        "kernel_vnf_scaling_kpps": medians(&dp.kernel_scaling),
        "kernel_vnf_scaling_detail": details(&dp.kernel_scaling),
        "bpf_ns_per_run_by_vnfs": dp.scaling_bpf_ns,
        "bpf_ns_per_run_installed": dp.installed_bpf_ns,
        "bpf_ns_per_run_installed_one": dp.installed_one_bpf_ns,
        "vnf_spread_method": format!("at each N, in turns: End.AD with the outer destination spread over the N VNFs' SIDs (also vnf_scaling_kpps), plain IPv6 forwarding with the destination spread over N /128 routes, one per VNF namespace (one `ip rule iif eth0` for every N; the way back by the main table), End.AD through the last VNF installed alone (vnf_installed_kpps; its last point: with the SID table filled to that many SIDs), and End.AD through a second lane that keeps one VNF installed (vnf_installed_one_kpps), the reference vnf_installed_paired divides by, repetition by repetition; after the last point, that pair again at the edge of their PDR in marked slices (vnf_installed_alternating: pdr_alternating_method, the slices of the changed side, the last installed, sent to its own lane, the base's to the lane with one VNF); at every VNF count, End.AD spread over N against plain spread over N the same way, in {} rounds before the last count and as many as the repetitions at it (vnf_spread_alternating: the changed side's slices, End.AD's, to its lane with the outer destination spread over the SIDs, the base's to the plain lane with the destination spread over the N routes; each lane's frames of their own length), which vnf_spread's target at that N takes", dataplane::SPREAD_ROUNDS),
    });
    json.as_object().cloned().unwrap_or_default()
}

/// Targets of the VNF-count sweep: the last installed flat in N (against one VNF installed,
/// measured in the same turns), End.AD at least plain forwarding spread over the same N VNFs, at
/// every N.
fn vnf_targets(dp: &dataplane::Results) -> Vec<report::Target> {
    let largest = |s: &dataplane::Samples| s.keys().filter_map(|k| k.parse::<u64>().ok()).max().unwrap_or(1).to_string();
    let mut targets = Vec::new();
    let max_installed = largest(&dp.installed);
    let what = format!("through the last of {max_installed} installed ÷ one VNF installed");
    // Both lanes in one stream at the edge of their PDR; by their PDRs in turns when that did
    // not run.
    let (what, value) = match dp.installed_alternating.get(&format!("installed/{max_installed}")).and_then(|r| edge_ratio(r)) {
        Some(v) => (format!("{what}, by PDR: frames delivered at its edge, both lanes in alternating slices"), v),
        None => {
            let of = |s: &dataplane::Samples| s.get(&max_installed).cloned().unwrap_or_default();
            (format!("{what}, in turns"), stats::ratios(&of(&dp.installed), &of(&dp.installed_one)))
        }
    };
    targets.push(report::Target { name: "vnf_installed_flat".into(), what, bound: 0.97, at_least: true, value });
    let mut counts: Vec<&String> = dp.plain_spread.keys().collect();
    counts.sort_by_key(|k| k.parse::<u64>().unwrap_or(u64::MAX));
    for n in counts {
        let Some(end_ad) = dp.scaling.get(n) else { continue };
        let what = format!("End.AD ÷ plain, spread over {n} VNFs");
        // In one stream at the edge of their PDR where that ran (every N), else (it failed) by
        // their PDRs in turns.
        let (what, value) = match dp.spread_alternating.get(&format!("sp/{n}")).and_then(|r| edge_ratio(r)) {
            Some(v) => (format!("{what}, by PDR: frames delivered at its edge, both lanes in alternating slices"), v),
            None => (what, stats::ratios(end_ad, &dp.plain_spread[n])),
        };
        targets.push(report::Target { name: format!("vnf_spread_{n}"), what, bound: 0.97, at_least: true, value });
    }
    targets
}

fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("srv6pipes-bench needs root (network namespaces, BPF, XDP)");
    }
    let bin_dir = std::env::current_exe()?.parent().context("bin dir")?.to_path_buf();
    sweep::stale(&bin_dir);
    sweep::on_signals(sweep::own_tag(), bin_dir)?;
    if !args.scenario.is_empty() && !args.only.contains(&Part::Pdr) {
        anyhow::bail!("--scenario picks PDR scenarios: it needs --only pdr (a full run measures them all)");
    }
    let plan = dataplane_plan(&args);
    if !args.only.is_empty() {
        let host_noise = if args.only.contains(&Part::Noise) { Some(noise::host(args.sut_cpu, Duration::from_secs(60))) } else { None };
        let mut b = topo::Bench::new(args.gen_cpu)?;
        // In the full run's order: the data plane first, then the control parts.
        let parts = dataplane::Parts {
            pdr: args.only.contains(&Part::Pdr),
            chain3: args.only.contains(&Part::Chain3),
            vnfs: args.only.contains(&Part::Vnfs),
        };
        let dp = if parts.pdr || parts.chain3 || parts.vnfs { Some(dataplane::run_parts(&mut b, &plan, parts)?) } else { None };
        let teardown = if dp.is_some() { Some(b.drop_lanes()?) } else { None };
        let mut c = run_control(&mut b, &args, &args.only)?;
        if let Some(s) = teardown {
            c.seconds.insert(0, ("dataplane_teardown".into(), s));
        }
        let mut json = control_json(&c);
        if let Some(n) = host_noise {
            json.insert("host_noise".into(), n);
        }
        if let Some(dp) = &dp {
            if parts.pdr {
                json.insert("pdr_kpps".into(), report::medians(&dp.pdr));
                json.insert("pdr_detail".into(), report::details(&dp.pdr));
                json.insert("bpf_ns_per_run".into(), serde_json::json!(dp.bpf_ns));
                json.insert("bpf_ns_per_packet".into(), bpf_per_packet(dp));
                json.insert("bpf_alternating".into(), bpf_alternating_json(dp));
                json.insert("pdr_alternating".into(), pdr_alternating_json(dp));
            }
            if parts.pdr || parts.vnfs {
                json.insert("pdr_alternating_method".into(), pdr_alternating_method(&plan).into());
            }
            if parts.vnfs {
                json.extend(vnf_json(dp));
            }
            if parts.chain3 {
                json.insert("chain3_kpps".into(), report::medians(&dp.chain3));
                json.insert("chain3_detail".into(), report::details(&dp.chain3));
            }
            json.insert("dataplane_failures".into(), serde_json::json!(dp.failures));
            json.insert("trials_retried".into(), serde_json::json!({"retried": dp.retries.0, "rescued": dp.retries.1}));
            json.insert("unavailable".into(), serde_json::json!(dp.unavailable));
        }
        let dp_seconds = dp.iter().flat_map(|dp| dp.seconds.iter());
        json.insert("part_seconds".into(), report::seconds(&dp_seconds.chain(&c.seconds).cloned().collect::<Vec<_>>()));
        println!("{}", serde_json::to_string_pretty(&json)?);
        if let Some(st) = &c.stream {
            let mut md = String::new();
            report::stream_tables(&mut md, st);
            eprintln!("{md}");
        }
        return Ok(());
    }
    let noise_secs = Duration::from_secs(if args.quick { 2 } else { 15 });
    let noise_start = noise::host(args.sut_cpu, noise_secs);
    let mut b = topo::Bench::new(args.gen_cpu)?;
    let dp = match dataplane::run(&mut b, &plan) {
        Ok(dp) => dp,
        Err(e) => {
            if std::env::var_os("BENCH_KEEP").is_some() {
                eprintln!("{e:#}\nBENCH_KEEP: keeping netns {}-* for 10 minutes", b.tag);
                std::thread::sleep(Duration::from_secs(600));
            }
            return Err(e);
        }
    };
    let teardown = b.drop_lanes()?;
    let mut c = run_control(&mut b, &args, &[Part::Cni, Part::Chains, Part::Tcp, Part::Stream])?;
    c.seconds.insert(0, ("dataplane_teardown".into(), teardown));
    b.cleanup.run();
    let host_noise = serde_json::json!({"start": noise_start, "end": noise::host(args.sut_cpu, noise_secs)});
    write(&args, &plan, &dp, &c, host_noise, started)
}

/// The parts' wall seconds, `bench/run`'s dependencies and release build first (it passes them in
/// `SRV6PIPES_BENCH_BUILD_SECONDS`), and the whole run's minutes.
fn run_time(dp: &dataplane::Results, c: &Control, started: std::time::Instant) -> (Vec<(String, f64)>, f64) {
    let build = std::env::var("SRV6PIPES_BENCH_BUILD_SECONDS").ok().and_then(|s| s.parse::<f64>().ok());
    let mut parts: Vec<(String, f64)> = build.map(|s| ("deps_and_build".to_string(), s)).into_iter().collect();
    parts.extend(dp.seconds.iter().chain(&c.seconds).cloned());
    let minutes = (build.unwrap_or(0.0) + started.elapsed().as_secs_f64()) / 60.0;
    (parts, minutes)
}

fn write(
    args: &Args,
    plan: &dataplane::Plan,
    dp: &dataplane::Results,
    c: &Control,
    host_noise: serde_json::Value,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    use report::{details, medians, Target};
    let (cni, chains, tcp) = (c.cni.as_ref().expect("ran"), c.chains.as_ref().expect("ran"), c.tcp.as_ref().expect("ran"));
    use stats::ratios as ratio;
    let date = String::from_utf8(std::process::Command::new("date").args(["-u", "+%F"]).output()?.stdout)?.trim().to_string();
    let p = &dp.pdr;
    let max_point = dp.scaling.keys().filter_map(|k| k.parse::<u64>().ok()).max().unwrap_or(1).to_string();
    // Two scenarios' ratio; None when this machine could not run one (`unavailable`).
    let pair = |a: &str, b: &str| Some(ratio(p.get(a)?, p.get(b)?));
    let ratios: serde_json::Map<String, serde_json::Value> = [
        ("end_ad/plain", pair("end_ad", "plain")),
        ("end_ad/kernel_static_proxy", pair("end_ad", KERNEL_PROXY)),
        ("end_as/plain", pair("end_as", "plain")),
        ("end_as/kernel_static_proxy", pair("end_as", KERNEL_PROXY)),
        ("end_am/plain", pair("end_am", "plain")),
        ("end_am/kernel_static_proxy", pair("end_am", KERNEL_PROXY)),
        ("kernel_static_proxy/plain", pair(KERNEL_PROXY, "plain")),
        ("age0/age1", pair("end_ad_age0", "end_ad")),
        ("monitor_drops/detached", pair("end_ad_monitor_drops", "end_ad_monitor_none")),
        ("monitor_trace/detached", pair("end_ad_monitor_trace", "end_ad_monitor_none")),
        ("vnf_max/vnf_1", Some(ratio(&dp.scaling[&max_point], &dp.scaling["1"]))),
        ("tcp_chained/unchained", Some(ratio(&tcp.chained_mbps, &tcp.unchained_mbps))),
        ("chain3_srv6pipes/plain", Some(ratio(&dp.chain3["srv6pipes"], &dp.chain3["plain"]))),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), serde_json::json!(v?))))
    .collect();
    let cni_p99 = stats::percentile(&cni.srv6pipes_ms, 99.0);
    // Each pair of lanes that ran (the kernel proxy only where this machine could run it:
    // `unavailable` says why not).
    let vs = |name: &str, what: &str, of: &str, base: &str| {
        pair(of, base).map(|value| Target { name: name.into(), what: what.into(), bound: 1.0, at_least: true, value })
    };
    let mut targets: Vec<Target> = [
        vs("end_ad_vs_plain", "End.AD ÷ plain forwarding", "end_ad", "plain"),
        vs("end_ad_vs_kernel", "End.AD ÷ kernel static proxy", "end_ad", KERNEL_PROXY),
        vs("end_as_vs_plain", "End.AS ÷ plain forwarding", "end_as", "plain"),
        vs("end_as_vs_kernel", "End.AS ÷ kernel static proxy", "end_as", KERNEL_PROXY),
    ]
    .into_iter()
    .flatten()
    .collect();
    targets.extend([Target {
        name: "vnf_flat".into(),
        what: format!("{max_point} VNFs/SIDs ÷ 1 VNF"),
        bound: 0.97,
        at_least: true,
        value: ratio(&dp.scaling[&max_point], &dp.scaling["1"]),
    }]);
    // Age 0 and the monitor by PDR: both sides in marked slices of the same streams
    // (`pdr_alternating`); by separate trials in the PDR turns when those did not run.
    let by_pdr = |name: &str, what: &str, bound: f64, of: &str, base: &str| {
        let (what, value) = match pdr_alternating_ratio(dp, of) {
            Some(v) => (format!("{what}, by PDR: frames delivered at its edge, in alternating slices"), v),
            None => (format!("{what}, by PDR in separate trials"), ratio(&p[of], &p[base])),
        };
        Target { name: name.into(), what, bound, at_least: true, value }
    };
    targets.extend([
        by_pdr("age0", "End.AD age 0 ÷ age 1 s", 0.98, "end_ad_age0", "end_ad"),
        by_pdr("monitor_attached", "End.AD, drop monitor attached ÷ detached", 0.97, "end_ad_monitor_drops", "end_ad_monitor_none"),
    ]);
    // The same two by the programs' own time per packet: in slices of one stream, round by
    // round (`bpf_alternating`).
    let by_cost = |name: &str, what: &str, bound: f64, of: &str| {
        dp.bpf_alternating.get(of).and_then(|rounds| alternate::over_rounds(rounds)).map(|value| Target {
            name: name.into(),
            what: what.into(),
            bound,
            at_least: true,
            value,
        })
    };
    targets.extend(
        [
            by_cost(
                "age0_bpf",
                "End.AD age 0 ÷ age 1 s, by BPF ns per packet in alternating slices (age 1 s's ÷ age 0's)",
                0.98,
                "end_ad_age0",
            ),
            by_cost(
                "monitor_attached_bpf",
                "End.AD, drop monitor attached ÷ detached, by BPF ns per packet in alternating slices (detached's ÷ attached's)",
                0.97,
                "end_ad_monitor_drops",
            ),
        ]
        .into_iter()
        .flatten(),
    );
    targets.extend([
        Target {
            name: "cni_add_p99".into(),
            what: "CNI ADD p99 (ms)".into(),
            bound: 20.0,
            at_least: false,
            value: stats::summarize(&[cni_p99]),
        },
        Target {
            name: "cni_add_vs_ptp".into(),
            what: "CNI ADD p99 ÷ Debian ptp's".into(),
            bound: 1.0,
            at_least: false,
            value: stats::summarize(&[cni_p99 / stats::percentile(&cni.ptp_ms, 99.0)]),
        },
        Target {
            name: "cni_add_vs_bridge".into(),
            what: "CNI ADD p99 ÷ Debian bridge's".into(),
            bound: 1.0,
            at_least: false,
            value: stats::summarize(&[cni_p99 / stats::percentile(&cni.bridge_ms, 99.0)]),
        },
        Target {
            name: "chain_apply_p99".into(),
            what: format!("chain applied → steered p99 (ms), {} chains present", c.background_chains),
            bound: 1000.0,
            at_least: false,
            value: stats::summarize(&[stats::percentile(&chains.ms, 99.0)]),
        },
    ]);
    targets.push(Target {
        name: "chain3".into(),
        what: "three functions over three nodes, srv6pipes ÷ plain".into(),
        bound: 0.9,
        at_least: true,
        value: ratio(&dp.chain3["srv6pipes"], &dp.chain3["plain"]),
    });
    targets.push(Target {
        name: "tcp_chained".into(),
        what: "TCP through the two-VNF chain ÷ unchained".into(),
        bound: 0.95,
        at_least: true,
        value: ratio(&tcp.chained_mbps, &tcp.unchained_mbps),
    });
    targets.extend(vnf_targets(dp));
    let (part_seconds, run_minutes) = run_time(dp, c, started);
    targets.push(Target {
        name: "run_minutes".into(),
        what: "the whole run, its release build included (minutes)".into(),
        bound: 50.0,
        at_least: false,
        value: stats::summarize(&[run_minutes]),
    });
    if let Some(c10k) = &c.chains_10k {
        targets.push(Target {
            name: "chain_apply_10k_p99".into(),
            what: "chain applied → steered p99 (ms), 10,000 chains present".into(),
            bound: 1000.0,
            at_least: false,
            value: stats::summarize(&[stats::percentile(&c10k.ms, 99.0)]),
        });
    }
    let mut result = serde_json::json!({
        "date": date,
        "quick": args.quick,
        "machine": report::machine(),
        "pinning": {
            "generator_cpu": args.gen_cpu,
            "sut_cpu": args.sut_cpu,
            "how": "generator thread pinned with sched_setaffinity; the nodes' uplink receive work steered to the SUT CPU with RPS (rps_cpus), so node, VNFs and sink run there in softirq; the srv6pipes-node processes pinned to the generator CPU (their once-a-second work off the SUT CPU)",
        },
        "method": {
            "loss_bound": traffic::LOSS_BOUND,
            "repetitions": plan.reps,
            "trial_ms": plan.trial.as_millis() as u64,
            "search_steps": plan.steps,
            "search": "repetition 1 of a scenario halves from the generator's ceiling until a rate passes; later ones step by 1.25x from 0.9x the scenario's last PDR until a rate passes and one above it fails; then bisection to 2^-steps. A trial failing with under 20 % lost is run once more and the rate fails only if both fail",
            "trials_retried": dp.retries.0,
            "trials_rescued": dp.retries.1,
            "generator": "XDP live frames (BPF_PROG_TEST_RUN, BPF_F_TEST_XDP_LIVE_FRAMES), paced by the clock in the program",
            "inner_packet": "IPv6/UDP, 12-byte payload (IPv4/UDP for end_ad_ipv4)",
            "segments": "end_ad/end_as: [proxy SID, sink SID]; kernel: [End.DX6 SID] + encap [sink SID] on the way back; end_am: SRH inserted [proxy SID, final destination]",
        },
        "host_noise": host_noise,
        "run_minutes": (run_minutes * 10.0).round() / 10.0,
        "part_seconds": report::seconds(&part_seconds),
        "generator_ceiling_kpps": stats::summarize(&dp.ceiling_kpps),
        "pdr_kpps": {
            "plain": stats::median(&p["plain"]),
            "kernel_static_proxy": p.get(KERNEL_PROXY).map(|s| stats::median(s)),
            "end_ad": stats::median(&p["end_ad"]),
            "end_as": stats::median(&p["end_as"]),
            "end_am": stats::median(&p["end_am"]),
        },
        "pdr_detail": details(p),
        "ratios": ratios,
        "age0_kpps": stats::median(&p["end_ad_age0"]),
        "monitor_kpps": {
            "detached": stats::median(&p["end_ad_monitor_none"]),
            "drops": stats::median(&p["end_ad_monitor_drops"]),
            "trace": stats::median(&p["end_ad_monitor_trace"]),
        },
        "monitor_events": dp.monitor_events,
        "monitor_method": "End.AD through one node (one VNF) as three scenarios in the same turns: no monitor (detached), and a srv6pipes monitor attached to the node daemon (draining its socket as the CLI does) for a scenario's trials only, for drops (the traffic drops nothing) and traces of 1 packet in 64 (the daemon's default rate limit, 1,000 events/s per CPU); the datapath is seen configured to send them before the trials and to send nothing after; events are those received while attached: the scenario's trials and, for the drops monitor, its alternating slices (bpf_alternating)",
        "chain3_kpps": medians(&dp.chain3),
        "chain3_detail": details(&dp.chain3),
        "chain3_method": "a line of three nodes (generator → n1 → n2 → n3 → sink), one VNF each: srv6pipes End.AD on every node, segments [n1's, n2's, n3's proxy SID, sink SID] (pop, VNF, push, remote hop); plain: the inner packet routed into each node's VNF by destination (one ip rule iif eth0 per node) and on downstream; before measuring, a loss-free trial proves every hop (SID counters, VNF veth tx) carried everything the sink counted",
        "age1_kpps": stats::median(&p["end_ad"]),
        "ipv4_inner_kpps": stats::median(&p["end_ad_ipv4"]),
        "seglist_kpps": medians(&dp.seglist),
        "seglist_detail": details(&dp.seglist),
        "sid_packets": dp.sid_packets,
        "bpf_ns_per_run": dp.bpf_ns,
        "bpf_ns_per_packet": bpf_per_packet(dp),
        "bpf_alternating": bpf_alternating_json(dp),
        "pdr_alternating": pdr_alternating_json(dp),
        "pdr_alternating_method": pdr_alternating_method(plan),
        "dataplane_failures": dp.failures,
        "unavailable": dp.unavailable,
        "bpf_cost_method": format!("kernel.bpf_stats_enabled run_time_ns / run_cnt of each srv6pipes program over loss-free trials at {:.0} kpps ({:.0} kpps in the VNF sweep, or half the point's PDR when that is lower), {:.1} s a scenario a round cut into {} trials in turns, each program's median over them; the VM exposes no hardware counters to perf. The PDR scenarios: {} rounds in turns, every scenario once a round; bpf_ns_per_run has each program's median over the rounds, bpf_ns_per_packet the sum of a scenario's programs in each round, and bpf_alternating prices age 0 and the drop monitor in alternating {} ms slices of one stream each round (the pairs' median a round), which the by-BPF targets use", plan.cost_pps / 1000.0, plan.cost_pps / 2000.0, plan.cost_trial.as_secs_f64(), plan.cost_parts, plan.reps, dataplane::SLICE.as_millis()),
        "targets": targets.iter().map(|t| serde_json::json!({"name": t.name, "what": t.what, "bound": t.bound, "at_least": t.at_least, "value": t.value, "verdict": t.verdict()})).collect::<Vec<_>>(),
    });
    result.as_object_mut().expect("object").extend(vnf_json(dp));
    result.as_object_mut().expect("object").extend(control_json(c));
    let out = if args.quick { args.out.join("quick") } else { args.out.clone() };
    std::fs::create_dir_all(&out)?;
    let text = serde_json::to_string_pretty(&result)? + "\n";
    std::fs::write(out.join(format!("{date}.json")), &text)?;
    std::fs::write(out.join("latest.json"), &text)?;
    let md = report::markdown(
        &result,
        p,
        &[
            ("VNFs on the node (srv6pipes End.AD)", &dp.scaling),
            ("VNFs on the node (plain forwarding by destination)", &dp.plain_spread),
            ("VNFs on the node (kernel End.DX6 + ip rule)", &dp.kernel_scaling),
            ("VNFs installed, End.AD through the last (last point: SIDs)", &dp.installed),
            ("one VNF installed, in turns with the row above", &dp.installed_one),
            ("segments after the proxy", &dp.seglist),
        ],
        &targets,
    );
    std::fs::write(out.join("latest.md"), &md)?;
    report::plot(
        &out,
        "latest",
        p,
        &[
            ("srv6pipes End.AD, spread", &dp.scaling),
            ("plain forwarding, spread", &dp.plain_spread),
            ("kernel End.DX6 + ip rule, spread", &dp.kernel_scaling),
            ("End.AD through the last installed", &dp.installed),
        ],
    )?;
    let doc = std::path::Path::new("docs/performance.md");
    if !args.quick && doc.exists() {
        report::update_doc(doc, &md)?;
    }
    println!("{md}");
    eprintln!("results: {}/latest.json, latest.md, latest.png", out.display());
    Ok(())
}
