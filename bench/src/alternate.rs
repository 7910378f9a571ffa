//! The cost of one change on one lane (End.AD's age 0, a monitor attached) by BPF time,
//! measured in slices of one stream of traffic, the change made and unmade from one slice to
//! the next. The cost rounds compare two scenarios half a second or more apart, and the host's
//! noise (its shared L3 thrashed by neighbours, docs/performance.md) moves a program's time by
//! up to ~10 % between two such parts; here the two sides of each pair are 50 ms apart, on the
//! same packets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::around::Around;
use crate::cost::{counters, Runs};

/// One slice of each side, adjacent in time.
#[derive(Clone, Debug)]
pub struct Pair {
    pub base: Runs,
    pub changed: Runs,
}

impl Pair {
    /// The base side's time per packet ÷ the changed side's (like a throughput ratio: below 1
    /// when the change costs), or None when the two slices did not run the same programs (the
    /// traffic stopping, a program missing) or one ran none.
    pub fn ratio(&self) -> Option<f64> {
        let (b, c) = (self.base.ns_per_run(), self.changed.ns_per_run());
        if b.is_empty() || !b.keys().eq(c.keys()) {
            return None;
        }
        let changed = self.changed.per_packet();
        (changed > 0.0).then(|| self.base.per_packet() / changed)
    }
}

/// A target's figure from its rounds (each round: its pairs' ratios): each round's median (a
/// burst of noise in one slice moves one pair, not the round), their spread over the rounds.
pub fn over_rounds(rounds: &[Vec<f64>]) -> Option<crate::stats::Summary> {
    let medians: Vec<f64> = rounds.iter().filter(|r| !r.is_empty()).map(|r| crate::stats::median(r)).collect();
    (!medians.is_empty()).then(|| crate::stats::summarize(&medians))
}

/// What ran over one slice of `slice`.
fn slice_runs(slice: Duration) -> anyhow::Result<Runs> {
    let before = counters()?;
    std::thread::sleep(slice);
    Ok(Runs::between(&before, counters()?))
}

/// Pairs of slices for as long as `traffic` runs on another thread, `change` made for the changed side's slices only; the pairs alternate which side goes first
/// (base then changed, changed then base), so that neither side always follows the other.
/// BPF run-time statistics are on throughout. Returns the traffic's result and the pairs.
pub fn measure<T: Send>(
    change: &Around,
    slice: Duration,
    traffic: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<(T, Vec<Pair>)> {
    crate::cost::with_stats(|| {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let gen = s.spawn(|| {
                let r = traffic();
                done.store(true, Ordering::SeqCst);
                r
            });
            // The generator's first frames: its thread starts in the netns and pins itself.
            std::thread::sleep(slice);
            let side = |changed: bool| if changed { change.during(|| slice_runs(slice)) } else { slice_runs(slice) };
            let mut out = Vec::new();
            let mut failed = None;
            for k in 0.. {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let changed_first = k % 2 == 1;
                let pair = side(changed_first).and_then(|first| Ok((first, side(!changed_first)?)));
                match pair {
                    // A pair the traffic's end may have cut is not kept.
                    Ok(_) if done.load(Ordering::SeqCst) => break,
                    Ok((first, second)) => {
                        let (base, changed) = if changed_first { (second, first) } else { (first, second) };
                        out.push(Pair { base, changed });
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let t = gen.join().map_err(|_| anyhow::anyhow!("the traffic's thread panicked"))??;
            match failed {
                Some(e) => Err(e),
                None => Ok((t, out)),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn runs(programs: &[(&str, u64, u64)]) -> Runs {
        let before = BTreeMap::new();
        Runs::between(&before, programs.iter().map(|(n, ns, r)| (n.to_string(), (*ns, *r))).collect())
    }

    #[test]
    fn a_pair_compares_time_per_packet_over_the_same_programs() {
        // 400 + 300 ns a packet against 400 + 350: the change costs 50 ns.
        let base = runs(&[("sp_uplink", 400_000, 1000), ("sp_vnf", 300_000, 1000)]);
        let changed = runs(&[("sp_uplink", 800_000, 2000), ("sp_vnf", 700_000, 2000)]);
        let r = Pair { base: base.clone(), changed }.ratio().unwrap();
        assert!((r - 700.0 / 750.0).abs() < 1e-12, "{r}");
        let one_program = runs(&[("sp_uplink", 400_000, 1000)]);
        assert_eq!(Pair { base: base.clone(), changed: one_program }.ratio(), None, "sp_vnf did not run in one slice");
        assert_eq!(Pair { base: runs(&[]), changed: runs(&[]) }.ratio(), None, "nothing ran");
    }

    #[test]
    fn rounds_give_their_pairs_medians_and_spread() {
        // Round 2's one pair of 1.40 (a burst in one slice) does not move its round.
        let rounds = [vec![0.99, 1.01, 1.00], vec![1.02, 1.40, 1.01, 1.03], vec![], vec![0.97]];
        let s = over_rounds(&rounds).unwrap();
        assert_eq!(s.samples, [1.00, 1.025, 0.97], "a round without pairs has no figure");
        assert_eq!((s.min, s.median, s.max), (0.97, 1.00, 1.025));
        assert!(over_rounds(&[vec![], vec![]]).is_none());
    }
}
