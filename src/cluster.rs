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
//!   connection of it while any is unanswered (its lane, `upstream::Pick`), so Redis runs them
//!   in the client's order.
//! - **MOVED and ASK** are followed by the node's connection (`upstream/shared.rs`), which hands
//!   the request back here ([`Redirect`]): never shown to a client, at most [`crate::upstream::MAX_HOPS`] times,
//!   the second and later after a growing pause.
//!   TRYAGAIN and CLUSTERDOWN (the request did not run) are retried on the same node after a
//!   growing pause, as many times; then the client gets Redis's error.
//! - **The tier** ([`crate::cache::Tier::per_slot`]): a tracking connection per node; when a
//!   slot changes owner in the map, its entries are dropped and its reads in flight refused
//!   before any request is routed by the new map; when a node's tracking connection is lost,
//!   its slots are. Reads redirected by MOVED or ASK never fill.

mod follow;
pub mod map;
mod scatter;
mod send;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::cache::Tier;
use crate::config::{Config, Tracking};
use crate::metrics::Metrics;
use crate::tracking;
use crate::transport::UpstreamTls;
use crate::upstream::{Redirect, ReplySink, Upstream};
use map::SlotMap;

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
    /// The same nodes' upstreams, read without a lock on the request path (a node's breaker,
    /// its db-0 pools).
    upstreams: ArcSwap<Vec<Arc<NodeEntry>>>,
    /// Read the map again soon (a MOVED, a lost node).
    refresh: Notify,
    /// The first map was installed.
    mapped: Notify,
    pub stats: Stats,
    /// Where the parts of a split request "deliver": nowhere (their [`Part`] work keeps them).
    dead: ReplySink,
}

/// A node as the request path finds it: its upstream and its db-0 pools (RESP2, RESP3).
struct NodeEntry {
    addr: Arc<str>,
    up: Arc<Upstream>,
    pools: [std::sync::OnceLock<Arc<crate::upstream::Pool>>; 2],
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
        let task = tokio::spawn(follow::follow(Arc::clone(&cluster)));
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
        if let (Some(tier), Tracking::On) = (&self.tier, self.config.cache.tracking) {
            let scope = Arc::new(follow::NodeScope { cluster: self.me.clone(), addr: Arc::clone(&addr) });
            tasks.push(tokio::spawn(tracking::run_for(Arc::clone(&up), Arc::clone(tier), scope)));
        }
        let mut upstreams = Vec::clone(&self.upstreams.load());
        upstreams.push(Arc::new(NodeEntry { addr: Arc::clone(&addr), up: Arc::clone(&up), pools: Default::default() }));
        self.upstreams.store(Arc::new(upstreams));
        nodes.insert(addr, Node { upstream: Arc::clone(&up), tracked: false, tasks });
        up
    }

    /// The masters' shared connections with tracking on (INFO leaves them out of its
    /// `tracking_clients`, which it adds up over the masters).
    pub fn own_tracking_clients(&self) -> u64 {
        let map = self.map.load();
        let masters = map.masters();
        let upstreams = self.upstreams.load();
        let tracking = upstreams.iter().filter(|n| masters.iter().any(|m| **m == *n.addr));
        tracking.filter_map(|n| n.up.tracked.as_ref()).map(|t| t.connections()).sum()
    }

    /// Masters whose tracking connection is up.
    pub fn tracked_masters(&self) -> u64 {
        let map = self.map.load();
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        map.masters().iter().filter(|addr| nodes.get(*addr).is_some_and(|n| n.tracked)).count() as u64
    }

    /// Whether the breaker of the node serving `key` refuses calls.
    pub fn shard_down(&self, key: &[u8]) -> bool {
        let map = self.map.load();
        let Some(owner) = map.owner(map::slot_of(key)) else { return false };
        self.upstreams.load().iter().find(|r| r.addr == *owner).is_some_and(|r| r.up.breaker().is_refusing())
    }

    /// Applies new breaker thresholds to every node's (a configuration reload).
    pub fn reconfigure(&self, settings: &crate::config::Breaker) {
        self.upstreams.load().iter().for_each(|r| r.up.breaker().reconfigure(settings));
    }

    /// The upstream of the node at `addr` (a session's own connection opens there).
    pub fn upstream_of(&self, addr: &str) -> Arc<Upstream> {
        self.node(addr)
    }

    /// The upstream of the node keyless commands go to.
    pub fn upstream_any(&self) -> Option<Arc<Upstream>> {
        self.any(&self.map.load()).map(|addr| self.node(&addr))
    }
}
