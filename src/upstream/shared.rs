//! One shared, pipelined upstream connection: a task that owns the socket, reconnects with
//! backoff, and routes each reply to the client that asked.
//!
//! The writer takes every batch waiting in the channel and sends them with one vectored write;
//! before writing it records a [`Route`] per batch in FIFO order. The reader scans reply
//! boundaries, matches them to routes in the same order (Redis answers a connection's requests
//! in order), and sends each client the run of its replies as one slice of the read buffer.
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
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use super::{Backoff, Batch, Hooks, PoolKey, ReplyChunk, ReplySink, Upstream};
use crate::breaker::{self, Outcome};
use crate::cache::Cause;
use crate::command::{self, Effect};
use crate::error::ProxyError;
use crate::framing::{CommandView, Limits, Parsed, RequestParser, parse_int};
use crate::reply::{self, ReplyScanner};
use crate::transport::{Reader, Stream, Writer};
use crate::ttl::Shaped;
use crate::writev;

const READ_CHUNK: usize = 64 * 1024;
/// Batches gathered into one write.
const MAX_BATCHES_PER_WRITE: usize = 256;

/// Requests sent on the connection and not fully answered, oldest first.
struct Route {
    sink: ReplySink,
    seq: u64,
    count: u32,
    /// Replies already delivered.
    done: u32,
    sent_at: Instant,
    /// A reply said the server cannot be used (LOADING, MASTERDOWN): a failed call.
    unusable: bool,
    hooks: Option<Box<Hooks>>,
    shaped: Option<Box<Shaped>>,
    /// With `hooks.writes`: the requests, and where the next reply's request starts.
    request: Bytes,
    request_pos: usize,
}

impl Route {
    fn new(batch: Batch, sent_at: Instant) -> (Route, Bytes) {
        let request = if batch.hooks.as_ref().is_some_and(|h| h.writes) { batch.bytes.clone() } else { Bytes::new() };
        let route = Route {
            sink: batch.sink,
            seq: batch.seq,
            count: batch.count,
            done: 0,
            sent_at,
            unusable: false,
            hooks: batch.hooks,
            shaped: batch.shaped,
            request,
            request_pos: 0,
        };
        (route, batch.bytes)
    }

    fn deliver(&mut self, bytes: Bytes, count: u32) {
        let _ = self.sink.send(ReplyChunk { seq: self.seq + u64::from(self.done), count, bytes });
        self.done += count;
    }

    fn is_probe(&self) -> bool {
        self.hooks.as_ref().is_some_and(|h| h.probe)
    }

    fn fail(mut self, err: &ProxyError) {
        let left = self.count - self.done;
        if left == 0 || self.is_probe() {
            return;
        }
        let bytes = err.to_replies(left as usize);
        if let Some(hooks) = self.hooks.take() {
            (*hooks).abort(&bytes);
        }
        self.deliver(bytes, left);
    }

    /// Tier work for one reply (`frame`), before it is delivered.
    /// Returns the reply to deliver instead of `frame`, if any (an MGET assembled with the
    /// tier's elements).
    fn on_reply(&mut self, frame: &[u8], pttls: &mut VecDeque<i64>) -> Option<Bytes> {
        let hooks = self.hooks.as_mut()?;
        if let Some(ticket) = hooks.fill.take() {
            // A copy: a slice would pin the whole read buffer for as long as it is cached.
            hooks.tier.fill(ticket, Bytes::copy_from_slice(frame), pttls.pop_front());
        }
        if let Some(split) = hooks.split.take() {
            return split.complete(&hooks.tier, frame, pttls);
        }
        self.invalidate_writes(1);
        None
    }

    /// With `hooks.writes`: invalidates the keys the next `commands` requests wrote.
    fn invalidate_writes(&mut self, commands: usize) {
        let Some(hooks) = self.hooks.as_ref().filter(|h| h.writes) else { return };
        let mut parser = RequestParser::new(Limits::NONE);
        for _ in 0..commands {
            let rest = &self.request[self.request_pos..];
            let Ok(Some(Parsed::Command { len, argc })) = parser.parse(rest) else { return };
            let cmd = CommandView::new(&rest[..len], argc);
            let name = cmd.arg(0).unwrap_or_default();
            match command::lookup(name).effect(&cmd) {
                Effect::Writes(keys) => {
                    command::written_keys(&cmd, keys).for_each(|key| hooks.tier.invalidate(key, Cause::WriteAnswered))
                }
                Effect::Flush => hooks.tier.clear(),
                Effect::CacheableRead | Effect::MultiGet | Effect::Nothing => {}
            }
            self.request_pos += len;
        }
    }
}

/// The connection task: runs until the pool is dropped and its channel drained.
pub(super) async fn run(up: Arc<Upstream>, key: PoolKey, slot: usize, mut batches: UnboundedReceiver<Batch>) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        let connected = up.connect(key).await;
        up.record_connect(&connected);
        match connected {
            Ok(stream) => {
                info!(upstream = %up.addr, db = key.db, resp3 = key.resp3, slot, "upstream connection up");
                let _up = up.connection_up();
                backoff.reset();
                failures = 0;
                match serve(&up, stream, &mut batches).await {
                    None => return,
                    Some(err) => warn!(upstream = %up.addr, slot, error = %err, "upstream connection lost"),
                }
            }
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    warn!(upstream = %up.addr, slot, error = %err, "cannot connect to upstream; retrying with backoff");
                } else {
                    debug!(upstream = %up.addr, slot, error = %err, failures, "still cannot connect to upstream");
                }
                if !refuse_for(&up, &mut batches, backoff.next_delay(), &err).await {
                    return;
                }
            }
        }
    }
}

/// Answers every batch that arrives during `wait` with `err`. False once the pool is gone.
async fn refuse_for(up: &Upstream, batches: &mut UnboundedReceiver<Batch>, wait: Duration, err: &ProxyError) -> bool {
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

/// Serves one connected socket. `None` when the pool is gone; otherwise why the socket was lost
/// (after failing every request that was sent on it and not answered).
async fn serve(up: &Upstream, stream: Stream, batches: &mut UnboundedReceiver<Batch>) -> Option<ProxyError> {
    let (rd, wr) = stream.into_split();
    let (route_tx, mut routes) = mpsc::unbounded_channel();
    let mut current: Option<Route> = None;
    let outcome = tokio::select! {
        done = write_loop(up, wr, batches, &route_tx) => done,
        lost = read_loop(up, rd, &mut routes, &mut current) => Err(lost),
    };
    let err = outcome.err()?;
    for route in current.take().into_iter().chain(std::iter::from_fn(|| routes.try_recv().ok())) {
        up.breaker.record(Outcome::Failed);
        route.fail(&err);
    }
    Some(err)
}

fn lost(up: &Upstream, reason: impl ToString) -> ProxyError {
    ProxyError::UpstreamLost { addr: up.addr.clone(), reason: reason.to_string() }
}

/// Sends batches as they come, several per write. `Ok` when the pool is gone.
async fn write_loop(
    up: &Upstream,
    mut wr: Writer,
    batches: &mut UnboundedReceiver<Batch>,
    routes: &UnboundedSender<Route>,
) -> Result<(), ProxyError> {
    let mut out: VecDeque<Bytes> = VecDeque::with_capacity(64);
    loop {
        let Some(first) = batches.recv().await else { return Ok(()) };
        let sent_at = Instant::now();
        let mut next = Some(first);
        let mut gathered = 0;
        while let Some(batch) = next {
            // The route is recorded before the bytes can reach Redis, so the reader always
            // finds it when the reply arrives.
            let (route, bytes) = Route::new(batch, sent_at);
            let _ = routes.send(route);
            out.push_back(bytes);
            gathered += 1;
            next = if gathered < MAX_BATCHES_PER_WRITE { batches.try_recv().ok() } else { None };
        }
        writev::write_all(&mut wr, &mut out).await.map_err(|e| lost(up, e))?;
    }
}

/// Reads replies and delivers them; returns only when the connection is lost.
async fn read_loop(
    up: &Upstream,
    mut rd: Reader,
    routes: &mut UnboundedReceiver<Route>,
    current: &mut Option<Route>,
) -> ProxyError {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::default();
    // The PTTL probes' answers, kept for the fills that follow them.
    let mut pttls = VecDeque::new();
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
                Ok(0) => return lost(up, "closed by upstream"),
                Ok(_) => {}
                Err(e) => return lost(up, e),
            },
            route = routes.recv(), if current.is_none() => {
                *current = route;
                continue;
            }
            _ = &mut deadline, if armed.is_some() => {
                // Busy is not dead: a long script or DEBUG SLEEP holds every connection, and other
                // clients of Redis would wait. Only when a new connection's PING is not answered
                // within another command_timeout either is this one given up.
                if up.answers_ping(up.command_timeout()).await.is_some() {
                    debug!(upstream = %up.addr, "no reply within command_timeout, but Redis answers: waiting on");
                    alive_at = Some(Instant::now());
                    continue;
                }
                return ProxyError::UpstreamTimeout { addr: up.addr.clone(), after: up.command_timeout() };
            }
        }
        if let Err(err) = deliver(up, &mut buf, &mut scanner, routes, current, &mut pttls) {
            return err;
        }
    }
}

/// Routes every complete reply in `buf` to its client, a run of replies per slice.
fn deliver(
    up: &Upstream,
    buf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    routes: &mut UnboundedReceiver<Route>,
    current: &mut Option<Route>,
    pttls: &mut VecDeque<i64>,
) -> Result<(), ProxyError> {
    // buf[..scanned] holds `frames` complete replies for `current`, not yet delivered.
    let mut scanned = 0;
    let mut frames = 0u32;
    while let Some(len) = scanner.scan(&buf[scanned..]).map_err(|e| lost(up, e))? {
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
            return Err(lost(up, "a reply arrived with no request waiting for it"));
        };
        if route.is_probe() {
            // The proxy's own PTTL (its route follows a completed one, so nothing is pending).
            pttls.push_back(parse_int(buf.get(1..len - 2).unwrap_or_default()).unwrap_or(-1));
            buf.advance(len);
            route.done += 1;
            if route.done == route.count {
                finished(up, route);
                *current = None;
            }
            continue;
        }
        route.unusable |= breaker::is_unusable(&buf[scanned..scanned + len]);
        if route.shaped.as_ref().and_then(|s| s.front()).is_some_and(|(at, _)| *at == route.done + frames) {
            // A reply of a shaped request: the replies before it go first, then it is fed to
            // its shaper until the client's one reply is complete.
            if frames > 0 {
                route.deliver(buf.split_to(scanned).freeze(), frames);
                (scanned, frames) = (0, 0);
            }
            let shaped = route.shaped.as_mut().expect("checked above");
            let (_, shaper) = shaped.front_mut().expect("checked above");
            let reply = shaper.feed(&buf[..len]);
            buf.advance(len);
            if let Some(reply) = reply {
                let commands = shaper.commands();
                shaped.pop_front();
                // Every command sent for the request has run.
                route.invalidate_writes(commands);
                route.deliver(reply, 1);
                if route.done == route.count {
                    finished(up, route);
                    *current = None;
                }
            }
            continue;
        }
        if let Some(reply) = route.on_reply(&buf[scanned..scanned + len], pttls) {
            // Delivered in place of the raw reply (a batch with a split is that one request).
            buf.advance(len);
            route.deliver(reply, 1);
            if route.done == route.count {
                finished(up, route);
                *current = None;
            }
            continue;
        }
        scanned += len;
        frames += 1;
        if route.done + frames == route.count {
            finished(up, route);
            flush(buf, scanned, frames, current);
            *current = None;
            (scanned, frames) = (0, 0);
        }
    }
    flush(buf, scanned, frames, current);
    Ok(())
}

/// Every reply of the route arrived: one call for the breaker.
fn finished(up: &Upstream, route: &Route) {
    let took = route.sent_at.elapsed();
    if !route.unusable {
        up.metrics.upstream_latency.observe(took);
    }
    up.breaker.record(if route.unusable { Outcome::Failed } else { Outcome::Answered(took) });
}

fn flush(buf: &mut BytesMut, len: usize, frames: u32, current: &mut Option<Route>) {
    if let (true, Some(route)) = (frames > 0, current.as_mut()) {
        route.deliver(buf.split_to(len).freeze(), frames);
    }
}
