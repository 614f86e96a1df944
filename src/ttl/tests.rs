use std::path::Path;

use super::*;
use crate::config::Config;
use std::sync::atomic::Ordering;

const NOW: i64 = 1_800_000_000_000;

fn policy() -> Policy {
    let text = r#"
        [[rule]]
        pattern = "s:*"
        default_ttl = "1h"
        max_ttl = "1d"
        [[rule]]
        pattern = "r:*"
        max_ttl = "1d"
        persist = "refuse"
        [[rule]]
        pattern = "d:*"
        default_ttl = "10s"
    "#;
    Policy::new(&Config::parse(text, Path::new("t.toml")).unwrap())
}

/// The table's TTL column for the command.
fn role(args: &[&str]) -> Ttl {
    crate::command::lookup(args[0].as_bytes()).spec.ttl
}

fn planned(args: &[&str]) -> Result<Option<Plan>, ProxyError> {
    let bytes = encode_command(args);
    plan(&CommandView::new(&bytes, args.len()), role(args), &policy(), &Counters::default(), NOW)
}

fn plan_of(args: &[&str]) -> Option<Plan> {
    planned(args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"))
}

fn rewritten(args: &[&str]) -> Option<Plan> {
    Some(Plan::Rewritten(encode_command(args)))
}

fn followed(args: &[&str], extra: &[&[&str]]) -> Option<Plan> {
    let extra = extra.iter().map(|c| encode_command(c)).collect();
    Some(Plan::Followed { command: encode_command(args), extra })
}

#[test]
fn keys_under_no_ttl_rule_pass() {
    for cmd in [&["SET", "x", "v"][..], &["HSET", "x", "f", "v"], &["PERSIST", "x"], &["EXPIRE", "x", "999999999"]] {
        assert_eq!(plan_of(cmd), None, "{cmd:?}");
    }
}

#[test]
fn set_gains_px_and_its_expiry_is_clamped() {
    assert_eq!(plan_of(&["SET", "s:1", "v"]), rewritten(&["SET", "s:1", "v", "PX", "3600000"]));
    assert_eq!(
        plan_of(&["set", "s:1", "v", "nx", "get"]),
        rewritten(&["set", "s:1", "v", "nx", "get", "PX", "3600000"])
    );
    assert_eq!(plan_of(&["SET", "s:1", "v", "EX", "60"]), None, "within max_ttl");
    assert_eq!(plan_of(&["SET", "s:1", "v", "EX", "86401"]), rewritten(&["SET", "s:1", "v", "PX", "86400000"]));
    assert_eq!(
        plan_of(&["SET", "s:1", "v", "px", "86400001", "XX"]),
        rewritten(&["SET", "s:1", "v", "PX", "86400000", "XX"])
    );
    let far = (NOW / 1000 + 2 * 86_400).to_string();
    assert_eq!(plan_of(&["SET", "s:1", "v", "EXAT", &far]), rewritten(&["SET", "s:1", "v", "PX", "86400000"]));
    let near = (NOW + 1000).to_string();
    assert_eq!(plan_of(&["SET", "s:1", "v", "PXAT", &near]), None);
    // Only default_ttl: nothing to clamp.
    assert_eq!(plan_of(&["SET", "d:1", "v", "EX", "99999999"]), None);
    assert_eq!(plan_of(&["SET", "d:1", "v"]), rewritten(&["SET", "d:1", "v", "PX", "10000"]));
    // Only max_ttl: a SET without expiry gets the maximum.
    assert_eq!(plan_of(&["SET", "r:1", "v"]), rewritten(&["SET", "r:1", "v", "PX", "86400000"]));
}

#[test]
fn what_redis_rejects_is_left_to_redis() {
    for cmd in [
        &["SET", "s:1", "v", "EX", "0"][..],
        &["SET", "s:1", "v", "EX", "-5"],
        &["SET", "s:1", "v", "EX", "1e9"],
        &["SET", "s:1", "v", "EX", "0999999999"],
        &["SET", "s:1", "v", "EX", "9223372036854775807"],
        &["SET", "s:1", "v", "EX", "100", "PX", "100"],
        &["SET", "s:1", "v", "EX"],
        &["SET", "s:1", "v", "BOGUS"],
        &["SET", "s:1", "v", "EX", "99999999", "KEEPTTL"],
        &["EXPIRE", "s:1", "abc"],
        &["SET", "s:1"],
    ] {
        assert_eq!(plan_of(cmd), None, "{cmd:?}");
    }
}

#[test]
fn expire_family_is_clamped_to_pexpire() {
    assert_eq!(plan_of(&["EXPIRE", "s:1", "100"]), None);
    assert_eq!(plan_of(&["EXPIRE", "s:1", "-1"]), None, "deletes the key: allowed");
    assert_eq!(plan_of(&["EXPIRE", "s:1", "999999", "GT"]), rewritten(&["PEXPIRE", "s:1", "86400000", "GT"]));
    assert_eq!(plan_of(&["PEXPIRE", "s:1", "86400001"]), rewritten(&["PEXPIRE", "s:1", "86400000"]));
    let far = (NOW / 1000 + 3 * 86_400).to_string();
    assert_eq!(plan_of(&["EXPIREAT", "s:1", &far]), rewritten(&["PEXPIRE", "s:1", "86400000"]));
    let far = (NOW + 3 * 86_400_000).to_string();
    assert_eq!(plan_of(&["PEXPIREAT", "s:1", &far, "NX"]), rewritten(&["PEXPIRE", "s:1", "86400000", "NX"]));
    assert_eq!(plan_of(&["SETEX", "s:1", "999999", "v"]), rewritten(&["PSETEX", "s:1", "86400000", "v"]));
    assert_eq!(plan_of(&["PSETEX", "s:1", "1000", "v"]), None);
    assert_eq!(plan_of(&["GETEX", "s:1", "EX", "999999"]), rewritten(&["GETEX", "s:1", "PX", "86400000"]));
    assert_eq!(plan_of(&["GETEX", "s:1"]), None);
    assert_eq!(
        plan_of(&["RESTORE", "s:1", "999999999", "payload"]),
        rewritten(&["RESTORE", "s:1", "86400000", "payload"])
    );
}

#[test]
fn persist_and_keepttl_stay_finite_or_are_refused() {
    assert_eq!(plan_of(&["PERSIST", "s:1"]), followed(&["PERSIST", "s:1"], &[&["PEXPIRE", "s:1", "86400000"]]));
    assert_eq!(plan_of(&["GETEX", "s:1", "PERSIST"]), rewritten(&["GETEX", "s:1", "PX", "86400000"]));
    assert_eq!(
        plan_of(&["SET", "s:1", "v", "KEEPTTL"]),
        followed(&["SET", "s:1", "v", "KEEPTTL"], &[&["PEXPIRE", "s:1", "3600000", "NX"]])
    );
    assert_eq!(plan_of(&["PERSIST", "d:1"]), None, "without a maximum PERSIST is the client's choice");
    for (cmd, what) in [
        (&["PERSIST", "r:1"][..], "PERSIST"),
        (&["GETEX", "r:1", "PERSIST"], "GETEX PERSIST"),
        (&["SET", "r:1", "v", "KEEPTTL"], "SET KEEPTTL"),
    ] {
        let Err(err) = planned(cmd) else { panic!("{cmd:?} not refused") };
        let text = String::from_utf8(err.to_reply().to_vec()).unwrap();
        assert!(text.starts_with(&format!("-ERR {what} refused: key 'r:1'")) && text.contains("1d"), "{text}");
    }
}

#[test]
fn other_writes_are_followed_by_pexpire_nx() {
    let nx = |key: &str, ms: &str| vec!["PEXPIRE".to_string(), key.into(), ms.into(), "NX".into()];
    let check = |cmd: &[&str], expiries: &[Vec<String>]| {
        let extra: Vec<Vec<&str>> = expiries.iter().map(|c| c.iter().map(String::as_str).collect()).collect();
        let extra: Vec<&[&str]> = extra.iter().map(Vec::as_slice).collect();
        assert_eq!(plan_of(cmd), followed(cmd, &extra), "{cmd:?}");
    };
    for cmd in [
        &["HSET", "s:1", "f", "v"][..],
        &["SETNX", "s:1", "v"],
        &["INCR", "s:1"],
        &["LPUSH", "s:1", "a"],
        &["SADD", "s:1", "a"],
        &["ZADD", "s:1", "1", "a"],
        &["XADD", "s:1", "*", "f", "v"],
        &["APPEND", "s:1", "x"],
        &["SETBIT", "s:1", "7", "1"],
        &["PFADD", "s:1", "a"],
    ] {
        check(cmd, &[nx("s:1", "3600000")]);
    }
    check(&["RENAME", "x", "s:2"], &[nx("s:2", "3600000")]);
    check(&["COPY", "x", "r:2"], &[nx("r:2", "86400000")]);
    check(&["LMOVE", "x", "d:2", "LEFT", "RIGHT"], &[nx("d:2", "10000")]);
    check(&["MSET", "s:1", "a", "x", "b", "d:1", "c", "s:1", "d"], &[nx("s:1", "3600000"), nx("d:1", "10000")]);
    check(&["SORT", "x", "BY", "nosort", "STORE", "s:9"], &[nx("s:9", "3600000")]);
    assert_eq!(plan_of(&["COPY", "x", "s:2", "DB", "1"]), None, "another db: not enforced");
    assert_eq!(plan_of(&["DEL", "s:1"]), None);
    assert_eq!(plan_of(&["MSET", "x", "1", "y", "2"]), None);
}

#[test]
fn counters_count_each_kind() {
    let counters = Counters::default();
    let policy = policy();
    for args in
        [&["SET", "s:1", "v"][..], &["HSET", "s:1", "f", "v"], &["EXPIRE", "s:1", "999999"], &["PERSIST", "r:1"]]
    {
        let bytes = encode_command(args);
        let _ = plan(&CommandView::new(&bytes, args.len()), role(args), &policy, &counters, NOW);
    }
    let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!((read(&counters.enforced), read(&counters.clamped), read(&counters.refused)), (2, 1, 1));
}

#[test]
fn a_transaction_wraps_the_command() {
    let plan = Plan::Followed { command: encode_command(&["INCR", "s:1"]), extra: vec![encode_command(&["PING"])] };
    let rewrite = plan.in_transaction();
    let expected = [
        &b"*1\r\n$5\r\nMULTI\r\n"[..],
        &encode_command(&["INCR", "s:1"]),
        &encode_command(&["PING"]),
        b"*1\r\n$4\r\nEXEC\r\n",
    ]
    .concat();
    assert_eq!(rewrite.bytes.as_deref(), Some(&expected[..]));
    assert_eq!(rewrite.shape, Some(Shape::Transaction { extra: 1 }));
}
