//! The proxy in front of a Sentinel-managed primary: real redis-server processes (a primary, a
//! replica, three sentinels) on free loopback ports, failovers under load through the proxy.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, free_port};
use nearcache::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MASTER: &str = "mymaster";
/// Failovers take seconds (down-after 1 s, an election, a promotion): bounds are generous.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// A `redis-server --sentinel` with its own writable configuration file.
struct Sentinel {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sentinel {
    fn start(port: u16, primary: u16) -> Sentinel {
        Sentinel::start_with(port, primary, 2, "")
    }

    /// With `quorum` and more configuration lines.
    fn start_with(port: u16, primary: u16, quorum: u32, extra: &str) -> Sentinel {
        let dir = std::env::temp_dir().join(format!("nearcache-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {MASTER} 127.0.0.1 {primary} {quorum}\n\
                 sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n{extra}\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let sentinel = Sentinel { child, port, dir };
        wait_until("the sentinel answers", || std::net::TcpStream::connect(sentinel.addr()).is_ok());
        sentinel
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary, a replica of it, and three sentinels that know both and each other.
struct Setup {
    nodes: Vec<Redis>,
    sentinels: Vec<Sentinel>,
}

impl Setup {
    async fn start() -> Setup {
        let primary = Redis::start();
        let replica = Redis::start_with(
            free_port(),
            &["--dir", std::env::temp_dir().to_str().unwrap(), "--replicaof", "127.0.0.1", &primary.port.to_string()],
        );
        let sentinels = (0..3).map(|_| Sentinel::start(free_port(), primary.port)).collect();
        let setup = Setup { nodes: vec![primary, replica], sentinels };
        setup.wait_settled(setup.nodes[0].port).await;
        setup
    }

    /// Until the replica is in sync with `primary` and every sentinel knows the replica and the
    /// two other sentinels (a failover needs both).
    async fn wait_settled(&self, primary: u16) {
        let mut direct = Raw::connect(("127.0.0.1", primary)).await;
        wait_for("the replica in sync", async || {
            call(&mut direct, &["INFO", "replication"]).await.contains("state=online")
        })
        .await;
        for sentinel in &self.sentinels {
            let mut raw = Raw::connect(sentinel.addr()).await;
            wait_for("each sentinel knows the replica and the others", async || {
                let master = call(&mut raw, &["SENTINEL", "MASTER", MASTER]).await;
                let field = |name: &str| {
                    let mut lines = master.lines();
                    while let Some(line) = lines.next() {
                        if line == name {
                            lines.next();
                            return lines.next().map(str::to_owned);
                        }
                    }
                    None
                };
                field("num-slaves").as_deref() == Some("1") && field("num-other-sentinels").as_deref() == Some("2")
            })
            .await;
        }
    }

    fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::addr).collect()
    }

    fn config(&self) -> Config {
        sentinel_config(self.sentinel_addrs(), MASTER)
    }
}

fn sentinel_config(sentinels: Vec<String>, master: &str) -> Config {
    let mut config = Config::default();
    config.upstream.sentinels = sentinels;
    config.upstream.master_name = master.into();
    config
}

/// `PROXY INFO`'s value for `field`.
async fn proxy_info(raw: &mut Raw, field: &str) -> String {
    let info = call(raw, &["PROXY", "INFO"]).await;
    let prefix = format!("{field}:");
    info.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_default().to_owned()
}

/// A client that reconnects when the proxy closes it; a request's reply, or `None` when the
/// connection was lost with it.
struct Client {
    addr: std::net::SocketAddr,
    raw: Option<Raw>,
}

impl Client {
    fn new(proxy: &Proxy) -> Client {
        Client { addr: proxy.addr, raw: None }
    }

    async fn call(&mut self, args: &[&str]) -> Option<String> {
        if self.raw.is_none() {
            self.raw = Some(Raw::from_stream(tokio::net::TcpStream::connect(self.addr).await.ok()?));
        }
        let raw = self.raw.as_mut().unwrap();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        raw.cmd(&args).await;
        match raw.try_reply(PATIENCE).await {
            Some(reply) => Some(String::from_utf8_lossy(&reply).into_owned()),
            None => {
                self.raw = None;
                None
            }
        }
    }
}

/// What one writer saw: (value, when acknowledged), in order.
type Acks = Vec<(u64, Instant)>;

/// A read that returned an older value than one acknowledged before it was sent.
#[derive(Debug)]
#[allow(dead_code)] // printed when the test fails
struct Stale {
    key: usize,
    read: u64,
    acked: u64,
    acked_at: Instant,
}

const WRITERS: usize = 4;

/// Writers (RPUSH log:i n, then SET val:i n) and readers (GET val:i, which the tier caches)
/// run through the proxy while `failover` happens; then what each acknowledged is checked
/// against the new primary.
async fn failover_under_load(kill: bool) {
    let mut setup = Setup::start().await;
    let old_port = setup.nodes[0].port;
    let proxy = Proxy::start(setup.config()).await;
    let mut admin = proxy.raw().await;
    wait_for("the proxy finds the primary", async || {
        proxy_info(&mut admin, "sentinel_primary").await == format!("127.0.0.1:{old_port}")
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let ack_times: Arc<Mutex<Vec<Acks>>> = Arc::new(Mutex::new(vec![Vec::new(); WRITERS]));
    let mut writers = Vec::new();
    for key in 0..WRITERS {
        let (stop, acked, ack_times, mut client) =
            (stop.clone(), acked.clone(), ack_times.clone(), Client::new(&proxy));
        writers.push(tokio::spawn(async move {
            let mut acks: Acks = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let value = n.to_string();
                let pushed = client.call(&["RPUSH", &format!("log:{key}"), &value]).await;
                if pushed.is_some_and(|r| r.starts_with(':')) {
                    acks.push((n, Instant::now()));
                    if client.call(&["SET", &format!("val:{key}"), &value]).await.as_deref() == Some("+OK\r\n") {
                        let at = Instant::now();
                        ack_times.lock().unwrap()[key].push((n, at));
                        acked[key].store(n, Ordering::Release);
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            acks
        }));
    }
    let stale: Arc<Mutex<Vec<Stale>>> = Arc::default();
    let mut readers = Vec::new();
    for key in 0..WRITERS {
        let (stop, acked, ack_times, stale, mut client) =
            (stop.clone(), acked.clone(), ack_times.clone(), stale.clone(), Client::new(&proxy));
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let before = acked[key].load(Ordering::Acquire);
                let Some(reply) = client.call(&["GET", &format!("val:{key}")]).await else { continue };
                let Some(read) = reply.lines().nth(1).and_then(|v| v.parse::<u64>().ok()) else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                reads += 1;
                if read < before {
                    let acked_at = ack_times.lock().unwrap()[key].iter().find(|(n, _)| *n == before).unwrap().1;
                    stale.lock().unwrap().push(Stale { key, read, acked: before, acked_at });
                }
            }
            reads
        }));
    }
    // Sentinel announces the switch here; the test hears it as the proxy does.
    let mut announcements = Raw::connect(setup.sentinels[1].addr()).await;
    announcements.cmd(&[b"SUBSCRIBE", b"+switch-master"]).await;
    announcements.reply().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let failed_at = Instant::now();
    if kill {
        setup.nodes.remove(0).stop();
    } else {
        let mut sentinel = Raw::connect(setup.sentinels[0].addr()).await;
        assert_eq!(call(&mut sentinel, &["SENTINEL", "FAILOVER", MASTER]).await, "+OK\r\n");
    }
    let announced = announcements.try_reply(FAILOVER_PATIENCE).await.expect("Sentinel announces the switch");
    let announced_at = Instant::now();
    let new_port: u16 = String::from_utf8_lossy(&announced).trim_end().rsplit(' ').next().unwrap().parse().unwrap();
    assert_ne!(new_port, old_port);
    let mut switched_at = None;
    wait_for("the proxy follows the switch", async || {
        let done = proxy_info(&mut admin, "sentinel_primary").await == format!("127.0.0.1:{new_port}");
        if done {
            switched_at = Some(Instant::now());
        }
        done
    })
    .await;
    let switched_at = switched_at.unwrap();
    // Load goes on after the switch, then stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all_acks = Vec::new();
    for writer in writers {
        all_acks.push(writer.await.unwrap());
    }
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }

    // What the new primary holds.
    let mut direct = Raw::connect(("127.0.0.1", new_port)).await;
    assert!(call(&mut direct, &["ROLE"]).await.contains("master"));
    let (mut lost, mut lost_before_kill, mut acked_after, mut first_after) = (0, 0, 0, None::<Duration>);
    for (key, acks) in all_acks.iter().enumerate() {
        let log = call(&mut direct, &["LRANGE", &format!("log:{key}"), "0", "-1"]).await;
        let held: HashSet<u64> = log.lines().filter_map(|l| l.parse().ok()).collect();
        for (n, at) in acks {
            let on_new = held.contains(n);
            if *at > switched_at {
                acked_after += 1;
                assert!(
                    on_new,
                    "write {n} of log:{key}, acknowledged after the proxy switched, is not on the new primary"
                );
            }
            if on_new && *at > announced_at {
                let delay = at.duration_since(announced_at);
                first_after = Some(first_after.map_or(delay, |d: Duration| d.min(delay)));
            }
            if !on_new {
                lost += 1;
                if *at < failed_at {
                    lost_before_kill += 1;
                }
            }
        }
    }
    assert!(acked_after > 0, "no write was acknowledged after the switch");
    // A read may only be older than an acknowledged write when Redis itself lost that write
    // (acknowledged by the old primary, not replicated): never for one acknowledged after the
    // switch, which only the new primary can have acknowledged.
    let stale = std::mem::take(&mut *stale.lock().unwrap());
    let stale_after: Vec<&Stale> = stale.iter().filter(|s| s.acked_at > switched_at).collect();
    assert!(stale_after.is_empty(), "reads older than writes acknowledged after the switch: {stale_after:?}");

    // A write straight to the new primary reaches the tier by tracking there.
    let mut reader = proxy.raw().await;
    call(&mut reader, &["GET", "val:0"]).await;
    call(&mut reader, &["GET", "val:0"]).await;
    call(&mut direct, &["SET", "val:0", "direct"]).await;
    let written = Instant::now();
    common::until_reply(&mut reader, &["GET", "val:0"], "the direct write seen", |r| r.contains("direct")).await;
    let seen_after = written.elapsed();
    assert_eq!(proxy_info(&mut admin, "sentinel_failovers").await, "1");

    let acks: usize = all_acks.iter().map(Vec::len).sum();
    eprintln!(
        "{}: {acks} writes acknowledged ({acked_after} after the proxy switched), {reads} reads; \
         Sentinel announced the switch {:?} after the failover began, the proxy switched {:?} after the \
         announcement, first write on the new primary acknowledged {:?} after it; writes lost by Redis: \
         {lost} ({lost_before_kill} acknowledged before the failover began); reads older than an \
         acknowledged write (all lost by Redis): {}; a direct write to the new primary seen through \
         the proxy after {seen_after:?}",
        if kill { "SIGKILL" } else { "SENTINEL FAILOVER" },
        announced_at - failed_at,
        switched_at.saturating_duration_since(announced_at),
        first_after,
        stale.len(),
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_loses_nothing_the_proxy_acknowledged() {
    failover_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_clients_recover_by_themselves() {
    failover_under_load(true).await;
}

/// A sentinel that names whatever primary the test says, for what real sentinels do not do on
/// demand (name a replica as the primary).
struct FakeSentinel {
    addr: String,
    names: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSentinel {
    async fn start(primary: &str) -> FakeSentinel {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let names = Arc::new(Mutex::new(primary.to_owned()));
        let shared = Arc::clone(&names);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let names = Arc::clone(&shared);
                tokio::spawn(async move {
                    let mut buf = bytes::BytesMut::new();
                    let mut parser = nearcache::framing::RequestParser::new(nearcache::framing::Limits::NONE);
                    loop {
                        while let Ok(Some(nearcache::framing::Parsed::Command { len, argc })) = parser.parse(&buf) {
                            let request = buf.split_to(len);
                            let view = nearcache::framing::CommandView::new(&request, argc);
                            let args: Vec<String> =
                                view.args().map(|a| String::from_utf8_lossy(a).to_uppercase()).collect();
                            let named = names.lock().unwrap().clone();
                            let (ip, port) = named.rsplit_once(':').unwrap();
                            let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
                            let reply = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                                ["SENTINEL", "MASTER", _] => format!(
                                    "*10\r\n{}{}{}{}{}{}{}{}{}{}",
                                    bulk("name"),
                                    bulk(MASTER),
                                    bulk("ip"),
                                    bulk(ip),
                                    bulk("port"),
                                    bulk(port),
                                    bulk("flags"),
                                    bulk("master"),
                                    bulk("config-epoch"),
                                    bulk("0")
                                ),
                                ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", _] => {
                                    format!("*2\r\n{}{}", bulk(ip), bulk(port))
                                }
                                ["SENTINEL", "SENTINELS", _] => "*0\r\n".into(),
                                ["SUBSCRIBE", ref channels @ ..] => (1..=channels.len())
                                    .map(|n| format!("*3\r\n$9\r\nsubscribe\r\n{}:{n}\r\n", bulk(channels[n - 1])))
                                    .collect(),
                                _ => "-ERR unknown command\r\n".into(),
                            };
                            if stream.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match stream.read_buf(&mut buf).await {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        }
                    }
                });
            }
        });
        FakeSentinel { addr, names, task }
    }

    fn name(&self, primary: &str) {
        *self.names.lock().unwrap() = primary.to_owned();
    }
}

impl Drop for FakeSentinel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A sentinel that names a replica is refused (ROLE says replica): no primary is known, the
/// breaker is open, writes fail at once naming why, cached reads are served under
/// `serve_stale`; once a primary is named again, everything works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_a_replica_is_refused_and_cached_reads_are_served_stale() {
    let primary = Redis::start();
    let replica = Redis::start_with(
        free_port(),
        &["--dir", std::env::temp_dir().to_str().unwrap(), "--replicaof", "127.0.0.1", &primary.port.to_string()],
    );
    let sentinel = FakeSentinel::start(&primary.addr()).await;
    let mut config = sentinel_config(vec![sentinel.addr.clone()], MASTER);
    config.cache.serve_stale = nearcache::config::Span(Duration::from_secs(60));
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(primary.addr()).await;
    common::until_reply(&mut client, &["SET", "k", "v"], "the primary found", |r| r == "+OK\r\n").await;
    common::wait_for_caching(&mut client, &mut direct).await;
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");

    sentinel.name(&replica.addr());
    wait_for("the replica refused as primary", async || proxy_info(&mut client, "sentinel_primary").await.is_empty())
        .await;
    let refused = call(&mut client, &["SET", "k2", "x"]).await;
    assert!(refused.starts_with('-') && refused.contains("no primary known"), "{refused}");
    let uncached = call(&mut client, &["GET", "never-cached"]).await;
    assert!(uncached.starts_with('-') && uncached.contains("no primary known"), "{uncached}");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n", "a cached read is served stale");
    let mut on_replica = Raw::connect(replica.addr()).await;
    assert_eq!(call(&mut on_replica, &["EXISTS", "k2"]).await, ":0\r\n");
    assert_eq!(proxy_info(&mut client, "breaker_state").await, "open");

    sentinel.name(&primary.addr());
    common::until_reply(&mut client, &["SET", "k2", "x"], "writes again", |r| r == "+OK\r\n").await;
    assert_eq!(call(&mut direct, &["GET", "k2"]).await, "$1\r\nx\r\n");
    assert_eq!(proxy_info(&mut client, "sentinel_failovers").await, "0", "no primary in between is no failover");
}

/// No sentinel reachable at start: the proxy starts, says why it cannot serve, and finds the
/// primary once the sentinels are up. One sentinel down changes nothing for clients. A master
/// name the sentinels do not know is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_down_at_start_one_down_later_and_a_wrong_master_name() {
    let primary = Redis::start();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let proxy = Proxy::start(sentinel_config(addrs.clone(), MASTER)).await;
    let mut client = proxy.raw().await;
    let refused = call(&mut client, &["GET", "x"]).await;
    assert!(refused.starts_with('-') && refused.contains("no primary known"), "{refused}");
    assert_eq!(proxy_info(&mut client, "sentinels_reachable").await, "0");

    let mut sentinels: Vec<Sentinel> = ports.iter().map(|p| Sentinel::start(*p, primary.port)).collect();
    common::until_reply(&mut client, &["SET", "x", "1"], "the primary found once sentinels are up", |r| r == "+OK\r\n")
        .await;
    assert_eq!(proxy_info(&mut client, "sentinel_primary").await, primary.addr());

    drop(sentinels.remove(0));
    wait_for("one sentinel seen down", async || proxy_info(&mut client, "sentinels_reachable").await == "2").await;
    assert_eq!(call(&mut client, &["GET", "x"]).await, "$1\r\n1\r\n");

    let wrong = Proxy::start(sentinel_config(addrs, "nosuch")).await;
    let mut other = wrong.raw().await;
    wait_for("the sentinels asked", async || proxy_info(&mut other, "sentinels_reachable").await == "2").await;
    let refused = call(&mut other, &["SET", "x", "2"]).await;
    assert!(refused.starts_with('-') && refused.contains("no primary known"), "{refused}");
    assert_eq!(call(&mut client, &["GET", "x"]).await, "$1\r\n1\r\n");
}

/// Sentinel settings that contradict the rest are refused at start, naming the key.
#[test]
fn contradicting_sentinel_settings_are_refused() {
    let mut config = sentinel_config(vec!["127.0.0.1:26379".into()], "");
    assert_eq!(config.validate().unwrap_err().0, "upstream.master_name");
    config.upstream.master_name = MASTER.into();
    assert!(config.validate().is_ok());
    config.upstream.address = "10.0.0.1:6379".into();
    let (key, why) = config.validate().unwrap_err();
    assert_eq!(key, "upstream.address");
    assert!(why.contains("sentinels"), "{why}");
    let mut config = sentinel_config(vec!["nothost".into()], MASTER);
    assert_eq!(config.validate().unwrap_err().0, "upstream.sentinels");
    config.upstream.sentinels.clear();
    assert_eq!(config.validate().unwrap_err().0, "upstream.sentinels");
}

/// Sentinels with a password: the proxy logs in with `sentinel_password`; without it, it says
/// why no primary is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_a_password() {
    let primary = Redis::start();
    let sentinel = Sentinel::start_with(free_port(), primary.port, 1, "requirepass sentinel-secret");
    let mut config = sentinel_config(vec![sentinel.addr()], MASTER);
    config.upstream.sentinel_password = "sentinel-secret".into();
    let proxy = Proxy::start(config.clone()).await;
    let mut client = proxy.raw().await;
    common::until_reply(&mut client, &["SET", "x", "1"], "the primary found", |r| r == "+OK\r\n").await;
    assert_eq!(proxy_info(&mut client, "sentinels_reachable").await, "1");

    config.upstream.sentinel_password = "wrong".into();
    let refused = Proxy::start(config).await;
    let mut other = refused.raw().await;
    let reply = call(&mut other, &["GET", "x"]).await;
    assert!(reply.starts_with('-') && reply.contains("no primary known"), "{reply}");
    assert_eq!(proxy_info(&mut other, "sentinels_reachable").await, "0");
}
