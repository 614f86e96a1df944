//! One shared, pipelined upstream connection: a task that owns the socket, reconnects with
//! backoff, and routes each reply to the client that asked.
//!
//! The writer, woken by a batch, first lets every other runnable task and those the next poll
//! of the sockets wakes run (so the clients of one wave join one write), then takes every
//! batch waiting in the channel and sends them with one vectored write;
//! before writing it records a [`Route`] per batch in FIFO order. The reader scans reply
//! boundaries, matches them to routes in the same order (Redis answers a connection's requests
//! in order), gives each reply to its batch's work if it has some ([`Step`]: deliver, replace,
//! swallow), and sends each client the run of its replies as one slice of the read buffer.
//!
//! # Failure
//! If the connection breaks, or its oldest request waits longer than `upstream.command_timeout`
//! and a PING on a new connection is not answered within as long either (a busy Redis, running
//! a long script, answers it; a gone one does not), every request sent and not answered gets
//! an error saying its outcome is unknown (it may have
//! executed: it is never retried), the socket is dropped and a new one is dialled with backoff.
//! While there is no connection, batches are refused at once with an error naming the upstream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use super::lanes::Queue;
use super::{
    Backoff, Batch, MAX_HOPS, PoolKey, Redirection, ReplyChunk, ReplySink, ReplyWork, Resend, Step, Switch, Upstream,
};
use crate::breaker::{self, Outcome};
use crate::error::ProxyError;
use crate::framing::{Limits, Parsed, RequestParser};
use crate::reply::{self, ReplyScanner};
use crate::transport::{Reader, Stream, Writer};
use crate::writev;

const READ_CHUNK: usize = 64 * 1024;
/// Batches gathered into one write.
const MAX_BATCHES_PER_WRITE: usize = 256;

/// Requests sent on the connection and not fully answered, oldest first.
struct Route {
    sink: ReplySink,
    seq: u64,
    /// Replies the client gets, and those already delivered.
    count: u32,
    done: u32,
    /// Replies Redis sends, and those already read.
    replies: u32,
    read: u32,
    sent_at: Instant,
    /// A reply said the server cannot be used (LOADING, MASTERDOWN): a failed call.
    unusable: bool,
    work: Option<Box<dyn ReplyWork>>,
    /// Redis Cluster only: what MOVED and ASK need (see [`Redirected`]).
    cluster: Option<Box<Redirected>>,
}

/// A cluster node's batch, kept until answered: a request Redis redirects is sent again.
struct Redirected {
    bytes: Bytes,
    hops: u8,
    /// Sent after ASKING: its reply (the first) is dropped.
    asking: bool,
    /// Where the next request of `bytes` starts, and its index (requests are found in order).
    next: (u32, usize),
    /// A batch of one request with work was redirected: its other replies are dropped and it
    /// is sent again whole.
    whole: Option<Redirection>,
}

impl Route {
    fn new(batch: Batch, sent_at: Instant, cluster: bool) -> (Route, Bytes) {
        let Batch { bytes, seq, count, replies, sink, work, hops, asking } = batch;
        let cluster =
            cluster.then(|| Box::new(Redirected { bytes: bytes.clone(), hops, asking, next: (0, 0), whole: None }));
        (Route { sink, seq, count, done: 0, replies, read: 0, sent_at, unusable: false, work, cluster }, bytes)
    }

    /// The proxy's own command, whose one reply goes to `work` alone.
    fn hidden(work: Box<dyn ReplyWork>, sent_at: Instant) -> Route {
        let (sink, _) = mpsc::unbounded_channel();
        let (count, done, replies, read, unusable, cluster) = (0, 0, 1, 0, false, None);
        Route { sink, seq: 0, count, done, replies, read, sent_at, unusable, work: Some(work), cluster }
    }

    fn deliver(&mut self, bytes: Bytes, count: u32) {
        let _ = self.sink.send(ReplyChunk { seq: self.seq + u64::from(self.done), count, bytes });
        self.done += count;
    }

    fn fail(mut self, err: &ProxyError) {
        let left = self.count - self.done;
        let bytes = err.to_replies(left as usize);
        if let Some(work) = self.work.as_mut() {
            work.fail(&bytes);
        }
        if left > 0 {
            self.deliver(bytes, left);
        }
    }
}

/// The connection task: runs until the pool is dropped and its channel drained.
pub(super) async fn run(up: Arc<Upstream>, key: PoolKey, slot: usize, mut batches: Queue) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        let connected = up.connect_watched(key).await;
        up.record_connect(&connected);
        match connected {
            Ok((stream, switch)) => {
                info!(upstream = %up.addr(), db = key.db, resp3 = key.resp3, slot, "upstream connection up");
                let _up = up.connection_up();
                backoff.reset();
                failures = 0;
                match serve(&up, stream, switch, &mut batches, (key, slot)).await {
                    None => return,
                    Some(Lost::Switched) => info!(upstream = %up.addr(), slot, "the primary changed: reconnecting"),
                    Some(Lost::Error(err)) => {
                        warn!(upstream = %up.addr(), slot, error = %err, "upstream connection lost");
                        up.target.doubt();
                    }
                }
            }
            Err(err) => {
                up.target.doubt();
                failures += 1;
                if failures == 1 {
                    warn!(upstream = %up.addr(), slot, error = %err, "cannot connect to upstream; retrying with backoff");
                } else {
                    debug!(upstream = %up.addr(), slot, error = %err, failures, "still cannot connect to upstream");
                }
                if !refuse_for(&up, &mut batches, backoff.next_delay(), &err).await {
                    return;
                }
            }
        }
    }
}

/// Answers every batch that arrives during `wait` with `err`. False once the pool is gone.
async fn refuse_for(up: &Upstream, batches: &mut Queue, wait: Duration, err: &ProxyError) -> bool {
    let until = sleep(wait);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return true,
            _ = up.back.notified() => return true,
            batch = batches.recv() => match batch {
                Some(batch) => {
                    // A failed call: a half-open probe must not wait for an answer that never comes.
                    // (Not when Redis answered the handshake with an error: it is there.)
                    if !err.is_answered_refusal() {
                        up.breaker.record(Outcome::Failed);
                    }
                    batch.fail(err);
                }
                None => return false,
            },
        }
    }
}

/// Why a connected socket was given up.
enum Lost {
    /// The primary changed (Sentinel): not a failure of the upstream.
    Switched,
    Error(ProxyError),
}

/// Serves one connected socket. `None` when the pool is gone; otherwise why the socket was lost
/// (after failing every request that was sent on it and not answered).
async fn serve(
    up: &Upstream,
    stream: Stream,
    mut switch: Switch,
    batches: &mut Queue,
    lane: (PoolKey, usize),
) -> Option<Lost> {
    let (rd, wr) = stream.into_split();
    let (route_tx, mut routes) = mpsc::unbounded_channel();
    let mut current: Option<Route> = None;
    // The tracking generation this connection redirected for (see `tracked.rs`).
    let mut redirected = 0;
    // Taken from the channel and not yet routed (the writer waits a turn before writing them).
    let mut gathered: Vec<Batch> = Vec::with_capacity(64);
    let receiving = batches.receiving();
    let ended = tokio::select! {
        done = write_loop(up, wr, batches, &mut gathered, &route_tx, &mut redirected) => done.err().map(Lost::Error),
        lost = read_loop(up, rd, &mut switch, &mut routes, &mut current, lane, &receiving) => Some(lost),
    };
    receiving.store(0, Ordering::Relaxed);
    // Closed for whatever reason (the pool dropped too): Redis forgets the keys it tracked.
    if let Some(tracked) = &up.tracked {
        tracked.connection_lost(redirected);
    }
    let lost = ended?;
    // What requests in flight get: a switch is no failure of the upstream for the breaker.
    let err = match &lost {
        Lost::Switched => {
            lost_error(up, "the primary changed (Sentinel failover); the outcome of this request is unknown")
        }
        Lost::Error(err) => err.clone(),
    };
    for route in current.take().into_iter().chain(std::iter::from_fn(|| routes.try_recv().ok())) {
        if matches!(lost, Lost::Error(_)) {
            up.breaker.record(Outcome::Failed);
        }
        route.fail(&err);
    }
    for batch in gathered {
        batch.fail(&err);
    }
    Some(lost)
}

fn lost_error(up: &Upstream, reason: impl ToString) -> ProxyError {
    ProxyError::UpstreamLost { addr: up.addr(), reason: reason.to_string() }
}

/// Sends batches as they come, several per write. `Ok` when the pool is gone.
async fn write_loop(
    up: &Upstream,
    mut wr: Writer,
    batches: &mut Queue,
    gathered: &mut Vec<Batch>,
    routes: &UnboundedSender<Route>,
    redirected: &mut u64,
) -> Result<(), ProxyError> {
    let mut out: VecDeque<Bytes> = VecDeque::with_capacity(64);
    loop {
        let Some(first) = batches.recv().await else { return Ok(()) };
        gathered.push(first);
        // Wait for the tasks already runnable and those the next poll of the sockets wakes (the
        // scheduler runs a yielded task after both): every client whose request is ready by then
        // joins this write, so Redis reads one socket once for all of them.
        tokio::task::yield_now().await;
        let sent_at = Instant::now();
        while gathered.len() < MAX_BATCHES_PER_WRITE
            && let Some(batch) = batches.try_recv()
        {
            gathered.push(batch);
        }
        // Asked after the last batch was taken: a read that may fill the tier was routed after
        // the tracking generation it relies on was published, so it is tracked for it.
        if let Some(tracked) = &up.tracked
            && let Some(redirection) = tracked.redirection(redirected)
        {
            let _ = routes.send(Route::hidden(tracked.confirm(*redirected), sent_at));
            out.push_back(redirection);
        }
        for batch in gathered.drain(..) {
            // The route is recorded before the bytes can reach Redis, so the reader always
            // finds it when the reply arrives.
            let asking = batch.asking;
            let (route, bytes) = Route::new(batch, sent_at, up.redirect.is_some());
            let _ = routes.send(route);
            if asking {
                out.push_back(Bytes::from_static(b"*1\r\n$6\r\nASKING\r\n"));
            }
            out.push_back(bytes);
        }
        writev::write_all(&mut wr, &mut out).await.map_err(|e| lost_error(up, e))?;
    }
}

/// Reads replies and delivers them; returns only when the connection is lost.
async fn read_loop(
    up: &Upstream,
    mut rd: Reader,
    switch: &mut Switch,
    routes: &mut UnboundedReceiver<Route>,
    current: &mut Option<Route>,
    lane: (PoolKey, usize),
    receiving: &AtomicUsize,
) -> Lost {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::default();
    let deadline = sleep_until(Instant::now());
    tokio::pin!(deadline);
    let mut armed: Option<Instant> = None;
    // Redis answered a PING on another connection at this time: it is busy, not gone.
    let mut alive_at: Option<Instant> = None;
    loop {
        if current.is_none() {
            *current = routes.try_recv().ok();
        }
        // The oldest unanswered request bounds how long we wait for the next byte, unless Redis
        // showed since that it is there.
        let due = current.as_ref().map(|r| r.sent_at.max(alive_at.unwrap_or(r.sent_at)) + up.command_timeout());
        if due != armed {
            if let Some(due) = due {
                deadline.as_mut().reset(due);
            }
            armed = due;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => return Lost::Error(lost_error(up, "closed by upstream")),
                Ok(_) => {}
                Err(e) => return Lost::Error(lost_error(up, e)),
            },
            _ = switch.wait() => return Lost::Switched,
            route = routes.recv(), if current.is_none() => {
                *current = route;
                continue;
            }
            _ = &mut deadline, if armed.is_some() => {
                // Busy is not dead: a long script or DEBUG SLEEP holds every connection, and other
                // clients of Redis would wait. Only when a new connection's PING is not answered
                // within another command_timeout either is this one given up.
                if up.answers_ping(up.command_timeout()).await.is_some() {
                    debug!(upstream = %up.addr(), "no reply within command_timeout, but Redis answers: waiting on");
                    alive_at = Some(Instant::now());
                    continue;
                }
                return Lost::Error(ProxyError::UpstreamTimeout { addr: up.addr(), after: up.command_timeout() });
            }
        }
        // What the old primary answers after a switch reaches no client and no tier.
        if switch.happened() {
            return Lost::Switched;
        }
        if let Err(err) = deliver(up, &mut buf, &mut scanner, routes, current, lane) {
            return Lost::Error(err);
        }
        // What is left is the start of a reply: a large one keeps idle clients away (`lanes.rs`),
        // as soon as its bulk string's length is read.
        receiving.store(buf.len().max(scanner.known_len(&buf)), Ordering::Relaxed);
    }
}

/// Routes every complete reply in `buf` to its client, a run of replies per slice; a route
/// with work gives it each reply first (see [`Step`]).
fn deliver(
    up: &Upstream,
    buf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    routes: &mut UnboundedReceiver<Route>,
    current: &mut Option<Route>,
    lane: (PoolKey, usize),
) -> Result<(), ProxyError> {
    // buf[..scanned] holds `frames` complete replies for `current`, not yet delivered.
    let mut scanned = 0;
    let mut frames = 0u32;
    while let Some(len) = scanner.scan(&buf[scanned..]).map_err(|e| lost_error(up, e))? {
        if reply::is_push(&buf[scanned..scanned + len]) {
            // Shared connections never subscribe or track; drop a stray push, keep the order.
            flush(buf, scanned, frames, current);
            (scanned, frames) = (0, 0);
            buf.advance(len);
            continue;
        }
        if current.is_none() {
            *current = routes.try_recv().ok();
        }
        let Some(route) = current.as_mut() else {
            return Err(lost_error(up, "a reply arrived with no request waiting for it"));
        };
        let frame = &buf[scanned..scanned + len];
        if route.cluster.as_deref().is_some_and(|c| c.takes(route.read, frame)) {
            // Redis Cluster: ASKING's reply, or a redirection (the request is sent on).
            flush(buf, scanned, frames, current);
            (scanned, frames) = (0, 0);
            let frame = buf.split_to(len);
            let route = current.as_mut().expect("checked above");
            redirect(up, route, &frame, lane);
            route.read += 1;
            if route.read == route.replies {
                finished(up, route);
                resend_whole(up, route, lane);
                *current = None;
            }
            continue;
        }
        route.unusable |= breaker::is_unusable(frame);
        if reply::is_readonly(frame) {
            // A replica: the primary moved. The write gets Redis's error, never a retry.
            up.target.doubt();
        }
        route.read += 1;
        match route.work.as_mut().map_or(Step::Deliver, |work| work.reply(frame)) {
            Step::Deliver => {
                scanned += len;
                frames += 1;
            }
            step => {
                // The run before it goes first; this one is replaced or dropped.
                flush(buf, scanned, frames, current);
                (scanned, frames) = (0, 0);
                buf.advance(len);
                let route = current.as_mut().expect("checked above");
                if let Step::Replace(reply) = step {
                    route.deliver(reply, 1);
                }
            }
        }
        let route = current.as_mut().expect("checked above");
        if route.read == route.replies {
            finished(up, route);
            flush(buf, scanned, frames, current);
            *current = None;
            (scanned, frames) = (0, 0);
        }
    }
    flush(buf, scanned, frames, current);
    Ok(())
}

impl Redirected {
    /// Whether the connection, not the client, takes this reply (the `read`th of the batch).
    fn takes(&self, read: u32, frame: &[u8]) -> bool {
        (self.asking && read == 0)
            || self.whole.is_some()
            || frame.starts_with(b"-MOVED ")
            || frame.starts_with(b"-ASK ")
            // Retried a few times; then the client gets Redis's error.
            || (self.hops < MAX_HOPS && (frame.starts_with(b"-TRYAGAIN ") || frame.starts_with(b"-CLUSTERDOWN ")))
    }

    /// The batch's request `index` (asked for in increasing order).
    fn request(&mut self, index: u32) -> Option<Bytes> {
        let mut parser = RequestParser::new(Limits::NONE);
        loop {
            let (at, offset) = self.next;
            let Ok(Some(Parsed::Command { len, .. })) = parser.parse(&self.bytes[offset..]) else { return None };
            self.next = (at + 1, offset + len);
            if at == index {
                return Some(self.bytes.slice(offset..offset + len));
            }
        }
    }
}

/// A reply the connection takes from a cluster node's batch (see [`Redirected::takes`]). A
/// redirected request of a run is sent on alone, its reply taking its place in the client's
/// order; a batch of one request with work is sent on whole once its last reply is read.
fn redirect(up: &Upstream, route: &mut Route, frame: &[u8], lane: (PoolKey, usize)) {
    let Some(cluster) = route.cluster.as_deref_mut() else { return };
    if (cluster.asking && route.read == 0) || cluster.whole.is_some() {
        return;
    }
    let Some(mut to) = Redirection::parse(frame) else { return };
    if to.kind == Resend::Retry {
        to.addr = up.addr();
    }
    if !route.work.as_ref().is_none_or(|work| work.per_request()) {
        cluster.whole = Some(to);
        return;
    }
    let index = route.read - u32::from(cluster.asking);
    let Some(request) = cluster.request(index) else { return };
    if let Some(work) = route.work.as_mut() {
        // Work per request keeps its place in the batch (nothing is delivered from it).
        work.reply(frame);
    }
    let batch = Batch {
        work: route.work.as_ref().and_then(|work| work.for_part(&request)),
        bytes: request,
        seq: route.seq + u64::from(route.done),
        count: 1,
        replies: 1 + u32::from(to.ask()),
        sink: route.sink.clone(),
        hops: cluster.hops.saturating_add(1),
        asking: to.ask(),
    };
    route.done += 1;
    send_on(up, to, batch, lane);
}

/// The last reply of a batch redirected whole arrived: it is sent on, its work restarted.
fn resend_whole(up: &Upstream, route: &mut Route, lane: (PoolKey, usize)) {
    let Some(cluster) = route.cluster.as_deref_mut() else { return };
    let Some(to) = cluster.whole.take() else { return };
    let mut work = route.work.take();
    if let Some(work) = work.as_mut() {
        work.restart();
    }
    let batch = Batch {
        bytes: cluster.bytes.clone(),
        seq: route.seq + u64::from(route.done),
        count: route.count - route.done,
        replies: route.replies - u32::from(cluster.asking) + u32::from(to.ask()),
        sink: route.sink.clone(),
        work,
        hops: cluster.hops.saturating_add(1),
        asking: to.ask(),
    };
    route.done = route.count;
    send_on(up, to, batch, lane);
}

fn send_on(up: &Upstream, to: Redirection, batch: Batch, (key, lane): (PoolKey, usize)) {
    match up.redirect.as_ref().and_then(std::sync::Weak::upgrade) {
        Some(redirect) => redirect.redirect(to, batch, key, lane),
        None => batch.fail(&lost_error(up, "the proxy is shutting down")),
    }
}

/// Every reply of the route arrived: one call for the breaker.
fn finished(up: &Upstream, route: &Route) {
    let took = route.sent_at.elapsed();
    if !route.unusable {
        up.metrics.upstream_latency.observe(took);
        if route.cluster.is_some() {
            up.latency.observe(took);
        }
    }
    up.breaker.record(if route.unusable { Outcome::Failed } else { Outcome::Answered(took) });
}

fn flush(buf: &mut BytesMut, len: usize, frames: u32, current: &mut Option<Route>) {
    if let (true, Some(route)) = (frames > 0, current.as_mut()) {
        route.deliver(buf.split_to(len).freeze(), frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that swallows its first reply and replaces the rest with `+replaced`.
    struct SwallowFirst(bool);

    impl ReplyWork for SwallowFirst {
        fn reply(&mut self, _frame: &[u8]) -> Step {
            if std::mem::replace(&mut self.0, true) {
                Step::Replace(Bytes::from_static(b"+replaced\r\n"))
            } else {
                Step::Swallow
            }
        }
        fn fail(&mut self, _error: &Bytes) {}
    }

    fn upstream() -> Arc<Upstream> {
        let config = crate::config::Config::default();
        Upstream::new(&config, None, None, Arc::new(crate::metrics::Metrics::default()))
    }

    /// Replies for two clients in one read: a plain batch's arrive as one slice, the other's go
    /// through its work, and a partial reply waits for the rest.
    #[tokio::test]
    async fn replies_reach_their_batches_through_their_work() {
        let up = upstream();
        let (tx, mut routes) = mpsc::unbounded_channel();
        let (plain_sink, mut plain) = mpsc::unbounded_channel();
        let (work_sink, mut worked) = mpsc::unbounded_channel();
        let now = Instant::now();
        let (route, _) = Route::new(Batch::plain(Bytes::new(), 10, 2, plain_sink), now, false);
        tx.send(route).unwrap();
        let batch = Batch {
            bytes: Bytes::new(),
            seq: 3,
            count: 1,
            replies: 2,
            sink: work_sink,
            work: Some(Box::new(SwallowFirst(false))),
            hops: 0,
            asking: false,
        };
        tx.send(Route::new(batch, now, false).0).unwrap();
        let mut buf = BytesMut::from(&b"+a\r\n$1\r\nb\r\n:1\r\n+x\r\n$5\r\npar"[..]);
        let (mut scanner, mut current) = (ReplyScanner::default(), None);
        deliver(&up, &mut buf, &mut scanner, &mut routes, &mut current, (PoolKey::default(), 0)).unwrap();
        let chunk = plain.try_recv().unwrap();
        assert_eq!((chunk.seq, chunk.count, &chunk.bytes[..]), (10, 2, &b"+a\r\n$1\r\nb\r\n"[..]));
        let chunk = worked.try_recv().unwrap();
        assert_eq!((chunk.seq, chunk.count, &chunk.bytes[..]), (3, 1, &b"+replaced\r\n"[..]));
        assert!(current.is_none(), "both batches answered");
        assert_eq!(&buf[..], b"$5\r\npar", "the partial reply waits for its end");
        // A reply nobody asked for: the connection cannot be trusted any more.
        buf.extend_from_slice(b"ty\r\n");
        assert!(deliver(&up, &mut buf, &mut scanner, &mut routes, &mut current, (PoolKey::default(), 0)).is_err());
    }

    /// A failed batch answers every reply its client has not had, and its work is told.
    #[test]
    fn a_failed_route_answers_what_is_left() {
        let (sink, mut replies) = mpsc::unbounded_channel();
        let mut route = Route::new(Batch::plain(Bytes::new(), 0, 3, sink), Instant::now(), false).0;
        route.deliver(Bytes::from_static(b"+first\r\n"), 1);
        route.fail(&ProxyError::UpstreamLost { addr: "r".into(), reason: "gone".into() });
        assert_eq!(replies.try_recv().unwrap().count, 1);
        let failed = replies.try_recv().unwrap();
        assert_eq!((failed.seq, failed.count), (1, 2));
        assert!(failed.bytes.starts_with(b"-"), "{:?}", failed.bytes);
    }
}
