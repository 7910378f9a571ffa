//! TCP through a chain: iperf3 goodput from a pod through two VNFs (one per node) to a pod on
//! the other node, against a pod beside it whose traffic no chain selects.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::control::KubeLab;
use crate::sys;
use crate::topo::sid_packets;

pub struct Tcp {
    /// Goodput (received, Mbit/s) of each path, a run of each per repetition.
    pub chained_mbps: Vec<f64>,
    pub unchained_mbps: Vec<f64>,
    /// How busy the client's and the server's CPUs were in each run (a share of their time):
    /// whether a path was bound by the client's CPU.
    pub chained_busy: Vec<[f64; 2]>,
    pub unchained_busy: Vec<[f64; 2]>,
    /// Packets n1's and n2's SIDs counted over the chained runs (the unchained add none).
    pub sid_packets: [u64; 2],
    /// One more run of each ("chained", "unchained") with BPF run-time statistics on: its
    /// goodput (Mbit/s) and srv6pipes' programs' time in it (where the chain's cost goes).
    pub bpf: BTreeMap<String, (f64, crate::cost::Runs)>,
    /// Each run's length.
    pub secs: u32,
}

/// Goodput of one iperf3 run and the busy share of CPUs `cpus` over it.
struct Run {
    mbps: f64,
    busy: [f64; 2],
}

fn busy_over(cpus: (usize, usize), run: impl FnOnce() -> anyhow::Result<f64>) -> anyhow::Result<Run> {
    let ticks = || -> anyhow::Result<[(u64, u64); 2]> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let of = |cpu: usize| crate::control::cpu_ticks(&stat, &format!("cpu{cpu}")).with_context(|| format!("/proc/stat: no cpu{cpu}"));
        Ok([of(cpus.0)?, of(cpus.1)?])
    };
    let before = ticks()?;
    let mbps = run()?;
    let after = ticks()?;
    let share = |i: usize| (after[i].0 - before[i].0) as f64 / (after[i].1 - before[i].1).max(1) as f64;
    Ok(Run { mbps, busy: [share(0), share(1)] })
}

/// iperf3 goodput from the client through a chain of two VNFs (fw1 on n1, fw2 on n2) to the
/// server, alternating with client2 (same node, same path, no chain). The client runs on CPU
/// `cpus.0` (with the forwarding its sends cause, in softirq there: every hop a packet takes
/// over veths runs on the CPU that sent it), the server on `cpus.1`: unpinned, runs of the
/// same path differed by up to 2.3× (2026-12-03).
pub fn tcp(k: &KubeLab, reps: usize, secs: u32, cpus: (usize, usize)) -> anyhow::Result<Tcp> {
    k.create("tcp", &["fw1", "fw2"])?;
    k.wait("n1 to program the TCP chain", Duration::from_secs(60), Duration::from_millis(200), &|| k.programmed(k.background + 1))?;
    let goodput = |netns: &str| -> anyhow::Result<f64> {
        let mut c = sys::command(netns, "iperf3", false)?;
        c.args(["-6", "-J", "-c", &k.server_ip, "-t", &secs.to_string(), "-A", &format!("{},{}", cpus.0, cpus.1)]);
        let report: serde_json::Value = serde_json::from_str(&sys::run(&mut c)?)?;
        report["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e6).context("iperf3 -J: no end.sum_received")
    };
    let run = |netns: &str| busy_over(cpus, || goodput(netns));
    let counters = || -> anyhow::Result<[u64; 2]> { Ok([sid_packets(&k.sockets[0])?, sid_packets(&k.sockets[1])?]) };
    // The counters once they stop moving: the last chained run's connections may still be
    // closing (a smoke run once counted packets on a SID during the unchained run).
    let settled = || -> anyhow::Result<[u64; 2]> {
        let mut last = counters()?;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            let now = counters()?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        bail!("tcp: the SIDs kept counting packets for 2 s with no client running")
    };
    let before = counters()?;
    let mut out = Tcp {
        chained_mbps: Vec::new(),
        unchained_mbps: Vec::new(),
        chained_busy: Vec::new(),
        unchained_busy: Vec::new(),
        sid_packets: [0, 0],
        bpf: BTreeMap::new(),
        secs,
    };
    for _ in 0..reps {
        let at = settled()?;
        let unchained = run(&k.client2_ns)?;
        if counters()? != at {
            bail!("tcp: the unchained client's traffic crossed a SID");
        }
        let chained = run(&k.client_ns)?;
        out.unchained_mbps.push(unchained.mbps);
        out.unchained_busy.push(unchained.busy);
        out.chained_mbps.push(chained.mbps);
        out.chained_busy.push(chained.busy);
    }
    let after = counters()?;
    out.sid_packets = [after[0] - before[0], after[1] - before[1]];
    if out.sid_packets.contains(&0) {
        bail!("tcp: the chain steered nothing (SID packets n1 {}, n2 {})", out.sid_packets[0], out.sid_packets[1]);
    }
    // Not among the repetitions: the statistics cost each program run two clock reads.
    for (path, netns) in [("unchained", &k.client2_ns), ("chained", &k.client_ns)] {
        let mut mbps = 0.0;
        let runs = crate::cost::bpf_runs(|| {
            mbps = goodput(netns)?;
            Ok(())
        })?;
        out.bpf.insert(path.to_string(), (mbps, runs));
    }
    k.delete("tcp")?;
    Ok(out)
}
