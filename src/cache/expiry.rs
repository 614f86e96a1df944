//! Expired entries leave the tier ahead of the byte bound: a sweep goes round the LRU list's
//! nodes a step at a time, as Redis's active expiry samples keys, so an entry nobody reads
//! again gives its bytes back within a few minutes instead of waiting to reach the cold end.
//! (A hit never serves an expired variant either way.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Tier;

/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Nodes checked per step, under the list's lock: at most a few tens of microseconds.
const SWEEP_STEP: usize = 256;
/// Steps per round at most, while each finds a quarter of its entries expired.
const SWEEP_STEPS: usize = 16;

impl Tier {
    /// One round of the sweep: checks [`SWEEP_STEP`] nodes of the LRU list, going round it,
    /// and drops the entries whose variants all expired; goes on while a step finds at least a
    /// quarter of what it checked expired, at most [`SWEEP_STEPS`] steps. Returns how many
    /// entries it dropped.
    pub fn sweep_expired(&self, now: Instant) -> usize {
        let mut dropped = 0;
        for _ in 0..SWEEP_STEPS {
            let (gone, held) = self.lru.sweep(SWEEP_STEP, now, self.serve_stale);
            let expired = gone.len();
            gone.into_iter().for_each(|gone| self.forget(gone));
            dropped += expired;
            if held == 0 || expired * 4 < held {
                break;
            }
        }
        dropped
    }
}

/// Runs the sweep every [`SWEEP_EVERY`] for as long as the proxy serves.
pub async fn sweep(tier: Arc<Tier>) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        tier.sweep_expired(Instant::now());
    }
}
