//! The moka cache behind the tier: which entries stay, how much they weigh, when they expire.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{ENTRY_OVERHEAD, KeyEntry, Map, Stats, VARIANT_OVERHEAD};
use crate::metrics::inc;

/// moka as the tier uses it: LRU (its default is TinyLFU), bounded in weighed bytes, entries
/// expiring with their longest-lived variant; what it evicts leaves `entries` too.
pub(super) fn build_lru(
    max_memory: u64,
    serve_stale: Duration,
    entries: &Arc<Map<Arc<KeyEntry>>>,
    stats: &Arc<Stats>,
) -> Cache<Bytes, Arc<KeyEntry>> {
    let (evicted, stats) = (Arc::clone(entries), Arc::clone(stats));
    Cache::builder()
        .max_capacity(max_memory)
        .eviction_policy(EvictionPolicy::lru())
        .weigher(weight)
        .expire_after(Lifetime { serve_stale })
        .eviction_listener(move |key: Arc<Bytes>, entry: Arc<KeyEntry>, cause| {
            // Only what moka itself dropped; never a newer entry for the same key.
            if cause.was_evicted() {
                evicted.remove_if(&*key, |_, current| Arc::ptr_eq(current, &entry));
            }
            if cause == RemovalCause::Size {
                inc(&stats.evictions);
            }
            if let Some(rule) = &entry.rule {
                rule.entries.fetch_sub(1, Ordering::Relaxed);
                rule.bytes.fetch_sub(i64::from(weight(&key, &entry)), Ordering::Relaxed);
            }
        })
        .build()
}

/// What an entry weighs against `cache.max_memory`: its key, every variant's id and reply, and
/// the overheads measured for them.
pub(super) fn weight(key: &Bytes, entry: &Arc<KeyEntry>) -> u32 {
    let variants: usize = entry.variants.iter().map(|v| v.id.len() + v.reply.len() + VARIANT_OVERHEAD).sum();
    u32::try_from(key.len() + variants + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

struct Lifetime {
    serve_stale: Duration,
}

impl moka::Expiry<Bytes, Arc<KeyEntry>> for Lifetime {
    fn expire_after_create(&self, _: &Bytes, entry: &Arc<KeyEntry>, now: Instant) -> Option<Duration> {
        entry.variants.iter().map(|v| v.keep_until(self.serve_stale).saturating_duration_since(now)).max()
    }

    fn expire_after_update(
        &self,
        key: &Bytes,
        entry: &Arc<KeyEntry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, now)
    }
}
