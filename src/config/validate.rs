//! What types alone cannot check; every error names the key.

use std::time::Duration;

use super::{ByteSize, Config, Span};

impl Config {
    /// `sentinels` and `master_name` go together, and replace `address`.
    fn check_sentinels(&self) -> Result<(), (&'static str, String)> {
        let up = &self.upstream;
        self.sentinel_password()?;
        match (up.sentinels.is_empty(), up.master_name.is_empty()) {
            (true, true) => return Ok(()),
            (false, true) => return Err(("upstream.master_name", "needed with upstream.sentinels".into())),
            (true, false) => return Err(("upstream.sentinels", "needed with upstream.master_name".into())),
            (false, false) => {}
        }
        if up.address != super::Upstream::default().address {
            return Err((
                "upstream.address",
                format!("{:?} conflicts with upstream.sentinels: the primary is the one Sentinel names", up.address),
            ));
        }
        for sentinel in &up.sentinels {
            check_address("upstream.sentinels", sentinel)?;
        }
        Ok(())
    }

    /// `cluster` seeds replace `address` and exclude `sentinels`.
    fn check_cluster(&self) -> Result<(), (&'static str, String)> {
        let up = &self.upstream;
        if up.cluster.is_empty() {
            return Ok(());
        }
        if !up.sentinels.is_empty() {
            return Err((
                "upstream.cluster",
                "conflicts with upstream.sentinels: a cluster fails over by itself".into(),
            ));
        }
        if up.address != super::Upstream::default().address {
            return Err((
                "upstream.address",
                format!(
                    "{:?} conflicts with upstream.cluster: the cluster's nodes are found from its seeds",
                    up.address
                ),
            ));
        }
        for seed in &up.cluster {
            check_address("upstream.cluster", seed)?;
        }
        Ok(())
    }

    /// Checks what types alone cannot; errors name the key. The passwords it names are checked
    /// here (a file that names an unset variable is refused with its line); the TLS files are
    /// read once, at start (`server::resolve`, which `--check` runs too).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.admin_password()?;
        self.credentials()?;
        self.upstream_password()?;
        check_address("listen.address", &self.listen.address)?;
        check_address("upstream.address", &self.upstream.address)?;
        self.check_sentinels()?;
        self.check_cluster()?;
        if !self.metrics.address.is_empty() {
            check_address("metrics.address", &self.metrics.address)?;
        }
        check_range("listen.max_clients", self.listen.max_clients, 1, 1_000_000)?;
        check_range("listen.max_args", self.listen.max_args, 1, i32::MAX as usize)?;
        check_range("listen.max_pending_replies", self.listen.max_pending_replies, 1, 1 << 20)?;
        check_range("upstream.connections", self.upstream.connections, 1, 256)?;
        check_range("upstream.spare_connections", self.upstream.spare_connections, 0, 256)?;
        check_range("runtime.threads", self.runtime.threads, 0, 1024)?;
        let b = &self.breaker;
        for (key, rate) in [("breaker.failure_rate", b.failure_rate), ("breaker.slow_call_rate", b.slow_call_rate)] {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err((key, format!("{rate} must be in (0, 1]")));
            }
        }
        check_range("breaker.window", b.window, 1, 100_000)?;
        check_range("breaker.minimum_calls", b.minimum_calls, 1, b.window)?;
        check_range("breaker.connect_failures", b.connect_failures as usize, 1, 1_000_000)?;
        check_range("breaker.half_open_probes", b.half_open_probes as usize, 1, 10_000)?;
        if b.open_for.0.is_zero() || b.max_open_for < b.open_for {
            return Err(("breaker.open_for", "must be greater than 0s and at most breaker.max_open_for".into()));
        }
        if b.slow_call.0.is_zero() {
            return Err(("breaker.slow_call", "must be greater than 0s".into()));
        }
        let size = self.listen.max_request_size.0;
        if !(64..=4 << 30).contains(&size) {
            return Err(("listen.max_request_size", format!("{} is out of range (64B..=4GiB)", ByteSize(size))));
        }
        for (key, span) in [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.command_timeout", self.upstream.command_timeout),
            ("default.local_ttl", self.default.local_ttl),
        ] {
            if span.0.is_zero() {
                return Err((key, "must be greater than 0s".into()));
            }
        }
        let (memory, entry) = (self.cache.max_memory, self.cache.max_entry_size);
        if !(ByteSize(1024)..=ByteSize(u32::MAX as u64 * 1024)).contains(&memory) {
            return Err(("cache.max_memory", format!("{memory} is out of range (1KiB..=4096GiB)")));
        }
        if entry > memory || entry.0 > u32::MAX as u64 / 2 {
            return Err(("cache.max_entry_size", format!("{entry} must be at most cache.max_memory and 2GiB")));
        }
        for rule in &self.rule {
            if rule.pattern.is_empty() {
                return Err(("rule.pattern", "must not be empty".into()));
            }
            if rule.local_ttl.is_some_and(|ttl| ttl.0.is_zero()) {
                return Err(("rule.local_ttl", format!("must be greater than 0s (pattern {:?})", rule.pattern)));
            }
        }
        // An entry's expiry is `Instant::now() + ttl`, which panics on overflow: keep far below
        // any such bound (and TTLs in i64 ms).
        let longest = self
            .rule
            .iter()
            .flat_map(|r| [r.local_ttl, r.default_ttl, r.max_ttl])
            .flatten()
            .chain([self.default.local_ttl, self.default.default_ttl, self.default.max_ttl])
            .max();
        if longest.is_some_and(|ttl| ttl.0 > Duration::from_secs(100 * 365 * 86_400)) {
            return Err(("local_ttl", "local_ttl, default_ttl and max_ttl must be at most 100 years".into()));
        }
        self.check_ttl_bounds()
    }

    /// A rule's `default_ttl` may not exceed its `max_ttl` (after inheriting from `[default]`).
    fn check_ttl_bounds(&self) -> Result<(), (&'static str, String)> {
        let d = &self.default;
        let too_long = |default: Span, max: Span| !max.0.is_zero() && default > max;
        if too_long(d.default_ttl, d.max_ttl) {
            return Err(("default.default_ttl", format!("{} exceeds default.max_ttl {}", d.default_ttl, d.max_ttl)));
        }
        for rule in &self.rule {
            let (default, max) = (rule.default_ttl.unwrap_or(d.default_ttl), rule.max_ttl.unwrap_or(d.max_ttl));
            if too_long(default, max) {
                return Err((
                    "rule.default_ttl",
                    format!(
                        "{default} exceeds max_ttl {max} (pattern {:?}; both may come from [default])",
                        rule.pattern
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_address(key: &'static str, address: &str) -> Result<(), (&'static str, String)> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err((key, format!("{address:?} is not host:port"))),
    }
}

fn check_range(key: &'static str, value: usize, min: usize, max: usize) -> Result<(), (&'static str, String)> {
    if (min..=max).contains(&value) { Ok(()) } else { Err((key, format!("{value} is out of range ({min}..={max})"))) }
}
