//! Where a routed request goes: answered here, joined to the run of requests before it (sent
//! together as one slice of the read buffer), held until earlier replies arrive (a new
//! destination, see "Ordering across destinations"), or sent to the shared pool or the pinned
//! connection with the tier's and TTL enforcement's work for its replies.

use bytes::{Buf, Bytes, BytesMut};

use super::Client;
use crate::cache::Registrations;
use crate::delivery::{Delivery, InfoView};
use crate::proxy::{Expect, Route};
use crate::ttl::{Rewrite, Shape};
use crate::upstream::{Batch, Pick, Pool, PoolKey, ReplyChunk, ReplyWork};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    Shared(PoolKey),
    Pinned { stream: bool },
}

impl Dest {
    /// Whether each request gets one reply (not so for a pub/sub or MONITOR stream).
    pub(super) fn counted(self) -> bool {
        !matches!(self, Dest::Pinned { stream: true })
    }
}

/// Parsed requests at the front of the read buffer, all for one destination, not yet sent.
pub(super) struct Run {
    dest: Dest,
    seq: u64,
    count: u32,
    pub(super) len: usize,
    /// Some of them are writes (their keys are invalidated again as replies arrive, unless no
    /// read was registered since the earliest of their first invalidations).
    writes: Option<Registrations>,
    /// What to send instead of `rbuf[..len]`, once a request of the run is not the client's
    /// bytes (an inline command re-encoded, a write with its TTL added): the run's requests,
    /// copied, in order.
    owned: Option<BytesMut>,
    /// Requests of the run whose replies are shaped (TTL enforcement), by reply index.
    shaped: Vec<(u32, Shape)>,
}

/// A request for a new destination, waiting for the replies of all requests before it.
pub(super) struct Held {
    pub(super) dest: Dest,
    pub(super) bytes: Bytes,
    pub(super) seq: u64,
    pub(super) work: TierWork,
}

/// What happens when a batch's replies arrive: the local tier's work, and TTL enforcement's
/// reply shapes (by the index of the request's reply in the batch).
#[derive(Default)]
pub(super) struct TierWork {
    /// A read through the tier (a fill or a split MGET): its work, built when it was routed so
    /// that the read in flight is released whatever happens to the request (dropped held).
    read: Option<Box<Delivery>>,
    writes: Option<Registrations>,
    /// INFO: its reply leaves out the proxy's own tracking connection.
    info: bool,
    shaped: Vec<(u32, Shape)>,
    /// On the pinned connection: what comes back beyond one plain reply.
    pub(super) expect: Expect,
}

impl TierWork {
    /// Whether the request may join a run of others: nothing but forwarding and, on the
    /// shared pool (whose connections shape each request of a batch), reply shaping (not in
    /// front of a cluster, where a run is split per node and a redirected request sent alone).
    fn joins_runs(&self, dest: Dest, cluster: bool) -> bool {
        self.read.is_none()
            && !self.info
            && self.expect == Expect::One
            && (self.shaped.is_empty() || (matches!(dest, Dest::Shared(_)) && !cluster))
    }

    /// How many replies the request gets (on a destination whose replies are counted).
    pub(super) fn replies(&self) -> u32 {
        match self.expect {
            Expect::Pushes(n) => n,
            _ => 1,
        }
    }
}

/// TTL enforcement's rewrite of one request: its bytes replace the client's (`inline`), and its
/// reply shape, if any, is the request's (index 0 of its own batch).
fn rewritten(rewrite: Option<Rewrite>, inline: &mut Option<Bytes>) -> Vec<(u32, Shape)> {
    let Some(Rewrite { bytes, shape }) = rewrite else { return Vec::new() };
    if bytes.is_some() {
        *inline = bytes;
    }
    shape.map(|shape| vec![(0, shape)]).unwrap_or_default()
}

impl Client {
    /// `len` is the request's length in the read buffer (after the current run); `inline` its
    /// re-encoded bytes when the client sent an inline command.
    pub(super) async fn dispatch(&mut self, route: Route, len: usize, mut inline: Option<Bytes>) {
        let close = matches!(route, Route::Close(_));
        let (dest, work) = match route {
            Route::Reply(bytes) | Route::Hit(bytes) | Route::Close(bytes) => {
                self.closing |= close;
                self.skip_frame(len).await;
                self.reply_local(bytes);
                return;
            }
            Route::Joined => {
                // The reply comes from the read in flight, through the tier.
                self.skip_frame(len).await;
                self.next_seq += 1;
                return;
            }
            Route::Shared(key) => (Dest::Shared(key), TierWork::default()),
            Route::Info(key) => (Dest::Shared(key), TierWork { info: true, ..TierWork::default() }),
            Route::Write(key, rewrite, before) => {
                let shaped = rewritten(rewrite, &mut inline);
                (Dest::Shared(key), TierWork { writes: Some(before), shaped, ..TierWork::default() })
            }
            Route::Fill(key, ticket) => {
                let read = Delivery::for_read(self.ctx.tier.as_ref(), Some(ticket), None);
                (Dest::Shared(key), TierWork { read, ..TierWork::default() })
            }
            Route::Split(key, split, bytes) => {
                // The client's MGET is replaced by one for the keys the tier did not have.
                inline = Some(bytes);
                let read = Delivery::for_read(self.ctx.tier.as_ref(), None, Some(split));
                (Dest::Shared(key), TierWork { read, ..TierWork::default() })
            }
            Route::Pinned { stream, rewrite, expect, info } => {
                let shaped = rewritten(rewrite, &mut inline);
                if expect == Expect::Quit {
                    // Redis answers QUIT and closes; the client is closed once that happened.
                    (self.closing, self.quitting) = (true, true);
                }
                (Dest::Pinned { stream }, TierWork { shaped, expect, info, ..TierWork::default() })
            }
        };
        let counted = u32::from(dest.counted()) * work.replies();
        // Nothing to do with its replies but deliver them: it may join the run before it.
        let plain = work.joins_runs(dest, self.ctx.cluster.is_some());
        if let (true, Some(run)) = (plain, self.run.as_mut())
            && run.dest == dest
        {
            match (&inline, &mut run.owned) {
                (None, None) => {}
                (None, Some(owned)) => owned.extend_from_slice(&self.rbuf[run.len..run.len + len]),
                (Some(bytes), owned) => {
                    owned.get_or_insert_with(|| BytesMut::from(&self.rbuf[..run.len])).extend_from_slice(bytes)
                }
            }
            run.len += len;
            run.shaped.extend(work.shaped.into_iter().map(|(_, shape)| (run.count, shape)));
            run.count += counted;
            run.writes = match (run.writes, work.writes) {
                (Some(run), Some(this)) => Some(run.min(this)),
                (run, this) => run.or(this),
            };
            self.next_seq += u64::from(counted);
            return;
        }
        self.flush_run().await;
        let seq = self.next_seq;
        self.next_seq += u64::from(counted);
        let held = self.last_dest != Some(dest) && self.replies.next != seq;
        if plain && !held {
            self.last_dest = Some(dest);
            let owned = inline.map(|bytes| BytesMut::from(&bytes[..]));
            self.run = Some(Run { dest, seq, count: counted, len, writes: work.writes, owned, shaped: work.shaped });
            return;
        }
        let bytes = match inline {
            Some(encoded) => {
                self.rbuf.advance(len);
                encoded
            }
            None => self.rbuf.split_to(len).freeze(),
        };
        if held {
            self.held = Some(Held { dest, bytes, seq, work });
        } else {
            self.send(dest, bytes, seq, counted, work).await;
        }
    }

    /// Consumes a request that is not forwarded (sending the run before it first).
    pub(super) async fn skip_frame(&mut self, len: usize) {
        self.flush_run().await;
        self.rbuf.advance(len);
    }

    pub(super) fn reply_local(&mut self, bytes: Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.replies.accept(ReplyChunk { seq, count: 1, bytes });
    }

    pub(super) async fn flush_run(&mut self) {
        if let Some(run) = self.run.take() {
            let bytes = match run.owned {
                Some(owned) => {
                    self.rbuf.advance(run.len);
                    owned.freeze()
                }
                None => self.rbuf.split_to(run.len).freeze(),
            };
            let work = TierWork { writes: run.writes, shaped: run.shaped, ..TierWork::default() };
            self.send(run.dest, bytes, run.seq, run.count, work).await;
        }
    }

    /// What INFO's reply shows this proxy's clients (see `delivery::as_clients_see_it`).
    fn info_view(&self) -> InfoView {
        InfoView {
            own_tracking: match &self.ctx.cluster {
                Some(cluster) => cluster.own_tracking_clients(),
                None => self.ctx.upstream.tracked.as_ref().map_or(0, |tracked| tracked.connections()),
            },
            clients: self.ctx.metrics.clients_connected.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64,
        }
    }

    pub(super) async fn send(&mut self, dest: Dest, bytes: Bytes, seq: u64, count: u32, work: TierWork) {
        self.last_dest = Some(dest);
        match dest {
            Dest::Shared(key) => {
                let TierWork { read, writes, info, shaped, .. } = work;
                let tier = self.ctx.tier.as_ref();
                let work = match (read, info) {
                    (Some(read), _) => Some(read),
                    (None, true) => Some(Delivery::for_info(self.info_view())),
                    (None, false) => Delivery::for_batch(tier, &bytes, writes, shaped),
                };
                let batch = match work {
                    Some(delivery) => delivery.into_batch(bytes, seq, count, &self.sink),
                    None => Batch::plain(bytes, seq, count, self.sink.clone()),
                };
                // Every earlier reply arrived: Redis ran them all, any connection keeps the order.
                let mut pick = Pick { current: self.lane, in_flight: self.replies.next != seq };
                match &self.ctx.cluster {
                    Some(cluster) => cluster.send(key, &mut pick, batch),
                    None => self.pool(key).send(&mut pick, batch),
                }
                self.lane = pick.current;
            }
            Dest::Pinned { stream } => {
                // A shaped request (or INFO) is sent to a pinned connection on its own.
                let TierWork { info, shaped, expect, .. } = work;
                let replies: Option<Box<dyn ReplyWork>> = match info {
                    true => Some(Delivery::for_info(self.info_view())),
                    false => Delivery::for_batch(None, &bytes, None, shaped).map(|d| d as Box<dyn ReplyWork>),
                };
                // Boxed: every caller's future (and so every client's task) would hold its
                // state, the size of a write to the pinned connection, while only pinned
                // sessions use it.
                Box::pin(self.send_pinned(bytes, seq, count, stream, replies, expect)).await
            }
        }
    }

    fn pool(&mut self, key: PoolKey) -> &Pool {
        if self.pool.as_ref().is_none_or(|(k, _)| *k != key) {
            self.pool = Some((key, self.ctx.upstream.pool(key)));
        }
        &self.pool.as_ref().expect("set above").1
    }
}
