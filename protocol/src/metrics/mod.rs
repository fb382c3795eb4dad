//! Metrics for Prometheus: the `[metrics]` settings every weir server takes, a latency
//! [`Histogram`] kept in atomics, the text exposition format ([`Exposition`], version
//! 0.0.4), and a small HTTP endpoint that serves it ([`MetricsServer`]).
//!
//! Recording costs a few relaxed atomic adds; the text is built only when scraped.

mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::ServerStats;

pub use http::{HttpLimits, HttpStats, MetricsServer, RenderFn};

/// The `[metrics]` table of a server's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served, e.g. `"127.0.0.1:9100"` (default none: off).
    pub listen: Option<String>,
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.listen.as_deref() {
            Some("") => Err("metrics.listen must not be empty (leave it out instead)".into()),
            _ => Ok(()),
        }
    }
}

/// Bucket bounds of request latencies, seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations with fixed bucket bounds (seconds, ascending).
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: Box<[AtomicU64]>,
    /// Observations above the last bound.
    over: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self.bounds.iter().position(|b| secs <= *b);
        match slot.and_then(|i| self.buckets.get(i)) {
            Some(b) => b.fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Saturates rather than wraps (584 years of observed time).
        let _ = self
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(nanos))
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .fold(self.over.load(Ordering::Relaxed), u64::saturating_add)
    }
}

/// The kind of a metric family, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A value as the text format writes it.
pub trait Value {
    fn write_to(&self, out: &mut String);
}

impl Value for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for usize {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// The text exposition format being written: families one after another, each with its
/// `# HELP` and `# TYPE` lines, then its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Value) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram of the family.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (bound, count) in h.bounds.iter().zip(h.buckets.iter()) {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            le.clear();
            bound.write_to(&mut le);
            self.bucket(name, labels, &le, cumulative);
        }
        let total = cumulative.saturating_add(h.over.load(Ordering::Relaxed));
        self.bucket(name, labels, "+Inf", total);
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, total)
    }

    fn bucket(&mut self, name: &str, labels: &[(&str, &str)], le: &str, count: u64) {
        self.out.push_str(name);
        self.out.push_str("_bucket");
        write_labels(&mut self.out, labels, Some(le));
        let _ = writeln!(self.out, " {count}");
    }

    /// Connection gauges and counters of a weir listener, `prefix`ed (`weir_` for the
    /// broker, `weir_namesrv_` for a name server).
    pub fn connections(&mut self, prefix: &str, net: &ServerStats) -> &mut Self {
        let n = |s: &str| format!("{prefix}{s}");
        self.single(
            &n("connections"),
            Kind::Gauge,
            "Client connections open now.",
            net.connections,
        );
        self.single(
            &n("connections_refused_total"),
            Kind::Counter,
            "Connections closed at once for the cap (net.max_connections).",
            net.refused,
        );
        let name = n("connections_closed_total");
        self.family(
            &name,
            Kind::Counter,
            "Connections closed by the server or lost, by reason.",
        )
        .sample(&name, &[("reason", "bad_frame")], net.bad_frames)
        .sample(&name, &[("reason", "frame_timeout")], net.frame_timeouts)
        .sample(&name, &[("reason", "idle")], net.idle_closes)
        .sample(&name, &[("reason", "unread")], net.unread_closes)
        .sample(&name, &[("reason", "reset")], net.resets)
        .sample(
            &name,
            &[("reason", "tls_handshake")],
            net.tls_handshake_failures,
        )
        .sample(&name, &[("reason", "tls_required")], net.plaintext_refused);
        self.single(
            &n("pending_requests"),
            Kind::Gauge,
            "Requests read and not yet answered, over all connections.",
            net.pending_requests,
        );
        self.single(
            &n("pending_bytes"),
            Kind::Gauge,
            "Bytes of requests and answers held, over all connections.",
            net.pending_bytes,
        );
        self.single(
            &n("connection_pauses_total"),
            Kind::Counter,
            "Times a connection paused because all together held net.max_pending_bytes_total.",
            net.budget_pauses,
        );
        self.single(
            &n("answers_refused_total"),
            Kind::Counter,
            "Answers refused as busy past their connection's share while all together held net.max_pending_bytes_total.",
            net.answers_refused,
        )
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|v| ("le", v))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value from a human name: lowercase, words joined by `_` ("system busy" →
/// `system_busy`, "pull: nothing found" → `pull_nothing_found`).
pub fn label_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static B: &[f64] = &[0.001, 0.01];
        let h = Histogram::new(B);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        assert_eq!(h.count(), 4);
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "h")
            .histogram("x_seconds", &[("a", "b")], &h);
        let text = e.finish();
        assert!(
            text.contains("x_seconds_bucket{a=\"b\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{a=\"b\",le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{a=\"b\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_sum{a=\"b\"} 1.0105\n"), "{text}");
    }

    #[test]
    fn labels_and_values_are_escaped() {
        let mut e = Exposition::new();
        e.family("y_total", Kind::Counter, "a\nb")
            .sample("y_total", &[("t", "q\"\\\n")], 3u64)
            .sample("y_total", &[], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP y_total a\\nb\n# TYPE y_total counter\ny_total{t=\"q\\\"\\\\\\n\"} 3\ny_total +Inf\n"
        );
        assert_eq!(label_name("pull: nothing found"), "pull_nothing_found");
        assert_eq!(label_name("not a master"), "not_a_master");
    }
}
