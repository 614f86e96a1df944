//! Which rule a key falls under: `[[rule]]` patterns in order (first match wins), then
//! `[default]`. A rule names the consistency the application needs for that data.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use crate::config::{CacheMode, Config, Persist, Span};

/// What a rule says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub mode: CacheMode,
    /// How long a reply may be served from the tier (further bounded by the key's PTTL).
    pub local_ttl: Duration,
    pub ttl: TtlRule,
    /// Which rule: its index in `[[rule]]`, or their count for `[default]` ([`Policy::stats`]).
    pub rule: u16,
}

impl Settings {
    /// Whether a key is cached and written the same way under both (whichever rule says so).
    pub fn same_as(&self, other: &Settings) -> bool {
        (self.mode, self.local_ttl, self.ttl) == (other.mode, other.local_ttl, other.ttl)
    }
}

/// One rule's numbers, so that a hit rate per kind of data can be graphed. Kept across reloads
/// for a rule of the same label; a cached entry counts under the rule it was filled under.
#[derive(Debug, Default)]
pub struct RuleStats {
    /// The rule's `name`, else its pattern; `default` for `[default]`.
    pub label: String,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills: AtomicU64,
    pub invalidations: AtomicU64,
    /// Keys held and their weighed bytes.
    pub entries: AtomicI64,
    pub bytes: AtomicI64,
}

/// The TTLs writes must respect (see `ttl.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlRule {
    /// Given to a key a write would leave without an expiry.
    pub default: Option<Duration>,
    /// The longest TTL a write may set.
    pub max: Option<Duration>,
    pub persist: Persist,
}

impl TtlRule {
    /// The TTL a key left without one gets: `default`, else `max` (under a maximum no key lives
    /// forever). `None`: the rule enforces nothing on such writes.
    pub fn floor(&self) -> Option<Duration> {
        self.default.or(self.max)
    }

    pub fn enforces(&self) -> bool {
        self.floor().is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<(Vec<u8>, Settings)>,
    default: Settings,
    /// Per rule, then the default's.
    stats: Vec<Arc<RuleStats>>,
    /// Some rule (or the default) has a default_ttl or max_ttl: writes must be checked.
    enforces_ttl: bool,
}

/// "0s" means none.
fn some(span: Span) -> Option<Duration> {
    (!span.0.is_zero()).then_some(span.0)
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        let d = &config.default;
        let ttl = TtlRule { default: some(d.default_ttl), max: some(d.max_ttl), persist: d.persist };
        let count = config.rule.len().min(usize::from(u16::MAX));
        let default = Settings { mode: d.cache, local_ttl: d.local_ttl.0, ttl, rule: count as u16 };
        let rules: Vec<_> = config
            .rule
            .iter()
            .take(count)
            .enumerate()
            .map(|(index, rule)| {
                let ttl = TtlRule {
                    default: rule.default_ttl.map_or(ttl.default, some),
                    max: rule.max_ttl.map_or(ttl.max, some),
                    persist: rule.persist.unwrap_or(ttl.persist),
                };
                let settings = Settings {
                    mode: rule.cache.unwrap_or(default.mode),
                    local_ttl: rule.local_ttl.map_or(default.local_ttl, |span| span.0),
                    ttl,
                    rule: index as u16,
                };
                (rule.pattern.as_bytes().to_vec(), settings)
            })
            .collect();
        let enforces_ttl = default.ttl.enforces() || rules.iter().any(|(_, s)| s.ttl.enforces());
        let labels = config.rule.iter().take(count).map(|r| r.name.clone().unwrap_or_else(|| r.pattern.clone()));
        let stats = labels
            .chain(std::iter::once("default".to_owned()))
            .map(|label| Arc::new(RuleStats { label, ..RuleStats::default() }))
            .collect();
        Policy { rules, default, stats, enforces_ttl }
    }

    /// After a reload: rules whose label the old policy had keep counting where they were.
    pub fn carry_stats(&mut self, old: &Policy) {
        for stats in &mut self.stats {
            if let Some(kept) = old.stats.iter().find(|s| s.label == stats.label) {
                *stats = Arc::clone(kept);
            }
        }
    }

    /// Rule `rule`'s numbers (see [`Settings::rule`]).
    #[inline]
    pub fn stats(&self, rule: u16) -> &Arc<RuleStats> {
        &self.stats[usize::from(rule).min(self.stats.len() - 1)]
    }

    /// Every rule's numbers, `[default]` last.
    pub fn all_stats(&self) -> &[Arc<RuleStats>] {
        &self.stats
    }

    pub fn for_key(&self, key: &[u8]) -> Settings {
        self.rules.iter().find(|(pattern, _)| glob_match(pattern, key)).map_or(self.default, |(_, settings)| *settings)
    }

    /// False when no rule has a TTL: writes then pass without being looked at.
    pub fn enforces_ttl(&self) -> bool {
        self.enforces_ttl
    }
}

/// Redis's glob (as in KEYS and PSUBSCRIBE): `*`, `?`, `[abc]`, `[^a-z]`, and `\` escapes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it matched up to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p + 1, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((after_star, matched))) => {
                p = after_star;
                t = matched + 1;
                star = Some((after_star, matched + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting after `[`; the pattern index after `]` on success.
fn class_match(pattern: &[u8], mut p: usize, c: u8) -> Option<usize> {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut found = false;
    loop {
        match *pattern.get(p)? {
            b']' => break,
            b'\\' => {
                found |= pattern.get(p + 1) == Some(&c);
                p += 2;
            }
            lo if pattern.get(p + 1) == Some(&b'-') && pattern.get(p + 2).is_some_and(|&hi| hi != b']') => {
                let hi = pattern[p + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                found |= (lo..=hi).contains(&c);
                p += 3;
            }
            other => {
                found |= other == c;
                p += 1;
            }
        }
    }
    (found != negate).then_some(p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn globs_match_like_redis() {
        let cases: [(&str, &str, bool); 16] = [
            ("user:*", "user:42", true),
            ("user:*", "users:42", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_match(pattern.as_bytes(), text.as_bytes()), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn first_matching_rule_wins_then_the_default() {
        let text = r#"
            [default]
            cache = "tracked"
            local_ttl = "5m"
            [[rule]]
            pattern = "idempotency:*"
            cache = "none"
            [[rule]]
            pattern = "leaderboard:*"
            cache = "ttl"
            local_ttl = "10s"
            [[rule]]
            pattern = "*"
            cache = "none"
        "#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let policy = Policy::new(&config);
        assert_eq!(policy.for_key(b"idempotency:1").mode, CacheMode::None);
        let board = policy.for_key(b"leaderboard:daily");
        assert_eq!((board.mode, board.local_ttl), (CacheMode::Ttl, Duration::from_secs(10)));
        assert_eq!(policy.for_key(b"user:1").mode, CacheMode::None);
        let default = Policy::new(&Config::default());
        assert_eq!(
            default.for_key(b"user:1"),
            Settings {
                mode: CacheMode::Tracked,
                local_ttl: Duration::from_secs(300),
                ttl: TtlRule::default(),
                rule: 0
            }
        );
        assert!(!default.enforces_ttl());
    }

    #[test]
    fn rules_inherit_ttls_from_the_default_and_0s_means_none() {
        let text = r#"
            [default]
            max_ttl = "7d"
            persist = "refuse"
            [[rule]]
            pattern = "session:*"
            default_ttl = "24h"
            [[rule]]
            pattern = "forever:*"
            max_ttl = "0s"
        "#;
        let policy = Policy::new(&Config::parse(text, Path::new("t.toml")).unwrap());
        assert!(policy.enforces_ttl());
        let (hour, day) = (Duration::from_secs(3600), Duration::from_secs(86_400));
        let session = policy.for_key(b"session:1");
        assert_eq!(session.mode, CacheMode::Tracked, "cache is inherited too");
        assert_eq!(session.ttl, TtlRule { default: Some(24 * hour), max: Some(7 * day), persist: Persist::Refuse });
        assert_eq!(session.ttl.floor(), Some(day));
        let other = policy.for_key(b"user:1").ttl;
        assert_eq!((other.default, other.floor()), (None, Some(7 * day)), "under a maximum, no key lives forever");
        assert!(!policy.for_key(b"forever:1").ttl.enforces());
    }
}
