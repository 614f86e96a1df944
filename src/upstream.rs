//! Connections to the upstream Redis.
//!
//! - **Shared pools**, one per (db, protocol) in use, each of `upstream.connections`
//!   connections. Clients hand a connection a [`Batch`] (request bytes exactly as the client
//!   sent them, a sequence number, a count and where replies go, and optionally the work to
//!   do on each reply, [`ReplyWork`]); the connection pipelines batches from all its clients
//!   and sends each reply back as a slice of its read buffer. It knows nothing of the tier,
//!   TTL enforcement or the command table (that work is the caller's, `delivery.rs`). See
//!   `shared.rs`.
//! - **Pinned connections**: [`Upstream::connect`] gives a session a connection of its own for
//!   stateful commands; the session drives it (see `connection.rs`).
//!
//! Every connection starts with the same handshake: `HELLO <proto>`, `CONFIG GET databases`
//! and, outside db 0, `SELECT <db>` (see `handshake.rs`).

mod commands;
mod handshake;
mod lanes;
mod recovery;
mod shared;
mod spares;
mod target;
mod tracked;

pub use handshake::ServerInfo;
pub use lanes::Pick;
pub use recovery::recover;
pub use target::{Switch, Target};
pub use tracked::Tracked;

pub use handshake::{exchange, read_replies};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::breaker::{Admission, Breaker, Outcome};
use crate::config;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::transport::Stream;
use crate::transport::UpstreamTls;

/// Delays between reconnection attempts: 50 ms doubling up to 200 ms.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(50);
    /// Short: a Redis that is back must be found within a fraction of a second (a refused
    /// connection costs next to nothing; a host that does not answer costs connect_timeout).
    const MAX: Duration = Duration::from_millis(200);

    /// The delay before the next attempt (each one twice the last, up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// After a success: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::MIN }
    }
}

/// Which shared pool a client's commands go to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub db: u32,
    pub resp3: bool,
}

/// Replies for `count` consecutive requests of one client, starting at sequence number `seq`.
#[derive(Debug)]
pub struct ReplyChunk {
    pub seq: u64,
    pub count: u32,
    pub bytes: Bytes,
}

/// Where a client receives its reply chunks. Unbounded: an upstream connection must never
/// wait on one slow client. What bounds it is the client's `listen.max_pending_replies`.
pub type ReplySink = mpsc::UnboundedSender<ReplyChunk>;

/// Consecutive requests of one client, sent together.
pub struct Batch {
    pub bytes: Bytes,
    pub seq: u64,
    /// Replies the client gets.
    pub count: u32,
    /// Replies Redis sends for `bytes`: `count`, plus those `work` swallows (the proxy's own
    /// commands, the parts of a request TTL enforcement turned into several).
    pub replies: u32,
    pub sink: ReplySink,
    /// What the caller does with each reply before its client gets it; `None`: every reply is
    /// delivered as it is.
    pub work: Option<Box<dyn ReplyWork>>,
    /// Redis Cluster: how many MOVED/ASK redirections brought it here, and whether it is sent
    /// after `ASKING` (whose reply the connection drops).
    pub hops: u8,
    pub asking: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("seq", &self.seq)
            .field("count", &self.count)
            .field("replies", &self.replies)
            .finish()
    }
}

/// The caller's work on a batch's replies, given each upstream reply in order (the connection
/// only finds reply boundaries and routes: the tier's and TTL enforcement's work is the
/// caller's, see `delivery.rs`).
pub trait ReplyWork: Send {
    /// The batch's next reply from Redis.
    fn reply(&mut self, frame: &[u8]) -> Step;
    /// The batch failed before every reply arrived: its requests not answered yet get `error`.
    fn fail(&mut self, error: &Bytes);
    /// Redis Cluster: whether the work is the same for each request of the batch on its own
    /// (a request redirected by MOVED/ASK is then sent again alone, with [`ReplyWork::for_part`]);
    /// otherwise the batch is one request and is sent again whole, after [`ReplyWork::restart`].
    fn per_request(&self) -> bool {
        false
    }
    /// The work for some of the batch's requests (`requests`) sent on their own.
    fn for_part(&self, _requests: &Bytes) -> Option<Box<dyn ReplyWork>> {
        None
    }
    /// The batch was redirected and is sent again: forget the replies seen, and never fill
    /// the tier from it (an ASK target is mid-migration; a MOVED target may not be tracked yet).
    fn restart(&mut self) {}
}

/// Where a Redis Cluster node's reply sends a request again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirection {
    pub kind: Resend,
    pub slot: u16,
    /// `host:port`; for a retry, the node that refused (filled in by the connection).
    pub addr: String,
}

/// Why a request is sent again; it did not run where it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// `-MOVED`: the slot has another owner.
    Moved,
    /// `-ASK`: the key is being migrated; `ASKING` first, there.
    Ask,
    /// `-TRYAGAIN` (a multi-key request during a slot's migration) or `-CLUSTERDOWN`: the same
    /// node, after a pause.
    Retry,
}

/// Redirections (and retries) one request may follow before its client gets the error.
pub const MAX_HOPS: u8 = 5;

impl Redirection {
    /// `-MOVED <slot> <host:port>`, `-ASK <slot> <host:port>`, `-TRYAGAIN ...`, `-CLUSTERDOWN ...`.
    pub fn parse(frame: &[u8]) -> Option<Redirection> {
        if frame.starts_with(b"-TRYAGAIN ") || frame.starts_with(b"-CLUSTERDOWN ") {
            return Some(Redirection { kind: Resend::Retry, slot: 0, addr: String::new() });
        }
        let (kind, rest) = if let Some(rest) = frame.strip_prefix(b"-MOVED ") {
            (Resend::Moved, rest)
        } else {
            (Resend::Ask, frame.strip_prefix(b"-ASK ")?)
        };
        let text = std::str::from_utf8(rest).ok()?.trim_end();
        let (slot, addr) = text.split_once(' ')?;
        Some(Redirection { kind, slot: slot.parse().ok()?, addr: addr.to_owned() })
    }

    /// Sent with `ASKING` first.
    pub fn ask(&self) -> bool {
        self.kind == Resend::Ask
    }
}

/// Who sends redirected requests on (`cluster.rs`): the connection only finds MOVED and ASK.
pub trait Redirect: Send + Sync {
    /// Send `batch` where `to` says, on connection `lane` of that node's pool for `key`.
    fn redirect(&self, to: Redirection, batch: Batch, key: PoolKey, lane: usize);
}

/// What becomes of one upstream reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// It is the client's next reply, as it is.
    Deliver,
    /// The client's next reply is this instead.
    Replace(Bytes),
    /// Not the client's (the proxy's own commands' replies): dropped.
    Swallow,
}

impl Batch {
    /// A batch whose replies are delivered as they are.
    pub fn plain(bytes: Bytes, seq: u64, count: u32, sink: ReplySink) -> Batch {
        Batch { bytes, seq, count, replies: count, sink, work: None, hops: 0, asking: false }
    }

    /// Answers every request of the batch with `err` (nothing was sent).
    pub fn fail(mut self, err: &ProxyError) {
        let bytes = err.to_replies(self.count as usize);
        if let Some(work) = self.work.as_mut() {
            work.fail(&bytes);
        }
        let _ = self.sink.send(ReplyChunk { seq: self.seq, count: self.count, bytes });
    }
}

/// An upstream connection that is up (see [`Upstream::connection_up`]).
pub struct ConnectionUp(Arc<Metrics>);

impl Drop for ConnectionUp {
    fn drop(&mut self) {
        self.0.upstream_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Upstream {
    /// Where connections go: a fixed address or Sentinel's current primary.
    target: Arc<Target>,
    /// With `[upstream] tls`: every connection is TLS.
    tls: Option<UpstreamTls>,
    pub metrics: Arc<Metrics>,
    breaker: Arc<Breaker>,
    connections: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    info: ServerInfo,
    /// Told when the recovery probe found the upstream back.
    back: tokio::sync::Notify,
    spares: spares::Spares,
    spare_connections: usize,
    /// A Redis Cluster node's: where MOVED and ASK replies are followed.
    redirect: Option<std::sync::Weak<dyn Redirect>>,
    /// A Redis Cluster node's calls on its shared connections (the proxy's total is in
    /// `Metrics::upstream_latency`).
    pub latency: crate::metrics::Histogram,
    /// With the tier tracking: the shared connections' redirection (see `tracked.rs`).
    pub tracked: Option<Arc<Tracked>>,
}

/// A shared pool: the senders of its connection tasks.
pub struct Pool {
    target: Arc<Target>,
    breaker: Arc<Breaker>,
    conns: Box<[lanes::Lane]>,
}

impl Pool {
    /// Sends a batch on the connection `pick` gives (see `lanes.rs`), unless the circuit
    /// breaker refuses it: then it is answered at once.
    pub fn send(&self, pick: &mut Pick, batch: Batch) {
        let slot = pick.on(&self.conns);
        if let Admission::Refused { retry_in } = self.breaker.admit() {
            return batch.fail(&ProxyError::BreakerOpen { addr: self.target.describe(), retry_in });
        }
        if let Err(mpsc::error::SendError(batch)) = self.conns[slot].send(batch) {
            batch.fail(&ProxyError::UpstreamUnavailable {
                addr: self.target.describe(),
                reason: "proxy is shutting down".into(),
            });
        }
    }
}

impl Upstream {
    /// `password`: from `Config::upstream_password`; `tls`: from `transport::connector`.
    /// With `[upstream] sentinels`, no primary is known until `sentinel.rs` names one.
    pub fn new(
        config: &config::Config,
        password: Option<String>,
        tls: Option<UpstreamTls>,
        metrics: Arc<Metrics>,
    ) -> Arc<Upstream> {
        let up = &config.upstream;
        let (target, name) = match (up.sentinels.is_empty(), up.cluster.first()) {
            (false, _) => (Target::sentinel(&up.master_name), format!("'{}' (Sentinel)", up.master_name)),
            // A cluster's first seed: keyless commands' and sessions' node until the map is read.
            (true, Some(seed)) => (Target::fixed(seed), seed.clone()),
            (true, None) => (Target::fixed(&up.address), up.address.clone()),
        };
        Upstream::build(config, target, &name, password, tls, metrics, None)
    }

    /// A Redis Cluster node's upstream: its own connections and breaker; MOVED and ASK go to
    /// `redirect`.
    pub fn for_node(
        config: &config::Config,
        addr: &str,
        password: Option<String>,
        tls: Option<UpstreamTls>,
        metrics: Arc<Metrics>,
        redirect: std::sync::Weak<dyn Redirect>,
    ) -> Arc<Upstream> {
        Upstream::build(config, Target::fixed(addr), addr, password, tls, metrics, Some(redirect))
    }

    fn build(
        config: &config::Config,
        target: Target,
        name: &str,
        password: Option<String>,
        tls: Option<UpstreamTls>,
        metrics: Arc<Metrics>,
        redirect: Option<std::sync::Weak<dyn Redirect>>,
    ) -> Arc<Upstream> {
        let tracking = config.cache.enabled && config.cache.tracking == config::Tracking::On;
        let (breaker, config) = (&config.breaker, &config.upstream);
        let user = if config.username.is_empty() { "default".to_owned() } else { config.username.clone() };
        Arc::new(Upstream {
            latency: Default::default(),
            tracked: tracking.then(Arc::default),
            redirect,
            target: Arc::new(target),
            tls: tls.filter(|_| config.tls),
            metrics,
            breaker: Arc::new(Breaker::new(breaker, name)),
            connections: config.connections,
            connect_timeout: config.connect_timeout.0,
            command_timeout: config.command_timeout.0,
            pools: Mutex::new(HashMap::new()),
            info: ServerInfo::new("unknown", 16).with_login(password.map(|password| (user, password))),
            back: tokio::sync::Notify::new(),
            spares: spares::Spares::default(),
            spare_connections: config.spare_connections,
        })
    }

    /// The upstream as errors and logs name it (see [`Target::describe`]).
    pub fn addr(&self) -> String {
        self.target.describe()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// A connection of a session's own (pinned), unless the breaker is refusing calls, with
    /// `setup` (the session's CLIENT SETNAME/SETINFO) applied; their error replies are ignored.
    /// A spare connection is taken when one is ready.
    /// `refill`: open a spare for the next session at once (not for a session that starts a
    /// stream: a new MONITOR must not see the proxy's handshakes as the first thing it is shown;
    /// its spare is replaced when another session's pin ends).
    pub async fn connect_pinned(
        self: &Arc<Self>,
        key: PoolKey,
        setup: &[Bytes],
        refill: bool,
    ) -> Result<(Stream, Switch), ProxyError> {
        if let Some(retry_in) = self.breaker.refusal() {
            return Err(ProxyError::BreakerOpen { addr: self.addr(), retry_in });
        }
        let spare = self.take_spare(key);
        if refill {
            self.refill_spares(key);
        }
        let stream = match spare {
            Some(stream) => stream,
            None => {
                let connected = self.connect_watched(key).await;
                self.record_connect(&connected);
                connected?
            }
        };
        let (mut stream, switch) = stream;
        if !setup.is_empty() {
            self.within("setup", async {
                stream.write_all(&setup.concat()).await.map_err(|e| e.to_string())?;
                read_replies(&mut stream, setup.len()).await
            })
            .await?;
        }
        Ok((stream, switch))
    }

    /// A connection attempt's outcome for the breaker. An error Redis answered (-BUSY, a
    /// refused login) is none: Redis is there.
    fn record_connect<T>(&self, connected: &Result<T, ProxyError>) {
        match connected {
            Ok(_) => self.breaker.record(Outcome::Connected),
            Err(err) if !err.is_answered_refusal() => self.breaker.record(Outcome::ConnectFailed),
            Err(_) => {}
        }
    }

    /// Runs a step of connecting within `upstream.connect_timeout`; its error, or the timeout,
    /// becomes "upstream <addr> unavailable: ...".
    async fn within<T>(&self, step: &str, work: impl Future<Output = Result<T, String>>) -> Result<T, ProxyError> {
        let limit = self.connect_timeout;
        timeout(limit, work)
            .await
            .map_err(|_| self.unavailable(format!("{step} timed out after {}ms", limit.as_millis())))?
            .map_err(|reason| self.unavailable(reason))
    }

    /// The shared pool for `key`, started on first use (with spare pinned connections).
    pub fn pool(self: &Arc<Self>, key: PoolKey) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(key).or_insert_with(|| {
            self.refill_spares(key);
            let conns = (0..self.connections)
                .map(|slot| {
                    let (lane, queue) = lanes::lane();
                    tokio::spawn(shared::run(Arc::clone(self), key, slot, queue));
                    lane
                })
                .collect();
            Arc::new(Pool { target: Arc::clone(&self.target), breaker: Arc::clone(&self.breaker), conns })
        });
        Arc::clone(pool)
    }

    /// Sentinel named a new primary, or none (`sentinel.rs`). Every connection to the old one
    /// closes (see [`Switch`]), spares go, and connections waiting to reconnect dial at once;
    /// the breaker closes for the new primary (Sentinel just confirmed it answers as one) and
    /// opens while there is none. False when nothing changed.
    pub fn switch_primary(&self, addr: Option<&str>) -> bool {
        if !self.target.switch(addr) {
            return false;
        }
        self.drop_spares();
        match addr {
            Some(_) => {
                self.breaker.recovered();
                self.back.notify_waiters();
            }
            None => self.breaker.no_primary(),
        }
        true
    }

    /// Counts an upstream connection as up for as long as the guard lives.
    pub fn connection_up(&self) -> ConnectionUp {
        self.metrics.upstream_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionUp(Arc::clone(&self.metrics))
    }

    /// Drops every pool; their connections close once the batches they hold are answered.
    pub fn close(&self) {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.drop_spares();
    }

    fn unavailable(&self, reason: String) -> ProxyError {
        ProxyError::UpstreamUnavailable { addr: self.addr(), reason }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn command_timeout(&self) -> Duration {
        self.command_timeout
    }
}
