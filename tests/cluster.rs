//! The proxy in front of a real Redis Cluster (started by the tests): clients see one
//! standalone Redis; MOVED and ASK never reach them; the tier stays coherent when slots change
//! owner.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, cli};
use common::{PATIENCE, Proxy, Raw, call, config_for};

fn config(cluster: &Cluster) -> nearcache::config::Config {
    let mut config = config_for("127.0.0.1:6379");
    config.upstream.cluster = cluster.seeds();
    config
}

/// Direct to one node (`redis-cli -p`), no redirections followed.
fn direct(port: u16, args: &[&str]) -> String {
    let mut all = vec!["-p".to_owned(), port.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    cli(&all).unwrap_or_default().trim().to_owned()
}

/// Commands with keys in every slot range go to their node; multi-key commands across slots
/// are split and joined in order; whole-dataset commands cover every master; atomic commands
/// across slots get Redis Cluster's CROSSSLOT; six clients pipelining at once each get their own
/// replies in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_one_redis() {
    let cluster = Cluster::start(3, 0);
    let proxy = Proxy::start(config(&cluster)).await;
    let mut raw = proxy.raw().await;
    let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        assert_eq!(call(&mut raw, &["SET", key, &format!("v-{key}")]).await, "+OK\r\n");
    }
    // Each key is on the node Redis Cluster says owns it.
    for key in &keys {
        assert_eq!(direct(cluster.owner_of(key), &["GET", key]), format!("v-{key}"), "{key}");
    }
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("missing");
    let mut expected = format!("*{}\r\n", keys.len() + 1);
    for key in &keys {
        let value = format!("v-{key}");
        expected.push_str(&format!("${}\r\n{value}\r\n", value.len()));
    }
    expected.push_str("$-1\r\n");
    assert_eq!(call(&mut raw, &mget).await, expected);
    assert_eq!(call(&mut raw, &["EXISTS", "key:1", "key:2", "key:1", "missing"]).await, ":3\r\n");
    assert_eq!(call(&mut raw, &["DBSIZE"]).await, ":30\r\n");
    let listed = call(&mut raw, &["KEYS", "key:*"]).await;
    assert!(listed.starts_with("*30\r\n"), "{listed}");
    assert_eq!(call(&mut raw, &["DEL", "key:1", "key:2", "key:3", "missing"]).await, ":3\r\n");
    assert_eq!(call(&mut raw, &["DBSIZE"]).await, ":27\r\n");
    assert!(call(&mut raw, &["MSETNX", "a", "1", "b", "2"]).await.starts_with("-CROSSSLOT"));
    assert!(call(&mut raw, &["RENAME", "key:4", "key:5"]).await.starts_with("-CROSSSLOT"));
    assert_eq!(call(&mut raw, &["MSET", "{t}a", "1", "{t}b", "2"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["MGET", "{t}a", "{t}b"]).await, "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
    assert_eq!(call(&mut raw, &["PING"]).await, "+PONG\r\n");
    let sha = call(&mut raw, &["SCRIPT", "LOAD", "return 7"]).await;
    let sha = sha.lines().nth(1).unwrap().to_owned();
    // Loaded on every master: EVALSHA works whichever node the key is on.
    for key in ["key:7", "key:8", "key:9", "key:10"] {
        assert_eq!(call(&mut raw, &["EVALSHA", &sha, "1", key]).await, ":7\r\n");
    }

    // Six clients pipeline 200 commands each over keys of every node at once.
    let mut tasks = Vec::new();
    for c in 0..6 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            let mut pipeline = Vec::new();
            for i in 0..100 {
                let key = format!("c{c}:{i}");
                pipeline.extend_from_slice(&nearcache::framing::encode_command(&["SET", &key, &format!("{c}-{i}")]));
                pipeline.extend_from_slice(&nearcache::framing::encode_command(&["GET", &key]));
            }
            raw.send(&pipeline).await;
            for i in 0..100 {
                assert_eq!(&raw.reply().await[..], b"+OK\r\n");
                let value = format!("{c}-{i}");
                assert_eq!(raw.reply().await, format!("${}\r\n{value}\r\n", value.len()));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(call(&mut raw, &["FLUSHALL"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["DBSIZE"]).await, ":0\r\n");
    proxy.stop().await;
}

/// A slot taken over by another node without MIGRATE (`CLUSTER SETSLOT ... NODE` on the new
/// owner and a bumped epoch: the old owner drops its keys of the slot, and Redis 7.0 sends no
/// invalidation for that): writes through the proxy follow the MOVED they meet, no client sees
/// MOVED, and once the proxy's map has the new owner no cached value of the old one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_change_is_followed_and_drops_the_slot() {
    let cluster = Cluster::start(3, 0);
    let proxy = Proxy::start(config(&cluster)).await;
    let mut raw = proxy.raw().await;
    let key = "moving";
    assert_eq!(call(&mut raw, &["SET", key, "old"]).await, "+OK\r\n");
    let from = cluster.owner_of(key);
    let to = cluster.masters().into_iter().find(|&p| p != from).unwrap();
    // Cached through the proxy (tracking on every node comes up after start).
    let deadline = Instant::now() + PATIENCE;
    loop {
        call(&mut raw, &["GET", key]).await;
        let inspected = call(&mut raw, &["PROXY", "CACHE", "INSPECT", key]).await;
        if inspected.contains("GET") {
            break;
        }
        assert!(Instant::now() < deadline, "never cached: {inspected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slot = direct(from, &["CLUSTER", "KEYSLOT", key]);
    direct(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &cluster.id_of(to)]);
    direct(to, &["CLUSTER", "BUMPEPOCH"]);
    let deadline = Instant::now() + PATIENCE;
    while cluster.owner_of_slot(slot.parse().unwrap()) != to || direct(from, &["DBSIZE"]) != "0" {
        assert!(Instant::now() < deadline, "the old owner never gave the slot up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A write through the proxy meets MOVED and is followed to the new owner.
    assert_eq!(call(&mut raw, &["SET", "{moving}other", "x"]).await, "+OK\r\n");
    assert_eq!(direct(to, &["GET", "{moving}other"]), "x");
    // No stale read: the map was read again after the MOVED, and the slot's entries dropped.
    common::until_reply(&mut raw, &["GET", key], "the new owner's view", |r| r == "$-1\r\n").await;
    direct(to, &["SET", key, "new"]);
    common::until_reply(&mut raw, &["GET", key], "the new owner's value", |r| r == "$3\r\nnew\r\n").await;
    proxy.stop().await;
}

/// Two keys whose slots two different masters own.
fn keys_on_two_nodes(cluster: &Cluster, prefix: &str) -> (String, String) {
    let first = format!("{prefix}:0");
    let owner = cluster.owner_of(&first);
    let second = (1..).map(|i| format!("{prefix}:{i}")).find(|k| cluster.owner_of(k) != owner).unwrap();
    (first, second)
}

/// Transactions, WATCH, blocking commands, scripts and pub/sub run on the node of their keys,
/// pipelined or not; a transaction whose keys are on two nodes is refused at queue time with
/// CROSSSLOT and aborted at EXEC, as Redis Cluster does; SELECT is refused as it refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_on_the_node_of_their_keys() {
    let cluster = Cluster::start(3, 0);
    let proxy = Proxy::start(config(&cluster)).await;
    let mut raw = proxy.raw().await;
    for i in 0..6 {
        let key = format!("tx:{i}");
        // One command at a time, as redis-cli sends them: MULTI is answered before the key is known.
        assert_eq!(call(&mut raw, &["MULTI"]).await, "+OK\r\n");
        assert_eq!(call(&mut raw, &["SET", &key, "1"]).await, "+QUEUED\r\n");
        assert_eq!(call(&mut raw, &["INCR", &key]).await, "+QUEUED\r\n");
        assert_eq!(call(&mut raw, &["EXEC"]).await, "*2\r\n+OK\r\n:2\r\n");
        assert_eq!(direct(cluster.owner_of(&key), &["GET", &key]), "2");
    }
    // Pipelined, as client libraries send a transaction.
    let mut pipeline = Vec::new();
    for args in [&["MULTI"][..], &["SET", "p:1", "a"], &["GET", "p:1"], &["EXEC"]] {
        pipeline.extend_from_slice(&nearcache::framing::encode_command(args));
    }
    raw.send(&pipeline).await;
    for expected in ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "*2\r\n+OK\r\n$1\r\na\r\n"] {
        assert_eq!(String::from_utf8_lossy(&raw.reply().await), expected);
    }
    let (k1, k2) = keys_on_two_nodes(&cluster, "two");
    assert_eq!(call(&mut raw, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["SET", &k1, "1"]).await, "+QUEUED\r\n");
    assert!(call(&mut raw, &["SET", &k2, "1"]).await.starts_with("-CROSSSLOT"));
    assert!(call(&mut raw, &["EXEC"]).await.starts_with("-EXECABORT"));
    assert_eq!(call(&mut raw, &["WATCH", &k2]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["SET", &k2, "w"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut raw, &["EXEC"]).await, "*1\r\n+OK\r\n");
    // Scripts and blocking commands on keys of every node.
    for key in [&k1, &k2] {
        let got = call(&mut raw, &["EVAL", "return redis.call('SET', KEYS[1], 'e')", "1", key]).await;
        assert_eq!(got, "+OK\r\n");
        assert_eq!(direct(cluster.owner_of(key), &["GET", key]), "e");
        let list = format!("{{{key}}}list");
        let mut pusher = proxy.raw().await;
        let blocked = tokio::spawn({
            let addr = proxy.addr;
            let list = list.clone();
            async move {
                let mut raw = Raw::connect(addr).await;
                call(&mut raw, &["BLPOP", &list, "0"]).await
            }
        });
        // Pushed until the blocked client got it (it may not be blocked yet at the first push).
        let deadline = Instant::now() + PATIENCE;
        while !blocked.is_finished() {
            call(&mut pusher, &["RPUSH", &list, "x"]).await;
            assert!(Instant::now() < deadline, "BLPOP never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(blocked.await.unwrap().contains("x"));
    }
    // Pub/sub: any node (Redis Cluster carries PUBLISH to every node).
    let mut subscriber = proxy.raw().await;
    assert!(call(&mut subscriber, &["SUBSCRIBE", "news"]).await.contains("subscribe"));
    common::until_reply(&mut raw, &["PUBLISH", "news", "hi"], "a subscriber", |r| r == ":1\r\n").await;
    assert!(String::from_utf8_lossy(&subscriber.reply().await).contains("hi"));
    assert_eq!(call(&mut raw, &["SELECT", "1"]).await, "-ERR SELECT is not allowed in cluster mode\r\n");
    assert_eq!(call(&mut raw, &["SELECT", "0"]).await, "+OK\r\n");
    proxy.stop().await;
}
