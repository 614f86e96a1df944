//! What every client task shares, built once by `server::run`: the upstream, the tier, the
//! limits, the metrics, and what a reload replaces ([`Live`]). Its own module so that the
//! request path (`connection`, `admin`, `reload`, `metrics`) does not depend on the accept loop.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access::Access;
use crate::cache::Tier;
use crate::command::Learned;
use crate::config::{Config, Timeouts};
use crate::framing::Limits;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::ttl;
use crate::upstream::Upstream;

/// What every client task shares.
pub struct Context {
    pub upstream: Arc<Upstream>,
    pub limits: Limits,
    pub max_pending: usize,
    pub timeouts: Timeouts,
    /// Rules, users and the rest a reload replaces (see `reload.rs`).
    pub live: ArcSwap<Live>,
    /// The local tier; `None` when `cache.enabled` is false.
    pub tier: Option<Arc<Tier>>,
    /// TTL enforcement's counts.
    pub ttl: ttl::Counters,
    pub metrics: Arc<Metrics>,
    /// What the upstream's `COMMAND` said of commands the table does not name.
    pub commands: Arc<Learned>,
    /// Every connected client (CLIENT LIST, CLIENT KILL).
    pub clients: Arc<crate::client_table::ClientTable>,
    /// The tier's warm-up (`PROXY CACHE WARM`).
    pub warm: Arc<crate::warm::Warmer>,
    /// With `[upstream] sentinels`: what following the primary has seen.
    pub sentinel: Option<Arc<crate::sentinel::Stats>>,
    /// With `[upstream] cluster`: the cluster's nodes and slot map; shared requests are routed
    /// through it.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What a reload replaces as a whole: read once per batch of requests.
#[derive(Debug)]
pub struct Live {
    pub config: Config,
    pub policy: Policy,
    pub access: Access,
    /// From `[admin] password_env`; `None`: admin commands need no password.
    pub admin_password: Option<String>,
    /// `PROXY CONFIG GET`'s pairs: the values in effect (a key that needs a restart keeps the
    /// value the proxy started with until then).
    pub effective: Vec<(String, String)>,
}

impl Live {
    pub fn new(config: Config) -> Result<Live, (&'static str, String)> {
        Ok(Live {
            policy: Policy::new(&config),
            access: Access::new(&config)?,
            admin_password: config.admin_password()?,
            effective: config.pairs(),
            config,
        })
    }
}
