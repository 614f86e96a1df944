//! Hot reload: SIGHUP and `PROXY CONFIG RELOAD` re-read proxy.toml and apply what can change
//! while running, atomically, without dropping a client:
//!
//! - rules (cache modes, local TTLs, default/max TTLs): swapped in one step ([`Live`]); then
//!   every cached key (and read in flight) whose rule changed is dropped;
//! - client users, passwords, `deny_commands`, the admin password;
//! - breaker thresholds;
//! - `cache.max_memory` and `cache.max_entry_size` (a new size empties the tier).
//!
//! Everything else (addresses, connections, timeouts, limits, `cache.enabled`, `tracking`,
//! `serve_stale`, threads) is reported as needing a restart. An invalid file is refused with
//! its error and the running configuration stays.

use std::sync::Arc;

use tracing::{info, warn};

use crate::context::{Context, Live};

/// Keys a reload applies; a change to any other key needs a restart.
const LIVE_KEYS: [&str; 6] = ["default.", "rule.", "breaker.", "listen.users", "listen.deny_commands", "admin."];
const LIVE_EXACT: [&str; 3] = ["listen.password_env", "cache.max_memory", "cache.max_entry_size"];

/// Re-reads the configuration file and applies it. `Ok`: what changed; `Err`: why nothing did.
pub fn reload(ctx: &Context) -> Result<String, String> {
    let current = ctx.live.load_full();
    let config = match current.config.reread() {
        None => return Err("the proxy was started without --config: there is no file to re-read".into()),
        Some(read) => read.map_err(|e| e.to_string())?,
    };
    let mut live = Live::new(config).map_err(|(key, message)| format!("{key}: {message}"))?;
    let (old, new) = (&current.effective, live.config.pairs());
    let changed: Vec<&str> = new
        .iter()
        .filter(|pair| !old.contains(pair))
        .chain(old.iter().filter(|(key, _)| !new.iter().any(|(k, _)| k == key)))
        .map(|(key, _)| key.as_str())
        .collect();
    let needs_restart = |key: &str| !LIVE_KEYS.iter().any(|p| key.starts_with(p)) && !LIVE_EXACT.contains(&key);
    let restart: Vec<String> = changed.iter().copied().filter(|key| needs_restart(key)).map(str::to_owned).collect();
    // In effect: the new values of what a reload applies, the running ones of the rest.
    live.effective = new
        .iter()
        .map(|(key, value)| match old.iter().find(|(k, _)| k == key) {
            Some(running) if needs_restart(key) => running.clone(),
            _ => (key.clone(), value.clone()),
        })
        .collect();
    let rules_changed = changed.iter().any(|key| key.starts_with("default.") || key.starts_with("rule."));
    ctx.upstream.breaker().reconfigure(&live.config.breaker);
    if let Some(cluster) = &ctx.cluster {
        cluster.reconfigure(&live.config.breaker);
    }
    let cache = &live.config.cache;
    if let Some(tier) = &ctx.tier
        && (tier.max_memory() != cache.max_memory.0 || tier.max_entry_size() != cache.max_entry_size.0 as usize)
    {
        tier.resize(cache.max_memory.0, cache.max_entry_size.0 as usize);
    }
    live.policy.carry_stats(&current.policy);
    let new_policy = live.policy.clone();
    ctx.live.store(Arc::new(live));
    // After the swap: fills sent from now on use the new rules; this drops what the old ones
    // cached (and refuses their reads still in flight).
    let dropped = match (&ctx.tier, rules_changed) {
        (Some(tier), true) => {
            tier.invalidate_where(|key| !current.policy.for_key(key).same_as(&new_policy.for_key(key)))
        }
        _ => 0,
    };
    let mut summary = format!("reloaded: {} key(s) changed", changed.len());
    if rules_changed {
        summary.push_str(&format!("; rules changed, {dropped} cached key(s) dropped"));
    }
    if !restart.is_empty() {
        summary.push_str(&format!("; needs a restart to take effect: {}", restart.join(", ")));
        warn!(keys = %restart.join(", "), "configuration reloaded; these keys need a restart");
    }
    info!(changed = changed.len(), dropped, "configuration reloaded");
    Ok(summary)
}

/// On SIGHUP, reload; errors are logged and the running configuration stays.
pub async fn on_sighup(ctx: Arc<Context>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
        while hangups.recv().await.is_some() {
            if let Err(e) = reload(&ctx) {
                warn!(error = %e, "configuration reload refused; the running configuration stays");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctx;
}
