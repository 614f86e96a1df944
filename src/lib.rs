//! nearcache: a Redis-protocol caching proxy.
//!
//! Clients connect to the proxy as they would to Redis. A request travels:
//!
//! ```text
//! client socket (plain or TLS)                                                (transport.rs)
//!   -> server      accept under listen.max_clients; one task per client      (server.rs)
//!   -> connection  framing, backpressure, timeouts, replies in request order  (connection.rs)
//!        dispatch  runs of requests per destination, held requests, sending   (connection/dispatch.rs)
//!        framing   find complete commands; size/argument limits; inline       (framing.rs)
//!   -> command     the command table: route, keys, tier and TTL effect, metrics  (command.rs)
//!   -> proxy       the session and the decision for each command              (proxy.rs, proxy/pin.rs)
//!        access    users, NOAUTH, deny_commands                               (access.rs)
//!        admin     the PROXY commands                                         (admin.rs)
//!        policy    which rule a key falls under                               (policy.rs)
//!        cache     the local tier: hits, fills, invalidation                  (cache.rs, cache/fill.rs)
//!        ttl       default_ttl / max_ttl enforced on writes                   (ttl.rs, ttl/shape.rs)
//!        delivery  the work on a shared batch's replies: fills, invalidation,   (delivery.rs)
//!                  MGET assembly, TTL reply shapes
//!   -> breaker     closed / open / half-open in front of the upstream         (breaker.rs)
//!   -> upstream    shared pipelined pools per (db, protocol): pipes             (upstream.rs, upstream/shared.rs, upstream/handshake.rs)
//!        spares    connected spares for sessions that need their own         (upstream/spares.rs)
//!        recovery  closing the breaker as soon as Redis answers              (upstream/recovery.rs)
//!      pinned      a session's own connection for MULTI, blocking, pub/sub;   (pinned_conn.rs, connection/pinned_driver.rs)
//!                  state changes Redis confirms, hidden commands that move it
//!      tracking    Redis's invalidations for writes made elsewhere            (tracking.rs)
//!   <- reply       reply boundaries, replies the proxy builds                 (reply.rs)
//! ```
//!
//! Around it: [`context`] (what every client task shares, built by `server`), [`metrics`] (the
//! request path's counters), [`report`] (Prometheus text and `PROXY INFO` from one snapshot),
//! [`reload`] (SIGHUP and `PROXY CONFIG RELOAD`). Errors the proxy reports are [`error::ProxyError`];
//! `ProxyError::to_reply` is the one place they become RESP. Configuration is
//! [`config::Config`], read from `proxy.toml`.

pub mod access;
pub mod admin;
pub mod breaker;
pub mod cache;
pub mod client_table;
pub mod cluster;
pub mod command;
pub mod config;
pub mod connection;
pub mod context;
pub mod delivery;
pub mod error;
pub mod framing;
pub mod metrics;
pub mod pinned_conn;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod reply;
pub mod report;
pub mod sentinel;
pub mod server;
pub mod tracking;
pub mod transport;
pub mod ttl;
pub mod upstream;
pub mod warm;
pub mod writev;
