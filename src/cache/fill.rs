//! Filling the tier: a read's reply arrives and is handed to the requests that joined it, then
//! cached unless its key was invalidated (or the tier cleared) since the read was sent
//! (coherence rule 3), for min(the rule's local TTL, the key's PTTL) (rule 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::lru::{NIL, weight};
use super::{FillTicket, KeyEntry, KeyState, Tier, Variant, Waiter};
use crate::metrics::inc;
use crate::upstream::ReplyChunk;

impl Tier {
    /// The read's reply arrived: answer the waiters and cache it, unless the key was
    /// invalidated since the read was sent. `pttl` is the key's PTTL read just before it.
    /// Whether it was cached.
    pub fn fill(&self, ticket: FillTicket, reply: Bytes, pttl: Option<i64>) -> bool {
        let mut cached = false;
        let waiters = {
            let _no_clear = self.clearing.read().unwrap_or_else(|e| e.into_inner());
            let Some(mut state) = self.in_flight.get_mut(&ticket.key) else { return false };
            let waiters = take_flight(&mut state, &ticket);
            let fresh = state.epoch == ticket.epoch
                && self.clears.load(Ordering::Acquire) == ticket.clears
                && self.slot_fresh(&ticket.key, ticket.slot_epoch);
            let lifetime = lifetime(ticket.local_ttl, pttl);
            if !fresh {
                inc(&self.stats.fills_refused);
            } else if is_cacheable(&reply) && reply.len() <= self.max_entry_size() && !lifetime.is_zero() {
                // Under the key's shard lock: no invalidation can slip between check and insert.
                self.insert(&ticket, reply.clone(), lifetime);
                inc(&self.stats.fills);
                cached = true;
                if let Some(rule) = &ticket.rule {
                    inc(&rule.fills);
                }
            }
            waiters
        };
        self.in_flight.remove_if(&ticket.key, |_, state| state.flights.is_empty());
        for waiter in waiters {
            let _ = waiter.sink.send(ReplyChunk { seq: waiter.seq, count: 1, bytes: reply.clone() });
        }
        cached
    }

    /// The read failed: its waiters get the same error reply; nothing is cached.
    pub fn abort(&self, ticket: FillTicket, error: Bytes) {
        let waiters = match self.in_flight.get_mut(&ticket.key) {
            Some(mut state) => take_flight(&mut state, &ticket),
            None => Vec::new(),
        };
        self.in_flight.remove_if(&ticket.key, |_, state| state.flights.is_empty());
        for waiter in waiters {
            let _ = waiter.sink.send(ReplyChunk { seq: waiter.seq, count: 1, bytes: error.clone() });
        }
    }

    fn insert(&self, ticket: &FillTicket, reply: Bytes, lifetime: Duration) {
        let now = Instant::now();
        let mut variants: Vec<Variant> = match self.entries.get(&ticket.key) {
            Some(entry) => {
                let keep = |v: &&Variant| v.id != ticket.id && v.keep_until(self.serve_stale) > now;
                entry.variants.iter().filter(keep).cloned().collect()
            }
            None => Vec::with_capacity(1),
        };
        let (id, slot_epoch) = (ticket.id.clone(), ticket.slot_epoch);
        variants.push(Variant { id, reply, filled_at: now, expires_at: now + lifetime, slot_epoch });
        let touched = AtomicU64::new(now.duration_since(self.born).as_millis() as u64);
        let slot = AtomicU32::new(NIL);
        let entry = Arc::new(KeyEntry { variants, touched, slot, rule: ticket.rule.clone() });
        let w = weight(&ticket.key, &entry);
        if let Some(rule) = &entry.rule {
            // Taken back by `forget` when the entry leaves the list, whatever the cause.
            rule.entries.fetch_add(1, Ordering::Relaxed);
            rule.bytes.fetch_add(i64::from(w), Ordering::Relaxed);
        }
        if let Some(replaced) = self.entries.insert(ticket.key.clone(), Arc::clone(&entry)) {
            self.unlist(&replaced);
        }
        // After the map (no lock of it held): what the list pushes out leaves the map.
        let gone = self.lru.insert(ticket.key.clone(), entry, w, now, self.serve_stale);
        gone.into_iter().for_each(|gone| self.forget(gone));
    }
}

fn take_flight(state: &mut KeyState, ticket: &FillTicket) -> Vec<Waiter> {
    let position =
        state.flights.iter().position(|f| f.id == ticket.id && f.epoch == ticket.epoch && f.clears == ticket.clears);
    position.map(|p| state.flights.swap_remove(p).waiters).unwrap_or_default()
}

/// An entry never outlives its key upstream: min(rule's local TTL, the key's PTTL), where
/// PTTL -1 (no expiry) and -2 (no key) leave the local TTL.
pub(super) fn lifetime(local_ttl: Duration, pttl: Option<i64>) -> Duration {
    match pttl {
        Some(ms) if ms >= 0 => local_ttl.min(Duration::from_millis(ms as u64)),
        _ => local_ttl,
    }
}

/// Error replies (and stray pushes) are never cached.
fn is_cacheable(reply: &[u8]) -> bool {
    !matches!(reply.first(), Some(b'-' | b'!' | b'>') | None)
}
