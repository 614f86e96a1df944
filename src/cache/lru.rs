//! Which entries stay: one least-recently-used list over the entries hits read from the
//! tier's map, bounded in weighed bytes (`cache.max_memory`).
//!
//! The list lives in a slab (`Vec` of nodes linked by index) under one mutex; an entry knows
//! its own node (`KeyEntry::slot`), so moving, removing and evicting it hash nothing. Every
//! operation is a few pointer updates: a hit takes the lock at most once per `TOUCH_EVERY` per
//! key, a fill and a removal once each. (It replaced moka, whose insert and invalidate cost
//! ~2 µs for each refill of a written key: its concurrent table rehashed, its key locks and
//! write-op channel ran on every write; issue 17.)
//!
//! Expiry: an expired variant is never served (hits check it). An entry whose variants are all
//! past `keep_until` is dropped when a fill finds it at the cold end of the list, when the
//! sweep comes to its node ([`Lru::sweep`], run by `Tier::sweep_expired` every
//! [`super::expiry::SWEEP_EVERY`]), or when the byte bound evicts it. Until then it counts
//! against `max_memory` like any other entry, so the bound holds whatever expires.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ENTRY_OVERHEAD, KeyEntry, VARIANT_OVERHEAD};

/// No node: the end of the list, or an entry not (or no longer) in it.
pub(super) const NIL: u32 = u32::MAX;

/// How many entries at the cold end a fill checks for expiry (each costs a comparison).
const EXPIRED_PER_FILL: usize = 2;

pub(super) struct Lru {
    state: Mutex<State>,
}

struct State {
    max: u64,
    weight: u64,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
    /// The next node the sweep checks: it goes round the slab.
    cursor: u32,
}

struct Node {
    held: Option<(Bytes, Arc<KeyEntry>)>,
    weight: u32,
    prev: u32,
    next: u32,
}

/// An entry that left the list: its key, what it weighed (for its rule's numbers), and why.
pub(super) struct Gone {
    pub key: Bytes,
    pub entry: Arc<KeyEntry>,
    pub weight: u32,
    pub cause: Left,
}

/// Why an entry left the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Left {
    /// Pushed out by the byte bound: still in the map, counted as an eviction.
    Evicted,
    /// Found expired (at the cold end, or by the sweep): still in the map.
    Expired,
    /// Already taken off the map (invalidated, replaced, cleared).
    Removed,
}

impl Lru {
    pub fn new(max: u64) -> Lru {
        Lru {
            state: Mutex::new(State {
                max,
                weight: 0,
                nodes: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                cursor: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `entry`, weighing `w` ([`weight`]), as the most recent; returns what left to make
    /// room (and expired entries found at the cold end), which the caller takes off the map.
    pub fn insert(&self, key: Bytes, entry: Arc<KeyEntry>, w: u32, now: Instant, serve_stale: Duration) -> Vec<Gone> {
        let mut state = self.lock();
        let slot = match state.free.pop() {
            Some(slot) => slot,
            None => {
                state.nodes.push(Node { held: None, weight: 0, prev: NIL, next: NIL });
                (state.nodes.len() - 1) as u32
            }
        };
        entry.slot.store(slot, Ordering::Relaxed);
        state.nodes[slot as usize] = Node { held: Some((key, entry)), weight: w, prev: NIL, next: NIL };
        state.weight += u64::from(w);
        state.link_front(slot);
        let mut gone = Vec::new();
        for _ in 0..EXPIRED_PER_FILL {
            let tail = state.tail;
            if tail == slot || tail == NIL || !state.expired(tail, now, serve_stale) {
                break;
            }
            gone.push(state.take(tail, Left::Expired));
        }
        while state.weight > state.max && state.tail != NIL {
            let tail = state.tail;
            gone.push(state.take(tail, Left::Evicted));
        }
        gone
    }

    /// A hit: `entry` becomes the most recent, if it is still in the list.
    pub fn touch(&self, entry: &KeyEntry) {
        let mut state = self.lock();
        let slot = entry.slot.load(Ordering::Relaxed);
        if slot != NIL && state.head != slot {
            state.unlink(slot);
            state.link_front(slot);
        }
    }

    /// `entry` left the map (invalidated, replaced): it leaves the list, if it is still there.
    pub fn remove(&self, entry: &KeyEntry) -> Option<Gone> {
        let mut state = self.lock();
        let slot = entry.slot.load(Ordering::Relaxed);
        (slot != NIL).then(|| state.take(slot, Left::Removed))
    }

    /// Empties the list, with a new bound when given; returns what it held.
    pub fn clear(&self, max: Option<u64>) -> Vec<Gone> {
        let mut state = self.lock();
        if let Some(max) = max {
            state.max = max;
        }
        let nodes = std::mem::take(&mut state.nodes);
        state.free = Vec::new();
        (state.head, state.tail, state.weight, state.cursor) = (NIL, NIL, 0, 0);
        let gone: Vec<Gone> = nodes
            .into_iter()
            .filter_map(|node| {
                let (key, entry) = node.held?;
                // Under the lock: no entry may name a node of the new list.
                entry.slot.store(NIL, Ordering::Relaxed);
                Some(Gone { key, entry, weight: node.weight, cause: Left::Removed })
            })
            .collect();
        drop(state);
        gone
    }

    /// Checks the next `nodes` nodes of the slab, going round it, and takes out the entries
    /// whose variants are all expired (the caller takes them off the map); also returns how
    /// many of the nodes held an entry.
    pub fn sweep(&self, nodes: usize, now: Instant, serve_stale: Duration) -> (Vec<Gone>, usize) {
        let mut state = self.lock();
        let len = state.nodes.len() as u32;
        let (mut gone, mut held) = (Vec::new(), 0);
        for _ in 0..nodes.min(len as usize) {
            let slot = state.cursor % len;
            state.cursor = (slot + 1) % len;
            if state.nodes[slot as usize].held.is_some() {
                held += 1;
                if state.expired(slot, now, serve_stale) {
                    gone.push(state.take(slot, Left::Expired));
                }
            }
        }
        (gone, held)
    }

    /// Bytes held, as weighed.
    pub fn weight(&self) -> u64 {
        self.lock().weight
    }

    pub fn max(&self) -> u64 {
        self.lock().max
    }
}

impl State {
    fn link_front(&mut self, slot: u32) {
        let old = self.head;
        {
            let node = &mut self.nodes[slot as usize];
            node.prev = NIL;
            node.next = old;
        }
        match old {
            NIL => self.tail = slot,
            old => self.nodes[old as usize].prev = slot,
        }
        self.head = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let node = &self.nodes[slot as usize];
            (node.prev, node.next)
        };
        match prev {
            NIL => self.head = next,
            prev => self.nodes[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.nodes[next as usize].prev = prev,
        }
    }

    /// Unlinks and frees `slot`, which must hold an entry.
    fn take(&mut self, slot: u32, cause: Left) -> Gone {
        self.unlink(slot);
        self.free.push(slot);
        let node = &mut self.nodes[slot as usize];
        let (key, entry) = node.held.take().expect("a linked node holds an entry");
        entry.slot.store(NIL, Ordering::Relaxed);
        self.weight -= u64::from(node.weight);
        Gone { key, entry, weight: node.weight, cause }
    }

    /// Every variant of the entry in `slot` is past what it may be kept for.
    fn expired(&self, slot: u32, now: Instant, serve_stale: Duration) -> bool {
        let Some((_, entry)) = &self.nodes[slot as usize].held else { return false };
        entry.variants.iter().all(|v| v.keep_until(serve_stale) <= now)
    }
}

/// What an entry weighs against `cache.max_memory`: its key, every variant's id and reply, and
/// the overheads measured for them.
pub(super) fn weight(key: &Bytes, entry: &KeyEntry) -> u32 {
    let variants: usize = entry.variants.iter().map(|v| v.id.len() + v.reply.len() + VARIANT_OVERHEAD).sum();
    u32::try_from(key.len() + variants + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}
