//! A session's own upstream connection, for commands that leave state on the connection
//! (see "Pinning" in `proxy.rs`). The session's task drives it directly: no extra task, no
//! channel.
//!
//! Two reply modes:
//! - **counted** (MULTI/WATCH, blocking commands, sticky flags): one reply per request, matched
//!   in FIFO order to sequence numbers like the shared connections do;
//! - **stream** (pub/sub, MONITOR, CLIENT REPLY OFF, tracking): bytes are passed to the client as
//!   they come, whole replies at a time. The session enters it only when every earlier reply
//!   has arrived, so there is nothing left to count.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::error::ProxyError;
use crate::framing::encode_command;
use crate::proxy::{Confirm, Expect};
use crate::reply::{self, ReplyScanner, ScanError};
use crate::transport::{Reader, Writer};
use crate::upstream::{ConnectionUp, PoolKey, ReplyWork, Step, Switch, Upstream};

const READ_CHUNK: usize = 16 * 1024;

pub struct PinnedConn {
    /// Protocol and db the connection is in (kept in step by the session).
    key: PoolKey,
    /// The client name and library info Redis has for it.
    identity: Vec<Bytes>,
    /// A pin is using it (from open or reuse until the pin ends); only then may its state
    /// differ from what `key`/`identity` say.
    in_pin: bool,
    rd: Reader,
    wr: Writer,
    buf: BytesMut,
    scanner: ReplyScanner,
    /// Counted requests still waiting for replies.
    fifo: VecDeque<Expected>,
    /// Tells when the primary it was opened to stops being the primary (Sentinel): it is then
    /// lost, like a closed connection, and what it read after the switch is dropped.
    switch: Switch,
    _up: ConnectionUp,
    /// Redis Cluster: the node it is connected to, and whether a command with keys was sent in
    /// the current pin (it can no longer move to another node).
    pub node: Option<Arc<str>>,
    pub keyed: bool,
}

/// Requests sent together, waiting for replies.
struct Expected {
    /// The next reply's sequence number.
    seq: u64,
    /// Replies left.
    left: u32,
    /// What becomes of each upstream reply of the request (TTL enforcement's several replies made
    /// into the client's one, INFO without the proxy's tracking connection); `None`: delivered.
    work: Option<Box<dyn ReplyWork>>,
    /// Its replies may be pushes ((P|S)UNSUBSCRIBE outside a subscription, in RESP3).
    pushes: bool,
    /// A session change that its reply confirms or refuses.
    confirm: Option<Confirm>,
    /// The proxy's own commands (see `begin_pin`): their replies are dropped.
    hidden: bool,
}

/// How `CLIENT SETNAME` starts, encoded (see `Session::identity`).
const SETNAME: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n";

impl PinnedConn {
    /// `identity`: the session's CLIENT SETNAME/SETINFO, so that Redis agrees with the proxy.
    /// `stream`: the pin starts a stream (see `Upstream::connect_pinned`).
    pub async fn open(
        upstream: &Arc<Upstream>,
        key: PoolKey,
        identity: Vec<Bytes>,
        stream: bool,
    ) -> Result<PinnedConn, ProxyError> {
        let (stream, switch) = upstream.connect_pinned(key, &identity, !stream).await?;
        let (rd, wr) = stream.into_split();
        let up = upstream.connection_up();
        debug!(db = key.db, resp3 = key.resp3, "pinned upstream connection opened");
        Ok(PinnedConn {
            key,
            identity,
            in_pin: true,
            rd,
            wr,
            buf: BytesMut::with_capacity(READ_CHUNK),
            scanner: ReplyScanner::default(),
            fifo: VecDeque::new(),
            switch,
            _up: up,
            node: None,
            keyed: false,
        })
    }

    /// A pin starts on it (opened for it, or kept from an earlier pin). With `state`, a kept
    /// connection is first brought to the session's protocol, db and name with commands of the
    /// proxy's own, whose replies nobody sees: the session keeps one upstream connection, so the
    /// id it was shown (CLIENT ID) stays its own.
    pub async fn begin_pin(&mut self, state: Option<(PoolKey, &[Bytes])>) -> io::Result<()> {
        if self.in_pin {
            return Ok(());
        }
        self.in_pin = true;
        let Some((key, identity)) = state else { return Ok(()) };
        let mut sync: Vec<Bytes> = Vec::new();
        if key.resp3 != self.key.resp3 {
            sync.push(encode_command(&["HELLO", if key.resp3 { "3" } else { "2" }]));
        }
        if key.db != self.key.db {
            sync.push(encode_command(&["SELECT".to_string(), key.db.to_string()]));
        }
        if identity != self.identity {
            let named = |commands: &[Bytes]| commands.iter().any(|c| c.starts_with(SETNAME));
            if named(&self.identity) && !named(identity) {
                sync.push(encode_command(&["CLIENT", "SETNAME", ""]));
            }
            sync.extend(identity.iter().cloned());
        }
        (self.key, self.identity) = (key, identity.to_vec());
        if sync.is_empty() {
            return Ok(());
        }
        let hidden =
            Expected { seq: 0, left: sync.len() as u32, work: None, pushes: false, confirm: None, hidden: true };
        self.fifo.push_back(hidden);
        self.wr.write_all(&sync.concat()).await
    }

    /// The pin ended; the connection is in the session's state (`key`, `identity`), or, with
    /// `None`, in the state it was in before the pin.
    pub fn end_pin(&mut self, state: Option<(PoolKey, Vec<Bytes>)>) {
        if let Some((key, identity)) = state {
            (self.key, self.identity) = (key, identity);
        }
        self.in_pin = false;
        self.keyed = false;
    }

    /// A pin is using it.
    pub fn in_pin(&self) -> bool {
        self.in_pin
    }

    /// Sends a command of the proxy's own, whose reply nobody sees.
    pub async fn send_hidden(&mut self, bytes: &[u8]) -> io::Result<()> {
        let hidden = Expected { seq: 0, left: 1, work: None, pushes: false, confirm: None, hidden: true };
        self.fifo.push_back(hidden);
        self.wr.write_all(bytes).await
    }

    /// No counted reply is outstanding.
    pub fn is_idle(&self) -> bool {
        self.fifo.is_empty()
    }

    /// Sends requests; `count` replies are expected for them unless the connection streams.
    /// With `work`, the upstream's replies pass through it (and `count` is 1).
    pub async fn send(
        &mut self,
        bytes: &[u8],
        seq: u64,
        count: u32,
        stream: bool,
        work: Option<Box<dyn ReplyWork>>,
        expect: Expect,
    ) -> io::Result<()> {
        if !stream {
            let pushes = matches!(expect, Expect::Pushes(_));
            let confirm = match expect {
                Expect::Confirm(confirm) => Some(confirm),
                _ => None,
            };
            self.fifo.push_back(Expected { seq, left: count, work, pushes, confirm, hidden: false });
        }
        self.wr.write_all(bytes).await
    }

    /// Reads more bytes; `Ok(0)` means closed, an error also that the primary changed.
    /// Cancel-safe (for `select!`).
    pub async fn read(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let switched = || io::Error::other("the primary changed (Sentinel failover)");
        tokio::select! {
            read = self.rd.read_buf(&mut self.buf) => match read {
                Ok(_) if self.switch.happened() => Err(switched()),
                read => read,
            },
            _ = self.switch.wait() => Err(switched()),
        }
    }

    /// Hands over what was read: every complete reply matched to its request while counted
    /// requests wait, then (`stream`) every further complete reply as it is, `None` for its
    /// sequence number. A counted reply comes with the session change it confirms, if any.
    /// `pass_pushes`: a push that is no request's reply (a tracking invalidation) goes to the
    /// client as it comes, unnumbered, instead of being dropped.
    pub fn take_replies(
        &mut self,
        stream: bool,
        pass_pushes: bool,
        monitoring: bool,
        mut out: impl FnMut(Option<u64>, Bytes, Option<Confirm>),
    ) -> Result<(), ScanError> {
        let mut scanned = 0;
        while let Some(len) = self.scanner.scan(&self.buf[scanned..])? {
            if pass_pushes && scanned == 0 && reply::is_tracking_push(&self.buf[..len]) {
                // An invalidation among counted replies: the client's, but no request's reply
                // (an UNSUBSCRIBE waiting for its pushes must not take it).
                out(None, self.buf.split_to(len).freeze(), None);
                continue;
            }
            let Some(expected) = self.fifo.front_mut() else {
                if stream {
                    if monitoring && reply::is_own_monitor_line(&self.buf[scanned..scanned + len]) {
                        // The proxy's own command (a PTTL probe, a handshake): not the client's.
                        if scanned > 0 {
                            out(None, self.buf.split_to(scanned).freeze(), None);
                        }
                        self.buf.advance(len);
                        scanned = 0;
                        continue;
                    }
                    scanned += len;
                    continue;
                }
                let bytes = self.buf.split_to(len).freeze();
                if reply::is_push(&bytes) {
                    if pass_pushes {
                        out(None, bytes, None);
                    } else {
                        debug!("dropping a push on a pinned connection in counted mode");
                    }
                    continue;
                }
                return Err(ScanError::unexpected());
            };
            let bytes = self.buf.split_to(len).freeze();
            if expected.hidden && !reply::is_push(&bytes) {
                if bytes.first() == Some(&b'-') {
                    // The connection is not in the state the session needs (-BUSY to SELECT).
                    return Err(ScanError::state_refused());
                }
                expected.left -= 1;
                if expected.left == 0 {
                    self.fifo.pop_front();
                }
                continue;
            }
            if reply::is_push(&bytes) && !expected.pushes {
                if pass_pushes {
                    out(None, bytes, None);
                } else {
                    debug!("dropping a push on a pinned connection in counted mode");
                }
                continue;
            }
            let bytes = match expected.work.as_mut().map(|work| work.reply(&bytes)) {
                None | Some(Step::Deliver) => bytes,
                Some(Step::Replace(reply)) => reply,
                Some(Step::Swallow) => continue,
            };
            out(Some(expected.seq), bytes, expected.confirm.take());
            expected.seq += 1;
            expected.left -= 1;
            if expected.left == 0 {
                self.fifo.pop_front();
            }
        }
        if scanned > 0 {
            out(None, self.buf.split_to(scanned).freeze(), None);
        }
        Ok(())
    }

    /// The first request still waiting for a reply, if any.
    pub fn first_unanswered(&self) -> Option<u64> {
        self.fifo.iter().find(|e| !e.hidden).map(|e| e.seq)
    }
}
