//! Bad input, limits and upstream failures: a clear error, and nobody else is affected.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, config_for, free_port, until_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_a_protocol_error_and_only_that_client_is_closed() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut bystander = proxy.raw().await;
    assert_eq!(call(&mut bystander, &["SET", "k", "v"]).await, "+OK\r\n");
    let bad_frames: [(&[u8], &str); 4] = [
        (b"*1\r\n:1\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"SET \"unbalanced\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"),
    ];
    for (frame, error) in bad_frames {
        let mut raw = proxy.raw().await;
        // A valid command before the bad frame is answered first, as Redis does.
        raw.send(&[b"PING\r\n", frame].concat()).await;
        assert_eq!(raw.reply().await, "+PONG\r\n");
        assert_eq!(raw.reply().await, error);
        assert!(raw.closed().await, "connection not closed after {error}");
    }
    // Deep nesting is refused at once instead of overflowing a stack.
    let mut raw = proxy.raw().await;
    raw.send(&b"*1\r\n".repeat(100_000)).await;
    assert_eq!(raw.reply().await, "-ERR Protocol error: expected '$', got '*'\r\n");
    assert_eq!(call(&mut bystander, &["GET", "k"]).await, "$1\r\nv\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_and_argument_limits() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.listen.max_request_size = nearcache::config::ByteSize(1 << 20);
    config.listen.max_args = 4;
    let proxy = Proxy::start(config).await;
    // The declared length alone is refused: the payload is never waited for.
    let mut raw = proxy.raw().await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000000\r\n").await;
    assert_eq!(
        raw.reply().await,
        "-ERR Protocol error: invalid bulk length (500000000 > listen.max_request_size 1048576)\r\n"
    );
    assert!(raw.closed().await);
    let mut raw = proxy.raw().await;
    raw.send(b"*5\r\n").await;
    assert_eq!(
        raw.reply().await,
        "-ERR Protocol error: invalid multibulk length (5 arguments > listen.max_args 4)\r\n"
    );
    assert!(raw.closed().await);
    // Just under the limits works.
    let mut raw = proxy.raw().await;
    let value = vec![b'v'; 1_000_000];
    raw.cmd(&[b"SET", b"big", &value]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(call(&mut raw, &["STRLEN", "big"]).await, ":1000000\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_is_enforced_with_a_clear_error() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.listen.max_clients = 2;
    let proxy = Proxy::start(config).await;
    let mut first = proxy.raw().await;
    let mut second = proxy.raw().await;
    assert_eq!(call(&mut first, &["PING"]).await, "+PONG\r\n");
    assert_eq!(call(&mut second, &["PING"]).await, "+PONG\r\n");
    let mut third = proxy.raw().await;
    assert_eq!(third.reply().await, "-ERR max number of clients reached\r\n");
    assert!(third.closed().await);
    assert_eq!(call(&mut first, &["PING"]).await, "+PONG\r\n");
    // A slot freed by a client leaving is available again.
    drop(second);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut next = proxy.raw().await;
        next.cmd(&[b"PING"]).await;
        if next.reply().await == "+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_at_start_is_named_until_it_comes_up() {
    let port = free_port();
    let proxy = Proxy::start(config_for(&format!("127.0.0.1:{port}"))).await;
    let mut raw = proxy.raw().await;
    // (Not PING: once the breaker has opened, the proxy answers PING itself.)
    let reply = call(&mut raw, &["GET", "k"]).await;
    assert!(reply.starts_with(&format!("-LOADING upstream 127.0.0.1:{port} unavailable: ")), "{reply}");
    // Requests are refused at once, not after a timeout.
    let started = Instant::now();
    for _ in 0..10 {
        assert!(call(&mut raw, &["GET", "k"]).await.starts_with("-LOADING upstream"));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "refusals took {:?}", started.elapsed());
    let _redis = Redis::start_on(port);
    until_reply(&mut raw, &["ECHO", "up"], "reconnected", |r| r == "$2\r\nup\r\n").await;
    assert_eq!(call(&mut raw, &["SET", "k", "v"]).await, "+OK\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_memory() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.listen.max_pending_replies = 16;
    let proxy = Proxy::start(config).await;
    let mut setup = proxy.raw().await;
    let value = vec![b'x'; 64 * 1024];
    setup.cmd(&[b"SET", b"big", &value]).await;
    assert_eq!(setup.reply().await, "+OK\r\n");

    // Pipeline GETs of a 64 KiB value and never read: 100 MB of requests would ask for
    // 200 GB of replies.
    let written = Arc::new(AtomicUsize::new(0));
    let mut greedy = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let counter = Arc::clone(&written);
    let writer = tokio::spawn(async move {
        let chunk = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(1000);
        for _ in 0..4000 {
            if greedy.write_all(&chunk).await.is_err() {
                break;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        greedy
    });
    // The proxy stops reading from it: its writes stall well before the end.
    let deadline = Instant::now() + PATIENCE;
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline && !writer.is_finished(), "the proxy kept reading: {now} bytes accepted");
        last = now;
    }
    eprintln!("a client that does not read got {last} bytes of requests accepted before the proxy stopped reading");
    assert!(last < 64 << 20, "{last} bytes were accepted from a client that does not read");
    // Everyone else is unaffected.
    let mut other = proxy.raw().await;
    assert_eq!(call(&mut other, &["PING"]).await, "+PONG\r\n");
    writer.abort();
    proxy.stop().await;
}

/// A fake upstream that completes the handshake and then never answers: Redis cannot be made
/// to stall on demand. The request fails after command_timeout plus as long again for the
/// PING that tells a busy Redis from a gone one.
async fn stalling_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                // HELLO and CONFIG GET arrive together: answer them, then go silent (a PING on a
                // new connection, the proxy's check that Redis is there, gets nothing either).
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if buf[..n].windows(5).any(|w| w.eq_ignore_ascii_case(b"HELLO")) {
                    let hello = "*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n";
                    let _ = stream.write_all(format!("{hello}*0\r\n").as_bytes()).await;
                }
                while stream.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_gets_an_outcome_unknown_error_after_the_command_timeout() {
    let (addr, upstream) = stalling_upstream().await;
    let mut config = config_for(&addr);
    config.upstream.command_timeout = nearcache::config::Span(Duration::from_millis(200));
    config.upstream.connections = 1;
    let proxy = Proxy::start(config).await;
    let mut raw = proxy.raw().await;
    let started = Instant::now();
    let reply = call(&mut raw, &["SET", "k", "v"]).await;
    assert_eq!(
        reply,
        format!("-ERR upstream {addr} did not reply within 200ms; the command may or may not have been executed\r\n")
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The connection to the client stays usable.
    let next = call(&mut raw, &["GET", "k"]).await;
    assert!(next.starts_with("-ERR upstream") || next.starts_with("-LOADING upstream"), "{next}");
    proxy.stop().await;
    upstream.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_in_flight_replies_then_closes() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let addr = proxy.addr;
    let mut raw = proxy.raw().await;
    assert_eq!(call(&mut raw, &["PING"]).await, "+PONG\r\n");
    raw.cmd(&[b"BLPOP", b"nothing", b"0.3"]).await;
    // Let the BLPOP reach the proxy before the signal.
    let mut probe = Raw::connect(addr).await;
    assert_eq!(call(&mut probe, &["PING"]).await, "+PONG\r\n");
    let stopping = tokio::spawn(proxy.stop());
    assert_eq!(raw.reply().await, "*-1\r\n");
    assert!(raw.closed().await);
    stopping.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_bounded_by_the_listen_timeouts() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.listen.request_timeout = "300ms".parse().unwrap();
    config.listen.write_timeout = "300ms".parse().unwrap();
    config.listen.idle_timeout = "500ms".parse().unwrap();
    config.listen.max_pending_replies = 16;
    let proxy = Proxy::start(config).await;
    let mut bystander = proxy.raw().await;
    let value = vec![b'x'; 64 * 1024];
    bystander.cmd(&[b"SET", b"big", &value]).await;
    assert_eq!(bystander.reply().await, "+OK\r\n");

    // A 500 MB bulk header and then nothing, and a request cut short: an error, then closed.
    let mut subscriber = proxy.raw().await;
    assert!(call(&mut subscriber, &["SUBSCRIBE", "news"]).await.starts_with("*3\r\n$9\r\nsubscribe"));
    for partial in [&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000000\r\n"[..], b"*1\r\n$4\r\nPI"] {
        let mut slow = proxy.raw().await;
        let started = Instant::now();
        slow.send(partial).await;
        assert_eq!(slow.reply().await, "-ERR request not completed within 300ms (listen.request_timeout)\r\n");
        assert!(slow.closed().await);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    // An idle client is closed without a word; a subscriber waiting for messages is not idle.
    let mut idle = proxy.raw().await;
    assert_eq!(call(&mut idle, &["PING"]).await, "+PONG\r\n");
    assert!(idle.closed().await, "idle client closed");
    let mut publisher = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut publisher, &["PUBLISH", "news", "hi"]).await, ":1\r\n");
    assert_eq!(subscriber.reply().await, "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");

    // A client that sends requests and never reads their replies is dropped.
    let mut greedy = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(1000);
        for _ in 0..4000 {
            if greedy.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    let closed = tokio::time::timeout(PATIENCE, writer).await.expect("the proxy dropped the client").unwrap();
    assert!(closed, "its writes failed once the proxy closed it");
    // The first client was idle meanwhile (closed too); anyone else is served, and the
    // 500 MB SET never happened.
    assert!(bystander.closed().await);
    let mut other = proxy.raw().await;
    assert_eq!(call(&mut other, &["EXISTS", "k"]).await, ":0\r\n");
    assert_eq!(call(&mut other, &["PING"]).await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_every_reply_then_is_closed() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut raw = proxy.raw().await;
    let pipeline: Vec<u8> =
        (0..1000).flat_map(|i| nearcache::framing::encode_command(&["SET", &format!("k{i}"), "v"]).to_vec()).collect();
    raw.send(&pipeline).await;
    raw.send(b"GET k999\r\n").await;
    // The client is done sending: its write side is shut, its read side still open.
    raw.stream.shutdown().await.unwrap();
    for _ in 0..1000 {
        assert_eq!(raw.reply().await, "+OK\r\n");
    }
    assert_eq!(raw.reply().await, "$1\r\nv\r\n");
    assert!(raw.closed().await, "closed once every reply is written");
    let mut other = proxy.raw().await;
    assert_eq!(call(&mut other, &["GET", "k0"]).await, "$1\r\nv\r\n");
}

/// A client that hangs up while its last command blocks is let go (Redis does the same), but
/// only after the replies to what it sent before that command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_blocked_at_the_end_gets_the_replies_before_it() {
    let redis = Redis::start_with(free_port(), &["--enable-debug-command", "yes"]);
    let proxy = Proxy::in_front_of(&redis).await;
    let mut raw = proxy.raw().await;
    // A shared-pool command, then two on the pinned connection: the pop blocks for good.
    raw.send(b"SET before 1\r\nWATCH w\r\nDEBUG SLEEP 0.2\r\nBLPOP nothing 0\r\n").await;
    raw.stream.shutdown().await.unwrap();
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert_eq!(raw.reply().await, "+OK\r\n", "DEBUG SLEEP's reply, sent 200 ms after the hang-up");
    assert!(raw.closed().await);
    let mut direct = Raw::connect(redis.addr()).await;
    until_reply(&mut direct, &["INFO", "clients"], "no blocked client in Redis", |info| {
        info.contains("blocked_clients:0\r\n")
    })
    .await;
}
