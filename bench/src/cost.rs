//! Where a missed target's time goes, as far as srv6pipes' own code is concerned: the kernel's
//! BPF run-time statistics (kernel.bpf_stats_enabled) give each datapath program's exact time
//! per run. These VMs expose no hardware counters (perf: cycles and instructions "not
//! supported"), so this stands in for instruction counts; it separates the proxies' own cost
//! from the rest of the path (veths, the VNFs' forwarding), which is the same for every
//! scenario.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Context;

/// Sum of (run_time_ns, run_cnt) of every loaded program whose name starts with `sp_`, by name.
fn counters() -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().context("run bpftool")?;
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("parse bpftool prog show --json")?;
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in progs {
        let Some(name) = p["name"].as_str().filter(|n| n.starts_with("sp_")) else { continue };
        let e = by_name.entry(name.to_string()).or_default();
        e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        e.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(by_name)
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Runs `trial` with BPF run-time statistics on (restoring the setting after) and returns
/// the ns per run of each srv6pipes program that ran (`sp_uplink`, `sp_vnf`, ...).
pub fn bpf_ns_per_run(trial: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<BTreeMap<String, f64>> {
    let was = std::fs::read_to_string(STATS).context("read kernel.bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = (|| {
        let before = counters()?;
        trial()?;
        let after = counters()?;
        Ok(after
            .into_iter()
            .filter_map(|(name, (ns, runs))| {
                let (ns0, runs0) = before.get(&name).copied().unwrap_or_default();
                (runs > runs0).then(|| (name, (ns - ns0) as f64 / (runs - runs0) as f64))
            })
            .collect())
    })();
    let _ = std::fs::write(STATS, was.trim());
    result
}
