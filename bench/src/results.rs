//! The run's JSON: each part's fields, the full run's document, the `--only` parts' one.

use crate::dataplane::{self, KERNEL_PROXY};
use crate::report::{self, details, medians, Target};
use crate::{alternate, control, cost, stats, tcp, traffic, Args, Control};

/// What the full run's document says about the run itself.
pub(crate) struct Run {
    pub date: String,
    pub host_noise: serde_json::Value,
    pub part_seconds: Vec<(String, f64)>,
    pub run_minutes: f64,
}

/// The full run's document: the data plane's results, ratios and targets, then the VNF sweep's
/// and the control parts' fields.
pub(crate) fn full(
    args: &Args,
    plan: &dataplane::Plan,
    dp: &dataplane::Results,
    c: &Control,
    run: Run,
    targets: &[Target],
) -> serde_json::Value {
    let p = &dp.pdr;
    let Run { date, host_noise, part_seconds, run_minutes } = run;
    let ratios = ratios(dp, c);
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
        "ratios": ratios,
        "age0_kpps": stats::median(&p["end_ad_age0"]),
        "monitor_kpps": {
            "detached": stats::median(&p["end_ad_monitor_none"]),
            "drops": stats::median(&p["end_ad_monitor_drops"]),
            "trace": stats::median(&p["end_ad_monitor_trace"]),
        },
        "monitor_events": dp.monitor_events,
        "monitor_method": "End.AD through one node (one VNF) as three scenarios in the same turns: no monitor (detached), and a srv6pipes monitor attached to the node daemon (draining its socket as the CLI does) for a scenario's trials only, for drops (the traffic drops nothing) and traces of 1 packet in 64 (the daemon's default rate limit, 1,000 events/s per CPU); the datapath is seen configured to send them before the trials and to send nothing after; events are those received while attached: the scenario's trials and, for the drops monitor, its alternating slices (bpf_alternating)",
        "chain3_method": "a line of three nodes (generator → n1 → n2 → n3 → sink), one VNF each: srv6pipes End.AD on every node, segments [n1's, n2's, n3's proxy SID, sink SID] (pop, VNF, push, remote hop); plain: the inner packet routed into each node's VNF by destination (one ip rule iif eth0 per node) and on downstream; before measuring, a loss-free trial proves every hop (SID counters, VNF veth tx) carried everything the sink counted",
        "age1_kpps": stats::median(&p["end_ad"]),
        "ipv4_inner_kpps": stats::median(&p["end_ad_ipv4"]),
        "seglist_kpps": medians(&dp.seglist),
        "seglist_detail": details(&dp.seglist),
        "sid_packets": dp.sid_packets,
        "bpf_cost_method": format!("kernel.bpf_stats_enabled run_time_ns / run_cnt of each srv6pipes program over loss-free trials at {:.0} kpps ({:.0} kpps in the VNF sweep, or half the point's PDR when that is lower), {:.1} s a scenario a round cut into {} trials in turns, each program's median over them; the VM exposes no hardware counters to perf. The PDR scenarios: {} rounds in turns, every scenario once a round; bpf_ns_per_run has each program's median over the rounds, bpf_ns_per_packet the sum of a scenario's programs in each round, and bpf_alternating prices age 0 and the drop monitor in alternating {} ms slices of one stream each round (the pairs' median a round), which the by-BPF targets use", plan.cost_pps / 1000.0, plan.cost_pps / 2000.0, plan.cost_trial.as_secs_f64(), plan.cost_parts, plan.reps, dataplane::SLICE.as_millis()),
        "targets": targets.iter().map(|t| serde_json::json!({"name": t.name, "what": t.what, "bound": t.bound, "at_least": t.at_least, "value": t.value, "verdict": t.verdict()})).collect::<Vec<_>>(),
    });
    let all = dataplane::Parts { pdr: true, chain3: true, vnfs: true };
    result.as_object_mut().expect("object").extend(dataplane_json(plan, dp, all));
    result.as_object_mut().expect("object").extend(control_json(c));
    result
}

/// The `--only` parts' document: the fields of the parts that ran, and their seconds.
pub(crate) fn only(
    plan: &dataplane::Plan,
    parts: dataplane::Parts,
    dp: Option<&dataplane::Results>,
    c: &Control,
    host_noise: Option<serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut json = control_json(c);
    if let Some(n) = host_noise {
        json.insert("host_noise".into(), n);
    }
    if let Some(dp) = dp {
        if parts.pdr {
            json.insert("pdr_kpps".into(), medians(&dp.pdr));
        }
        json.extend(dataplane_json(plan, dp, parts));
        json.insert("trials_retried".into(), serde_json::json!({"retried": dp.retries.0, "rescued": dp.retries.1}));
    }
    let dp_seconds = dp.iter().flat_map(|dp| dp.seconds.iter());
    json.insert("part_seconds".into(), report::seconds(&dp_seconds.chain(&c.seconds).cloned().collect::<Vec<_>>()));
    json
}

/// The data plane's fields that the full run's document and the `--only` parts' share, for
/// the parts that ran.
fn dataplane_json(plan: &dataplane::Plan, dp: &dataplane::Results, parts: dataplane::Parts) -> serde_json::Map<String, serde_json::Value> {
    let mut json = serde_json::Map::new();
    if parts.pdr {
        json.insert("pdr_detail".into(), details(&dp.pdr));
        json.insert("bpf_ns_per_run".into(), serde_json::json!(dp.bpf_ns));
        json.insert("bpf_ns_per_packet".into(), bpf_per_packet(dp));
        json.insert("bpf_alternating".into(), bpf_alternating_json(dp));
        json.insert("pdr_alternating".into(), pdr_alternating_json(dp));
    }
    if parts.pdr || parts.vnfs {
        json.insert("pdr_alternating_method".into(), pdr_alternating_method(plan).into());
    }
    if parts.vnfs {
        json.extend(vnf_json(dp));
    }
    if parts.chain3 {
        json.insert("chain3_kpps".into(), medians(&dp.chain3));
        json.insert("chain3_detail".into(), details(&dp.chain3));
    }
    json.insert("dataplane_failures".into(), serde_json::json!(dp.failures));
    json.insert("unavailable".into(), serde_json::json!(dp.unavailable));
    json
}

/// Each pair's ratio, for the document's `ratios` (None where this machine could not run one:
/// `unavailable`).
fn ratios(dp: &dataplane::Results, c: &Control) -> serde_json::Map<String, serde_json::Value> {
    use stats::ratios as ratio;
    let (p, tcp) = (&dp.pdr, c.tcp.as_ref().expect("ran"));
    let max_point = crate::targets::max_point(dp);
    let pair = |a: &str, b: &str| crate::targets::pair(p, a, b);
    [
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
        ("tcp_chained/unchained", Some(tcp.ratio())),
        ("chain3_srv6pipes/plain", Some(ratio(&dp.chain3["srv6pipes"], &dp.chain3["plain"]))),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), serde_json::json!(v?))))
    .collect()
}

/// srv6pipes' programs in one more TCP run of each path, statistics on: the run's goodput, the
/// programs' share of a CPU's time, their ns per Mbit received, and each one's ns per run and
/// runs per Mbit (how large the packets it saw were).
pub(crate) fn tcp_bpf(t: &tcp::Tcp) -> serde_json::Value {
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
pub(crate) fn control_json(c: &Control) -> serde_json::Map<String, serde_json::Value> {
    use report::latency;
    let per_change = |f: fn(&control::ChangeCost) -> f64| -> serde_json::Map<String, serde_json::Value> {
        c.change.iter().map(|(k, x)| (k.clone(), serde_json::json!(f(x)))).collect()
    };
    let tcp_json = c.tcp.as_ref().map(|t| {
        let per_path = |f: &dyn Fn(&[tcp::Run]) -> serde_json::Value| serde_json::json!({"chained": f(&t.chained), "unchained": f(&t.unchained)});
        // One figure of each run, summarized per path.
        let summary = |f: fn(&tcp::Run) -> f64| per_path(&|runs| serde_json::json!(stats::summarize(&tcp::each(runs, f))));
        let busy = |runs: &[tcp::Run]| {
            let cpu = |i: usize| stats::summarize(&tcp::each(runs, |r| r.busy[i]));
            serde_json::json!({"client_cpu": cpu(0), "server_cpu": cpu(1)})
        };
        let (chained, unchained) = t.mbps();
        serde_json::json!({
            "chained_mbps": stats::median(&chained),
            "unchained_mbps": stats::median(&unchained),
            "ratio": t.ratio(),
            "detail": summary(|r| r.mbps),
            "cpu_busy": per_path(&busy),
            "retransmits": summary(|r| r.retransmits as f64),
            "dsacked": summary(|r| r.dsacked as f64),
            "sid_packets": {"n1": t.sid_packets[0], "n2": t.sid_packets[1]},
            "bpf": tcp_bpf(t),
            "how": "iperf3 -6 from a pod through a chain of two VNFs (End.AD, one per node) to a pod on the other node, alternating with a pod on the same node whose traffic no chain selects; goodput received; iperf3 -A: the client on the generator CPU, the server on the SUT CPU; cpu_busy: the share of the client's and the server's CPU that was busy (/proc/stat) over each run; retransmits: the segments each run's sender retransmitted (iperf3); dsacked: of them, those the receiver had already (D-SACK, the client netns's TcpExt TCPDSACKRecvSegs): reordered, not lost; bpf: one more run of each path with kernel.bpf_stats_enabled, srv6pipes' programs' run time and runs in it",
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
        "chain_growth": c.growth.iter().map(|g| serde_json::json!({
            "from": g.from, "to": g.to, "seconds": g.seconds, "create_seconds": g.create_seconds,
            "operator_cpu_s": g.used.operator_cpu_s, "control_plane_cpu_s": g.used.control_plane_cpu_s,
            "host_busy": g.used.host_busy(), "operator_writes": g.used.writes,
        })).collect::<Vec<_>>(),
        "chain_growth_how": "each growth of the kube lab's background chains (kubectl create, four processes at a time of 250 chains each, then until n1 has programmed every chain and every chain is Ready): seconds in all and creating, the operator's and the API server's and etcd's CPU time (/proc/PID/task/*/schedstat), the share of the host's CPU time busy (/proc/stat: not idle or iowait) and the writes the API server served of what only the operator writes, by kind (slices: program slices; chain_status: chain status and finalizer patches; events; nodes: locator patches)",
        "tcp_goodput_mbps": tcp_json,
        "stream": c.stream,
        "scale_sim": c.sim,
        "operator_footprint": c.footprint,
    });
    json.as_object().cloned().unwrap_or_default()
}

/// Each costed PDR scenario's time per packet in srv6pipes' programs, round by round.
pub(crate) fn bpf_per_packet(dp: &dataplane::Results) -> serde_json::Value {
    let per: std::collections::BTreeMap<String, Vec<f64>> =
        dp.bpf_ns.keys().map(|s| (s.clone(), cost::per_packet(&dp.bpf_rounds, s))).filter(|(_, v)| !v.is_empty()).collect();
    report::details(&per)
}

/// The changes priced in slices of one stream (`bpf_alternating`): each round's pairs, the
/// figure over the rounds, and beside it the same ratio from the cost rounds' separate trials.
pub(crate) fn bpf_alternating_json(dp: &dataplane::Results) -> serde_json::Value {
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
pub(crate) fn pdr_alternating_json(dp: &dataplane::Results) -> serde_json::Value {
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
pub(crate) fn edge_json(base: &str, rounds: &[dataplane::sliced::AlternatedPdr], separate: Option<stats::Summary>) -> serde_json::Value {
    serde_json::json!({
        "base": base,
        "ratio": edge_ratio(rounds),
        "rounds": rounds.iter().map(|r| serde_json::json!({"kpps": stats::summarize(&r.rates_kpps), "ratios": stats::summarize(&r.ratios)})).collect::<Vec<_>>(),
        "ratio_by_separate_trials": separate,
    })
}

/// A pair's ratio at the edge of the PDR in marked slices: each round's median, their spread
/// over the rounds.
pub(crate) fn edge_ratio(rounds: &[dataplane::sliced::AlternatedPdr]) -> Option<stats::Summary> {
    let ratios: Vec<Vec<f64>> = rounds.iter().map(|r| r.ratios.clone()).collect();
    alternate::over_rounds(&ratios)
}

/// How `pdr_alternating` measures, from its constants.
pub(crate) fn pdr_alternating_method(plan: &dataplane::Plan) -> String {
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

/// End.AD through the last installed against the lane that keeps one VNF, both lanes in one
/// stream at the edge of their PDR, by the sweep's last point (N); with `--null-lanes`, the
/// calibration pairs too (`null/N`, `trace/N`).
pub(crate) fn installed_alternating_json(dp: &dataplane::Results) -> serde_json::Map<String, serde_json::Value> {
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
pub(crate) fn spread_alternating_json(dp: &dataplane::Results) -> serde_json::Map<String, serde_json::Value> {
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
pub(crate) fn vnf_json(dp: &dataplane::Results) -> serde_json::Map<String, serde_json::Value> {
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
        "vnf_part_seconds": report::seconds(&dp.vnf_seconds),
        "vnf_spread_method": format!("at each N, in turns: End.AD with the outer destination spread over the N VNFs' SIDs (also vnf_scaling_kpps), plain IPv6 forwarding with the destination spread over N /128 routes, one per VNF namespace (one `ip rule iif eth0` for every N; the way back by the main table), End.AD through the last VNF installed alone (vnf_installed_kpps; its last point: with the SID table filled to that many SIDs), and End.AD through a second lane that keeps one VNF installed (vnf_installed_one_kpps), the reference vnf_installed_paired divides by, repetition by repetition; after the last point, that pair again at the edge of their PDR in marked slices (vnf_installed_alternating: pdr_alternating_method, the slices of the changed side, the last installed, sent to its own lane, the base's to the lane with one VNF); at every VNF count, End.AD spread over N against plain spread over N the same way, in {} rounds before the last count and as many as the repetitions at it (vnf_spread_alternating: the changed side's slices, End.AD's, to its lane with the outer destination spread over the SIDs, the base's to the plain lane with the destination spread over the N routes; each lane's frames of their own length), which vnf_spread's target at that N takes", dataplane::SPREAD_ROUNDS),
    });
    json.as_object().cloned().unwrap_or_default()
}
