//! Summaries the report is made of (pure): medians with their spread, nearest-rank
//! percentiles, and ratios of paired repetitions. Nothing is dropped: every sample is kept in
//! the JSON next to its summary.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

pub fn median(xs: &[f64]) -> f64 {
    assert!(!xs.is_empty(), "median of nothing");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile (p in 0..=100): always one of the samples.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    assert!(!xs.is_empty(), "percentile of nothing");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn summarize(xs: &[f64]) -> Summary {
    Summary {
        median: median(xs),
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        samples: xs.to_vec(),
    }
}

/// Ratios of repetition i of `x` to repetition i of `y` (measured side by side).
pub fn ratios(x: &[f64], y: &[f64]) -> Summary {
    assert_eq!(x.len(), y.len(), "ratios need paired repetitions");
    let r: Vec<f64> = x.iter().zip(y).map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 }).collect();
    summarize(&r)
}

/// A target on a ratio holds only when the whole spread is on the right side of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    /// The median is on the right side, the spread crosses the target.
    Inconclusive,
    Missed,
}

pub fn at_least(s: &Summary, target: f64) -> Verdict {
    if s.min >= target {
        Verdict::Met
    } else if s.median >= target {
        Verdict::Inconclusive
    } else {
        Verdict::Missed
    }
}

pub fn at_most(s: &Summary, target: f64) -> Verdict {
    if s.max <= target {
        Verdict::Met
    } else if s.median <= target {
        Verdict::Inconclusive
    } else {
        Verdict::Missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn nearest_rank_percentiles_are_samples() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 50.0);
        assert_eq!(percentile(&xs, 99.0), 99.0);
        assert_eq!(percentile(&xs, 100.0), 100.0);
        assert_eq!(percentile(&[7.0, 3.0], 99.0), 7.0);
        assert_eq!(percentile(&[7.0, 3.0], 0.0), 3.0);
    }

    #[test]
    fn ratios_pair_repetitions_and_keep_every_sample() {
        let s = ratios(&[110.0, 90.0, 100.0], &[100.0, 100.0, 100.0]);
        assert_eq!(s.samples, vec![1.1, 0.9, 1.0]);
        assert_eq!((s.min, s.median, s.max), (0.9, 1.0, 1.1));
    }

    #[test]
    fn a_target_is_met_only_when_the_spread_does_not_cross_it() {
        let s = summarize(&[0.99, 1.01, 1.02]);
        assert_eq!(at_least(&s, 1.0), Verdict::Inconclusive);
        assert_eq!(at_least(&s, 0.98), Verdict::Met);
        assert_eq!(at_least(&s, 1.05), Verdict::Missed);
        assert_eq!(at_most(&summarize(&[12.0, 19.0]), 20.0), Verdict::Met);
        assert_eq!(at_most(&summarize(&[12.0, 19.0, 25.0]), 20.0), Verdict::Inconclusive);
        assert_eq!(at_most(&summarize(&[22.0, 25.0]), 20.0), Verdict::Missed);
    }
}
