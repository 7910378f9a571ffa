//! The cost of one change on one lane (End.AD's age 0, a monitor attached) by BPF time,
//! measured in slices of one stream of traffic, the change made and unmade from one slice to
//! the next. The cost rounds compare two scenarios in trials half a second or more apart, and
//! the host's noise (its shared L3 thrashed by neighbours, docs/performance.md) moves the
//! programs' time by 10–40 % from one 50 ms slice to the next; here the two sides of each
//! pair are adjacent slices of the same stream. A PDR is taken the same way: the stream's
//! frames are marked by side ([`mark_slices`]) and each side's loss counted by its mark.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::around::Around;
use crate::cost::{packet_ns, runs_over, Runs};
use crate::traffic::Mark;

/// One slice of each side, adjacent in time.
#[derive(Clone, Debug)]
pub struct Pair {
    pub base: Runs,
    pub changed: Runs,
}

impl Pair {
    /// The base side's time per packet ÷ the changed side's (like a throughput ratio: below 1
    /// when the change costs), over the programs that carried the traffic ([`Runs::busy`]).
    /// None when the two slices' busy programs differ or one ran none, or when one slice ran
    /// less than half the other's packets (the traffic starting or stopping).
    pub fn ratio(&self) -> Option<f64> {
        let (b, c) = (self.base.busy(), self.changed.busy());
        let (b_runs, c_runs) = (b.most_runs(), c.most_runs());
        let (b, c) = (b.ns_per_run(), c.ns_per_run());
        if b.is_empty() || !b.keys().eq(c.keys()) || b_runs.min(c_runs) * 2 < b_runs.max(c_runs) {
            return None;
        }
        let changed = packet_ns(&c);
        (changed > 0.0).then(|| packet_ns(&b) / changed)
    }
}

/// A target's figure from its rounds (each round: its pairs' ratios): each round's median (a
/// burst of noise in one slice moves one pair, not the round), their spread over the rounds.
pub fn over_rounds(rounds: &[Vec<f64>]) -> Option<crate::stats::Summary> {
    let medians: Vec<f64> = rounds.iter().filter(|r| !r.is_empty()).map(|r| crate::stats::median(r)).collect();
    (!medians.is_empty()).then(|| crate::stats::summarize(&medians))
}

/// Pairs of slices, `read(changed)` taking one slice of a side, for as long as
/// `fits(span)` says a span that long from now ends within the stream: before each pair (its
/// span `pair_span`), and after it (a pair that overran the stream is not kept). Pair k takes
/// the base side first when k is even and the changed side first when it is odd (base,
/// changed, changed, base, base, ...), so that neither side always follows the other.
fn pairs(
    mut read: impl FnMut(bool) -> anyhow::Result<Runs>,
    mut fits: impl FnMut(Duration) -> bool,
    pair_span: Duration,
) -> anyhow::Result<Vec<Pair>> {
    let mut out = Vec::new();
    for k in 0.. {
        if !fits(pair_span) {
            break;
        }
        let changed_first = k % 2 == 1;
        let first = read(changed_first)?;
        let second = read(!changed_first)?;
        if !fits(Duration::ZERO) {
            break;
        }
        let (base, changed) = if changed_first { (second, first) } else { (first, second) };
        out.push(Pair { base, changed });
    }
    Ok(out)
}

/// Pairs of `slice`-long slices while `traffic` (a stream of `length`) runs on another thread,
/// `change` made for the changed side's slices only ([`pairs`]), BPF run-time statistics on
/// throughout.
pub fn measure(
    change: &Around,
    slice: Duration,
    length: Duration,
    traffic: impl FnOnce() -> anyhow::Result<()> + Send,
) -> anyhow::Result<Vec<Pair>> {
    crate::cost::with_stats(|| {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The stream starts after this (its thread enters the netns and pins itself first),
            // so it runs until `end` at least.
            let end = Instant::now() + length;
            let gen = s.spawn(|| {
                let r = traffic();
                done.store(true, Ordering::SeqCst);
                r
            });
            std::thread::sleep(slice);
            let one = || {
                runs_over(|| {
                    std::thread::sleep(slice);
                    Ok(())
                })
            };
            let read = |changed: bool| if changed { change.during(one) } else { one() };
            let fits = |span: Duration| !done.load(Ordering::SeqCst) && Instant::now() + span <= end;
            // Two slices and the change made and unmade (a monitor attached: a few ms).
            let measured = pairs(read, fits, 3 * slice);
            let streamed = gen.join().map_err(|_| anyhow::anyhow!("the traffic's thread panicked"))?;
            crate::traffic::joined(measured, streamed, "the traffic")
        })
    })
}

/// Marks a stream's frames by side ([`Mark`]) in slices, the sides in the pairs' order
/// ([`pairs`]: base, changed, changed, base, ..., or from changed when `changed_first`), as
/// long as `running()`. A slice, both sides
/// alike: a guard marked [`Mark::Between`] (`wait(Between)`: the host settles after the
/// change is made), its side's mark for `wait(side)`, and a guard again, in which the frames
/// still queued on their way are handled with the slice's own setting. A changed slice is made
/// with the change (`during`, [`Around::during`]) around all three, so frames sent while the
/// change is made or unmade are counted by neither side. Returns how many slices each side had (base, changed).
pub fn mark_slices(
    changed_first: bool,
    mut during: impl FnMut(&mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<()>,
    mut set: impl FnMut(Mark) -> anyhow::Result<()>,
    mut wait: impl FnMut(Mark),
    running: &dyn Fn() -> bool,
) -> anyhow::Result<[usize; 2]> {
    let mut slices = [0; 2];
    let mut slice = |side: Mark| -> anyhow::Result<()> {
        wait(Mark::Between);
        set(side)?;
        wait(side);
        set(Mark::Between)?;
        wait(Mark::Between);
        Ok(())
    };
    let mut first = changed_first;
    loop {
        for changed in [first, !first] {
            if !running() {
                return Ok(slices);
            }
            if changed {
                during(&mut || slice(Mark::Changed))?;
            } else {
                slice(Mark::Base)?;
            }
            slices[usize::from(changed)] += 1;
        }
        first = !first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_compares_time_per_packet_over_the_busy_programs() {
        // 400 + 300 ns a packet against 400 + 350: the change costs 50 ns.
        let base = Runs::of(&[("sp_uplink", 400_000, 1000), ("sp_vnf", 300_000, 1000)]);
        let changed = Runs::of(&[("sp_uplink", 800_000, 2000), ("sp_vnf", 700_000, 2000), ("sp_headend", 5_000, 1)]);
        let r = Pair { base: base.clone(), changed }.ratio().unwrap();
        assert!((r - 700.0 / 750.0).abs() < 1e-12, "{r}: a stray run of sp_headend is not a packet's time");
        let one_program = Runs::of(&[("sp_uplink", 400_000, 1000)]);
        assert_eq!(Pair { base: base.clone(), changed: one_program }.ratio(), None, "sp_vnf did not run in one slice");
        let tail = Runs::of(&[("sp_uplink", 160_000, 400), ("sp_vnf", 140_000, 400)]);
        assert_eq!(Pair { base: base.clone(), changed: tail }.ratio(), None, "the traffic stopped in one slice");
        assert_eq!(Pair { base: Runs::of(&[]), changed: Runs::of(&[]) }.ratio(), None, "nothing ran");
    }

    #[test]
    fn pairs_alternate_which_side_goes_first_and_keep_each_slice_on_its_side() {
        let slice = |ns: u64| Runs::of(&[("sp_uplink", ns * 1000, 1000)]);
        let mut sides = Vec::new();
        let read = |changed: bool| {
            sides.push(changed);
            Ok(slice(if changed { 750 } else { 700 }))
        };
        // Room for three pairs; the fourth's start does not fit.
        let mut checks = 0;
        let fits = |_| {
            checks += 1;
            checks <= 6
        };
        let p = pairs(read, fits, Duration::from_millis(150)).unwrap();
        assert_eq!(sides, [false, true, true, false, false, true]);
        assert_eq!(p.len(), 3);
        for pair in &p {
            assert_eq!(pair.ratio(), Some(700.0 / 750.0), "each slice on its side: {pair:?}");
        }
    }

    #[test]
    fn a_pair_that_overran_the_stream_is_not_kept_and_errors_end_the_pairs() {
        let read = |changed: bool| Ok(Runs::of(&[("sp_uplink", if changed { 750_000 } else { 700_000 }, 1000)]));
        // The second pair starts in time but ends past the stream.
        let mut checks = 0;
        let fits = |span: Duration| {
            checks += 1;
            checks <= 2 || (checks == 3 && !span.is_zero())
        };
        assert_eq!(pairs(read, fits, Duration::from_millis(150)).unwrap().len(), 1);
        let mut n = 0;
        let failing = |_| {
            n += 1;
            if n == 3 {
                anyhow::bail!("counters unreadable")
            }
            Ok(Runs::of(&[("sp_uplink", 1, 1)]))
        };
        assert!(pairs(failing, |_| true, Duration::ZERO).is_err());
    }

    #[test]
    fn marks_follow_the_pairs_order_with_a_guard_and_the_change_made_around_its_marks() {
        use std::cell::RefCell;
        let log = RefCell::new(Vec::new());
        let mark = RefCell::new(Mark::Between);
        let made = std::cell::Cell::new(false);
        let during = |f: &mut dyn FnMut() -> anyhow::Result<()>| {
            log.borrow_mut().push(format!("make at {:?}", mark.borrow()));
            made.set(true);
            let r = f();
            made.set(false);
            log.borrow_mut().push(format!("unmake at {:?}", mark.borrow()));
            r
        };
        let set = |m| {
            *mark.borrow_mut() = m;
            Ok(())
        };
        let wait = |m: Mark| {
            assert_eq!(m, *mark.borrow(), "waits with the mark it waits for");
            let changed = if made.get() { " (changed)" } else { "" };
            log.borrow_mut().push(format!("{m:?}{changed}"));
        };
        let checks = std::cell::Cell::new(0);
        let running = || {
            checks.set(checks.get() + 1);
            checks.get() <= 5
        };
        assert_eq!(mark_slices(false, during, set, wait, &running).unwrap(), [3, 2]);
        let slices: Vec<String> = log.borrow().iter().filter(|e| !e.contains("make") && !e.starts_with("Between")).cloned().collect();
        assert_eq!(slices, ["Base", "Changed (changed)", "Changed (changed)", "Base", "Base"]);
        let guards = log.borrow().iter().filter(|e| e.starts_with("Between")).cloned().collect::<Vec<_>>();
        let guarded = ["Between", "Between (changed)", "Between (changed)", "Between", "Between"].map(|g| [g, g]).concat();
        assert_eq!(guards, guarded, "each slice starts and ends with a guard under its own setting");
        for e in log.borrow().iter().filter(|e| e.contains("make")) {
            assert!(e.ends_with("Between"), "made or unmade while the frames counted for a side: {e}");
        }
        let sides = RefCell::new(Vec::new());
        let checked = std::cell::Cell::new(0);
        let stop = || {
            checked.set(checked.get() + 1);
            checked.get() <= 4
        };
        let set = |m| {
            if m != Mark::Between {
                sides.borrow_mut().push(m);
            }
            Ok(())
        };
        mark_slices(true, |f| f(), set, |_| (), &stop).unwrap();
        assert_eq!(*sides.borrow(), [Mark::Changed, Mark::Base, Mark::Base, Mark::Changed], "from the changed side");
        let failing = |_: &mut dyn FnMut() -> anyhow::Result<()>| anyhow::bail!("the monitor refused");
        assert!(mark_slices(false, failing, |_| Ok(()), |_| (), &|| true).is_err());
        let mut n = 0;
        let set_fails = |_| {
            n += 1;
            if n == 3 {
                anyhow::bail!("the mark's map is gone")
            }
            Ok(())
        };
        assert!(mark_slices(false, |f| f(), set_fails, |_| (), &|| true).is_err(), "a mark not set ends the slices");
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
