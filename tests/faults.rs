//! A lost upstream connection never silently changes a client's session: when the pinned
//! connection that held a client's WATCH, transaction, subscription, tracking or blocking
//! command is lost, the client's own connection is closed (after what it was already answered),
//! as Redis closing it would, so its library reconnects and rebuilds the state.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call};

/// Kills, from a direct connection, every client of Redis whose CLIENT LIST line has `needle`
/// (waiting, within the test's patience, until one shows up). Returns how many it killed.
async fn kill_where(direct: &mut Raw, needle: &str) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clients = call(direct, &["CLIENT", "LIST"]).await;
        let ids: Vec<String> = clients
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
            .collect();
        if !ids.is_empty() {
            for id in &ids {
                call(direct, &["CLIENT", "KILL", "ID", id]).await;
            }
            return ids.len();
        }
        assert!(Instant::now() < deadline, "no client of Redis matches {needle:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_session_state_is_lost_is_disconnected() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;

    // A blocking command in flight.
    let mut blocked = proxy.raw().await;
    blocked.cmd(&[b"BLPOP", b"queue", b"0"]).await;
    kill_where(&mut direct, "cmd=blpop").await;
    assert!(blocked.closed().await, "BLPOP's client stayed connected without its command");

    // WATCH: an EXEC after the loss must not run unwatched.
    let mut watcher = proxy.raw().await;
    assert_eq!(call(&mut watcher, &["WATCH", "w"]).await, "+OK\r\n");
    kill_where(&mut direct, "cmd=watch").await;
    assert!(watcher.closed().await, "the WATCHing client stayed connected without its WATCH");

    // MULTI: the queued SET must not run on its own, the client must not stay.
    let mut multi = proxy.raw().await;
    assert_eq!(call(&mut multi, &["SET", "m", "before"]).await, "+OK\r\n");
    assert_eq!(call(&mut multi, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut multi, &["SET", "m", "queued"]).await, "+QUEUED\r\n");
    kill_where(&mut direct, "flags=x").await;
    assert!(multi.closed().await, "the client in MULTI stayed connected without its transaction");
    assert_eq!(call(&mut direct, &["GET", "m"]).await, "$6\r\nbefore\r\n");

    // A subscriber: closed, so its library resubscribes; after that it gets messages again.
    let mut sub = proxy.raw().await;
    sub.cmd(&[b"SUBSCRIBE", b"news"]).await;
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("subscribe"));
    kill_where(&mut direct, "cmd=subscribe").await;
    assert!(sub.closed().await, "the subscriber stayed connected without its subscription");
    let mut sub = proxy.raw().await;
    sub.cmd(&[b"SUBSCRIBE", b"news"]).await;
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("subscribe"));
    assert_eq!(call(&mut direct, &["PUBLISH", "news", "back"]).await, ":1\r\n");
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("back"));

    // A client doing its own caching: its invalidations are gone, so must it be.
    let mut tracker = proxy.raw().await;
    assert!(call(&mut tracker, &["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(call(&mut tracker, &["CLIENT", "TRACKING", "on"]).await, "+OK\r\n");
    kill_where(&mut direct, "flags=t").await;
    assert!(tracker.closed().await, "the tracking client stayed connected without its invalidations");

    // Everyone else carries on.
    let mut other = proxy.raw().await;
    assert_eq!(call(&mut other, &["GET", "m"]).await, "$6\r\nbefore\r\n");
    proxy.stop().await;
}

/// Replies the client was given before the loss are delivered before it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_before_the_loss_are_delivered_first() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut direct = Raw::connect(redis.addr()).await;
    let mut raw = proxy.raw().await;
    let pipeline = [
        nearcache::framing::encode_command(&["WATCH", "k"]),
        nearcache::framing::encode_command(&["SET", "k", "1"]),
        nearcache::framing::encode_command(&["BLPOP", "nothing", "0"]),
    ]
    .concat();
    raw.send(&pipeline).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    kill_where(&mut direct, "cmd=blpop").await;
    assert!(raw.closed().await);
    proxy.stop().await;
}

/// The standard WATCH/MULTI increment loop, several workers, while the proxy's upstream
/// connections are killed: no acknowledged increment is lost, none is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_multi_increments_survive_killed_connections() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acknowledged, unknown) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, acknowledged, unknown) = (Arc::clone(&stop), Arc::clone(&acknowledged), Arc::clone(&unknown));
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut raw = Raw::connect(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match increment(&mut raw).await {
                        Step::Done => _ = acknowledged.fetch_add(1, Ordering::Relaxed),
                        Step::Conflict => {}
                        Step::Unknown => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                            raw = Raw::connect(addr).await;
                        }
                        Step::Reconnect => raw = Raw::connect(addr).await,
                    }
                }
            })
        })
        .collect();
    let mut direct = Raw::connect(redis.addr()).await;
    let me = call(&mut direct, &["CLIENT", "ID"]).await;
    let me = me.trim_start_matches(':').trim_end();
    let mut kills = 0;
    let deadline = Instant::now() + 3 * PATIENCE;
    while kills < 15 {
        assert!(Instant::now() < deadline, "the workers stopped making progress after {kills} kills");
        tokio::time::sleep(Duration::from_millis(30)).await;
        if acknowledged.load(Ordering::Relaxed) < 20 * (kills + 1) {
            continue;
        }
        // Every connection of the proxy: shared, pinned (WATCH/MULTI), tracking.
        let killed = call(&mut direct, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).await;
        assert!(killed.starts_with(':'), "{killed} (me: {me})");
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(PATIENCE, worker).await.expect("workers finish").unwrap();
    }
    let value = call(&mut direct, &["GET", "counter"]).await;
    let value: u64 = value.lines().nth(1).unwrap_or("0").parse().unwrap();
    let (acknowledged, unknown) = (acknowledged.load(Ordering::Relaxed), unknown.load(Ordering::Relaxed));
    assert!(acknowledged > 0);
    assert!(
        (acknowledged..=acknowledged + unknown).contains(&value),
        "counter is {value}: {acknowledged} increments acknowledged, {unknown} with an unknown outcome"
    );
    proxy.stop().await;
}

enum Step {
    Done,
    Conflict,
    /// The connection closed after EXEC was sent: it may or may not have run.
    Unknown,
    /// Anything else went wrong before EXEC: nothing ran; start over on a new connection.
    Reconnect,
}

async fn increment(raw: &mut Raw) -> Step {
    async fn ask(raw: &mut Raw, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        raw.stream.writable().await.ok()?;
        raw.cmd(&args).await;
        let reply = raw.try_reply(PATIENCE).await?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    }
    let Some("+OK\r\n") = ask(raw, &["WATCH", "counter"]).await.as_deref() else { return Step::Reconnect };
    let Some(current) = ask(raw, &["GET", "counter"]).await else { return Step::Reconnect };
    let current: u64 = match current.as_str() {
        "$-1\r\n" => 0,
        bulk if bulk.starts_with('$') => bulk.lines().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0),
        _ => return Step::Reconnect,
    };
    let Some("+OK\r\n") = ask(raw, &["MULTI"]).await.as_deref() else { return Step::Reconnect };
    let next = (current + 1).to_string();
    let Some("+QUEUED\r\n") = ask(raw, &["SET", "counter", &next]).await.as_deref() else { return Step::Reconnect };
    match ask(raw, &["EXEC"]).await.as_deref() {
        Some("*1\r\n+OK\r\n") => Step::Done,
        Some("*-1\r\n") => Step::Conflict,
        None => Step::Unknown,
        // An error reply: the transaction did not run.
        Some(_) => Step::Reconnect,
    }
}

/// A restart of Redis loses every session on it: the proxy closes each client whose state was
/// there (a subscriber, a WATCH, a tracking client), and once they reconnect they see what the
/// restarted Redis has, never an old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_closes_every_client_whose_state_was_on_it() {
    let port = common::free_port();
    let redis = Redis::start_on(port);
    let proxy = Proxy::in_front_of(&redis).await;
    let mut sub = proxy.raw().await;
    sub.cmd(&[b"SUBSCRIBE", b"news"]).await;
    assert!(String::from_utf8_lossy(&sub.reply().await).contains("subscribe"));
    let mut watcher = proxy.raw().await;
    assert_eq!(call(&mut watcher, &["WATCH", "w"]).await, "+OK\r\n");
    let mut tracker = proxy.raw().await;
    assert!(call(&mut tracker, &["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(call(&mut tracker, &["CLIENT", "TRACKING", "on"]).await, "+OK\r\n");
    assert_eq!(call(&mut tracker, &["SET", "k", "old"]).await, "+OK\r\n");
    assert_eq!(call(&mut tracker, &["GET", "k"]).await, "$3\r\nold\r\n");
    let mut plain = proxy.raw().await;
    assert_eq!(call(&mut plain, &["PING"]).await, "+PONG\r\n");

    redis.stop();
    let _redis = Redis::start_on(port);
    for (name, client) in [("subscriber", &mut sub), ("watcher", &mut watcher), ("tracker", &mut tracker)] {
        assert!(client.closed().await, "the {name} stayed connected without its state");
    }
    // A client with no state on a lost connection carries on (its requests may have failed
    // while Redis was away); the reconnected tracker reads what Redis has now.
    common::until_reply(&mut plain, &["SET", "probe", "1"], "Redis back", |r| r == "+OK\r\n").await;
    let mut tracker = proxy.raw().await;
    assert!(call(&mut tracker, &["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(call(&mut tracker, &["CLIENT", "TRACKING", "on"]).await, "+OK\r\n");
    assert_eq!(call(&mut tracker, &["GET", "k"]).await, "_\r\n");
    proxy.stop().await;
}
