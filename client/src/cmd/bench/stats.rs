//! Rate and latency arithmetic of `ordo bench`, defined as in the peer
//! harness (`peers/broker-bench`) so the ratios against NATS compare like
//! with like.

use hdrhistogram::Histogram;

/// Largest latency the histograms hold, in µs (60 s); larger ones saturate.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in µs with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low 1, high >= 2 * low, 3 digits).
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Records one latency (µs), clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, latency_us: u64) {
    h.saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
}

/// Messages per second for `count` messages over `[start_us, end_us]`.
///
/// As broker-bench: a subscriber's delivered rate is its measured messages
/// over the span from the (first) publisher's start to its last measured
/// arrival; the publish rate is messages over the publishers' span.
pub fn rate(count: u64, start_us: u64, end_us: u64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let span = end_us.saturating_sub(start_us).max(1) as f64 / 1e6;
    count as f64 / span
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Samples behind them.
    pub samples: u64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }
}

/// Mean and minimum of per-subscriber rates (0 when there are none).
pub fn mean_min(rates: &[f64]) -> (f64, f64) {
    if rates.is_empty() {
        return (0.0, 0.0);
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    (mean, min)
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    out.push_str(&digits[..first.min(digits.len())]);
    for chunk in digits.as_bytes()[first.min(digits.len())..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
    }
    out
}

/// Payload bytes per second of `rate` messages of `size` bytes, in MiB/s.
pub fn mib_per_sec(rate: f64, size: usize) -> f64 {
    rate * size as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_count_over_span() {
        assert_eq!(rate(1000, 1_000_000, 2_000_000), 1000.0);
        assert_eq!(rate(500, 0, 250_000), 2000.0);
        assert_eq!(rate(0, 0, 10), 0.0);
        // A zero span counts as 1 µs rather than dividing by zero.
        assert_eq!(rate(1, 5, 5), 1e6);
        assert_eq!(rate(1, 9, 5), 1e6);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            record(&mut h, v);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.samples, 1000);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p90_us, 900);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.p999_us, 999);
        assert_eq!(p.max_us, 1000);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn mean_min_and_formatting() {
        assert_eq!(mean_min(&[3.0, 1.0, 2.0]), (2.0, 1.0));
        assert_eq!(mean_min(&[]), (0.0, 0.0));
        assert_eq!(thousands(1_234_567.6), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(mib_per_sec(8192.0, 128), 1.0);
    }
}
