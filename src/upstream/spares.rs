//! Spare pinned connections: a few connected, handshaken connections per (db, protocol) in
//! use, so that a session's first MULTI, blocking command or subscription is written to Redis
//! at once instead of after a connect and handshake. That matters for order (a BLPOP must reach
//! Redis before the LPUSH another client sends right after it) and for a busy Redis (a long
//! script refuses the SELECT of a new connection's handshake, but not MULTI).
//!
//! A spare is checked when taken: one Redis closed while it waited (its `timeout` setting, a
//! CLIENT KILL, a restart) is dropped, never handed to a session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::debug;

use super::{PoolKey, Switch, Upstream};
use crate::transport::Stream;

#[derive(Default)]
pub struct Spares {
    by_key: Mutex<HashMap<PoolKey, Ready>>,
}

#[derive(Default)]
struct Ready {
    /// With the primary each was opened to: one opened before a switch is never handed out.
    streams: Vec<(Stream, Switch)>,
    /// Connections being opened for this key.
    opening: usize,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Ready>> {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Upstream {
    /// A spare connection in `key` that is still open, if there is one.
    pub(super) fn take_spare(&self, key: PoolKey) -> Option<(Stream, Switch)> {
        let mut spares = self.spares.lock();
        let ready = spares.get_mut(&key)?;
        while let Some((stream, switch)) = ready.streams.pop() {
            if still_open(&stream) && !switch.happened() {
                return Some((stream, switch));
            }
        }
        None
    }

    /// Opens connections in `key` in the background until `upstream.spare_connections` wait.
    /// Called when a pool starts, when a spare is taken (except by a session starting a stream,
    /// see `connect_pinned`) and when a pin ends.
    pub fn refill_spares(self: &Arc<Self>, key: PoolKey) {
        let missing = {
            let mut spares = self.spares.lock();
            let ready = spares.entry(key).or_default();
            let missing = self.spare_connections.saturating_sub(ready.streams.len() + ready.opening);
            ready.opening += missing;
            missing
        };
        for _ in 0..missing {
            let up = Arc::clone(self);
            tokio::spawn(async move {
                let opened = up.connect_watched(key).await;
                let mut spares = up.spares.lock();
                let ready = spares.entry(key).or_default();
                ready.opening -= 1;
                match opened {
                    Ok(stream) => ready.streams.push(stream),
                    Err(err) => debug!(error = %err, "no spare pinned connection"),
                }
            });
        }
    }

    /// Closes every spare (the proxy is stopping).
    pub(super) fn drop_spares(&self) {
        self.spares.lock().clear();
    }
}

/// A spare nobody has written to has nothing to read: readable means closed (or an error
/// Redis sent before closing). TLS spares cannot be peeked at this way and are trusted.
fn still_open(stream: &Stream) -> bool {
    match stream {
        Stream::Plain(tcp) => {
            matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        _ => true,
    }
}
