//! The circuit breaker against a real redis-server that goes away and comes back, and a fake
//! upstream for slowness Redis cannot produce on demand.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, Raw, Redis, call, calls, config_for, free_port, until_reply, wait_for_caching};
use nearcache::config::{Config, Span};

/// A breaker that reacts within a test's patience.
fn quick_breaker(mut config: Config) -> Config {
    let b = &mut config.breaker;
    (b.window, b.minimum_calls) = (10, 5);
    b.open_for = Span(Duration::from_millis(200));
    b.max_open_for = Span(Duration::from_millis(400));
    config.upstream.connect_timeout = Span(Duration::from_millis(200));
    config.upstream.command_timeout = Span(Duration::from_millis(500));
    config
}

fn is_breaker_error(reply: &str) -> bool {
    reply.contains("circuit breaker open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_upstream_fails_fast_serves_cached_keys_and_recovers_by_itself() {
    let port = free_port();
    let redis = Redis::start_on(port);
    let mut config = quick_breaker(config_for(&redis.addr()));
    config.cache.serve_stale = Span(Duration::from_secs(30));
    let proxy = Proxy::start(config).await;
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["SET", "k", "v"]).await, "+OK\r\n");
    // Cached once tracking is up.
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut raw, &mut direct).await;
    call(&mut raw, &["GET", "k"]).await;
    let gets = calls(&mut direct, "get").await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(calls(&mut direct, "get").await, gets, "GET k is cached");

    redis.stop();
    until_reply(&mut raw, &["GET", "other"], "opened", is_breaker_error).await;
    // Open: every call needing the upstream is refused at once, naming it.
    let started = Instant::now();
    for i in 0..50 {
        let reply = call(&mut raw, &["GET", &format!("miss{i}")]).await;
        assert!(reply.starts_with(&format!("-LOADING upstream 127.0.0.1:{port} unavailable: ")), "{reply}");
    }
    let per_call = started.elapsed() / 50;
    eprintln!("while open: {per_call:?} per refused call");
    assert!(per_call < Duration::from_millis(50), "{per_call:?} per call: clients waited");
    let status = call(&mut raw, &["PROXY", "BREAKER", "STATUS"]).await;
    assert!(
        status.contains("state:open\r\n") && status.contains(&format!("upstream:127.0.0.1:{port}\r\n")),
        "{status}"
    );
    // The cached key is served (a stale answer), and PING is answered by the proxy.
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(call(&mut raw, &["PING"]).await, "+PONG\r\n");
    assert!(call(&mut raw, &["SET", "x", "1"]).await.starts_with("-LOADING upstream"));

    // Back: the proxy recovers by itself, without a restart.
    let _redis = Redis::start_on(port);
    until_reply(&mut raw, &["SET", "x", "1"], "recovered", |r| r == "+OK\r\n").await;
    // Closed as soon as Redis answered: nothing is refused any more.
    for _ in 0..3 {
        assert_eq!(call(&mut raw, &["SET", "x", "1"]).await, "+OK\r\n");
    }
    let status = call(&mut raw, &["PROXY", "BREAKER", "STATUS"]).await;
    assert!(status.contains("state:closed\r\n"), "{status}");
    // The transitions and refusals are in the metrics (PROXY INFO shows the same numbers).
    let info = call(&mut raw, &["PROXY", "INFO", "breaker"]).await;
    let field = |name: &str| -> u64 {
        info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).and_then(|v| v.parse().ok()).unwrap()
    };
    assert!(field("breaker_opened") >= 1, "{info}");
    assert_eq!(field("breaker_closed"), 1, "{info}");
    assert!(field("breaker_refused_calls") >= 50, "{info}");
    assert!(info.contains("breaker_state:closed"), "{info}");
    let stale = call(&mut raw, &["PROXY", "INFO", "cache"]).await;
    assert!(stale.contains("cache_stale_answers:1\r\n"), "{stale}");
    // The restarted Redis lost k (no persistence): the stale entry is not a normal hit.
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$-1\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_do_not_trip_the_breaker() {
    let redis = Redis::start();
    let proxy = Proxy::start(quick_breaker(config_for(&redis.addr()))).await;
    let mut raw = proxy.raw().await;
    call(&mut raw, &["SET", "s", "x"]).await;
    let flood = nearcache::framing::encode_command(&["LPUSH", "s", "y"]).repeat(500);
    for _ in 0..4 {
        raw.send(&flood).await;
        for _ in 0..500 {
            assert!(raw.reply().await.starts_with(b"-WRONGTYPE"));
        }
    }
    for _ in 0..20 {
        assert!(call(&mut raw, &["GETRANGE", "s", "0", "-1"]).await.starts_with("$1"));
        assert!(call(&mut raw, &["NOSUCHCOMMAND"]).await.starts_with("-ERR unknown command"));
    }
    assert_eq!(call(&mut raw, &["GET", "s"]).await, "$1\r\nx\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_trips_the_slow_call_rule() {
    let fake = common::fake::FakeRedis::start().await;
    let mut config = quick_breaker(config_for(&fake.addr));
    config.cache.enabled = false;
    config.upstream.connections = 1;
    config.breaker.slow_call = Span(Duration::from_millis(100));
    let proxy = Proxy::start(config).await;
    fake.set("k", "v");
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$1\r\nv\r\n");
    fake.delay_gets(Duration::from_millis(150));
    // Slow, but answered (not a timeout). With the fast call above, four slow ones make five
    // calls (minimum_calls), 80% slow: the fourth trips it.
    for _ in 0..4 {
        assert_eq!(call(&mut raw, &["GET", "k"]).await, "$1\r\nv\r\n");
    }
    let started = Instant::now();
    let reply = call(&mut raw, &["GET", "k"]).await;
    assert!(is_breaker_error(&reply), "{reply}");
    assert!(started.elapsed() < Duration::from_millis(100), "refused at once");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_an_upstream_restart() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("nearcache-aof-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let persistent = ["--dir", dir.to_str().unwrap(), "--appendonly", "yes", "--appendfsync", "always"];
    let redis = Redis::start_with(port, &persistent);
    let proxy = Proxy::start(quick_breaker(config_for(&redis.addr()))).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..4 {
        let (stop, mut raw) = (Arc::clone(&stop), proxy.raw().await);
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (vec![], 0);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}:{i}");
                match call(&mut raw, &["SET", &key, &i.to_string()]).await.as_str() {
                    "+OK\r\n" => acked.push((key, i)),
                    _ => failed += 1,
                }
                i += 1;
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop(); // SIGKILL: only what was fsynced survives
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = Redis::start_with(port, &persistent);
    let mut raw = proxy.raw().await;
    until_reply(&mut raw, &["SET", "probe", "1"], "recovered", |r| r == "+OK\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);

    let mut direct = Raw::connect(redis.addr()).await;
    let (mut total, mut failures) = (0, 0);
    for writer in writers {
        let (acked, failed) = writer.await.unwrap();
        failures += failed;
        total += acked.len();
        for (key, i) in acked {
            assert_eq!(
                call(&mut direct, &["GET", &key]).await,
                format!("${}\r\n{i}\r\n", i.to_string().len()),
                "{key} was acknowledged"
            );
        }
    }
    eprintln!("{total} acknowledged writes all present after the restart; {failures} refused or failed");
    assert!(total > 0 && failures > 0, "the test must write through an outage: {total} acked, {failures} failed");
    proxy.stop().await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The proxy finds out by itself that Redis is back, whatever is left of the open period: with
/// `open_for` a minute, the first request after Redis answers again succeeds long before that.
/// (Prints how long after Redis answered; `OUTAGE_MS` sets the outage, default 1500.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_back_is_used_at_once_whatever_the_open_period() {
    let port = free_port();
    let redis = Redis::start_on(port);
    let mut config = quick_breaker(config_for(&redis.addr()));
    (config.breaker.open_for, config.breaker.max_open_for) =
        (Span(Duration::from_secs(60)), Span(Duration::from_secs(60)));
    let proxy = Proxy::start(config).await;
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["SET", "x", "1"]).await, "+OK\r\n");
    redis.stop();
    until_reply(&mut raw, &["GET", "x"], "opened", is_breaker_error).await;
    let outage = std::env::var("OUTAGE_MS").ok().and_then(|ms| ms.parse().ok()).unwrap_or(1500);
    tokio::time::sleep(Duration::from_millis(outage)).await;
    let _redis = Redis::start_on(port);
    let back = Instant::now();
    let reply = until_reply(&mut raw, &["SET", "x", "2"], "recovered", |r| !r.starts_with("-LOADING upstream")).await;
    eprintln!("outage {outage} ms: first success {} ms after Redis answered", back.elapsed().as_millis());
    assert_eq!(reply, "+OK\r\n");
    // Nothing is refused once it answered.
    for _ in 0..20 {
        assert_eq!(call(&mut raw, &["GET", "x"]).await, "$1\r\n2\r\n");
    }
    proxy.stop().await;
}
