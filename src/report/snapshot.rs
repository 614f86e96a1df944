//! Every number at one moment, and `PROXY INFO`'s rendering of it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::State;
use crate::context::Context;
use crate::metrics::HistogramSnapshot;

/// The proxy's numbers at one moment (see `metrics.rs`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub uptime_seconds: u64,
    pub clients_connected: i64,
    /// Tasks alive in the runtime (clients, upstream connections, tracking, listeners, timers).
    pub tasks_alive: u64,
    pub clients_accepted: u64,
    pub clients_refused: u64,
    pub protocol_errors: u64,
    /// (command, outcome, count), non-zero only.
    pub requests: Vec<(&'static str, &'static str, u64)>,
    pub ttl_enforced: u64,
    pub ttl_clamped: u64,
    pub ttl_refused: u64,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<CacheSnapshot>,
    pub breaker_state: State,
    pub breaker_opened: u64,
    pub breaker_half_opened: u64,
    pub breaker_closed: u64,
    pub breaker_refused: u64,
    pub upstream_address: String,
    pub upstream_connections: i64,
    pub upstream_login_refused: u64,
    pub upstream_latency: HistogramSnapshot,
    /// With `[upstream] sentinels`.
    pub sentinel: Option<SentinelSnapshot>,
    /// With `[upstream] cluster`.
    pub cluster: Option<ClusterSnapshot>,
}

#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    pub masters: u64,
    pub slots_uncovered: u64,
    pub map_reads: u64,
    pub map_read_failures: u64,
    pub slots_changed: u64,
    pub moved: u64,
    pub asked: u64,
    pub retried: u64,
    pub hops_exceeded: u64,
    pub nodes: Vec<NodeSnapshot>,
}

/// One node the proxy has connections to.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub addr: String,
    /// Slots it serves in the map the proxy routes by (0: a replica, or a node left).
    pub slots: u64,
    pub breaker: State,
    /// Its tracking connection is up (tracked rules cache its slots' keys).
    pub tracking: bool,
    /// Calls on its shared connections, from a batch's write to its last reply.
    pub latency: HistogramSnapshot,
}

#[derive(Debug, Clone)]
pub struct SentinelSnapshot {
    pub master_name: String,
    /// Empty while none is known.
    pub primary: String,
    pub known: u64,
    pub reachable: u64,
    pub failovers: u64,
    pub seconds_without_primary: f64,
}

#[derive(Debug, Clone)]
pub struct CacheSnapshot {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub tracking_up: bool,
    pub hits: u64,
    pub stale_answers: u64,
    pub misses: u64,
    pub joined: u64,
    pub fills: u64,
    pub fills_refused: u64,
    pub evictions: u64,
    pub expired: u64,
    pub invalidated_by_write: u64,
    pub invalidated_by_tracking: u64,
    pub invalidated_by_admin: u64,
    pub clears: u64,
    pub invalidation_delay: HistogramSnapshot,
    /// Per `[[rule]]`, then `[default]`.
    pub rules: Vec<RuleSnapshot>,
}

/// One rule's numbers (see `policy::RuleStats`).
#[derive(Debug, Clone)]
pub struct RuleSnapshot {
    pub label: String,
    pub hits: u64,
    pub misses: u64,
    pub fills: u64,
    pub invalidations: u64,
    pub entries: i64,
    pub bytes: i64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Snapshot {
    pub fn take(ctx: &Context) -> Snapshot {
        let m = &ctx.metrics;
        let breaker = ctx.upstream.breaker();
        let cache = ctx.tier.as_deref().map(|tier| {
            let s = &tier.stats;
            CacheSnapshot {
                entries: tier.entry_count() as u64,
                bytes: tier.weighted_size(),
                max_bytes: tier.max_memory(),
                tracking_up: tier.tracking_up(),
                hits: get(&s.hits),
                stale_answers: get(&s.stale_answers),
                misses: get(&s.misses),
                joined: get(&s.joined),
                fills: get(&s.fills),
                fills_refused: get(&s.fills_refused),
                evictions: get(&s.evictions),
                expired: get(&s.expired),
                invalidated_by_write: get(&s.invalidated_by_write),
                invalidated_by_tracking: get(&s.invalidated_by_tracking),
                invalidated_by_admin: get(&s.invalidated_by_admin),
                clears: get(&s.clears),
                invalidation_delay: s.invalidation_delay.snapshot(),
                rules: ctx
                    .live
                    .load()
                    .policy
                    .all_stats()
                    .iter()
                    .map(|r| RuleSnapshot {
                        label: r.label.clone(),
                        hits: get(&r.hits),
                        misses: get(&r.misses),
                        fills: get(&r.fills),
                        invalidations: get(&r.invalidations),
                        // Pending removals were applied by `weighted_size` above.
                        entries: r.entries.load(Ordering::Relaxed).max(0),
                        bytes: r.bytes.load(Ordering::Relaxed).max(0),
                    })
                    .collect(),
            }
        });
        Snapshot {
            uptime_seconds: m.uptime().as_secs(),
            clients_connected: m.clients_connected.load(Ordering::Relaxed),
            tasks_alive: tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks() as u64),
            clients_accepted: get(&m.clients_accepted),
            clients_refused: get(&m.clients_refused),
            protocol_errors: get(&m.protocol_errors),
            requests: m.requests(),
            ttl_enforced: get(&ctx.ttl.enforced),
            ttl_clamped: get(&ctx.ttl.clamped),
            ttl_refused: get(&ctx.ttl.refused),
            cache,
            breaker_state: breaker.state(),
            breaker_opened: get(&breaker.stats.opened),
            breaker_half_opened: get(&breaker.stats.half_opened),
            breaker_closed: get(&breaker.stats.closed),
            breaker_refused: get(&breaker.stats.refused),
            upstream_address: ctx.upstream.addr().to_owned(),
            upstream_connections: m.upstream_connections.load(Ordering::Relaxed),
            upstream_login_refused: get(&m.upstream_login_refused),
            upstream_latency: m.upstream_latency.snapshot(),
            cluster: ctx.cluster.as_deref().map(cluster_snapshot),
            sentinel: ctx.sentinel.as_deref().map(|s| SentinelSnapshot {
                master_name: ctx.upstream.target().master_name().unwrap_or_default().to_owned(),
                primary: ctx.upstream.target().addr().as_deref().unwrap_or_default().to_owned(),
                known: s.known.load(Ordering::Relaxed) as u64,
                reachable: s.reachable.load(Ordering::Relaxed) as u64,
                failovers: get(&s.failovers),
                seconds_without_primary: s.seconds_without_primary(),
            }),
        }
    }

    /// `PROXY INFO`: Redis INFO format, sections `# Proxy`, `# Cache`, `# Breaker`, `# Upstream`
    /// (and `# Sentinel`).
    pub fn info(&self) -> String {
        let mut out = Info::default();
        out.section("Proxy");
        out.line("version", &env!("CARGO_PKG_VERSION"));
        out.line("uptime_in_seconds", &self.uptime_seconds);
        out.line("connected_clients", &self.clients_connected);
        out.line("tasks_alive", &self.tasks_alive);
        out.line("total_connections_received", &self.clients_accepted);
        out.line("rejected_connections", &self.clients_refused);
        out.line("protocol_errors", &self.protocol_errors);
        out.line("ttl_enforced", &self.ttl_enforced);
        out.line("ttl_clamped", &self.ttl_clamped);
        out.line("ttl_refused", &self.ttl_refused);
        let mut commands: Vec<&str> = self.requests.iter().map(|(c, _, _)| *c).collect();
        commands.dedup();
        for command in commands {
            let counts: Vec<String> = self
                .requests
                .iter()
                .filter(|(c, _, _)| *c == command)
                .map(|(_, outcome, n)| format!("{outcome}={n}"))
                .collect();
            out.line(&format!("requests_{}", command.to_ascii_lowercase()), &counts.join(","));
        }
        out.section("Cache");
        match &self.cache {
            None => out.line("cache_enabled", &0),
            Some(c) => {
                out.line("cache_enabled", &1);
                out.line("cache_entries", &c.entries);
                out.line("cache_bytes", &c.bytes);
                out.line("cache_max_bytes", &c.max_bytes);
                out.line("cache_tracking", &if c.tracking_up { "up" } else { "down" });
                out.line("cache_hits", &c.hits);
                out.line("cache_stale_answers", &c.stale_answers);
                out.line("cache_misses", &c.misses);
                out.line("cache_joined", &c.joined);
                out.line("cache_fills", &c.fills);
                out.line("cache_fills_refused", &c.fills_refused);
                out.line("cache_evictions", &c.evictions);
                out.line("cache_expired", &c.expired);
                out.line("cache_invalidations_write", &c.invalidated_by_write);
                out.line("cache_invalidations_tracking", &c.invalidated_by_tracking);
                out.line("cache_invalidations_admin", &c.invalidated_by_admin);
                out.line("cache_clears", &c.clears);
                let delay = &c.invalidation_delay;
                out.line("invalidation_delay_samples", &delay.count);
                out.line("invalidation_delay_p50_ms", &(delay.quantile(0.5) * 1e3));
                out.line("invalidation_delay_p99_ms", &(delay.quantile(0.99) * 1e3));
                out.section("Rules");
                for (i, r) in c.rules.iter().enumerate() {
                    let name = if i + 1 == c.rules.len() { "rule_default".to_owned() } else { format!("rule_{i}") };
                    let value = format!(
                        "label={},hits={},misses={},fills={},invalidations={},entries={},bytes={}",
                        r.label, r.hits, r.misses, r.fills, r.invalidations, r.entries, r.bytes
                    );
                    out.line(&name, &value);
                }
            }
        }
        out.section("Breaker");
        out.line("breaker_state", &self.breaker_state.name());
        out.line("breaker_opened", &self.breaker_opened);
        out.line("breaker_half_opened", &self.breaker_half_opened);
        out.line("breaker_closed", &self.breaker_closed);
        out.line("breaker_refused_calls", &self.breaker_refused);
        out.section("Upstream");
        out.line("upstream_address", &self.upstream_address);
        out.line("upstream_connections", &self.upstream_connections);
        out.line("upstream_login_refused", &self.upstream_login_refused);
        let latency = &self.upstream_latency;
        out.line("upstream_calls", &latency.count);
        out.line("upstream_latency_p50_ms", &(latency.quantile(0.5) * 1e3));
        out.line("upstream_latency_p99_ms", &(latency.quantile(0.99) * 1e3));
        if let Some(s) = &self.sentinel {
            out.section("Sentinel");
            out.line("sentinel_master_name", &s.master_name);
            out.line("sentinel_primary", &s.primary);
            out.line("sentinels_known", &s.known);
            out.line("sentinels_reachable", &s.reachable);
            out.line("sentinel_failovers", &s.failovers);
            out.line("sentinel_seconds_without_primary", &format!("{:.3}", s.seconds_without_primary));
        }
        if let Some(c) = &self.cluster {
            out.section("Cluster");
            out.line("cluster_masters", &c.masters);
            out.line("cluster_slots_uncovered", &c.slots_uncovered);
            out.line("cluster_map_reads", &c.map_reads);
            out.line("cluster_map_read_failures", &c.map_read_failures);
            out.line("cluster_slots_changed", &c.slots_changed);
            out.line("cluster_moved", &c.moved);
            out.line("cluster_ask", &c.asked);
            out.line("cluster_retried", &c.retried);
            out.line("cluster_redirections_exceeded", &c.hops_exceeded);
            for (i, n) in c.nodes.iter().enumerate() {
                let tracking = if n.tracking { "up" } else { "down" };
                let node =
                    format!("addr={},slots={},breaker={},tracking={tracking}", n.addr, n.slots, n.breaker.name());
                out.line(&format!("cluster_node{i}"), &node);
            }
        }
        out.0
    }
}

fn cluster_snapshot(cluster: &crate::cluster::Cluster) -> ClusterSnapshot {
    let s = &cluster.stats;
    let map = cluster.map();
    ClusterSnapshot {
        masters: map.masters().len() as u64,
        slots_uncovered: map.uncovered() as u64,
        map_reads: get(&s.refreshes),
        map_read_failures: get(&s.refresh_failures),
        slots_changed: get(&s.slots_changed),
        moved: get(&s.moved),
        asked: get(&s.asked),
        retried: get(&s.retried),
        hops_exceeded: get(&s.hops_exceeded),
        nodes: cluster
            .nodes()
            .into_iter()
            .map(|(addr, up, tracking)| NodeSnapshot {
                slots: map.ranges_of(&addr).iter().map(|(a, b)| u64::from(b - a) + 1).sum(),
                addr: addr.to_string(),
                breaker: up.breaker().state(),
                tracking,
                latency: up.latency.snapshot(),
            })
            .collect(),
    }
}

/// Redis INFO text: `# Section` headers, `key:value` lines, a blank line between sections.
#[derive(Default)]
struct Info(String);

impl Info {
    fn section(&mut self, name: &str) {
        let gap = if self.0.is_empty() { "" } else { "\r\n" };
        let _ = write!(self.0, "{gap}# {name}\r\n");
    }

    fn line(&mut self, key: &str, value: &dyn std::fmt::Display) {
        let _ = write!(self.0, "{key}:{value}\r\n");
    }
}
