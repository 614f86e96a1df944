//! One client connection: framing requests in, replies out strictly in request order.
//!
//! Each request gets a sequence number. Replies come back as [`ReplyChunk`]s (from the shared
//! pool, from the pinned connection, or built by the proxy) and are written in sequence order,
//! several per vectored write.
//!
//! Consecutive requests for the same destination are sent as one slice of the read buffer,
//! exactly as the client wrote them.
//!
//! # Ordering across destinations
//! Redis orders a connection's commands, but not commands on two connections. When a client's
//! destination changes (shared pool -> pinned connection after MULTI, db 0 -> db 1 after SELECT,
//! into a pub/sub stream), the first request for the new destination is *held* until every
//! earlier request has been answered, so it cannot run before them.
//!
//! # Backpressure
//! At most `listen.max_pending_replies` requests may wait for replies; past that, and while
//! replies cannot be written to a client that does not read, nothing more is read from it.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Sleep, sleep_until};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::admin;
use crate::client_table::{KILLED, Registration, SHUTDOWN};
use crate::command::Command;
use crate::context::Context;
use crate::error::ProxyError;
use crate::framing::{CommandView, Parsed, RequestParser};
use crate::metrics::{self, Metrics, Outcome};
use crate::pinned_conn::PinnedConn;
use crate::proxy::{Env, Route, Session};
use crate::transport::{Reader, Stream, Writer};
use crate::upstream::{Pool, PoolKey, ReplyChunk, ReplySink};
use crate::writev;

/// How long a refused client gets to receive its error.
pub(crate) const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

mod dispatch;
mod pinned_driver;

use dispatch::{Dest, Held, Run};
use pinned_driver::read_pinned;

/// Read buffer space: a client starts small (thousands of idle clients stay cheap) and gets
/// more once a read fills what it had.
const FIRST_READ: usize = 512;
const READ_CHUNK: usize = 16 * 1024;

/// Replies waiting to be written, in request order.
#[derive(Default)]
struct Replies {
    /// Sequence number of the next reply to queue for writing.
    next: u64,
    ready: VecDeque<Bytes>,
    /// Chunks that arrived before an earlier one.
    early: BTreeMap<u64, ReplyChunk>,
}

impl Replies {
    fn accept(&mut self, chunk: ReplyChunk) {
        if chunk.seq != self.next {
            self.early.insert(chunk.seq, chunk);
            return;
        }
        self.push(chunk);
        while let Some(chunk) = self.early.remove(&self.next) {
            self.push(chunk);
        }
    }

    fn push(&mut self, chunk: ReplyChunk) {
        self.next += u64::from(chunk.count);
        self.ready.push_back(chunk.bytes);
    }
}

pub struct Client {
    ctx: Arc<Context>,
    session: Session,
    rd: Reader,
    wr: Writer,
    rbuf: BytesMut,
    parser: RequestParser,
    replies: Replies,
    sink: ReplySink,
    chunks: mpsc::UnboundedReceiver<ReplyChunk>,
    next_seq: u64,
    run: Option<Run>,
    held: Option<Held>,
    last_dest: Option<Dest>,
    pool: Option<(PoolKey, Arc<Pool>)>,
    /// The index of the shared connection its last batch went to, in every pool (see `Pick`).
    lane: usize,
    pinned: Option<PinnedConn>,
    /// Its row in the proxy's client table (CLIENT LIST, CLIENT KILL), while it is served.
    listed: Registration,
    /// No more requests are read (QUIT, protocol error, EOF, shutdown); close once answered.
    closing: bool,
    /// The client closed its side (it may still read: replies in flight are delivered).
    hung_up: bool,
    /// QUIT went to the pinned connection: the client is closed once Redis closed that.
    quitting: bool,
    /// The pinned connection was lost with session state on it: once every reply before
    /// this sequence number is written, the client is closed (as Redis would have).
    lost_at: Option<u64>,
    /// Space reserved for the next read: [`FIRST_READ`] until a read fills half of it.
    read_chunk: usize,
    /// When the client last sent bytes.
    last_read: Instant,
    /// Since when the read buffer ends in an incomplete request the client has not finished.
    partial_since: Option<Instant>,
    /// Fires at the idle or request deadline (re-armed only when it changes).
    deadline: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

/// Serves one client until it disconnects, quits, or the proxy shuts down.
pub async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    id: u64,
    ctx: Arc<Context>,
    shutdown: watch::Receiver<bool>,
) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else { return };
    let fd = i64::from(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let _ = stream.set_nodelay(true);
    let stream = match Box::pin(Stream::accept(stream, tls.as_ref())).await {
        Ok(stream) => stream,
        Err(e) => return debug!(client = id, %peer, error = %e, "TLS handshake failed"),
    };
    let (rd, wr) = stream.into_split();
    let (sink, chunks) = mpsc::unbounded_channel();
    let listed = ctx.clients.register(id, peer, local, fd, sink.clone());
    // Registered after the shutdown was announced to the table: it tells itself.
    let closing = *shutdown.borrow();
    let user = ctx.live.load().access.initial_user();
    let mut client = Client {
        parser: RequestParser::new(ctx.limits),
        ctx,
        session: Session::new(id).with_user(user),
        rd,
        wr,
        rbuf: BytesMut::with_capacity(FIRST_READ),
        read_chunk: FIRST_READ,
        replies: Replies::default(),
        sink,
        chunks,
        next_seq: 0,
        run: None,
        held: None,
        last_dest: None,
        pool: None,
        lane: 0,
        pinned: None,
        listed,
        closing,
        hung_up: false,
        quitting: false,
        lost_at: None,
        last_read: Instant::now(),
        partial_since: None,
        deadline: Box::pin(sleep_until(Instant::now().into())),
        armed: None,
    };
    match client.run().await {
        Ok(()) => debug!(client = id, %peer, "client connection closed"),
        Err(e) => debug!(client = id, %peer, error = %e, "client connection ended"),
    }
}

impl Client {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            if !self.replies.ready.is_empty() {
                self.write_replies().await?;
            }
            if self.closing && (self.drained() || self.left_blocked() || self.session_lost()) {
                return Ok(());
            }
            let can_read = !self.closing && self.held.is_none() && self.outstanding() < self.ctx.max_pending;
            if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 {
                self.rbuf.reserve(self.read_chunk);
            }
            self.arm_deadline();
            tokio::select! {
                read = self.rd.read_buf(&mut self.rbuf), if can_read => {
                    let read = read?;
                    if read == 0 {
                        (self.closing, self.hung_up) = (true, true);
                    } else {
                        if read >= self.read_chunk / 2 {
                            self.read_chunk = READ_CHUNK;
                        }
                        if self.ctx.timeouts.idle.is_some() {
                            self.last_read = Instant::now();
                        }
                        self.process().await;
                    }
                }
                _ = &mut self.deadline, if self.armed.is_some() => return self.timed_out().await,
                Some(chunk) = self.chunks.recv() => {
                    let mut next = Some(chunk);
                    while let Some(chunk) = next {
                        match chunk.seq {
                            // CLIENT KILL from another client: closed at once.
                            KILLED => return Ok(()),
                            // The proxy is stopping: what was sent is answered, then closed.
                            SHUTDOWN => self.closing = true,
                            _ => self.replies.accept(chunk),
                        }
                        next = self.chunks.try_recv().ok();
                    }
                    self.resume().await;
                }
                read = read_pinned(&mut self.pinned) => {
                    self.on_pinned(read);
                    self.publish(None);
                    self.resume().await;
                }
            }
        }
    }

    /// Writes the replies in order; a client that does not take them within
    /// `listen.write_timeout` is dropped.
    async fn write_replies(&mut self) -> io::Result<()> {
        let queued = self.replies.ready.len();
        let mut write = std::pin::pin!(writev::write_all(&mut self.wr, &mut self.replies.ready));
        // Most writes complete at once: only one that has to wait gets a timer (and a clock read).
        if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            return done;
        }
        // The client is not reading: its replies wait (CLIENT LIST's `oll`, as Redis counts them).
        let listed = &self.listed.listed;
        listed.set_unwritten(queued);
        let done = match self.ctx.timeouts.write {
            None => write.await,
            // Boxed: a timer is a large future, needed only by a write that has to wait.
            Some(limit) => Box::pin(tokio::time::timeout(limit, write))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read its replies"))),
        };
        listed.set_unwritten(0);
        done
    }

    /// The next idle or request deadline, if one applies now.
    fn arm_deadline(&mut self) {
        let t = self.ctx.timeouts;
        let idle = t.idle.filter(|_| {
            self.rbuf.is_empty() && self.outstanding() == 0 && self.held.is_none() && !self.session.is_streaming()
        });
        let idle = idle.map(|limit| self.last_read + limit);
        // Only while the proxy reads: a request it does not read yet is not the client's delay.
        let reading = !self.closing && self.held.is_none() && self.outstanding() < self.ctx.max_pending;
        let request = t.request.zip(self.partial_since.filter(|_| reading)).map(|(limit, since)| since + limit);
        let due = match (idle, request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if due != self.armed {
            if let Some(due) = due {
                self.deadline.as_mut().reset(due.into());
            }
            self.armed = due;
        }
    }

    /// A deadline passed: an unfinished request gets an error; an idle client is just closed.
    async fn timed_out(&mut self) -> io::Result<()> {
        if let (Some(limit), Some(_)) = (self.ctx.timeouts.request, self.partial_since) {
            let reply = ProxyError::RequestTimeout(limit).to_reply();
            let _ = Box::pin(tokio::time::timeout(REFUSAL_TIMEOUT, self.wr.write_all(&reply))).await;
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request not completed in time"));
        }
        debug!(client = self.session.id(), "idle timeout");
        Ok(())
    }

    /// Requests sent (or answered locally) whose replies are not yet queued in order.
    fn outstanding(&self) -> usize {
        (self.next_seq - self.replies.next) as usize
    }

    /// The client hung up and all that is left is a blocking command (and what it sent after
    /// it): its reply may never come (`BLPOP k 0`), so it is not waited for, as Redis drops a
    /// blocked client that disconnects. Every reply before it has been delivered.
    fn left_blocked(&self) -> bool {
        self.hung_up && self.held.is_none() && self.session.blocked_at().is_some_and(|seq| self.replies.next >= seq)
    }

    fn drained(&self) -> bool {
        self.held.is_none()
            && (self.outstanding() == 0 || self.session.is_streaming())
            && self.replies.ready.is_empty()
            && !(self.quitting && self.pinned.is_some())
    }

    /// The session's state died with its pinned connection and everything the client had
    /// been answered before that is written.
    fn session_lost(&self) -> bool {
        self.lost_at.is_some_and(|seq| self.replies.next >= seq && self.replies.ready.is_empty())
    }

    /// After replies arrived: send a held request if its turn came, then read on.
    async fn resume(&mut self) {
        if self.held.as_ref().is_some_and(|h| h.seq == self.replies.next) {
            let held = self.held.take().expect("checked above");
            let count = u32::from(held.dest.counted()) * held.work.replies();
            self.send(held.dest, held.bytes, held.seq, count, held.work).await;
        }
        self.process().await;
    }

    /// Frames and routes every complete request in the read buffer, as far as allowed.
    async fn process(&mut self) {
        let now = Instant::now();
        let first_seq = self.next_seq;
        // In front of a cluster, each node's breaker decides for its keys.
        let upstream_down = self.ctx.cluster.is_none() && self.ctx.upstream.breaker().is_refusing();
        let live = self.ctx.live.load();
        let ctx = Arc::clone(&self.ctx);
        let shard_down = |key: &[u8]| ctx.cluster.as_ref().is_some_and(|c| c.shard_down(key));
        let admin = |session: &mut Session, cmd: &CommandView<'_>| admin::answer(&ctx, session, cmd);
        while !self.closing && self.held.is_none() && self.outstanding() < self.ctx.max_pending {
            let offset = self.run.as_ref().map_or(0, |run| run.len);
            let env = Env {
                server: self.ctx.upstream.info(),
                admin: &admin,
                policy: &live.policy,
                access: &live.access,
                tier: self.ctx.tier.as_deref(),
                ttl: &self.ctx.ttl,
                now,
                upstream_down,
                seq: self.next_seq,
                sink: &self.sink,
                clients: &self.ctx.clients,
                shard_down: self.ctx.cluster.is_some().then_some(&shard_down as _),
            };
            match self.parser.parse(&self.rbuf[offset..]) {
                Ok(None) => {
                    // An incomplete request: the client owes the rest.
                    let partial = self.rbuf.len() > offset;
                    self.partial_since = if partial { self.partial_since.or(Some(now)) } else { None };
                    break;
                }
                Ok(Some(Parsed::Empty { len })) => {
                    self.partial_since = None;
                    self.skip_frame(len).await
                }
                Ok(Some(Parsed::Command { len, argc })) => {
                    self.partial_since = None;
                    let cmd = CommandView::new(&self.rbuf[offset..offset + len], argc);
                    let command = self.ctx.commands.command(cmd.arg(0).unwrap_or_default());
                    let route = self.session.route(&cmd, &command, &env);
                    count(&self.ctx.metrics, &command, &route);
                    self.dispatch(route, len, None).await;
                }
                Ok(Some(Parsed::Inline { len, argc, encoded })) => {
                    self.partial_since = None;
                    let cmd = CommandView::new(&encoded, argc);
                    let command = self.ctx.commands.command(cmd.arg(0).unwrap_or_default());
                    let route = self.session.route(&cmd, &command, &env);
                    count(&self.ctx.metrics, &command, &route);
                    self.dispatch(route, len, Some(encoded)).await;
                }
                Err(err) => {
                    metrics::inc(&self.ctx.metrics.protocol_errors);
                    self.flush_run().await;
                    self.reply_local(ProxyError::Protocol(err).to_reply());
                    self.closing = true;
                }
            }
        }
        self.flush_run().await;
        if self.next_seq != first_seq {
            self.publish(Some(now));
        }
    }

    /// Brings the client's row in the client table up to date: after each batch of requests
    /// (`commands_at`: when they were read, for `idle`) and each batch of pinned replies (which
    /// may change the session). Replies on the shared pool change nothing there.
    fn publish(&mut self, commands_at: Option<Instant>) {
        if self.session.take_killed() {
            // CLIENT KILL named this client: closed once its replies are written.
            self.closing = true;
        }
        let live = self.ctx.live.load();
        let user = self.session.user_name(&live.access);
        let qbuf = self.rbuf.len();
        self.listed.listed.publish(|row| {
            self.session.fill_row(row, user);
            row.qbuf = qbuf;
            if let Some(at) = commands_at {
                row.last = at;
            }
        });
    }
}

/// One request for the metrics: its command and how it is served.
fn count(metrics: &Metrics, command: &Command, route: &Route) {
    let outcome = match route {
        Route::Hit(_) => Outcome::Hit,
        Route::Fill(..) | Route::Joined | Route::Split(..) => Outcome::Miss,
        Route::Shared(_) | Route::Info(_) | Route::Write(..) | Route::Pinned { .. } => Outcome::Forwarded,
        Route::Reply(reply) | Route::Close(reply) if reply.first() == Some(&b'-') => Outcome::Error,
        Route::Reply(_) | Route::Close(_) => Outcome::Local,
    };
    metrics.request(command.slot, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client holds its task's future for as long as it is connected: rare, large futures
    /// (connecting a pinned connection, TLS handshakes, timers) are boxed to keep it small.
    #[tokio::test]
    async fn the_client_task_stays_small() {
        let config = crate::config::Config::default();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let ctx = Arc::new(Context {
            upstream: crate::upstream::Upstream::new(&config, None, None, Arc::clone(&metrics)),
            limits: crate::framing::Limits { max_request_size: 1 << 20, max_args: 1024 },
            max_pending: 16,
            timeouts: config.listen.timeouts(),
            live: arc_swap::ArcSwap::from_pointee(crate::context::Live::new(config.clone()).unwrap()),
            tier: None,
            ttl: crate::ttl::Counters::default(),
            metrics,
            commands: Default::default(),
            sentinel: None,
            cluster: None,
            clients: Default::default(),
            warm: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (_tx, rx) = watch::channel(false);
        let fut = serve(stream, None, 1, ctx, rx);
        let size = std::mem::size_of_val(&fut);
        assert!(
            size <= 3136,
            "a client's task is {size} bytes (6080 before boxing the pinned connect, 3376 before boxing the pinned send, 3088 with lost sessions closed)"
        );
    }
}
