//! Warming the tier after a deploy: `PROXY CACHE WARM <pattern> [limit]` (and `POST
//! /api/warm`) SCANs Redis for keys matching a glob and fills the tier with them, in the
//! background, at most [`KEYS_PER_SECOND`], one warm-up at a time; `PROXY CACHE WARM STATUS`
//! (`GET /api/warm`) reports its progress.
//!
//! Each key is read the way a client's read would fill it, and under the same coherence rules:
//! only keys whose rule caches now, a fill ticket taken before the read is sent (so a write or
//! an invalidation meanwhile refuses the fill), the key's PTTL read with it. The command is
//! chosen by the key's TYPE (string: GET, hash: HGETALL, set: SMEMBERS, list: LRANGE 0 -1,
//! sorted set: ZRANGE 0 -1); the variant filled is the one a RESP2 client in db 0 (as the
//! first user, when the proxy has users) looks up. SCAN and TYPE use a connection of the
//! warm-up's own; the read that fills goes on a shared connection, where Redis tracks it for
//! the tier like a client's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame as _};
use tokio::sync::mpsc;

use crate::cache::Tier;
use crate::error::ProxyError;
use crate::framing::encode_command;
use crate::policy::Policy;
use crate::proxy::{may_cache, variant_id};
use crate::reply::ReplyScanner;
use crate::transport::Stream;
use crate::upstream::{Batch, Pick, PoolKey, Upstream, exchange};

/// Keys read per second at most, so a warm-up never competes with clients for Redis.
pub const KEYS_PER_SECOND: u64 = 2000;
/// Keys per SCAN.
const SCAN_COUNT: &str = "200";

/// The current (or last) warm-up's progress.
#[derive(Debug, Default)]
pub struct Warmer {
    progress: Mutex<Option<Progress>>,
}

#[derive(Debug, Clone)]
struct Progress {
    pattern: String,
    limit: Option<u64>,
    started: Instant,
    finished: Option<Instant>,
    /// Keys SCAN returned, keys filled, keys whose rule does not cache (or whose type has no
    /// cached read), fills refused (the key changed meanwhile, or too big).
    scanned: u64,
    warmed: u64,
    skipped: u64,
    refused: u64,
    error: Option<String>,
}

impl Warmer {
    /// Starts warming keys matching `pattern` (at most `limit`); refused while one runs.
    pub fn start(
        self: &Arc<Self>,
        pattern: &[u8],
        limit: Option<u64>,
        upstream: Arc<Upstream>,
        tier: Arc<Tier>,
        policy: Policy,
    ) -> Result<(), ProxyError> {
        {
            let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            if progress.as_ref().is_some_and(|p| p.finished.is_none()) {
                return Err(ProxyError::WarmRunning);
            }
            *progress = Some(Progress {
                pattern: String::from_utf8_lossy(pattern).into_owned(),
                limit,
                started: Instant::now(),
                finished: None,
                scanned: 0,
                warmed: 0,
                skipped: 0,
                refused: 0,
                error: None,
            });
        }
        let (warmer, pattern) = (Arc::clone(self), Bytes::copy_from_slice(pattern));
        tokio::spawn(async move {
            let outcome = warmer.run(&pattern, limit, &upstream, &tier, &policy).await;
            let mut progress = warmer.progress.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = progress.as_mut() {
                p.finished = Some(Instant::now());
                p.error = outcome.err();
            }
        });
        Ok(())
    }

    /// INFO style: state (running, done, failed, none), the pattern and the counts.
    pub fn status(&self) -> String {
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = progress.as_ref() else { return "state:none\r\n".into() };
        let state = match (&p.finished, &p.error) {
            (None, _) => "running",
            (Some(_), None) => "done",
            (Some(_), Some(_)) => "failed",
        };
        let elapsed = p.finished.unwrap_or_else(Instant::now).duration_since(p.started);
        let mut out = format!(
            "state:{state}\r\npattern:{}\r\nlimit:{}\r\nscanned:{}\r\nwarmed:{}\r\nskipped:{}\r\nrefused:{}\r\nelapsed_ms:{}\r\n",
            p.pattern,
            p.limit.map_or("none".to_owned(), |l| l.to_string()),
            p.scanned,
            p.warmed,
            p.skipped,
            p.refused,
            elapsed.as_millis()
        );
        if let Some(error) = &p.error {
            out.push_str(&format!("error:{error}\r\n"));
        }
        out
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        if let Some(p) = self.progress.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            change(p);
        }
    }

    async fn run(
        &self,
        pattern: &[u8],
        limit: Option<u64>,
        upstream: &Arc<Upstream>,
        tier: &Tier,
        policy: &Policy,
    ) -> Result<(), String> {
        let mut stream = upstream.connect(PoolKey::default()).await.map_err(|e| e.to_string())?;
        let mut cursor = Bytes::from_static(b"0");
        let mut seen = 0u64;
        let mut id = Vec::new();
        loop {
            let scan = encode_command(&[&b"sCAN"[..], &cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT.as_bytes()]);
            let reply = ask(&mut stream, &[scan]).await?.remove(0);
            let (next, keys) =
                scan_reply(&reply).ok_or_else(|| format!("SCAN: {}", String::from_utf8_lossy(&reply)))?;
            let batch_started = Instant::now();
            for key in &keys {
                if limit.is_some_and(|l| seen >= l) {
                    return Ok(());
                }
                seen += 1;
                self.update(|p| p.scanned += 1);
                let outcome = warm_key((&mut stream, upstream), key, tier, policy, &mut id).await?;
                self.update(|p| match outcome {
                    Warmed::Filled => p.warmed += 1,
                    Warmed::Skipped => p.skipped += 1,
                    Warmed::Refused => p.refused += 1,
                });
            }
            if next == "0" {
                return Ok(());
            }
            cursor = Bytes::from(next);
            // The rate limit: a batch of n keys takes at least n / KEYS_PER_SECOND.
            let due = Duration::from_millis(keys.len() as u64 * 1000 / KEYS_PER_SECOND);
            tokio::time::sleep(due.saturating_sub(batch_started.elapsed())).await;
        }
    }
}

enum Warmed {
    Filled,
    Skipped,
    Refused,
}

/// Reads one key into the tier (see the module's doc).
async fn warm_key(
    (stream, upstream): (&mut Stream, &Arc<Upstream>),
    key: &Bytes,
    tier: &Tier,
    policy: &Policy,
    id: &mut Vec<u8>,
) -> Result<Warmed, String> {
    let rule = policy.for_key(key);
    if !may_cache(rule.mode, tier, key) {
        return Ok(Warmed::Skipped);
    }
    let kind = ask(stream, &[encode_command(&[&b"tYPE"[..], key])]).await?.remove(0);
    let read: Vec<&[u8]> = match &kind[..] {
        b"+string\r\n" => vec![b"gET", key],
        b"+hash\r\n" => vec![b"hGETALL", key],
        b"+set\r\n" => vec![b"sMEMBERS", key],
        b"+list\r\n" => vec![b"lRANGE", key, b"0", b"-1"],
        b"+zset\r\n" => vec![b"zRANGE", key, b"0", b"-1"],
        _ => return Ok(Warmed::Skipped),
    };
    variant_id(id, 0, false, 0, read.iter().copied());
    // Not a client's read: counted in no hit rate and no hot key.
    let Some(ticket) = tier.register_quietly(key, id, rule.local_ttl) else {
        // Cached already, or a client's read of it is in flight.
        return Ok(Warmed::Skipped);
    };
    let ticket = ticket.for_rule(policy.stats(rule.rule));
    let replies = match ask_shared(upstream, &[encode_command(&[&b"pTTL"[..], key]), encode_command(&read)]).await {
        Ok(replies) => replies,
        Err(e) => {
            // A client's read that joined this one gets the error, as after any lost read.
            let lost = ProxyError::UpstreamLost { addr: "warm-up".into(), reason: e.clone() };
            tier.abort(ticket, lost.to_reply());
            return Err(e);
        }
    };
    if replies[0].starts_with(b"-") {
        // PTTL answers any key: an error is the connection's (lost, breaker open).
        tier.abort(ticket, replies[0].clone());
        return Err(String::from_utf8_lossy(&replies[0]).trim_end().to_owned());
    }
    let pttl = std::str::from_utf8(&replies[0]).ok().and_then(|r| r.strip_prefix(':')?.trim_end().parse().ok());
    Ok(if tier.fill(ticket, replies[1].clone(), pttl) { Warmed::Filled } else { Warmed::Refused })
}

/// Sends requests and reads as many replies.
async fn ask(stream: &mut Stream, requests: &[Bytes]) -> Result<Vec<Bytes>, String> {
    exchange(stream, &requests.concat(), requests.len()).await
}

/// Sends requests on a shared connection (db 0, RESP2) and reads as many replies; an error
/// the connection answers for them (lost, breaker open) is their replies.
async fn ask_shared(upstream: &Arc<Upstream>, requests: &[Bytes]) -> Result<Vec<Bytes>, String> {
    let (sink, mut chunks) = mpsc::unbounded_channel();
    let count = requests.len();
    upstream
        .pool(PoolKey::default())
        .send(&mut Pick::kept(0), Batch::plain(Bytes::from(requests.concat()), 0, count as u32, sink));
    let mut replies = Vec::with_capacity(count);
    let mut scanner = ReplyScanner::default();
    while replies.len() < count {
        let mut bytes = chunks.recv().await.ok_or("the shared connection went away")?.bytes;
        while !bytes.is_empty() {
            let len = scanner.scan(&bytes).ok().flatten().ok_or("a reply that cannot be read")?;
            replies.push(bytes.split_to(len));
        }
    }
    Ok(replies)
}

/// SCAN's reply: the next cursor and the keys.
fn scan_reply(reply: &[u8]) -> Option<(String, Vec<Bytes>)> {
    let (OwnedFrame::Array(items), _) = redis_protocol::resp2::decode::decode(reply).ok()?? else { return None };
    let [cursor, OwnedFrame::Array(keys)] = &items[..] else { return None };
    let keys = keys
        .iter()
        .filter_map(|k| match k {
            OwnedFrame::BulkString(b) => Some(Bytes::copy_from_slice(b)),
            _ => None,
        })
        .collect();
    Some((cursor.to_string()?, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scan_replies() {
        let reply = b"*2\r\n$2\r\n17\r\n*2\r\n$3\r\nk:1\r\n$3\r\nk:2\r\n";
        let (cursor, keys) = scan_reply(reply).unwrap();
        assert_eq!(cursor, "17");
        assert_eq!(keys, vec![Bytes::from_static(b"k:1"), Bytes::from_static(b"k:2")]);
        assert!(scan_reply(b"-ERR nope\r\n").is_none());
    }
}
