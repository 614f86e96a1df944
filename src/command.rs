//! What a command is, as far as the proxy is concerned: forwarded as is, answered by the proxy,
//! or in need of a pinned upstream connection because it leaves state on the connection.

use crate::framing::CommandView;

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
    /// MONITOR, CLIENT REPLY OFF|SKIP, CLIENT TRACKING ON, replication): pinned for good.
    Stream,
    /// Sets per-connection flags with no end command (CLIENT NO-EVICT, READONLY): pinned for good.
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

/// Longest command or subcommand name we need to recognise.
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

pub fn classify(cmd: &CommandView<'_>) -> Class {
    let mut args = cmd.args();
    let Some(name) = args.next() else { return Class::Ordinary };
    let mut buf = [0u8; NAME_MAX];
    match upper(name, &mut buf) {
        b"GET" | b"SET" => Class::Ordinary,
        b"HELLO" => Class::Hello,
        b"AUTH" => Class::Auth,
        b"SELECT" => Class::Select,
        b"QUIT" => Class::Quit,
        b"RESET" => Class::Reset,
        b"CLIENT" => classify_client(args.next(), args.next()),
        b"PROXY" => Class::Proxy,
        b"MULTI" => Class::Multi,
        b"EXEC" => Class::Exec,
        b"DISCARD" => Class::Discard,
        b"WATCH" => Class::Watch,
        b"UNWATCH" => Class::Unwatch,
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BZMPOP"
        | b"WAIT" | b"WAITAOF" => Class::Blocking,
        b"XREAD" | b"XREADGROUP" => classify_xread(args),
        // A script may run long, and while it does Redis answers other clients -BUSY: on a
        // shared connection they would instead wait behind it (and SCRIPT KILL's caller too).
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => Class::Blocking,
        // REPLCONF: `REPLCONF ACK` gets no reply at all; replication commands stream.
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"MONITOR" | b"SYNC" | b"PSYNC" | b"REPLCONF" => Class::Stream,
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" => Class::Unsubscribe,
        b"READONLY" | b"READWRITE" => Class::Sticky,
        b"SHUTDOWN" => Class::Interrupt,
        b"SCRIPT" | b"FUNCTION" if args.next().is_some_and(|sub| sub.eq_ignore_ascii_case(b"KILL")) => Class::Interrupt,
        _ => Class::Ordinary,
    }
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
        b"SETINFO" => Class::ClientSetInfo,
        b"REPLY" if on_off(arg, b"OFF") || on_off(arg, b"SKIP") => Class::Stream,
        b"TRACKING" if on_off(arg, b"ON") => Class::Stream,
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

/// How a command relates to the local tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A deterministic read of the one key at argument 1: its reply may be cached.
    CacheableRead,
    /// MGET: one GET per key, answered per key from the tier where possible.
    MultiGet,
    /// Changes no key (reads, server commands): nothing to invalidate.
    Nothing,
    /// May change keys: which arguments they are.
    Writes(KeySpec),
    /// May change every key of a db (FLUSHDB, FLUSHALL, SWAPDB): clear the tier.
    Flush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// Argument 1.
    First,
    /// Arguments 1, 3, 5, ... (MSET key value key value).
    Pairs,
    /// Every argument: exact for DEL/UNLINK, and the safe answer for commands whose key
    /// positions are not listed here (invalidating a non-key costs a lookup, nothing more).
    All,
}

pub fn effect(cmd: &CommandView<'_>) -> Effect {
    let Some(name) = cmd.arg(0) else { return Effect::Nothing };
    let mut buf = [0u8; NAME_MAX];
    let single_key = cmd.argc() >= 2;
    match upper(name, &mut buf) {
        b"GET" | b"STRLEN" | b"GETRANGE" | b"SUBSTR" | b"GETBIT" | b"BITCOUNT" | b"BITPOS" | b"HGET" | b"HMGET"
        | b"HGETALL" | b"HEXISTS" | b"HLEN" | b"HKEYS" | b"HVALS" | b"HSTRLEN" | b"LRANGE" | b"LLEN" | b"LINDEX"
        | b"LPOS" | b"SMEMBERS" | b"SISMEMBER" | b"SMISMEMBER" | b"SCARD" | b"ZRANGE" | b"ZRANGEBYSCORE"
        | b"ZREVRANGE" | b"ZREVRANGEBYSCORE" | b"ZRANGEBYLEX" | b"ZREVRANGEBYLEX" | b"ZSCORE" | b"ZMSCORE"
        | b"ZCARD" | b"ZCOUNT" | b"ZLEXCOUNT" | b"ZRANK" | b"ZREVRANK" | b"XRANGE" | b"XREVRANGE" | b"XLEN"
        | b"GEOPOS" | b"GEODIST" | b"GEOHASH" | b"TYPE"
            if single_key =>
        {
            Effect::CacheableRead
        }
        // EXISTS counts its keys: only the one-key form is a per-key read.
        b"EXISTS" if cmd.argc() == 2 => Effect::CacheableRead,
        b"MGET" if single_key => Effect::MultiGet,
        b"EXISTS"
        | b"MGET"
        | b"PING"
        | b"ECHO"
        | b"INFO"
        | b"TIME"
        | b"DBSIZE"
        | b"TTL"
        | b"PTTL"
        | b"EXPIRETIME"
        | b"PEXPIRETIME"
        | b"SCAN"
        | b"SSCAN"
        | b"HSCAN"
        | b"ZSCAN"
        | b"KEYS"
        | b"RANDOMKEY"
        | b"CONFIG"
        | b"COMMAND"
        | b"CLIENT"
        | b"SLOWLOG"
        | b"LATENCY"
        | b"MEMORY"
        | b"OBJECT"
        | b"PUBLISH"
        | b"SPUBLISH"
        | b"PUBSUB"
        | b"SRANDMEMBER"
        | b"HRANDFIELD"
        | b"ZRANDMEMBER"
        | b"ROLE"
        | b"LASTSAVE"
        | b"DUMP"
        | b"SINTER"
        | b"SUNION"
        | b"SDIFF"
        | b"SINTERCARD"
        | b"ZUNION"
        | b"ZINTER"
        | b"ZDIFF"
        | b"ZINTERCARD"
        | b"LCS"
        | b"XINFO"
        | b"XPENDING"
        | b"GEOSEARCH"
        | b"GEORADIUS_RO"
        | b"GEORADIUSBYMEMBER_RO"
        | b"SORT_RO"
        | b"BITFIELD_RO"
        | b"EVAL_RO"
        | b"EVALSHA_RO"
        | b"FCALL_RO"
        | b"TOUCH"
        | b"LOLWUT"
        | b"HELLO"
        | b"AUTH"
        | b"SELECT"
        | b"QUIT"
        | b"RESET"
        | b"WATCH"
        | b"UNWATCH"
        | b"MULTI"
        | b"DISCARD"
        | b"EXEC" => Effect::Nothing,
        b"FLUSHDB" | b"FLUSHALL" | b"SWAPDB" => Effect::Flush,
        b"MSET" | b"MSETNX" => Effect::Writes(KeySpec::Pairs),
        b"SET" | b"SETNX" | b"SETEX" | b"PSETEX" | b"GETSET" | b"GETDEL" | b"GETEX" | b"APPEND" | b"SETRANGE"
        | b"SETBIT" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" | b"INCRBYFLOAT" | b"HSET" | b"HSETNX" | b"HMSET"
        | b"HDEL" | b"HINCRBY" | b"HINCRBYFLOAT" | b"LPUSH" | b"RPUSH" | b"LPUSHX" | b"RPUSHX" | b"LPOP" | b"RPOP"
        | b"LSET" | b"LREM" | b"LTRIM" | b"LINSERT" | b"SADD" | b"SREM" | b"SPOP" | b"ZADD" | b"ZREM" | b"ZINCRBY"
        | b"ZPOPMIN" | b"ZPOPMAX" | b"ZREMRANGEBYSCORE" | b"ZREMRANGEBYRANK" | b"ZREMRANGEBYLEX" | b"EXPIRE"
        | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" | b"PERSIST" | b"PFADD" | b"XADD" | b"XDEL" | b"XTRIM" | b"XACK"
        | b"GEOADD" | b"BITFIELD" | b"RESTORE" | b"MOVE"
            if single_key =>
        {
            Effect::Writes(KeySpec::First)
        }
        _ => Effect::Writes(KeySpec::All),
    }
}

/// The arguments a write may change, per its [`KeySpec`].
pub fn written_keys<'a>(cmd: &CommandView<'a>, spec: KeySpec) -> impl Iterator<Item = &'a [u8]> {
    let step = if spec == KeySpec::Pairs { 2 } else { 1 };
    let take = if spec == KeySpec::First { 1 } else { usize::MAX };
    cmd.args().skip(1).step_by(step).take(take)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode_command;

    fn class_of(args: &[&str]) -> Class {
        let bytes = encode_command(args);
        classify(&CommandView::new(&bytes, args.len()))
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(class_of(&["get", "k"]), Class::Ordinary);
        assert_eq!(class_of(&["mUlTi"]), Class::Multi);
        assert_eq!(class_of(&["blpop", "q", "0"]), Class::Blocking);
    }

    #[test]
    fn commands_without_one_reply_each_never_go_shared() {
        for cmd in [&["UNSUBSCRIBE"][..], &["punsubscribe", "a", "b"], &["SUNSUBSCRIBE", "x"]] {
            assert_eq!(class_of(cmd), Class::Unsubscribe, "{cmd:?}");
        }
        assert_eq!(class_of(&["REPLCONF", "ACK", "0"]), Class::Stream);
        assert_eq!(class_of(&["script", "kill"]), Class::Interrupt);
        assert_eq!(class_of(&["FUNCTION", "KILL"]), Class::Interrupt);
        assert_eq!(class_of(&["FUNCTION", "LIST"]), Class::Ordinary);
        assert_eq!(class_of(&["SHUTDOWN", "NOSAVE"]), Class::Interrupt);
        assert_eq!(class_of(&["EVAL", "return 1", "0"]), Class::Blocking);
        assert_eq!(class_of(&["fcall_ro", "f", "0"]), Class::Blocking);
    }

    #[test]
    fn client_subcommands() {
        assert_eq!(class_of(&["CLIENT", "setname", "x"]), Class::ClientSetName);
        assert_eq!(class_of(&["CLIENT", "REPLY", "off"]), Class::Stream);
        assert_eq!(class_of(&["CLIENT", "REPLY", "ON"]), Class::Ordinary);
        assert_eq!(class_of(&["CLIENT", "TRACKING", "on", "BCAST"]), Class::Stream);
        assert_eq!(class_of(&["CLIENT", "LIST"]), Class::Ordinary);
        assert_eq!(class_of(&["CLIENT"]), Class::Ordinary);
        assert_eq!(class_of(&["CLIENT", "NO-EVICT", "on"]), Class::Sticky);
    }

    #[test]
    fn xread_blocks_only_with_block() {
        assert_eq!(class_of(&["XREAD", "COUNT", "1", "STREAMS", "s", "0"]), Class::Ordinary);
        assert_eq!(class_of(&["XREAD", "BLOCK", "100", "STREAMS", "s", "$"]), Class::Blocking);
        // A stream named "block" is not an option.
        assert_eq!(class_of(&["XREAD", "STREAMS", "block", "0"]), Class::Ordinary);
        assert_eq!(class_of(&["XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "s", ">"]), Class::Blocking);
    }

    fn effect_of(args: &[&str]) -> (Effect, Vec<String>) {
        let bytes = encode_command(args);
        let view = CommandView::new(&bytes, args.len());
        let effect = effect(&view);
        let keys = match effect {
            Effect::Writes(spec) => {
                written_keys(&view, spec).map(|k| String::from_utf8_lossy(k).into_owned()).collect()
            }
            _ => vec![],
        };
        (effect, keys)
    }

    #[test]
    fn tier_effects() {
        assert_eq!(effect_of(&["get", "k"]).0, Effect::CacheableRead);
        assert_eq!(effect_of(&["GET"]).0, Effect::Writes(KeySpec::All), "malformed: Redis refuses it");
        assert_eq!(effect_of(&["EXISTS", "k"]).0, Effect::CacheableRead);
        assert_eq!(effect_of(&["EXISTS", "a", "b"]).0, Effect::Nothing);
        assert_eq!(effect_of(&["TTL", "k"]).0, Effect::Nothing);
        assert_eq!(effect_of(&["MGET", "a", "b"]).0, Effect::MultiGet);
        assert_eq!(effect_of(&["FLUSHALL", "ASYNC"]).0, Effect::Flush);
        assert_eq!(effect_of(&["SET", "k", "v", "EX", "5"]), (Effect::Writes(KeySpec::First), vec!["k".into()]));
        assert_eq!(effect_of(&["MSET", "a", "1", "b", "2"]).1, vec!["a", "b"]);
        assert_eq!(effect_of(&["DEL", "a", "b"]).1, vec!["a", "b"]);
        // Unknown key positions: every argument, which includes the keys.
        let (effect, keys) = effect_of(&["EVAL", "return 1", "2", "k1", "k2", "arg"]);
        assert_eq!(effect, Effect::Writes(KeySpec::All));
        assert!(keys.contains(&"k1".to_string()) && keys.contains(&"k2".to_string()));
        assert_eq!(effect_of(&["RENAME", "a", "b"]).1, vec!["a", "b"]);
    }

    #[test]
    fn long_names_are_ordinary() {
        assert_eq!(class_of(&["A-VERY-LONG-COMMAND-NAME-INDEED"]), Class::Ordinary);
    }
}
