//! What the proxy counts on the request path: requests by command and outcome, clients,
//! upstream connections and latency, in plain atomics. The other numbers live next to what
//! they count (`cache::Stats`, the breaker, `ttl::Counters`); `report` reads them all at once
//! and renders them (`/metrics`, `PROXY INFO`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::command::TABLE;

/// How the proxy served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the local tier.
    Hit,
    /// A cacheable read sent upstream (or waiting for an identical one).
    Miss,
    /// Forwarded to Redis (shared or pinned connection).
    Forwarded,
    /// Answered by the proxy (HELLO, SELECT, CLIENT SETNAME, PROXY ..., PING while open).
    Local,
    /// Refused by the proxy with an error (arity of its own commands, TTL refusal, denied, ...).
    Error,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Hit, "hit"),
    (Outcome::Miss, "miss"),
    (Outcome::Forwarded, "forwarded"),
    (Outcome::Local, "local"),
    (Outcome::Error, "error"),
];

/// Counts one more (every counter of the proxy is a relaxed atomic: read only for reports).
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counters of the request path.
pub struct Metrics {
    started: Instant,
    /// Per command slot, per outcome.
    requests: Box<[[AtomicU64; 5]]>,
    pub clients_connected: AtomicI64,
    pub clients_accepted: AtomicU64,
    /// Turned away at `listen.max_clients`.
    pub clients_refused: AtomicU64,
    /// Connections closed for a malformed request.
    pub protocol_errors: AtomicU64,
    /// Shared upstream connections up, and pinned ones open.
    pub upstream_connections: AtomicI64,
    /// Upstream connections whose login Redis refused (the `[upstream]` credentials).
    pub upstream_login_refused: AtomicU64,
    /// From a batch's write to its last reply, on shared connections.
    pub upstream_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: (0..=TABLE.len()).map(|_| Default::default()).collect(),
            clients_connected: AtomicI64::new(0),
            clients_accepted: AtomicU64::new(0),
            clients_refused: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            upstream_connections: AtomicI64::new(0),
            upstream_login_refused: AtomicU64::new(0),
            upstream_latency: Histogram::default(),
        }
    }
}

impl Metrics {
    /// One request of command slot `command` ([`crate::command::Command::slot`]) served with `outcome`.
    pub fn request(&self, command: usize, outcome: Outcome) {
        if let Some(slot) = self.requests.get(command) {
            slot[outcome as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Non-zero request counts: (command, outcome, count).
    pub fn requests(&self) -> Vec<(&'static str, &'static str, u64)> {
        // Every command of the table under its own name, any other as `other`: a client cannot
        // create label values.
        let names = TABLE.iter().map(|spec| spec.name).chain(["other"]);
        let mut out = Vec::new();
        for (name, slot) in names.zip(self.requests.iter()) {
            for ((_, outcome), count) in OUTCOMES.iter().zip(slot) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    out.push((name, *outcome, count));
                }
            }
        }
        out
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket is +Inf).
const BOUNDS_US: [u64; 14] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000];

/// A latency histogram with fixed buckets, in atomics.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: Default::default(), sum_us: AtomicU64::new(0) }
    }
}

/// A histogram's state: per-bucket counts (not cumulative) by upper bound in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let bucket = BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let bounds = BOUNDS_US.iter().map(|&us| us as f64 / 1e6).chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(&self.buckets).map(|(b, n)| (b, n.load(Ordering::Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot { buckets, count, sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6 }
    }
}

impl HistogramSnapshot {
    /// The upper bound of the bucket holding quantile `q` (0..=1), in seconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let rank = (self.count as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in &self.buckets {
            seen += n;
            if seen >= rank && self.count > 0 {
                return *bound;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    #[test]
    fn requests_are_counted_by_command_and_outcome() {
        let metrics = Metrics::default();
        metrics.request(lookup(b"GET").slot, Outcome::Hit);
        metrics.request(lookup(b"get").slot, Outcome::Hit);
        metrics.request(lookup(b"FOO").slot, Outcome::Forwarded);
        assert_eq!(metrics.requests(), vec![("GET", "hit", 2), ("other", "forwarded", 1)]);
    }

    #[test]
    fn histograms_bucket_and_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.00005, 1));
        assert_eq!(s.buckets[4], (0.001, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((s.sum_seconds - 60.00074).abs() < 1e-9);
        assert_eq!(s.quantile(0.5), 0.001);
    }
}
