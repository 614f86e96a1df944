//! Prometheus text (OpenMetrics) at `[metrics] address` `/metrics`, encoded by
//! prometheus-client from a [`Snapshot`] taken at each scrape.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{debug, warn};

use super::Snapshot;
use crate::breaker::State;
use crate::context::Context;
use crate::metrics::HistogramSnapshot;

/// The Prometheus text for `snapshot`.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("nearcache");
    registry.register_collector(Box::new(Exporter(snapshot)));
    let mut out = String::new();
    // Writing to a String cannot fail, nor can the collector.
    let _ = text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Exporter(Snapshot);

impl Collector for Exporter {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let requests: Vec<([(&str, &str); 2], u64)> =
            s.requests.iter().map(|(c, o, n)| ([("command", *c), ("outcome", *o)], *n)).collect();
        counters(&mut e, "requests", "Requests by command and how the proxy served them", &requests)?;
        gauge(&mut e, "clients_connected", "Clients connected", s.clients_connected)?;
        gauge(&mut e, "tasks_alive", "Tasks alive in the proxy's runtime", s.tasks_alive as i64)?;
        counter(&mut e, "clients_accepted", "Client connections accepted", s.clients_accepted)?;
        counter(&mut e, "clients_refused", "Client connections refused at listen.max_clients", s.clients_refused)?;
        counter(&mut e, "protocol_errors", "Client connections closed for a malformed request", s.protocol_errors)?;
        let ttl = [
            ([("action", "enforced")], s.ttl_enforced),
            ([("action", "clamped")], s.ttl_clamped),
            ([("action", "refused")], s.ttl_refused),
        ];
        counters(&mut e, "ttl_writes", "Writes changed by TTL enforcement", &ttl)?;
        if let Some(c) = &s.cache {
            gauge(&mut e, "cache_entries", "Keys held by the local tier", c.entries as i64)?;
            gauge(&mut e, "cache_bytes", "Bytes held by the local tier (keys, replies, overhead)", c.bytes as i64)?;
            gauge(&mut e, "cache_max_bytes", "cache.max_memory", c.max_bytes as i64)?;
            gauge(&mut e, "cache_tracking_up", "1 while the tracking connection is up", i64::from(c.tracking_up))?;
            let lookups = [
                ([("result", "hit")], c.hits),
                ([("result", "stale")], c.stale_answers),
                ([("result", "miss")], c.misses),
                ([("result", "joined")], c.joined),
            ];
            counters(&mut e, "cache_lookups", "Tier lookups by result (MGET counts per key)", &lookups)?;
            counter(&mut e, "cache_fills", "Replies cached", c.fills)?;
            counter(&mut e, "cache_fills_refused", "Replies not cached: invalidated while in flight", c.fills_refused)?;
            counter(&mut e, "cache_evictions", "Keys evicted by cache.max_memory (LRU)", c.evictions)?;
            let causes = [
                ([("cause", "write")], c.invalidated_by_write),
                ([("cause", "tracking")], c.invalidated_by_tracking),
                ([("cause", "admin")], c.invalidated_by_admin),
                ([("cause", "flush")], c.clears),
            ];
            counters(&mut e, "cache_invalidations", "Keys dropped by cause (flush: whole-tier clears)", &causes)?;
            let help = "From a write's reply to Redis's tracking push for its key (sampled)";
            histogram(&mut e, "invalidation_delay", help, &c.invalidation_delay)?;
        }
        let state = match s.breaker_state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        gauge(&mut e, "breaker_state", "Circuit breaker: 0 closed, 1 open, 2 half-open", state)?;
        let transitions = [
            ([("to", "open")], s.breaker_opened),
            ([("to", "half-open")], s.breaker_half_opened),
            ([("to", "closed")], s.breaker_closed),
        ];
        counters(&mut e, "breaker_transitions", "Circuit breaker transitions by new state", &transitions)?;
        counter(&mut e, "breaker_refused", "Calls refused while the breaker was open", s.breaker_refused)?;
        gauge(&mut e, "upstream_connections", "Upstream connections up (shared and pinned)", s.upstream_connections)?;
        let help = "Upstream connections whose login Redis refused (check [upstream] credentials)";
        counter(&mut e, "upstream_login_refused", help, s.upstream_login_refused)?;
        let help = "From a batch's write to its last reply, on shared upstream connections";
        histogram(&mut e, "upstream_latency", help, &s.upstream_latency)?;
        let Some(sentinel) = &s.sentinel else { return Ok(()) };
        let help = "1 for the primary Sentinel named and ROLE confirmed; no series while none is known";
        let mut primary = e.encode_descriptor("sentinel_primary", help, None, MetricType::Gauge)?;
        if !sentinel.primary.is_empty() {
            primary.encode_family(&[("address", sentinel.primary.as_str())])?.encode_gauge(&1i64)?;
        }
        gauge(&mut e, "sentinels_known", "Sentinels the proxy knows of", sentinel.known as i64)?;
        gauge(&mut e, "sentinels_reachable", "Sentinels that answered the last round", sentinel.reachable as i64)?;
        counter(&mut e, "sentinel_failovers", "Times the primary changed to another address", sentinel.failovers)?;
        let help = "Time with no primary known (clients refused at once, stale reads under serve_stale)";
        e.encode_descriptor("sentinel_without_primary", help, Some(&Unit::Seconds), MetricType::Counter)?
            .encode_counter::<NoLabelSet, f64, f64>(&sentinel.seconds_without_primary, None)
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, u64, f64>(&value, None)
}

fn counters<L: EncodeLabelSet>(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(L, u64)]) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        metric.encode_family(labels)?.encode_counter::<NoLabelSet, u64, f64>(value, None)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &HistogramSnapshot) -> fmt::Result {
    e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?.encode_histogram::<NoLabelSet>(
        h.sum_seconds,
        h.count,
        &h.buckets,
        None,
    )
}

/// How long a scraper gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(respond(stream, Arc::clone(&ctx)));
            }
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One HTTP/1.x request, answered and closed.
async fn respond(mut stream: TcpStream, ctx: Arc<Context>) {
    let mut head = Vec::with_capacity(512);
    let read = timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            if stream.read_buf(&mut head).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(Snapshot::take(&ctx)))
        }
        (b"GET", _) => ("404 Not Found", "text/plain", "not found: metrics are at /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        debug!(error = %e, "metrics: response not delivered");
    }
    let _ = stream.shutdown().await;
}
