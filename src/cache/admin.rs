//! What `PROXY CACHE ...` needs from the tier: one key's variants, and invalidation by pattern.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Cause, Tier};
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

    /// Drops every key matching the Redis glob `pattern`; how many.
    pub fn invalidate_matching(&self, pattern: &[u8]) -> usize {
        let keys: Vec<Bytes> =
            self.entries.iter().filter(|e| glob_match(pattern, e.key())).map(|e| e.key().clone()).collect();
        keys.iter().filter(|key| self.remove(key, Cause::Admin)).count()
    }
}
