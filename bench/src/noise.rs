//! The host's noise, sampled while nothing of the bench runs: dependent loads through a working
//! set that stays in L1 (16 KiB: what the CPU itself gives) and through one bigger than a core's
//! L2 but smaller than the L3 this VM shares with its neighbours (4 MiB). On 2026-12-05 the L1
//! chase on the SUT CPU ran at 1.37-1.49 ns a load throughout, while the 4 MiB chase read
//! 15-17 ns in quiet moments and 30-107 ns in noisy ones, for seconds at a time, with no steal
//! time reported: a neighbour thrashing the shared L3. The PDRs of the same code move with it.
//! A full run samples this at its start and its end (`host_noise`), so that its spreads can be
//! read against the noise of its hour. (Probed between trials, the 4 MiB chase also reads the
//! trials' own aftermath for ~100 ms: the sample is taken without traffic.)

use std::time::{Duration, Instant};

use anyhow::Context;

/// One cache line per element: each load of a chase bigger than L1 misses it.
const LINE: usize = 64 / std::mem::size_of::<usize>();
/// The working set that stays in L1.
const L1_BYTES: usize = 16 << 10;
/// The working set over L2 and in L3: four times a core's L2 here, an eighth of the L3.
const L3_BYTES: usize = 4 << 20;
/// How long each chase of a step runs (after a warming lap).
const STEP: Duration = Duration::from_millis(50);
/// A 4 MiB reading over this many times the sample's quietest is noise (quiet readings vary by
/// ~1.3x).
pub const NOISY_FACTOR: f64 = 1.6;

/// A pointer chase over `bytes` (whole cache lines, at least two) in one random cycle.
struct Probe {
    next: Vec<usize>,
    at: usize,
}

/// A single cycle through `0..n` in a random order (shuffled by the seed's xorshift), as
/// `next[i]`: the hardware prefetchers cannot guess the next line.
fn cycle(n: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let mut next = vec![0; n];
    for w in 0..n {
        next[order[w]] = order[(w + 1) % n];
    }
    next
}

impl Probe {
    fn new(bytes: usize) -> Self {
        let lines = (bytes / 64).max(2);
        let mut next = vec![0; lines * LINE];
        for (i, n) in cycle(lines, 0x9e37_79b9_7f4a_7c15).into_iter().enumerate() {
            next[i * LINE] = n * LINE;
        }
        Self { next, at: 0 }
    }

    /// Nanoseconds per dependent load, chased for about `dur` after one lap that brings the
    /// working set back into the cache (what evicted it meanwhile is not what is measured).
    fn ns_per_load(&mut self, dur: Duration) -> f64 {
        for _ in 0..self.next.len() / LINE {
            self.at = self.next[self.at];
        }
        let (start, cpu_start) = (Instant::now(), thread_cpu_ns());
        let mut loads = 0u64;
        while start.elapsed() < dur {
            for _ in 0..1024 {
                self.at = self.next[self.at];
            }
            loads += 1024;
        }
        std::hint::black_box(self.at);
        (thread_cpu_ns() - cpu_start) / loads as f64
    }
}

/// The calling thread's CPU time (ns): a chase preempted by another task does not read slow
/// for it (the hypervisor's steal, invisible to the guest, still counts).
fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// The two chases in turns on a thread pinned to `cpu` for `dur`: ns per load in L1 and in L3,
/// step by step.
fn readings(cpu: usize, dur: Duration) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::sys::pin_to_cpu(cpu)?;
            let (mut l1, mut l3) = (Probe::new(L1_BYTES), Probe::new(L3_BYTES));
            let (mut in_l1, mut in_l3) = (Vec::new(), Vec::new());
            let start = Instant::now();
            while start.elapsed() < dur {
                in_l1.push(l1.ns_per_load(STEP));
                in_l3.push(l3.ns_per_load(STEP));
            }
            Ok((in_l1, in_l3))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the noise probe panicked"))?
    })
}

/// The host's noise on `cpu` over `dur` (see the module): [`summary`] of the readings, or why
/// there are none (`error`: a run does not lose its results to its noise sample).
pub fn host(cpu: usize, dur: Duration) -> serde_json::Value {
    match readings(cpu, dur).with_context(|| format!("noise probe on CPU {cpu}")) {
        Ok((l1, l3)) => summary(&l1, &l3, dur),
        Err(e) => serde_json::json!({"seconds": dur.as_secs_f64(), "steps": 0, "error": format!("{e:#}")}),
    }
}

/// L1's median and maximum, L3's floor (quietest), median, 90th percentile and maximum, and
/// the share of L3 readings that were noise (over [`NOISY_FACTOR`] times the floor).
pub fn summary(l1: &[f64], l3: &[f64], dur: Duration) -> serde_json::Value {
    if l1.is_empty() || l3.is_empty() {
        return serde_json::json!({"seconds": dur.as_secs_f64(), "steps": 0});
    }
    let r = |x: f64| (x * 100.0).round() / 100.0;
    let (in_l1, in_l3) = (crate::stats::summarize(l1), crate::stats::summarize(l3));
    let noisy = l3.iter().filter(|&&x| x > in_l3.min * NOISY_FACTOR).count();
    serde_json::json!({
        "seconds": dur.as_secs_f64(),
        "steps": l3.len(),
        "l1_ns": {"median": r(in_l1.median), "max": r(in_l1.max)},
        "l3_ns": {
            "floor": r(in_l3.min),
            "median": r(in_l3.median),
            "p90": r(crate::stats::percentile(l3, 90.0)),
            "max": r(in_l3.max),
        },
        "l3_noisy_share": r(noisy as f64 / l3.len() as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_visits_every_line_once_per_lap() {
        for n in [2, 3, 64, 1000] {
            let next = cycle(n, 7);
            let (mut at, mut seen) = (0, vec![false; n]);
            for _ in 0..n {
                assert!(!seen[at], "line {at} visited twice in one lap of {n}");
                seen[at] = true;
                at = next[at];
            }
            assert_eq!(at, 0, "a lap of {n} ends where it began");
        }
    }

    #[test]
    fn noise_is_an_l3_reading_well_over_the_quietest() {
        let l3 = [40.0, 16.0, 25.0, 26.0, 107.0];
        let s = summary(&[1.4, 1.5, 1.4, 1.4, 1.4], &l3, Duration::from_secs(1));
        // 25 is under 1.6x the floor of 16, 26 over it.
        assert_eq!(s["l3_noisy_share"], 0.6);
        assert_eq!((s["l3_ns"]["floor"].as_f64(), s["l3_ns"]["max"].as_f64()), (Some(16.0), Some(107.0)));
        assert_eq!((s["l1_ns"]["median"].as_f64(), s["l1_ns"]["max"].as_f64()), (Some(1.4), Some(1.5)));
        assert_eq!(summary(&[], &[], Duration::from_secs(1))["steps"], 0);
    }

    #[test]
    fn a_pinned_sample_reads_l1_faster_than_l3() {
        let (l1, l3) = readings(0, Duration::from_millis(300)).unwrap();
        assert!(l1.len() >= 2 && l1.len() == l3.len(), "{} and {} steps", l1.len(), l3.len());
        // In release builds ~10x (1.4 against 15 ns); in a test build the loop's own overhead
        // (~9 ns a step) narrows it to ~2x.
        assert!(crate::stats::median(&l1) * 1.3 < crate::stats::median(&l3), "{l1:?} {l3:?}");
        let failed = host(4096, Duration::from_millis(10));
        assert!(failed["error"].as_str().is_some_and(|e| e.contains("CPU 4096")), "{failed}");
    }
}
