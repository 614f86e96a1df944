//! The tier in front of a Redis Cluster: per-slot state, so that what a cluster changes about
//! one slot (its owner, its owner's tracking connection) drops that slot's entries and no
//! other's.
//!
//! Each slot has an *epoch*: a read's fill ticket carries its slot's epoch, and a fill is
//! refused once it moved (the in-flight rule of `cache.rs`, per slot). [`Tier::drop_slots`]
//! moves the epochs, removes the slots' entries and runs the map change under the tier's clear
//! lock, which fills hold shared: no fill of a read sent before the change survives it.
//! A slot is *tracked* while its owner's tracking connection is up: tracked rules cache only
//! keys of tracked slots.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::Tier;
use crate::cluster::map::{SLOTS, slot_of};
use crate::metrics::inc;

pub(super) struct Slots {
    epochs: Box<[AtomicU32]>,
    tracked: Box<[AtomicBool]>,
}

impl Slots {
    fn new() -> Slots {
        Slots {
            epochs: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            tracked: (0..SLOTS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The epoch of `key`'s slot, for its fill ticket.
    pub(super) fn epoch(&self, key: &[u8]) -> u32 {
        self.epochs[usize::from(slot_of(key))].load(Ordering::Acquire)
    }
}

impl Tier {
    /// The tier fronts a Redis Cluster: per-slot epochs and tracking from now on (before any
    /// read). Tracking as a whole counts as up; each slot's decides.
    pub fn per_slot(&self) {
        let _ = self.slots.set(Slots::new());
        self.tracking_started();
    }

    /// Whether a tracked rule may cache `key` now: tracking is up for it (its slot's owner's,
    /// in front of a cluster).
    pub fn tracked(&self, key: &[u8]) -> bool {
        match self.slots.get() {
            Some(slots) => slots.tracked[usize::from(slot_of(key))].load(Ordering::Acquire),
            None => self.tracking_up(),
        }
    }

    /// Whether a fill ticket's slot epoch (see [`Slots::epoch`]) is still current.
    pub(super) fn slot_fresh(&self, key: &[u8], epoch: u32) -> bool {
        self.slots.get().is_none_or(|slots| slots.epoch(key) == epoch)
    }

    pub(super) fn slot_epoch(&self, key: &[u8]) -> u32 {
        self.slots.get().map_or(0, |slots| slots.epoch(key))
    }

    /// Marks `slots` tracked or not (their owner's tracking connection came up or went down).
    pub fn set_tracked(&self, slots: impl Iterator<Item = u16>, tracked: bool) {
        if let Some(state) = self.slots.get() {
            slots.for_each(|slot| state.tracked[usize::from(slot)].store(tracked, Ordering::Release));
        }
    }

    /// Nothing cached for `slots` can be trusted (their owner changed; their owner's tracking
    /// was lost): their entries are never a normal hit again (dropped, or kept as stale answers
    /// under `serve_stale`, as [`Tier::distrust`] does for the whole tier) and reads in flight
    /// for them will not fill. `change` (the new slot map) runs first, while no fill can happen.
    pub fn drop_slots<T>(&self, slots: &[u16], change: impl FnOnce() -> T) -> T {
        let Some(state) = self.slots.get() else { return change() };
        let _exclusive = self.clearing.write().unwrap_or_else(|e| e.into_inner());
        let changed = change();
        if slots.is_empty() {
            return changed;
        }
        let mut dropped = vec![false; SLOTS];
        for &slot in slots {
            state.epochs[usize::from(slot)].fetch_add(1, Ordering::AcqRel);
            dropped[usize::from(slot)] = true;
        }
        inc(&self.stats.slot_drops);
        if !self.serve_stale.is_zero() {
            // Demoted by their epoch: stale answers while their node's breaker is open.
            return changed;
        }
        let doomed: Vec<_> =
            self.entries.iter().filter(|e| dropped[usize::from(slot_of(e.key()))]).map(|e| e.key().clone()).collect();
        for key in doomed {
            if let Some((_, entry)) = self.entries.remove(&key) {
                self.unlist(&entry);
            }
        }
        changed
    }
}
