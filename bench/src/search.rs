//! The PDR search: the highest rate a path forwards with at most 0.5 % loss, by trials at
//! chosen rates (pure: the trials are the caller's), one search at a time or several with their
//! trials in turns.

use std::sync::mpsc;

use crate::traffic::{LOSS_BOUND, RETRY_BELOW};

/// Whether `pps` passes (≤ 0.5 % loss) by `trial` (rate → loss, rate really offered), with the
/// rate really offered when it does. A trial that fails by little (under [`RETRY_BELOW`] lost:
/// a transient stall of the machine looks like that, an overload does not) is run once more,
/// and the rate fails only if that one fails too: one hiccup of the host must not cap a search
/// below the rate it failed at. `retries` counts the trials run again and those that passed.
fn passes(trial: &mut impl FnMut(f64) -> anyhow::Result<(f64, f64)>, pps: f64, retries: &mut (u64, u64)) -> anyhow::Result<Option<f64>> {
    let (loss, offered) = trial(pps)?;
    if loss <= LOSS_BOUND {
        return Ok(Some(offered));
    }
    if loss >= RETRY_BELOW {
        return Ok(None);
    }
    retries.0 += 1;
    let (loss, offered) = trial(pps)?;
    let passed = loss <= LOSS_BOUND;
    retries.1 += u64::from(passed);
    Ok(passed.then_some(offered))
}

/// Highest rate (pps) up to `ceiling` with at most 0.5 % loss by `trial` (rate, 0 for unpaced →
/// loss, rate really offered): a passing rate and a failing one above it found first, then
/// bisected until they are within 2^-`steps` of each other. Without a `hint`, from the ceiling
/// down by halving (the steps resolve slow paths, the kernel proxy with 1,000 rules, as finely
/// as fast ones); with one (the scenario's last PDR), by steps of 1.25× from 0.9× the hint, up
/// or down, which takes fewer trials. (What a path delivers overloaded is no bound: it may
/// livelock below its PDR.) The answer is the rate really offered by the best passing trial.
fn search_pdr(
    mut trial: impl FnMut(f64) -> anyhow::Result<(f64, f64)>,
    ceiling: f64,
    hint: Option<f64>,
    steps: u32,
    retries: &mut (u64, u64),
) -> anyhow::Result<f64> {
    let mut pass = |pps: f64| passes(&mut trial, pps, retries);
    let (mut lo, mut hi, mut best) = match hint.filter(|h| *h > 0.0) {
        None => {
            if let Some(top) = pass(0.0)? {
                return Ok(top);
            }
            let (mut lo, mut hi) = (ceiling / 2.0, ceiling);
            loop {
                if let Some(best) = pass(lo)? {
                    break (lo, hi, best);
                }
                if lo < 500.0 {
                    return Ok(0.0);
                }
                (hi, lo) = (lo, lo / 2.0);
            }
        }
        Some(h) => {
            let mut lo = (h * 0.9).min(ceiling);
            match pass(lo)? {
                Some(mut best) => loop {
                    if lo >= ceiling {
                        return Ok(best);
                    }
                    let hi = (lo * 1.25).min(ceiling);
                    match pass(hi)? {
                        Some(b) => (lo, best) = (hi, b),
                        None => break (lo, hi, best),
                    }
                },
                None => loop {
                    let hi = lo;
                    lo /= 1.25;
                    if let Some(best) = pass(lo)? {
                        break (lo, hi, best);
                    }
                    if lo < 500.0 {
                        return Ok(0.0);
                    }
                },
            }
        }
    };
    while hi - lo > lo / f64::from(1u32 << steps) {
        let mid = (lo + hi) / 2.0;
        match pass(mid)? {
            Some(b) => (lo, best) = (mid, b),
            None => hi = mid,
        }
    }
    Ok(best)
}

/// What a search running in [`interleaved`] asks of the thread that runs the trials.
enum Ask {
    Trial(f64),
    Done(anyhow::Result<f64>, (u64, u64)),
}

/// [`search_pdr`] of several paths at once, their trials in turns: one trial of search 0, then
/// of 1, ..., then of 0 again (a finished search drops out of the turns). The machine's slow
/// moments last seconds, so a search run after another meets other moments than its own; in
/// turns, every search is spread over the same time and paths compared with each other meet
/// the same moments alike. `trial(i, rate)`: search i's trial (run on the calling thread, in
/// turn order). Returns each search's PDR and the retries of them all (see [`search_pdr`]).
pub fn interleaved(
    hints: &[Option<f64>],
    ceiling: f64,
    steps: u32,
    mut trial: impl FnMut(usize, f64) -> anyhow::Result<(f64, f64)>,
) -> (Vec<anyhow::Result<f64>>, (u64, u64)) {
    let n = hints.len();
    let mut results: Vec<Option<anyhow::Result<f64>>> = (0..n).map(|_| None).collect();
    let mut retries = (0, 0);
    std::thread::scope(|scope| {
        let (ask, asked) = mpsc::channel::<(usize, Ask)>();
        let mut answer = Vec::with_capacity(n);
        for (i, &hint) in hints.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<anyhow::Result<(f64, f64)>>();
            answer.push(tx);
            let ask = ask.clone();
            scope.spawn(move || {
                let mut retries = (0, 0);
                let run = |pps| {
                    ask.send((i, Ask::Trial(pps))).map_err(|_| anyhow::anyhow!("the trials' thread is gone"))?;
                    rx.recv().map_err(|_| anyhow::anyhow!("the trials' thread is gone"))?
                };
                let pdr = search_pdr(run, ceiling, hint, steps, &mut retries);
                let _ = ask.send((i, Ask::Done(pdr, retries)));
            });
        }
        drop(ask);
        // Each search has at most one question pending; they are answered in turn order.
        let mut pending: Vec<Option<Ask>> = (0..n).map(|_| None).collect();
        let mut turn = 0;
        while results.iter().any(Option::is_none) {
            let i = (turn..turn + n).map(|t| t % n).find(|&i| results[i].is_none()).expect("a search still runs");
            while pending[i].is_none() {
                let (j, a) = asked.recv().expect("every search ends with Done");
                pending[j] = Some(a);
            }
            match pending[i].take().expect("waited for") {
                Ask::Trial(pps) => {
                    let _ = answer[i].send(trial(i, pps));
                }
                Ask::Done(pdr, r) => {
                    results[i] = Some(pdr);
                    retries = (retries.0 + r.0, retries.1 + r.1);
                }
            }
            turn = i + 1;
        }
    });
    (results.into_iter().map(|r| r.expect("every search ended")).collect(), retries)
}

/// The order of `n` scenarios' turns in repetition (or part) `rep`: as given in even ones,
/// reversed in odd ones. Turns go round, so each scenario's trials follow one neighbour's in
/// even repetitions and the other's in odd ones: whatever a trial leaves behind (deferred work
/// after 1,000 namespaces' traffic) is not always paid by the same next scenario, and of two
/// neighbours each follows the other in half the repetitions.
pub fn turn_order(n: usize, rep: usize) -> Vec<usize> {
    if rep.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

#[cfg(test)]
mod tests {
    /// Who runs right before whom, turns going round, over `reps` repetitions.
    fn predecessors(n: usize, reps: usize) -> Vec<Vec<usize>> {
        let mut before = vec![Vec::new(); n];
        for rep in 0..reps {
            let order = turn_order(n, rep);
            for (k, &i) in order.iter().enumerate() {
                before[i].push(order[(k + n - 1) % n]);
            }
        }
        before
    }

    #[test]
    fn turns_change_each_scenarios_predecessor_by_repetition() {
        // sp, plain, installed, one: installed no longer always follows plain, and installed
        // and one each follow the other in half the repetitions.
        let before = predecessors(4, 4);
        assert_eq!(before[2], vec![1, 3, 1, 3]);
        assert_eq!(before[3], vec![2, 0, 2, 0]);
        for (i, b) in before.iter().enumerate() {
            assert!(!b.contains(&i), "scenario {i} follows itself: {b:?}");
        }
        // A pair (a cost round's two lanes) takes turns at going first.
        assert_eq!((0..4).map(|r| turn_order(2, r)[0]).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
    }

    use super::*;

    /// A system that forwards `capacity` pps: a trial above it loses the excess (unpaced: the
    /// ceiling's worth); the trials numbered in `stalls` lose 3 % whatever the rate (a stall
    /// of the host). Returns the PDR found, the trials run and the retries (run, passed).
    fn against(capacity: f64, ceiling: f64, hint: Option<f64>, stalls: &[usize]) -> (f64, usize, (u64, u64)) {
        let mut n = 0;
        let mut retries = (0, 0);
        let trial = |pps: f64| {
            n += 1;
            let offered = if pps == 0.0 { ceiling } else { pps };
            let loss = if stalls.contains(&n) { 0.03 } else { (1.0 - capacity / offered).max(0.0) };
            Ok((loss, offered))
        };
        let pdr = search_pdr(trial, ceiling, hint, 8, &mut retries).unwrap();
        (pdr, n, retries)
    }

    #[test]
    fn the_search_finds_the_capacity_to_its_precision_from_the_ceiling_or_a_hint() {
        for capacity in [380_000.0, 123_456.0, 4_000.0] {
            for hint in [None, Some(capacity), Some(capacity * 0.6), Some(capacity * 1.7)] {
                let (pdr, _, retries) = against(capacity, 4_300_000.0, hint, &[]);
                assert!(pdr <= capacity * 1.005 && pdr >= capacity * (1.0 - 1.0 / 256.0), "{capacity} {hint:?}: {pdr}");
                assert_eq!(retries.1, 0, "a rate over the capacity fails again when retried ({retries:?})");
            }
        }
        // An unpaced trial that passes is the answer.
        assert_eq!(against(5_000_000.0, 4_300_000.0, None, &[]).0, 4_300_000.0);
    }

    #[test]
    fn one_stall_does_not_cap_the_search_and_a_hint_takes_fewer_trials() {
        let (capacity, ceiling) = (400_000.0, 4_300_000.0);
        // Trial 5 from the ceiling: the first rate under the capacity (ceiling / 16, 269 kpps).
        for stall in 1..=14 {
            let (pdr, _, retries) = against(capacity, ceiling, None, &[stall]);
            assert!(pdr >= capacity * (1.0 - 1.0 / 256.0), "stall at trial {stall}: {pdr} ({retries:?})");
        }
        let (_, _, retries) = against(capacity, ceiling, None, &[5]);
        assert_eq!(retries.1, 1, "the stalled trial run again, and passed ({retries:?})");
        let (cold, warm) = (against(capacity, ceiling, None, &[]).1, against(capacity, ceiling, Some(capacity * 1.01), &[]).1);
        assert!(warm < cold, "from the last PDR {warm} trials, from the ceiling {cold}");
    }

    #[test]
    fn interleaved_searches_take_turns_and_find_what_each_finds_alone() {
        let (ceiling, caps) = (4_300_000.0, [380_000.0, 120_000.0, 390_000.0]);
        let hints = [None, Some(150_000.0), Some(380_000.0)];
        // Search 1's trial 3 meets a stall (3 % lost): it is retried in its next turn.
        let (mut order, mut trials) = (Vec::new(), [0usize; 3]);
        let (pdrs, retries) = interleaved(&hints, ceiling, 8, |i, pps| {
            order.push(i);
            trials[i] += 1;
            let offered = if pps == 0.0 { ceiling } else { pps };
            let loss = if i == 1 && trials[i] == 3 { 0.03 } else { (1.0 - caps[i] / offered).max(0.0) };
            Ok((loss, offered))
        });
        // Each search as it runs alone (with the same stall), trial for trial.
        let mut alone_retries = (0, 0);
        for (i, pdr) in pdrs.into_iter().enumerate() {
            let (alone, n, r) = against(caps[i], ceiling, hints[i], if i == 1 { &[3] } else { &[] });
            assert_eq!((pdr.unwrap(), trials[i]), (alone, n), "search {i}");
            alone_retries = (alone_retries.0 + r.0, alone_retries.1 + r.1);
        }
        assert_eq!(retries, alone_retries);
        // Turns: while every search runs, no search runs two trials in a row.
        let all_running = order.len().min(3 * trials.iter().min().unwrap());
        for w in order[..all_running].windows(3) {
            assert!(w[0] != w[1] && w[1] != w[2] && w[0] != w[2], "{order:?}");
        }
        // A failing trial ends its own search with its error; the others go on.
        let (pdrs, _) = interleaved(&[None, None], ceiling, 8, |i, pps| {
            anyhow::ensure!(i == 0, "the generator is gone");
            Ok(((1.0 - 200_000.0 / if pps == 0.0 { ceiling } else { pps }).max(0.0), pps))
        });
        assert!(pdrs[0].is_ok() && pdrs[1].as_ref().unwrap_err().to_string().contains("generator"), "{pdrs:?}");
    }
}
