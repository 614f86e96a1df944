//! Where the upstream is: one fixed address (`[upstream] address`), or the primary that
//! Sentinel names for `master_name`, which changes on failover (see `sentinel.rs`).
//!
//! Every upstream connection is opened to the current primary and remembers it ([`Switch`]);
//! when the primary changes, every such connection notices and closes (its waiting requests
//! get an error: their outcome is unknown), and replies read after the change are never
//! delivered. So nothing the old primary answers after a switch reaches a client or the tier.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

/// The primary connections go to: `None` while none is known (Sentinel mode only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub addr: Option<Arc<str>>,
}

pub struct Target {
    /// Sentinel's name for the primary (`master_name`), or `None` for a fixed address.
    master_name: Option<String>,
    current: watch::Sender<Primary>,
    /// Something suggests the primary moved (a lost connection, a READONLY reply): Sentinel
    /// is asked again at once rather than at the next poll.
    doubt: Notify,
}

/// The primary a connection was opened to; tells when it is no longer the current one. For a
/// fixed address it never does, and costs nothing (no watch to poll on every read).
#[derive(Debug)]
pub struct Switch(Option<watch::Receiver<Primary>>);

impl Switch {
    /// The primary changed since the connection was opened.
    pub fn happened(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| rx.has_changed().unwrap_or(true))
    }

    /// Waits until the primary changes (forever for a fixed address). Cancel-safe.
    pub async fn wait(&mut self) {
        if let Some(rx) = self.0.as_mut()
            && rx.changed().await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Target {
    pub fn fixed(addr: &str) -> Target {
        Target {
            master_name: None,
            current: watch::Sender::new(Primary { addr: Some(addr.into()) }),
            doubt: Notify::new(),
        }
    }

    /// A primary found through Sentinel; none is known until [`Target::switch`] names one.
    pub fn sentinel(master_name: &str) -> Target {
        Target {
            master_name: Some(master_name.to_owned()),
            current: watch::Sender::new(Primary { addr: None }),
            doubt: Notify::new(),
        }
    }

    pub fn master_name(&self) -> Option<&str> {
        self.master_name.as_deref()
    }

    /// The current primary's address, and a [`Switch`] that tells when it stops being current.
    pub fn current(&self) -> (Option<Arc<str>>, Switch) {
        let rx = self.current.subscribe();
        let addr = rx.borrow().addr.clone();
        (addr, Switch(self.master_name.is_some().then_some(rx)))
    }

    pub fn addr(&self) -> Option<Arc<str>> {
        self.current.borrow().addr.clone()
    }

    /// How errors and logs name the upstream: its address, or in Sentinel mode the master name
    /// and the primary it resolves to.
    pub fn describe(&self) -> String {
        match (&self.master_name, self.addr()) {
            (None, Some(addr)) => addr.to_string(),
            (Some(name), Some(addr)) => format!("{addr} (primary of '{name}')"),
            (Some(name), None) => format!("'{name}' (no primary known)"),
            (None, None) => "?".into(),
        }
    }

    /// Makes `addr` the primary (or none). Every connection to the previous one closes.
    /// False when it already was.
    pub fn switch(&self, addr: Option<&str>) -> bool {
        self.current.send_if_modified(|primary| {
            if primary.addr.as_deref() == addr {
                return false;
            }
            primary.addr = addr.map(Arc::from);
            true
        })
    }

    /// Asks for the primary to be checked now (Sentinel mode), or the cluster's slot map to be
    /// read again (a Redis Cluster node; see `cluster.rs`). Nothing waits for it otherwise.
    pub fn doubt(&self) {
        self.doubt.notify_one();
    }

    /// Waits for [`Target::doubt`].
    pub async fn doubted(&self) {
        self.doubt.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_notice_a_switch_and_only_a_real_one() {
        let target = Target::sentinel("mymaster");
        let (addr, mut before) = target.current();
        assert_eq!(addr, None);
        assert!(target.switch(Some("127.0.0.1:1")));
        assert!(before.happened());
        before.wait().await;
        let (addr, mut now) = target.current();
        assert_eq!(addr.as_deref(), Some("127.0.0.1:1"));
        assert!(!target.switch(Some("127.0.0.1:1")), "the same primary again is no switch");
        assert!(!now.happened());
        assert!(target.switch(None));
        assert!(now.happened());
        now.wait().await;
        assert_eq!(target.describe(), "'mymaster' (no primary known)");
        let fixed = Target::fixed("127.0.0.1:2");
        let (_, mut switch) = fixed.current();
        assert!(!switch.happened());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), switch.wait()).await.is_err());
    }
}
