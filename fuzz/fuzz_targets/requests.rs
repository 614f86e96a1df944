//! Arbitrary bytes as a client's stream: framed by the request parser (whole, and again in two
//! parts, which must give the same requests), every command looked up in the command table (its
//! key positions within its arguments) and routed by a session (classification, tier effects,
//! TTL enforcement, MGET splitting, local answers), and the same bytes scanned as
//! upstream replies. Nothing may panic, loop or disagree.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use nearcache::access::Access;
use nearcache::cache::Tier;
use nearcache::command::{self, key_args};
use nearcache::config::Config;
use nearcache::framing::{CommandView, Limits, Parsed, RequestParser};
use nearcache::policy::Policy;
use nearcache::proxy::{Env, Session};
use nearcache::reply::ReplyScanner;
use nearcache::ttl::{self, Shape, Shaper};
use nearcache::upstream::ServerInfo;

const LIMITS: Limits = Limits { max_request_size: 1 << 16, max_args: 256 };

struct World {
    policy: Policy,
    access: Access,
    server: ServerInfo,
    counters: ttl::Counters,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let text = "[[rule]]\npattern = \"s*\"\ndefault_ttl = \"1h\"\nmax_ttl = \"1d\"\n\
                    [[rule]]\npattern = \"t*\"\ncache = \"ttl\"\nmax_ttl = \"1m\"\npersist = \"refuse\"\n";
        let config = Config::parse(text, std::path::Path::new("fuzz.toml")).unwrap();
        World {
            policy: Policy::new(&config),
            access: Access::new(&config).unwrap(),
            server: ServerInfo::new("7.0.0", 16),
            counters: ttl::Counters::default(),
        }
    })
}

/// Every frame the parser finds in `data` fed at once, as (kind, length, argc).
fn frames(chunks: &[&[u8]]) -> Vec<(u8, usize, usize)> {
    let mut parser = RequestParser::new(LIMITS);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&buf) {
                Ok(Some(Parsed::Command { len, argc })) => {
                    out.push((0, len, argc));
                    buf.drain(..len);
                }
                Ok(Some(Parsed::Inline { len, argc, .. })) => {
                    out.push((1, len, argc));
                    buf.drain(..len);
                }
                Ok(Some(Parsed::Empty { len })) => {
                    out.push((2, len, 0));
                    buf.drain(..len);
                }
                Ok(None) => break,
                Err(_) => {
                    out.push((3, 0, 0));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // Resumable framing: split anywhere, the same requests come out.
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    assert_eq!(frames(&[data]), frames(&[&data[..cut], &data[cut..]]), "cut at {cut}");

    let tier = Tier::new(1 << 20, 1 << 16, true, Duration::from_secs(1));
    let (sink, _replies) = tokio::sync::mpsc::unbounded_channel();
    let clients = nearcache::client_table::ClientTable::default();
    let mut session = Session::new(1);
    let mut parser = RequestParser::new(LIMITS);
    let mut at = 0;
    let admin = |_: &mut Session, _: &CommandView<'_>| Bytes::new();
    while at < data.len() {
        let env = Env {
            server: &w.server,
            admin: &admin,
            policy: &w.policy,
            access: &w.access,
            tier: Some(&tier),
            ttl: &w.counters,
            now: Instant::now(),
            upstream_down: data.len() % 7 == 0,
            seq: at as u64,
            sink: &sink,
            clients: &clients,
            shard_down: None,
        };
        let (len, route) = match parser.parse(&data[at..]) {
            Ok(Some(Parsed::Command { len, argc })) => {
                let cmd = CommandView::new(&data[at..at + len], argc);
                let found = command::lookup(cmd.arg(0).unwrap_or_default());
                // Key positions from any arguments: never out of the command's arguments.
                assert!(key_args(&cmd, found.spec.keys).count() < argc.max(1));
                (len, Some(session.route(&cmd, &found, &env)))
            }
            Ok(Some(Parsed::Inline { len, argc, encoded })) => {
                let cmd = CommandView::new(&encoded, argc);
                let found = command::lookup(cmd.arg(0).unwrap_or_default());
                (len, Some(session.route(&cmd, &found, &env)))
            }
            Ok(Some(Parsed::Empty { len })) => (len, None),
            Ok(None) | Err(_) => break,
        };
        drop(route);
        at += len;
    }

    // The same bytes as upstream replies: boundaries found, resumably, and shapes survive them.
    let mut scanner = ReplyScanner::default();
    let mut shaper = Shaper::new(Shape::Exec(vec![true, false, true]));
    let mut pos = 0;
    while let Ok(Some(len)) = scanner.scan(&data[pos..]) {
        let _ = shaper.feed(&data[pos..pos + len]);
        let _ = Shaper::new(Shape::Transaction { extra: 1 }).feed(&data[pos..pos + len]);
        pos += len;
        scanner = ReplyScanner::default();
    }
    let _ = Bytes::new();
});
