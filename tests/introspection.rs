//! CLIENT LIST, CLIENT INFO and CLIENT KILL through the proxy show and act on the proxy's own
//! clients, the way Redis shows and acts on its own (compared with a direct client's line).

mod common;

use common::{Proxy, Raw, Redis, call};

/// `field=value` pairs of one CLIENT LIST line, in order.
fn fields(line: &str) -> Vec<(String, String)> {
    line.split(' ').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn field(line: &str, name: &str) -> String {
    fields(line).into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// The lines of a CLIENT LIST / CLIENT INFO reply (a bulk string).
fn lines(reply: &str) -> Vec<String> {
    assert!(reply.starts_with('$'), "{reply}");
    reply.split("\r\n").nth(1).unwrap().lines().map(str::to_owned).collect()
}

fn local_addr(raw: &Raw) -> String {
    raw.stream.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn client_list_shows_the_proxys_clients_as_redis_shows_its_own() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    // What Redis prints for a direct client in the same state.
    let mut direct = Raw::connect(redis.addr()).await;
    call(&mut direct, &["CLIENT", "SETNAME", "alpha"]).await;
    call(&mut direct, &["SELECT", "2"]).await;
    let redis_line = lines(&call(&mut direct, &["CLIENT", "INFO"]).await).remove(0);

    let mut a = proxy.raw().await;
    call(&mut a, &["CLIENT", "SETNAME", "alpha"]).await;
    call(&mut a, &["SELECT", "2"]).await;
    let mut b = proxy.raw().await;
    call(&mut b, &["CLIENT", "SETNAME", "beta"]).await;
    call(&mut b, &["MULTI"]).await;
    call(&mut b, &["SET", "k", "1"]).await;
    call(&mut b, &["INCR", "n"]).await;
    let mut c = proxy.raw().await;
    call(&mut c, &["SUBSCRIBE", "news", "sport"]).await;
    c.reply().await;
    call(&mut c, &["PSUBSCRIBE", "n*"]).await;

    let list = lines(&call(&mut a, &["CLIENT", "LIST"]).await);
    assert_eq!(list.len(), 3, "the proxy's three clients, nothing of its pooled connections: {list:?}");
    // INFO agrees (Redis itself counts the proxy's connections, and the direct client).
    let info = call(&mut a, &["INFO", "clients"]).await;
    assert!(info.contains("\r\nconnected_clients:3\r\n"), "{info}");
    assert!(call(&mut direct, &["INFO", "clients"]).await.contains("\r\nconnected_clients:"));
    let line_of = |raw: &Raw| list.iter().find(|l| field(l, "addr") == local_addr(raw)).cloned().unwrap();
    let (a_line, b_line, c_line) = (line_of(&a), line_of(&b), line_of(&c));
    // Redis's fields, in Redis's order.
    let names = |line: &str| fields(line).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(names(&a_line), names(&redis_line));
    // The same values as Redis shows for a client in the same state.
    for name in ["name", "db", "flags", "sub", "psub", "multi", "user", "redir", "resp", "events"] {
        assert_eq!(field(&a_line, name), field(&redis_line, name), "{name}: {a_line} vs {redis_line}");
    }
    assert_eq!(field(&a_line, "cmd"), "client|list");
    assert_eq!(field(&redis_line, "cmd"), "client|info");
    assert_eq!(field(&a_line, "laddr"), proxy.addr.to_string());
    assert_eq!(
        (field(&b_line, "name"), field(&b_line, "flags"), field(&b_line, "multi")),
        ("beta".into(), "x".into(), "2".into())
    );
    assert_eq!(field(&b_line, "cmd"), "incr");
    assert_eq!((field(&c_line, "flags"), field(&c_line, "cmd")), ("P".into(), "psubscribe".into()));
    assert_eq!((field(&c_line, "sub"), field(&c_line, "psub")), ("2".into(), "1".into()), "{c_line}");

    // Filters.
    let pubsub = lines(&call(&mut a, &["CLIENT", "LIST", "TYPE", "pubsub"]).await);
    assert_eq!(pubsub.len(), 1);
    assert_eq!(field(&pubsub[0], "addr"), local_addr(&c));
    assert_eq!(lines(&call(&mut a, &["CLIENT", "LIST", "TYPE", "normal"]).await).len(), 2);
    assert_eq!(call(&mut a, &["CLIENT", "LIST", "TYPE", "master"]).await, "$0\r\n\r\n");

    // CLIENT ID, CLIENT INFO and CLIENT LIST agree.
    let id = call(&mut a, &["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end().to_owned();
    let info = lines(&call(&mut a, &["CLIENT", "INFO"]).await).remove(0);
    assert_eq!(field(&info, "id"), id);
    assert_eq!(field(&info, "addr"), local_addr(&a));
    assert_eq!(field(&info, "cmd"), "client|info");
    let only = lines(&call(&mut a, &["CLIENT", "LIST", "ID", &id]).await);
    assert_eq!(only.len(), 1);
    assert_eq!(field(&only[0], "name"), "alpha");
    assert!(call(&mut a, &["CLIENT", "LIST", "ID", "0"]).await.starts_with("-ERR"));
    assert!(call(&mut a, &["CLIENT", "LIST", "TYPE", "bogus"]).await.starts_with("-ERR Unknown client type"));
}

#[tokio::test]
async fn client_kill_filters_act_on_the_proxys_clients() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;
    let mut me = proxy.raw().await;
    let mut by_id = proxy.raw().await;
    let mut by_addr = proxy.raw().await;
    let mut old_form = proxy.raw().await;
    let mut rest: Vec<Raw> = Vec::new();
    for _ in 0..3 {
        let mut raw = proxy.raw().await;
        call(&mut raw, &["PING"]).await;
        rest.push(raw);
    }

    let id = call(&mut by_id, &["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end().to_owned();
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    assert!(by_id.closed().await, "killed by id");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "ADDR", &local_addr(&by_addr)]).await, ":1\r\n");
    assert!(by_addr.closed().await, "killed by address");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", &local_addr(&old_form)]).await, "+OK\r\n");
    assert!(old_form.closed().await, "killed by the old form");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "127.0.0.1:1"]).await, "-ERR No such client\r\n");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "ADDR", "127.0.0.1:1"]).await, ":0\r\n");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "LADDR", "127.0.0.1:1"]).await, ":0\r\n");
    for raw in &mut rest {
        assert_eq!(call(raw, &["PING"]).await, "+PONG\r\n", "the others are untouched");
    }

    // Errors as Redis gives them.
    assert_eq!(
        call(&mut me, &["CLIENT", "KILL"]).await,
        "-ERR wrong number of arguments for 'client|kill' command\r\n"
    );
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "ID", "0"]).await, "-ERR client-id should be greater than 0\r\n");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "TYPE", "wrong"]).await, "-ERR Unknown client type 'wrong'\r\n");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "SKIPME", "maybe"]).await, "-ERR syntax error\r\n");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "ID", "10", "extra"]).await, "-ERR syntax error\r\n");

    // A client logged in as one of Redis's ACL users is listed and killed as that user.
    call(&mut direct, &["ACL", "SETUSER", "alice", "on", ">pw", "~*", "+@all"]).await;
    let mut alice = proxy.raw().await;
    assert_eq!(call(&mut alice, &["AUTH", "alice", "pw"]).await, "+OK\r\n");
    let info = lines(&call(&mut alice, &["CLIENT", "INFO"]).await).remove(0);
    assert_eq!(field(&info, "user"), "alice");
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "USER", "alice"]).await, ":1\r\n");
    assert!(alice.closed().await);
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "USER", "nobody"]).await, "-ERR No such user 'nobody'\r\n");

    // USER default, skipping the caller: every other client of the proxy, none of Redis's.
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "USER", "default"]).await, format!(":{}\r\n", rest.len()));
    for raw in &mut rest {
        assert!(raw.closed().await);
    }
    assert_eq!(call(&mut direct, &["PING"]).await, "+PONG\r\n", "Redis's own clients are not the proxy's");
    // SKIPME no: the caller too, after its reply.
    assert_eq!(call(&mut me, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"]).await, ":1\r\n");
    assert!(me.closed().await);
}

/// MONITOR through the proxy shows what clients sent, not the proxy's own commands (the PTTL it
/// reads with a read it caches, its handshakes).
#[tokio::test]
async fn monitor_shows_the_clients_commands_not_the_proxys() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    common::wait_for_caching(&mut client, &mut direct).await;
    let mut monitor = proxy.raw().await;
    assert_eq!(call(&mut monitor, &["MONITOR"]).await, "+OK\r\n");

    call(&mut client, &["SET", "foo", "bar"]).await;
    call(&mut client, &["GET", "foo"]).await; // a miss: PTTL foo, then GET foo, upstream
    call(&mut client, &["PTTL", "foo"]).await; // the client's own PTTL is shown
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.contains("\"PTTL\"")) {
        let line = monitor.reply().await;
        seen.push(String::from_utf8_lossy(&line).into_owned());
    }
    let commands: Vec<&str> =
        seen.iter().map(|l| l.split("] ").nth(1).unwrap_or_default().split(' ').next().unwrap_or_default()).collect();
    assert_eq!(commands, ["\"SET\"", "\"GET\"", "\"PTTL\""], "{seen:?}");
}

/// `idle` is the time since a client's last command (not since it connected, and not reset by
/// another client's traffic); the caller's is 0, as in Redis.
#[tokio::test]
async fn idle_counts_from_each_clients_last_command() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut quiet = proxy.raw().await;
    call(&mut quiet, &["PING"]).await;
    let mut late = proxy.raw().await;
    let mut busy = proxy.raw().await;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(1100) {
        call(&mut busy, &["GET", "k"]).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    call(&mut late, &["PING"]).await;
    let list = lines(&call(&mut busy, &["CLIENT", "LIST"]).await);
    let line_of = |raw: &Raw| list.iter().find(|l| field(l, "addr") == local_addr(raw)).cloned().unwrap();
    let number = |line: &str, name: &str| field(line, name).parse::<u64>().unwrap();
    let (quiet_line, late_line, busy_line) = (line_of(&quiet), line_of(&late), line_of(&busy));
    assert!(number(&quiet_line, "idle") >= 1, "{quiet_line}");
    assert!(number(&late_line, "age") >= 1 && number(&late_line, "idle") == 0, "{late_line}");
    assert_eq!(number(&busy_line, "idle"), 0, "{busy_line}");
    // Like Redis's `oll`: a client that read every reply has none waiting (its last command
    // forwarded to Redis, then CLIENT LIST: Redis's own suite expects oll=0 there).
    call(&mut late, &["PING", "hello", "redis"]).await;
    let own = call(&mut late, &["CLIENT", "LIST"]).await;
    let own_line = lines(&own).into_iter().find(|l| field(l, "addr") == local_addr(&late)).unwrap();
    assert_eq!(number(&own_line, "oll"), 0, "{own_line}");
}

/// CLIENT INFO, CLIENT LIST and INFO pipelined among reads and writes of several clients on
/// ONE upstream connection: each client gets its own replies, in order, and its own line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_pipelined_by_many_clients_on_one_connection() {
    let redis = Redis::start();
    let mut config = common::config_for(&redis.addr());
    config.upstream.connections = 1;
    let proxy = Proxy::start(config).await;
    const CLIENTS: usize = 6;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut raw = proxy.raw().await;
        assert_eq!(call(&mut raw, &["CLIENT", "SETNAME", &format!("c{c}")]).await, "+OK\r\n");
        clients.push(raw);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut raw)| {
            tokio::spawn(async move {
                for round in 0..20 {
                    let (key, value) = (format!("k{c}"), format!("v{c}-{round}"));
                    let mut out = Vec::new();
                    for args in [
                        &["SET", &key, &value][..],
                        &["CLIENT", "INFO"],
                        &["GET", &key],
                        &["INFO", "clients"],
                        &["CLIENT", "LIST", "TYPE", "normal"],
                        &["GET", &key],
                    ] {
                        out.extend_from_slice(&nearcache::framing::encode_command(args));
                    }
                    raw.send(&out).await;
                    let mut replies = Vec::new();
                    for _ in 0..6 {
                        replies.push(String::from_utf8_lossy(&raw.reply().await).into_owned());
                    }
                    let bulk = format!("${}\r\n{value}\r\n", value.len());
                    assert_eq!(replies[0], "+OK\r\n");
                    assert!(replies[1].contains(&format!(" name=c{c} ")) && replies[1].contains(" cmd=client|info "));
                    assert_eq!(replies[2], bulk, "client {c} round {round}");
                    assert!(replies[3].contains(&format!("\r\nconnected_clients:{CLIENTS}\r\n")), "{}", replies[3]);
                    assert_eq!(lines(&replies[4]).len(), CLIENTS);
                    assert_eq!(replies[5], bulk);
                }
                // Kept open until every client is done: INFO counts them all.
                raw
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
}
