//! The `PROXY` command family, for operators, answered by the proxy on any client connection:
//!
//! ```text
//! PROXY AUTH <password>                      when [admin] password_env is set, first
//! PROXY INFO [section]                       Redis INFO format: Proxy, Cache, Breaker, Upstream
//! PROXY CACHE INSPECT <key>                  cached? variants, bytes, remaining local TTL
//! PROXY CACHE INVALIDATE <key>               drop one key            (:1 if it was cached)
//! PROXY CACHE INVALIDATE PATTERN <glob>      drop matching keys      (how many)
//! PROXY CACHE CLEAR                          drop everything
//! PROXY CACHE HOTKEYS [n]                    the most-read and most-invalidated keys lately
//! PROXY CACHE WARM <glob> [limit] | STATUS    fill the tier with matching keys (background)
//! PROXY CONFIG GET [glob]                    the running configuration, key/value pairs
//! PROXY CONFIG RELOAD                        re-read proxy.toml (see `reload.rs`)
//! PROXY BREAKER STATUS                       the circuit breaker's state and counters
//! ```

use std::sync::Arc;

use bytes::Bytes;

use crate::access::constant_time_eq;
use crate::context::Context;
use crate::error::ProxyError;
use crate::framing::CommandView;
use crate::policy::glob_match;
use crate::proxy::{Session, describe_variant};
use crate::reload;
use crate::reply::{self, ReplyWriter};
use crate::report::Snapshot;

/// The slot map the proxy routes by: one `first-last node` line per range.
pub fn cluster_slots(ctx: &Context) -> Result<String, ProxyError> {
    let cluster = ctx.cluster.as_ref().ok_or(ProxyError::NotCluster)?;
    let map = cluster.map();
    let mut ranges: Vec<(u16, u16, String)> = map
        .masters()
        .iter()
        .flat_map(|addr| map.ranges_of(addr).into_iter().map(move |(a, b)| (a, b, addr.to_string())))
        .collect();
    ranges.sort();
    Ok(ranges.into_iter().map(|(a, b, addr)| format!("{a}-{b} {addr}\n")).collect())
}

/// Every node the proxy has connections to: address, slots served, breaker, tracking.
pub fn cluster_nodes(ctx: &Context) -> Result<String, ProxyError> {
    ctx.cluster.as_ref().ok_or(ProxyError::NotCluster)?;
    let snapshot = Snapshot::take(ctx);
    let nodes = snapshot.cluster.map(|c| c.nodes).unwrap_or_default();
    Ok(nodes
        .iter()
        .map(|n| {
            let role = if n.slots > 0 { "master" } else { "other" };
            let tracking = if n.tracking { "up" } else { "down" };
            format!("{} {role} slots={} breaker={} tracking={tracking}\n", n.addr, n.slots, n.breaker.name())
        })
        .collect())
}

/// The reply to a `PROXY ...` command.
pub fn answer(ctx: &Context, session: &mut Session, cmd: &CommandView<'_>) -> Bytes {
    run(ctx, session, cmd).unwrap_or_else(|e| e.to_reply())
}

fn run(ctx: &Context, session: &mut Session, cmd: &CommandView<'_>) -> Result<Bytes, ProxyError> {
    let args: Vec<&[u8]> = cmd.args().skip(1).collect();
    let word = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
    let mut w = ReplyWriter::new(session.pool_key().resp3);
    if word(0) == "AUTH" {
        return auth(ctx, session, &args[1..]);
    }
    let live = ctx.live.load();
    if live.admin_password.is_some() && !session.is_admin() {
        return Err(ProxyError::AdminAuthRequired);
    }
    let arity = |n: usize| if args.len() == n { Ok(()) } else { Err(ProxyError::WrongArity("proxy")) };
    match (word(0).as_str(), word(1).as_str()) {
        ("INFO", _) => {
            let text = match args.get(1) {
                Some(section) => info_section(&info(ctx), &String::from_utf8_lossy(section)),
                None => info(ctx),
            };
            w.verbatim(text.as_bytes());
        }
        ("BREAKER", "STATUS") => {
            arity(2)?;
            w.verbatim(breaker_status(ctx).as_bytes());
        }
        ("CLUSTER", "SLOTS") => {
            arity(2)?;
            w.verbatim(cluster_slots(ctx)?.as_bytes());
        }
        ("CLUSTER", "NODES") => {
            arity(2)?;
            w.verbatim(cluster_nodes(ctx)?.as_bytes());
        }
        ("CACHE", "INSPECT") => {
            arity(3)?;
            w.verbatim(inspect(ctx, args[2])?.as_bytes());
        }
        ("CACHE", "INVALIDATE") => {
            let dropped = match &args[2..] {
                [key] => invalidate_key(ctx, key)?,
                [pattern_word, glob] if pattern_word.eq_ignore_ascii_case(b"PATTERN") => {
                    invalidate_matching(ctx, glob)?
                }
                _ => return Err(ProxyError::WrongArity("proxy|cache|invalidate")),
            };
            w.int(dropped as i64);
        }
        ("CACHE", "HOTKEYS") => {
            let n = match args.get(2) {
                None => 10,
                Some(n) => crate::framing::parse_int(n).filter(|&n| n > 0).ok_or(ProxyError::NotInteger)? as usize,
            };
            w.verbatim(hot_keys(ctx, n.min(1000))?.text().as_bytes());
        }
        ("CACHE", "WARM") => match &args[2..] {
            [status] if status.eq_ignore_ascii_case(b"STATUS") => {
                w.verbatim(warm_status(ctx).as_bytes());
            }
            [pattern] => {
                warm(ctx, pattern, None)?;
                return Ok(Bytes::from_static(reply::OK));
            }
            [pattern, limit] => {
                let limit = crate::framing::parse_int(limit).filter(|&n| n > 0).ok_or(ProxyError::NotInteger)?;
                warm(ctx, pattern, Some(limit as u64))?;
                return Ok(Bytes::from_static(reply::OK));
            }
            _ => return Err(ProxyError::WrongArity("proxy|cache|warm")),
        },
        ("CACHE", "CLEAR") => {
            arity(2)?;
            clear(ctx)?;
            return Ok(Bytes::from_static(reply::OK));
        }
        ("CONFIG", "GET") => {
            let pairs = config(ctx, args.get(2).copied().unwrap_or(b"*"));
            w.map(pairs.len());
            for (key, value) in pairs {
                w.bulk(key.as_bytes()).bulk(value.as_bytes());
            }
        }
        ("CONFIG", "RELOAD") => {
            arity(2)?;
            w.verbatim(reload(ctx)?.as_bytes());
        }
        _ if args.is_empty() => return Err(ProxyError::WrongArity("proxy")),
        _ => {
            let words: Vec<String> = (0..args.len().min(2)).map(word).collect();
            return Err(ProxyError::UnknownProxyCommand(words.join(" ")));
        }
    }
    Ok(w.finish())
}

// The operations themselves: `PROXY ...` here and the HTTP API (`report/http.rs`) are two
// views of them.

/// `PROXY INFO` / `GET /api/stats`: everything the proxy reports, in Redis INFO format.
pub fn info(ctx: &Context) -> String {
    Snapshot::take(ctx).info()
}

/// The circuit breaker's state and counters, INFO style.
pub fn breaker_status(ctx: &Context) -> String {
    ctx.upstream.breaker().status()
}

/// Drops one key from the tier: 1 if it was cached.
pub fn invalidate_key(ctx: &Context, key: &[u8]) -> Result<usize, ProxyError> {
    Ok(usize::from(tier(ctx)?.invalidate_key(key)))
}

/// Drops the keys matching a glob: how many.
pub fn invalidate_matching(ctx: &Context, glob: &[u8]) -> Result<usize, ProxyError> {
    Ok(tier(ctx)?.invalidate_matching(glob))
}

/// Empties the tier.
pub fn clear(ctx: &Context) -> Result<(), ProxyError> {
    tier(ctx)?.clear();
    Ok(())
}

/// The running configuration's keys matching a glob, with their values (secrets hidden).
pub fn config(ctx: &Context, pattern: &[u8]) -> Vec<(String, String)> {
    let live = ctx.live.load();
    live.effective.iter().filter(|(key, _)| glob_match(pattern, key.as_bytes())).cloned().collect()
}

/// Re-reads proxy.toml: what changed, or why the file was refused.
pub fn reload(ctx: &Context) -> Result<String, ProxyError> {
    reload::reload(ctx).map_err(ProxyError::ReloadRefused)
}

/// Starts warming the tier with the keys matching `pattern` (at most `limit`).
pub fn warm(ctx: &Context, pattern: &[u8], limit: Option<u64>) -> Result<(), ProxyError> {
    let tier = ctx.tier.clone().ok_or(ProxyError::TierDisabled)?;
    let policy = ctx.live.load().policy.clone();
    ctx.warm.start(pattern, limit, Arc::clone(&ctx.upstream), tier, policy)
}

/// The warm-up's progress, INFO style.
pub fn warm_status(ctx: &Context) -> String {
    ctx.warm.status()
}

/// The most-read and most-invalidated keys lately (`n` of each), with estimated counts.
pub fn hot_keys(ctx: &Context, n: usize) -> Result<HotKeysView, ProxyError> {
    let tier = tier(ctx)?;
    Ok(HotKeysView { reads: tier.hot.reads.top(n), invalidations: tier.hot.invalidations.top(n) })
}

/// What [`hot_keys`] found.
pub struct HotKeysView {
    pub reads: Vec<(Bytes, u64)>,
    pub invalidations: Vec<(Bytes, u64)>,
}

impl HotKeysView {
    /// INFO style: `# Reads` and `# Invalidations`, one `<rank>:<count> <key>` line per key.
    pub fn text(&self) -> String {
        let mut out = format!(
            "# Sampling\r\nsample_every:{}\r\nwindow_seconds:{}\r\n",
            crate::cache::SAMPLE_EVERY,
            crate::cache::WINDOW.as_secs()
        );
        for (title, keys) in [("Reads", &self.reads), ("Invalidations", &self.invalidations)] {
            out.push_str(&format!("\r\n# {title}\r\n"));
            for (rank, (key, count)) in keys.iter().enumerate() {
                out.push_str(&format!("{}:{count} {}\r\n", rank + 1, String::from_utf8_lossy(key)));
            }
        }
        out
    }
}

/// Whether `password` is the admin password (`[admin] password_env`); true when none is set.
pub fn admits(ctx: &Context, password: Option<&[u8]>) -> bool {
    match (&ctx.live.load().admin_password, password) {
        (None, _) => true,
        (Some(expected), Some(given)) => !expected.is_empty() && constant_time_eq(given, expected.as_bytes()),
        (Some(_), None) => false,
    }
}

/// `PROXY AUTH <password>`: compares with the password from `[admin] password_env`.
fn auth(ctx: &Context, session: &mut Session, args: &[&[u8]]) -> Result<Bytes, ProxyError> {
    let [password] = args else { return Err(ProxyError::WrongArity("proxy|auth")) };
    if ctx.live.load().admin_password.is_none() {
        return Err(ProxyError::AdminAuthNotConfigured);
    }
    if !admits(ctx, Some(password)) {
        return Err(ProxyError::AdminWrongPass);
    }
    session.set_admin(true);
    Ok(Bytes::from_static(reply::OK))
}

fn tier(ctx: &Context) -> Result<&crate::cache::Tier, ProxyError> {
    ctx.tier.as_deref().ok_or(ProxyError::TierDisabled)
}

/// `PROXY CACHE INSPECT key` / `GET /api/keys/<key>`: its rule and cached variants, INFO style.
pub fn inspect(ctx: &Context, key: &[u8]) -> Result<String, ProxyError> {
    let tier = tier(ctx)?;
    let variants = tier.inspect(key);
    let rule = ctx.live.load().policy.for_key(key);
    let mut out = format!(
        "key:{}\r\nrule_cache:{:?}\r\nrule_local_ttl_ms:{}\r\ncached:{}\r\nvariants:{}\r\nbytes:{}\r\n",
        String::from_utf8_lossy(key),
        rule.mode,
        rule.local_ttl.as_millis(),
        u8::from(!variants.is_empty()),
        variants.len(),
        variants.iter().map(|v| v.reply_bytes).sum::<usize>(),
    );
    for (i, v) in variants.iter().enumerate() {
        out.push_str(&format!(
            "variant_{i}:{} reply_bytes={} local_ttl_remaining_ms={} age_ms={}\r\n",
            describe_variant(&v.id),
            v.reply_bytes,
            v.remaining.as_millis(),
            v.age.as_millis(),
        ));
    }
    Ok(out)
}

/// One section of INFO text (case-insensitive), or nothing when there is no such section.
fn info_section(info: &str, section: &str) -> String {
    info.split("\r\n\r\n")
        .find(|s| s.lines().next().is_some_and(|h| h.trim_start_matches("# ").eq_ignore_ascii_case(section)))
        .map(|s| format!("{}\r\n", s.trim_end()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_sections_are_found_by_name() {
        let info = "# Proxy\r\na:1\r\n\r\n# Cache\r\nb:2\r\n";
        assert_eq!(info_section(info, "cache"), "# Cache\r\nb:2\r\n");
        assert_eq!(info_section(info, "nope"), "");
    }
}
