//! The local tier: a byte-bounded LRU of read replies, kept coherent with Redis.
//!
//! Entries are keyed by **Redis key**; an entry holds every cached *variant* of that key (the
//! same key read by different commands, arguments, dbs or protocol versions), each with its own
//! reply and expiry. Invalidating a key therefore removes all its variants in one call, which is
//! what writes and tracking messages need. Entries are immutable: adding a variant replaces the
//! entry.
//!
//! # A map and a list, one set of entries
//! Hits read a DashMap by key; an LRU list over the same `Arc`s (`lru.rs`) decides what stays
//! within the byte bound, and what it pushes out leaves the map. A hit moves its entry in the
//! list at most once per `TOUCH_EVERY` per key, which keeps the LRU order right to within that
//! interval and keeps the list's lock off most hits.
//!
//! # Race window: fills and invalidations
//! A read is sent upstream at time T0 and its reply arrives at T1. If the key was invalidated
//! in between (a write through this proxy, a tracking message, a flush), the reply may predate
//! the write, and caching it would serve a stale value until it expires (the Lettuce #3481
//! bug). So every read in flight is registered under its key with the key's *epoch*;
//! [`Tier::invalidate`] bumps the epoch under the same shard lock that [`Tier::fill`] holds
//! while it checks the epoch and inserts. Either the invalidation comes first (the fill is
//! refused) or the fill does (and the invalidation then removes it). [`Tier::clear`] bumps a
//! global counter the same way.
//!
//! # Coalescing
//! A miss on a variant already in flight (same epoch) waits for that read instead of sending its
//! own: the reply is handed to every waiter's reply sink with its sequence number.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use lru::{Gone, Left, Lru};

use crate::metrics::inc;
use crate::policy::RuleStats;
use crate::upstream::ReplySink;

/// What a key's entry and each variant cost beyond their bytes (key, variant id, reply),
/// counted so that `cache.max_memory` bounds the real footprint: measured with
/// `benches/tier_memory.sh`, an entry of one variant takes ~740 bytes more than its bytes
/// (the map slot, the list's node, the `Arc`s, allocator headers).
const ENTRY_OVERHEAD: usize = 480;
const VARIANT_OVERHEAD: usize = 256;
/// How often a hit on one key moves it in the LRU list.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// The tier's maps by key. Every hit, fill and invalidation hashes its key: foldhash (seeded
/// at random per map) costs a few nanoseconds where std's SipHash costs ~20 for a short key.
pub(crate) type Map<V> = DashMap<Bytes, V, foldhash::fast::RandomState>;

/// How many reads the tier had registered at some moment. A write's keys are invalidated again
/// when its reply arrives, in case a read of the old value was registered after the first
/// invalidation and filled meanwhile; when no read at all was registered since the count taken
/// before that first invalidation, nothing of the keys can be cached or in flight (reads
/// registered before it were refused by it), and the second one is skipped. The count moves
/// under the key's lock and before the read is sent: a read not counted by the time the reply
/// is seen is sent after Redis ran the write, and reads the new value.
/// (Counted from 1: an `Option` of it is a word.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Registrations(std::num::NonZeroU64);

impl Default for Registrations {
    fn default() -> Self {
        Registrations(std::num::NonZeroU64::MIN)
    }
}

pub struct Tier {
    /// What hits read.
    entries: Map<Arc<KeyEntry>>,
    /// Recency and weight of the same entries: decides evictions.
    lru: Lru,
    /// Fills hold it shared while they check and insert, [`Tier::clear`] exclusively, so a
    /// fill cannot slip an entry in between a clear's count and its removal.
    clearing: RwLock<()>,
    /// Time base for [`KeyEntry::touched`] and `demoted_at`.
    born: Instant,
    serve_stale: Duration,
    /// Entries filled before this (ms since `born`, 0 = never) are stale answers only.
    demoted_at: AtomicU64,
    /// Keys with reads in flight: their epoch and flights. Removed when no read is in flight.
    in_flight: Map<KeyState>,
    /// Bumped by every [`Tier::clear`].
    clears: AtomicU64,
    /// Reads registered in flight so far (see [`Registrations`]).
    registered: AtomicU64,
    /// Tracked rules may cache only while the tracking connection is up.
    tracking_up: AtomicBool,
    max_entry_size: AtomicUsize,
    pub stats: Arc<Stats>,
    /// The most-read and most-invalidated keys lately (sampled).
    pub hot: HotKeys,
    /// In front of a Redis Cluster: per-slot epochs and tracking (`slots.rs`).
    slots: std::sync::OnceLock<slots::Slots>,
}

/// What invalidated a key (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A write through this proxy, before it is sent.
    Write,
    /// The same write's reply arrived.
    WriteAnswered,
    /// Redis's tracking push.
    Tracking,
    /// `PROXY CACHE INVALIDATE`.
    Admin,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier").field("entries", &self.entries.len()).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct KeyEntry {
    variants: Vec<Variant>,
    /// The rule it was filled under, whose numbers count it (`None` in unit tests).
    rule: Option<Arc<RuleStats>>,
    /// When a hit last moved it in the LRU list (ms since `Tier::born`).
    touched: AtomicU64,
    /// Its node in the LRU list ([`lru::NIL`] once it left), set under the list's lock.
    slot: AtomicU32,
}

#[derive(Debug, Clone)]
struct Variant {
    id: Bytes,
    reply: Bytes,
    filled_at: Instant,
    expires_at: Instant,
    /// Its slot's epoch when filled (in front of a Redis Cluster): once it moved, the variant
    /// is a stale answer only (see `slots.rs`).
    slot_epoch: u32,
}

impl Variant {
    /// How long it must be kept: its lifetime, or longer to answer stale while the upstream
    /// is down.
    fn keep_until(&self, serve_stale: Duration) -> Instant {
        self.expires_at.max(self.filled_at + serve_stale)
    }
}

/// When a lookup happens, and whether a stale answer is acceptable (the breaker is open).
#[derive(Debug, Clone, Copy)]
pub struct LookupAt {
    pub now: Instant,
    pub stale_ok: bool,
}

impl LookupAt {
    pub fn now() -> LookupAt {
        LookupAt { now: Instant::now(), stale_ok: false }
    }
}

#[derive(Default)]
struct KeyState {
    epoch: u64,
    flights: Vec<Flight>,
}

struct Flight {
    id: Bytes,
    epoch: u64,
    clears: u64,
    waiters: Vec<Waiter>,
}

/// A client waiting for a coalesced read: where and under which sequence number.
#[derive(Debug)]
pub struct Waiter {
    pub sink: ReplySink,
    pub seq: u64,
}

/// Permission to fill one variant, taken when its read was sent.
#[derive(Debug)]
pub struct FillTicket {
    key: Bytes,
    id: Bytes,
    epoch: u64,
    clears: u64,
    /// Its slot's epoch (in front of a Redis Cluster; see `slots.rs`).
    slot_epoch: u32,
    local_ttl: Duration,
    /// The rule whose numbers the fill and the entry count under.
    rule: Option<Arc<RuleStats>>,
}

/// Tickets are equal when they permit the same fill (whichever rule counts it).
impl PartialEq for FillTicket {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, &self.id, self.epoch, self.clears, self.local_ttl)
            == (&other.key, &other.id, other.epoch, other.clears, other.local_ttl)
    }
}

impl Eq for FillTicket {}

impl FillTicket {
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// Counts the fill and the entry under this rule.
    pub fn for_rule(mut self, rule: &Arc<RuleStats>) -> FillTicket {
        self.rule = Some(Arc::clone(rule));
        self
    }
}

#[derive(Debug)]
pub enum Lookup {
    Hit(Bytes),
    /// An identical read is in flight; the waiter will get its reply.
    Joined,
    /// Send the read, then [`Tier::fill`] (or [`Tier::abort`]) with this ticket.
    Miss(FillTicket),
}

impl Tier {
    /// `serve_stale`: how old a cached reply may be served while the upstream is down.
    pub fn new(max_memory: u64, max_entry_size: usize, tracking_up: bool, serve_stale: Duration) -> Tier {
        Tier {
            entries: Map::default(),
            lru: Lru::new(max_memory),
            clearing: RwLock::new(()),
            born: Instant::now(),
            serve_stale,
            demoted_at: AtomicU64::new(0),
            in_flight: Map::default(),
            clears: AtomicU64::new(0),
            registered: AtomicU64::new(1),
            tracking_up: AtomicBool::new(tracking_up),
            max_entry_size: AtomicUsize::new(max_entry_size),
            stats: Arc::default(),
            hot: HotKeys::default(),
            slots: std::sync::OnceLock::new(),
        }
    }

    pub fn tracking_up(&self) -> bool {
        self.tracking_up.load(Ordering::Acquire)
    }

    /// Tracking (re-)established: tracked rules may cache again.
    pub fn tracking_started(&self) {
        self.tracking_up.store(true, Ordering::Release);
    }

    /// Tracking lost: invalidations may have been missed, so nothing cached can be trusted
    /// (see [`Tier::distrust`]); tracked rules stop caching until it is back.
    pub fn tracking_lost(&self) {
        self.tracking_up.store(false, Ordering::Release);
        self.distrust(|| ());
    }

    /// Nothing cached can be trusted any more (tracking lost; a new primary that never tracked
    /// it). Without `serve_stale` everything is dropped; with it, entries are demoted: never a
    /// normal hit again, only a stale answer while the upstream is down. `change` runs while no
    /// fill can happen (a primary switch), so nothing filled before it survives, and a read in
    /// flight across it is refused.
    pub fn distrust<T>(&self, change: impl FnOnce() -> T) -> T {
        self.stats.forget_timed();
        let _exclusive = self.clearing.write().unwrap_or_else(|e| e.into_inner());
        let changed = change();
        if self.serve_stale.is_zero() {
            self.drop_all();
        } else {
            self.clears.fetch_add(1, Ordering::AcqRel);
            // +1: an entry filled in this very millisecond is demoted too.
            let ms = Instant::now().duration_since(self.born).as_millis() as u64 + 1;
            self.demoted_at.store(ms, Ordering::Release);
        }
        changed
    }

    fn demoted(&self, filled_at: Instant) -> bool {
        let filled = filled_at.saturating_duration_since(self.born).as_millis() as u64;
        filled < self.demoted_at.load(Ordering::Acquire)
    }

    /// Looks up variant `id` of `key`; on a miss, joins an identical read in flight or
    /// registers a new one.
    /// `now` may be read once for a batch of lookups (the clock is a measurable cost per hit).
    pub fn lookup(
        &self,
        key: &[u8],
        id: &[u8],
        ttl: Duration,
        at: LookupAt,
        waiter: impl FnOnce() -> Waiter,
    ) -> Lookup {
        self.lookup_with::<true>(key, id, ttl, at, || Some(waiter()))
    }

    /// A fill ticket for a read of the proxy's own (the warm-up), unless the variant is cached
    /// or a read of it is in flight; counted nowhere (no hit, miss or hot read: no client read).
    pub fn register_quietly(&self, key: &[u8], id: &[u8], ttl: Duration) -> Option<FillTicket> {
        match self.lookup_with::<false>(key, id, ttl, LookupAt::now(), || None) {
            Lookup::Miss(ticket) => Some(ticket),
            Lookup::Hit(_) | Lookup::Joined => None,
        }
    }

    /// `waiter` gives the waiter to add to a read in flight, or `None` to only report it.
    /// `COUNTED`: a client's read, counted in the stats and the hot-key sample.
    fn lookup_with<const COUNTED: bool>(
        &self,
        key: &[u8],
        id: &[u8],
        local_ttl: Duration,
        at: LookupAt,
        waiter: impl FnOnce() -> Option<Waiter>,
    ) -> Lookup {
        if COUNTED {
            self.hot.reads.record(key);
        }
        if let Some(reply) = self.hit(key, id, at) {
            if COUNTED {
                inc(&self.stats.hits);
            }
            return Lookup::Hit(reply);
        }
        let clears = self.clears.load(Ordering::Acquire);
        let mut state = self.in_flight.entry(Bytes::copy_from_slice(key)).or_default();
        let epoch = state.epoch;
        if let Some(flight) = state.flights.iter_mut().find(|f| f.id == id && f.epoch == epoch && f.clears == clears) {
            flight.waiters.extend(waiter());
            if COUNTED {
                inc(&self.stats.joined);
            }
            return Lookup::Joined;
        }
        let id = Bytes::copy_from_slice(id);
        state.flights.push(Flight { id: id.clone(), epoch, clears, waiters: Vec::new() });
        // Counted under the key's lock, before the read can be sent (see `Registrations`).
        self.registered.fetch_add(1, Ordering::SeqCst);
        if COUNTED {
            inc(&self.stats.misses);
        }
        let slot_epoch = self.slot_epoch(key);
        Lookup::Miss(FillTicket { key: state.key().clone(), id, epoch, clears, slot_epoch, local_ttl, rule: None })
    }

    fn hit(&self, key: &[u8], id: &[u8], at: LookupAt) -> Option<Bytes> {
        let now = at.now;
        let entry = self.entries.get(key)?;
        let variant = entry.variants.iter().find(|v| v.id == id)?;
        let fresh =
            variant.expires_at > now && !self.demoted(variant.filled_at) && self.slot_fresh(key, variant.slot_epoch);
        // While the upstream is down: a reply at most `serve_stale` old, expired or demoted.
        let stale_answer = at.stale_ok && now.saturating_duration_since(variant.filled_at) <= self.serve_stale;
        if !fresh && !stale_answer {
            return None;
        }
        let reply = variant.reply.clone();
        let ms = now.duration_since(self.born).as_millis() as u64;
        if ms.saturating_sub(entry.touched.load(Ordering::Relaxed)) >= TOUCH_EVERY.as_millis() as u64 {
            entry.touched.store(ms, Ordering::Relaxed);
            let entry = Arc::clone(&entry);
            self.lru.touch(&entry);
        }
        Some(reply)
    }

    /// A stale answer while the upstream is down (no fill is registered: the tier may not be
    /// trusted, e.g. with tracking down).
    pub fn stale_answer(&self, key: &[u8], id: &[u8], now: Instant) -> Option<Bytes> {
        let reply = self.hit(key, id, LookupAt { now, stale_ok: true })?;
        inc(&self.stats.stale_answers);
        Some(reply)
    }

    /// Like [`Tier::lookup`] without joining: `Ok` on a hit; otherwise a ticket to fill, or
    /// `None` when an identical read is already in flight (this one then goes uncached).
    pub fn lookup_or_register(
        &self,
        key: &[u8],
        id: &[u8],
        ttl: Duration,
        at: LookupAt,
    ) -> Result<Bytes, Option<FillTicket>> {
        match self.lookup_with::<true>(key, id, ttl, at, || None) {
            Lookup::Hit(reply) => Ok(reply),
            Lookup::Miss(ticket) => Err(Some(ticket)),
            Lookup::Joined => Err(None),
        }
    }

    /// The count of reads registered so far: taken before a write's keys are invalidated, it
    /// tells when that write's reply arrives whether any read was registered since (see
    /// [`Registrations`]).
    pub fn registrations(&self) -> Registrations {
        let count = self.registered.load(Ordering::SeqCst);
        Registrations(std::num::NonZeroU64::new(count).unwrap_or(std::num::NonZeroU64::MIN))
    }

    /// Whether a read was registered (anything may have been filled) after `before` was taken.
    pub fn registered_since(&self, before: Registrations) -> bool {
        self.registered.load(Ordering::SeqCst) != before.0.get()
    }

    /// Drops every variant of `key` and refuses fills of reads already in flight for it.
    pub fn invalidate(&self, key: &[u8], cause: Cause) {
        self.remove(key, cause);
    }

    /// [`Tier::invalidate`]; true when the key was cached.
    fn remove(&self, key: &[u8], cause: Cause) -> bool {
        if cause == Cause::Tracking {
            self.stats.pushed(key);
        }
        if let Some(mut state) = self.in_flight.get_mut(key) {
            state.epoch += 1;
        }
        // The list holds a key only if the map does: fills insert into both under the key's
        // in-flight lock (which this invalidation waits for), and evictions leave the list
        // first. So an uncached key, the common case for a write, costs no list lock.
        let removed = self.entries.remove(key);
        // A cached key was read through the proxy, so Redis tracks it and will push its
        // invalidation for this write. Each write counts once in the hot keys: by that push,
        // else when a write through the proxy is sent.
        let push_comes = cause == Cause::Write && removed.is_some() && self.tracking_up();
        if matches!(cause, Cause::Tracking | Cause::Admin) || (cause == Cause::Write && !push_comes) {
            self.hot.invalidations.record(key);
        }
        let Some((_, entry)) = removed else { return false };
        if push_comes {
            self.stats.written(key);
        }
        if let Some(rule) = &entry.rule {
            inc(&rule.invalidations);
        }
        self.unlist(&entry);
        inc(match cause {
            Cause::Tracking => &self.stats.invalidated_by_tracking,
            Cause::Admin => &self.stats.invalidated_by_admin,
            Cause::Write | Cause::WriteAnswered => &self.stats.invalidated_by_write,
        });
        true
    }

    /// Drops everything and refuses fills of every read in flight.
    pub fn clear(&self) {
        let _exclusive = self.clearing.write().unwrap_or_else(|e| e.into_inner());
        self.drop_all();
    }

    fn drop_all(&self) {
        self.clears.fetch_add(1, Ordering::AcqRel);
        inc(&self.stats.clears);
        self.entries.clear();
        self.lru.clear(None).into_iter().for_each(|gone| self.forget(gone));
    }

    /// `entry`, just taken off the map, leaves the LRU list too (unless it left it first).
    fn unlist(&self, entry: &KeyEntry) {
        if let Some(gone) = self.lru.remove(entry) {
            self.forget(gone);
        }
    }

    /// An entry left the LRU list: off the map too if it is still there (never a newer entry
    /// for the same key), off its rule's numbers, counted if evicted.
    fn forget(&self, gone: Gone) {
        if gone.cause != Left::Removed {
            self.entries.remove_if(&gone.key, |_, current| Arc::ptr_eq(current, &gone.entry));
        }
        match gone.cause {
            Left::Evicted => inc(&self.stats.evictions),
            Left::Expired => inc(&self.stats.expired),
            Left::Removed => {}
        }
        if let Some(rule) = &gone.entry.rule {
            rule.entries.fetch_sub(1, Ordering::Relaxed);
            rule.bytes.fetch_sub(i64::from(gone.weight), Ordering::Relaxed);
        }
    }

    /// Bytes held (as weighed). For tests and metrics.
    pub fn weighted_size(&self) -> u64 {
        self.lru.weight()
    }

    /// `cache.max_memory`.
    pub fn max_memory(&self) -> u64 {
        self.lru.max()
    }

    /// Keys held.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

mod admin;
mod expiry;
mod fill;
mod hotkeys;
mod lru;
mod slots;
mod split;
mod stats;

pub use admin::VariantView;
pub use expiry::sweep;
pub use hotkeys::{HotKeys, SAMPLE_EVERY, WINDOW};
pub use split::SplitGet;
pub use stats::Stats;

#[cfg(test)]
mod tests;
