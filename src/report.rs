//! What the proxy reports, and the two ways to read it: Prometheus text at `[metrics] address`
//! `/metrics` ([`export`]) and `PROXY INFO` in Redis INFO format ([`Snapshot::info`]). A
//! [`Snapshot`] reads every counter (`metrics`, `cache::Stats`, the breaker, `ttl::Counters`)
//! at once and both formats are rendered from it, so they always agree.

pub mod export;
pub mod http;
mod snapshot;

pub use snapshot::Snapshot;
