//! Busy is not dead: while Redis runs a long script or DEBUG SLEEP, other clients get what they
//! would directly (-BUSY during a script, a wait during DEBUG SLEEP: their requests are not
//! failed at command_timeout), and SCRIPT KILL gets through.

mod common;

use std::time::Duration;

use common::{PATIENCE, Proxy, Raw, Redis, call, config_for, free_port, until_reply};
use nearcache::config::Span;

/// One shared connection (everything waits behind the busy command on it), a short
/// command_timeout (what used to fail the waiting requests).
async fn proxy(redis: &Redis, command_timeout: Duration) -> Proxy {
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    config.upstream.command_timeout = Span(command_timeout);
    Proxy::start(config).await
}

/// While a script runs past busy-reply-threshold, Redis answers other clients -BUSY: through the
/// proxy they get the same (the script runs on its caller's own connection, not ahead of them on
/// a shared one), SCRIPT KILL gets through, and nothing is failed or tripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_script_answers_others_busy_and_script_kill_gets_through() {
    let redis = Redis::start();
    let mut direct = Raw::connect(redis.addr()).await;
    // Redis answers -BUSY to other clients after 200 ms of script (default 5 s).
    assert_eq!(call(&mut direct, &["CONFIG", "SET", "busy-reply-threshold", "200"]).await, "+OK\r\n");
    assert_eq!(call(&mut direct, &["SET", "k", "v"]).await, "+OK\r\n");
    let proxy = proxy(&redis, Duration::from_millis(500)).await;
    let mut script = proxy.raw().await;
    let mut reader = proxy.raw().await;
    let mut killer = proxy.raw().await;
    script.cmd(&[b"EVAL", b"while true do end", b"0"]).await;
    until_reply(&mut direct, &["PING"], "Redis busy", |r| r.starts_with("-BUSY")).await;
    let busy = call(&mut reader, &["GET", "k"]).await;
    assert!(busy.starts_with("-BUSY Redis is busy running a script"), "{busy}");
    // Past command_timeout, the shared connection is still there (not failed as dead).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(call(&mut reader, &["GET", "k"]).await.starts_with("-BUSY"));
    assert_eq!(call(&mut killer, &["SCRIPT", "KILL"]).await, "+OK\r\n");
    let killed = String::from_utf8_lossy(&script.reply().await).into_owned();
    assert!(killed.starts_with("-ERR Script killed by user with SCRIPT KILL"), "{killed}");
    assert_eq!(call(&mut reader, &["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(call(&mut script, &["GET", "k"]).await, "$1\r\nv\r\n");
    let status = call(&mut killer, &["PROXY", "BREAKER", "STATUS"]).await;
    assert!(status.contains("state:closed"), "{status}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_makes_others_wait() {
    let redis = Redis::start_with(free_port(), &["--enable-debug-command", "yes"]);
    let mut direct = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut direct, &["SET", "k", "v"]).await, "+OK\r\n");
    let proxy = proxy(&redis, Duration::from_secs(1)).await;
    let mut sleeper = proxy.raw().await;
    let mut reader = proxy.raw().await;
    // Longer than command_timeout; shorter than twice that, by when a new connection's PING
    // (the sign of a Redis that is there) is answered.
    sleeper.cmd(&[b"DEBUG", b"SLEEP", b"1.5"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    reader.cmd(&[b"GET", b"k"]).await;
    assert_eq!(sleeper.try_reply(PATIENCE).await.as_deref(), Some(&b"+OK\r\n"[..]));
    assert_eq!(reader.reply().await, "$1\r\nv\r\n");
    proxy.stop().await;
}

/// SCRIPT KILL runs in db 0 (which a busy Redis can open); the session's own connection goes
/// back to the session's db for what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_script_kill_the_session_is_still_in_its_db() {
    let redis = Redis::start();
    let proxy = proxy(&redis, Duration::from_secs(5)).await;
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["SELECT", "2"]).await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["SET", "k", "in-2"]).await, "+OK\r\n");
    assert!(call(&mut raw, &["SCRIPT", "KILL"]).await.starts_with("-NOTBUSY"));
    assert_eq!(call(&mut raw, &["EVAL", "return redis.call('get', KEYS[1])", "1", "k"]).await, "$4\r\nin-2\r\n");
    assert_eq!(call(&mut raw, &["GET", "k"]).await, "$4\r\nin-2\r\n");
    proxy.stop().await;
}
