//! The changes a target prices on one lane (End.AD's age 0, the drop monitor attached) in
//! slices of one stream, the change made and unmade from one slice to the next: by BPF time
//! ([`bpf_alternating`]) and at the edge of the PDR ([`pdr_alternating`]). At the PDR's edge
//! the changed side may also be another lane (End.AD through the last of 10,000 installed
//! against a lane with one VNF; End.AD spread over N VNFs against plain forwarding spread over
//! N): the slices then switch the lane the frames go to.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use super::{three_attempts, Plan, Samples, Scenario};
use crate::around::Around;
use crate::topo::Bench;
use crate::traffic::{joined, Mark, Marker, Trial};

/// The (base, changed) scenarios measured in slices too.
pub const ALTERNATED: [(&str, &str); 2] = [("end_ad", "end_ad_age0"), ("end_ad_monitor_none", "end_ad_monitor_drops")];

/// How long each side's slice lasts in [`bpf_alternating`].
pub const SLICE: Duration = Duration::from_millis(50);

/// How long each side's frames are marked in a slice of [`pdr_alternating`]'s streams, and the
/// guards before and after: longer than the frames queued on the path take to drain (the
/// uplink's ring and the CPU's backlog, ~1,300 frames: under 3.3 ms at 400 kpps).
pub const MARK_SLICE: Duration = Duration::from_millis(12);
pub const MARK_GUARD: Duration = Duration::from_millis(4);
/// A stream's first frames count for neither side: until its queues are full nothing is lost
/// (~1,300 frames at 6 % over 450 kpps: ~50 ms).
pub const WARM_UP: Duration = Duration::from_millis(200);
/// A stream lasts this many PDR trials (~45 slices a side at full length).
pub const STREAM_TRIALS: u32 = 4;

/// The first stream of a pair's first round offers this much above the higher of the two
/// sides' last PDRs in the turns (the base's where only it has one).
pub const OVERLOAD: f64 = 1.12;
/// A stream overloads both sides when each lost at least this, and together under
/// `OVERLOADED_UP_TO`: over most of the stream, not just on average, so that few slices ran
/// below capacity (where both sides deliver everything, and the ratio is drawn to 1); the
/// upper bound keeps away from the extremes.
pub const OVERLOADED_FROM: f64 = 0.10;
pub const OVERLOADED_UP_TO: f64 = 0.4;
/// Streams that overloaded both sides a round takes, and the most streams it runs.
pub const EDGE_STREAMS: usize = 6;
pub const MAX_STREAMS: usize = 12;
/// A side with fewer frames sent than this is no measure (the marks failed).
const MIN_SENT: u64 = 1000;

/// The side `changed` is of `base`'s traffic with a change: what both ways of pricing it need.
fn change_of<'a>(base: &Scenario, changed: &'a Scenario) -> anyhow::Result<&'a Around> {
    let same_traffic = base.path.slot == changed.path.slot && base.frame.bytes == changed.frame.bytes;
    changed.around.as_ref().filter(|_| same_traffic).with_context(|| format!("{}: not {}'s traffic with a change", changed.key, base.key))
}

/// What the changed side of a marked stream is.
enum Change<'a> {
    /// `base`'s traffic, with a change made on its lane.
    Made(&'a Around),
    /// Another lane's traffic, with that lane's change (if any) made for the whole stream: it
    /// touches only that lane's packets.
    Lane(Option<&'a Around>),
}

fn edge_change<'a>(base: &Scenario, changed: &'a Scenario) -> anyhow::Result<Change<'a>> {
    if base.path.slot == changed.path.slot {
        return change_of(base, changed).map(Change::Made);
    }
    anyhow::ensure!(base.around.is_none(), "{} against {}: two lanes compare the base's traffic unchanged", changed.key, base.key);
    Ok(Change::Lane(changed.around.as_ref()))
}

/// `changed` (`base`'s traffic on `base`'s lane, with `changed`'s change made) against `base`
/// by BPF time, in slices of one loss-free stream at `Plan::cost_pps` for twice
/// `Plan::cost_trial` ([`crate::alternate`]; [`three_attempts`]): the pairs' ratios.
pub(super) fn bpf_alternating(
    b: &mut Bench,
    base: &Scenario,
    changed: &Scenario,
    plan: &Plan,
    failures: &mut Vec<String>,
) -> Option<Vec<f64>> {
    let what = format!("{} in slices", changed.key);
    let around = match change_of(base, changed) {
        Ok(a) => a,
        Err(e) => {
            failures.push(format!("BPF cost of {what}: {e:#}"));
            return None;
        }
    };
    let (key, path, frame, dsts) = (&base.key, &base.path, &base.frame, &base.dsts);
    let length = plan.cost_trial * 2;
    three_attempts(&what, failures, || {
        let traffic = || b.traffic.loss_free(path, frame, dsts, plan.cost_pps, length).map(drop).context(key.clone());
        let pairs = crate::alternate::measure(around, SLICE, length, traffic)?;
        let ratios: Vec<f64> = pairs.iter().filter_map(crate::alternate::Pair::ratio).collect();
        anyhow::ensure!(!ratios.is_empty(), "no pair of slices compared ({} pairs)", pairs.len());
        Ok(ratios)
    })
}

/// One round of [`pdr_alternating`].
#[derive(Clone, Debug)]
pub struct AlternatedPdr {
    /// The rates offered (kpps) in the streams that overloaded both sides.
    pub rates_kpps: Vec<f64>,
    /// Over the same streams: the changed side's share of its frames delivered ÷ the base
    /// side's ([`Edge::Ratio`]).
    pub ratios: Vec<f64>,
}

/// What one marked stream says at the edge of the PDR.
#[derive(Debug, PartialEq)]
enum Edge {
    /// It overloaded both sides ([`OVERLOADED_FROM`]): the changed side's share of its frames
    /// delivered ÷ the base side's, under the same overload. A cost per packet lowers it as
    /// it lowers a PDR (overloaded throughput is below the PDR, so this is checked: a null
    /// change reads 1, the trace monitor's cost as its BPF time predicts; docs/performance.md).
    Ratio(f64),
    /// A side lost too little to be overloaded: the next stream goes higher.
    Raise,
    /// Together they lost too much: the next stream goes lower.
    Lower,
}

fn edge(base: &Trial, changed: &Trial) -> Edge {
    let both = Trial { sent: base.sent + changed.sent, received: base.received + changed.received, ..*base };
    if base.loss().min(changed.loss()) < OVERLOADED_FROM {
        Edge::Raise
    } else if both.loss() >= OVERLOADED_UP_TO {
        Edge::Lower
    } else {
        Edge::Ratio((1.0 - changed.loss()) / (1.0 - base.loss()))
    }
}

/// Each of `rounds` rounds, [`pdr_alternating`] of every (base, changed) pair into `out` by the
/// changed side's key, from the rate the pair's last round overloaded both at (or [`OVERLOAD`]
/// times the higher of the two sides' last PDRs in `pdr`, the turns', the base's if only it has
/// one); a failed round goes to `failures` and the run goes on.
pub(super) fn pdr_rounds(
    b: &mut Bench,
    alternated: &[(&Scenario, &Scenario)],
    pdr: &Samples,
    plan: &Plan,
    rounds: usize,
    out: &mut BTreeMap<String, Vec<AlternatedPdr>>,
    failures: &mut Vec<String>,
) {
    eprintln!("PDR's edge of {} pairs in marked slices, {rounds} rounds", alternated.len());
    for _ in 0..rounds {
        for (base, changed) in alternated {
            let last = out.get(&changed.key).and_then(|r| r.last()).map(|r| crate::stats::median(&r.rates_kpps));
            let turns = |s: &Scenario| pdr.get(&s.key).and_then(|v| v.last().copied());
            let Some(start) = last.or_else(|| Some(turns(base)?.max(turns(changed).unwrap_or(0.0)) * OVERLOAD)) else { continue };
            match pdr_alternating(b, base, changed, start * 1000.0, plan) {
                Ok(p) => out.entry(changed.key.clone()).or_default().push(p),
                Err(e) => failures.push(format!("{} at the PDR's edge in marked slices: {e:#}", changed.key)),
            }
        }
    }
}

/// `changed` against `base` at the edge of their PDR, by PDR's own measure (frames lost) but
/// both sides in one stream: streams ([`STREAM_TRIALS`] trials long) whose frames are marked by
/// side in alternating slices ([`crate::alternate::mark_slices`]; which side goes first
/// alternates from one stream to the next), so that both sides meet the host's moments alike
/// and each side's loss is that of its own frames. The changed side's slices are `base`'s
/// traffic with `changed`'s change made for them only, or `changed`'s own traffic on its own
/// lane ([`Change`]). The first stream offers `start_pps`; each next one 5 % more or less
/// ([`Edge`]) until [`EDGE_STREAMS`] overloaded both sides (at most [`MAX_STREAMS`]).
fn pdr_alternating(b: &mut Bench, base: &Scenario, changed: &Scenario, start_pps: f64, plan: &Plan) -> anyhow::Result<AlternatedPdr> {
    let change = edge_change(base, changed)?;
    let base_lane = (&base.path, &base.frame, base.dsts.as_slice());
    let lanes = match change {
        Change::Made(_) => [base_lane; 2],
        Change::Lane(_) => [base_lane, (&changed.path, &changed.frame, changed.dsts.as_slice())],
    };
    let (mut pps, mut round) = (start_pps, AlternatedPdr { rates_kpps: vec![], ratios: vec![] });
    for n in 0..MAX_STREAMS {
        if round.ratios.len() == EDGE_STREAMS {
            break;
        }
        let drive = |marker: &mut Marker, running: &dyn Fn() -> bool| {
            let marker = RefCell::new(marker);
            let during = |f: &mut dyn FnMut() -> anyhow::Result<()>| match change {
                Change::Made(around) => around.during(f),
                Change::Lane(_) => {
                    marker.borrow_mut().use_other_lane(true)?;
                    let r = f();
                    joined(r, marker.borrow_mut().use_other_lane(false), "sending to the base's lane again")
                }
            };
            let wait = |m| std::thread::sleep(if m == Mark::Between { MARK_GUARD } else { MARK_SLICE });
            std::thread::sleep(WARM_UP);
            crate::alternate::mark_slices(n % 2 == 1, during, |m| marker.borrow_mut().set(m), wait, running).map(drop)
        };
        let mut stream = || b.traffic.marked(lanes, (pps, plan.trial * STREAM_TRIALS), drive);
        let [b_side, c_side] = match change {
            Change::Lane(Some(around)) => around.during(stream)?,
            _ => stream()?,
        };
        anyhow::ensure!(b_side.sent.min(c_side.sent) >= MIN_SENT, "a side sent too few frames: {} and {}", b_side.sent, c_side.sent);
        let step = edge(&b_side, &c_side);
        eprintln!("    {:>6.1} kpps: {:.2} % and {:.2} % lost: {step:?}", pps / 1000.0, b_side.loss() * 100.0, c_side.loss() * 100.0);
        match step {
            Edge::Ratio(r) => {
                round.rates_kpps.push(pps / 1000.0);
                round.ratios.push(r);
            }
            Edge::Raise => pps *= 1.05,
            Edge::Lower => pps /= 1.05,
        }
    }
    anyhow::ensure!(!round.ratios.is_empty(), "no stream of {MAX_STREAMS} overloaded both sides");
    let s = crate::stats::summarize(&round.ratios);
    eprintln!(
        "  {:<28} ÷ {} at the PDR's edge in {} streams: median {:.3} ({:.3}–{:.3})",
        changed.key,
        base.key,
        round.ratios.len(),
        s.median,
        s.min,
        s.max
    );
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(sent: u64, lost: u64) -> Trial {
        Trial { offered_pps: 450_000.0, sent, received: sent - lost, other: 0 }
    }

    fn scenario(key: &str, slot: u32, sid: u16, dsts: usize) -> Scenario {
        let sids = [std::net::Ipv6Addr::new(0xfcbb, 0, 0, 0, 0, 0, 0, sid), crate::topo::SINK_SID];
        let frame = crate::packet::encapsulated(super::super::topo_macs(), crate::topo::OUTER_SRC, &sids, super::super::inner6()).unwrap();
        let path = crate::traffic::Path { gen_ifindex: 10 + slot, sink_ifindex: 20 + slot, slot, expect: Some(sids[1]), expect_bytes: 16 };
        Scenario { dsts: vec![sids[0]; dsts], ..Scenario::new(key, path, frame) }
    }

    #[test]
    fn another_lane_is_a_change_against_the_base_lanes_unchanged_traffic() {
        let (one, installed) = (scenario("one/10", 0, 1, 0), scenario("installed/10", 1, 2, 0));
        assert!(matches!(edge_change(&one, &installed), Ok(Change::Lane(None))));
        // Each lane's traffic spread over its own destinations.
        let (spread, plain) = (scenario("sp/10", 1, 2, 10), scenario("plain/10", 0, 1, 10));
        assert!(matches!(edge_change(&plain, &spread), Ok(Change::Lane(None))));
        // On the same lane the changed side must be the base's traffic with a change made.
        let err = edge_change(&one, &scenario("again", 0, 1, 0)).err().expect("no change");
        assert!(format!("{err:#}").contains("not one/10's traffic with a change"), "{err:#}");
    }

    #[test]
    fn a_stream_gives_a_ratio_only_when_it_overloaded_both_sides() {
        // 12 % and 14 % of their frames lost: the changed side carries 0.86 / 0.88 of the base's.
        match edge(&trial(100_000, 12_000), &trial(90_000, 12_600)) {
            Edge::Ratio(r) => assert!((r - 0.86 / 0.88).abs() < 1e-12, "{r}"),
            e => panic!("{e:?}"),
        }
        // One side under the bound, whichever: it may have run under its capacity in places.
        assert_eq!(edge(&trial(100_000, 9_999), &trial(100_000, 20_000)), Edge::Raise);
        assert_eq!(edge(&trial(100_000, 20_000), &trial(100_000, 9_999)), Edge::Raise);
        assert_eq!(edge(&trial(100_000, 10_000), &trial(100_000, 10_000)), Edge::Ratio(1.0), "at the bound");
        // Together too far over, though one side alone is under the upper bound.
        assert_eq!(edge(&trial(100_000, 30_000), &trial(100_000, 50_000)), Edge::Lower);
        assert!(matches!(edge(&trial(100_000, 40_000), &trial(100_000, 39_999)), Edge::Ratio(r) if (r - 0.60001 / 0.6).abs() < 1e-12));
        assert_eq!(edge(&trial(100_000, 40_000), &trial(100_000, 40_000)), Edge::Lower, "at the upper bound");
    }
}
