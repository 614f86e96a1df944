//! The request path, without sockets: for each command of a client's session, decide what
//! happens to it and answer the commands the proxy owns.
//!
//! ```text
//! command --classify--> local (HELLO, AUTH, SELECT, QUIT, RESET, CLIENT SETNAME/GETNAME/ID/INFO/SETINFO)
//!                   \-> shared pool of (db, protocol)            ordinary commands
//!                   \-> the session's pinned connection           MULTI/WATCH, blocking, pub/sub, ...
//! ```
//!
//! `connection.rs` executes the [`Route`]s (sockets, ordering, backpressure); this file owns the
//! session state they depend on: db, protocol, client name, and whether and why the session is
//! pinned to its own upstream connection.
//!
//! # Pinning
//! A session is pinned from the first command that leaves state on its connection until that
//! state ends: EXEC/DISCARD/UNWATCH end MULTI/WATCH, a blocking command ends with its reply.
//! Stream commands (SUBSCRIBE, MONITOR, CLIENT REPLY OFF, CLIENT TRACKING ON, ...) and sticky
//! flags (CLIENT NO-EVICT) pin for the rest of the session. While pinned, every command goes
//! to the pinned connection, so Redis itself answers it in that state (e.g. QUEUED in MULTI).

use std::time::Instant;

use bytes::Bytes;

use crate::access::{Access, UserId};
use crate::cache::{Cause, FillTicket, Lookup, LookupAt, Registrations, SplitGet, Tier, Waiter};
use crate::client_table::ClientTable;
use crate::command::{Class, Command, Effect, written_keys};
use crate::config::CacheMode;
use crate::error::ProxyError;
use crate::framing::{CommandView, encode_command};
use crate::metrics::inc;
use crate::policy::Policy;
use crate::reply;
use crate::ttl::{self, Plan, Rewrite};
use crate::upstream::{PoolKey, ReplySink, ServerInfo};
use local::Local;

/// What to do with one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered by the proxy; nothing goes upstream.
    Reply(Bytes),
    /// Answered from the local tier; nothing goes upstream.
    Hit(Bytes),
    /// Forwarded on the shared pool for this key.
    Shared(PoolKey),
    /// INFO, forwarded on the shared pool while the tier's tracking connection is up: its reply
    /// leaves out what that connection of the proxy's adds (`delivery.rs`).
    Info(PoolKey),
    /// A write forwarded on the shared pool: its keys were invalidated, and are invalidated
    /// again when its reply arrives, before the client gets it (read-your-writes). With a
    /// rewrite, TTL enforcement changed what is sent. The tier's count of registered reads
    /// before the first invalidation (see [`Registrations`]).
    Write(PoolKey, Option<Rewrite>, Registrations),
    /// A cacheable read that missed: forwarded, and its reply fills the tier.
    Fill(PoolKey, FillTicket),
    /// An identical read is in flight: its reply will be delivered for this request too.
    Joined,
    /// An MGET partly answered from the tier: these bytes (an MGET of the missing keys) are
    /// sent instead, and the client's reply is assembled when they are answered.
    Split(PoolKey, SplitGet, Bytes),
    /// Forwarded on the session's pinned connection; `stream` once replies are no longer one
    /// per request. With a rewrite, TTL enforcement changed what is sent or how EXEC's reply
    /// reaches the client. `expect`: what comes back beyond one plain reply.
    /// `info`: INFO, whose reply leaves out the proxy's own tracking connection.
    Pinned { stream: bool, rewrite: Option<Rewrite>, expect: Expect, info: bool },
    /// Answer, then close the connection (QUIT).
    Close(Bytes),
}

/// What a routing decision may consult besides the session.
pub struct Env<'a> {
    pub server: &'a ServerInfo,
    /// Answers a `PROXY ...` command, where the whole proxy is at hand (`admin.rs`).
    pub admin: &'a (dyn Fn(&mut Session, &CommandView<'_>) -> Bytes + Sync),
    pub policy: &'a Policy,
    pub access: &'a Access,
    /// `None` when `cache.enabled` is false.
    pub tier: Option<&'a Tier>,
    pub ttl: &'a ttl::Counters,
    /// The time for expiry checks, read once per batch of requests.
    pub now: Instant,
    /// The circuit breaker refuses calls: PING is answered here, stale replies may be served.
    pub upstream_down: bool,
    /// The request's sequence number, and where its reply goes if it joins a read in flight.
    pub seq: u64,
    pub sink: &'a ReplySink,
    /// Every client of the proxy (CLIENT LIST, CLIENT KILL).
    pub clients: &'a ClientTable,
    /// Set in front of a Redis Cluster (and only then): whether the breaker of the node serving
    /// a key refuses calls (its cached replies may be served stale; `upstream_down` is then
    /// false).
    pub shard_down: Option<&'a KeyTest<'a>>,
}

/// A question about a key (see `Env::shard_down`).
pub type KeyTest<'a> = dyn Fn(&[u8]) -> bool + Sync + 'a;

impl Env<'_> {
    fn lookup_at(&self, key: &[u8]) -> LookupAt {
        LookupAt { now: self.now, stale_ok: self.down(key) }
    }

    /// In front of a Redis Cluster: an MGET whose keys are in several slots is split per node
    /// (`cluster.rs`), not by the tier; SELECT n > 0 is refused; SCRIPT/FUNCTION KILL go to every
    /// master.
    pub fn cluster(&self) -> bool {
        self.shard_down.is_some()
    }

    /// Whether the upstream that serves `key` refuses calls (its breaker is open).
    fn down(&self, key: &[u8]) -> bool {
        self.upstream_down || self.shard_down.is_some_and(|down| down(key))
    }
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    id: u64,
    db: u32,
    resp3: bool,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    pin: Pin,
    /// Keys written on the pinned connection, invalidated again as its replies arrive.
    dirty: Vec<Bytes>,
    /// [`Session::identity`] when the pin began: a pinned connection opens with it.
    pin_identity: Vec<Bytes>,
    /// Scratch space for a variant id (no allocation on a cache hit).
    variant: Vec<u8>,
    /// `PROXY AUTH` succeeded.
    admin: bool,
    /// The client was told its upstream connection's id (CLIENT ID, CLIENT INFO): that
    /// connection is the client's, and losing it loses the client.
    id_shown: bool,
    /// Who the client authenticated as; `None` until it does (when the proxy has users).
    user: Option<UserId>,
    /// The open transaction's queued commands: whether each is the client's (or a PEXPIRE
    /// of TTL enforcement, whose element EXEC's reply must lose).
    queued: Vec<bool>,
    /// TTL enforcement refused a command of the open transaction: EXEC must abort it.
    refused_in_multi: bool,
    /// What CLIENT ID answered (its own upstream connection's id), once it has.
    shown_id: Option<u64>,
    /// The last command, for CLIENT LIST (`last_sub`: its full label when it is not just
    /// the table name in lowercase: `client|list`, or a command the table does not know).
    last_name: &'static str,
    last_sub: Option<Bytes>,
    /// CLIENT KILL named this very client.
    killed: bool,
    /// The Redis user the session logged in as on its own connection (an ACL user of Redis's).
    redis_user: Option<Bytes>,
    /// Channels, patterns and shard channels subscribed to (from Redis's confirmations).
    subscriptions: [u32; 3],
}

impl Session {
    pub fn new(id: u64) -> Session {
        Session {
            id,
            db: 0,
            resp3: false,
            name: None,
            lib_name: None,
            lib_ver: None,
            pin: Pin::default(),
            dirty: Vec::new(),
            pin_identity: Vec::new(),
            variant: Vec::new(),
            admin: false,
            id_shown: false,
            user: Some(0),
            queued: Vec::new(),
            refused_in_multi: false,
            shown_id: None,
            last_name: "NULL",
            last_sub: None,
            killed: false,
            subscriptions: [0; 3],
            redis_user: None,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client knows its upstream connection's id (see `id_shown`).
    pub fn id_shown(&self) -> bool {
        self.id_shown
    }

    /// `PROXY AUTH` succeeded on this connection.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    pub fn set_admin(&mut self, admin: bool) {
        self.admin = admin;
    }

    /// The user the session starts as (see [`Access::initial_user`]).
    pub fn with_user(mut self, user: Option<UserId>) -> Session {
        self.user = user;
        self
    }

    /// The shared pool (and protocol/db for a new pinned connection) of the session now.
    pub fn pool_key(&self) -> PoolKey {
        PoolKey { db: self.db, resp3: self.resp3 }
    }

    /// The session's name and library info as commands, for a connection of its own.
    pub fn identity(&self) -> Vec<Bytes> {
        let mut commands = Vec::new();
        if let Some(name) = &self.name {
            commands.push(encode_command(&[&b"CLIENT"[..], b"SETNAME", name]));
        }
        for (attr, value) in [(&b"LIB-NAME"[..], &self.lib_name), (b"LIB-VER", &self.lib_ver)] {
            if let Some(value) = value {
                commands.push(encode_command(&[&b"CLIENT"[..], b"SETINFO", attr, value]));
            }
        }
        commands
    }

    /// Routes `cmd`, which the table describes as `command` ([`crate::command::Learned::command`]).
    pub fn route(&mut self, cmd: &CommandView<'_>, command: &Command, env: &Env<'_>) -> Route {
        let class = command.class(cmd);
        self.note_command(command, cmd);
        if env.access.denies_any()
            && let Some(name) = cmd.arg(0).filter(|name| env.access.denied(name))
        {
            // Inside MULTI, like a command Redis refuses to queue: EXEC aborts the transaction.
            self.refused_in_multi |= self.pin.active && self.pin.in_multi;
            return Route::Reply(ProxyError::Denied(String::from_utf8_lossy(name).to_uppercase()).to_reply());
        }
        let exempt = matches!(class, Class::Auth | Class::Hello | Class::Quit | Class::Reset);
        if self.user.is_none() && !exempt {
            return Route::Reply(ProxyError::NoAuth.to_reply());
        }
        match class {
            // The proxy's own, pinned or not: Redis does not know them.
            Class::Proxy => return Route::Reply((env.admin)(self, cmd)),
            // The proxy's users, when it has some.
            Class::Auth if env.access.required() => return self.reply(Local::Auth, cmd, env),
            _ => {}
        }
        // Without them, AUTH is Redis's: the login the shared connections already have changes
        // nothing; any other (an ACL user of Redis's) needs a connection of the session's own.
        let redis_login = !env.access.required() && logs_in(class, cmd, env);
        if class == Class::Auth && !redis_login && !self.pin.active {
            return Route::Reply(Bytes::from_static(reply::OK));
        }
        if class == Class::ClientId {
            // The id of the session's own upstream connection, which it keeps from now on: one
            // it can use (CLIENT UNBLOCK, CLIENT KILL ID, CLIENT TRACKING ... REDIRECT).
            self.id_shown = true;
        }
        if self.pin.active {
            // While pinned, Redis answers everything (the session's name included: its reply
            // must come in order with, and agree with, what is queued before it).
            self.invalidate_pinned_write(cmd, command, env.tier);
            return self.route_pinned(class, cmd, command, env);
        }
        match class {
            Class::Ordinary if env.upstream_down && is_ping(cmd) => Route::Reply(self.ping(cmd)),
            Class::Ordinary => self.route_ordinary(cmd, command, env),
            Class::Exec | Class::Discard | Class::Unwatch => Route::Shared(self.pool_key()),
            Class::Multi
            | Class::Watch
            | Class::Blocking
            | Class::Stream
            | Class::Sticky
            | Class::Unsubscribe
            | Class::ClientId
            | Class::Auth => self.pin_and_route(Pin::new(self.pool_key()), class, cmd, command, env),
            Class::Hello if redis_login => self.pin_and_route(Pin::new(self.pool_key()), class, cmd, command, env),
            // In front of a cluster: on every master, over the shared connections (a busy
            // Redis answers SCRIPT KILL there; which master runs the script is not known).
            Class::Interrupt if env.cluster() && !is_shutdown(cmd) => Route::Shared(self.pool_key()),
            Class::Interrupt => {
                // A new connection in db 0 (a busy Redis refuses SELECT; these commands do not
                // depend on the db); a kept one stays in the db it is in.
                let pin = Pin { interrupt: true, ..Pin::new(PoolKey { db: 0, ..self.pool_key() }) };
                self.pin_and_route(pin, class, cmd, command, env)
            }
            Class::Quit => Route::Close(Bytes::from_static(reply::OK)),
            Class::Proxy => Route::Reply((env.admin)(self, cmd)),
            Class::Hello => self.reply(Local::Hello, cmd, env),
            Class::Select => self.reply(Local::Select, cmd, env),
            Class::Reset => self.reply(Local::Reset, cmd, env),
            Class::ClientSetName => self.reply(Local::ClientSetName, cmd, env),
            Class::ClientGetName => self.reply(Local::ClientGetName, cmd, env),
            Class::ClientSetInfo => self.reply(Local::ClientSetInfo, cmd, env),
            Class::ClientInfo => Route::Reply(self.client_info(cmd, env).unwrap_or_else(|e| e.to_reply())),
            Class::ClientList => Route::Reply(self.client_list(cmd, env).unwrap_or_else(|e| e.to_reply())),
            Class::ClientKill => Route::Reply(self.client_kill(cmd, env).unwrap_or_else(|e| e.to_reply())),
        }
    }

    /// A command the proxy answers for the session, its error included.
    fn reply(&mut self, local: Local, cmd: &CommandView<'_>, env: &Env<'_>) -> Route {
        Route::Reply(self.answer(local, cmd, env).unwrap_or_else(|e| e.to_reply()))
    }

    /// Starts `pin` on the session's own connection and routes `cmd` there.
    fn pin_and_route(
        &mut self,
        pin: Pin,
        class: Class,
        cmd: &CommandView<'_>,
        command: &Command,
        env: &Env<'_>,
    ) -> Route {
        self.pin = pin;
        self.pin_identity = self.identity();
        self.invalidate_pinned_write(cmd, command, env.tier);
        self.route_pinned(class, cmd, command, env)
    }

    /// An ordinary command on the shared pool, through the local tier.
    fn route_ordinary(&mut self, cmd: &CommandView<'_>, command: &Command, env: &Env<'_>) -> Route {
        let pool = self.pool_key();
        if env.tier.is_none() && !env.policy.enforces_ttl() {
            return if shows_clients(command) { Route::Info(pool) } else { Route::Shared(pool) };
        }
        let effect = command.effect(cmd);
        let rewrite = match enforce_ttl(cmd, command, env) {
            Ok(plan) => plan.map(Plan::in_transaction),
            Err(refused) => return Route::Reply(refused),
        };
        let Some(tier) = env.tier else {
            return match rewrite {
                Some(_) => Route::Write(pool, rewrite, Registrations::default()),
                None => Route::Shared(pool),
            };
        };
        match effect {
            Effect::Nothing if shows_clients(command) => Route::Info(pool),
            Effect::Nothing => Route::Shared(pool),
            Effect::Flush => {
                let before = tier.registrations();
                tier.clear();
                Route::Write(pool, None, before)
            }
            Effect::Writes(keys) => {
                let before = tier.registrations();
                written_keys(cmd, keys).for_each(|key| tier.invalidate(key, Cause::Write));
                Route::Write(pool, rewrite, before)
            }
            Effect::CacheableRead => {
                let key = cmd.arg(1).unwrap_or_default();
                let rule = env.policy.for_key(key);
                if !may_cache(rule.mode, tier, key) {
                    if env.down(key) && rule.mode != CacheMode::None {
                        self.variant_id(cmd.args());
                        if let Some(reply) = tier.stale_answer(key, &self.variant, env.now) {
                            return Route::Hit(reply);
                        }
                    }
                    return Route::Shared(pool);
                }
                self.variant_id(cmd.args());
                let waiter = || Waiter { sink: env.sink.clone(), seq: env.seq };
                let stats = env.policy.stats(rule.rule);
                match tier.lookup(key, &self.variant, rule.local_ttl, env.lookup_at(key), waiter) {
                    Lookup::Hit(reply) => {
                        inc(&stats.hits);
                        Route::Hit(reply)
                    }
                    Lookup::Joined => {
                        inc(&stats.misses);
                        Route::Joined
                    }
                    Lookup::Miss(ticket) => {
                        inc(&stats.misses);
                        Route::Fill(pool, ticket.for_rule(stats))
                    }
                }
            }
            Effect::MultiGet => self.route_mget(cmd, tier, env),
        }
    }

    /// MGET as one GET per key (sharing GET's entries): cached keys are answered from the tier,
    /// only the others go upstream.
    fn route_mget(&mut self, cmd: &CommandView<'_>, tier: &Tier, env: &Env<'_>) -> Route {
        let keys = cmd.argc() - 1;
        if env.cluster() && !crate::cluster::map::one_slot(cmd.args().skip(1)) {
            return Route::Shared(self.pool_key());
        }
        let mut parts = Vec::with_capacity(keys);
        let mut tickets = Vec::new();
        let mut missing: Vec<&[u8]> = vec![b"MGET"];
        for key in cmd.args().skip(1) {
            let rule = env.policy.for_key(key);
            let ticket = if may_cache(rule.mode, tier, key) {
                self.variant_id([&b"GET"[..], key].into_iter());
                let stats = env.policy.stats(rule.rule);
                match tier.lookup_or_register(key, &self.variant, rule.local_ttl, env.lookup_at(key)) {
                    Ok(element) => {
                        inc(&stats.hits);
                        parts.push(Some(element));
                        continue;
                    }
                    Err(ticket) => {
                        inc(&stats.misses);
                        ticket.map(|ticket| ticket.for_rule(stats))
                    }
                }
            } else {
                None
            };
            parts.push(None);
            tickets.push(ticket);
            missing.push(key);
        }
        if tickets.is_empty() {
            return Route::Hit(SplitGet::all_cached(parts));
        }
        if tickets.len() == keys && tickets.iter().all(Option::is_none) {
            return Route::Shared(self.pool_key());
        }
        Route::Split(self.pool_key(), SplitGet::new(parts, tickets), encode_command(&missing))
    }

    /// A variant's identity within its key's entry: db, protocol and the command (`args`) with
    /// its name uppercased and without the key (argument 1: the entry's own), each argument
    /// length-prefixed. Built in reused scratch space.
    fn variant_id<'a>(&mut self, args: impl Iterator<Item = &'a [u8]>) {
        variant_id(&mut self.variant, self.db, self.resp3, self.user.unwrap_or_default(), args);
    }
}

/// A cached reply's variant id (see `Session::variant_id`), into `id`: what a session in `db`,
/// the protocol and `user` would look the command `args` up by (the warm-up fills the same).
#[inline]
pub fn variant_id<'a>(id: &mut Vec<u8>, db: u32, resp3: bool, user: UserId, args: impl Iterator<Item = &'a [u8]>) {
    id.clear();
    id.extend_from_slice(&db.to_le_bytes());
    id.push(u8::from(resp3));
    id.extend_from_slice(&user.to_le_bytes());
    for (i, arg) in args.enumerate().filter(|(i, _)| *i != 1) {
        id.extend_from_slice(&(arg.len() as u32).to_le_bytes());
        let start = id.len();
        id.extend_from_slice(arg);
        if i == 0 {
            id[start..].make_ascii_uppercase();
        }
    }
}

/// AUTH, or HELLO with its AUTH option, with credentials other than the proxy's own upstream
/// login (which every shared connection has already).
fn logs_in(class: Class, cmd: &CommandView<'_>, env: &Env<'_>) -> bool {
    match login_of(class, cmd) {
        Some((user, password)) => !env.server.is_upstream_login(user, password),
        // A malformed AUTH is Redis's to refuse; a HELLO without AUTH logs in nobody.
        None => class == Class::Auth,
    }
}

/// The user and password AUTH or HELLO ... AUTH logs in with; `None` for a malformed AUTH
/// and for a HELLO without AUTH.
fn login_of<'c>(class: Class, cmd: &CommandView<'c>) -> Option<(&'c [u8], &'c [u8])> {
    let (user, password) = match (class, cmd.argc()) {
        (Class::Auth, 2) => (&b"default"[..], cmd.arg(1)),
        (Class::Auth, 3) => (cmd.arg(1).unwrap_or_default(), cmd.arg(2)),
        (Class::Auth, _) => return None,
        (Class::Hello, _) => {
            let mut args = cmd.args().skip(2);
            args.by_ref().find(|a| a.eq_ignore_ascii_case(b"AUTH"))?;
            (args.next().unwrap_or_default(), args.next())
        }
        _ => return None,
    };
    Some((user, password.unwrap_or_default()))
}

fn is_shutdown(cmd: &CommandView<'_>) -> bool {
    cmd.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"SHUTDOWN"))
}

fn is_ping(cmd: &CommandView<'_>) -> bool {
    cmd.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"PING"))
}

/// A variant id (see `Session::variant_id`) for people: `db=0 resp=2 GET` plus its other
/// arguments.
pub fn describe_variant(id: &[u8]) -> String {
    let (Some(db), Some(&resp3), Some(user)) = (id.get(..4), id.get(4), id.get(5..7)) else {
        return String::from_utf8_lossy(id).into_owned();
    };
    let db = u32::from_le_bytes(db.try_into().unwrap_or_default());
    let user = u16::from_le_bytes(user.try_into().unwrap_or_default());
    let mut out = format!("db={db} resp={} user={user}", if resp3 == 1 { 3 } else { 2 });
    let mut rest = &id[7..];
    while let (Some(len), true) = (rest.get(..4), rest.len() >= 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        let Some(arg) = rest.get(4..4 + len) else { break };
        out.push(' ');
        out.push_str(&String::from_utf8_lossy(arg));
        rest = &rest[4 + len..];
    }
    out
}

/// Whether a rule's reads of `key` may be cached now.
pub fn may_cache(mode: CacheMode, tier: &Tier, key: &[u8]) -> bool {
    match mode {
        CacheMode::None => false,
        CacheMode::Tracked => tier.tracked(key),
        CacheMode::Ttl => true,
    }
}

mod enforce;
/// INFO: its reply shows the proxy's clients (`delivery::as_clients_see_it`), on the shared
/// pool and on a pinned connection.
fn shows_clients(command: &Command) -> bool {
    command.spec.name == "INFO"
}

mod listing;
mod local;
mod pin;

use enforce::enforce_ttl;
use pin::Pin;
pub use pin::{Confirm, Expect};

#[cfg(test)]
mod tests;
