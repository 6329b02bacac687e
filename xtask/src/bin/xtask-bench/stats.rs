//! Order statistics of samples: the medians the program table reports, and the high
//! percentiles of the daemon's latencies (a monitoring agent notices the slow polls,
//! not the average ones).

/// The middle value; of an even count, the mean of the two middle ones, rounded up.
pub fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]).div_ceil(2),
    }
}

/// The nearest-rank percentile: the smallest sample that at least `percent` % of the
/// samples do not exceed (p99 of 2,000 samples is the 1,980th smallest). 0 for none.
pub fn percentile(values: &[u64], percent: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[4, 1, 3, 2]), 3);
        assert_eq!(median(&[]), 0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=2000).rev().collect();
        assert_eq!(percentile(&values, 99.0), 1980);
        assert_eq!(percentile(&values, 50.0), 1000);
        assert_eq!(percentile(&values, 100.0), 2000);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
    }
}
