//! Pinning: whether and why a session is on its own upstream connection (see "Pinning" in
//! `proxy.rs`), how each command changes that state, and what the connection's replies end.

use bytes::Bytes;

use super::{Env, Route, Session};
use crate::cache::{Cause, Tier};
use crate::command::{Class, Effect, effect, written_keys};
use crate::framing::{CommandView, parse_int};
use crate::reply;
use crate::upstream::PoolKey;

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pin {
    pub(super) active: bool,
    /// The session's db and protocol when the pin began: a pinned connection opens in them.
    pub(super) key: PoolKey,
    pub(super) stream: bool,
    pub(super) in_multi: bool,
    pub(super) watching: bool,
    pub(super) sticky: bool,
    /// The sequence number of the first blocking command (outside MULTI) that may still be
    /// waiting for its reply.
    pub(super) blocked_at: Option<u64>,
    /// Redis, not the proxy, knows the session's name, db and protocol (see `route_pinned`).
    pub(super) delegated: bool,
}

impl Session {
    pub fn is_pinned(&self) -> bool {
        self.pin.active
    }

    /// Pinned to a connection whose replies are a stream (pub/sub, MONITOR, ...).
    pub fn is_streaming(&self) -> bool {
        self.pin.active && self.pin.stream
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

    /// The pinned connection was lost, and with it whatever state it held in Redis.
    pub fn pinned_lost(&mut self) {
        self.pin = Pin::default();
        self.forget_transaction();
    }

    /// Writes sent on the pinned connection (in MULTI, scripts, ...) are invalidated before
    /// they are sent and again as the connection's replies arrive ([`Session::revalidate`]).
    pub(super) fn invalidate_pinned_write(&mut self, cmd: &CommandView<'_>, tier: Option<&Tier>) {
        let Some(tier) = tier else { return };
        match effect(cmd) {
            Effect::Writes(spec) => {
                for key in written_keys(cmd, spec) {
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

    pub(super) fn route_pinned(&mut self, class: Class, cmd: &CommandView<'_>, env: &Env<'_>) -> Route {
        let rewrite = match self.enforce_ttl_pinned(class, cmd, env) {
            Ok(rewrite) => rewrite,
            Err(refused) => return Route::Reply(refused),
        };
        let pin = &mut self.pin;
        match class {
            Class::Quit => return Route::Close(Bytes::from_static(reply::OK)),
            Class::Multi => pin.in_multi = true,
            // Without MULTI they are errors, and the WATCHed keys stay watched.
            Class::Exec | Class::Discard if pin.in_multi => (pin.in_multi, pin.watching) = (false, false),
            Class::Watch if !pin.in_multi => pin.watching = true,
            Class::Unwatch if !pin.in_multi => pin.watching = false,
            Class::Stream if !pin.in_multi => pin.stream = true,
            Class::Sticky => pin.sticky = true,
            Class::Blocking if !pin.in_multi => _ = pin.blocked_at.get_or_insert(env.seq),
            // Queued in a transaction, they apply only if EXEC runs it: only the pinned
            // connection knows the session's db, protocol and name afterwards, so the session
            // stays on it and leaves its session commands to Redis (until RESET).
            Class::Select | Class::Hello | Class::ClientSetName | Class::ClientSetInfo if pin.in_multi => {
                (pin.sticky, pin.delegated) = (true, true);
            }
            Class::Reset => {
                // Redis resets the pinned connection itself; the pin ends but a stream
                // connection stays pinned (its replies are not counted any more).
                *pin = Pin { active: true, stream: pin.stream, key: pin.key, ..Pin::default() };
                (self.db, self.resp3, self.name, self.admin) = (0, false, None, false);
                self.user = env.access.initial_user();
            }
            // Redis applies these on the pinned connection; follow them for when the pin ends.
            Class::Select if !pin.in_multi => {
                if let Some(db) = cmd.arg(1).and_then(parse_int).and_then(|n| u32::try_from(n).ok()) {
                    self.db = db;
                }
            }
            Class::Hello if !pin.in_multi => match cmd.arg(1).and_then(parse_int) {
                Some(2) => self.resp3 = false,
                Some(3) => self.resp3 = true,
                _ => {}
            },
            _ => {}
        }
        Route::Pinned { stream: self.pin.stream, rewrite }
    }
}
