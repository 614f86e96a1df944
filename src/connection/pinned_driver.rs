//! Driving the session's pinned connection from its task: opening (or reusing) it, sending
//! on it, taking its replies, and carrying on when it breaks.

use std::io;

use bytes::Bytes;
use tracing::debug;

use super::Client;
use crate::cluster::Cluster;
use crate::error::ProxyError;
use crate::pinned_conn::PinnedConn;
use crate::proxy::Expect;
use crate::upstream::{Redirection, ReplyChunk, ReplyWork, Resend, Upstream};
use std::sync::Arc;

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
        // Redis Cluster: the node this request's keys are on, and whether the session's
        // connection must move there first.
        let (node_upstream, node, reopen_multi) = match self.ctx.cluster.clone() {
            Some(cluster) => {
                let (upstream, node, reopen) = self.pin_node(&cluster, &bytes);
                (Some(upstream), node, reopen)
            }
            None => (None, None, false),
        };
        if self.pinned.is_none() {
            let identity = self.session.pin_identity().to_vec();
            let upstream = node_upstream.as_ref().unwrap_or(&self.ctx.upstream);
            // Boxed: connecting (TLS, handshake) is a large future, rare next to the rest.
            match Box::pin(PinnedConn::open(upstream, key, identity, stream)).await {
                Ok(mut conn) => {
                    if node_upstream.is_some() {
                        conn.node = node.clone().or_else(|| Some(upstream.addr().into()));
                    }
                    self.pinned = Some(conn)
                }
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
        conn.keyed |= node.is_some();
        let sent = match conn.begin_pin(state).await {
            // The transaction the client opened is opened again on the node its keys are on.
            Ok(()) if reopen_multi => match conn.send_hidden(b"*1\r\n$5\r\nMULTI\r\n").await {
                Ok(()) => conn.send(&bytes, seq, count, stream, work, expect).await,
                Err(e) => Err(e),
            },
            Ok(()) => conn.send(&bytes, seq, count, stream, work, expect).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.pinned_failed(self.lost(e));
        }
    }

    /// Redis Cluster: which node's upstream this pinned request goes to, that node (when the
    /// request has keys), and whether the session's connection was given up to move there with
    /// the transaction it opened (MULTI is then sent again, hidden). A session's connection
    /// moves only while nothing keyed ran on it in the pin, nothing is in flight on it, and the
    /// client was not shown its id: at a pin's start (the node of its first keyed command,
    /// looked for among the requests already read), or in a transaction whose first keyed
    /// command comes after MULTI's reply.
    fn pin_node(&mut self, cluster: &Arc<Cluster>, bytes: &[u8]) -> (Arc<Upstream>, Option<Arc<str>>, bool) {
        let needed = cluster.node_for_requests(bytes);
        let starting = self.pinned.as_ref().is_none_or(|conn| !conn.in_pin());
        let target = needed.clone().or_else(|| if starting { cluster.node_for_requests(&self.rbuf) } else { None });
        let mut reopen_multi = false;
        if let (Some(target), Some(conn)) = (&target, self.pinned.as_ref()) {
            let elsewhere = conn.node.as_ref() != Some(target);
            let in_multi = !starting && !conn.keyed && self.session.in_multi();
            if elsewhere && conn.is_idle() && !self.session.id_shown() && (starting || in_multi) {
                // Closing it discards the empty transaction Redis holds there.
                self.pinned = None;
                reopen_multi = in_multi;
            }
        }
        let upstream = match (&target, &self.pinned) {
            (Some(target), None) => cluster.upstream_of(target),
            _ => cluster.upstream_any().unwrap_or_else(|| Arc::clone(&self.ctx.upstream)),
        };
        (upstream, needed, reopen_multi)
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
        let (cluster, on) = (self.ctx.cluster.as_deref(), conn.node.clone());
        let taken = conn.take_replies(stream, pass_pushes, monitoring, |seq, mut bytes, confirm| {
            if let Some(cluster) = cluster
                && let Some(to) = Redirection::parse(&bytes).filter(|to| to.kind != Resend::Retry)
            {
                // Never shown: a session's connection does not follow MOVED/ASK (its state is there).
                bytes = cluster.pinned_redirect(&to, on.as_deref());
            }
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
