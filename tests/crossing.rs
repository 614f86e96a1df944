//! No reply ever reaches the wrong client. Many clients share ONE upstream connection and send
//! random pipelines that mix ordinary commands on their own keys with commands whose reply
//! count or connection effect a proxy can mispredict: the (P|S)UNSUBSCRIBE family with 0..n
//! channels (pushes in RESP3), CLIENT REPLY, CLIENT TRACKING, SELECT, HELLO, MULTI/EXEC/DISCARD,
//! WATCH, RESET, QUIT, inline commands. Every client's byte stream is compared with what the same requests
//! get from a private redis-server directly.
//!
//! Seed: `CROSSING_SEED=n` reproduces a run (the seed is printed on failure).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::{PATIENCE, Proxy, Redis, config_for};
use nearcache::framing::encode_command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 8;
const PIPELINES: usize = 250;

/// xorshift64*: enough randomness for a workload, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cmd(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(&encode_command(args));
}

/// One random pipeline of client `c`, ending with `PING <marker>` (or QUIT after it).
fn pipeline(rng: &mut Rng, c: usize, marker: &str) -> (Vec<u8>, bool) {
    let key = |rng: &mut Rng| format!("c{c}:k{}", rng.below(4));
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        match rng.below(18) {
            0..=2 => cmd(&mut out, &["SET", &key(rng), &format!("v{}", rng.below(100))]),
            3..=4 => cmd(&mut out, &["GET", &key(rng)]),
            5 => cmd(&mut out, &["MGET", &key(rng), &key(rng), &key(rng)]),
            6 => cmd(&mut out, &["INCR", &format!("c{c}:n")]),
            7 => {
                let name = ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"][rng.below(3) as usize];
                let channels: Vec<String> = (0..rng.below(4)).map(|i| format!("c{c}:ch{i}")).collect();
                let mut args = vec![name];
                args.extend(channels.iter().map(String::as_str));
                cmd(&mut out, &args);
            }
            8 => cmd(&mut out, &["SELECT", &rng.below(3).to_string()]),
            9 => cmd(&mut out, &["HELLO", if rng.below(2) == 0 { "2" } else { "3" }]),
            10 => {
                cmd(&mut out, &["MULTI"]);
                for _ in 0..rng.below(3) {
                    match rng.below(3) {
                        0 => cmd(&mut out, &["SET", &key(rng), "m"]),
                        1 => cmd(&mut out, &["INCR", &format!("c{c}:n")]),
                        _ => cmd(&mut out, &["GET", &key(rng)]),
                    }
                }
                cmd(&mut out, &[if rng.below(4) == 0 { "DISCARD" } else { "EXEC" }]);
            }
            11 => cmd(&mut out, &["WATCH", &key(rng)]),
            12 => cmd(&mut out, &["UNWATCH"]),
            13 => {
                if rng.below(2) == 0 {
                    cmd(&mut out, &["CLIENT", "REPLY", "OFF"]);
                    cmd(&mut out, &["SET", &key(rng), "quiet"]);
                    cmd(&mut out, &["CLIENT", "REPLY", "ON"]);
                } else {
                    cmd(&mut out, &["CLIENT", "REPLY", "SKIP"]);
                    cmd(&mut out, &["INCR", &format!("c{c}:n")]);
                }
            }
            14 => cmd(&mut out, &["RESET"]),
            16 => match rng.below(7) {
                0 | 1 => cmd(&mut out, &["CLIENT", "SETNAME", &format!("client-{c}")]),
                2 | 3 => cmd(&mut out, &["CLIENT", "GETNAME"]),
                4 | 5 => cmd(&mut out, &["CLIENT", "SETINFO", "LIB-NAME", "crossing"]),
                // Its own writes to keys it read come back as invalidations (pushes in RESP3).
                _ => cmd(&mut out, &["CLIENT", "TRACKING", "on"]),
            },
            15 => {
                cmd(&mut out, &["SUBSCRIBE", &format!("c{c}:sub")]);
                cmd(&mut out, &["PING", "inside"]);
                cmd(&mut out, &["UNSUBSCRIBE"]);
            }
            _ => {
                let inline = format!("GET {}\r\nPING\r\n", key(rng));
                out.extend_from_slice(inline.as_bytes());
            }
        }
    }
    out.extend_from_slice(&encode_command(&["PING", marker]));
    let quit = rng.below(25) == 0;
    if quit {
        out.extend_from_slice(&encode_command(&["QUIT"]));
    }
    (out, quit)
}

/// Reads until the marker's reply has arrived (and, after QUIT, until the connection closes).
async fn read_through(stream: &mut TcpStream, marker: &str, quit: bool) -> Result<Vec<u8>, String> {
    let mut buf = BytesMut::new();
    let needle = format!("{marker}\r\n");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = buf.windows(needle.len()).any(|w| w == needle.as_bytes());
        if found && !quit {
            return Ok(buf.to_vec());
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) if quit => return Ok(buf.to_vec()),
            Ok(Ok(0)) => return Err(format!("closed; got {:?}", String::from_utf8_lossy(&buf))),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{e}; got {:?}", String::from_utf8_lossy(&buf))),
            Err(_) => return Err(format!("no marker in time; got {:?}", String::from_utf8_lossy(&buf))),
        }
    }
}

/// HELLO's `id` is the connection's own: the only field that may differ.
fn normalize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("$2\r\nid\r\n:") {
        let start = at + "$2\r\nid\r\n:".len();
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find("\r\n").unwrap_or(rest.len());
        out.push('N');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

async fn client(c: usize, seed: u64, proxy: std::net::SocketAddr, direct: String) -> Result<usize, String> {
    let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut via = TcpStream::connect(proxy).await.unwrap();
    let mut own = TcpStream::connect(&direct).await.unwrap();
    let mut history: Vec<String> = Vec::new();
    for n in 0..PIPELINES {
        let marker = format!("mark-{c}-{n}");
        let (bytes, quit) = pipeline(&mut rng, c, &marker);
        via.write_all(&bytes).await.unwrap();
        own.write_all(&bytes).await.unwrap();
        let expected = read_through(&mut own, &marker, quit).await.map_err(|e| format!("direct: {e}"))?;
        let got = read_through(&mut via, &marker, quit).await;
        let request = String::from_utf8_lossy(&bytes).into_owned();
        let before = history.join("\n");
        let got = got.map_err(|e| format!("client {c}, pipeline {n}: {e}\nsent {request:?}\nafter:\n{before}"))?;
        if normalize(&got) != normalize(&expected) {
            return Err(format!(
                "client {c}, pipeline {n}: sent {request:?}\nRedis answered {:?}\nthe proxy answered {:?}\nafter:\n{before}",
                normalize(&expected),
                normalize(&got)
            ));
        }
        history.push(format!("{request:?} -> {:?}", normalize(&expected)));
        if history.len() > 6 {
            history.remove(0);
        }
        if quit {
            history.clear();
        }
        if quit {
            via = TcpStream::connect(proxy).await.unwrap();
            own = TcpStream::connect(&direct).await.unwrap();
        }
    }
    Ok(PIPELINES)
}

async fn run(cache: bool) {
    let behind = Redis::start();
    let reference = Redis::start();
    let mut config = config_for(&behind.addr());
    config.upstream.connections = 1;
    config.cache.enabled = cache;
    let proxy = Proxy::start(config).await;
    let seed = std::env::var("CROSSING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    let tasks: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(client(c, seed, proxy.addr, reference.addr()))).collect();
    let mut done = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(n) => done += n,
            Err(e) => panic!("CROSSING_SEED={seed}: {e}"),
        }
    }
    assert_eq!(done, CLIENTS * PIPELINES);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_cross_between_clients_sharing_one_upstream_connection() {
    run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_cross_with_the_tier_off() {
    run(false).await;
}

/// A client with nothing in flight may move to another shared connection (the first not already
/// holding a full read for Redis); one with requests unanswered must not, or Redis could run
/// its later requests first. Eight clients each send pipelines of 1 KiB APPENDs (several
/// batches each, filling connections past the point where idle clients move on): every key
/// ends up with its chunks in the order sent, and every reply is the length after its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_pipeline_runs_in_order_across_several_connections() {
    const APPENDS: usize = 120;
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 4;
    let proxy = Proxy::start(config).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = proxy.url();
            tokio::spawn(async move {
                let mut con = common::multiplexed(&url).await.unwrap();
                for round in 0..6 {
                    let key = format!("order:{c}:{round}");
                    common::appends_stay_in_order(&mut con, &[key], APPENDS, &format!("client {c} round {round}"))
                        .await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    proxy.stop().await;
}

/// A client with nothing in flight does not queue behind another client's large reply: a GET
/// of a 1 MiB value stops after its first KiB (a scriptable fake upstream holds the rest, as a
/// slow link would), and other clients' reads are answered meanwhile on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_does_not_wait_behind_anothers_large_reply() {
    let fake = common::fake::FakeRedis::start().await;
    fake.set("big", &"x".repeat(1 << 20));
    fake.set("small", "s");
    fake.hold_midway("big");
    let mut config = config_for(&fake.addr);
    config.upstream.connections = 2;
    config.cache.enabled = false;
    let proxy = Proxy::start(config).await;
    let mut large = proxy.raw().await;
    large.cmd(&[b"GET", b"big"]).await;
    let deadline = Instant::now() + PATIENCE;
    while fake.halfway() == 0 {
        assert!(Instant::now() < deadline, "the large reply never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Fresh clients until one is answered: one that chose before the proxy read the start of
    // the large reply took the first connection, and waits behind it.
    let mut behind = Vec::new();
    loop {
        let mut small = proxy.raw().await;
        small.cmd(&[b"GET", b"small"]).await;
        match small.try_reply(Duration::from_secs(1)).await {
            Some(reply) => {
                assert_eq!(&reply[..], b"$1\r\ns\r\n");
                break;
            }
            None => behind.push(small),
        }
        assert!(Instant::now() < deadline, "every read waited behind the large reply");
    }
    fake.release();
    let reply = large.reply().await;
    assert_eq!(reply.len(), (1 << 20) + b"$1048576\r\n\r\n".len());
    for mut small in behind {
        assert_eq!(&small.reply().await[..], b"$1\r\ns\r\n");
    }
    proxy.stop().await;
}
