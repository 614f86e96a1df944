//! What the tier counts (read by `metrics.rs`), and the invalidation delay: for a sample of
//! writes through this proxy, how long after it forwarded them Redis's tracking push for their
//! key arrived (what another proxy's stale window would be).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::Histogram;

/// One write in this many is timed until its tracking push arrives.
const SAMPLE_EVERY: u64 = 16;
/// Writes timed at once, at most (a push that never comes must not grow the map).
const MAX_TIMED: usize = 1024;
/// A timed write whose push has not come in this long is forgotten.
const GIVE_UP: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    /// Served from an expired or demoted entry while the upstream was down.
    pub stale_answers: AtomicU64,
    /// Reads sent upstream to fill the tier.
    pub misses: AtomicU64,
    /// Reads that waited for an identical one in flight.
    pub joined: AtomicU64,
    pub fills: AtomicU64,
    /// Replies not cached because their key was invalidated while they were in flight.
    pub fills_refused: AtomicU64,
    /// Entries dropped by the byte bound (LRU).
    pub evictions: AtomicU64,
    /// Entries dropped once expired (by the sweep, or found at the cold end by a fill).
    pub expired: AtomicU64,
    /// Keys dropped by writes through this proxy.
    pub invalidated_by_write: AtomicU64,
    /// Keys dropped by Redis's tracking pushes.
    pub invalidated_by_tracking: AtomicU64,
    /// Keys dropped by `PROXY CACHE INVALIDATE`.
    pub invalidated_by_admin: AtomicU64,
    /// Whole-tier clears: FLUSHDB/FLUSHALL/SWAPDB, flush pushes, tracking lost.
    pub clears: AtomicU64,
    /// Redis Cluster: times some slots' entries were dropped (owner changed, tracking lost).
    pub slot_drops: AtomicU64,
    pub invalidation_delay: Histogram,
    writes: AtomicU64,
    timed: Mutex<HashMap<Bytes, Instant>>,
    timed_len: AtomicUsize,
}

impl Stats {
    /// A write of `key` is being forwarded: maybe time its tracking push.
    pub(super) fn written(&self, key: &[u8]) {
        if !self.writes.fetch_add(1, Ordering::Relaxed).is_multiple_of(SAMPLE_EVERY) {
            return;
        }
        let mut timed = self.timed.lock().unwrap_or_else(|e| e.into_inner());
        if timed.len() >= MAX_TIMED {
            timed.retain(|_, at| at.elapsed() < GIVE_UP);
        }
        if timed.len() < MAX_TIMED {
            timed.insert(Bytes::copy_from_slice(key), Instant::now());
            self.timed_len.store(timed.len(), Ordering::Relaxed);
        }
    }

    /// A tracking push invalidated `key`: if its write was timed, record the delay.
    pub(super) fn pushed(&self, key: &[u8]) {
        if self.timed_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut timed = self.timed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = timed.remove(key) {
            self.invalidation_delay.observe(at.elapsed());
        }
        self.timed_len.store(timed.len(), Ordering::Relaxed);
    }

    /// Tracking was lost: pushes for the timed writes will not come.
    pub(super) fn forget_timed(&self) {
        self.timed.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.timed_len.store(0, Ordering::Relaxed);
    }
}
