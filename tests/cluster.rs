//! The proxy in front of a real Redis Cluster (started by the tests): clients see one
//! standalone Redis; MOVED and ASK never reach them; the tier stays coherent when slots change
//! owner.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

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
    // INFO adds up the masters: the keyspace as one Redis would show it.
    let info = call(&mut raw, &["INFO", "keyspace"]).await;
    assert!(info.contains("db0:keys=30,expires=0"), "{info}");
    let listed = call(&mut raw, &["KEYS", "key:*"]).await;
    assert!(listed.starts_with("*30\r\n"), "{listed}");
    assert_eq!(call(&mut raw, &["DEL", "key:1", "key:2", "key:3", "missing"]).await, ":3\r\n");
    assert_eq!(call(&mut raw, &["DBSIZE"]).await, ":27\r\n");
    assert!(call(&mut raw, &["MSETNX", "a", "1", "b", "2"]).await.starts_with("-CROSSSLOT"));
    assert!(call(&mut raw, &["RENAME", "key:4", "key:5"]).await.starts_with("-CROSSSLOT"));
    assert_eq!(call(&mut raw, &["MSET", "{t}a", "1", "{t}b", "2"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["MGET", "{t}a", "{t}b"]).await, "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
    assert_eq!(call(&mut raw, &["PING"]).await, "+PONG\r\n");
    // SCAN walks every master, one after the other, with the master in the cursor.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_owned();
    loop {
        raw.cmd(&[b"SCAN", cursor.as_bytes(), b"COUNT", b"4"]).await;
        let page = String::from_utf8_lossy(&raw.reply().await).into_owned();
        let lines: Vec<&str> = page.split("\r\n").collect();
        cursor = lines[2].to_owned();
        seen.extend(lines[4..].iter().filter(|l| !l.starts_with('$') && !l.is_empty()).map(|l| l.to_string()));
        if cursor == "0" {
            break;
        }
    }
    let mut all: std::collections::BTreeSet<String> =
        keys.iter().filter(|k| !["key:1", "key:2", "key:3"].contains(&k.as_str())).cloned().collect();
    all.extend(["{t}a".to_owned(), "{t}b".to_owned()]);
    assert_eq!(seen, all);
    let sha = call(&mut raw, &["SCRIPT", "LOAD", "return 7"]).await;
    let sha = sha.lines().nth(1).unwrap().to_owned();
    // Loaded on every master: EVALSHA works whichever node the key is on.
    for key in ["key:7", "key:8", "key:9", "key:10"] {
        assert_eq!(call(&mut raw, &["EVALSHA", &sha, "1", key]).await, ":7\r\n");
    }

    // FUNCTION LOAD on every master: FCALL works whichever node the key is on.
    let library = "#!lua name=lib\nredis.register_function('seven', function(keys, args) return 7 end)";
    assert_eq!(call(&mut raw, &["FUNCTION", "LOAD", library]).await, "$3\r\nlib\r\n");
    for key in ["key:7", "key:8", "key:9", "key:10"] {
        assert_eq!(call(&mut raw, &["FCALL", "seven", "1", key]).await, ":7\r\n");
    }
    assert_eq!(call(&mut raw, &["FUNCTION", "FLUSH"]).await, "+OK\r\n");

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

    // With cluster_split_mset, MSET across slots is split per slot instead of refused.
    let mut split = config(&cluster);
    split.upstream.cluster_split_mset = true;
    let proxy = Proxy::start(split).await;
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["MSET", "a", "1", "b", "2", "c", "3"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["MGET", "a", "b", "c"]).await, "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n");
    for (key, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(direct(cluster.owner_of(key), &["GET", key]), value);
    }
    proxy.stop().await;
}

/// Eight clients pipeline 1 KiB APPENDs alternating between keys of two nodes, with four
/// connections per node: a batch goes out while an earlier one of the same client is
/// unanswered, and every part must stay on the connection index its client's requests use, or
/// Redis runs them out of order (the APPEND lengths and the values show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_pipelines_run_in_order_on_every_node() {
    const APPENDS: usize = 60;
    let cluster = Cluster::start(3, 0);
    let mut config = config(&cluster);
    config.upstream.connections = 4;
    let proxy = Proxy::start(config).await;
    let (a, b) = keys_on_two_nodes(&cluster, "order");
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (url, a, b) = (proxy.url(), a.clone(), b.clone());
            tokio::spawn(async move {
                let mut con = common::multiplexed(&url).await.unwrap();
                for round in 0..4 {
                    // Hash tags keep each key on the node of `a` or `b`.
                    let keys = [format!("{{{a}}}:{c}:{round}"), format!("{{{b}}}:{c}:{round}")];
                    common::appends_stay_in_order(&mut con, &keys, APPENDS, &format!("client {c} round {round}")).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
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
    // Shard channels: on the node of the channel's slot, subscriber and publisher alike.
    for channel in [&k1, &k2] {
        let mut subscriber = proxy.raw().await;
        assert!(call(&mut subscriber, &["SSUBSCRIBE", channel]).await.contains("ssubscribe"));
        common::until_reply(&mut raw, &["SPUBLISH", channel, "shard"], "a shard subscriber", |r| r == ":1\r\n").await;
        assert!(String::from_utf8_lossy(&subscriber.reply().await).contains("shard"));
    }
    assert_eq!(call(&mut raw, &["SELECT", "1"]).await, "-ERR SELECT is not allowed in cluster mode\r\n");
    assert_eq!(call(&mut raw, &["SELECT", "0"]).await, "+OK\r\n");
    proxy.stop().await;
}

/// `redis-cli --cluster reshard` of 300 slots while four writers and four readers run through
/// the proxy: no client sees MOVED, ASK or any error, and no read returns a value older than
/// the last write acknowledged before it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_is_invisible() {
    let cluster = Cluster::start(3, 0);
    let proxy = Proxy::start(config(&cluster)).await;
    let masters = cluster.masters();
    // The slots moved are the first master's first ones: keys there are written and read.
    let from = cluster.owner_of_slot(0);
    let to = *masters.iter().find(|&&p| p != from).unwrap();
    let keys: Vec<String> =
        (0..4000).map(|i| format!("r:{i}")).filter(|k| nearcache::cluster::map::slot_of(k.as_bytes()) < 300).collect();
    assert!(keys.len() >= 40, "{} keys in the moved slots", keys.len());
    let (load, tasks) = Load::start(proxy.addr, keys.into_iter().take(40).collect(), 4, &cluster);
    // Load runs before, during and after the resharding.
    load.progress(100).await;
    let (from_id, to_id) = (cluster.id_of(from), cluster.id_of(to));
    let seed = cluster.nodes[0].addr();
    let resharded = tokio::task::spawn_blocking(move || {
        cli(&[
            "--cluster",
            "reshard",
            &seed,
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            "300",
            "--cluster-yes",
            "--cluster-pipeline",
            "5",
        ])
    })
    .await
    .unwrap();
    assert!(resharded.is_some(), "redis-cli --cluster reshard failed");
    cluster.wait_agreed();
    load.progress(200).await;
    load.finish(tasks).await;
    assert_eq!(cluster.owner_of_slot(0), to, "slot 0 moved");
    let mut raw = proxy.raw().await;
    let info = call(&mut raw, &["PROXY", "INFO"]).await;
    println!(
        "resharded 300 slots under load: {} writes, {} reads through the proxy; {}",
        load.writes.load(Ordering::Relaxed),
        load.reads.load(Ordering::Relaxed),
        info.lines().filter(|l| l.starts_with("cluster_")).collect::<Vec<_>>().join(" ")
    );
    proxy.stop().await;
}

/// One shard hung (CLIENT PAUSE) does not hold up requests for the others; one shard killed
/// fails fast on its own (its breaker opens, naming it), its cached keys are served stale
/// under serve_stale, and the other shards run normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_fails_alone() {
    let mut cluster = Cluster::start(3, 0);
    let mut config = config(&cluster);
    config.cache.serve_stale = nearcache::config::Span(Duration::from_secs(60));
    let metrics = format!("127.0.0.1:{}", common::free_port());
    config.metrics.address = metrics.clone();
    let proxy = Proxy::start(config).await;
    common::until_http(&metrics, "/readyz", 200).await;
    let mut raw = proxy.raw().await;
    let (down, up) = keys_on_two_nodes(&cluster, "shard");
    let (down_port, up_port) = (cluster.owner_of(&down), cluster.owner_of(&up));
    for key in [&down, &up] {
        assert_eq!(call(&mut raw, &["SET", key, "v"]).await, "+OK\r\n");
    }
    let deadline = Instant::now() + PATIENCE;
    while !call(&mut raw, &["PROXY", "CACHE", "INSPECT", &down]).await.contains("GET") {
        call(&mut raw, &["GET", &down]).await;
        assert!(Instant::now() < deadline, "never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Hung (its clients paused): a write to that shard waits; writes to another shard are
    // answered meanwhile.
    assert_eq!(direct(down_port, &["CLIENT", "PAUSE", "3000"]), "OK");
    let slow = tokio::spawn({
        let (addr, key) = (proxy.addr, down.clone());
        async move {
            let mut raw = Raw::connect(addr).await;
            call(&mut raw, &["SET", &key, "w"]).await
        }
    });
    let mut fast = proxy.raw().await;
    for _ in 0..50 {
        assert_eq!(call(&mut fast, &["SET", &up, "u"]).await, "+OK\r\n");
    }
    assert!(!slow.is_finished(), "the busy shard answered before the other shard's 50 writes");
    assert_eq!(slow.await.unwrap(), "+OK\r\n");
    // The write through the proxy dropped the entry; cached again.
    let deadline = Instant::now() + PATIENCE;
    while !call(&mut raw, &["PROXY", "CACHE", "INSPECT", &down]).await.contains("GET") {
        call(&mut raw, &["GET", &down]).await;
        assert!(Instant::now() < deadline, "never cached again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed: its breaker opens; its writes fail at once naming it; its cached key is served.
    cluster.kill(down_port);
    let other = format!("{{{down}}}other");
    let refused =
        common::until_reply(&mut raw, &["SET", &other, "x"], "refused fast", |r| r.contains("circuit breaker open"))
            .await;
    assert!(refused.contains(&down_port.to_string()), "{refused}");
    assert_eq!(call(&mut raw, &["GET", &down]).await, "$1\r\nw\r\n", "served stale");
    assert_eq!(call(&mut raw, &["SET", &up, "still"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["GET", &up]).await, "$5\r\nstill\r\n");
    let nodes = call(&mut raw, &["PROXY", "CLUSTER", "NODES"]).await;
    assert!(nodes.contains(&format!("127.0.0.1:{down_port} master slots=")), "{nodes}");
    assert!(nodes.lines().any(|l| l.contains(&down_port.to_string()) && l.contains("breaker=open")), "{nodes}");
    assert!(nodes.lines().any(|l| l.contains(&up_port.to_string()) && l.contains("breaker=closed")), "{nodes}");
    // Not ready while a master's breaker is open, and it says which.
    let body = common::until_http(&metrics, "/readyz", 503).await;
    assert!(body.contains(&format!("cluster node 127.0.0.1:{down_port}")), "{body}");
    proxy.stop().await;
}

/// A replica of `master` (its port).
fn replica_of(cluster: &Cluster, master: u16) -> u16 {
    let id = cluster.id_of(master);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(node) = cluster.nodes.iter().find(|n| {
            n.port != master && direct(n.port, &["CLUSTER", "MYID"]) != id && {
                let role = direct(n.port, &["ROLE"]);
                role.starts_with("slave") && role.contains(&master.to_string())
            }
        }) {
            return node.port;
        }
        assert!(Instant::now() < deadline, "no replica of {master}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writers and readers on keys of every shard through the proxy while a replica takes over
/// with CLUSTER FAILOVER, then while a master is killed: no client sees MOVED or ASK; across
/// the graceful failover nothing fails and no read is older than a write acknowledged before
/// it; after the kill, the dead shard's requests fail (its breaker opens) until its replica is
/// promoted, then succeed again (the breaker of the new master is closed) by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_are_followed() {
    let mut cluster = Cluster::start(3, 1);
    let proxy = Proxy::start(config(&cluster)).await;
    let (load, tasks) = Load::start(proxy.addr, (0..24).map(|i| format!("f:{i}")).collect(), 3, &cluster);
    load.progress(100).await;
    // Graceful: the replica of slot 0's master takes over.
    let master = cluster.owner_of_slot(0);
    let replica = replica_of(&cluster, master);
    assert_eq!(direct(replica, &["CLUSTER", "FAILOVER"]), "OK");
    let deadline = Instant::now() + PATIENCE * 3;
    while cluster.owner_of_slot(0) != replica {
        assert!(Instant::now() < deadline, "the failover never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.progress(300).await;
    let mut raw = proxy.raw().await;
    common::until_reply(&mut raw, &["PROXY", "CLUSTER", "SLOTS"], "the new owner", |r| {
        r.lines().nth(1).is_some_and(|l| l.starts_with("0-") && l.ends_with(&format!(":{replica}")))
    })
    .await;
    // Killed: the shard fails until its replica is promoted, then works again by itself.
    load.tolerate.store(true, Ordering::Relaxed);
    let victim = cluster.owner_of_slot(0);
    let successor = replica_of(&cluster, victim);
    cluster.kill(victim);
    let deadline = Instant::now() + PATIENCE * 3;
    while cluster.owner_of_slot(0) != successor {
        assert!(Instant::now() < deadline, "the replica was never promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every key writable again through the proxy.
    for key in load.keys.iter() {
        common::until_reply(&mut raw, &["SET", key, "after"], "a write after the failover", |r| r == "+OK\r\n").await;
    }
    load.finish(tasks).await;
    let nodes = call(&mut raw, &["PROXY", "CLUSTER", "NODES"]).await;
    assert!(
        nodes.lines().any(|l| l.contains(&format!(":{successor} master")) && l.contains("breaker=closed")),
        "{nodes}"
    );
    println!(
        "failovers: {} writes acknowledged, {} refused while the killed shard had no master; {}",
        load.writes.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        call(&mut raw, &["PROXY", "INFO", "cluster"]).await.replace("\r\n", " ")
    );
    proxy.stop().await;
}

/// Writers and readers through the proxy. Each writer SETs its keys (every `writers`th) to an
/// increasing number and records what was acknowledged; each reader checks that no GET returns
/// less than what was acknowledged for its key before the GET was sent. No client may see MOVED
/// or ASK, nor any error; while `tolerate` is set (a shard has no master), failed writes are
/// counted and reads not checked.
struct Load {
    keys: Vec<String>,
    acked: Vec<AtomicU64>,
    stop: AtomicBool,
    tolerate: AtomicBool,
    writes: AtomicU64,
    failed: AtomicU64,
    reads: AtomicU64,
    /// Every node, to show their values when a read is stale.
    ports: Vec<u16>,
}

impl Load {
    /// `writers` writers and as many readers, running until [`Load::finish`].
    fn start(
        addr: SocketAddr,
        keys: Vec<String>,
        writers: usize,
        cluster: &Cluster,
    ) -> (Arc<Load>, Vec<JoinHandle<()>>) {
        let load = Arc::new(Load {
            acked: keys.iter().map(|_| AtomicU64::new(0)).collect(),
            keys,
            stop: AtomicBool::new(false),
            tolerate: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            ports: cluster.nodes.iter().map(|n| n.port).collect(),
        });
        let mut tasks: Vec<JoinHandle<()>> =
            (0..writers).map(|w| tokio::spawn(load.clone().write(addr, w, writers))).collect();
        tasks.extend((0..writers).map(|r| tokio::spawn(load.clone().read(addr, r))));
        (load, tasks)
    }

    async fn write(self: Arc<Self>, addr: SocketAddr, first: usize, every: usize) {
        let mut raw = Raw::connect(addr).await;
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            for i in (first..self.keys.len()).step_by(every) {
                let reply = call(&mut raw, &["SET", &self.keys[i], &n.to_string()]).await;
                assert!(!reply.contains("MOVED") && !reply.contains("ASK "), "{reply}");
                if reply == "+OK\r\n" {
                    self.acked[i].store(n, Ordering::Release);
                    self.writes.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert!(self.tolerate.load(Ordering::Relaxed), "write of {} failed: {reply}", self.keys[i]);
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    async fn read(self: Arc<Self>, addr: SocketAddr, first: usize) {
        let mut raw = Raw::connect(addr).await;
        let mut i = first;
        while !self.stop.load(Ordering::Relaxed) {
            i = (i + 7) % self.keys.len();
            let key = &self.keys[i];
            let floor = self.acked[i].load(Ordering::Acquire);
            let reply = call(&mut raw, &["GET", key]).await;
            assert!(!reply.contains("MOVED") && !reply.contains("ASK "), "{reply}");
            if self.tolerate.load(Ordering::Relaxed) {
                continue;
            }
            let value = match reply.as_str() {
                "$-1\r\n" => 0,
                reply if reply.starts_with('$') => reply.lines().nth(1).unwrap().parse::<u64>().unwrap(),
                other => panic!("read of {key}: {other:?}"),
            };
            if value < floor {
                let (ports, owned) = (self.ports.clone(), key.clone());
                let nodes = tokio::task::spawn_blocking(move || {
                    let node = |p: &u16| {
                        format!(
                            "{p}: {} {}",
                            direct(*p, &["ROLE"]).lines().next().unwrap_or(""),
                            direct(*p, &["GET", &owned])
                        )
                    };
                    ports.iter().map(node).collect::<Vec<_>>().join("; ")
                });
                panic!("stale read of {key}: {value} after {floor} was acknowledged; nodes: {}", nodes.await.unwrap());
            }
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until `more` further writes were acknowledged.
    async fn progress(&self, more: u64) {
        let from = self.writes.load(Ordering::Relaxed);
        let deadline = Instant::now() + PATIENCE * 3;
        while self.writes.load(Ordering::Relaxed) < from + more {
            assert!(Instant::now() < deadline, "writes did not go on");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(&self, tasks: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
    }
}
