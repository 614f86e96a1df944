//! TTL enforcement on writes: the `default_ttl` and `max_ttl` of the rule a written key falls
//! under ("Policy rules" in DESIGN.md), applied as writes pass through.
//!
//! - An expiry beyond `max_ttl` (SET/GETEX EX|PX|EXAT|PXAT, SETEX, PSETEX, EXPIRE, PEXPIRE,
//!   EXPIREAT, PEXPIREAT, RESTORE) is rewritten to `PX <max_ttl>`.
//! - SET without an expiry gains `PX <ttl>`.
//! - Other writes that create or change a key (SETNX, MSET, HSET, LPUSH, SADD, ZADD, INCR,
//!   APPEND, RENAME's and COPY's destinations, ...) are followed by `PEXPIRE key <ttl> NX`: a key
//!   that already has a TTL keeps it.
//! - PERSIST, GETEX PERSIST and SET KEEPTTL on a key under a `max_ttl` leave it with a finite
//!   TTL (`persist = "clamp"`) or are refused (`persist = "refuse"`).
//!
//! `<ttl>` is the rule's `default_ttl`, else its `max_ttl` ([`TtlRule::floor`]). Values Redis
//! would reject (not an integer, out of range) are left as they are, for Redis to reject.
//! Keys under no TTL rule pass untouched, byte for byte.
//!
//! [`plan`] says what to send instead of the client's command; the caller makes it atomic
//! ([`Plan::in_transaction`] on a shared connection) and [`shape`] turns the replies back into
//! the one the client's own command gets from Redis.

pub mod shape;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::command::{Created, Ttl};
use crate::config::Persist;
use crate::error::ProxyError;
use crate::framing::{CommandView, encode_command, parse_int};
use crate::metrics::inc;
use crate::policy::{Policy, TtlRule};
pub use shape::{Shape, Shaped, Shaper};

/// How many writes enforcement changed (exported as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Writes that gained an expiry (`default_ttl`).
    pub enforced: AtomicU64,
    /// Writes whose expiry was lowered to `max_ttl`, PERSIST and KEEPTTL clamped included.
    pub clamped: AtomicU64,
    /// PERSIST, GETEX PERSIST and SET KEEPTTL refused (`persist = "refuse"`).
    pub refused: AtomicU64,
}

/// What to send instead of a client's write.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// The command with its expiry added or clamped: Redis's reply is the client's.
    Rewritten(Bytes),
    /// The command, then the proxy's own commands (`PEXPIRE key ms NX`, ...): only the
    /// command's reply is the client's.
    Followed { command: Bytes, extra: Vec<Bytes> },
}

/// A plan, or the error a refused write gets instead of being sent.
type Planned = Result<Plan, ProxyError>;

/// Bytes to send in place of a client's command, and how its reply is recovered from theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// `None`: the command as the client sent it.
    pub bytes: Option<Bytes>,
    pub shape: Option<Shape>,
}

impl Plan {
    /// For a shared connection: `MULTI`, the command, the proxy's commands, `EXEC`, sent
    /// together so no other command runs between them.
    pub fn in_transaction(self) -> Rewrite {
        match self {
            Plan::Rewritten(bytes) => Rewrite { bytes: Some(bytes), shape: None },
            Plan::Followed { command, extra } => {
                let mut out = BytesMut::from(&b"*1\r\n$5\r\nMULTI\r\n"[..]);
                out.extend_from_slice(&command);
                extra.iter().for_each(|c| out.extend_from_slice(c));
                out.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
                Rewrite { bytes: Some(out.freeze()), shape: Some(Shape::Transaction { extra: extra.len() as u32 }) }
            }
        }
    }

    /// For the session's pinned connection: the proxy's commands right after the client's
    /// (queued with it when the client is in MULTI).
    pub fn trailing(self) -> Rewrite {
        match self {
            Plan::Followed { command, extra } => {
                let mut out = BytesMut::from(&command[..]);
                extra.iter().for_each(|c| out.extend_from_slice(c));
                Rewrite { bytes: Some(out.freeze()), shape: Some(Shape::Trailing { hidden: extra.len() as u32 }) }
            }
            plan @ Plan::Rewritten(_) => plan.in_transaction(),
        }
    }

    /// Commands of the proxy's that the upstream will queue or run besides the client's.
    pub fn hidden(&self) -> usize {
        match self {
            Plan::Followed { extra, .. } => extra.len(),
            _ => 0,
        }
    }
}

/// Milliseconds since the Unix epoch, for EXAT/PXAT/EXPIREAT/PEXPIREAT.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What enforcement does to `cmd` (a write): `Ok(None)` when it passes as it is, `Err` when it
/// is refused (answered with that error, not sent). `role`: what the command table says the
/// command does to expiries; `now_ms`: the wall clock, for absolute expiries.
pub fn plan(
    cmd: &CommandView<'_>,
    role: Ttl,
    policy: &Policy,
    counters: &Counters,
    now_ms: i64,
) -> Result<Option<Plan>, ProxyError> {
    let Some((planned, counter)) = decide(cmd, role, policy, now_ms) else { return Ok(None) };
    inc(match (&planned, counter) {
        (Err(_), _) => &counters.refused,
        (_, Counter::Enforced) => &counters.enforced,
        (_, Counter::Clamped) => &counters.clamped,
    });
    planned.map(Some)
}

fn decide(cmd: &CommandView<'_>, role: Ttl, policy: &Policy, now_ms: i64) -> Option<(Planned, Counter)> {
    if role == Ttl::None {
        return None;
    }
    let args: Vec<&[u8]> = cmd.args().collect();
    let key = *args.get(1)?;
    let rule = || policy.for_key(key).ttl;
    let (plan, counter) = match role {
        Ttl::None => return None,
        Ttl::Set => set(cmd, &args, rule(), now_ms)?,
        Ttl::Getex => getex(&args, rule(), now_ms)?,
        Ttl::Setex | Ttl::Psetex => {
            let unit = if role == Ttl::Setex { Unit::Secs } else { Unit::Millis };
            let max = clamp(rule().max, args.get(2)?, unit, now_ms)?;
            rewrite(&[b"PSETEX", key, max.as_bytes(), args.get(3)?])
        }
        Ttl::Expire | Ttl::Pexpire | Ttl::Expireat | Ttl::Pexpireat => {
            let unit = match role {
                Ttl::Expire => Unit::Secs,
                Ttl::Pexpire => Unit::Millis,
                Ttl::Expireat => Unit::UnixSecs,
                _ => Unit::UnixMillis,
            };
            let max = clamp(rule().max, args.get(2)?, unit, now_ms)?;
            let mut out: Vec<&[u8]> = vec![b"PEXPIRE", key, max.as_bytes()];
            out.extend_from_slice(&args[3..]);
            rewrite(&out)
        }
        Ttl::Persist => persist(cmd, key, rule())?,
        Ttl::Restore => restore(cmd, &args, rule(), now_ms)?,
        Ttl::Creates(created) => follow_with_expiry(cmd, &args, created, policy)?,
    };
    Some((plan, counter))
}

enum Counter {
    Enforced,
    Clamped,
}

#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Millis,
    UnixSecs,
    UnixMillis,
}

/// `max` in milliseconds, as text, when `value` (in `unit`) is an expiry Redis accepts that
/// lies beyond it.
fn clamp(max: Option<Duration>, value: &[u8], unit: Unit, now_ms: i64) -> Option<String> {
    let max = max?.as_millis() as i64;
    // Only canonical integers: anything else is Redis's to reject.
    let v = parse_int(value).filter(|v| v.to_string().as_bytes() == value)?;
    let from_now = match unit {
        Unit::Secs => v.checked_mul(1000).filter(|ms| ms.checked_add(now_ms).is_some())?,
        Unit::Millis => v.checked_add(now_ms).map(|_| v)?,
        Unit::UnixSecs => v.checked_mul(1000)? - now_ms,
        Unit::UnixMillis => v - now_ms,
    };
    (from_now > max).then(|| max.to_string())
}

fn ms(ttl: Duration) -> String {
    ttl.as_millis().to_string()
}

fn rewrite(args: &[&[u8]]) -> (Planned, Counter) {
    (Ok(Plan::Rewritten(encode_command(args))), Counter::Clamped)
}

fn upper_eq(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

/// The expiry option of SET or GETEX among `options`: (index, unit), or `Err` when the
/// options are not valid (then Redis answers the syntax error).
fn expiry_option(options: &[&[u8]], flags: &[&str]) -> Result<Option<(usize, Unit)>, ()> {
    let mut found = None;
    let mut i = 0;
    while i < options.len() {
        let unit = match options[i].to_ascii_uppercase().as_slice() {
            b"EX" => Unit::Secs,
            b"PX" => Unit::Millis,
            b"EXAT" => Unit::UnixSecs,
            b"PXAT" => Unit::UnixMillis,
            _ if flags.iter().any(|f| upper_eq(options[i], f)) => {
                i += 1;
                continue;
            }
            _ => return Err(()),
        };
        if found.is_some() || i + 1 >= options.len() {
            return Err(());
        }
        found = Some((i, unit));
        i += 2;
    }
    Ok(found)
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`
fn set(cmd: &CommandView<'_>, args: &[&[u8]], rule: TtlRule, now_ms: i64) -> Option<(Planned, Counter)> {
    let options = args.get(3..)?;
    let floor = rule.floor()?;
    let keepttl = options.iter().any(|o| upper_eq(o, "KEEPTTL"));
    let expiry = expiry_option(options, &["NX", "XX", "GET", "KEEPTTL"]).ok()?;
    match (expiry, keepttl) {
        (Some(_), true) => None,
        (Some((i, unit)), false) => {
            let max = clamp(rule.max, options[i + 1], unit, now_ms)?;
            let mut out = args.to_vec();
            out[3 + i] = b"PX";
            out[4 + i] = max.as_bytes();
            Some(rewrite(&out))
        }
        // Like any other write, the key gains the rule's TTL if it has none.
        (None, true) => match (rule.max, rule.persist) {
            (Some(max), Persist::Refuse) => Some((Err(refusal("SET KEEPTTL", args[1], max)), Counter::Clamped)),
            (max, _) => {
                let counter = if max.is_some() { Counter::Clamped } else { Counter::Enforced };
                Some((Ok(followed(cmd, vec![pexpire_nx(args[1], floor)])), counter))
            }
        },
        (None, false) => {
            let ttl = ms(floor);
            let mut out = args.to_vec();
            out.extend_from_slice(&[b"PX", ttl.as_bytes()]);
            Some((Ok(Plan::Rewritten(encode_command(&out))), Counter::Enforced))
        }
    }
}

/// `PERSIST key`: under a `max_ttl`, followed by `PEXPIRE key <max_ttl>`, or refused.
fn persist(cmd: &CommandView<'_>, key: &[u8], rule: TtlRule) -> Option<(Planned, Counter)> {
    let max = rule.max?;
    let plan = match rule.persist {
        Persist::Refuse => Err(refusal("PERSIST", key, max)),
        Persist::Clamp => Ok(followed(cmd, vec![encode_command(&[&b"PEXPIRE"[..], key, ms(max).as_bytes()])])),
    };
    Some((plan, Counter::Clamped))
}

fn followed(cmd: &CommandView<'_>, extra: Vec<Bytes>) -> Plan {
    Plan::Followed { command: Bytes::copy_from_slice(cmd.bytes()), extra }
}

fn refusal(what: &'static str, key: &[u8], max: Duration) -> ProxyError {
    ProxyError::TtlRefused {
        command: what,
        key: String::from_utf8_lossy(key).into_owned(),
        max_ttl: crate::config::Span(max).to_string(),
    }
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`
fn getex(args: &[&[u8]], rule: TtlRule, now_ms: i64) -> Option<(Planned, Counter)> {
    let options = args.get(2..)?;
    let max_ttl = rule.max?;
    if let [persist] = options
        && upper_eq(persist, "PERSIST")
    {
        return Some(match rule.persist {
            Persist::Refuse => (Err(refusal("GETEX PERSIST", args[1], max_ttl)), Counter::Clamped),
            Persist::Clamp => rewrite(&[b"GETEX", args[1], b"PX", ms(max_ttl).as_bytes()]),
        });
    }
    let (i, unit) = expiry_option(options, &[]).ok()??;
    let max = clamp(rule.max, options[i + 1], unit, now_ms)?;
    let mut out = args.to_vec();
    out[2 + i] = b"PX";
    out[3 + i] = max.as_bytes();
    Some(rewrite(&out))
}

/// `RESTORE key ttl value [REPLACE] [ABSTTL] ...`: ttl 0 means no expiry.
fn restore(cmd: &CommandView<'_>, args: &[&[u8]], rule: TtlRule, now_ms: i64) -> Option<(Planned, Counter)> {
    let ttl = args.get(2)?;
    if *ttl == b"0" {
        return Some((Ok(followed(cmd, vec![pexpire_nx(args[1], rule.floor()?)])), Counter::Enforced));
    }
    let absolute = args.iter().skip(4).any(|a| upper_eq(a, "ABSTTL"));
    let unit = if absolute { Unit::UnixMillis } else { Unit::Millis };
    let max = clamp(rule.max, ttl, unit, now_ms)?;
    // ABSTTL takes a time, not a duration: the maximum from now.
    let max = if absolute { (now_ms + rule.max?.as_millis() as i64).to_string() } else { max };
    let mut out = args.to_vec();
    out[2] = max.as_bytes();
    Some(rewrite(&out))
}

fn pexpire_nx(key: &[u8], ttl: Duration) -> Bytes {
    encode_command(&[&b"PEXPIRE"[..], key, ms(ttl).as_bytes(), b"NX"])
}

/// Writes that may create a key or leave it without an expiry: each such key under a rule
/// gains `PEXPIRE key ms NX` after the command.
fn follow_with_expiry(
    cmd: &CommandView<'_>,
    args: &[&[u8]],
    created: Created,
    policy: &Policy,
) -> Option<(Planned, Counter)> {
    let mut extra: Vec<Bytes> = Vec::new();
    let mut keys: Vec<&[u8]> = Vec::new();
    for key in created_keys(args, created) {
        if keys.contains(&key) {
            continue;
        }
        keys.push(key);
        if let Some(ttl) = policy.for_key(key).ttl.floor() {
            extra.push(pexpire_nx(key, ttl));
        }
    }
    if extra.is_empty() {
        return None;
    }
    Some((Ok(followed(cmd, extra)), Counter::Enforced))
}

/// The keys a write may create or leave without an expiry (the table's [`Created`]). Commands
/// with no such column create no key (DEL, pops, ...), set the expiry themselves (handled
/// above), or write keys the proxy cannot name (EVAL, FCALL: not enforced) or in another db
/// (MOVE, COPY ... DB).
fn created_keys<'a>(args: &[&'a [u8]], created: Created) -> Vec<&'a [u8]> {
    let at = |i: usize| args.get(i).copied().into_iter().collect();
    match created {
        Created::First => at(1),
        Created::Second => at(2),
        Created::CopyDest if !args.iter().skip(3).any(|a| upper_eq(a, "DB")) => at(2),
        Created::CopyDest => Vec::new(),
        Created::Pairs => args.iter().skip(1).step_by(2).copied().collect(),
        Created::SortStore => sort_store(args).into_iter().collect(),
    }
}

/// `SORT key [BY p] [LIMIT o c] [GET p ...] [ASC|DESC] [ALPHA] [STORE dest]`: dest.
fn sort_store<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let mut i = 2;
    let mut store = None;
    while i < args.len() {
        let skip = match args[i].to_ascii_uppercase().as_slice() {
            b"BY" | b"GET" => 1,
            b"LIMIT" => 2,
            b"STORE" => {
                store = Some(*args.get(i + 1)?);
                1
            }
            _ => 0,
        };
        i += 1 + skip;
    }
    store
}

#[cfg(test)]
mod tests;
