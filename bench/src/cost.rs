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

/// One reading of every loaded srv6pipes program's statistics (name starting with `sp_`): by
/// program id, its name, run time (ns) and runs so far.
pub type Reading = BTreeMap<u32, (String, u64, u64)>;

/// Reads `Reading` by the bpf syscall (three calls a loaded program: well under a millisecond
/// for the programs a bench run loads, so that slices of 50 ms can be timed). A program that
/// could not be read (unloaded between its listing and its reading) is left out; `between`
/// then leaves it out of the interval.
pub fn counters() -> anyhow::Result<Reading> {
    let mut reading = Reading::new();
    let mut first_error = None;
    for p in aya::programs::loaded_programs() {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let Some(name) = p.name_as_str().filter(|n| n.starts_with("sp_")) else { continue };
        reading.insert(p.id(), (name.to_string(), p.run_time().as_nanos() as u64, p.run_count()));
    }
    match first_error {
        Some(e) if reading.is_empty() => Err(e).context("read the loaded BPF programs' statistics"),
        _ => Ok(reading),
    }
}

impl Runs {
    /// What ran between two readings, by program name (each lane loads its own programs): the
    /// programs read both times whose runs grew.
    pub fn between(before: &Reading, after: Reading) -> Runs {
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (id, (name, ns, runs)) in after {
            let Some((_, ns0, runs0)) = before.get(&id) else { continue };
            if runs > *runs0 {
                let e = by_name.entry(name).or_default();
                e.0 += ns.saturating_sub(*ns0);
                e.1 += runs - runs0;
            }
        }
        Runs(by_name)
    }

    /// The programs that carried the traffic: those with at least a quarter of the busiest
    /// one's runs (a stray packet through another program, neighbour discovery say, is not a
    /// packet's time).
    pub fn busy(&self) -> Runs {
        let most = self.most_runs();
        Runs(self.0.iter().filter(|(_, (_, runs))| *runs * 4 >= most).map(|(k, v)| (k.clone(), *v)).collect())
    }

    /// The most runs of any program.
    pub fn most_runs(&self) -> u64 {
        self.0.values().map(|(_, runs)| *runs).max().unwrap_or(0)
    }

    /// Programs' totals by name, for tests elsewhere.
    #[cfg(test)]
    pub fn of(programs: &[(&str, u64, u64)]) -> Runs {
        Runs(programs.iter().map(|(name, ns, runs)| (name.to_string(), (*ns, *runs))).collect())
    }
}

/// A packet's time in srv6pipes' programs from their ns per run: the sum (each packet of these
/// scenarios runs each program once per node).
pub fn packet_ns(ns_per_run: &BTreeMap<String, f64>) -> f64 {
    ns_per_run.values().sum()
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `f` with BPF run-time statistics on, the setting restored after.
pub fn with_stats<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let was = std::fs::read_to_string(STATS).context("read kernel.bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = f();
    if let Err(e) = std::fs::write(STATS, was.trim()) {
        eprintln!("warning: kernel.bpf_stats_enabled not restored to {}: {e}", was.trim());
    }
    result
}

/// What srv6pipes' programs ran while `f` ran (statistics on: `with_stats`).
pub fn runs_over(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Runs> {
    let before = counters()?;
    f()?;
    Ok(Runs::between(&before, counters()?))
}

/// Runs `trial` with BPF run-time statistics on and returns the run time and runs of each
/// srv6pipes program that ran (`sp_uplink`, `sp_vnf`, ...).
pub fn bpf_runs(trial: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Runs> {
    with_stats(|| runs_over(trial))
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
    rounds.iter().filter_map(|r| r.get(scenario)).map(packet_ns).collect()
}

/// `base`'s time per packet ÷ `of`'s, round by round (rounds that measured both): like a
/// throughput ratio, below 1 when `of` costs more. None when no round measured both.
pub fn cost_ratios(rounds: &[Round], of: &str, base: &str) -> Option<crate::stats::Summary> {
    let both: Vec<(f64, f64)> =
        rounds.iter().filter_map(|r| Some((packet_ns(r.get(of)?), packet_ns(r.get(base)?)))).filter(|(o, _)| *o > 0.0).collect();
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

    #[test]
    fn an_interval_counts_programs_read_at_both_ends_by_name() {
        let reading = |programs: &[(u32, &str, u64, u64)]| -> Reading {
            programs.iter().map(|(id, name, ns, runs)| (*id, (name.to_string(), *ns, *runs))).collect()
        };
        // Two lanes' sp_uplink (ids 1 and 7); sp_vnf (id 2) was not read at the start: its
        // lifetime's totals are not this interval's.
        let before = reading(&[(1, "sp_uplink", 1_000, 10), (7, "sp_uplink", 50_000, 100), (3, "sp_headend", 9, 1)]);
        let after =
            reading(&[(1, "sp_uplink", 5_000, 20), (7, "sp_uplink", 53_000, 110), (2, "sp_vnf", 900_000, 3_000), (3, "sp_headend", 9, 1)]);
        let r = Runs::between(&before, after);
        assert_eq!(r, Runs::of(&[("sp_uplink", 7_000, 20)]), "sp_headend did not run, sp_vnf was not read twice");
        // A stray run through another program is not the traffic's.
        let stray = Runs::of(&[("sp_uplink", 400_000, 1_000), ("sp_vnf", 380_000, 1_000), ("sp_headend", 900, 2)]);
        assert_eq!(stray.busy(), Runs::of(&[("sp_uplink", 400_000, 1_000), ("sp_vnf", 380_000, 1_000)]));
        assert_eq!(stray.most_runs(), 1_000);
    }
}
