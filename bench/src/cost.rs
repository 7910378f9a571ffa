//! Where a missed target's time goes, as far as srv6pipes' own code is concerned: the kernel's
//! BPF run-time statistics (kernel.bpf_stats_enabled) give each datapath program's exact time
//! per run. These VMs expose no hardware counters (perf: cycles and instructions "not
//! supported"), so this stands in for instruction counts; it separates the proxies' own cost
//! from the rest of the path (veths, the VNFs' forwarding), which is the same for every
//! scenario.

use anyhow::Context;
use std::collections::BTreeMap;

/// Run time (ns) and runs of each srv6pipes program (by name) over one trial.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Runs(BTreeMap<String, (u64, u64)>);

impl Runs {
    /// Each program's total run time (ns) and runs.
    pub fn totals(&self) -> &BTreeMap<String, (u64, u64)> {
        &self.0
    }

    /// ns per run of each program that ran.
    pub fn ns_per_run(&self) -> BTreeMap<String, f64> {
        self.0.iter().filter(|(_, (_, runs))| *runs > 0).map(|(name, (ns, runs))| (name.clone(), *ns as f64 / *runs as f64)).collect()
    }
}

/// Each program's median ns per run over the parts of one cost trial (each part: a program's
/// ns per run, `Runs::ns_per_run`), for the programs every part saw: a part that met a burst of
/// the machine's noise (a few hundred ns a packet for a fraction of a second) does not move it.
pub fn part_medians(parts: &[BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let Some(first) = parts.first() else { return BTreeMap::new() };
    first
        .keys()
        .filter_map(|program| {
            let v: Option<Vec<f64>> = parts.iter().map(|p| p.get(program).copied()).collect();
            Some((program.clone(), crate::stats::median(&v?)))
        })
        .collect()
}

/// Sum of (run_time_ns, run_cnt) of every loaded program whose name starts with `sp_`, by name
/// (read by the bpf syscall: a few µs, so that slices of 50 ms can be timed).
pub fn counters() -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut first_error = None;
    for p in aya::programs::loaded_programs() {
        // A program unloaded between its listing and its reading is no error.
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let Some(name) = p.name_as_str().filter(|n| n.starts_with("sp_")) else { continue };
        let e = by_name.entry(name.to_string()).or_default();
        e.0 += p.run_time().as_nanos() as u64;
        e.1 += p.run_count();
    }
    match first_error {
        Some(e) if by_name.is_empty() => Err(e).context("read the loaded BPF programs' statistics"),
        _ => Ok(by_name),
    }
}

impl Runs {
    /// What ran between two readings of `counters`: the programs whose runs grew.
    pub fn between(before: &BTreeMap<String, (u64, u64)>, after: BTreeMap<String, (u64, u64)>) -> Runs {
        Runs(
            after
                .into_iter()
                .filter_map(|(name, (ns, runs))| {
                    let (ns0, runs0) = before.get(&name).copied().unwrap_or_default();
                    (runs > runs0).then(|| (name, (ns.saturating_sub(ns0), runs - runs0)))
                })
                .collect(),
        )
    }

    /// A packet's time in srv6pipes' programs: the sum of each program's ns per run.
    pub fn per_packet(&self) -> f64 {
        self.ns_per_run().values().sum()
    }
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `f` with BPF run-time statistics on, the setting restored after.
pub fn with_stats<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let was = std::fs::read_to_string(STATS).context("read kernel.bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = f();
    let _ = std::fs::write(STATS, was.trim());
    result
}

/// Runs `trial` with BPF run-time statistics on and returns the run time and runs of each
/// srv6pipes program that ran (`sp_uplink`, `sp_vnf`, ...).
pub fn bpf_runs(trial: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Runs> {
    with_stats(|| {
        let before = counters()?;
        trial()?;
        Ok(Runs::between(&before, counters()?))
    })
}

/// One round of BPF cost trials: scenario -> program -> ns per run (a scenario whose trial
/// failed is absent from its round).
pub type Round = BTreeMap<String, BTreeMap<String, f64>>;

/// Each scenario's programs, by the median of their ns per run over the rounds that measured
/// them.
pub fn medians(rounds: &[Round]) -> Round {
    let mut all: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (scenario, programs) in rounds.iter().flatten() {
        for (program, ns) in programs {
            all.entry(scenario.clone()).or_default().entry(program.clone()).or_default().push(*ns);
        }
    }
    all.into_iter().map(|(s, p)| (s, p.into_iter().map(|(prog, v)| (prog, crate::stats::median(&v))).collect())).collect()
}

/// A packet's time in srv6pipes' programs in each round that measured `scenario`: the sum of
/// its programs' ns per run (each packet of these scenarios runs each program once per node).
pub fn per_packet(rounds: &[Round], scenario: &str) -> Vec<f64> {
    rounds.iter().filter_map(|r| r.get(scenario)).map(|p| p.values().sum()).collect()
}

/// `base`'s time per packet ÷ `of`'s, round by round (rounds that measured both): like a
/// throughput ratio, below 1 when `of` costs more. None when no round measured both.
pub fn cost_ratios(rounds: &[Round], of: &str, base: &str) -> Option<crate::stats::Summary> {
    let both: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| Some((r.get(of)?.values().sum::<f64>(), r.get(base)?.values().sum::<f64>())))
        .filter(|(o, _)| *o > 0.0)
        .collect();
    (!both.is_empty()).then(|| crate::stats::summarize(&both.iter().map(|(o, b)| b / o).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(entries: &[(&str, f64, f64)]) -> Round {
        entries
            .iter()
            .map(|(s, up, vnf)| (s.to_string(), BTreeMap::from([("sp_uplink".to_string(), *up), ("sp_vnf".to_string(), *vnf)])))
            .collect()
    }

    #[test]
    fn a_parts_burst_does_not_move_its_trials_figure() {
        let part = |up: f64, vnf: Option<f64>| {
            let mut p = BTreeMap::from([("sp_uplink".to_string(), up)]);
            p.extend(vnf.map(|v| ("sp_vnf".to_string(), v)));
            p
        };
        let parts = [part(400.0, Some(380.0)), part(650.0, Some(390.0)), part(410.0, Some(385.0)), part(405.0, None)];
        let m = part_medians(&parts);
        assert_eq!(m["sp_uplink"], 407.5, "the 650 ns burst is not averaged in");
        assert!(!m.contains_key("sp_vnf"), "a program one part did not see has no figure");
        assert!(part_medians(&[]).is_empty());
    }

    #[test]
    fn rounds_give_medians_sums_and_paired_ratios() {
        let rounds = [
            round(&[("end_ad", 400.0, 400.0), ("end_ad_age0", 410.0, 406.0)]),
            // A slow round: both scenarios slower, their ratio about the same.
            round(&[("end_ad", 600.0, 600.0), ("end_ad_age0", 612.0, 612.0)]),
            round(&[("end_ad", 420.0, 380.0)]), // age 0's trial failed in this round
        ];
        assert_eq!(medians(&rounds)["end_ad"]["sp_uplink"], 420.0);
        assert_eq!(medians(&rounds)["end_ad_age0"]["sp_vnf"], (406.0 + 612.0) / 2.0);
        assert_eq!(per_packet(&rounds, "end_ad"), [800.0, 1200.0, 800.0]);
        let r = cost_ratios(&rounds, "end_ad_age0", "end_ad").unwrap();
        assert_eq!(r.samples, [800.0 / 816.0, 1200.0 / 1224.0], "paired within each round, the round without age 0 left out");
        assert!(r.max < 1.0, "age 0 costs more in each round: {r:?}");
        assert!(cost_ratios(&rounds, "end_as", "end_ad").is_none(), "never measured");
    }
}
