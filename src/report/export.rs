//! Prometheus text (OpenMetrics), encoded by prometheus-client from a [`Snapshot`] taken at
//! each scrape (served at `/metrics` by `http.rs`).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::Snapshot;
use super::snapshot::RuleSnapshot;
use crate::breaker::State;
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
            counter(&mut e, "cache_expired", "Keys dropped from the tier once expired", c.expired)?;
            let causes = [
                ([("cause", "write")], c.invalidated_by_write),
                ([("cause", "tracking")], c.invalidated_by_tracking),
                ([("cause", "admin")], c.invalidated_by_admin),
                ([("cause", "flush")], c.clears),
            ];
            counters(&mut e, "cache_invalidations", "Keys dropped by cause (flush: whole-tier clears)", &causes)?;
            let help = "From forwarding a write of a cached key to Redis's tracking push for it (sampled)";
            histogram(&mut e, "invalidation_delay", help, &c.invalidation_delay)?;
            let rule = |r: &RuleSnapshot| r.label.clone();
            let lookups: Vec<_> = c
                .rules
                .iter()
                .flat_map(|r| {
                    [
                        ([("rule", rule(r)), ("result", "hit".into())], r.hits),
                        ([("rule", rule(r)), ("result", "miss".into())], r.misses),
                    ]
                })
                .collect();
            counters(
                &mut e,
                "rule_cache_lookups",
                "Tier lookups per [[rule]] (label: name or pattern) by result",
                &lookups,
            )?;
            let per_rule = |value: fn(&RuleSnapshot) -> u64| {
                c.rules.iter().map(|r| ([("rule", rule(r))], value(r))).collect::<Vec<_>>()
            };
            counters(&mut e, "rule_cache_fills", "Replies cached per rule", &per_rule(|r| r.fills))?;
            counters(
                &mut e,
                "rule_cache_invalidations",
                "Cached keys dropped per rule (any cause)",
                &per_rule(|r| r.invalidations),
            )?;
            let help = "Keys held per rule (the rule they were cached under)";
            gauges(&mut e, "rule_cache_entries", help, &per_rule(|r| r.entries as u64))?;
            gauges(
                &mut e,
                "rule_cache_bytes",
                "Bytes held per rule (weighed as for cache.max_memory)",
                &per_rule(|r| r.bytes as u64),
            )?;
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
        if let Some(cluster) = &s.cluster {
            encode_cluster(&mut e, cluster)?;
        }
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

fn encode_cluster(e: &mut DescriptorEncoder, c: &super::snapshot::ClusterSnapshot) -> fmt::Result {
    gauge(e, "cluster_masters", "Masters in the slot map the proxy routes by", c.masters as i64)?;
    gauge(e, "cluster_slots_uncovered", "Slots no master serves in that map", c.slots_uncovered as i64)?;
    let reads =
        [([("result", "ok")], c.map_reads - c.map_read_failures), ([("result", "failed")], c.map_read_failures)];
    counters(e, "cluster_map_reads", "CLUSTER SLOTS rounds by result", &reads)?;
    let help = "Slots whose owner changed between two maps (their cached entries were dropped)";
    counter(e, "cluster_slots_changed", help, c.slots_changed)?;
    let redirections = [([("kind", "moved")], c.moved), ([("kind", "ask")], c.asked), ([("kind", "retry")], c.retried)];
    let help = "MOVED and ASK replies followed, TRYAGAIN and CLUSTERDOWN retried (never shown to clients)";
    counters(e, "cluster_redirections", help, &redirections)?;
    let nodes: Vec<([(&str, &str); 1], u64)> = c.nodes.iter().map(|n| ([("node", n.addr.as_str())], n.slots)).collect();
    gauges(e, "cluster_node_slots", "Slots each node serves in the map", &nodes)?;
    let state = |n: &super::snapshot::NodeSnapshot| match n.breaker {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    };
    let breakers: Vec<([(&str, &str); 1], u64)> =
        c.nodes.iter().map(|n| ([("node", n.addr.as_str())], state(n))).collect();
    gauges(e, "cluster_node_breaker_state", "Each node's circuit breaker: 0 closed, 1 open, 2 half-open", &breakers)?;
    let tracking: Vec<([(&str, &str); 1], u64)> =
        c.nodes.iter().map(|n| ([("node", n.addr.as_str())], u64::from(n.tracking))).collect();
    gauges(e, "cluster_node_tracking", "1 while the node's tracking connection is up", &tracking)?;
    let help = "Per node: from a batch's write to its last reply, on shared connections";
    let mut latency = e.encode_descriptor("cluster_node_latency", help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for n in &c.nodes {
        let h = &n.latency;
        latency.encode_family(&[("node", n.addr.as_str())])?.encode_histogram::<NoLabelSet>(
            h.sum_seconds,
            h.count,
            &h.buckets,
            None,
        )?;
    }
    Ok(())
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

fn gauges<L: EncodeLabelSet>(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(L, u64)]) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(labels)?.encode_gauge(&(*value as i64))?;
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
