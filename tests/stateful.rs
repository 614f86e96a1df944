//! Commands that leave state on a connection work through the proxy: transactions, blocking
//! commands, pub/sub, SELECT, MONITOR.

mod common;

use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, config_for, until_reply};

/// One shared connection, so that anything blocking it would be seen by other clients.
async fn proxy_with_one_connection(redis: &Redis) -> Proxy {
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    Proxy::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_discard_and_watch() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;

    // Pipelined: a write before MULTI, the transaction, a read after EXEC.
    a.send(
        &[
            nearcache::framing::encode_command(&["SET", "n", "1"]),
            nearcache::framing::encode_command(&["MULTI"]),
            nearcache::framing::encode_command(&["INCR", "n"]),
            nearcache::framing::encode_command(&["INCR", "n"]),
            nearcache::framing::encode_command(&["EXEC"]),
            nearcache::framing::encode_command(&["GET", "n"]),
        ]
        .concat(),
    )
    .await;
    for expected in ["+OK\r\n", "+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "*2\r\n:2\r\n:3\r\n", "$1\r\n3\r\n"] {
        assert_eq!(a.reply().await, expected);
    }

    assert_eq!(call(&mut a, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut a, &["SET", "n", "100"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut a, &["DISCARD"]).await, "+OK\r\n");
    assert_eq!(call(&mut a, &["GET", "n"]).await, "$1\r\n3\r\n");

    // WATCH: a write by another client aborts the transaction (EXEC answers null).
    assert_eq!(call(&mut a, &["WATCH", "n"]).await, "+OK\r\n");
    assert_eq!(call(&mut b, &["SET", "n", "changed"]).await, "+OK\r\n");
    assert_eq!(call(&mut a, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut a, &["SET", "n", "mine"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut a, &["EXEC"]).await, "*-1\r\n");
    assert_eq!(call(&mut a, &["GET", "n"]).await, "$7\r\nchanged\r\n");

    // Without interference it commits; errors inside MULTI come from Redis.
    assert_eq!(call(&mut a, &["WATCH", "n"]).await, "+OK\r\n");
    assert_eq!(call(&mut a, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut a, &["SET", "n", "mine"]).await, "+QUEUED\r\n");
    assert!(call(&mut a, &["MULTI"]).await.starts_with("-ERR MULTI calls can not be nested"));
    assert_eq!(call(&mut a, &["EXEC"]).await, "*1\r\n+OK\r\n");
    assert_eq!(call(&mut b, &["GET", "n"]).await, "$4\r\nmine\r\n");
    assert!(call(&mut a, &["EXEC"]).await.starts_with("-ERR EXEC without MULTI"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_through_the_redis_crate() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut con = proxy.client(false).await;
    let (a, b): (i64, i64) = redis::pipe().atomic().incr("t", 1).incr("t", 10).query_async(&mut con).await.unwrap();
    assert_eq!((a, b), (1, 11));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_waits_without_blocking_other_clients() {
    let redis = Redis::start();
    let proxy = proxy_with_one_connection(&redis).await;
    let mut blocked = proxy.raw().await;
    blocked.cmd(&[b"BLPOP", b"queue", b"0"]).await;
    // Other clients are served while BLPOP waits (it is not on the shared connection).
    let mut other = proxy.raw().await;
    for i in 0..50 {
        assert_eq!(call(&mut other, &["SET", "x", &i.to_string()]).await, "+OK\r\n");
    }
    assert!(blocked.try_reply(Duration::from_millis(100)).await.is_none(), "BLPOP returned early");
    assert_eq!(call(&mut other, &["RPUSH", "queue", "job"]).await, ":1\r\n");
    assert_eq!(blocked.reply().await, "*2\r\n$5\r\nqueue\r\n$3\r\njob\r\n");
    // The session carries on (unpinned) after the blocking command.
    assert_eq!(call(&mut blocked, &["GET", "x"]).await, "$2\r\n49\r\n");

    // With a timeout, BLPOP answers null after it.
    let started = Instant::now();
    assert_eq!(call(&mut blocked, &["BLPOP", "empty", "0.2"]).await, "*-1\r\n");
    assert!(started.elapsed() >= Duration::from_millis(200));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blocking_command_is_served() {
    let redis = Redis::start();
    let proxy = proxy_with_one_connection(&redis).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    let cases: [(&[&str], &[&str], &str); 5] = [
        (&["BRPOP", "l1", "5"], &["LPUSH", "l1", "v"], "*2\r\n$2\r\nl1\r\n$1\r\nv\r\n"),
        (&["BLMOVE", "l2", "l3", "LEFT", "RIGHT", "5"], &["LPUSH", "l2", "m"], "$1\r\nm\r\n"),
        (&["BZPOPMIN", "z", "5"], &["ZADD", "z", "1", "a"], "*3\r\n$1\r\nz\r\n$1\r\na\r\n$1\r\n1\r\n"),
        (
            &["XREAD", "BLOCK", "5000", "STREAMS", "s", "$"],
            &["XADD", "s", "1-1", "f", "v"],
            "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
        ),
        (&["BRPOPLPUSH", "l4", "l5", "5"], &["LPUSH", "l4", "p"], "$1\r\np\r\n"),
    ];
    for (blocking, unblock, expected) in cases {
        let args: Vec<&[u8]> = blocking.iter().map(|s| s.as_bytes()).collect();
        a.cmd(&args).await;
        assert!(a.try_reply(Duration::from_millis(50)).await.is_none(), "{blocking:?} returned early");
        call(&mut b, unblock).await;
        assert_eq!(a.reply().await, expected, "{blocking:?}");
    }
    // WAIT with no replicas returns 0 after its timeout.
    assert_eq!(call(&mut a, &["WAIT", "1", "50"]).await, ":0\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_messages_as_they_are_published() {
    let redis = Redis::start();
    let proxy = proxy_with_one_connection(&redis).await;
    let mut sub = proxy.raw().await;
    let mut publisher = proxy.raw().await;
    // A command before SUBSCRIBE is answered first.
    sub.send(
        &[
            nearcache::framing::encode_command(&["SET", "before", "1"]),
            nearcache::framing::encode_command(&["SUBSCRIBE", "news", "sport"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(sub.reply().await, "+OK\r\n");
    assert_eq!(sub.reply().await, "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    assert_eq!(sub.reply().await, "*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n");
    assert_eq!(call(&mut sub, &["PSUBSCRIBE", "w*"]).await, "*3\r\n$10\r\npsubscribe\r\n$2\r\nw*\r\n:3\r\n");
    assert_eq!(call(&mut sub, &["SSUBSCRIBE", "shard"]).await, "*3\r\n$10\r\nssubscribe\r\n$5\r\nshard\r\n:1\r\n");
    for i in 0..3 {
        assert_eq!(call(&mut publisher, &["PUBLISH", "news", &format!("m{i}")]).await, ":1\r\n");
        assert_eq!(sub.reply().await, format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n"));
    }
    call(&mut publisher, &["PUBLISH", "weather", "sun"]).await;
    assert_eq!(sub.reply().await, "*4\r\n$8\r\npmessage\r\n$2\r\nw*\r\n$7\r\nweather\r\n$3\r\nsun\r\n");
    call(&mut publisher, &["SPUBLISH", "shard", "s"]).await;
    assert_eq!(sub.reply().await, "*3\r\n$8\r\nsmessage\r\n$5\r\nshard\r\n$1\r\ns\r\n");
    // PING in subscribed mode is answered the pub/sub way, by Redis.
    assert_eq!(call(&mut sub, &["PING"]).await, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // Publishing still flows while the subscriber is connected.
    assert_eq!(call(&mut publisher, &["GET", "before"]).await, "$1\r\n1\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscribers_get_push_messages() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut sub = proxy.raw().await;
    assert!(call(&mut sub, &["HELLO", "3"]).await.starts_with("%7"));
    assert_eq!(call(&mut sub, &["SUBSCRIBE", "c"]).await, ">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n");
    call(&mut proxy.raw().await, &["PUBLISH", "c", "hi"]).await;
    assert_eq!(sub.reply().await, ">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n");
    // RESP3 allows ordinary commands on a subscribed connection.
    assert_eq!(call(&mut sub, &["SET", "k", "v"]).await, "+OK\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_moves_the_client_to_another_db() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut raw = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut raw, &["SET", "k", "db0"]).await, "+OK\r\n");
    // Pipelined: SELECT applies to the commands right after it.
    raw.send(
        &[
            nearcache::framing::encode_command(&["SELECT", "5"]),
            nearcache::framing::encode_command(&["SET", "k", "db5"]),
            nearcache::framing::encode_command(&["GET", "k"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "$3\r\ndb5\r\n");
    assert_eq!(call(&mut direct, &["GET", "k"]).await, "$3\r\ndb0\r\n");
    assert_eq!(call(&mut direct, &["SELECT", "5"]).await, "+OK\r\n");
    assert_eq!(call(&mut direct, &["GET", "k"]).await, "$3\r\ndb5\r\n");
    // A transaction in db 5 stays in db 5, and so does the session after it.
    assert_eq!(call(&mut raw, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut raw, &["EXEC"]).await, "*1\r\n$3\r\ndb5\r\n");
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\ndb5\r\n");
    assert_eq!(call(&mut raw, &["SELECT", "99"]).await, "-ERR DB index is out of range\r\n");
    assert_eq!(call(&mut raw, &["SELECT", "0"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$3\r\ndb0\r\n");
    // The redis crate selects the db in its URL.
    let mut con = common::multiplexed(&format!("{}5", proxy.url())).await.unwrap();
    let value: String = redis::cmd("GET").arg("k").query_async(&mut con).await.unwrap();
    assert_eq!(value, "db5");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_commands() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut monitor = proxy.raw().await;
    assert_eq!(call(&mut monitor, &["MONITOR"]).await, "+OK\r\n");
    let mut other = proxy.raw().await;
    call(&mut other, &["SET", "watched-key", "1"]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = String::from_utf8_lossy(&monitor.reply().await).into_owned();
        if line.contains("\"watched-key\"") {
            assert!(line.contains("\"set\"") || line.contains("\"SET\""), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "MONITOR never showed the SET");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_doing_their_own_caching_get_their_invalidations() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut tracker = proxy.raw().await;
    assert!(call(&mut tracker, &["HELLO", "3"]).await.starts_with("%7"));
    assert_eq!(call(&mut tracker, &["CLIENT", "TRACKING", "ON"]).await, "+OK\r\n");
    let mut writer = proxy.raw().await;
    assert_eq!(call(&mut writer, &["SET", "tracked", "1"]).await, "+OK\r\n");
    // Its reads go to Redis on its own connection (not the tier), so Redis tracks them.
    assert_eq!(call(&mut tracker, &["GET", "tracked"]).await, "$1\r\n1\r\n");
    assert_eq!(call(&mut writer, &["SET", "tracked", "2"]).await, "+OK\r\n");
    assert_eq!(tracker.reply().await, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n");
    assert_eq!(call(&mut tracker, &["GET", "tracked"]).await, "$1\r\n2\r\n");
    proxy.stop().await;
}

/// A tracking connection's replies stay counted, one per request (INFO on it leaves out the
/// tier's tracking connection, as elsewhere): in RESP2 Redis sends it nothing else; switched to
/// RESP3, it gets its invalidation pushes among its replies, as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_client_stays_counted_and_gets_its_pushes() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;
    let mut tracker = proxy.raw().await;
    common::wait_for_caching(&mut tracker, &mut direct).await;
    assert_eq!(call(&mut tracker, &["CLIENT", "TRACKING", "ON"]).await, "+OK\r\n");
    let clients = |info: &str| info.lines().find_map(|l| l.strip_prefix("tracking_clients:")).map(str::to_owned);
    let direct_info = call(&mut direct, &["INFO", "clients"]).await;
    assert_eq!(clients(&direct_info).as_deref(), Some("2"), "{direct_info}");
    let info = call(&mut tracker, &["INFO", "clients"]).await;
    assert_eq!(clients(&info).as_deref(), Some("1"), "the client's own, not the tier's: {info}");
    let mut writer = proxy.raw().await;
    assert_eq!(call(&mut tracker, &["GET", "k"]).await, "$-1\r\n");
    assert_eq!(call(&mut writer, &["SET", "k", "1"]).await, "+OK\r\n");
    assert_eq!(call(&mut tracker, &["PING"]).await, "+PONG\r\n", "RESP2: no invalidation on this connection");
    assert!(call(&mut tracker, &["HELLO", "3"]).await.starts_with("%7"));
    assert_eq!(call(&mut tracker, &["GET", "k"]).await, "$1\r\n1\r\n");
    assert_eq!(call(&mut writer, &["SET", "k", "2"]).await, "+OK\r\n");
    assert_eq!(tracker.reply().await, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n");
    let info = call(&mut tracker, &["INFO", "clients"]).await;
    assert!(info.starts_with('=') && clients(&info).as_deref() == Some("1"), "RESP3 too: {info}");
    proxy.stop().await;
}

/// On a RESP3 tracking connection, an invalidation arriving while a PUNSUBSCRIBE waits for its
/// push, and the pushes Redis sends before RESET's reply (tracking ends with that reply, not when
/// RESET is sent), reach the client as Redis sends them (found by tests/crossing.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_beside_an_unsubscribe_and_before_reset_reach_the_client() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;
    let mut through = proxy.raw().await;
    let mut replies = Vec::new();
    for raw in [&mut direct, &mut through] {
        assert!(call(raw, &["HELLO", "3"]).await.starts_with("%7"));
        assert_eq!(call(raw, &["CLIENT", "TRACKING", "ON"]).await, "+OK\r\n");
        call(raw, &["GET", "k"]).await;
        let mut pipeline = Vec::new();
        for args in [&["SET", "k", "v"][..], &["PUNSUBSCRIBE", "ch"], &["RESET"], &["PING", "after"]] {
            pipeline.extend_from_slice(&nearcache::framing::encode_command(args));
        }
        raw.send(&pipeline).await;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(String::from_utf8_lossy(&raw.reply().await).into_owned());
        }
        replies.push(got);
    }
    assert_eq!(replies[1], replies[0], "through the proxy as directly");
    assert!(replies[0][1].contains("invalidate") && replies[0][2].contains("punsubscribe"), "{:?}", replies[0]);
    proxy.stop().await;
}

/// A client id the proxy shows is one the client can use: it is the id of the session's own
/// upstream connection, which the session keeps (in whatever db it moves to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_are_usable_for_unblock_redirect_and_kill() {
    let redis = Redis::start();
    let proxy = proxy_with_one_connection(&redis).await;
    let mut blocked = proxy.raw().await;
    let mut other = proxy.raw().await;
    let id = call(&mut blocked, &["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end().to_owned();
    // In another db, the same connection (and id).
    assert_eq!(call(&mut blocked, &["SELECT", "2"]).await, "+OK\r\n");
    blocked.cmd(&[b"BLPOP", b"q", b"0"]).await;
    until_reply(&mut other, &["CLIENT", "UNBLOCK", &id], "unblocked", |r| r == ":1\r\n").await;
    assert_eq!(blocked.reply().await, "*-1\r\n");
    assert_eq!(call(&mut blocked, &["CLIENT", "ID"]).await, format!(":{id}\r\n"));
    let info = call(&mut blocked, &["CLIENT", "INFO"]).await;
    assert!(info.contains(&format!("id={id} ")) && info.contains(" db=2 "), "{info}");

    // Tracking redirected to a client that subscribed to the invalidation channel.
    let mut redirect = proxy.raw().await;
    let rid = call(&mut redirect, &["CLIENT", "ID"]).await;
    let rid = rid.trim_start_matches(':').trim_end().to_owned();
    redirect.cmd(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await;
    assert!(String::from_utf8_lossy(&redirect.reply().await).contains("subscribe"));
    let mut tracked = proxy.raw().await;
    assert_eq!(call(&mut tracked, &["CLIENT", "TRACKING", "on", "REDIRECT", &rid]).await, "+OK\r\n");
    call(&mut tracked, &["GET", "watched"]).await;
    assert_eq!(call(&mut other, &["SET", "watched", "1"]).await, "+OK\r\n");
    let message = String::from_utf8_lossy(&redirect.reply().await).into_owned();
    assert!(message.contains("invalidate") && message.contains("watched"), "{message}");

    // CLIENT KILL ID closes that client, as it would directly.
    assert_eq!(call(&mut other, &["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    assert!(blocked.closed().await);
    proxy.stop().await;
}

/// Commands whose replies or effects a proxy can mispredict, each answered as Redis answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_commands_are_answered_as_redis_answers_them() {
    let redis = Redis::start();
    let proxy = proxy_with_one_connection(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;
    let mut other = proxy.raw().await;

    // REPLCONF ACK gets no reply at all: the next reply is the next command's, for this client
    // and for another on the same upstream connection.
    let mut raw = proxy.raw().await;
    raw.send(&[encode(&["REPLCONF", "ACK", "0"]), encode(&["PING", "after"])].concat()).await;
    assert_eq!(call(&mut other, &["SET", "k", "mine"]).await, "+OK\r\n");
    assert_eq!(raw.reply().await, "$5\r\nafter\r\n");
    assert_eq!(call(&mut other, &["GET", "k"]).await, "$4\r\nmine\r\n");

    // SUBSCRIBE queued in MULTI subscribes at EXEC; messages follow.
    let mut sub = proxy.raw().await;
    sub.send(&[encode(&["MULTI"]), encode(&["SUBSCRIBE", "c"]), encode(&["EXEC"])].concat()).await;
    assert_eq!(sub.reply().await, "+OK\r\n");
    assert_eq!(sub.reply().await, "+QUEUED\r\n");
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("subscribe"));
    until_reply(&mut direct, &["PUBLISH", "c", "hi"], "delivered", |r| r == ":1\r\n").await;
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("hi"));

    // QUIT on a subscribed connection: the replies before it, then +OK, then closed.
    sub.send(&[encode(&["SUBSCRIBE", "d"]), encode(&["QUIT"])].concat()).await;
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("subscribe"));
    assert_eq!(sub.reply().await, "+OK\r\n");
    assert!(sub.closed().await);

    // SUBSCRIBE right behind a command on an already pinned session.
    let mut watcher = proxy.raw().await;
    watcher.send(&[encode(&["WATCH", "w"]), encode(&["SUBSCRIBE", "e"])].concat()).await;
    assert_eq!(watcher.reply().await, "+OK\r\n");
    assert!(String::from_utf8_lossy(&watcher.reply().await).contains("subscribe"));

    // AUTH inside MULTI is Redis's to queue (no proxy users): the transaction stays whole.
    let mut tx = proxy.raw().await;
    assert_eq!(call(&mut tx, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut tx, &["SET", "t", "1"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut tx, &["AUTH", "pw"]).await, "+QUEUED\r\n");
    let exec = call(&mut tx, &["EXEC"]).await;
    assert!(exec.starts_with("*2\r\n+OK\r\n-ERR AUTH <password> called without"), "{exec}");
    proxy.stop().await;
}

fn encode(args: &[&str]) -> bytes::Bytes {
    nearcache::framing::encode_command(args)
}
