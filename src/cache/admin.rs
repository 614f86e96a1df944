//! What `PROXY CACHE ...` needs from the tier: one key's variants, and invalidation by pattern.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Cause, Tier};
use crate::metrics::inc;
use crate::policy::glob_match;

/// One cached variant of a key, as `PROXY CACHE INSPECT` shows it.
#[derive(Debug, Clone)]
pub struct VariantView {
    /// The variant's identity (see `proxy::describe_variant`).
    pub id: Bytes,
    pub reply_bytes: usize,
    /// Left of its local lifetime; zero once expired (kept only for stale answers).
    pub remaining: Duration,
    pub age: Duration,
}

impl Tier {
    /// `key`'s cached variants; empty when it has none.
    pub fn inspect(&self, key: &[u8]) -> Vec<VariantView> {
        let now = Instant::now();
        let Some(entry) = self.entries.get(key) else { return Vec::new() };
        entry
            .variants
            .iter()
            .map(|v| VariantView {
                id: v.id.clone(),
                reply_bytes: v.reply.len(),
                remaining: v.expires_at.saturating_duration_since(now),
                age: now.saturating_duration_since(v.filled_at),
            })
            .collect()
    }

    /// `PROXY CACHE INVALIDATE key`: whether it was cached.
    pub fn invalidate_key(&self, key: &[u8]) -> bool {
        self.remove(key, Cause::Admin)
    }

    /// Drops every cached key for which `affected` holds, and refuses the fills of such keys'
    /// reads in flight; how many keys were cached.
    pub fn invalidate_where(&self, affected: impl Fn(&[u8]) -> bool) -> usize {
        let cached: Vec<Bytes> = self.entries.iter().map(|e| e.key().clone()).filter(|k| affected(k)).collect();
        let in_flight: Vec<Bytes> = self.in_flight.iter().map(|e| e.key().clone()).filter(|k| affected(k)).collect();
        in_flight.iter().for_each(|key| self.invalidate(key, Cause::Admin));
        cached.iter().filter(|key| self.remove(key, Cause::Admin)).count()
    }

    /// A new `cache.max_memory` / `max_entry_size` (configuration reload): the tier starts
    /// empty with the new bounds, and reads in flight are not cached.
    pub fn resize(&self, max_memory: u64, max_entry_size: usize) {
        // Exclusive: no fill inserts into the old cache once the new one is in place.
        let _exclusive = self.clearing.write().unwrap_or_else(|e| e.into_inner());
        self.max_entry_size.store(max_entry_size, Ordering::Relaxed);
        self.clears.fetch_add(1, Ordering::AcqRel);
        inc(&self.stats.clears);
        self.entries.clear();
        self.lru.clear(Some(max_memory)).into_iter().for_each(|gone| self.forget(gone));
    }

    pub fn max_entry_size(&self) -> usize {
        self.max_entry_size.load(Ordering::Relaxed)
    }

    /// Drops every key matching the Redis glob `pattern`; how many.
    pub fn invalidate_matching(&self, pattern: &[u8]) -> usize {
        let keys: Vec<Bytes> =
            self.entries.iter().filter(|e| glob_match(pattern, e.key())).map(|e| e.key().clone()).collect();
        keys.iter().filter(|key| self.remove(key, Cause::Admin)).count()
    }
}
