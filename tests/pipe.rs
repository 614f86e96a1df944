//! The shared upstream connection as a pipe, driven directly (no proxy around it): a tier fill
//! and the PTTL probe it needs are one batch, admitted or refused by the breaker together, so a
//! refused read can never leave its probe's answer for the next fill on the connection to take
//! as its own (an entry would then outlive its key).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PATIENCE, Redis};
use nearcache::breaker::Outcome;
use nearcache::cache::{Lookup, LookupAt, Tier, Waiter};
use nearcache::config::Span;
use nearcache::delivery::Delivery;
use nearcache::framing::encode_command;
use nearcache::metrics::Metrics;
use nearcache::upstream::{Batch, Pick, Pool, PoolKey, ReplyChunk, Upstream};
use tokio::sync::mpsc;

const LOCAL_TTL: Duration = Duration::from_secs(3600);

fn nobody() -> Waiter {
    panic!("no waiter expected")
}

/// Sends `GET key` through the tier's fill path and returns its reply.
async fn fill(pool: &Pool, tier: &Arc<Tier>, key: &str) -> Bytes {
    let Lookup::Miss(ticket) = tier.lookup(key.as_bytes(), b"GET", LOCAL_TTL, LookupAt::now(), nobody) else {
        panic!("{key} is not a miss")
    };
    let get = encode_command(&["GET", key]);
    let (sink, mut replies) = mpsc::unbounded_channel::<ReplyChunk>();
    let delivery = Delivery::for_read(Some(tier), Some(ticket), None).unwrap();
    pool.send(&mut Pick::kept(0), delivery.into_batch(get, 0, 1, &sink));
    let chunk = tokio::time::timeout(PATIENCE, replies.recv()).await.expect("a reply in time").unwrap();
    chunk.bytes
}

#[tokio::test]
async fn a_fill_and_its_pttl_probe_are_admitted_together() {
    let redis = Redis::start();
    let mut direct = common::multiplexed(&redis.url()).await.unwrap();
    let _: () = redis::cmd("SET").arg("forever").arg("1").query_async(&mut direct).await.unwrap();
    let _: () = redis::cmd("SET").arg("brief").arg("2").arg("PX").arg(100_000).query_async(&mut direct).await.unwrap();

    let mut config = common::config_for(&redis.addr());
    config.breaker.connect_failures = 1;
    config.breaker.half_open_probes = 1;
    config.breaker.open_for = Span(Duration::from_millis(50));
    let upstream = Upstream::new(&config, None, None, Arc::new(Metrics::default()));
    let pool = upstream.pool(PoolKey::default());
    let tier = Arc::new(Tier::new(1 << 20, 64 << 10, true, Duration::ZERO));
    // The connection is up once a plain batch is answered.
    let (sink, mut replies) = mpsc::unbounded_channel();
    pool.send(&mut Pick::kept(0), Batch::plain(encode_command(&["PING"]), 0, 1, sink));
    tokio::time::timeout(PATIENCE, replies.recv()).await.expect("PING answered").unwrap();

    // Tripped, then half-open with room for one call: the first fill is that call.
    upstream.breaker().record(Outcome::ConnectFailed);
    assert!(upstream.breaker().is_refusing());
    let deadline = Instant::now() + PATIENCE;
    while upstream.breaker().refusal().is_some() {
        assert!(Instant::now() < deadline, "the open period did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = fill(&pool, &tier, "forever").await;
    assert_eq!(&first[..], b"$1\r\n1\r\n", "admitted whole: probe and read");

    // The breaker closed on that call. The next fill's entry lives as long as its own key.
    assert!(!upstream.breaker().is_refusing());
    assert_eq!(&fill(&pool, &tier, "brief").await[..], b"$1\r\n2\r\n");
    let variants = tier.inspect(b"brief");
    assert_eq!(variants.len(), 1);
    assert!(
        variants[0].remaining <= Duration::from_secs(100),
        "the entry outlives its key: {:?} left, the key has at most 100s",
        variants[0].remaining
    );
}
