//! A Redis Cluster behind the proxy, while clients see one standalone Redis.
//!
//! - **The slot map** ([`map::SlotMap`]) is read with `CLUSTER SLOTS` from a master it knows
//!   or a seed (`[upstream] cluster`): every second, and at once (debounced) after a MOVED reply
//!   or a lost connection to a node.
//! - **Each node** has an [`Upstream`] of its own: its shared pools, its breaker (a dead shard
//!   fails fast on its own), its recovery probe and, with the tier, its tracking connection.
//! - **Routing** happens as a client's run of requests is sent ([`Cluster::send`]): each
//!   request goes to the master of its keys' slot ([`scatter::placement`]); consecutive
//!   requests for one node stay one batch; multi-key commands across slots and whole-dataset
//!   commands are split and joined ([`scatter`]). A client's requests for one node use the same
//!   connection of it (its lane), so Redis runs them in the client's order.
//! - **MOVED and ASK** are followed by the node's connection (`upstream/shared.rs`), which hands
//!   the request back here ([`Redirect`]): never shown to a client, at most [`MAX_HOPS`] times.
//!   TRYAGAIN and CLUSTERDOWN (the request did not run) are retried on the same node after a
//!   growing pause, as many times; then the client gets Redis's error.
//! - **The tier** ([`crate::cache::Tier::per_slot`]): a tracking connection per node; when a
//!   slot changes owner in the map, its entries are dropped and its reads in flight refused
//!   before any request is routed by the new map; when a node's tracking connection is lost,
//!   its slots are. Reads redirected by MOVED or ASK never fill.

pub mod map;
mod scatter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cache::Tier;
use crate::config::{Config, Tracking};
use crate::error::ProxyError;
use crate::framing::{CommandView, Limits, Parsed, RequestParser, encode_command};
use crate::metrics::Metrics;
use crate::tracking::{self, Scope};
use crate::transport::UpstreamTls;
use crate::upstream::{
    Batch, MAX_HOPS, PoolKey, Redirect, Redirection, ReplyChunk, ReplySink, ReplyWork, Resend, Upstream, exchange,
};
use map::{SLOTS, SlotMap};
use scatter::{Combine, Gather, Part, Placement, ScanCursor, ScanPage};

/// How often the slot map is read when nothing prompts it.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What following the cluster has seen (`PROXY INFO`, `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
    /// Slots whose owner changed between two maps (not counting the first).
    pub slots_changed: AtomicU64,
    pub moved: AtomicU64,
    pub asked: AtomicU64,
    /// TRYAGAIN and CLUSTERDOWN replies retried.
    pub retried: AtomicU64,
    /// Requests that met more than [`MAX_HOPS`] redirections.
    pub hops_exceeded: AtomicU64,
}

pub struct Cluster {
    me: Weak<Cluster>,
    config: Config,
    password: Option<String>,
    tls: Option<UpstreamTls>,
    metrics: Arc<Metrics>,
    tier: Option<Arc<Tier>>,
    map: ArcSwap<SlotMap>,
    nodes: Mutex<HashMap<Arc<str>, Node>>,
    /// The same nodes' upstreams, read without a lock (a node's breaker, per request).
    upstreams: ArcSwap<Vec<(Arc<str>, Arc<Upstream>)>>,
    /// Read the map again soon (a MOVED, a lost node).
    refresh: Notify,
    /// The first map was installed.
    mapped: Notify,
    pub stats: Stats,
    /// Where the parts of a split request "deliver": nowhere (their [`Part`] work keeps them).
    dead: ReplySink,
}

struct Node {
    upstream: Arc<Upstream>,
    /// Its tracking connection is up: tracked rules may cache its slots' keys.
    tracked: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Cluster {
    /// Starts following the cluster of `config.upstream.cluster`; the task reads the map until
    /// aborted. With a tier, the tier goes per slot first.
    pub fn start(
        config: &Config,
        password: Option<String>,
        tls: Option<UpstreamTls>,
        metrics: Arc<Metrics>,
        tier: Option<Arc<Tier>>,
    ) -> (Arc<Cluster>, JoinHandle<()>) {
        if let Some(tier) = &tier {
            tier.per_slot();
        }
        let (dead, _) = mpsc::unbounded_channel();
        let cluster = Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            config: config.clone(),
            password,
            tls,
            metrics,
            tier,
            map: ArcSwap::from_pointee(SlotMap::default()),
            nodes: Mutex::new(HashMap::new()),
            upstreams: ArcSwap::from_pointee(Vec::new()),
            refresh: Notify::new(),
            mapped: Notify::new(),
            stats: Stats::default(),
            dead,
        });
        let task = tokio::spawn(follow(Arc::clone(&cluster)));
        (cluster, task)
    }

    /// Waits for the first slot map, at most `limit`.
    pub async fn mapped(&self, limit: Duration) {
        let first = self.mapped.notified();
        if self.map.load().masters().is_empty() {
            let _ = tokio::time::timeout(limit, first).await;
        }
    }

    /// The map requests are routed by.
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.load_full()
    }

    /// Every node known, with its upstream (for `PROXY INFO`, `PROXY CLUSTER NODES`).
    pub fn nodes(&self) -> Vec<(Arc<str>, Arc<Upstream>, bool)> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = nodes.iter().map(|(a, n)| (Arc::clone(a), Arc::clone(&n.upstream), n.tracked)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The upstream of the node at `addr`, started on first use (connections, recovery probe,
    /// tracking).
    fn node(&self, addr: &str) -> Arc<Upstream> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get(addr) {
            return Arc::clone(&node.upstream);
        }
        let redirect: Weak<dyn Redirect> = self.me.clone();
        let metrics = Arc::clone(&self.metrics);
        let up = Upstream::for_node(&self.config, addr, self.password.clone(), self.tls.clone(), metrics, redirect);
        let addr: Arc<str> = addr.into();
        let mut tasks = vec![tokio::spawn(crate::upstream::recover(Arc::clone(&up)))];
        // A lost or refused connection to the node: the map is read again.
        tasks.push(tokio::spawn({
            let (up, me) = (Arc::clone(&up), self.me.clone());
            async move {
                loop {
                    up.target().doubted().await;
                    match me.upgrade() {
                        Some(cluster) => cluster.refresh.notify_one(),
                        None => return,
                    }
                }
            }
        }));
        if let (Some(tier), Tracking::Bcast) = (&self.tier, self.config.cache.tracking) {
            let scope = Arc::new(NodeScope { cluster: self.me.clone(), addr: Arc::clone(&addr) });
            tasks.push(tokio::spawn(tracking::run_for(Arc::clone(&up), Arc::clone(tier), scope)));
        }
        let mut upstreams = Vec::clone(&self.upstreams.load());
        upstreams.push((Arc::clone(&addr), Arc::clone(&up)));
        self.upstreams.store(Arc::new(upstreams));
        nodes.insert(addr, Node { upstream: Arc::clone(&up), tracked: false, tasks });
        up
    }

    /// Masters whose tracking connection is up (INFO leaves them out of its tracking fields).
    pub fn tracked_masters(&self) -> u64 {
        let map = self.map.load();
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        map.masters().iter().filter(|addr| nodes.get(*addr).is_some_and(|n| n.tracked)).count() as u64
    }

    /// Whether the breaker of the node serving `key` refuses calls.
    pub fn shard_down(&self, key: &[u8]) -> bool {
        let map = self.map.load();
        let Some(owner) = map.owner(map::slot_of(key)) else { return false };
        self.upstreams.load().iter().find(|(addr, _)| addr == owner).is_some_and(|(_, up)| up.breaker().is_refusing())
    }

    /// Applies new breaker thresholds to every node's (a configuration reload).
    pub fn reconfigure(&self, settings: &crate::config::Breaker) {
        self.upstreams.load().iter().for_each(|(_, up)| up.breaker().reconfigure(settings));
    }

    /// Installs a new map: the slots whose owner changed lose their entries (and reads in
    /// flight) in the same step, so no read routed by the new map meets an entry of the old.
    fn install(&self, new: SlotMap) {
        new.masters().iter().for_each(|addr| drop(self.node(addr)));
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.map.load_full();
        if *old == new {
            return;
        }
        let changed = old.changed(&new);
        let first = old.masters().is_empty();
        let tracked = |slot: u16| new.owner(slot).and_then(|addr| nodes.get(addr)).is_some_and(|n| n.tracked);
        let (on, off): (Vec<u16>, Vec<u16>) = changed.iter().partition(|&&slot| tracked(slot));
        let new = Arc::new(new);
        let uncovered = new.uncovered();
        let store = || {
            if let Some(tier) = &self.tier {
                tier.set_tracked(on.iter().copied(), true);
                tier.set_tracked(off.iter().copied(), false);
            }
            self.map.store(Arc::clone(&new));
        };
        match &self.tier {
            Some(tier) => tier.drop_slots(&changed, store),
            None => store(),
        }
        drop(nodes);
        if first {
            info!(masters = new.masters().len(), uncovered, "Redis Cluster slot map read");
            self.mapped.notify_waiters();
        } else {
            self.stats.slots_changed.fetch_add(changed.len() as u64, Ordering::Relaxed);
            info!(changed = changed.len(), masters = new.masters().len(), uncovered, "Redis Cluster slot map changed");
        }
    }

    /// A node's tracking connection came up or was lost: its slots are tracked, or dropped.
    fn tracking_changed(&self, addr: &str, up: bool) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get_mut(addr) {
            node.tracked = up;
        }
        let Some(tier) = &self.tier else { return };
        let map = self.map.load();
        let slots: Vec<u16> = (0..SLOTS as u16).filter(|&slot| map.owner(slot).is_some_and(|a| &**a == addr)).collect();
        match up {
            true => tier.set_tracked(slots.iter().copied(), true),
            false => tier.drop_slots(&slots, || tier.set_tracked(slots.iter().copied(), false)),
        }
    }

    /// Reads the map from the first node that answers (known masters first, then the seeds).
    async fn refresh_once(&self) -> bool {
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut candidates: Vec<String> = self.map.load().masters().iter().map(|a| a.to_string()).collect();
        for seed in &self.config.upstream.cluster {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let limit = self.config.upstream.connect_timeout.0 * 2;
        for addr in candidates {
            let up = self.node(&addr);
            let read = async {
                let (mut stream, _) = up.connect_watched(PoolKey::default()).await.map_err(|e| e.to_string())?;
                let mut replies = exchange(&mut stream, &encode_command(&["cLUSTER", "SLOTS"]), 1).await?;
                SlotMap::parse(&replies.remove(0), &addr)
            };
            match tokio::time::timeout(limit, read).await {
                Ok(Ok(map)) if !map.masters().is_empty() => {
                    self.install(map);
                    return true;
                }
                Ok(Ok(_)) => debug!(node = %addr, "CLUSTER SLOTS names no master"),
                Ok(Err(err)) => debug!(node = %addr, error = %err, "cannot read the slot map"),
                Err(_) => debug!(node = %addr, "CLUSTER SLOTS timed out"),
            }
        }
        self.stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Sends a client's batch (`lane`: its connection index in every node's pool for `key`):
    /// each request to its node, consecutive requests for one node together.
    pub fn send(&self, key: PoolKey, lane: usize, batch: Batch) {
        let map = self.map.load();
        if batch.work.as_ref().is_some_and(|work| !work.per_request()) {
            if let Some((range, argc)) = requests(&batch.bytes).into_iter().next()
                && is_info(&CommandView::new(&batch.bytes[range.clone()], argc))
            {
                // INFO: every master's, added up, then the work's rewrite of the result.
                let Batch { bytes, seq, sink, work, .. } = batch;
                let request = (bytes.slice(range), argc);
                return self.scatter(key, lane, request, seq, &sink, work, Combine::Info, true, &map);
            }
            // One request with work of its own (a fill with its PTTL, TTL's MULTI ... EXEC):
            // where its first key goes.
            let to = first_slot(&batch.bytes).map_or_else(|| self.any(&map), |slot| map.owner(slot).cloned());
            return match to {
                Some(addr) => self.send_to(&addr, key, lane, batch),
                None => batch.fail(&ProxyError::SlotNotServed),
            };
        }
        let requests = requests(&batch.bytes);
        let places: Vec<To> =
            requests.iter().map(|(range, argc)| self.to(&batch.bytes[range.clone()], *argc, &map)).collect();
        if let Some(To::Node(first)) = places.first()
            && places.iter().all(|to| matches!(to, To::Node(addr) if addr == first))
            && requests.last().is_some_and(|(range, _)| range.end == batch.bytes.len())
        {
            return self.send_to(first, key, lane, batch);
        }
        let mut i = 0;
        while i < places.len() {
            let seq = batch.seq + i as u64;
            match &places[i] {
                To::Node(addr) => {
                    let j = (i..places.len())
                        .find(|&j| !matches!(&places[j], To::Node(a) if a == addr))
                        .unwrap_or(places.len());
                    let bytes = batch.bytes.slice(requests[i].0.start..requests[j - 1].0.end);
                    let work = batch.work.as_ref().and_then(|work| work.for_part(&bytes));
                    let count = (j - i) as u32;
                    let part = Batch {
                        bytes,
                        seq,
                        count,
                        replies: count,
                        sink: batch.sink.clone(),
                        work,
                        hops: 0,
                        asking: false,
                    };
                    self.send_to(addr, key, lane, part);
                    i = j;
                    continue;
                }
                To::Down => {
                    let _ = batch.sink.send(ReplyChunk { seq, count: 1, bytes: ProxyError::SlotNotServed.to_reply() });
                }
                To::Scan(cursor) => {
                    let (range, argc) = requests[i].clone();
                    let bytes = cursor.request(&CommandView::new(&batch.bytes[range], argc));
                    let masters = map.masters().len();
                    let work = Some(Box::new(ScanPage { master: cursor.master, masters }) as Box<dyn ReplyWork>);
                    let page = Batch {
                        bytes,
                        seq,
                        count: 1,
                        replies: 1,
                        sink: batch.sink.clone(),
                        work,
                        hops: 0,
                        asking: false,
                    };
                    self.send_to(&map.masters()[cursor.master], key, lane, page);
                }
                To::Split(combine) | To::Everywhere(combine) => {
                    let request = batch.bytes.slice(requests[i].0.clone());
                    let work = batch.work.as_ref().and_then(|work| work.for_part(&request));
                    let everywhere = matches!(&places[i], To::Everywhere(_));
                    self.scatter(
                        key,
                        lane,
                        (request, requests[i].1),
                        seq,
                        &batch.sink,
                        work,
                        combine.clone(),
                        everywhere,
                        &map,
                    );
                }
            }
            i += 1;
        }
        if requests.last().map_or(0, |(range, _)| range.end) < batch.bytes.len() {
            warn!("a batch for the cluster had bytes that are not requests; dropped");
        }
    }

    /// Where one request goes with `map`.
    fn to(&self, request: &[u8], argc: usize, map: &SlotMap) -> To {
        let cmd = CommandView::new(request, argc);
        match scatter::placement(&cmd, self.config.upstream.cluster_split_mset) {
            Placement::Slot(slot) => map.owner(slot).map_or(To::Down, |addr| To::Node(Arc::clone(addr))),
            Placement::Any => self.any(map).map_or(To::Down, To::Node),
            Placement::Split(combine) => To::Split(combine),
            Placement::Everywhere(combine) => To::Everywhere(combine),
            Placement::Scan => match cmd.arg(1).and_then(|arg| ScanCursor::parse(arg, map.masters().len())) {
                Some(cursor) => map.masters().get(cursor.master).map_or(To::Down, |_| To::Scan(cursor)),
                // Not a cursor: Redis's own error, from any master.
                None => self.any(map).map_or(To::Down, To::Node),
            },
        }
    }

    /// A node for a keyless command: the first master (before any map, the first seed).
    fn any(&self, map: &SlotMap) -> Option<Arc<str>> {
        map.masters().first().cloned().or_else(|| self.config.upstream.cluster.first().map(|s| Arc::from(s.as_str())))
    }

    /// Runs one request as parts on several nodes; the client gets the joined reply at `seq`.
    #[allow(clippy::too_many_arguments)]
    fn scatter(
        &self,
        key: PoolKey,
        lane: usize,
        (request, argc): (Bytes, usize),
        seq: u64,
        sink: &ReplySink,
        work: Option<Box<dyn ReplyWork>>,
        combine: Combine,
        everywhere: bool,
        map: &SlotMap,
    ) {
        let parts: Option<scatter::Parts<Arc<str>>> = if everywhere {
            Some(map.masters().iter().map(|addr| (Arc::clone(addr), request.clone(), Vec::new())).collect())
        } else {
            scatter::split(&CommandView::new(&request, argc), |slot| map.owner(slot).cloned())
        };
        let Some(parts) = parts.filter(|parts| !parts.is_empty()) else {
            let _ = sink.send(ReplyChunk { seq, count: 1, bytes: ProxyError::SlotNotServed.to_reply() });
            return;
        };
        let combine = match combine {
            Combine::Positions(_) => Combine::Positions(parts.iter().map(|(_, _, p)| p.clone()).collect()),
            other => other,
        };
        let gather = Gather::new(sink.clone(), seq, combine, parts.len(), work);
        for (index, (addr, bytes, _)) in parts.into_iter().enumerate() {
            let work = Some(Part::new(&gather, index) as Box<dyn ReplyWork>);
            let part =
                Batch { bytes, seq: 0, count: 1, replies: 1, sink: self.dead.clone(), work, hops: 0, asking: false };
            self.send_to(&addr, key, lane, part);
        }
    }

    /// The node of the first request of `bytes` (up to 64) that has keys, by the map.
    pub fn node_for_requests(&self, bytes: &[u8]) -> Option<Arc<str>> {
        let slot = first_slot(bytes)?;
        self.map.load().owner(slot).cloned()
    }

    /// The upstream of the node at `addr` (a session's own connection opens there).
    pub fn upstream_of(&self, addr: &str) -> Arc<Upstream> {
        self.node(addr)
    }

    /// The upstream of the node keyless commands go to.
    pub fn upstream_any(&self) -> Option<Arc<Upstream>> {
        self.any(&self.map.load()).map(|addr| self.node(&addr))
    }

    /// What a session's client gets for a MOVED or ASK on its own connection (`on`: the node it
    /// is connected to): CROSSSLOT when its keys are on another node than the state it holds
    /// there (a transaction's first keyed command decided the node), else TRYAGAIN (the map
    /// was behind, or a slot is migrating: a retry goes to the right node). The map is read
    /// again.
    pub fn pinned_redirect(&self, to: &Redirection, on: Option<&str>) -> Bytes {
        self.refresh.notify_one();
        let map = self.map.load();
        if to.kind == Resend::Moved
            && map.owner(to.slot).is_some_and(|owner| **owner == *to.addr)
            && on != Some(to.addr.as_str())
        {
            return Bytes::from_static(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n");
        }
        Bytes::from_static(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n")
    }

    fn send_to(&self, addr: &str, key: PoolKey, lane: usize, batch: Batch) {
        self.node(addr).pool(key).send(lane, batch);
    }
}

/// Where a request goes, resolved with the map.
enum To {
    Node(Arc<str>),
    /// A SCAN page of one master.
    Scan(ScanCursor),
    /// No node serves its slot.
    Down,
    Split(Combine),
    Everywhere(Combine),
}

impl Redirect for Cluster {
    fn redirect(&self, to: Redirection, batch: Batch, key: PoolKey, lane: usize) {
        let counter = match to.kind {
            Resend::Moved => &self.stats.moved,
            Resend::Ask => &self.stats.asked,
            Resend::Retry => &self.stats.retried,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if to.kind != Resend::Ask {
            self.refresh.notify_one();
        }
        if batch.hops > MAX_HOPS {
            self.stats.hops_exceeded.fetch_add(1, Ordering::Relaxed);
            let reason = format!("more than {MAX_HOPS} cluster redirections (last: slot {} to {})", to.slot, to.addr);
            return batch.fail(&ProxyError::UpstreamUnavailable { addr: to.addr, reason });
        }
        if to.kind != Resend::Retry {
            return self.send_to(&to.addr, key, lane, batch);
        }
        // TRYAGAIN / CLUSTERDOWN: the same node after 10, 20, 40, ... ms (the map may change
        // meanwhile: a MOVED then follows).
        let Some(me) = self.me.upgrade() else { return };
        let pause = Duration::from_millis(10 << batch.hops.min(5));
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            me.send_to(&to.addr, key, lane, batch);
        });
    }
}

/// A node's tracking connection: its slots.
struct NodeScope {
    cluster: Weak<Cluster>,
    addr: Arc<str>,
}

impl Scope for NodeScope {
    fn started(&self) {
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.tracking_changed(&self.addr, true);
        }
    }
    fn lost(&self) {
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.tracking_changed(&self.addr, false);
        }
    }
}

/// Reads the slot map now, every [`REFRESH_EVERY`], and soon after each prompt.
async fn follow(cluster: Arc<Cluster>) {
    loop {
        let read = cluster.refresh_once().await;
        let wait = if read { REFRESH_EVERY } else { Duration::from_millis(200) };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cluster.refresh.notified() => {
                // A burst of MOVED replies (a resharding) is one read.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The requests of a batch: their byte ranges and argument counts.
fn requests(bytes: &[u8]) -> Vec<(std::ops::Range<usize>, usize)> {
    requests_upto(bytes, usize::MAX)
}

fn requests_upto(bytes: &[u8], most: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut parser = RequestParser::new(Limits::NONE);
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() && out.len() < most {
        let Ok(Some(Parsed::Command { len, argc })) = parser.parse(&bytes[at..]) else { break };
        out.push((at..at + len, argc));
        at += len;
    }
    out
}

/// INFO (whose reply the proxy rewrites for its clients: `Route::Info`).
fn is_info(cmd: &CommandView<'_>) -> bool {
    cmd.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"INFO"))
}

/// The slot of the first request of `bytes` that has a key.
fn first_slot(bytes: &[u8]) -> Option<u16> {
    requests_upto(bytes, 64).into_iter().find_map(|(range, argc)| {
        match scatter::placement(&CommandView::new(&bytes[range], argc), false) {
            Placement::Slot(slot) => Some(slot),
            Placement::Split(_) | Placement::Any | Placement::Everywhere(_) | Placement::Scan => None,
        }
    })
}
