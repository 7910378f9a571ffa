//! TCP through a chain: iperf3 goodput from a pod through two VNFs (one per node) to a pod on
//! the other node, against a pod beside it whose traffic no chain selects.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::control::KubeLab;
use crate::sys;
use crate::topo::sid_packets;

pub struct Tcp {
    /// Each path's runs, one of each per repetition.
    pub chained: Vec<Run>,
    pub unchained: Vec<Run>,
    /// Packets n1's and n2's SIDs counted over the chained runs (the unchained add none).
    pub sid_packets: [u64; 2],
    /// One more run of each ("chained", "unchained") with BPF run-time statistics on: its
    /// goodput (Mbit/s) and srv6pipes' programs' time in it (where the chain's cost goes).
    pub bpf: BTreeMap<String, (f64, crate::cost::Runs)>,
    /// Each run's length.
    pub secs: u32,
}

impl Tcp {
    /// Each run's goodput (Mbit/s): chained, unchained.
    pub fn mbps(&self) -> (Vec<f64>, Vec<f64>) {
        (each(&self.chained, |r| r.mbps), each(&self.unchained, |r| r.mbps))
    }

    /// Chained goodput ÷ unchained, repetition by repetition.
    pub fn ratio(&self) -> crate::stats::Summary {
        let (chained, unchained) = self.mbps();
        crate::stats::ratios(&chained, &unchained)
    }
}

/// One iperf3 run.
pub struct Run {
    /// Goodput received, Mbit/s.
    pub mbps: f64,
    /// How busy the client's and the server's CPUs were over it (a share of their time):
    /// whether the path was bound by the client's CPU.
    pub busy: [f64; 2],
    /// Segments the sender retransmitted (iperf3's `end.sum_sent.retransmits`).
    pub retransmits: u64,
    /// Of them, those the receiver reported it had already (D-SACK: the client's netns's
    /// `TcpExt: TCPDSACKRecvSegs`): retransmitted for reordering, not for a loss.
    pub dsacked: u64,
}

/// `f` of each run.
pub fn each(runs: &[Run], f: impl Fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().map(f).collect()
}

/// The report of one iperf3 run: its goodput received (Mbit/s) and the sender's retransmits.
fn goodput_of(report: &serde_json::Value) -> anyhow::Result<(f64, u64)> {
    let mbps = report["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e6).context("iperf3 -J: no end.sum_received")?;
    let retransmits = report["end"]["sum_sent"]["retransmits"].as_u64().context("iperf3 -J: no end.sum_sent.retransmits")?;
    Ok((mbps, retransmits))
}

/// Counter `name` of group `group` in a /proc/net/netstat or /proc/net/snmp text, whose
/// groups are pairs of lines: `Group: names...` then `Group: values...`.
fn netstat_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(at) = names.split_whitespace().position(|n| n == name) {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// The D-SACKed segments netns `netns`'s senders have received so far.
fn dsack_segments(netns: &str) -> anyhow::Result<u64> {
    let mut c = sys::command(netns, "cat", false)?;
    c.arg("/proc/net/netstat");
    netstat_counter(&sys::run(&mut c)?, "TcpExt", "TCPDSACKRecvSegs").with_context(|| format!("{netns}: no TcpExt TCPDSACKRecvSegs"))
}

/// Runs the iperf3 client in `netns` (`run`: its goodput and retransmits) and observes what
/// its run cost: how busy CPUs `cpus` were, how many retransmits were D-SACKed.
fn observed(cpus: (usize, usize), netns: &str, run: impl FnOnce() -> anyhow::Result<(f64, u64)>) -> anyhow::Result<Run> {
    let ticks = || -> anyhow::Result<[(u64, u64); 2]> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let of = |cpu: usize| crate::control::cpu_ticks(&stat, &format!("cpu{cpu}")).with_context(|| format!("/proc/stat: no cpu{cpu}"));
        Ok([of(cpus.0)?, of(cpus.1)?])
    };
    let dsacked = dsack_segments(netns)?;
    let before = ticks()?;
    let (mbps, retransmits) = run()?;
    let after = ticks()?;
    let dsacked = dsack_segments(netns)?.saturating_sub(dsacked);
    let share = |i: usize| (after[i].0 - before[i].0) as f64 / (after[i].1 - before[i].1).max(1) as f64;
    Ok(Run { mbps, busy: [share(0), share(1)], retransmits, dsacked })
}

/// iperf3 goodput from the client through a chain of two VNFs (fw1 on n1, fw2 on n2) to the
/// server, alternating with client2 (same node, same path, no chain). The client runs on CPU
/// `cpus.0` (with the forwarding its sends cause, in softirq there: every hop a packet takes
/// over veths runs on the CPU that sent it), the server on `cpus.1`: unpinned, runs of the
/// same path differed by up to 2.3× (2026-12-03).
pub fn tcp(k: &KubeLab, reps: usize, secs: u32, cpus: (usize, usize)) -> anyhow::Result<Tcp> {
    k.create("tcp", &["fw1", "fw2"])?;
    k.wait("n1 to program the TCP chain", Duration::from_secs(60), Duration::from_millis(200), &|| k.programmed(k.background + 1))?;
    let goodput = |netns: &str| -> anyhow::Result<(f64, u64)> {
        let mut c = sys::command(netns, "iperf3", false)?;
        c.args(["-6", "-J", "-c", &k.server_ip, "-t", &secs.to_string(), "-A", &format!("{},{}", cpus.0, cpus.1)]);
        goodput_of(&serde_json::from_str(&sys::run(&mut c)?)?)
    };
    let run = |netns: &str| observed(cpus, netns, || goodput(netns));
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
    let mut out = Tcp { chained: Vec::new(), unchained: Vec::new(), sid_packets: [0, 0], bpf: BTreeMap::new(), secs };
    for _ in 0..reps {
        let at = settled()?;
        let unchained = run(&k.client2_ns)?;
        if counters()? != at {
            bail!("tcp: the unchained client's traffic crossed a SID");
        }
        let chained = run(&k.client_ns)?;
        out.unchained.push(unchained);
        out.chained.push(chained);
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
            mbps = goodput(netns)?.0;
            Ok(())
        })?;
        out.bpf.insert(path.to_string(), (mbps, runs));
    }
    k.delete("tcp")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_goodput_received_and_retransmits_sent() {
        let report = serde_json::json!({"end": {
            "sum_sent": {"bits_per_second": 9.0e9, "retransmits": 17},
            "sum_received": {"bits_per_second": 8.5e9},
        }});
        let (mbps, retransmits) = goodput_of(&report).unwrap();
        assert_eq!((mbps, retransmits), (8500.0, 17));
    }

    #[test]
    fn a_report_without_either_figure_is_an_error() {
        let no_retransmits = serde_json::json!({"end": {"sum_sent": {}, "sum_received": {"bits_per_second": 1e9}}});
        assert!(goodput_of(&no_retransmits).unwrap_err().to_string().contains("retransmits"));
        let no_received = serde_json::json!({"end": {"sum_sent": {"retransmits": 0}}});
        assert!(goodput_of(&no_received).unwrap_err().to_string().contains("sum_received"));
    }

    #[test]
    fn a_netstat_counter_is_found_by_group_and_name() {
        let text = "TcpExt: SyncookiesSent TCPDSACKRecvSegs TCPSACKReorder\n\
                    TcpExt: 0 2286 3611\n\
                    IpExt: InNoRoutes TCPDSACKRecvSegs\n\
                    IpExt: 5 7\n";
        assert_eq!(netstat_counter(text, "TcpExt", "TCPDSACKRecvSegs"), Some(2286));
        assert_eq!(netstat_counter(text, "TcpExt", "TCPSACKReorder"), Some(3611));
        assert_eq!(netstat_counter(text, "IpExt", "TCPDSACKRecvSegs"), Some(7));
        assert_eq!(netstat_counter(text, "TcpExt", "InNoRoutes"), None);
        assert_eq!(netstat_counter(text, "Tcp", "TCPDSACKRecvSegs"), None);
    }
}
