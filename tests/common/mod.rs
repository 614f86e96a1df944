//! Test harness: a real `redis-server` on a free loopback port, the proxy in-process on port 0,
//! and a raw RESP client for byte-level assertions.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod fake;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nearcache::config::Config;
use nearcache::reply::ReplyScanner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long anything in a test may take before the test fails (not a sleep: an upper bound).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts redis-server on `port` and waits until it answers PING.
    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &["--dir", std::env::temp_dir().to_str().unwrap()])
    }

    /// Like [`Redis::start_on`], with more redis-server options (later ones win).
    pub fn start_with(port: u16, options: &[&str]) -> Redis {
        for _ in 0..5 {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(options)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            let mut redis = Redis { child, port };
            if redis.wait_ready() {
                return redis;
            }
            // Most likely the port was taken between choosing and binding it: try again.
        }
        panic!("redis-server did not start on port {port}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    // A server with requirepass answers NOAUTH: it is up too.
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
}

/// The proxy, running in this process until `stop` (or drop).
pub struct Proxy {
    pub addr: SocketAddr,
    /// The Redis it forwards to.
    pub upstream: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), nearcache::server::StartError>>>,
}

pub fn config_for(redis_addr: &str) -> Config {
    let mut config = Config::default();
    config.upstream.address = redis_addr.to_owned();
    config
}

impl Proxy {
    pub async fn start(config: Config) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = config.upstream.address.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nearcache::server::run(listener, config, async {
            let _ = stopped.await;
        }));
        Proxy { addr, upstream, stop: Some(stop), task: Some(task) }
    }

    /// A proxy with default settings in front of `redis`.
    pub async fn in_front_of(redis: &Redis) -> Proxy {
        Proxy::start(config_for(&redis.addr())).await
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Signals shutdown and waits for the server to finish draining.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let ran = tokio::time::timeout(PATIENCE, self.task.take().unwrap()).await.expect("proxy shut down in time");
        ran.unwrap().expect("the proxy started");
    }

    /// A multiplexed `redis` crate connection (RESP2, or RESP3 with `resp3`).
    pub async fn client(&self, resp3: bool) -> redis::aio::MultiplexedConnection {
        let url = if resp3 { format!("{}?protocol=resp3", self.url()) } else { self.url() };
        multiplexed(&url).await.unwrap()
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A `redis` crate multiplexed connection that waits up to [`PATIENCE`] for a reply (the crate's
/// default, 500 ms, is shorter than a debug build takes on a loaded machine).
pub async fn multiplexed(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(PATIENCE)).set_connection_timeout(Some(PATIENCE));
    redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await
}

/// A raw RESP connection: write bytes, read whole replies.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream, buf: BytesMut::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends one command as a RESP array.
    pub async fn cmd(&mut self, args: &[&[u8]]) {
        self.send(&nearcache::framing::encode_command(args)).await;
    }

    /// The next complete reply; panics after `PATIENCE` or on close.
    pub async fn reply(&mut self) -> Bytes {
        self.try_reply(PATIENCE).await.expect("a reply")
    }

    /// The next complete reply, or `None` if the connection closes or nothing comes within `wait`.
    pub async fn try_reply(&mut self, wait: Duration) -> Option<Bytes> {
        let mut scanner = ReplyScanner::default();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(len) = scanner.scan(&self.buf).unwrap() {
                return Some(self.buf.split_to(len).freeze());
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// True once the peer has closed the connection (reading gives EOF) within `PATIENCE`.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(PATIENCE, self.stream.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// Sends a command and returns its reply as text (for readable assertions).
/// One pipeline of `appends` 1 KiB APPENDs to each of `keys` in turn, then a GET of each: every
/// APPEND's reply is its key's length after it, and every value holds the chunks in order
/// (Redis ran the client's requests in the order it sent them). `who` names the client.
pub async fn appends_stay_in_order(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    appends: usize,
    who: &str,
) {
    let chunks: Vec<String> = (0..appends).map(|i| format!("{i:05}{}", ".".repeat(1019))).collect();
    let mut pipe = redis::pipe();
    for chunk in &chunks {
        for key in keys {
            pipe.cmd("APPEND").arg(key).arg(chunk);
        }
    }
    for key in keys {
        pipe.cmd("GET").arg(key);
    }
    let mut replies: Vec<redis::Value> = pipe.query_async(con).await.unwrap();
    let values: Vec<String> =
        replies.split_off(keys.len() * appends).into_iter().map(|v| redis::from_redis_value(v).unwrap()).collect();
    let lengths: Vec<usize> = replies.into_iter().map(|v| redis::from_redis_value(v).unwrap()).collect();
    let expected: Vec<usize> = (1..=appends).flat_map(|i| vec![i * 1024; keys.len()]).collect();
    assert_eq!(lengths, expected, "{who}: APPEND replies out of order");
    for value in values {
        assert!(value == chunks.concat(), "{who}: chunks appended out of order");
    }
}

pub async fn call(raw: &mut Raw, args: &[&str]) -> String {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    raw.cmd(&args).await;
    String::from_utf8_lossy(&raw.reply().await).into_owned()
}

/// How many times Redis executed `command` (from INFO commandstats).
pub async fn calls(direct: &mut Raw, command: &str) -> u64 {
    let info = call(direct, &["INFO", "commandstats"]).await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits until reads through the proxy are cached (the tracking connection is up).
pub async fn wait_for_caching(proxy: &mut Raw, direct: &mut Raw) {
    let deadline = Instant::now() + PATIENCE;
    call(direct, &["SET", "probe", "1"]).await;
    loop {
        call(proxy, &["GET", "probe"]).await;
        let before = calls(direct, "get").await;
        call(proxy, &["GET", "probe"]).await;
        if calls(direct, "get").await == before {
            return;
        }
        assert!(Instant::now() < deadline, "reads were never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `args` until `accept` takes the reply (failing after `PATIENCE`); returns that reply.
pub async fn until_reply(raw: &mut Raw, args: &[&str], what: &str, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = call(raw, args).await;
        if accept(&reply) {
            return reply;
        }
        assert!(Instant::now() < deadline, "never {what}; last reply {reply:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GETs `path` over HTTP until it answers `status` (failing after `PATIENCE`); the body.
pub async fn until_http(addr: &str, path: &str, status: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut response = String::new();
        // Not listening yet (the proxy binds it as it starts) reads as an empty response.
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let _ = stream.read_to_string(&mut response).await;
        }
        let got: u16 = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if got == status {
            return response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "{path} never answered {status}; last: {response}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
