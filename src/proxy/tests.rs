use super::*;
use crate::config::Config;
use crate::framing::encode_command;
use crate::ttl::Shape;

fn session() -> Session {
    Session::new(7)
}

fn route(session: &mut Session, args: &[&str]) -> Route {
    route_with(session, args, None, &Policy::new(&Config::default()))
}

fn route_with(session: &mut Session, args: &[&str], tier: Option<&Tier>, policy: &Policy) -> Route {
    let bytes = encode_command(args);
    let (sink, _) = tokio::sync::mpsc::unbounded_channel();
    let now = std::time::Instant::now();
    let server = &ServerInfo::new("7.0.0", 16);
    let ttl = &ttl::Counters::default();
    let access = &crate::access::Access::default();
    let clients = &crate::client_table::ClientTable::default();
    let env = Env {
        server,
        admin: &admin,
        policy,
        access,
        tier,
        ttl,
        now,
        upstream_down: false,
        seq: 0,
        sink: &sink,
        clients,
        shard_down: None,
    };
    let cmd = CommandView::new(&bytes, args.len());
    session.route(&cmd, &crate::command::lookup(cmd.arg(0).unwrap_or_default()), &env)
}

fn reply(session: &mut Session, args: &[&str]) -> String {
    match route(session, args) {
        Route::Reply(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
        other => panic!("{args:?} was not answered locally: {other:?}"),
    }
}

/// What the tests' admin answers: PROXY commands reached it.
const ADMIN: Route = Route::Reply(Bytes::from_static(b"+ADMIN\r\n"));

fn admin(_: &mut Session, _: &CommandView<'_>) -> Bytes {
    Bytes::from_static(b"+ADMIN\r\n")
}

const SHARED_DB0: Route = Route::Shared(PoolKey { db: 0, resp3: false });
const PINNED: Route = Route::Pinned { stream: false, rewrite: None, expect: Expect::One, info: false };
/// MULTI opening a transaction (its sequence number is 0 in these tests).
const MULTI_OPENED: Route =
    Route::Pinned { stream: false, rewrite: None, expect: Expect::Confirm(Confirm::Multi(0)), info: false };
const STREAM: Route = Route::Pinned { stream: true, rewrite: None, expect: Expect::One, info: false };

#[test]
fn ordinary_commands_use_the_shared_pool_of_the_session() {
    let mut s = session();
    assert_eq!(route(&mut s, &["GET", "k"]), SHARED_DB0);
    assert_eq!(reply(&mut s, &["SELECT", "3"]), "+OK\r\n");
    assert_eq!(route(&mut s, &["GET", "k"]), Route::Shared(PoolKey { db: 3, resp3: false }));
    // EXEC without MULTI is Redis's to refuse.
    assert_eq!(route(&mut s, &["EXEC"]), Route::Shared(PoolKey { db: 3, resp3: false }));
}

#[test]
fn select_is_checked_like_redis() {
    let mut s = session();
    assert_eq!(reply(&mut s, &["SELECT", "16"]), "-ERR DB index is out of range\r\n");
    assert_eq!(reply(&mut s, &["SELECT", "-1"]), "-ERR DB index is out of range\r\n");
    assert_eq!(reply(&mut s, &["SELECT", "x"]), "-ERR value is not an integer or out of range\r\n");
    assert_eq!(reply(&mut s, &["SELECT"]), "-ERR wrong number of arguments for 'select' command\r\n");
    assert_eq!(s.pool_key().db, 0);
}

#[test]
fn hello_switches_protocol_and_answers_in_it() {
    let mut s = session();
    let hello3 = reply(&mut s, &["HELLO", "3", "SETNAME", "app"]);
    assert!(hello3.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"), "{hello3}");
    // Until CLIENT ID tells it its upstream connection's id, a client's id is the proxy's.
    let id = crate::client_table::UNSHOWN_IDS + 7;
    assert!(hello3.contains(&format!("$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:{id}\r\n")), "{hello3}");
    assert_eq!(route(&mut s, &["GET", "k"]), Route::Shared(PoolKey { db: 0, resp3: true }));
    assert_eq!(reply(&mut s, &["CLIENT", "GETNAME"]), "$3\r\napp\r\n");
    assert!(reply(&mut s, &["HELLO", "2"]).starts_with("*14\r\n"));
    assert_eq!(reply(&mut s, &["HELLO", "4"]), "-NOPROTO unsupported protocol version\r\n");
    assert_eq!(reply(&mut s, &["HELLO", "3", "FOO"]), "-ERR Syntax error in HELLO option 'FOO'\r\n");
    // A failed HELLO changes nothing.
    assert!(!s.pool_key().resp3);
}

#[test]
fn proxy_commands_are_the_proxys_even_when_pinned() {
    let mut s = session();
    assert_eq!(route(&mut s, &["proxy", "breaker", "status"]), ADMIN);
    assert_eq!(route(&mut s, &["MULTI"]), MULTI_OPENED);
    assert_eq!(route(&mut s, &["PROXY", "INFO"]), ADMIN);
}

#[test]
fn client_session_commands() {
    let mut s = session();
    assert_eq!(reply(&mut s, &["CLIENT", "GETNAME"]), "$-1\r\n");
    assert_eq!(
        reply(&mut s, &["CLIENT", "SETNAME", "a b"]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(reply(&mut s, &["client", "setname", "worker-1"]), "+OK\r\n");
    // A 7.0 upstream has no CLIENT SETINFO (7.2): answered as it would.
    assert_eq!(
        reply(&mut s, &["CLIENT", "setinfo", "LIB-NAME", "redis-rs"]),
        "-ERR unknown subcommand 'setinfo'. Try CLIENT HELP.\r\n"
    );
    // The id is Redis's, of the session's own connection (which then carries its name).
    assert!(!s.id_shown());
    let expect = Expect::Confirm(Confirm::ShownId);
    assert_eq!(route(&mut s, &["CLIENT", "ID"]), Route::Pinned { stream: false, rewrite: None, expect, info: false });
    assert!(s.id_shown() && s.try_unpin());
    // CLIENT INFO, like CLIENT LIST, comes from the proxy's client table.
    assert!(matches!(route(&mut s, &["CLIENT", "INFO"]), Route::Reply(_)));
    assert_eq!(reply(&mut s, &["RESET"]), "+RESET\r\n");
    assert_eq!(reply(&mut s, &["CLIENT", "GETNAME"]), "$-1\r\n");
    assert!(matches!(route(&mut s, &["QUIT"]), Route::Close(_)));
}

#[test]
fn transactions_pin_until_exec() {
    let mut s = session();
    assert_eq!(route(&mut s, &["WATCH", "k"]), PINNED);
    assert_eq!(route(&mut s, &["MULTI"]), MULTI_OPENED);
    assert_eq!(route(&mut s, &["SET", "k", "v"]), PINNED);
    assert!(!s.try_unpin());
    assert_eq!(route(&mut s, &["EXEC"]), PINNED);
    assert!(s.try_unpin());
    assert_eq!(route(&mut s, &["GET", "k"]), SHARED_DB0);
    // SELECT or HELLO queued in MULTI: their effect depends on EXEC, so the session stays on
    // its pinned connection, which knows the outcome.
    assert_eq!(route(&mut s, &["MULTI"]), MULTI_OPENED);
    assert_eq!(route(&mut s, &["SELECT", "1"]), PINNED);
    assert_eq!(route(&mut s, &["EXEC"]), PINNED);
    assert!(!s.try_unpin());
    assert_eq!(route(&mut s, &["GET", "k"]), PINNED);
}

#[test]
fn the_client_name_follows_redis_while_pinned() {
    let mut s = session();
    assert_eq!(route(&mut s, &["WATCH", "k"]), PINNED);
    // Redis answers (in order with what is queued before it); the session follows its answer.
    let Route::Pinned { expect: Expect::Confirm(named), .. } = route(&mut s, &["CLIENT", "SETNAME", "w"]) else {
        panic!("SETNAME while pinned goes to Redis")
    };
    assert_eq!(route(&mut s, &["CLIENT", "GETNAME"]), PINNED);
    s.confirm(named, b"+OK\r\n");
    assert_eq!(route(&mut s, &["MULTI"]), MULTI_OPENED);
    // Inside MULTI, Redis queues it.
    assert_eq!(route(&mut s, &["CLIENT", "GETNAME"]), PINNED);
    assert_eq!(route(&mut s, &["EXEC"]), PINNED);
    assert!(s.try_unpin());
    assert_eq!(reply(&mut s, &["CLIENT", "GETNAME"]), "$1\r\nw\r\n");
}

#[test]
fn exec_or_discard_without_multi_keeps_the_watch() {
    let mut s = session();
    assert_eq!(route(&mut s, &["WATCH", "k"]), PINNED);
    assert_eq!(route(&mut s, &["DISCARD"]), PINNED);
    assert_eq!(route(&mut s, &["EXEC"]), PINNED);
    assert!(!s.try_unpin(), "still watching: Redis answered both with an error");
    assert_eq!(route(&mut s, &["UNWATCH"]), PINNED);
    assert!(s.try_unpin());
}

#[test]
fn blocking_commands_pin_until_answered() {
    let mut s = session();
    assert_eq!(route(&mut s, &["BLPOP", "q", "0"]), PINNED);
    assert!(s.try_unpin());
}

#[test]
fn streams_and_sticky_flags_pin_for_good() {
    let mut s = session();
    assert_eq!(route(&mut s, &["SUBSCRIBE", "c"]), STREAM);
    assert_eq!(route(&mut s, &["RESET"]), STREAM);
    assert!(!s.try_unpin());
    // Redis answers QUIT after what it streamed before it, then closes.
    assert_eq!(
        route(&mut s, &["QUIT"]),
        Route::Pinned { stream: true, rewrite: None, expect: Expect::Quit, info: false }
    );
    let mut s = session();
    assert_eq!(route(&mut s, &["CLIENT", "NO-EVICT", "on"]), PINNED);
    assert!(!s.try_unpin());
    s.pinned_lost();
    assert_eq!(route(&mut s, &["GET", "k"]), SHARED_DB0);
}

#[test]
fn cacheable_reads_go_through_the_tier_by_rule() {
    let text = "[[rule]]\npattern = \"lock:*\"\ncache = \"none\"\n";
    let policy = Policy::new(&Config::parse(text, std::path::Path::new("t.toml")).unwrap());
    let tier = Tier::new(1 << 20, 1 << 10, true, std::time::Duration::ZERO);
    let mut s = session();
    let Route::Fill(pool, ticket) = route_with(&mut s, &["GET", "user:1"], Some(&tier), &policy) else { panic!() };
    assert_eq!(pool, PoolKey::default());
    // An identical read while the first is in flight waits for it.
    assert_eq!(route_with(&mut s, &["get", "user:1"], Some(&tier), &policy), Route::Joined);
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    assert_eq!(
        route_with(&mut s, &["GET", "user:1"], Some(&tier), &policy),
        Route::Hit(Bytes::from_static(b"$1\r\nv\r\n"))
    );
    // Another protocol or db is another variant.
    assert!(matches!(route_with(&mut s, &["HELLO", "3"], Some(&tier), &policy), Route::Reply(_)));
    assert!(matches!(route_with(&mut s, &["GET", "user:1"], Some(&tier), &policy), Route::Fill(..)));
    // A write invalidates before it is forwarded (with the count of reads registered before).
    let before = tier.registrations();
    assert_eq!(
        route_with(&mut s, &["SET", "user:1", "w"], Some(&tier), &policy),
        Route::Write(PoolKey { db: 0, resp3: true }, None, before)
    );
    assert!(matches!(route_with(&mut s, &["HELLO", "2"], Some(&tier), &policy), Route::Reply(_)));
    assert!(matches!(route_with(&mut s, &["GET", "user:1"], Some(&tier), &policy), Route::Fill(..)));
    // "none" rules and uncacheable commands are plain forwards.
    assert_eq!(route_with(&mut s, &["GET", "lock:1"], Some(&tier), &policy), SHARED_DB0);
    assert_eq!(route_with(&mut s, &["TTL", "user:1"], Some(&tier), &policy), SHARED_DB0);
    // Without tracking, tracked rules do not cache.
    let untracked = Tier::new(1 << 20, 1 << 10, false, std::time::Duration::ZERO);
    assert_eq!(route_with(&mut s, &["GET", "user:2"], Some(&untracked), &policy), SHARED_DB0);
}

fn ttl_policy() -> Policy {
    let text = "[[rule]]\npattern = \"s:*\"\ndefault_ttl = \"1h\"\nmax_ttl = \"1d\"\npersist = \"refuse\"\n";
    Policy::new(&Config::parse(text, std::path::Path::new("t.toml")).unwrap())
}

fn rewrite_of(route: Route) -> Option<Rewrite> {
    match route {
        Route::Write(_, rewrite, _) | Route::Pinned { rewrite, .. } => rewrite,
        other => panic!("not a write: {other:?}"),
    }
}

#[test]
fn ttl_enforcement_on_the_shared_pool_is_a_transaction_of_its_own() {
    let (mut s, policy) = (session(), ttl_policy());
    let rewrite = rewrite_of(route_with(&mut s, &["HSET", "s:1", "f", "v"], None, &policy)).unwrap();
    assert_eq!(rewrite.shape, Some(Shape::Transaction { extra: 1 }));
    assert!(rewrite.bytes.unwrap().starts_with(b"*1\r\n$5\r\nMULTI\r\n"));
    // Keys under no rule pass untouched, with or without a tier.
    assert_eq!(route_with(&mut s, &["HSET", "x", "f", "v"], None, &policy), SHARED_DB0);
    let tier = Tier::new(1 << 20, 1 << 10, true, std::time::Duration::ZERO);
    assert_eq!(
        route_with(&mut s, &["HSET", "x", "f", "v"], Some(&tier), &policy),
        Route::Write(PoolKey::default(), None, tier.registrations())
    );
    let refused = route_with(&mut s, &["PERSIST", "s:1"], None, &policy);
    assert!(matches!(refused, Route::Reply(ref r) if r.starts_with(b"-ERR PERSIST refused")), "{refused:?}");
}

#[test]
fn in_a_transaction_the_proxys_commands_are_queued_and_dropped_from_exec() {
    let (mut s, policy) = (session(), ttl_policy());
    assert_eq!(route_with(&mut s, &["MULTI"], None, &policy), MULTI_OPENED);
    let hset = rewrite_of(route_with(&mut s, &["HSET", "s:1", "f", "v"], None, &policy)).unwrap();
    assert_eq!(hset.shape, Some(Shape::Trailing { hidden: 1 }));
    assert_eq!(route_with(&mut s, &["GET", "s:1"], None, &policy), PINNED);
    let set = rewrite_of(route_with(&mut s, &["SET", "s:2", "v"], None, &policy)).unwrap();
    assert_eq!((set.shape, set.bytes), (None, Some(encode_command(&["SET", "s:2", "v", "PX", "3600000"]))));
    let exec = rewrite_of(route_with(&mut s, &["EXEC"], None, &policy)).unwrap();
    assert_eq!(exec, Rewrite { bytes: None, shape: Some(Shape::Exec(vec![true, false, true, true])) });
    // A transaction without enforced writes keeps EXEC as it is.
    assert_eq!(route_with(&mut s, &["MULTI"], None, &policy), MULTI_OPENED);
    assert_eq!(route_with(&mut s, &["SET", "x", "v"], None, &policy), PINNED);
    assert_eq!(route_with(&mut s, &["EXEC"], None, &policy), PINNED);
}

#[test]
fn a_refused_command_in_a_transaction_aborts_it() {
    let (mut s, policy) = (session(), ttl_policy());
    assert_eq!(route_with(&mut s, &["MULTI"], None, &policy), MULTI_OPENED);
    assert!(matches!(route_with(&mut s, &["PERSIST", "s:1"], None, &policy), Route::Reply(_)));
    let exec = rewrite_of(route_with(&mut s, &["EXEC"], None, &policy)).unwrap();
    assert_eq!(exec.shape, Some(Shape::Discarded));
    assert_eq!(exec.bytes.as_deref(), Some(&b"*1\r\n$7\r\nDISCARD\r\n"[..]));
    // The next transaction starts clean.
    assert_eq!(route_with(&mut s, &["MULTI"], None, &policy), MULTI_OPENED);
    assert_eq!(route_with(&mut s, &["EXEC"], None, &policy), PINNED);
}

#[test]
fn session_state_follows_what_redis_accepted_on_the_pinned_connection() {
    let mut s = session();
    assert_eq!(route(&mut s, &["WATCH", "k"]), PINNED);
    // Refused by Redis: the db stays.
    let select = route(&mut s, &["SELECT", "99"]);
    assert_eq!(
        select,
        Route::Pinned { stream: false, rewrite: None, expect: Expect::Confirm(Confirm::Select(99)), info: false }
    );
    s.confirm(Confirm::Select(99), b"-ERR DB index is out of range\r\n");
    assert_eq!(s.pin_key().db, 0);
    s.confirm(Confirm::Select(2), b"+OK\r\n");
    // A SELECT answered after a RESET sent behind it does not outlive the RESET.
    let Route::Pinned { expect: Expect::Confirm(reset), .. } = route(&mut s, &["RESET"]) else { panic!() };
    s.confirm(reset, b"+RESET\r\n");
    assert_eq!(s.pool_key().db, 0);
    // A MULTI refused (-BUSY) opens no transaction: the pin can end.
    assert_eq!(route(&mut s, &["MULTI"]), MULTI_OPENED);
    assert!(!s.try_unpin());
    s.confirm(Confirm::Multi(0), b"-BUSY Redis is busy running a script.\r\n");
    assert!(s.try_unpin());
    // HELLO while pinned: protocol and name once Redis said yes.
    let mut s = session();
    route(&mut s, &["WATCH", "k"]);
    let Route::Pinned { expect: Expect::Confirm(hello), .. } = route(&mut s, &["HELLO", "3", "SETNAME", "n"]) else {
        panic!()
    };
    s.confirm(hello.clone(), b"-NOPROTO\r\n");
    assert!(!s.pool_key().resp3);
    s.confirm(hello, b"%7\r\n");
    assert!(s.pool_key().resp3);
    assert_eq!(s.identity(), vec![encode_command(&["CLIENT", "SETNAME", "n"])]);
}

#[test]
fn unsubscribing_outside_a_subscription_expects_a_reply_per_channel() {
    let mut s = session();
    let expect = |n| Route::Pinned { stream: false, rewrite: None, expect: Expect::Pushes(n), info: false };
    assert_eq!(route(&mut s, &["UNSUBSCRIBE"]), expect(1));
    assert_eq!(route(&mut s, &["PUNSUBSCRIBE", "a", "b", "c"]), expect(3));
    assert!(s.try_unpin(), "pinned only until answered");
}

#[test]
fn without_proxy_users_auth_is_redis_to_answer() {
    let mut s = session();
    // An ACL user of Redis's: Redis answers on the session's own connection...
    let Route::Pinned { expect: Expect::Confirm(login), .. } = route(&mut s, &["AUTH", "bob", "pw"]) else {
        panic!("AUTH goes to Redis")
    };
    // ... refused: nothing changes, the pin ends.
    s.confirm(login.clone(), b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    assert!(s.try_unpin());
    // Accepted: the connection is bob's; the session stays on it (never the shared pool or tier).
    route(&mut s, &["AUTH", "bob", "pw"]);
    s.confirm(login, b"+OK\r\n");
    assert!(!s.try_unpin());
    assert_eq!(route(&mut s, &["GET", "k"]), PINNED);
    // HELLO with AUTH too, its protocol following Redis's answer.
    let mut s = session();
    let Route::Pinned { expect: Expect::Confirm(login), .. } = route(&mut s, &["HELLO", "3", "AUTH", "bob", "pw"])
    else {
        panic!("HELLO AUTH goes to Redis")
    };
    s.confirm(login, b"%7\r\n");
    assert!(s.pool_key().resp3);
    assert!(!s.try_unpin());
}
