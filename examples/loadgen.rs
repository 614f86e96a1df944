//! A closed-loop Redis load generator with a fixed command mix, for `benches/mixed.sh`.
//!
//! redis-benchmark runs one command per process; three processes at once (hot reads, cold
//! reads, writes) make a mix that follows each one's latency, so a slower write path makes a
//! smaller share of writes. Here every connection draws each request from the same mix: SET
//! with probability `--set-percent`, else GET, a share `--hot-percent` of GETs on `--hot-keys`
//! keys and the rest on `--keys` keys (SETs on `--keys`). Keys are `key:%012d`, as
//! redis-benchmark's `-r` makes them. Like redis-benchmark, it runs on one thread.
//!
//! ```text
//! cargo run --release --example loadgen -- --port 6379 --seconds 8
//! ```
//!
//! Prints one line for the measured window (after `--warmup` seconds):
//! `rps <requests per second> set_share <fraction> p50_ms <median latency> errors <count>`.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clap::Parser;
use nearcache::reply::ReplyScanner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    #[arg(long, default_value_t = 10)]
    set_percent: u32,
    #[arg(long, default_value_t = 70)]
    hot_percent: u32,
    #[arg(long, default_value_t = 100)]
    hot_keys: u64,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes of each SET value.
    #[arg(long, default_value_t = 3)]
    value_size: usize,
}

/// What one connection measured inside the window.
#[derive(Default)]
struct Tally {
    gets: u64,
    sets: u64,
    errors: u64,
    /// Microseconds per request.
    latencies: Vec<u32>,
}

/// xorshift64*: a few instructions per draw, seeded per connection.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }
}

/// A request buffer whose 12 key digits are rewritten in place for each request.
struct Request {
    bytes: Vec<u8>,
    digits: usize,
}

impl Request {
    fn new(args: &[&[u8]]) -> Request {
        let encoded = nearcache::framing::encode_command(args);
        let digits = encoded.windows(16).position(|w| w == b"key:000000000000").expect("a key") + 4;
        Request { bytes: encoded.to_vec(), digits }
    }

    fn with_key(&mut self, mut n: u64) -> &[u8] {
        for d in self.bytes[self.digits..self.digits + 12].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        &self.bytes
    }
}

async fn client(args: Args, seed: u64, start: Instant) -> std::io::Result<Tally> {
    let mut stream = TcpStream::connect((args.host.as_str(), args.port)).await?;
    stream.set_nodelay(true)?;
    let value = vec![b'x'; args.value_size];
    let mut get = Request::new(&[b"GET", b"key:000000000000"]);
    let mut set = Request::new(&[b"SET", b"key:000000000000", &value]);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let (from, until) =
        (start + Duration::from_secs_f64(args.warmup), start + Duration::from_secs_f64(args.warmup + args.seconds));
    let mut tally = Tally::default();
    loop {
        let is_set = rng.below(100) < u64::from(args.set_percent);
        let request = if is_set {
            set.with_key(rng.below(args.keys))
        } else if rng.below(100) < u64::from(args.hot_percent) {
            get.with_key(rng.below(args.hot_keys))
        } else {
            get.with_key(rng.below(args.keys))
        };
        let sent = Instant::now();
        stream.write_all(request).await?;
        let mut scanner = ReplyScanner::default();
        let len = loop {
            if let Some(len) = scanner.scan(&buf).map_err(|e| std::io::Error::other(format!("{e:?}")))? {
                break len;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let is_error = buf[0] == b'-';
        buf.advance(len);
        let done = Instant::now();
        if done >= until {
            return Ok(tally);
        }
        if sent >= from {
            tally.errors += u64::from(is_error);
            if is_set {
                tally.sets += 1;
            } else {
                tally.gets += 1;
            }
            tally.latencies.push(done.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tallies = runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> =
            (0..args.clients).map(|i| tokio::spawn(client(args.clone(), i as u64 + 1, start))).collect();
        let mut tallies = Vec::new();
        for task in tasks {
            tallies.push(task.await.map_err(std::io::Error::other)??);
        }
        Ok::<_, std::io::Error>(tallies)
    })?;
    let (gets, sets, errors) = tallies.iter().fold((0, 0, 0), |(g, s, e), t| (g + t.gets, s + t.sets, e + t.errors));
    let mut latencies: Vec<u32> = tallies.into_iter().flat_map(|t| t.latencies).collect();
    latencies.sort_unstable();
    let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or(0);
    let total = (gets + sets).max(1);
    println!(
        "rps {:.0} set_share {:.3} p50_ms {:.3} errors {errors}",
        total as f64 / args.seconds,
        sets as f64 / total as f64,
        f64::from(p50) / 1000.0
    );
    Ok(())
}
