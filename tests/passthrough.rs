//! Ordinary commands through the proxy behave as they do against Redis directly.

mod common;

use common::{Proxy, Raw, Redis, call, config_for};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_resp2_and_resp3() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    for resp3 in [false, true] {
        let mut con = proxy.client(resp3).await;
        let key = format!("k{resp3}");
        let _: () = con.set(&key, "v1").await.unwrap();
        let value: String = con.get(&key).await.unwrap();
        assert_eq!(value, "v1");
        let missing: Option<String> = con.get("missing").await.unwrap();
        assert_eq!(missing, None);
        let _: () = con.hset_multiple("h", &[("a", 1), ("b", 2)]).await.unwrap();
        let map: std::collections::HashMap<String, i64> = con.hgetall("h").await.unwrap();
        assert_eq!(map.len(), 2);
    }
    // RESP3 replies really are RESP3: a map comes back as `%`.
    let mut raw = proxy.raw().await;
    assert!(call(&mut raw, &["HELLO", "3"]).await.starts_with("%7\r\n"));
    assert_eq!(call(&mut raw, &["HGETALL", "h"]).await.as_bytes()[0], b'%');
    assert_eq!(call(&mut raw, &["GET", "missing"]).await, "_\r\n");
    assert!(call(&mut raw, &["HELLO", "2"]).await.starts_with("*14\r\n"));
    assert_eq!(call(&mut raw, &["GET", "missing"]).await, "$-1\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_commands_come_back_in_order() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut con = proxy.client(false).await;
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("INCR").arg("counter");
        if i % 3 == 0 {
            pipe.cmd("PING");
        }
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut con).await.unwrap();
    let counts: Vec<i64> =
        replies.iter().filter_map(|v| if let redis::Value::Int(n) = v { Some(*n) } else { None }).collect();
    assert_eq!(counts, (1..=10_000).collect::<Vec<_>>());
    assert_eq!(replies.len(), 10_000 + 3334);

    // The same through a raw socket, written in one go, with a pending limit far below it.
    let mut config = config_for(&redis.addr());
    config.listen.max_pending_replies = 64;
    let small = Proxy::start(config).await;
    let mut raw = small.raw().await;
    let mut burst = Vec::new();
    for i in 0..5000 {
        burst.extend_from_slice(&nearcache::framing::encode_command(&["ECHO", &i.to_string()]));
    }
    raw.send(&burst).await;
    for i in 0..5000 {
        assert_eq!(raw.reply().await, format!("${}\r\n{i}\r\n", i.to_string().len()));
    }
    small.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelining_clients_share_connections_without_mixing_replies() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 2;
    let proxy = Proxy::start(config).await;
    let mut tasks = Vec::new();
    for client in 0..20 {
        let url = proxy.url();
        tasks.push(tokio::spawn(async move {
            let mut con = common::multiplexed(&url).await.unwrap();
            for round in 0..20 {
                let mut pipe = redis::pipe();
                for i in 0..100 {
                    pipe.cmd("SET").arg(format!("c{client}:{i}")).arg(format!("{client}-{round}-{i}")).ignore();
                    pipe.cmd("GET").arg(format!("c{client}:{i}"));
                }
                let values: Vec<String> = pipe.query_async(&mut con).await.unwrap();
                let expected: Vec<String> = (0..100).map(|i| format!("{client}-{round}-{i}")).collect();
                assert_eq!(values, expected);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_are_binary_safe() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut con = proxy.client(false).await;
    let key: Vec<u8> = (0..=255u8).rev().collect();
    let value: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 % 256) as u8).collect();
    let _: () = con.set(&key, &value).await.unwrap();
    let back: Vec<u8> = con.get(&key).await.unwrap();
    assert_eq!(back, value);
    // Written through the proxy, read directly: the bytes are Redis's, unchanged.
    let mut direct = common::multiplexed(&redis.url()).await.unwrap();
    let direct_value: Vec<u8> = direct.get(&key).await.unwrap();
    assert_eq!(direct_value, value);
    let crlf_key = b"a\r\nb\r\n".to_vec();
    let _: () = con.set(&crlf_key, b"\r\n\0".to_vec()).await.unwrap();
    let back: Vec<u8> = direct.get(&crlf_key).await.unwrap();
    assert_eq!(back, b"\r\n\0");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_come_back_unchanged_and_the_connection_stays_usable() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut through = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    for args in [&["NOSUCHCOMMAND", "x"][..], &["GET"], &["SET", "k"], &["LPUSH"], &["INCR", "k", "extra"]] {
        let expected = call(&mut direct, args).await;
        assert!(expected.starts_with("-ERR"), "{expected}");
        assert_eq!(call(&mut through, args).await, expected);
    }
    // A type error is data too.
    call(&mut direct, &["SET", "str", "x"]).await;
    assert!(call(&mut through, &["LPUSH", "str", "y"]).await.starts_with("-WRONGTYPE"));
    assert_eq!(call(&mut through, &["PING"]).await, "+PONG\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_work_like_in_redis() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut raw = proxy.raw().await;
    raw.send(b"PING\r\nSET greeting \"hello world\"\r\n\r\nGET greeting\nHELLO 3\r\n").await;
    assert_eq!(raw.reply().await, "+PONG\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "$11\r\nhello world\r\n");
    assert!(raw.reply().await.starts_with(b"%7\r\n"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_answers_session_commands_itself() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["CLIENT", "SETNAME", "worker"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["CLIENT", "GETNAME"]).await, "$6\r\nworker\r\n");
    let id = call(&mut raw, &["CLIENT", "ID"]).await;
    assert!(id.starts_with(':'), "{id}");
    // Once the upstream has answered, HELLO reports its version (before, "unknown").
    assert_eq!(call(&mut raw, &["PING"]).await, "+PONG\r\n");
    let hello = call(&mut raw, &["HELLO"]).await;
    let version = call(&mut Raw::connect(redis.addr()).await, &["HELLO"]).await;
    let field = |reply: &str| reply.split("version\r\n").nth(1).and_then(|r| r.split("\r\n").nth(1)).map(str::to_owned);
    assert_eq!(field(&hello), field(&version), "HELLO reports the upstream's version");
    assert_eq!(call(&mut raw, &["HELLO", "9"]).await, "-NOPROTO unsupported protocol version\r\n");
    assert!(call(&mut raw, &["AUTH", "pw"]).await.starts_with("-ERR AUTH <password> called without"));
    assert_eq!(call(&mut raw, &["QUIT"]).await, "+OK\r\n");
    assert!(raw.closed().await);
    proxy.stop().await;
}
