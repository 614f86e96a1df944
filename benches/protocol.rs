//! Hot-path costs that do not involve sockets: framing a client's pipelined requests, routing
//! each one, the cache-hit path, and finding reply boundaries in what Redis sends back.
//!
//! Run: `cargo bench --bench protocol` (add `-- --quick` for a short run).
//!
//! Last recorded (2-core dev box, `-- --quick`): frame 16 pipelined SETs 390 ns (24 ns/request),
//! route GET with the tier off (table lookup included) 59 ns, the hit path (frame, lookup, route,
//! policy, tier lookup) 134 ns, scan 16 bulk replies 127 ns (8 ns/reply); TTL planning of a
//! write under a rule ~200 ns, under no rule 50 ns. The command table (lookup, class, tier effect,
//! metrics slot) 31 ns for GET, HSET or ZREVRANGEBYSCORE, 27 ns for an unknown name (three
//! separate name matches did it in 35, 38, 25 and 47 ns). Runs differ by up to 20% on that machine.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nearcache::cache::{Cause, Tier};
use nearcache::config::Config;
use nearcache::framing::{CommandView, Limits, Parsed, RequestParser, encode_command};
use nearcache::policy::Policy;
use nearcache::proxy::{Env, Route, Session};
use nearcache::reply::ReplyScanner;
use nearcache::tracking;
use nearcache::ttl;
use nearcache::upstream::ServerInfo;

const LIMITS: Limits = Limits { max_request_size: 512 << 20, max_args: 1 << 20 };

fn pipeline_of_sets(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| encode_command(&["SET".to_string(), format!("key:{i:06}"), "x".repeat(32)]).to_vec()).collect()
}

fn framing(c: &mut Criterion) {
    let input = pipeline_of_sets(16);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(16));
    group.bench_function("16 pipelined SETs", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new(LIMITS);
            let mut at = 0;
            while let Ok(Some(Parsed::Command { len, .. })) = parser.parse(black_box(&input[at..])) {
                at += len;
            }
            assert_eq!(at, input.len());
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut session = Session::new(1);
    let info = ServerInfo::new("7.0.0", 16);
    let policy = Policy::new(&Config::default());
    let admin = |_: &mut Session, _: &CommandView<'_>| Bytes::new();
    let (sink, _replies) = tokio::sync::mpsc::unbounded_channel();
    let clients = nearcache::client_table::ClientTable::default();
    let counters = ttl::Counters::default();
    let access = nearcache::access::Access::default();
    let get = encode_command(&["GET", "user:1234"]);
    c.bench_function("route GET (tier off)", |b| {
        b.iter(|| {
            let env = Env {
                admin: &admin,
                server: &info,
                policy: &policy,
                access: &access,
                tier: None,
                ttl: &counters,
                now: Instant::now(),
                upstream_down: false,
                seq: 0,
                sink: &sink,
                clients: &clients,
                shard_down: None,
            };
            let cmd = CommandView::new(black_box(&get), 2);
            session.route(&cmd, &nearcache::command::lookup(cmd.arg(0).unwrap_or_default()), &env)
        })
    });

    // The hit path: frame a GET, route it through the policy and the tier, get the reply bytes.
    let tier = Tier::new(64 << 20, 1 << 20, true, std::time::Duration::ZERO);
    let now = Instant::now();
    let env = Env {
        server: &info,
        admin: &admin,
        policy: &policy,
        access: &access,
        tier: Some(&tier),
        ttl: &counters,
        now,
        upstream_down: false,
        seq: 0,
        sink: &sink,
        clients: &clients,
        shard_down: None,
    };
    let get_command = nearcache::command::lookup(b"GET");
    let Route::Fill(_, ticket) = session.route(&CommandView::new(&get, 2), &get_command, &env) else {
        panic!("expected a miss")
    };
    tier.fill(ticket, Bytes::from_static(b"$5\r\nalice\r\n"), Some(-1));
    c.bench_function("hit path: frame + route + tier lookup", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new(LIMITS);
            let Ok(Some(Parsed::Command { len, argc })) = parser.parse(black_box(&get)) else { panic!() };
            let env = Env {
                admin: &admin,
                server: &info,
                policy: &policy,
                access: &access,
                tier: Some(&tier),
                ttl: &counters,
                now: Instant::now(),
                upstream_down: false,
                seq: 0,
                sink: &sink,
                clients: &clients,
                shard_down: None,
            };
            let cmd = CommandView::new(&get[..len], argc);
            match session.route(&cmd, &nearcache::command::lookup(cmd.arg(0).unwrap_or_default()), &env) {
                Route::Hit(reply) => reply,
                other => panic!("not a hit: {other:?}"),
            }
        })
    });
}

/// What the proxy knows of a command (route class, tier effect, metrics slot), per request.
fn table(c: &mut Criterion) {
    let mut group = c.benchmark_group("command table");
    for args in [
        &["GET", "user:1234"][..],
        &["HSET", "h", "f", "v"],
        &["ZREVRANGEBYSCORE", "z", "+inf", "-inf"],
        &["NOSUCH", "x"],
    ] {
        let bytes = encode_command(args);
        group.bench_function(args[0], |b| {
            b.iter(|| {
                let cmd = CommandView::new(black_box(&bytes), args.len());
                let command = nearcache::command::lookup(cmd.arg(0).unwrap_or_default());
                (command.class(&cmd), command.effect(&cmd), command.slot)
            })
        });
    }
    group.bench_function("lookup only", |b| b.iter(|| nearcache::command::lookup(black_box(b"GET"))));
    group.finish();
}

fn scanning(c: &mut Criterion) {
    let replies: Vec<u8> = (0..16).flat_map(|_| b"$32\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n".to_vec()).collect();
    let mut group = c.benchmark_group("replies");
    group.throughput(Throughput::Elements(16));
    group.bench_function("scan 16 bulk replies", |b| {
        b.iter(|| {
            let mut scanner = ReplyScanner::default();
            let mut at = 0;
            while let Ok(Some(len)) = scanner.scan(black_box(&replies[at..])) {
                at += len;
            }
            assert_eq!(at, replies.len());
        })
    });
    group.finish();
}

/// TTL enforcement's planning of writes: a key under a rule, and one under none.
fn ttl_planning(c: &mut Criterion) {
    let text = "[[rule]]\npattern = \"session:*\"\ndefault_ttl = \"24h\"\nmax_ttl = \"7d\"\n";
    let policy = Policy::new(&Config::parse(text, std::path::Path::new("bench.toml")).unwrap());
    let counters = ttl::Counters::default();
    for (name, args) in [
        ("ttl: SET under a rule (gains PX)", &["SET", "session:1", "v"][..]),
        ("ttl: HSET under a rule (gains PEXPIRE NX)", &["HSET", "session:1", "f", "v"]),
        ("ttl: HSET under no rule", &["HSET", "user:1", "f", "v"]),
    ] {
        let bytes = encode_command(args);
        let role = nearcache::command::lookup(args[0].as_bytes()).spec.ttl;
        c.bench_function(name, |b| {
            b.iter(|| ttl::plan(&CommandView::new(black_box(&bytes), args.len()), role, &policy, &counters, 1))
        });
    }
}

/// What a write costs the tier: invalidating its key (cached or not, 1000 cached keys around),
/// and applying Redis's tracking push for one key.
fn invalidation(c: &mut Criterion) {
    let tier = Tier::new(64 << 20, 1 << 20, true, std::time::Duration::ZERO);
    let keys: Vec<Bytes> = (0..1000).map(|i| Bytes::from(format!("key:{i:012}"))).collect();
    let refill = |key: &Bytes| {
        let at = nearcache::cache::LookupAt::now();
        if let nearcache::cache::Lookup::Miss(ticket) =
            tier.lookup(key, key, std::time::Duration::from_secs(60), at, || unreachable!())
        {
            tier.fill(ticket, Bytes::from_static(b"$3\r\nxxx\r\n"), None);
        }
    };
    keys.iter().for_each(refill);
    c.bench_function("tier: invalidate an uncached key", |b| {
        b.iter(|| tier.invalidate(black_box(b"other:000000000001"), Cause::Write))
    });
    let mut i = 0;
    c.bench_function("tier: invalidate a cached key, then fill it again", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            tier.invalidate(black_box(&keys[i]), Cause::Write);
            refill(&keys[i]);
        })
    });
    // The expiry sweep's idle cost: one round (one step of nodes) finding nothing expired.
    c.bench_function("tier: a sweep round, nothing expired", |b| {
        b.iter(|| tier.sweep_expired(black_box(Instant::now())))
    });
    let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$18\r\nother:000000000001\r\n";
    c.bench_function("tracking: apply an invalidate push for one uncached key", |b| {
        b.iter(|| tracking::apply(black_box(push), &tier))
    });
}

criterion_group!(benches, framing, routing, table, scanning, ttl_planning, invalidation);
criterion_main!(benches);
