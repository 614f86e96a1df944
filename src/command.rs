//! What the proxy knows about each command, in one table (`command/table.rs`): the connection
//! it needs (shared and pipelined, the session's own until an end, or answered by the proxy),
//! which arguments are its keys, what it does to the local tier, and what TTL enforcement does
//! with it. A request looks its command up once ([`lookup`]); routing, the tier, TTL
//! enforcement and the metrics read the one [`Command`] it gets.
//!
//! Commands the table does not name (a newer Redis, a module) get [`Command::OTHER`]'s safe
//! answers (shared, may write any of its arguments), refined by what the upstream's own `COMMAND`
//! says about them (`command/learned.rs`).

mod learned;
mod table;

use std::sync::OnceLock;

use crate::framing::{CommandView, parse_int};
pub use learned::Learned;
pub use table::TABLE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Stateless on the connection: goes over the shared, pipelined connections.
    Ordinary,
    // Answered by the proxy for the client's own session.
    Hello,
    Auth,
    Select,
    Quit,
    Reset,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientInfo,
    /// CLIENT LIST and CLIENT KILL: answered from the proxy's own client table.
    ClientList,
    ClientKill,
    ClientSetInfo,
    /// The proxy's own admin family (`PROXY BREAKER STATUS`, ...).
    Proxy,
    // Transactions: pinned from MULTI/WATCH until EXEC/DISCARD/UNWATCH end the state.
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// May block the connection for a long time (blocking commands, scripts): pinned until
    /// its reply arrives.
    Blocking,
    /// Turns the connection into a stream that is not one reply per request (pub/sub,
    /// MONITOR, CLIENT REPLY OFF|SKIP, replication): pinned for good.
    Stream,
    /// Sets per-connection flags with no end command (CLIENT NO-EVICT, READONLY, CLIENT TRACKING
    /// ON): pinned for good. Tracking keeps one reply per request: its invalidations are pushes
    /// among the replies (RESP3), passed on as they come, or go to the REDIRECT client (RESP2).
    Sticky,
    /// (P|S)UNSUBSCRIBE: outside a subscription Redis answers once per channel argument (at
    /// least once), as pushes in RESP3. Never on a shared connection, whose replies are matched
    /// one per request: the extra replies would reach other clients.
    Unsubscribe,
    /// SCRIPT KILL, FUNCTION KILL, SHUTDOWN: what ends a busy Redis. Sent on a connection of the
    /// session's own, pinned until answered, without moving it to the session's db (a busy Redis
    /// refuses SELECT): on a shared connection they could wait behind what they are to stop.
    Interrupt,
}

/// The connection a command needs: a fixed [`Class`], or one its arguments decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    Is(Class),
    /// `CLIENT <subcommand>`: several are answered by the proxy, some pin.
    ClientSub,
    /// XREAD and XREADGROUP block only with a BLOCK option.
    BlockOption,
    /// SCRIPT KILL and FUNCTION KILL interrupt; the other subcommands are ordinary.
    KillSub,
}

/// What a command does to keys, as far as the local tier is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// Changes no key (reads, server and connection commands).
    Unchanged,
    /// A deterministic read of the key at argument 1: its reply may be cached.
    Cached,
    /// EXISTS: with one key, a cacheable read; with more, it counts them.
    Exists,
    /// MGET: one GET per key.
    MultiGet,
    /// May change its keys.
    Write,
    /// May change every key of a db (FLUSHDB, FLUSHALL, SWAPDB, REPLICAOF).
    Flush,
}

/// Which arguments are keys (Redis's key specs, for the forms the proxy needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    /// From `first` to `last` (negative: from the end, -1 the last argument), every `step`.
    Range {
        first: u8,
        last: i8,
        step: u8,
    },
    /// A count at argument `at`, then that many keys (`LMPOP 2 a b LEFT`).
    NumKeys {
        at: u8,
    },
    /// A destination at argument 1, a count at 2, then the keys (`ZUNIONSTORE d 2 a b`).
    StoreNumKeys,
    /// EVAL/FCALL: `numkeys` at argument 2, then the keys. A script may write keys it was not
    /// given, so the tier treats every argument as written.
    Script,
    /// Found only by reading the options (SORT ... STORE, GEORADIUS ... STORE, MIGRATE ... KEYS,
    /// XREAD ... STREAMS): every argument may be one.
    Unknown,
}

/// What TTL enforcement does with a command (see `ttl.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Creates no key, or none the proxy can name.
    None,
    Set,
    Getex,
    Setex,
    Psetex,
    Expire,
    Pexpire,
    Expireat,
    Pexpireat,
    Persist,
    Restore,
    /// May create a key, or leave it without an expiry: which.
    Creates(Created),
}

/// The keys a write may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    First,
    Second,
    /// Arguments 1, 3, 5, ... (MSET key value key value).
    Pairs,
    /// SORT's STORE destination.
    SortStore,
    /// COPY's destination, unless it goes to another db.
    CopyDest,
}

/// One line of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub name: &'static str,
    /// `n`: exactly n arguments, the name included; `-n`: at least n.
    pub arity: i16,
    pub conn: Conn,
    pub data: Data,
    pub keys: Keys,
    pub ttl: Ttl,
}

impl Spec {
    /// Whether Redis accepts `argc` arguments (it refuses other counts before running anything).
    pub fn fits(&self, argc: usize) -> bool {
        let arity = self.arity.unsigned_abs() as usize;
        if self.arity < 0 { argc >= arity } else { argc == arity }
    }
}

/// How a tier-relevant command relates to the local tier, for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A deterministic read of the one key at argument 1: its reply may be cached.
    CacheableRead,
    /// MGET: one GET per key, answered per key from the tier where possible.
    MultiGet,
    /// Changes no key: nothing to invalidate.
    Nothing,
    /// May change keys: which arguments they are ([`written_keys`]).
    Writes(Keys),
    /// May change every key of a db: clear the tier.
    Flush,
}

/// A request's command, as the table (or the upstream's metadata) describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Its metrics slot: its line of [`TABLE`], or `TABLE.len()` ("other").
    pub slot: usize,
    pub spec: Spec,
}

impl Command {
    /// A name the table does not know: shared, and it may write any of its arguments.
    pub const OTHER: Command = Command {
        slot: TABLE.len(),
        spec: Spec {
            name: "other",
            arity: -1,
            conn: Conn::Is(Class::Ordinary),
            data: Data::Write,
            keys: Keys::Unknown,
            ttl: Ttl::None,
        },
    };

    /// The connection this call needs.
    pub fn class(&self, cmd: &CommandView<'_>) -> Class {
        match self.spec.conn {
            Conn::Is(class) => class,
            Conn::ClientSub => {
                let mut args = cmd.args().skip(1);
                classify_client(args.next(), args.next())
            }
            Conn::BlockOption => classify_xread(cmd.args().skip(1)),
            Conn::KillSub if cmd.arg(1).is_some_and(|sub| sub.eq_ignore_ascii_case(b"KILL")) => Class::Interrupt,
            Conn::KillSub => Class::Ordinary,
        }
    }

    /// What this call does to the tier. A read Redis refuses (wrong number of arguments) is
    /// not cached; a write it refuses is still treated as one (safe either way).
    pub fn effect(&self, cmd: &CommandView<'_>) -> Effect {
        let spec = &self.spec;
        match spec.data {
            Data::Cached | Data::MultiGet if !spec.fits(cmd.argc()) => Effect::Nothing,
            Data::Cached => Effect::CacheableRead,
            Data::MultiGet => Effect::MultiGet,
            Data::Exists if cmd.argc() == 2 => Effect::CacheableRead,
            Data::Exists | Data::Unchanged => Effect::Nothing,
            Data::Write => Effect::Writes(spec.keys),
            Data::Flush => Effect::Flush,
        }
    }
}

/// The table's line for a command name (case-insensitive), else [`Command::OTHER`]. On the path
/// of every request: the name is packed into integers, hashed, and found in an open-addressing
/// index of the packed names (a multiply and one or two integer compares, no `memcmp`; a binary
/// search over the table's 250 names cost 50 ns in mispredicted branches).
pub fn lookup(name: &[u8]) -> Command {
    let Some(key) = pack(name) else { return Command::OTHER };
    let index = Index::get();
    let mut at = index.home(key);
    loop {
        match index.slots[at] {
            (_, EMPTY) => return Command::OTHER,
            (found, slot) if found == key => return Command { slot: slot as usize, spec: TABLE[slot as usize] },
            _ => at = (at + 1) & (INDEX_SIZE - 1),
        }
    }
}

/// Slots of the index: four times the table, so probes are short.
const INDEX_SIZE: usize = 1024;
const EMPTY: u16 = u16::MAX;

struct Index {
    slots: Vec<(Packed, u16)>,
}

impl Index {
    fn get() -> &'static Index {
        static INDEX: OnceLock<Index> = OnceLock::new();
        INDEX.get_or_init(|| {
            let mut index = Index { slots: vec![((0, 0), EMPTY); INDEX_SIZE] };
            for (slot, spec) in TABLE.iter().enumerate() {
                let key = pack(spec.name.as_bytes()).expect("table names are at most 23 bytes");
                let mut at = index.home(key);
                while index.slots[at].1 != EMPTY {
                    at = (at + 1) & (INDEX_SIZE - 1);
                }
                index.slots[at] = (key, slot as u16);
            }
            index
        })
    }

    fn home(&self, (high, low): Packed) -> usize {
        let mixed = (high as u64) ^ ((high >> 64) as u64).rotate_left(29) ^ low;
        (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize
    }
}

/// Up to 23 bytes, uppercased: bytes 0..16, then bytes 16..23 and the length.
type Packed = (u128, u64);

fn pack(name: &[u8]) -> Option<Packed> {
    let mut high = [0u8; 16];
    let mut low = [0u8; 8];
    if name.len() <= 16 {
        high[..name.len()].copy_from_slice(name);
    } else if name.len() <= 23 {
        let (head, tail) = name.split_at(16);
        high.copy_from_slice(head);
        low[..tail.len()].copy_from_slice(tail);
    } else {
        return None;
    }
    low[7] = name.len() as u8;
    let high = u128::from_le_bytes(high);
    let (upper_high, lower_high) = (upper_word((high >> 64) as u64), upper_word(high as u64));
    Some(((u128::from(upper_high) << 64) | u128::from(lower_high), upper_word(u64::from_le_bytes(low))))
}

/// ASCII-uppercases eight bytes at once: bit 5 cleared in the bytes that are 'a'..='z'.
fn upper_word(word: u64) -> u64 {
    const EACH: u64 = 0x0101_0101_0101_0101;
    let seven_bits = word & (0x7f * EACH);
    // Bit 7 of each byte: the byte is at least 'a' (0x61), and at least 'z' + 1 (0x7b).
    let from_a = seven_bits + (0x80 - 0x61) * EACH;
    let past_z = seven_bits + (0x80 - 0x7b) * EACH;
    let lower = from_a & !past_z & !word & (0x80 * EACH);
    word ^ (lower >> 2)
}

/// Which arguments of `cmd` are keys, per `keys` (every argument for [`Keys::Unknown`]).
pub fn key_args<'a>(cmd: &CommandView<'a>, keys: Keys) -> impl Iterator<Item = &'a [u8]> + use<'a> {
    let argc = cmd.argc();
    let count_at = |at: usize| cmd.arg(at).and_then(parse_int).map_or(0, |n| n.max(0) as usize);
    // (a leading key at argument 1?, where the others start, how many, every how many)
    let (dest, start, count, step) = match keys {
        Keys::None => (0, 0, 0, 1),
        Keys::Range { first, last, step } => {
            let end = if last < 0 { argc as isize + last as isize + 1 } else { last as isize + 1 };
            let count = (end - first as isize).max(0) as usize;
            (0, first as usize, count, step as usize)
        }
        Keys::NumKeys { at } => (0, at as usize + 1, count_at(at as usize), 1),
        Keys::StoreNumKeys => (1, 3, count_at(2), 1),
        Keys::Script => (0, 3, count_at(2), 1),
        Keys::Unknown => (0, 1, argc, 1),
    };
    let args = cmd.args();
    args.clone().skip(1).take(dest).chain(args.skip(start).take(count).step_by(step.max(1)))
}

/// The arguments a write may change: its keys, or every argument where they cannot be known.
pub fn written_keys<'a>(cmd: &CommandView<'a>, keys: Keys) -> impl Iterator<Item = &'a [u8]> + use<'a> {
    key_args(cmd, if keys == Keys::Script { Keys::Unknown } else { keys })
}

/// Longest subcommand name we need to recognise.
const NAME_MAX: usize = 24;

/// ASCII-uppercases `arg` into `buf`; names longer than any we match come back empty.
fn upper<'b>(arg: &[u8], buf: &'b mut [u8; NAME_MAX]) -> &'b [u8] {
    if arg.len() > NAME_MAX {
        return &[];
    }
    let out = &mut buf[..arg.len()];
    out.copy_from_slice(arg);
    out.make_ascii_uppercase();
    out
}

fn classify_client(sub: Option<&[u8]>, arg: Option<&[u8]>) -> Class {
    let Some(sub) = sub else { return Class::Ordinary };
    let mut buf = [0u8; NAME_MAX];
    let on_off = |arg: Option<&[u8]>, value: &[u8]| arg.is_some_and(|a| a.eq_ignore_ascii_case(value));
    match upper(sub, &mut buf) {
        b"SETNAME" => Class::ClientSetName,
        b"GETNAME" => Class::ClientGetName,
        b"ID" => Class::ClientId,
        b"INFO" => Class::ClientInfo,
        b"LIST" => Class::ClientList,
        b"KILL" => Class::ClientKill,
        b"SETINFO" => Class::ClientSetInfo,
        b"REPLY" if on_off(arg, b"OFF") || on_off(arg, b"SKIP") => Class::Stream,
        // The shared connections track keys for the tier (`upstream/tracked.rs`): a client's
        // tracking commands, even OFF or a question, run on a connection of its own.
        b"TRACKING" | b"CACHING" | b"GETREDIR" | b"TRACKINGINFO" => Class::Sticky,
        b"NO-EVICT" | b"NO-TOUCH" => Class::Sticky,
        _ => Class::Ordinary,
    }
}

/// XREAD and XREADGROUP block only with a BLOCK option (which comes before STREAMS).
fn classify_xread<'a>(args: impl Iterator<Item = &'a [u8]>) -> Class {
    for arg in args {
        if arg.eq_ignore_ascii_case(b"BLOCK") {
            return Class::Blocking;
        }
        if arg.eq_ignore_ascii_case(b"STREAMS") {
            break;
        }
    }
    Class::Ordinary
}

#[cfg(test)]
mod tests;
