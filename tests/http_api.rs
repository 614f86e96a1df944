//! The HTTP admin API on the metrics listener, against a real redis-server: every endpoint's
//! status and JSON shape, the bearer token when an admin password is set, and invalidations
//! seen in the next read's Redis call count.

mod common;

use common::{Proxy, Raw, Redis, call, calls, config_for, free_port, wait_for_caching};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request (closing the connection after it): the status code and the body.
async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn json(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = http(addr, method, path, token).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

struct Setup {
    redis: Redis,
    proxy: Proxy,
    http: String,
}

/// Redis and a proxy with its HTTP listener on a port of its own, configured further by `more`.
async fn setup(more: impl FnOnce(&mut nearcache::config::Config)) -> Setup {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    let http = format!("127.0.0.1:{}", free_port());
    config.metrics.address = http.clone();
    more(&mut config);
    let proxy = Proxy::start(config).await;
    Setup { redis, proxy, http }
}

#[tokio::test]
async fn every_endpoint_answers_with_its_status_and_json() {
    let Setup { redis, proxy, http: api } = setup(|_| {}).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut client, &mut direct).await;
    for key in ["user:1", "user:2", "item:1"] {
        call(&mut direct, &["SET", key, "v"]).await;
        call(&mut client, &["GET", key]).await;
    }

    assert_eq!(json(&api, "GET", "/healthz", None).await, (200, serde_json::json!({"status": "ok"})));
    assert_eq!(json(&api, "GET", "/readyz", None).await, (200, serde_json::json!({"ready": true})));
    let (status, metrics) = http(&api, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("nearcache_cache_lookups_total") && metrics.ends_with("# EOF\n"));

    let (status, stats) = json(&api, "GET", "/api/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["Cache"]["cache_entries"], 4, "three keys and the probe: {stats}");
    assert!(stats["Cache"]["cache_hits"].as_i64().unwrap() > 0);
    assert_eq!(stats["Breaker"]["breaker_state"], "closed");
    assert_eq!(stats["Upstream"]["upstream_address"], redis.addr());
    let (status, breaker) = json(&api, "GET", "/api/breaker", None).await;
    assert_eq!((status, &breaker["state"]), (200, &Value::from("closed")));
    let (status, config) = json(&api, "GET", "/api/config", None).await;
    assert_eq!((status, &config["cache.max_memory"]), (200, &Value::from("256MiB")));

    // One key: its rule and variant; dropped, and the next read goes to Redis.
    let (status, key) = json(&api, "GET", "/api/keys/user%3A1", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&key["key"], &key["cached"], &key["variants"]),
        (&Value::from("user:1"), &Value::from(1), &Value::from(1))
    );
    assert_eq!(key["rule_cache"], "Tracked");
    assert!(key["variant_0"].as_str().unwrap().contains("GET reply_bytes=7"), "{key}");
    assert_eq!(json(&api, "DELETE", "/api/keys/user:1", None).await, (200, serde_json::json!({"dropped": 1})));
    assert_eq!(json(&api, "DELETE", "/api/keys/user:1", None).await, (200, serde_json::json!({"dropped": 0})));
    let gets = calls(&mut direct, "get").await;
    call(&mut client, &["GET", "user:1"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets + 1, "an invalidated key is read from Redis again");
    let gets = calls(&mut direct, "get").await;
    call(&mut client, &["GET", "user:2"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets, "another key is still cached");

    // A pattern, then everything.
    let (status, dropped) = json(&api, "POST", "/api/invalidate?pattern=user%3A*", None).await;
    assert_eq!((status, dropped), (200, serde_json::json!({"dropped": 2})));
    assert_eq!(json(&api, "POST", "/api/invalidate", None).await.0, 400);
    let gets = calls(&mut direct, "get").await;
    call(&mut client, &["GET", "user:2"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets + 1);
    assert_eq!(json(&api, "POST", "/api/clear", None).await, (200, serde_json::json!({"cleared": true})));
    assert_eq!(json(&api, "GET", "/api/stats", None).await.1["Cache"]["cache_entries"], 0);

    // Reload without a file: refused, with the reason.
    let (status, refused) = json(&api, "POST", "/api/reload", None).await;
    assert_eq!(status, 400);
    assert!(refused["error"].as_str().unwrap().contains("reload"), "{refused}");

    assert_eq!(json(&api, "GET", "/api/nothing", None).await.0, 404);
    assert_eq!(json(&api, "GET", "/elsewhere", None).await.0, 404);
    assert_eq!(json(&api, "PUT", "/api/keys/x", None).await.0, 405);
}

#[tokio::test]
async fn the_api_needs_the_admin_password_and_readiness_follows_redis() {
    let var = format!("NEARCACHE_TEST_HTTP_ADMIN_{}", std::process::id());
    // SAFETY: a variable no other test reads or writes, set before the proxy starts.
    unsafe { std::env::set_var(&var, "s3cret") };
    let Setup { redis, proxy: _proxy, http: api } = setup(|config| config.admin.password_env = var.clone()).await;
    common::until_http(&api, "/healthz", 200).await;
    assert_eq!(json(&api, "GET", "/api/stats", None).await.0, 401);
    assert_eq!(json(&api, "POST", "/api/clear", Some("wrong")).await.0, 401);
    assert_eq!(json(&api, "GET", "/api/stats", Some("s3cret")).await.0, 200);
    // Liveness, readiness and metrics need no token.
    assert_eq!(json(&api, "GET", "/healthz", None).await.0, 200);
    assert_eq!(http(&api, "GET", "/metrics", None).await.0, 200);
    common::until_http(&api, "/readyz", 200).await;

    // Redis gone: not ready, with the reasons (tracking down at once, the breaker open once
    // the shared connections have failed to reconnect); the process is still alive.
    redis.stop();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let reasons = common::until_http(&api, "/readyz", 503).await;
        if reasons.contains("circuit breaker open") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the breaker never showed: {reasons}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(json(&api, "GET", "/healthz", None).await.0, 200);
}

/// Hot keys: the most-read keys and the most-invalidated ones, in `PROXY CACHE HOTKEYS` and
/// `GET /api/hotkeys`, estimated from a sample.
#[tokio::test]
async fn hot_keys_are_the_most_read_and_the_most_written() {
    let Setup { redis, proxy, http: api } = setup(|_| {}).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut client, &mut direct).await;
    for (key, reads) in [("hot", 640), ("warm", 160), ("cold", 1)] {
        call(&mut direct, &["SET", key, "v"]).await;
        for _ in 0..reads {
            call(&mut client, &["GET", key]).await;
        }
    }
    for i in 0..320 {
        call(&mut client, &["SET", "busy", &i.to_string()]).await;
    }
    call(&mut client, &["SET", "hot", "v2"]).await;
    // The tracking pushes for the writes arrive on their own connection.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let hot = loop {
        let (status, hot) = json(&api, "GET", "/api/hotkeys?n=2", None).await;
        assert_eq!(status, 200);
        if hot["invalidations"][0]["key"] == "busy" || std::time::Instant::now() > deadline {
            break hot;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let reads = hot["reads"].as_array().unwrap();
    assert_eq!(reads.len(), 2);
    assert_eq!((&reads[0]["key"], &reads[1]["key"]), (&Value::from("hot"), &Value::from("warm")), "{hot}");
    let estimate = reads[0]["count"].as_u64().unwrap();
    assert!((480..=800).contains(&estimate), "about 640 reads of hot: {estimate}");
    assert_eq!(hot["invalidations"][0]["key"], "busy", "{hot}");
    assert_eq!(hot["sampling"]["sample_every"], 16);

    let text = call(&mut client, &["PROXY", "CACHE", "HOTKEYS", "1"]).await;
    assert!(text.contains("# Reads\r\n1:") && text.contains(" hot\r\n"), "{text}");
    assert!(text.contains("# Invalidations\r\n1:") && text.contains(" busy\r\n"), "{text}");
    assert!(call(&mut client, &["PROXY", "CACHE", "HOTKEYS", "0"]).await.starts_with("-ERR"));
}

/// Warming: the keys matching a pattern are read into the tier in the background (by type),
/// and later reads of them are hits; keys whose rule does not cache are left alone.
#[tokio::test]
async fn warming_fills_the_tier_with_matching_keys() {
    let Setup { redis, proxy, http: api } = setup(|config| {
        config.rule.push(nearcache::config::Rule {
            pattern: "warm:nocache:*".into(),
            cache: Some(nearcache::config::CacheMode::None),
            ..Default::default()
        })
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut client, &mut direct).await;
    for i in 0..50 {
        call(&mut direct, &["SET", &format!("warm:{i}"), &format!("v{i}")]).await;
    }
    call(&mut direct, &["HSET", "warm:h", "f", "1", "g", "2"]).await;
    call(&mut direct, &["SET", "warm:nocache:1", "x"]).await;
    call(&mut direct, &["SET", "other:1", "x"]).await;

    let before = json(&api, "GET", "/api/stats", None).await.1["Cache"].clone();
    assert_eq!(
        json(&api, "POST", "/api/warm?pattern=warm%3A*", None).await,
        (200, serde_json::json!({"started": true}))
    );
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let status = loop {
        let (_, status) = json(&api, "GET", "/api/warm", None).await;
        if status["state"] != "running" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        (&status["scanned"], &status["warmed"], &status["skipped"]),
        (&Value::from(52), &Value::from(51), &Value::from(1))
    );
    // The warm-up's reads are nobody's: no miss in the hit rate, only fills.
    let after = json(&api, "GET", "/api/stats", None).await.1["Cache"].clone();
    assert_eq!(after["cache_misses"], before["cache_misses"], "{before} {after}");
    assert_eq!(after["cache_fills"].as_i64().unwrap() - before["cache_fills"].as_i64().unwrap(), 51);

    let (gets, hgetalls) = (calls(&mut direct, "get").await, calls(&mut direct, "hgetall").await);
    assert_eq!(call(&mut client, &["GET", "warm:7"]).await, "$2\r\nv7\r\n");
    assert_eq!(call(&mut client, &["HGETALL", "warm:h"]).await, "*4\r\n$1\r\nf\r\n$1\r\n1\r\n$1\r\ng\r\n$1\r\n2\r\n");
    assert_eq!(calls(&mut direct, "get").await, gets, "a warmed key is a hit");
    assert_eq!(calls(&mut direct, "hgetall").await, hgetalls);
    call(&mut client, &["GET", "other:1"]).await;
    call(&mut client, &["GET", "warm:nocache:1"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets + 2, "keys outside the pattern or not cached by their rule");

    // Over RESP, with a limit.
    assert_eq!(call(&mut client, &["PROXY", "CACHE", "CLEAR"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["PROXY", "CACHE", "WARM", "warm:*", "10"]).await, "+OK\r\n");
    let status = common::until_reply(&mut client, &["PROXY", "CACHE", "WARM", "STATUS"], "the warm-up done", |r| {
        r.contains("state:done")
    })
    .await;
    assert!(status.contains("scanned:10\r\n") && status.contains("limit:10\r\n"), "{status}");
}
