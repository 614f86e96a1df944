//! TTL enforcement against real redis-servers: after each write through the proxy, `PTTL` read
//! directly from its Redis is within the rule's bounds, and the client's reply is the one a
//! second Redis in the same state gives for the same command sent directly.

mod common;

use common::{Proxy, Raw, Redis, call, calls, config_for, until_reply};
use nearcache::config::{Persist, Rule, Span};

const SEC: i64 = 1000;
const HOUR: i64 = 3600 * SEC;
const DAY: i64 = 24 * HOUR;

fn rule(pattern: &str, default_ttl: Option<&str>, max_ttl: Option<&str>, persist: Option<Persist>) -> Rule {
    let span = |s: Option<&str>| s.map(|s| s.parse::<Span>().unwrap());
    Rule { pattern: pattern.into(), default_ttl: span(default_ttl), max_ttl: span(max_ttl), persist, ..Rule::default() }
}

/// `s:*` 1h by default, 1d at most; `m:*` only a 10m maximum; `r:*` refuses PERSIST; `d:*` only
/// a 30s default. Other keys: no TTL rule.
async fn setup() -> (Redis, Redis, Proxy) {
    let behind = Redis::start();
    let direct = Redis::start();
    let mut config = config_for(&behind.addr());
    config.rule = vec![
        rule("s:*", Some("1h"), Some("1d"), None),
        rule("m:*", None, Some("10m"), None),
        rule("r:*", None, Some("1d"), Some(Persist::Refuse)),
        rule("d:*", Some("30s"), None, None),
    ];
    let proxy = Proxy::start(config).await;
    (behind, direct, proxy)
}

async fn pttl(direct: &mut Raw, key: &str) -> i64 {
    let reply = call(direct, &["PTTL", key]).await;
    reply.trim_start_matches(':').trim_end().parse().unwrap_or_else(|_| panic!("PTTL {key}: {reply:?}"))
}

/// A write under test: `setup` runs directly on both servers first; then `command` runs through
/// the proxy and directly; then `key`'s PTTL behind the proxy must lie in `lo..=hi`.
struct Case {
    setup: &'static [&'static [&'static str]],
    command: &'static [&'static str],
    key: &'static str,
    lo: i64,
    hi: i64,
}

const fn case(setup: &'static [&'static [&'static str]], command: &'static [&'static str], lo: i64, hi: i64) -> Case {
    Case { setup, command, key: "s:1", lo, hi }
}

/// Within the default (1h), or clamped to the maximum (1d, allowing the test's own run time).
const DEFAULT: (i64, i64) = (HOUR - 60 * SEC, HOUR);
const MAX: (i64, i64) = (DAY - 60 * SEC, DAY);

fn cases() -> Vec<Case> {
    let d = |setup, command| case(setup, command, DEFAULT.0, DEFAULT.1);
    let m = |setup, command| case(setup, command, MAX.0, MAX.1);
    let string: &[&[&str]] = &[&["SET", "s:1", "old"]];
    let list: &[&[&str]] = &[&["RPUSH", "s:1", "a"]];
    vec![
        // SET without an expiry gains PX; with one beyond max_ttl it is clamped.
        d(&[], &["SET", "s:1", "v"]),
        d(&[], &["SET", "s:1", "v", "NX", "GET"]),
        d(string, &["SET", "s:1", "v", "XX", "GET"]),
        d(string, &["SET", "s:1", "v", "KEEPTTL"]),
        case(&[], &["SET", "s:1", "v", "EX", "100"], 90 * SEC, 100 * SEC),
        m(&[], &["SET", "s:1", "v", "EX", "99999999"]),
        m(&[], &["SET", "s:1", "v", "PX", "99999999999", "GET"]),
        m(&[], &["SET", "s:1", "v", "EXAT", "99999999999"]),
        m(&[], &["SET", "s:1", "v", "PXAT", "99999999999999"]),
        // The other string writes gain PEXPIRE NX.
        d(&[], &["SETNX", "s:1", "v"]),
        d(&[], &["MSETNX", "s:1", "a", "s:2", "b"]),
        d(string, &["GETSET", "s:1", "v"]),
        d(string, &["SETRANGE", "s:1", "5", "xyz"]),
        d(string, &["APPEND", "s:1", "xyz"]),
        d(&[], &["INCR", "s:1"]),
        d(&[], &["DECRBY", "s:1", "5"]),
        d(&[], &["INCRBYFLOAT", "s:1", "1.5"]),
        d(&[], &["SETBIT", "s:1", "7", "1"]),
        d(&[], &["BITFIELD", "s:1", "INCRBY", "u8", "0", "5"]),
        // Hashes, lists, sets, sorted sets, streams, HyperLogLog, geo.
        d(&[], &["HSET", "s:1", "f", "v", "g", "w"]),
        d(&[], &["HSETNX", "s:1", "f", "v"]),
        d(&[], &["HMSET", "s:1", "f", "v"]),
        d(&[], &["HINCRBY", "s:1", "f", "3"]),
        d(&[], &["HINCRBYFLOAT", "s:1", "f", "0.5"]),
        d(&[], &["LPUSH", "s:1", "a", "b"]),
        d(&[], &["RPUSH", "s:1", "a"]),
        d(list, &["RPUSHX", "s:1", "b"]),
        d(list, &["LINSERT", "s:1", "BEFORE", "a", "z"]),
        d(list, &["LSET", "s:1", "0", "q"]),
        d(&[], &["SADD", "s:1", "a", "b"]),
        d(&[], &["ZADD", "s:1", "1", "a", "2", "b"]),
        d(&[], &["ZINCRBY", "s:1", "2.5", "a"]),
        d(&[], &["XADD", "s:1", "1-1", "f", "v"]),
        d(&[], &["PFADD", "s:1", "a", "b"]),
        d(&[], &["GEOADD", "s:1", "13.36", "38.11", "palermo"]),
        // Destinations.
        Case { key: "s:2", ..d(&[&["SET", "src", "v"]], &["COPY", "src", "s:2"]) },
        Case { key: "s:2", ..d(&[&["SET", "src", "v"]], &["RENAME", "src", "s:2"]) },
        Case { key: "s:2", ..d(&[&["RPUSH", "src", "a"]], &["LMOVE", "src", "s:2", "LEFT", "RIGHT"]) },
        Case { key: "s:2", ..d(&[&["SADD", "src", "a"]], &["SUNIONSTORE", "s:2", "src"]) },
        Case { key: "s:2", ..d(&[&["RPUSH", "src", "3", "1"]], &["SORT", "src", "STORE", "s:2"]) },
        // A key that has a TTL keeps it (RENAME carries the source's).
        Case {
            key: "s:2",
            ..case(&[&["SET", "src", "v", "EX", "100"]], &["RENAME", "src", "s:2"], 90 * SEC, 100 * SEC)
        },
        case(&[&["SET", "s:1", "v", "EX", "100"]], &["APPEND", "s:1", "x"], 90 * SEC, 100 * SEC),
        case(&[&["HSET", "s:1", "f", "v"], &["EXPIRE", "s:1", "100"]], &["HSET", "s:1", "g", "w"], 90 * SEC, 100 * SEC),
        // Expiries beyond max_ttl are clamped, others kept.
        m(string, &["EXPIRE", "s:1", "99999999"]),
        m(string, &["EXPIRE", "s:1", "99999999", "NX"]),
        m(string, &["PEXPIRE", "s:1", "99999999999"]),
        m(string, &["EXPIREAT", "s:1", "99999999999"]),
        m(string, &["PEXPIREAT", "s:1", "99999999999999"]),
        case(string, &["EXPIRE", "s:1", "100"], 90 * SEC, 100 * SEC),
        m(&[], &["SETEX", "s:1", "99999999", "v"]),
        m(&[], &["PSETEX", "s:1", "99999999999", "v"]),
        m(string, &["GETEX", "s:1", "EX", "99999999"]),
        // PERSIST and GETEX PERSIST keep the key finite (persist = "clamp").
        m(&[&["SET", "s:1", "v", "EX", "100"]], &["PERSIST", "s:1"]),
        m(&[&["SET", "s:1", "v", "EX", "100"]], &["GETEX", "s:1", "PERSIST"]),
        // Errors are Redis's own, and leave the TTL alone.
        case(&[], &["HSET", "s:1", "f"], -2, -2),
        case(&[], &["SET", "s:1", "v", "EX", "0"], -2, -2),
        case(&[], &["SET", "s:1", "v", "EX", "abc"], -2, -2),
        case(&[&["SET", "s:1", "v", "EX", "50"]], &["HSET", "s:1", "f", "v"], 40 * SEC, 50 * SEC),
        case(string, &["EXPIRE", "s:1", "-1"], -2, -2),
        // Only a maximum: a key written without a TTL gets the maximum.
        Case { key: "m:1", ..case(&[], &["SET", "m:1", "v"], 590 * SEC, 600 * SEC) },
        Case { key: "m:1", ..case(&[], &["HSET", "m:1", "f", "v"], 590 * SEC, 600 * SEC) },
        // Only a default: nothing is clamped.
        Case { key: "d:1", ..case(&[], &["SET", "d:1", "v", "EX", "99999999"], 99_999_000 * SEC, 99_999_999 * SEC) },
        Case { key: "d:1", ..case(&[], &["SADD", "d:1", "a"], 20 * SEC, 30 * SEC) },
    ]
}

async fn both(a: &mut Raw, b: &mut Raw, args: &[&str]) -> (String, String) {
    (call(a, args).await, call(b, args).await)
}

/// Runs every case in `resp` (2 or 3) on fresh connections.
async fn run_cases(behind: &Redis, direct: &Redis, proxy: &Proxy, resp: &str) {
    let mut through = proxy.raw().await;
    let mut straight = Raw::connect(direct.addr()).await;
    let mut behind_raw = Raw::connect(behind.addr()).await;
    let hello = both(&mut through, &mut straight, &["HELLO", resp]).await;
    assert!(!hello.0.starts_with('-') && !hello.1.starts_with('-'), "{hello:?}");
    for case in cases() {
        for raw in [&mut behind_raw, &mut straight] {
            call(raw, &["FLUSHALL"]).await;
            for cmd in case.setup {
                call(raw, cmd).await;
            }
        }
        let (got, want) = both(&mut through, &mut straight, case.command).await;
        assert_eq!(got, want, "RESP{resp} {:?}: reply through the proxy vs direct", case.command);
        let ttl = pttl(&mut behind_raw, case.key).await;
        assert!(
            (case.lo..=case.hi).contains(&ttl),
            "RESP{resp} {:?}: PTTL {} = {ttl}, expected {}..={}",
            case.command,
            case.key,
            case.lo,
            case.hi
        );
    }
}

#[tokio::test]
async fn every_write_family_gets_a_bounded_ttl_and_redis_own_reply() {
    let (behind, direct, proxy) = setup().await;
    run_cases(&behind, &direct, &proxy, "2").await;
    run_cases(&behind, &direct, &proxy, "3").await;
}

#[tokio::test]
async fn keys_under_no_rule_pass_untouched() {
    let (behind, _direct, proxy) = setup().await;
    let mut through = proxy.raw().await;
    let mut behind_raw = Raw::connect(behind.addr()).await;
    assert_eq!(call(&mut through, &["HSET", "x", "f", "v"]).await, ":1\r\n");
    assert_eq!(call(&mut through, &["SET", "y", "v", "EX", "99999999"]).await, "+OK\r\n");
    assert_eq!(call(&mut through, &["MSET", "z", "1", "w", "2"]).await, "+OK\r\n");
    assert_eq!(call(&mut through, &["PERSIST", "y"]).await, ":1\r\n");
    for key in ["x", "y", "z", "w"] {
        assert_eq!(pttl(&mut behind_raw, key).await, -1, "{key}");
    }
    // Nothing but the client's commands reached Redis.
    assert_eq!(calls(&mut behind_raw, "multi").await, 0);
    assert_eq!(calls(&mut behind_raw, "pexpire").await, 0);
    let set = call(&mut behind_raw, &["INFO", "commandstats"]).await;
    assert!(set.contains("cmdstat_set:calls=1,"), "{set}");
}

#[tokio::test]
async fn a_pipeline_of_enforced_writes_answers_in_order() {
    let (behind, direct, proxy) = setup().await;
    let mut through = proxy.raw().await;
    let mut straight = Raw::connect(direct.addr()).await;
    let mut commands: Vec<Vec<String>> = Vec::new();
    for i in 0..300 {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let (key, other) = (format!("s:{}", i % 7), format!("plain:{}", i % 5));
        commands.push(match i % 6 {
            0 => s(&["SET", &key, &i.to_string()]),
            1 => s(&["HINCRBY", &format!("{key}:h"), "f", "1"]),
            2 => s(&["GET", &key]),
            3 => s(&["MSET", &key, "m", &other, "o", "d:1", "x"]),
            4 => s(&["RPUSH", &format!("{key}:l"), "a"]),
            _ => s(&["INCR", &other]),
        });
    }
    let bytes: Vec<u8> = commands.iter().flat_map(|c| nearcache::framing::encode_command(c).to_vec()).collect();
    through.send(&bytes).await;
    straight.send(&bytes).await;
    for command in &commands {
        assert_eq!(through.reply().await, straight.reply().await, "{command:?}");
    }
    let mut behind_raw = Raw::connect(behind.addr()).await;
    for i in 0..7 {
        for key in [format!("s:{i}"), format!("s:{i}:h"), format!("s:{i}:l")] {
            let ttl = pttl(&mut behind_raw, &key).await;
            assert!((DEFAULT.0..=DEFAULT.1).contains(&ttl), "{key}: {ttl}");
        }
    }
    assert!((20 * SEC..=30 * SEC).contains(&pttl(&mut behind_raw, "d:1").await));
    assert_eq!(pttl(&mut behind_raw, "plain:0").await, -1);
}

#[tokio::test]
async fn transactions_keep_one_reply_per_queued_command() {
    let (behind, direct, proxy) = setup().await;
    let mut through = proxy.raw().await;
    let mut straight = Raw::connect(direct.addr()).await;
    let mut behind_raw = Raw::connect(behind.addr()).await;
    let transaction: &[&[&str]] = &[
        &["MULTI"],
        &["HSET", "s:1", "f", "v"],
        &["GET", "x"],
        &["SET", "s:2", "v"],
        &["MSET", "s:3", "a", "x", "b", "s:4", "c"],
        &["INCR", "plain"],
        &["LPUSH", "s:5", "a"],
        &["EXPIRE", "s:6", "99999999"],
        &["EXEC"],
    ];
    for cmd in transaction {
        let (got, want) = both(&mut through, &mut straight, cmd).await;
        assert_eq!(got, want, "{cmd:?}");
    }
    for key in ["s:1", "s:2", "s:3", "s:4", "s:5"] {
        let ttl = pttl(&mut behind_raw, key).await;
        assert!((DEFAULT.0..=DEFAULT.1).contains(&ttl), "{key}: {ttl}");
    }
    assert_eq!(pttl(&mut behind_raw, "x").await, -1);

    // A queueing error aborts the transaction, as in Redis.
    for cmd in [&["MULTI"][..], &["HSET", "s:7", "f", "v"], &["HSET", "s:7", "f"], &["EXEC"]] {
        let (got, want) = both(&mut through, &mut straight, cmd).await;
        assert_eq!(got, want, "{cmd:?}");
    }
    assert_eq!(pttl(&mut behind_raw, "s:7").await, -2);

    // A failed WATCH answers a null EXEC; a write on the pinned connection before MULTI is
    // enforced too.
    for cmd in [&["WATCH", "s:8"][..], &["HSET", "s:8", "f", "v"], &["MULTI"], &["SADD", "s:9", "a"], &["EXEC"]] {
        let (got, want) = both(&mut through, &mut straight, cmd).await;
        assert_eq!(got, want, "{cmd:?}");
    }
    assert!((DEFAULT.0..=DEFAULT.1).contains(&pttl(&mut behind_raw, "s:8").await));
    assert_eq!(pttl(&mut behind_raw, "s:9").await, -2, "the transaction did not run");
}

#[tokio::test]
async fn persist_under_a_refusing_rule_is_refused_with_a_clear_error() {
    let (behind, _direct, proxy) = setup().await;
    let mut through = proxy.raw().await;
    let mut behind_raw = Raw::connect(behind.addr()).await;
    call(&mut behind_raw, &["SET", "r:1", "v", "EX", "100"]).await;
    for (cmd, what) in [
        (&["PERSIST", "r:1"][..], "PERSIST"),
        (&["GETEX", "r:1", "PERSIST"], "GETEX PERSIST"),
        (&["SET", "r:1", "w", "KEEPTTL"], "SET KEEPTTL"),
    ] {
        let reply = call(&mut through, cmd).await;
        assert_eq!(
            reply,
            format!(
                "-ERR {what} refused: key 'r:1' must keep a TTL of at most 1d (its rule has max_ttl, persist = \"refuse\")\r\n"
            )
        );
    }
    assert!((90 * SEC..=100 * SEC).contains(&pttl(&mut behind_raw, "r:1").await));
    assert_eq!(call(&mut behind_raw, &["GET", "r:1"]).await, "$1\r\nv\r\n");
    // In a transaction: refused at once, and EXEC aborts it as Redis does after a queueing error.
    assert_eq!(call(&mut through, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut through, &["SET", "x", "1"]).await, "+QUEUED\r\n");
    assert!(call(&mut through, &["PERSIST", "r:1"]).await.starts_with("-ERR PERSIST refused"));
    assert_eq!(call(&mut through, &["EXEC"]).await, "-EXECABORT Transaction discarded because of previous errors.\r\n");
    assert_eq!(call(&mut behind_raw, &["EXISTS", "x"]).await, ":0\r\n");
    // The session goes on.
    assert_eq!(call(&mut through, &["SET", "x", "1"]).await, "+OK\r\n");
}

#[tokio::test]
async fn a_blocking_move_into_a_ruled_key_gets_its_ttl() {
    let (behind, direct, proxy) = setup().await;
    let mut through = proxy.raw().await;
    let mut straight = Raw::connect(direct.addr()).await;
    let mut behind_raw = Raw::connect(behind.addr()).await;
    // The move blocks until another client pushes.
    let args: &[&[u8]] = &[b"BLMOVE", b"src", b"s:1", b"LEFT", b"RIGHT", b"5"];
    through.cmd(args).await;
    straight.cmd(args).await;
    let mut other_direct = Raw::connect(direct.addr()).await;
    for raw in [&mut behind_raw, &mut other_direct] {
        until_reply(raw, &["INFO", "clients"], "blocked", |info| info.contains("blocked_clients:1")).await;
        call(raw, &["RPUSH", "src", "a"]).await;
    }
    assert_eq!(through.reply().await, straight.reply().await);
    let ttl = pttl(&mut behind_raw, "s:1").await;
    assert!((DEFAULT.0..=DEFAULT.1).contains(&ttl), "{ttl}");
    // The session is back on the shared pool and carries on.
    assert_eq!(call(&mut through, &["LLEN", "s:1"]).await, ":1\r\n");
}

#[tokio::test]
async fn cached_reads_see_enforced_writes() {
    let (_behind, _direct, proxy) = setup().await;
    let mut through = proxy.raw().await;
    for i in 0..50 {
        let value = i.to_string();
        assert_eq!(call(&mut through, &["SET", "s:1", &value]).await, "+OK\r\n");
        assert_eq!(call(&mut through, &["GET", "s:1"]).await, format!("${}\r\n{value}\r\n", value.len()));
        assert_eq!(call(&mut through, &["HSET", "s:h", "f", &value]).await, if i == 0 { ":1\r\n" } else { ":0\r\n" });
        assert_eq!(call(&mut through, &["HGET", "s:h", "f"]).await, format!("${}\r\n{value}\r\n", value.len()));
    }
}
