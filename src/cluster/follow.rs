//! Following the cluster: reading the slot map (`CLUSTER SLOTS`) every second and when
//! prompted, installing a new map together with the tier's drop of the slots that changed
//! owner, and each node's tracking connection coming up or going down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, info};

use super::Cluster;
use super::map::{SLOTS, SlotMap};
use crate::framing::encode_command;
use crate::tracking::Scope;
use crate::upstream::{PoolKey, exchange};

/// How often the slot map is read when nothing prompts it.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl Cluster {
    /// Installs a new map: the slots whose owner changed lose their entries (and reads in
    /// flight) in the same step, so no read routed by the new map meets an entry of the old.
    fn install(&self, new: SlotMap) {
        new.masters().iter().for_each(|addr| drop(self.node(addr)));
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.map.load_full();
        if *old == new {
            return;
        }
        let changed = old.changed(&new);
        let first = old.masters().is_empty();
        let tracked = |slot: u16| new.owner(slot).and_then(|addr| nodes.get(addr)).is_some_and(|n| n.tracked);
        let (on, off): (Vec<u16>, Vec<u16>) = changed.iter().partition(|&&slot| tracked(slot));
        let new = Arc::new(new);
        let uncovered = new.uncovered();
        let store = || {
            if let Some(tier) = &self.tier {
                tier.set_tracked(on.iter().copied(), true);
                tier.set_tracked(off.iter().copied(), false);
            }
            self.map.store(Arc::clone(&new));
        };
        match &self.tier {
            Some(tier) => tier.drop_slots(&changed, store),
            None => store(),
        }
        drop(nodes);
        if first {
            info!(masters = new.masters().len(), uncovered, "Redis Cluster slot map read");
            self.mapped.notify_waiters();
        } else {
            self.stats.slots_changed.fetch_add(changed.len() as u64, Ordering::Relaxed);
            info!(changed = changed.len(), masters = new.masters().len(), uncovered, "Redis Cluster slot map changed");
        }
    }

    /// A node's tracking connection came up or was lost: its slots are tracked, or dropped.
    fn tracking_changed(&self, addr: &str, up: bool) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get_mut(addr) {
            node.tracked = up;
        }
        let Some(tier) = &self.tier else { return };
        let map = self.map.load();
        let slots: Vec<u16> = (0..SLOTS as u16).filter(|&slot| map.owner(slot).is_some_and(|a| &**a == addr)).collect();
        match up {
            true => tier.set_tracked(slots.iter().copied(), true),
            false => tier.drop_slots(&slots, || tier.set_tracked(slots.iter().copied(), false)),
        }
    }

    /// Reads the map from the first node that answers (known masters first, then the seeds).
    async fn refresh_once(&self) -> bool {
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut candidates: Vec<String> = self.map.load().masters().iter().map(|a| a.to_string()).collect();
        for seed in &self.config.upstream.cluster {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let limit = self.config.upstream.connect_timeout.0 * 2;
        for addr in candidates {
            let up = self.node(&addr);
            let read = async {
                let (mut stream, _) = up.connect_watched(PoolKey::default()).await.map_err(|e| e.to_string())?;
                let mut replies = exchange(&mut stream, &encode_command(&["cLUSTER", "SLOTS"]), 1).await?;
                SlotMap::parse(&replies.remove(0), &addr)
            };
            match tokio::time::timeout(limit, read).await {
                Ok(Ok(map)) if !map.masters().is_empty() => {
                    self.install(map);
                    return true;
                }
                Ok(Ok(_)) => debug!(node = %addr, "CLUSTER SLOTS names no master"),
                Ok(Err(err)) => debug!(node = %addr, error = %err, "cannot read the slot map"),
                Err(_) => debug!(node = %addr, "CLUSTER SLOTS timed out"),
            }
        }
        self.stats.refresh_failures.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// A node's tracking connection: its slots.
pub(super) struct NodeScope {
    pub(super) cluster: Weak<Cluster>,
    pub(super) addr: Arc<str>,
}

impl Scope for NodeScope {
    fn started(&self) {
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.tracking_changed(&self.addr, true);
        }
    }
    fn lost(&self) {
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.tracking_changed(&self.addr, false);
        }
    }
}

/// Reads the slot map now, every [`REFRESH_EVERY`], and soon after each prompt.
pub(super) async fn follow(cluster: Arc<Cluster>) {
    loop {
        let read = cluster.refresh_once().await;
        let wait = if read { REFRESH_EVERY } else { Duration::from_millis(200) };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cluster.refresh.notified() => {
                // A burst of MOVED replies (a resharding) is one read.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
