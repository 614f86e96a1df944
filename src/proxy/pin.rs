//! Pinning: whether and why a session is on its own upstream connection (see "Pinning" in
//! `proxy.rs`), how each command changes that state, and what the connection's replies end.

use bytes::Bytes;

use super::local::Local;
use super::{Env, Route, Session};
use crate::cache::{Cause, Tier};
use crate::command::{Class, Command, Effect, written_keys};
use crate::framing::{CommandView, parse_int};
use crate::upstream::PoolKey;

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pin {
    pub(super) active: bool,
    /// The session's db and protocol when the pin began: a pinned connection opens in them.
    pub(super) key: PoolKey,
    pub(super) stream: bool,
    /// MONITOR: the proxy's own commands are left out of the stream (`reply::is_own_monitor_line`).
    pub(super) monitor: bool,
    pub(super) in_multi: bool,
    /// Commands sent into the open transaction (CLIENT LIST's `multi`).
    pub(super) queued: u32,
    pub(super) watching: bool,
    pub(super) sticky: bool,
    /// The sequence number of the first blocking command (outside MULTI) that may still be
    /// waiting for its reply.
    pub(super) blocked_at: Option<u64>,
    /// The sequence number of the MULTI that opened the transaction (to undo it if refused).
    pub(super) multi_seq: u64,
    /// A SUBSCRIBE/MONITOR/... is queued in the transaction: after EXEC the connection may
    /// stream, so it is treated as streaming from EXEC on.
    pub(super) stream_at_exec: bool,
    /// SCRIPT KILL and the like: on a kept connection in whatever db it is in, on a new one in
    /// db 0 (see `Class::Interrupt`).
    pub(super) interrupt: bool,
    /// CLIENT TRACKING ON: replies stay counted, and the invalidation pushes Redis sends among
    /// them (RESP3) are passed to the client as they come.
    pub(super) tracking: bool,
}

/// What a request sent on the pinned connection gets back, beyond one plain reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Expect {
    #[default]
    One,
    /// (P|S)UNSUBSCRIBE outside a subscription: this many replies, which RESP3 sends as pushes.
    Pushes(u32),
    /// The session changes only once Redis accepts the command (its reply is not an error).
    Confirm(Confirm),
    /// QUIT: Redis answers and closes the connection; the client's is closed after that.
    Quit,
}

/// A change of the session that Redis's reply decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    Select(u32),
    /// HELLO (or CLIENT SETNAME). Boxed: rare, and every client's task holds room for a route.
    Hello(Box<HelloChange>),
    /// The MULTI with this sequence number: refused (-BUSY, -NOPERM), no transaction is open.
    Multi(u64),
    /// RESET: db 0, RESP2, no name.
    Reset,
    /// AUTH (or HELLO ... AUTH, with its changes) as a Redis user other than the proxy's: once
    /// Redis accepts it, the connection is that user's, and the session stays on it.
    /// With the user it logs in as (CLIENT LIST shows it).
    Login(Option<Box<HelloChange>>, Bytes),
    /// CLIENT ID: the id Redis gave the session's connection, which CLIENT LIST shows.
    ShownId,
}

/// What HELLO changes: the protocol (if given) and the name (if SETNAME was given; empty clears).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloChange {
    pub resp3: Option<bool>,
    pub name: Option<Option<Bytes>>,
}

impl Pin {
    /// A pin starting on a connection in `key`.
    pub(super) fn new(key: PoolKey) -> Pin {
        Pin { active: true, key, ..Pin::default() }
    }
}

impl Session {
    pub fn is_pinned(&self) -> bool {
        self.pin.active
    }

    /// Pinned to a connection whose replies are a stream (pub/sub, MONITOR, ...).
    pub fn is_streaming(&self) -> bool {
        self.pin.active && self.pin.stream
    }

    /// The session's stream is a MONITOR's.
    pub fn is_monitoring(&self) -> bool {
        self.is_streaming() && self.pin.monitor
    }

    /// The sequence number of a blocking command that may be waiting on the pinned connection
    /// for as long as Redis holds it (`BLPOP k 0`): a client that closed its side is not
    /// waited for past it (Redis too drops a blocked client that disconnects).
    pub fn blocked_at(&self) -> Option<u64> {
        self.pin.blocked_at.filter(|_| self.pin.active)
    }

    pub fn pin_key(&self) -> PoolKey {
        self.pin.key
    }

    /// A transaction is open (MULTI sent, no EXEC/DISCARD yet).
    pub fn in_multi(&self) -> bool {
        self.pin.active && self.pin.in_multi
    }

    /// The session's name and library info when the pin began (later changes in the same
    /// pipeline are applied on the pinned connection itself).
    pub fn pin_identity(&self) -> &[Bytes] {
        &self.pin_identity
    }

    /// True when the pinned state has ended; the caller calls this once every reply from the
    /// pinned connection has arrived, and then sends later commands to the shared pool.
    pub fn try_unpin(&mut self) -> bool {
        let p = self.pin;
        if p.active && !p.stream && !p.in_multi && !p.watching && !p.sticky {
            self.pin.active = false;
        }
        !self.pin.active
    }

    /// Redis answered a request that carried a [`Confirm`]: apply it if Redis accepted it.
    pub fn confirm(&mut self, confirm: Confirm, reply: &[u8]) {
        let accepted = !matches!(reply.first(), Some(b'-' | b'!'));
        match confirm {
            Confirm::Select(db) if accepted => self.db = db,
            Confirm::Hello(change) if accepted => {
                let HelloChange { resp3, name } = *change;
                self.resp3 = resp3.unwrap_or(self.resp3);
                if let Some(name) = name {
                    self.name = name;
                }
            }
            Confirm::Reset => {
                (self.db, self.resp3, self.name) = (0, false, None);
                self.subscriptions = [0; 3];
                self.redis_user = None;
                self.pin.tracking = false;
            }
            Confirm::Login(hello, user) if accepted => {
                self.pin.sticky = true;
                self.redis_user = Some(user);
                if let Some(change) = hello {
                    self.confirm(Confirm::Hello(change), reply);
                }
            }
            Confirm::ShownId => {
                let id = reply.strip_prefix(b":").and_then(|r| r.strip_suffix(b"\r\n")).and_then(parse_int);
                if let Some(id) = id.and_then(|id| u64::try_from(id).ok()) {
                    self.shown_id = Some(id);
                }
            }
            Confirm::Multi(seq) if !accepted && self.pin.in_multi && self.pin.multi_seq == seq => {
                (self.pin.in_multi, self.pin.stream_at_exec) = (false, false);
                self.forget_transaction();
            }
            _ => {}
        }
    }

    /// Pushes that are no request's reply are the client's (tracking invalidations), not
    /// strays to drop.
    pub fn passes_pushes(&self) -> bool {
        self.pin.tracking
    }

    /// Whether the session's pinned connection must be in the session's db, protocol and name
    /// for this pin. Not for an interrupt (SCRIPT KILL, ...): it runs in whatever db the
    /// connection is in (a busy Redis would refuse the SELECT), or in db 0 on a new one.
    pub fn pin_needs_state(&self) -> bool {
        !self.pin.interrupt
    }

    /// The db/protocol and name the pinned connection is in once its pin ended: the session's
    /// (every change made on it during the pin was confirmed to the session); `None` after an
    /// interrupt, which left it as it was.
    pub fn unpinned_conn_state(&self) -> Option<(PoolKey, Vec<Bytes>)> {
        (!self.pin.interrupt).then(|| (self.pool_key(), self.identity()))
    }

    /// The pinned connection was lost, and with it whatever state it held in Redis.
    pub fn pinned_lost(&mut self) {
        self.pin = Pin::default();
        self.forget_transaction();
    }

    /// Writes sent on the pinned connection (in MULTI, scripts, ...) are invalidated before
    /// they are sent and again as the connection's replies arrive ([`Session::revalidate`]).
    pub(super) fn invalidate_pinned_write(&mut self, cmd: &CommandView<'_>, command: &Command, tier: Option<&Tier>) {
        let Some(tier) = tier else { return };
        match command.effect(cmd) {
            Effect::Writes(keys) => {
                for key in written_keys(cmd, keys) {
                    tier.invalidate(key, Cause::Write);
                    self.dirty.push(Bytes::copy_from_slice(key));
                }
            }
            Effect::Flush => tier.clear(),
            Effect::CacheableRead | Effect::MultiGet | Effect::Nothing => {}
        }
    }

    /// Replies arrived on the pinned connection: invalidate what it wrote again; forget the
    /// keys once nothing is outstanding and no transaction is open (queued writes execute at
    /// EXEC, so a QUEUED reply does not end them). Once nothing is outstanding, no blocking
    /// command is waiting either.
    pub fn revalidate(&mut self, tier: Option<&Tier>, idle: bool) {
        if let Some(tier) = tier {
            self.dirty.iter().for_each(|key| tier.invalidate(key, Cause::WriteAnswered));
        }
        if idle && !self.pin.in_multi {
            self.dirty.clear();
        }
        if idle {
            self.pin.blocked_at = None;
        }
    }

    pub(super) fn route_pinned(
        &mut self,
        class: Class,
        cmd: &CommandView<'_>,
        command: &Command,
        env: &Env<'_>,
    ) -> Route {
        let rewrite = match self.enforce_ttl_pinned(class, cmd, command, env) {
            Ok(rewrite) => rewrite,
            Err(refused) => return Route::Reply(refused),
        };
        if class == Class::ClientSetInfo && !self.pin.in_multi {
            // Redis answers; the proxy keeps the library info for connections opened later.
            let _ = self.answer(Local::ClientSetInfo, cmd, env);
        }
        let pin = &mut self.pin;
        let mut expect = Expect::One;
        let queues =
            !matches!(class, Class::Exec | Class::Discard | Class::Multi | Class::Watch | Class::Quit | Class::Reset);
        if pin.in_multi && queues {
            pin.queued += 1;
        }
        match class {
            Class::Quit => expect = Expect::Quit,
            Class::Multi if !pin.in_multi => {
                (pin.in_multi, pin.multi_seq, pin.queued) = (true, env.seq, 0);
                expect = Expect::Confirm(Confirm::Multi(env.seq));
            }
            // Without MULTI they are errors, and the WATCHed keys stay watched.
            Class::Exec | Class::Discard if pin.in_multi => {
                pin.stream |= class == Class::Exec && pin.stream_at_exec;
                (pin.in_multi, pin.watching, pin.stream_at_exec) = (false, false, false);
            }
            Class::Watch if !pin.in_multi => pin.watching = true,
            Class::Unwatch if !pin.in_multi => pin.watching = false,
            Class::Stream if !pin.in_multi => {
                pin.stream = true;
                pin.monitor |= command.spec.name == "MONITOR";
            }
            Class::Stream => pin.stream_at_exec = true,
            Class::Unsubscribe if !pin.in_multi && !pin.stream => {
                expect = Expect::Pushes(cmd.argc().saturating_sub(1).max(1) as u32);
            }
            Class::Sticky => {
                pin.sticky = true;
                pin.tracking |= is_client_tracking_on(cmd);
            }
            Class::Blocking if !pin.in_multi => _ = pin.blocked_at.get_or_insert(env.seq),
            // Queued in a transaction, they apply only if EXEC runs it: only the pinned
            // connection knows the session's db, protocol and name afterwards, so the session
            // stays on it and leaves its session commands to Redis (until RESET).
            Class::Select | Class::Hello | Class::ClientSetName | Class::ClientSetInfo if pin.in_multi => {
                pin.sticky = true;
            }
            Class::Reset => {
                // Redis resets the pinned connection itself; the pin ends but a stream
                // connection stays pinned (its replies are not counted any more). The db,
                // protocol and name follow its reply, in order with the SELECT/HELLO before it.
                // (A stream's replies are not counted: there it applies at once.)
                // Tracking ends with RESET's reply: invalidations sent before it are still the
                // client's.
                *pin = Pin { active: true, stream: pin.stream, key: pin.key, tracking: pin.tracking, ..Pin::default() };
                self.admin = false;
                self.user = env.access.initial_user();
                if self.pin.stream {
                    self.confirm(Confirm::Reset, b"+RESET\r\n");
                } else {
                    expect = Expect::Confirm(Confirm::Reset);
                }
            }
            // Redis applies these on the pinned connection; the session follows once it has.
            Class::Select => {
                if let Some(db) = cmd.arg(1).and_then(parse_int).and_then(|n| u32::try_from(n).ok()) {
                    expect = Expect::Confirm(Confirm::Select(db));
                }
            }
            Class::Hello if !env.access.required() && super::logs_in(class, cmd, env) => {
                expect = Expect::Confirm(Confirm::Login(Some(hello_change(cmd)), login_user(class, cmd)));
            }
            Class::Hello => expect = Expect::Confirm(Confirm::Hello(hello_change(cmd))),
            Class::Auth => expect = Expect::Confirm(Confirm::Login(None, login_user(class, cmd))),
            Class::ClientId if !pin.in_multi && !pin.stream => expect = Expect::Confirm(Confirm::ShownId),
            Class::ClientSetName if cmd.argc() == 3 => {
                let name = cmd.arg(2).filter(|n| !n.is_empty()).map(Bytes::copy_from_slice);
                expect = Expect::Confirm(Confirm::Hello(Box::new(HelloChange { resp3: None, name: Some(name) })));
            }
            _ => {}
        }
        // INFO answered in counted mode (not queued, not in a stream) leaves out the tier's
        // tracking connection, as on the shared pool.
        let counted = !self.pin.stream && !self.pin.in_multi;
        let info = counted && super::shows_clients(command);
        Route::Pinned { stream: self.pin.stream, rewrite, expect, info }
    }
}

/// The user AUTH or HELLO ... AUTH logs in as.
fn login_user(class: Class, cmd: &CommandView<'_>) -> Bytes {
    super::login_of(class, cmd).map(|(user, _)| Bytes::copy_from_slice(user)).unwrap_or_default()
}

/// `CLIENT TRACKING ON ...`.
fn is_client_tracking_on(cmd: &CommandView<'_>) -> bool {
    cmd.arg(0).is_some_and(|a| a.eq_ignore_ascii_case(b"CLIENT"))
        && cmd.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"TRACKING"))
        && cmd.arg(2).is_some_and(|a| a.eq_ignore_ascii_case(b"ON"))
}

/// What `HELLO [protover [AUTH user pass] [SETNAME name]]` changes when Redis accepts it.
fn hello_change(cmd: &CommandView<'_>) -> Box<HelloChange> {
    let resp3 = match cmd.arg(1).and_then(parse_int) {
        Some(2) => Some(false),
        Some(3) => Some(true),
        _ => None,
    };
    let mut name = None;
    let mut args = cmd.args().skip(2);
    while let Some(option) = args.next() {
        if option.eq_ignore_ascii_case(b"AUTH") {
            args.nth(1);
        } else if option.eq_ignore_ascii_case(b"SETNAME") {
            name = args.next().map(|n| (!n.is_empty()).then(|| Bytes::copy_from_slice(n)));
        }
    }
    Box::new(HelloChange { resp3, name })
}
