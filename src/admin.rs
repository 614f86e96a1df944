//! The `PROXY` command family, for operators, answered by the proxy on any client connection:
//!
//! ```text
//! PROXY AUTH <password>                      when [admin] password_env is set, first
//! PROXY INFO [section]                       Redis INFO format: Proxy, Cache, Breaker, Upstream
//! PROXY CACHE INSPECT <key>                  cached? variants, bytes, remaining local TTL
//! PROXY CACHE INVALIDATE <key>               drop one key            (:1 if it was cached)
//! PROXY CACHE INVALIDATE PATTERN <glob>      drop matching keys      (how many)
//! PROXY CACHE CLEAR                          drop everything
//! PROXY CONFIG GET [glob]                    the running configuration, key/value pairs
//! PROXY CONFIG RELOAD                        re-read proxy.toml (see `reload.rs`)
//! PROXY BREAKER STATUS                       the circuit breaker's state and counters
//! ```

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
            let info = Snapshot::take(ctx).info();
            let text = match args.get(1) {
                Some(section) => info_section(&info, &String::from_utf8_lossy(section)),
                None => info,
            };
            w.verbatim(text.as_bytes());
        }
        ("BREAKER", "STATUS") => {
            arity(2)?;
            w.verbatim(ctx.upstream.breaker().status().as_bytes());
        }
        ("CACHE", "INSPECT") => {
            arity(3)?;
            w.verbatim(inspect(ctx, args[2])?.as_bytes());
        }
        ("CACHE", "INVALIDATE") => {
            let tier = tier(ctx)?;
            let dropped = match &args[2..] {
                [key] => usize::from(tier.invalidate_key(key)),
                [pattern_word, glob] if pattern_word.eq_ignore_ascii_case(b"PATTERN") => tier.invalidate_matching(glob),
                _ => return Err(ProxyError::WrongArity("proxy|cache|invalidate")),
            };
            w.int(dropped as i64);
        }
        ("CACHE", "CLEAR") => {
            arity(2)?;
            tier(ctx)?.clear();
            return Ok(Bytes::from_static(reply::OK));
        }
        ("CONFIG", "GET") => {
            let pattern = args.get(2).copied().unwrap_or(b"*");
            let pairs: Vec<(String, String)> =
                live.effective.iter().filter(|(key, _)| glob_match(pattern, key.as_bytes())).cloned().collect();
            w.map(pairs.len());
            for (key, value) in pairs {
                w.bulk(key.as_bytes()).bulk(value.as_bytes());
            }
        }
        ("CONFIG", "RELOAD") => {
            arity(2)?;
            let summary = reload::reload(ctx).map_err(ProxyError::ReloadRefused)?;
            w.verbatim(summary.as_bytes());
        }
        _ if args.is_empty() => return Err(ProxyError::WrongArity("proxy")),
        _ => {
            let words: Vec<String> = (0..args.len().min(2)).map(word).collect();
            return Err(ProxyError::UnknownProxyCommand(words.join(" ")));
        }
    }
    Ok(w.finish())
}

/// `PROXY AUTH <password>`: compares with the password from `[admin] password_env`.
fn auth(ctx: &Context, session: &mut Session, args: &[&[u8]]) -> Result<Bytes, ProxyError> {
    let [password] = args else { return Err(ProxyError::WrongArity("proxy|auth")) };
    let live = ctx.live.load();
    let expected = live.admin_password.as_deref().ok_or(ProxyError::AdminAuthNotConfigured)?;
    if expected.is_empty() || !constant_time_eq(password, expected.as_bytes()) {
        return Err(ProxyError::AdminWrongPass);
    }
    session.set_admin(true);
    Ok(Bytes::from_static(reply::OK))
}

fn tier(ctx: &Context) -> Result<&crate::cache::Tier, ProxyError> {
    ctx.tier.as_deref().ok_or(ProxyError::TierDisabled)
}

/// `PROXY CACHE INSPECT key`, in INFO style.
fn inspect(ctx: &Context, key: &[u8]) -> Result<String, ProxyError> {
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
