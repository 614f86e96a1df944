//! The local tier against a real redis-server: hits never reach Redis, and the coherence rules
//! of DESIGN.md hold (read-your-writes, tracking, losing tracking, TTL, coalescing, variants).

mod common;

use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, calls, config_for, wait_for_caching};
use nearcache::config::{CacheMode, Config, Rule, Span, Tracking};

async fn setup(config: Config) -> (Proxy, Raw, Raw) {
    let proxy = Proxy::start(config).await;
    let mut raw = proxy.raw().await;
    let upstream = proxy_upstream(&proxy);
    let mut direct = Raw::connect(upstream).await;
    wait_for_caching(&mut raw, &mut direct).await;
    (proxy, raw, direct)
}

fn proxy_upstream(proxy: &Proxy) -> String {
    proxy.upstream.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_never_reach_redis_and_none_rules_are_never_cached() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.rule.push(Rule { pattern: "lock:*".into(), cache: Some(CacheMode::None), ..Rule::default() });
    let (proxy, mut raw, mut direct) = setup(config).await;
    call(&mut raw, &["SET", "user:1", "alice"]).await;
    call(&mut raw, &["HSET", "h", "f", "v"]).await;
    call(&mut raw, &["SET", "lock:1", "held"]).await;
    for (read, command) in
        [(&["GET", "user:1"][..], "get"), (&["HGETALL", "h"], "hgetall"), (&["EXISTS", "user:1"], "exists")]
    {
        let first = call(&mut raw, read).await;
        let before = calls(&mut direct, command).await;
        for _ in 0..5 {
            assert_eq!(call(&mut raw, read).await, first);
        }
        assert_eq!(calls(&mut direct, command).await, before, "{read:?} reached Redis on a hit");
    }
    let before = calls(&mut direct, "get").await;
    for _ in 0..3 {
        assert_eq!(call(&mut raw, &["GET", "lock:1"]).await, "$4\r\nheld\r\n");
    }
    assert_eq!(calls(&mut direct, "get").await, before + 3, "cache = \"none\" must always read Redis");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_are_read_back_by_every_client() {
    let redis = Redis::start();
    read_your_writes(config_for(&redis.addr())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_invalidate_without_tracking() {
    // Only the proxy's own invalidation keeps these coherent: no tracking, cache = "ttl".
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.cache.tracking = Tracking::Off;
    config.default.cache = CacheMode::Ttl;
    read_your_writes(config).await;
}

async fn read_your_writes(mut config: Config) {
    config.upstream.connections = 4;
    let (proxy, mut first, _direct) = setup(config).await;
    // Clients are spread over the four shared connections.
    let mut clients = vec![];
    for _ in 0..4 {
        clients.push(proxy.raw().await);
    }
    for i in 0..200 {
        let value = format!("v{i}");
        let writer = i % 4;
        assert_eq!(call(&mut clients[writer], &["SET", "k", &value]).await, "+OK\r\n");
        for reader in &mut clients {
            assert_eq!(call(reader, &["GET", "k"]).await, format!("${}\r\n{value}\r\n", value.len()));
        }
    }
    // Every kind of write invalidates. Each case: cache the read, write, read again at once.
    // (prepare, write, read, what the read must answer after the write)
    type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a str);
    let cases: [Case; 10] = [
        (&["SET", "a", "1"], &["DEL", "a"], &["GET", "a"], "$-1\r\n"),
        (&["SET", "a", "1"], &["UNLINK", "a"], &["GET", "a"], "$-1\r\n"),
        (&["SET", "a", "1"], &["RENAME", "a", "b"], &["GET", "a"], "$-1\r\n"),
        (&["SET", "b", "1"], &["RENAME", "a2", "b"], &["GET", "b"], "$1\r\n2\r\n"),
        (&["SET", "a", "1"], &["MSET", "x", "0", "a", "3"], &["GET", "a"], "$1\r\n3\r\n"),
        (&["SET", "a", "1"], &["PEXPIRE", "a", "1"], &["PTTL", "a"], ""),
        (&["SET", "a", "1"], &["FLUSHDB"], &["GET", "a"], "$-1\r\n"),
        (&["SET", "a", "1"], &["FLUSHALL"], &["GET", "a"], "$-1\r\n"),
        (
            &["SET", "a", "1"],
            &["EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "1", "a", "4"],
            &["GET", "a"],
            "$1\r\n4\r\n",
        ),
        (&["HSET", "h", "f", "1"], &["HINCRBY", "h", "f", "5"], &["HGET", "h", "f"], "$1\r\n6\r\n"),
    ];
    for (prepare, write, read, expected) in cases {
        call(&mut first, prepare).await;
        call(&mut first, &["SET", "a2", "2"]).await;
        call(&mut clients[1], read).await;
        call(&mut clients[1], read).await;
        call(&mut clients[2], write).await;
        if read[0] == "PTTL" {
            // The cached GET must not outlive the key made to expire.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(call(&mut clients[1], &["GET", "a"]).await, "$-1\r\n", "after {write:?}");
        } else {
            assert_eq!(call(&mut clients[1], read).await, expected, "after {write:?}");
        }
    }
    // A transaction's writes are visible once EXEC is answered.
    call(&mut first, &["SET", "t", "before"]).await;
    call(&mut clients[1], &["GET", "t"]).await;
    assert_eq!(call(&mut clients[3], &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut clients[3], &["SET", "t", "after"]).await, "+QUEUED\r\n");
    // Queued, not executed: readers may still see the old value...
    call(&mut clients[1], &["GET", "t"]).await;
    assert_eq!(call(&mut clients[3], &["EXEC"]).await, "*1\r\n+OK\r\n");
    // ...and after EXEC they see the new one.
    assert_eq!(call(&mut clients[1], &["GET", "t"]).await, "$5\r\nafter\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_other_clients_arrive_through_tracking() {
    let redis = Redis::start();
    let (proxy, mut raw, mut direct) = setup(config_for(&redis.addr())).await;
    let mut delays = vec![];
    for i in 0..20 {
        call(&mut direct, &["SET", "shared", &format!("old{i}")]).await;
        call(&mut raw, &["GET", "shared"]).await;
        call(&mut raw, &["GET", "shared"]).await;
        let new = format!("new{i}");
        call(&mut direct, &["SET", "shared", &new]).await;
        let written = Instant::now();
        while call(&mut raw, &["GET", "shared"]).await != format!("${}\r\n{new}\r\n", new.len()) {
            assert!(written.elapsed() < Duration::from_secs(1), "still serving the old value after 1s");
        }
        delays.push(written.elapsed());
    }
    delays.sort();
    eprintln!("stale window after a direct write: median {:?}, max {:?}", delays[10], delays[19]);
    // A key made to expire directly is dropped too.
    call(&mut direct, &["SET", "soon", "v"]).await;
    call(&mut raw, &["GET", "soon"]).await;
    call(&mut direct, &["PEXPIRE", "soon", "50"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(call(&mut raw, &["GET", "soon"]).await, "$-1\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_tracking_flushes_the_tier_until_it_is_back() {
    let redis = Redis::start();
    let (proxy, mut raw, mut direct) = setup(config_for(&redis.addr())).await;
    call(&mut direct, &["SET", "k", "old"]).await;
    call(&mut raw, &["GET", "k"]).await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\nold\r\n");
    // Kill the tracking connection, then write while no invalidation can arrive.
    let clients = call(&mut direct, &["CLIENT", "LIST"]).await;
    let id = tracking_id(&clients).expect("the tracking connection is named").to_owned();
    assert_eq!(call(&mut direct, &["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    call(&mut direct, &["SET", "k", "new"]).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    while call(&mut raw, &["GET", "k"]).await != "$3\r\nnew\r\n" {
        assert!(Instant::now() < deadline, "a tier that missed invalidations kept serving");
    }
    // Tracking comes back by itself, and with it caching; what was cached before the loss is
    // gone (it may have missed invalidations).
    wait_for_caching(&mut raw, &mut direct).await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\nnew\r\n");
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\nnew\r\n");
    proxy.stop().await;
}

/// Redis remembers which keys a shared connection read only while that connection lives: when
/// one is lost, a write elsewhere to a key only it read brings no invalidation. The tier must
/// not keep serving such a key; several clients share the one upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_shared_connection_drops_what_it_read() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    let (proxy, mut raw, mut direct) = setup(config).await;
    let mut others: Vec<Raw> = Vec::new();
    for c in 0..4 {
        let mut other = proxy.raw().await;
        call(&mut direct, &["SET", &format!("o{c}"), "old"]).await;
        assert_eq!(call(&mut other, &["GET", &format!("o{c}")]).await, "$3\r\nold\r\n");
        others.push(other);
    }
    call(&mut direct, &["SET", "k", "old"]).await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\nold\r\n");
    let before = calls(&mut direct, "get").await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\nold\r\n");
    assert_eq!(calls(&mut direct, "get").await, before, "cached");
    // The shared connection is the one client with tracking on (flag t), besides clients.
    let clients = call(&mut direct, &["CLIENT", "LIST"]).await;
    let shared = client_ids(&clients, |l| client_field(l, "flags").is_some_and(|f| f.contains('t')));
    assert_eq!(shared.len(), 1, "one shared connection tracks: {clients}");
    assert_eq!(call(&mut direct, &["CLIENT", "KILL", "ID", shared[0]]).await, ":1\r\n");
    // Written while Redis tracks the key for nobody: no invalidation comes.
    call(&mut direct, &["SET", "k", "new"]).await;
    for c in 0..4 {
        call(&mut direct, &["SET", &format!("o{c}"), "new"]).await;
    }
    until_read(&mut raw, "k", "new", "the tier kept a key Redis no longer tracks").await;
    for (c, other) in others.iter_mut().enumerate() {
        assert_eq!(call(other, &["GET", &format!("o{c}")]).await, "$3\r\nnew\r\n", "client {c}");
    }
    // Caching goes on over the new connection, and its reads are tracked.
    wait_for_caching(&mut raw, &mut direct).await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\nnew\r\n");
    call(&mut direct, &["SET", "k", "newer"]).await;
    until_read(&mut raw, "k", "newer", "a write after the new connection read it was missed").await;
    proxy.stop().await;
}

/// Each time the tracking connection comes back (a new id), the shared connection sends its
/// redirection ahead of the next write, in the middle of other clients' pipelines, and swallows
/// its reply. Six clients pipeline on ONE shared connection while the tracking connection is
/// killed again and again: every client gets exactly its own replies, in order, and the shared
/// connection ends up redirecting to the live tracking connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirections_among_many_clients_on_one_connection_reach_no_client() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    let (proxy, _raw, mut direct) = setup(config).await;
    // Five times: the tracking connection is killed, and comes back with a new id.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = tokio::spawn({
        let (addr, done) = (redis.addr(), std::sync::Arc::clone(&done));
        async move {
            let mut direct = Raw::connect(addr).await;
            let deadline = Instant::now() + PATIENCE;
            let mut killed: Vec<String> = Vec::new();
            while killed.len() < 5 {
                assert!(Instant::now() < deadline, "tracking connections killed: {killed:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                let list = call(&mut direct, &["CLIENT", "LIST"]).await;
                let Some(id) = tracking_id(&list).map(str::to_owned) else { continue };
                if !killed.contains(&id) && call(&mut direct, &["CLIENT", "KILL", "ID", &id]).await == ":1\r\n" {
                    killed.push(id);
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut clients = Vec::new();
    for c in 0..6 {
        let mut raw = proxy.raw().await;
        let done = std::sync::Arc::clone(&done);
        clients.push(tokio::spawn(async move {
            let mut round = 0;
            while round < 100 || !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (key, value) = (format!("r{c}"), format!("{c}-{round}"));
                let mut pipeline = Vec::new();
                for args in [&["SET", &key, &value][..], &["GET", &key], &["GET", "shared"], &["GET", &key]] {
                    pipeline.extend_from_slice(&nearcache::framing::encode_command(args));
                }
                raw.send(&pipeline).await;
                let expected = format!("${}\r\n{value}\r\n", value.len());
                assert_eq!(raw.reply().await, "+OK\r\n", "client {c} round {round}");
                assert_eq!(raw.reply().await, expected, "client {c} round {round}");
                let shared = raw.reply().await;
                assert!(shared == "$-1\r\n" || shared == "$1\r\ns\r\n", "client {c} round {round}: {shared:?}");
                assert_eq!(raw.reply().await, expected, "client {c} round {round}");
                round += 1;
            }
            round
        }));
    }
    call(&mut direct, &["SET", "shared", "s"]).await;
    killer.await.unwrap();
    for client in clients {
        assert!(client.await.unwrap() >= 100);
    }
    // The shared connection follows the live tracking connection (after a read through it).
    let mut client = proxy.raw().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        call(&mut client, &["GET", "r0"]).await;
        let list = call(&mut direct, &["CLIENT", "LIST"]).await;
        let live = tracking_id(&list);
        let redirecting: Vec<&str> =
            list.lines().filter_map(|l| client_field(l, "redir")).filter(|r| *r != "-1").collect();
        if live.is_some_and(|id| redirecting == [id]) {
            break;
        }
        assert!(Instant::now() < deadline, "the shared connection does not redirect to {live:?}: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_never_outlives_the_key_upstream() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    // No tracking: only the lifetime bounds the entry.
    config.cache.tracking = Tracking::Off;
    config.default.cache = CacheMode::Ttl;
    config.default.local_ttl = Span(Duration::from_secs(600));
    let (proxy, mut raw, mut direct) = setup(config).await;
    call(&mut direct, &["SET", "session", "s", "PX", "1000"]).await;
    assert_eq!(call(&mut raw, &["GET", "session"]).await, "$1\r\ns\r\n");
    let before = calls(&mut direct, "get").await;
    assert_eq!(call(&mut raw, &["GET", "session"]).await, "$1\r\ns\r\n");
    assert_eq!(calls(&mut direct, "get").await, before, "cached");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(call(&mut raw, &["GET", "session"]).await, "$-1\r\n", "served past the key's PTTL");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_send_one_read() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    let (proxy, _raw, mut direct) = setup(config).await;
    call(&mut direct, &["SET", "hot", "value"]).await;
    call(&mut direct, &["CONFIG", "RESETSTAT"]).await;
    // Keep Redis busy for 300 ms so that all the reads below are in flight together.
    let mut blocker = Raw::connect(redis.addr()).await;
    let busy = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
                while true do local n = redis.call('TIME') if n[1] * 1000000 + n[2] - s > 300000 then break end end";
    blocker.cmd(&[b"EVAL", busy.as_bytes(), b"0"]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut readers = vec![];
    for _ in 0..10 {
        let mut raw = proxy.raw().await;
        readers.push(tokio::spawn(async move { call(&mut raw, &["GET", "hot"]).await }));
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap(), "$5\r\nvalue\r\n");
    }
    blocker.reply().await;
    assert_eq!(calls(&mut direct, "get").await, 1, "ten concurrent misses, one read");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocols_and_dbs_never_share_entries() {
    let redis = Redis::start();
    let (proxy, mut resp2, mut direct) = setup(config_for(&redis.addr())).await;
    call(&mut direct, &["HSET", "h", "f", "v"]).await;
    assert_eq!(call(&mut resp2, &["HGETALL", "h"]).await, "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(call(&mut resp2, &["HGETALL", "h"]).await, "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    let mut resp3 = proxy.raw().await;
    call(&mut resp3, &["HELLO", "3"]).await;
    assert_eq!(call(&mut resp3, &["HGETALL", "h"]).await, "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(call(&mut resp3, &["HGETALL", "h"]).await, "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(call(&mut resp2, &["HGETALL", "h"]).await, "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");

    call(&mut direct, &["SET", "k", "zero"]).await;
    call(&mut direct, &["SELECT", "1"]).await;
    call(&mut direct, &["SET", "k", "one"]).await;
    assert_eq!(call(&mut resp2, &["GET", "k"]).await, "$4\r\nzero\r\n");
    assert_eq!(call(&mut resp2, &["GET", "k"]).await, "$4\r\nzero\r\n");
    assert_eq!(call(&mut resp2, &["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(call(&mut resp2, &["GET", "k"]).await, "$3\r\none\r\n");
    assert_eq!(call(&mut resp2, &["GET", "k"]).await, "$3\r\none\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_is_answered_per_key_from_the_tier() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.rule.push(Rule { pattern: "lock:*".into(), cache: Some(CacheMode::None), ..Rule::default() });
    let (proxy, mut raw, mut direct) = setup(config).await;
    call(&mut direct, &["MSET", "a", "1", "b", "2", "lock:1", "L"]).await;
    call(&mut direct, &["HSET", "h", "f", "v"]).await;
    let expected = "*5\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$1\r\nL\r\n$-1\r\n";
    assert_eq!(call(&mut raw, &["MGET", "a", "b", "nope", "lock:1", "h"]).await, expected);
    // The MGET filled the per-key entries GET uses, but not for the hash (GET h is an error).
    let gets = calls(&mut direct, "get").await;
    assert_eq!(call(&mut raw, &["GET", "b"]).await, "$1\r\n2\r\n");
    assert_eq!(calls(&mut direct, "get").await, gets);
    assert!(call(&mut raw, &["GET", "h"]).await.starts_with("-WRONGTYPE"));
    // Only the keys the tier cannot answer go upstream again (lock:1 is never cached, h is not
    // a string).
    let mgets = calls(&mut direct, "mget").await;
    assert_eq!(call(&mut raw, &["MGET", "a", "b", "nope", "lock:1", "h"]).await, expected);
    assert_eq!(calls(&mut direct, "mget").await, mgets + 1);
    assert_eq!(call(&mut raw, &["MGET", "a", "nope", "b"]).await, "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n");
    assert_eq!(calls(&mut direct, "mget").await, mgets + 1, "answered entirely from the tier");
    // Writes invalidate per key.
    call(&mut raw, &["SET", "b", "22"]).await;
    call(&mut direct, &["SET", "a", "11"]).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    while call(&mut raw, &["MGET", "a", "b"]).await != "*2\r\n$2\r\n11\r\n$2\r\n22\r\n" {
        assert!(Instant::now() < deadline, "MGET kept a stale element");
    }
    // RESP3 clients get RESP3 elements.
    let mut resp3 = proxy.raw().await;
    call(&mut resp3, &["HELLO", "3"]).await;
    assert_eq!(call(&mut resp3, &["MGET", "a", "nope"]).await, "*2\r\n$2\r\n11\r\n_\r\n");
    assert_eq!(call(&mut resp3, &["MGET", "a", "nope"]).await, "*2\r\n$2\r\n11\r\n_\r\n");
    proxy.stop().await;
}

/// One field of a CLIENT LIST line (`id`, `redir`, ...).
fn client_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ').find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// The ids of the clients in a CLIENT LIST reply whose line matches.
fn client_ids(list: &str, matches: impl Fn(&str) -> bool) -> Vec<&str> {
    list.lines().filter(|l| matches(l)).filter_map(|l| client_field(l, "id")).collect()
}

/// The tier's tracking connection, by its name in CLIENT LIST.
fn tracking_id(list: &str) -> Option<&str> {
    client_ids(list, |l| l.contains("name=nearcache-tracking")).first().copied()
}

/// GETs `key` through `raw` until it reads `value`, failing with `why` after `PATIENCE`.
async fn until_read(raw: &mut Raw, key: &str, value: &str, why: &str) {
    let expected = format!("${}\r\n{value}\r\n", value.len());
    let deadline = Instant::now() + PATIENCE;
    while call(raw, &["GET", key]).await != expected {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `done` until true, failing after `PATIENCE`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_when_its_key_is_invalidated_is_not_cached() {
    let fake = common::fake::FakeRedis::start().await;
    let mut config = config_for(&fake.addr);
    config.upstream.connections = 1;
    let proxy = Proxy::start(config).await;
    let mut reader = proxy.raw().await;
    // Wait until the proxy caches (a second GET does not reach it): tracking is on upstream.
    fake.set("probe", "p");
    let deadline = Instant::now() + PATIENCE;
    loop {
        call(&mut reader, &["GET", "probe"]).await;
        let before = fake.gets();
        call(&mut reader, &["GET", "probe"]).await;
        if fake.gets() == before {
            break;
        }
        assert!(Instant::now() < deadline, "never cached");
    }

    // Control: a held read with no invalidation meanwhile is cached.
    fake.set("calm", "old");
    fake.hold("calm");
    let gets = fake.gets();
    reader.cmd(&[b"GET", b"calm"]).await;
    until("the GET reached upstream", || fake.gets() == gets + 1).await;
    fake.release();
    assert_eq!(reader.reply().await, "$3\r\nold\r\n");
    fake.set("calm", "new");
    assert_eq!(call(&mut proxy.raw().await, &["GET", "calm"]).await, "$3\r\nold\r\n", "served from the tier");

    // The race: the key is written and invalidated while its read is in flight.
    fake.set("k", "old");
    fake.hold("k");
    let gets = fake.gets();
    reader.cmd(&[b"GET", b"k"]).await;
    until("the GET reached upstream", || fake.gets() == gets + 1).await;
    fake.set("k", "new");
    fake.invalidate("k");
    // Give the tracking task the push before the held reply is let go.
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.release();
    assert_eq!(reader.reply().await, "$3\r\nold\r\n", "the read itself predates the write");
    assert_eq!(call(&mut proxy.raw().await, &["GET", "k"]).await, "$3\r\nnew\r\n", "the stale reply was cached");
    proxy.stop().await;
}

/// INFO through the proxy counts the clients' tracking, not the shared connections Redis
/// tracks keys on for the tier (Redis's own suite checks `tracking_clients`).
#[tokio::test]
async fn info_does_not_count_the_proxys_own_tracking_connections() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;
    let mut client = proxy.raw().await;
    wait_for_caching(&mut client, &mut direct).await;
    for c in 0..6 {
        call(&mut proxy.raw().await, &["GET", &format!("k{c}")]).await;
    }
    let field = |info: &str, name: &str| -> u64 {
        let prefix = format!("{name}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .parse()
            .unwrap()
    };
    let counts = |info: String| (field(&info, "tracking_clients"), field(&info, "tracking_total_prefixes"));
    let (own, _) = counts(call(&mut direct, &["INFO"]).await);
    assert!(own >= 1, "Redis sees the shared connections track: {own}");
    assert_eq!(counts(call(&mut client, &["INFO"]).await), (0, 0));
    let clients = call(&mut client, &["INFO", "clients"]).await;
    assert_eq!(field(&clients, "tracking_clients"), 0, "one section alone");

    let mut tracker = proxy.raw().await;
    assert_eq!(call(&mut tracker, &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "p:"]).await, "+OK\r\n");
    assert_eq!(counts(call(&mut direct, &["INFO"]).await), (own + 1, 1));
    assert_eq!(counts(call(&mut client, &["INFO", "everything"]).await), (1, 1), "as Redis alone would count");
    // Other sections pass untouched.
    assert!(call(&mut client, &["INFO", "server"]).await.contains("redis_version:"));
}

/// INFO's reply is reworked on its way back; on ONE upstream connection shared by several
/// clients, pipelining INFO among their reads and writes, every client still gets its own
/// replies, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_among_other_clients_on_one_upstream_connection_reaches_only_its_client() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    let (proxy, _client, _direct) = setup(config).await;
    let mut tasks = Vec::new();
    for c in 0..6 {
        let mut raw = proxy.raw().await;
        tasks.push(tokio::spawn(async move {
            for round in 0..40 {
                let (key, value) = (format!("c{c}"), format!("{c}-{round}"));
                let mut pipeline = Vec::new();
                for args in
                    [&["SET", &key, &value][..], &["INFO", "clients"], &["GET", &key], &["INFO"], &["GET", &key]]
                {
                    pipeline.extend_from_slice(&nearcache::framing::encode_command(args));
                }
                raw.send(&pipeline).await;
                assert_eq!(raw.reply().await, "+OK\r\n");
                let info = String::from_utf8_lossy(&raw.reply().await).into_owned();
                assert!(info.contains("# Clients") && info.contains("\r\ntracking_clients:0\r\n"), "{info}");
                let get = format!("${}\r\n{value}\r\n", value.len());
                assert_eq!(raw.reply().await, get.as_bytes());
                let info = String::from_utf8_lossy(&raw.reply().await).into_owned();
                assert!(info.contains("# Server") && info.contains("\r\ntracking_clients:0\r\n"), "{info}");
                assert_eq!(raw.reply().await, get.as_bytes());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    proxy.stop().await;
}
