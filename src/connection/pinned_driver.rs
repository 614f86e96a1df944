//! Driving the session's pinned connection from its task: opening (or reusing) it, sending
//! on it, taking its replies, and carrying on when it breaks.

use std::io;

use bytes::Bytes;
use tracing::debug;

use super::Client;
use crate::error::ProxyError;
use crate::pinned_conn::PinnedConn;
use crate::proxy::Expect;
use crate::upstream::{ReplyChunk, ReplyWork};

impl Client {
    /// `work`: what becomes of the upstream replies (TTL enforcement sent more than the client's
    /// one request, INFO's tracking fields; `count` is then 1).
    pub(super) async fn send_pinned(
        &mut self,
        bytes: Bytes,
        seq: u64,
        count: u32,
        stream: bool,
        work: Option<Box<dyn ReplyWork>>,
        expect: Expect,
    ) {
        let key = self.session.pin_key();
        if self.pinned.is_none() {
            let identity = self.session.pin_identity().to_vec();
            // Boxed: connecting (TLS, handshake) is a large future, rare next to the rest.
            match Box::pin(PinnedConn::open(&self.ctx.upstream, key, identity, stream)).await {
                Ok(conn) => self.pinned = Some(conn),
                Err(err) => {
                    // What the session was to start cannot: the requests get the error, and the
                    // client is closed after them (commands it pipelined behind a MULTI must
                    // not run outside the transaction).
                    if stream {
                        self.replies.ready.push_back(err.to_reply());
                    } else {
                        self.replies.accept(ReplyChunk { seq, count, bytes: err.to_replies(count as usize) });
                    }
                    self.lost_at = Some(self.lost_at.unwrap_or(seq + u64::from(count)));
                    self.closing = true;
                    self.session.pinned_lost();
                    return;
                }
            }
        }
        let conn = self.pinned.as_mut().expect("opened above");
        let state = self.session.pin_needs_state().then_some((key, self.session.pin_identity()));
        let sent = match conn.begin_pin(state).await {
            Ok(()) => conn.send(&bytes, seq, count, stream, work, expect).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.pinned_failed(self.lost(e));
        }
    }

    pub(super) fn on_pinned(&mut self, read: io::Result<usize>) {
        match read {
            Ok(0) => return self.pinned_failed(self.lost("closed by upstream")),
            Err(e) => return self.pinned_failed(self.lost(e)),
            Ok(_) => {}
        }
        let (stream, pass_pushes) = (self.session.is_streaming(), self.session.passes_pushes());
        let monitoring = self.session.is_monitoring();
        let Some(conn) = self.pinned.as_mut() else { return };
        let (replies, session, target) = (&mut self.replies, &mut self.session, self.ctx.upstream.target());
        let taken = conn.take_replies(stream, pass_pushes, monitoring, |seq, bytes, confirm| {
            session.note_subscription(&bytes);
            if crate::reply::is_readonly(&bytes) {
                // A replica: the primary moved (Sentinel). The client gets Redis's error.
                target.doubt();
            }
            if let Some(confirm) = confirm {
                session.confirm(confirm, &bytes);
            }
            match seq {
                Some(seq) => replies.accept(ReplyChunk { seq, count: 1, bytes }),
                None => replies.ready.push_back(bytes),
            }
        });
        if let Err(e) = taken {
            return self.pinned_failed(self.lost(e));
        }
        let idle = conn.is_idle();
        self.session.revalidate(self.ctx.tier.as_deref(), idle);
        if idle && self.session.is_pinned() && self.session.try_unpin() {
            // The connection stays open for the next pin, in the state it is now in.
            conn.end_pin(self.session.unpinned_conn_state());
            // The next session's pin finds a spare ready.
            self.ctx.upstream.refill_spares(self.session.pin_key());
        }
    }

    /// The pinned connection broke. If the session had state on it (a transaction, WATCHed
    /// keys, a subscription, a blocking command waiting, ...), the client's connection is
    /// closed once every reply before the first unanswered request is written: that state is
    /// gone, and only a closed connection makes the client's library notice and rebuild it,
    /// as it would had Redis dropped it. So is a client that was told the connection's id (it
    /// is that connection to Redis: CLIENT KILL ID closes it). Otherwise a connection kept
    /// idle between pins just goes.
    pub(super) fn pinned_failed(&mut self, err: ProxyError) {
        let Some(conn) = self.pinned.take() else { return };
        if !self.session.is_pinned() && !self.session.id_shown() {
            return;
        }
        if self.quitting {
            // Redis closed it after answering QUIT, as asked.
            return;
        }
        debug!(client = self.session.id(), error = %err, "pinned upstream connection lost: closing the client");
        let unanswered = conn.first_unanswered();
        self.lost_at = Some(unanswered.unwrap_or(self.next_seq));
        self.closing = true;
        self.session.pinned_lost();
    }

    fn lost(&self, reason: impl ToString) -> ProxyError {
        ProxyError::UpstreamLost { addr: self.ctx.upstream.addr().to_owned(), reason: reason.to_string() }
    }
}

pub(super) async fn read_pinned(pinned: &mut Option<PinnedConn>) -> io::Result<usize> {
    match pinned {
        Some(conn) => conn.read().await,
        None => std::future::pending().await,
    }
}
