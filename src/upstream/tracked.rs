//! Tracking on the shared connections: Redis remembers the keys each of them reads and, when
//! one is written, sends the invalidation to the tier's tracking connection (`CLIENT TRACKING
//! ON REDIRECT <its id>`, Redis's default tracking mode; see `tracking.rs`).
//!
//! A write of a key nobody read through the proxy since its last invalidation costs no push:
//! Redis pushes only for keys the tier may hold. The price is that Redis's memory of what a
//! shared connection read lives as long as that connection: when one is lost, the keys it
//! registered get no invalidation any more, so the tier's scope is distrusted (see
//! [`Tracked::connection_lost`]).
//!
//! # Redirections
//! Each time the tracking connection comes up it has a new client id, and a new *generation*.
//! A shared connection sends `CLIENT TRACKING ON REDIRECT <id>` ahead of the first write it
//! makes in a generation it has not redirected for, in the same write, so every read it sends
//! after is tracked for the current tracking connection. The tier allows tracked caching only
//! after the generation is published, so a read that may fill was always written after its
//! connection's redirection.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{ReplyWork, Step};
use crate::framing::encode_command;

#[derive(Default)]
pub struct Tracked {
    /// The current generation (0: the tracking connection was never up).
    generation: AtomicU64,
    /// The tracking connection's client id while it is up, with its generation.
    target: Mutex<(u64, Option<u64>)>,
    /// Shared connections with tracking on (INFO's `tracking_clients` leaves them out).
    connections: AtomicU64,
    /// The generation of the last shared connection lost after redirecting (0: none).
    lost_generation: AtomicU64,
    /// Told when a connection that tracked keys is lost, or Redis refused a redirection.
    pub(crate) lost: Notify,
    refused: AtomicU64,
}

impl Tracked {
    /// The tracking connection is up as client `id`: shared connections redirect to it from
    /// their next write on. Returns the new generation.
    pub fn redirect_to(&self, id: u64) -> u64 {
        let mut target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        let generation = target.0 + 1;
        *target = (generation, Some(id));
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// The tracking connection is down: no new redirection until it is back.
    pub fn down(&self) {
        self.target.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
    }

    /// The redirection a shared connection sends ahead of its next write, if it has not sent
    /// the current one; `redirected` is the connection's generation.
    pub fn redirection(&self, redirected: &mut u64) -> Option<Bytes> {
        if self.generation.load(Ordering::Acquire) == *redirected {
            return None;
        }
        let (generation, id) = *self.target.lock().unwrap_or_else(|e| e.into_inner());
        let id = id?;
        if *redirected == 0 {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        *redirected = generation;
        Some(encode_command(&["cLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()]))
    }

    /// A shared connection that redirected for generation `redirected` (0: never) is lost.
    /// Redis forgets the keys it read: if they were read for the current generation, the
    /// tracking task distrusts what the tier holds.
    pub fn connection_lost(&self, redirected: u64) {
        if redirected == 0 {
            return;
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if redirected == self.generation.load(Ordering::Acquire) {
            self.lost_generation.store(redirected, Ordering::Release);
            self.lost.notify_one();
        }
    }

    /// Whether a connection of `generation` was lost, or a redirection for it refused, since
    /// the last call (the tracking task's question when told).
    pub fn take_lost(&self, generation: u64) -> (bool, bool) {
        let lost = self.lost_generation.swap(0, Ordering::AcqRel) == generation;
        let refused = self.refused.swap(0, Ordering::AcqRel) == generation;
        (lost, refused)
    }

    /// Shared connections with tracking on.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The work on a redirection's reply: swallowed; anything but `+OK` tells the tracking
    /// task (the connection's reads are not tracked: it starts over).
    pub fn confirm(self: &std::sync::Arc<Self>, generation: u64) -> Box<dyn ReplyWork> {
        Box::new(Confirm { tracked: std::sync::Arc::clone(self), generation })
    }
}

struct Confirm {
    tracked: std::sync::Arc<Tracked>,
    generation: u64,
}

impl ReplyWork for Confirm {
    fn reply(&mut self, frame: &[u8]) -> Step {
        if frame != b"+OK\r\n" {
            tracing::warn!(reply = %String::from_utf8_lossy(frame).trim_end(), "CLIENT TRACKING ON REDIRECT refused on a shared connection");
            self.tracked.refused.store(self.generation, Ordering::Release);
            self.tracked.lost.notify_one();
        }
        Step::Swallow
    }
    fn fail(&mut self, _error: &Bytes) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_redirects_once_per_generation() {
        let tracked = Tracked::default();
        let (mut a, mut b) = (0, 0);
        assert_eq!(tracked.redirection(&mut a), None, "no tracking connection yet");
        let first = tracked.redirect_to(7);
        let seven = encode_command(&["cLIENT", "TRACKING", "ON", "REDIRECT", "7"]);
        assert_eq!(tracked.redirection(&mut a), Some(seven));
        assert_eq!(tracked.redirection(&mut a), None, "sent once");
        assert_eq!((a, tracked.connections()), (first, 1));
        tracked.down();
        assert_eq!(tracked.redirection(&mut b), None, "none while the tracking connection is down");
        let second = tracked.redirect_to(9);
        assert!(tracked.redirection(&mut b).unwrap().ends_with(b"$1\r\n9\r\n"));
        assert_eq!(tracked.connections(), 2);
        // A lost before redirecting again: what it read was distrusted with the first
        // generation already. B lost: the tier must be told.
        tracked.connection_lost(a);
        assert_eq!(tracked.take_lost(second), (false, false));
        tracked.connection_lost(b);
        assert_eq!(tracked.take_lost(second), (true, false));
        assert_eq!(tracked.connections(), 0);
    }
}
