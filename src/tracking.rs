//! The tracking connection: how writes that do not pass through this proxy (other proxies,
//! direct clients, scripts, expiry, eviction) reach the local tier.
//!
//! Redis tracks the keys the shared connections read (`CLIENT TRACKING ON REDIRECT`, see
//! `upstream/tracked.rs`) and sends their invalidations to a dedicated RESP3 connection, as
//! `invalidate` pushes: a key array drops those keys, a null (FLUSHALL/FLUSHDB) clears the
//! tier. Only keys read through the proxy since they were last invalidated cost a push, so
//! writes of keys nobody reads here cost Redis and the proxy nothing more than without a tier.
//!
//! # Losing the stream
//! While the connection is down, invalidations are missed. So the tier is cleared and tracked
//! rules stop caching ([`Tier::tracking_lost`]) the moment the connection fails, until a new
//! one is up and every shared connection redirects to it. Losing a shared connection loses
//! Redis's memory of the keys it read: the tier is distrusted then too (and caches again at
//! once: the connection's replacement redirects before it reads). Reads in flight across
//! either are refused by the tier's clear counter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use crate::cache::{Cause, Tier};
use crate::framing::{CommandView, Limits, Parsed, RequestParser, encode_command};
use crate::reply::ReplyScanner;
use crate::upstream::{self, Backoff, PoolKey, Upstream};

/// A connection that lived this long before failing starts the backoff over.
const STABLE: Duration = Duration::from_secs(2);

/// What a tracking connection covers: what happens when it comes up and when it is lost.
pub trait Scope: Send + Sync {
    /// Tracking is on: tracked rules may cache what it covers.
    fn started(&self);
    /// Invalidations may have been missed: what it covers is dropped and uncached until it is
    /// back.
    fn lost(&self);
}

/// One Redis: the whole tier.
impl Scope for Tier {
    fn started(&self) {
        self.tracking_started();
    }
    fn lost(&self) {
        self.tracking_lost();
    }
}

/// Runs the tracking connection for as long as the proxy runs, reconnecting with backoff.
pub async fn run(upstream: Arc<Upstream>, tier: Arc<Tier>) {
    run_for(upstream, Arc::clone(&tier), tier).await
}

/// [`run`] for what `scope` covers (a Redis Cluster node's slots, see `cluster.rs`).
pub async fn run_for(upstream: Arc<Upstream>, tier: Arc<Tier>, scope: Arc<dyn Scope>) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let (err, was_up) = track(&upstream, &tier, &*scope).await;
        if was_up {
            warn!(upstream = %upstream.addr(), error = %err, "tracking connection lost: local tier cleared, tracked keys uncached until it is back");
        }
        scope.lost();
        if started.elapsed() > STABLE {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One tracking connection, until it fails: why, and whether tracking had been on.
async fn track(upstream: &Upstream, tier: &Tier, scope: &dyn Scope) -> (String, bool) {
    let Some(tracked) = upstream.tracked.as_deref() else { return ("tracking is off".into(), false) };
    let (mut stream, mut switch) = match upstream.connect_watched(PoolKey { db: 0, resp3: true }).await {
        Ok(opened) => opened,
        Err(err) => return (err.to_string(), false),
    };
    let _up = upstream.connection_up();
    // Its id, and whether Redis lets the proxy's user track (checked here, where a refusal
    // keeps tracking down, rather than on every shared connection).
    let setup = [
        encode_command(&["cLIENT", "SETNAME", "nearcache-tracking"]),
        encode_command(&["cLIENT", "ID"]),
        encode_command(&["cLIENT", "TRACKING", "ON"]),
        encode_command(&["cLIENT", "TRACKING", "OFF"]),
    ];
    let replies = match upstream::exchange(&mut stream, &setup.concat(), setup.len()).await {
        Ok(replies) => replies,
        Err(e) => return (e, false),
    };
    let id = std::str::from_utf8(&replies[1]).ok().and_then(|r| r.strip_prefix(':')?.trim_end().parse().ok());
    let refused = replies.iter().enumerate().find(|(i, r)| *i != 1 && &r[..] != b"+OK\r\n");
    let (Some(id), None) = (id, refused) else {
        let reply = refused.map_or(&replies[1], |(_, r)| r);
        return (format!("CLIENT TRACKING refused: {}", String::from_utf8_lossy(reply).trim_end()), false);
    };
    let generation = tracked.redirect_to(id);
    scope.started();
    info!(upstream = %upstream.addr(), "tracking on: the local tier caches tracked keys");
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = ReplyScanner::default();
    let reason: String = 'track: loop {
        while let Some(len) = match scanner.scan(&buf) {
            Ok(found) => found,
            Err(e) => break 'track e.to_string(),
        } {
            apply(&buf.split_to(len), tier);
        }
        // A new primary never tracked what is cached: the tier is cleared (by `sentinel.rs`,
        // and again here) and tracking starts over on the new one.
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => break "closed by upstream".into(),
                Ok(_) if switch.happened() => break "the primary changed".into(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            },
            _ = switch.wait() => break "the primary changed".into(),
            _ = tracked.lost.notified() => match tracked.take_lost(generation) {
                (_, true) => break "a shared connection could not redirect its tracking".into(),
                (true, _) => {
                    // What the lost connection read is tracked no more: nothing cached can be
                    // trusted. Its replacement redirects before it reads, so caching goes on.
                    debug!(upstream = %upstream.addr(), "a tracking shared connection was lost: local tier distrusted");
                    scope.lost();
                    scope.started();
                }
                _ => {}
            },
        }
    };
    tracked.down();
    (reason, true)
}

/// How an `invalidate` push starts; a null (everything) or an array of keys follows.
const INVALIDATE: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";

/// Applies one message from the tracking connection (a complete frame): an `invalidate` push
/// drops its keys, or clears the tier when its key list is null or cannot be read. The key
/// array has the shape of a request (an array of bulk strings), so the request parser walks it
/// without allocating.
pub fn apply(frame: &[u8], tier: &Tier) {
    let Some(keys) = frame.strip_prefix(INVALIDATE) else { return };
    if keys == b"*0\r\n" {
        return;
    }
    let mut parser = RequestParser::new(Limits::NONE);
    match parser.parse(keys) {
        Ok(Some(Parsed::Command { len, argc })) if keys[0] == b'*' && len == keys.len() => {
            CommandView::new(keys, argc).args().for_each(|key| tier.invalidate(key, Cause::Tracking))
        }
        // A null key list (`_`: FLUSHALL, FLUSHDB) or one that cannot be read: everything,
        // rather than keep a stale key.
        _ => tier.clear(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Lookup, LookupAt};

    fn cached(tier: &Tier, key: &[u8]) -> bool {
        match tier.lookup(key, key, Duration::from_secs(60), LookupAt::now(), || unreachable!()) {
            Lookup::Miss(ticket) => {
                tier.fill(ticket, bytes::Bytes::from_static(b"+v\r\n"), None);
                false
            }
            Lookup::Hit(_) => true,
            Lookup::Joined => unreachable!(),
        }
    }

    #[test]
    fn invalidate_pushes_drop_keys_and_a_null_clears() {
        let tier = Tier::new(1 << 20, 1 << 10, true, std::time::Duration::ZERO);
        for key in [&b"a"[..], b"b", b"c"] {
            assert!(!cached(&tier, key));
            assert!(cached(&tier, key));
        }
        apply(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n", &tier);
        assert!(!cached(&tier, b"a"));
        assert!(!cached(&tier, b"b"));
        assert!(cached(&tier, b"c"));
        apply(b">2\r\n$10\r\ninvalidate\r\n_\r\n", &tier);
        assert!(!cached(&tier, b"c"));
        // Other pushes change nothing.
        assert!(cached(&tier, b"c"));
        apply(b">3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\nc\r\n", &tier);
        assert!(cached(&tier, b"c"));
        // An empty key list changes nothing; a key list that cannot be read clears.
        apply(b">2\r\n$10\r\ninvalidate\r\n*0\r\n", &tier);
        assert!(cached(&tier, b"c"));
        apply(b">2\r\n$10\r\ninvalidate\r\n*1\r\n:1\r\n", &tier);
        assert!(!cached(&tier, b"c"));
    }
}
