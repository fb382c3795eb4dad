//! What every benchmark reports with: a latency histogram, a rate, number formatting, the
//! progress bar.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

// ---------------------------------------------------------------------------------------
// Latency histogram

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is under 0.8 % of its values.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB as usize) * (64 - SUB_BITS as usize + 1);

/// Durations in nanoseconds, in log-linear buckets: exact below 256 ns, then 128 buckets
/// per power of two. Fixed memory (about 60 KB) whatever the number of samples; merges.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub(crate) fn index(v: u64) -> usize {
        let shift = (63 - (v | 1).leading_zeros()).saturating_sub(SUB_BITS);
        (SUB * u64::from(shift) + (v >> shift)) as usize
    }

    /// The value a bucket stands for: the middle of its range.
    pub(crate) fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let low = (i - SUB * shift) << shift;
        low + ((1u64 << shift) - 1) / 2
    }

    pub(crate) fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), nanoseconds; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub(crate) fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / u128::from(self.total)) as u64
        }
    }

    /// p50, p99, p99.9, max and mean, milliseconds.
    pub(crate) fn summary_ms(&self) -> Latency {
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            p50: ms(self.quantile(0.5)),
            p99: ms(self.quantile(0.99)),
            p999: ms(self.quantile(0.999)),
            max: ms(if self.total == 0 { 0 } else { self.max }),
            mean: ms(self.mean()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    pub(crate) fn json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "p50": r(self.p50),
            "p99": r(self.p99),
            "p999": r(self.p999),
            "max": r(self.max),
            "mean": r(self.mean),
        })
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.p50, self.p99, self.p999, self.max, self.mean
        )
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers

/// `1234567` as `1,234,567`.
pub(crate) fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A progress bar on stderr (hidden when stderr is not a terminal): a bar when the end is
/// known, a counter otherwise.
pub(crate) fn progress_bar(len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(len) => (
            ProgressBar::new(len),
            "{elapsed_precise} [{bar:40}] {percent:>3}% {msg}",
        ),
        None => (ProgressBar::no_length(), "{elapsed_precise} {msg}"),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Smoothed rate for the progress bar.
pub(crate) struct Rate {
    last: Instant,
    last_count: u64,
    rate: f64,
}

impl Rate {
    pub(crate) fn new() -> Self {
        Self {
            last: Instant::now(),
            last_count: 0,
            rate: 0.0,
        }
    }

    pub(crate) fn update(&mut self, count: u64) -> f64 {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt > 0.0 {
            let inst = count.saturating_sub(self.last_count) as f64 / dt;
            self.rate = if self.last_count == 0 && self.rate == 0.0 {
                inst
            } else {
                0.7 * self.rate + 0.3 * inst
            };
        }
        self.last = now;
        self.last_count = count;
        self.rate
    }
}

pub(crate) const TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        // Every value maps to a bucket whose stand-in is within 1 % of it.
        let mut prev = 0;
        for v in 0..100_000u64 {
            let i = Histogram::index(v);
            assert!(i == prev || i == prev + 1, "{v}: {prev} -> {i}");
            prev = i;
        }
        for v in (0..100_000u64)
            .chain((1..64).map(|p| (1u64 << p) - 1))
            .chain((1..64).map(|p| 1u64 << p))
            .chain([u64::MAX])
        {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            let s = Histogram::value(i) as f64;
            assert!((s - v as f64).abs() <= v as f64 * 0.01, "{v} stands as {s}");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for us in 1..=100_000u64 {
            let d = Duration::from_micros(us);
            if us % 2 == 0 {
                a.record(d)
            } else {
                b.record(d)
            }
        }
        a.merge(&b);
        assert_eq!(a.total, 100_000);
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = a.quantile(q) as f64 / 1000.0;
            assert!((got - want).abs() <= want * 0.01, "q{q}: {got} vs {want}");
        }
        assert!(a.quantile(1.0).abs_diff(100_000_000) <= 1_000_000);
        assert_eq!(a.max, 100_000_000);
        assert_eq!(a.min, 1000);
        let l = a.summary_ms();
        assert!((l.mean - 50.0005).abs() < 0.001, "{l:?}");
        assert_eq!(Histogram::new().summary_ms().p99, 0.0);
    }

    #[test]
    fn thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
