//! The full run's targets, in the report's order: the data plane's (by PDR, by BPF time), the
//! control plane's, end to end, the VNF sweep's, the run's length, chain apply at 10,000 chains.

use crate::alternate;
use crate::dataplane::{self, KERNEL_PROXY};
use crate::report::{self, Target};
use crate::results::edge_ratio;
use crate::stats::{self, ratios as ratio};
use crate::Control;

/// Every target of a full run, `run_minutes` its length so far.
pub(crate) fn all(dp: &dataplane::Results, c: &Control, run_minutes: f64) -> Vec<Target> {
    let mut targets = pdr(dp);
    targets.extend(control(c));
    targets.extend(end_to_end(Some(dp), c));
    targets.extend(vnf_targets(dp));
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
    targets
}

/// The data plane's: each proxy against plain forwarding and the kernel proxy, flat in VNF
/// count, age 0 and the drop monitor by PDR and by BPF time.
fn pdr(dp: &dataplane::Results) -> Vec<Target> {
    let p = &dp.pdr;
    let max_point = max_point(dp);
    // Each pair of lanes that ran (the kernel proxy only where this machine could run it:
    // `unavailable` says why not).
    let vs = |name: &str, what: &str, of: &str, base: &str| {
        pair(p, of, base).map(|value| Target { name: name.into(), what: what.into(), bound: 1.0, at_least: true, value })
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
    targets
}

/// The control plane's: CNI ADD's p99 alone and against Debian's plugins, chain apply's p99.
pub(crate) fn control(c: &Control) -> [Target; 4] {
    let (cni, chains) = (c.cni.as_ref().expect("ran"), c.chains.as_ref().expect("ran"));
    let cni_p99 = stats::percentile(&cni.srv6pipes_ms, 99.0);
    [
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
    ]
}

/// End to end: three functions over three nodes, TCP through the two-VNF chain.
/// End to end: the three-function chain (where the data plane ran) and TCP.
pub(crate) fn end_to_end(dp: Option<&dataplane::Results>, c: &Control) -> Vec<Target> {
    let tcp = c.tcp.as_ref().expect("ran");
    let chain3 = dp.map(|dp| Target {
        name: "chain3".into(),
        what: "three functions over three nodes, srv6pipes ÷ plain".into(),
        bound: 0.9,
        at_least: true,
        value: ratio(&dp.chain3["srv6pipes"], &dp.chain3["plain"]),
    });
    chain3
        .into_iter()
        .chain([Target {
            name: "tcp_chained".into(),
            what: "TCP through the two-VNF chain ÷ unchained".into(),
            bound: 0.95,
            at_least: true,
            value: tcp.ratio(),
        }])
        .collect()
}

/// Two PDR scenarios' ratio; None when this machine could not run one (`unavailable`).
pub(crate) fn pair(p: &dataplane::Samples, a: &str, b: &str) -> Option<stats::Summary> {
    Some(ratio(p.get(a)?, p.get(b)?))
}

/// The VNF sweep's largest point (VNFs, or SIDs at its last point).
pub(crate) fn max_point(dp: &dataplane::Results) -> String {
    dp.scaling.keys().filter_map(|k| k.parse::<u64>().ok()).max().unwrap_or(1).to_string()
}

/// `changed` ÷ its base at the edge of the PDR in marked slices ([`edge_ratio`]).
fn pdr_alternating_ratio(dp: &dataplane::Results, changed: &str) -> Option<stats::Summary> {
    edge_ratio(dp.pdr_alternating.get(changed)?)
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
