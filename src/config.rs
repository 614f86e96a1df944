//! `proxy.toml`: parse, reject unknown keys (naming file, line and key), then `validate()`.
//!
//! Every key has a named default, so an empty file is a valid configuration. The shipped
//! `proxy.toml` documents each key with its unit and default; a test parses it.

mod units;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, Span};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    pub upstream: Upstream,
    pub cache: Cache,
    /// The rule for keys no `[[rule]]` matches.
    pub default: DefaultRule,
    /// `[[rule]]` entries, first match wins.
    pub rule: Vec<Rule>,
    pub breaker: Breaker,
    pub metrics: Metrics,
    pub admin: Admin,
    pub runtime: Runtime,
    /// The file it was read from (what a reload re-reads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Command-line overrides, applied again on reload.
    #[serde(skip)]
    pub overrides: Overrides,
}

/// `--listen` and `--upstream`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
}

/// Who may run `PROXY` admin commands.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// The environment variable holding the admin password; empty: no password.
    pub password_env: String,
}

/// Prometheus text at `address` `/metrics` (`PROXY INFO` shows the same numbers).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// `host:port`; empty: no HTTP endpoint.
    pub address: String,
}

/// The circuit breaker in front of the upstream (see `breaker.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Breaker {
    /// Trip when at least this fraction of the last `window` calls failed.
    pub failure_rate: f64,
    /// A call slower than this is slow.
    pub slow_call: Span,
    /// Trip when at least this fraction of the last `window` calls were slow.
    pub slow_call_rate: f64,
    /// How many recent calls the rates are computed over.
    pub window: usize,
    /// No rate trips before this many calls are in the window.
    pub minimum_calls: usize,
    /// Trip at once after this many failed connection attempts in a row.
    pub connect_failures: u32,
    /// First open period; doubles on every trip in a row, up to `max_open_for`.
    pub open_for: Span,
    pub max_open_for: Span,
    /// Calls let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failure_rate: 0.5,
            slow_call: Span(Duration::from_secs(1)),
            slow_call_rate: 0.5,
            window: 100,
            minimum_calls: 20,
            connect_failures: 3,
            open_for: Span(Duration::from_secs(1)),
            max_open_for: Span(Duration::from_secs(30)),
            half_open_probes: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cache {
    pub enabled: bool,
    /// Bytes the tier may hold (keys + replies + per-entry overhead).
    pub max_memory: ByteSize,
    /// Larger replies are not cached.
    pub max_entry_size: ByteSize,
    pub tracking: Tracking,
    /// How old a cached reply may be served while the circuit breaker is open (0s: never).
    pub serve_stale: Span,
}

/// How the tier learns about writes that do not pass through this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracking {
    /// `CLIENT TRACKING ON BCAST` on a dedicated connection.
    Bcast,
    /// No tracking: only `cache = "ttl"` rules may cache.
    Off,
}

/// A rule's consistency model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Strong: always read from Redis.
    None,
    /// Eventual: cached, invalidated on every write.
    Tracked,
    /// Weak: cached for `local_ttl` only.
    Ttl,
}

/// What PERSIST, GETEX PERSIST and SET KEEPTTL do to a key under a `max_ttl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Persist {
    /// The key keeps a finite TTL: `max_ttl`.
    #[default]
    Clamp,
    /// The command is refused with an error naming the rule.
    Refuse,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultRule {
    pub cache: CacheMode,
    pub local_ttl: Span,
    /// The TTL a write gives a key that would otherwise have none ("0s": none).
    pub default_ttl: Span,
    /// The longest TTL a write may give a key ("0s": no maximum).
    pub max_ttl: Span,
    pub persist: Persist,
}

/// A `[[rule]]`: every key but `pattern` defaults to the `[default]` one.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Redis glob pattern (`*`, `?`, `[...]`) matched against the key.
    pub pattern: String,
    pub cache: Option<CacheMode>,
    pub local_ttl: Option<Span>,
    pub default_ttl: Option<Span>,
    pub max_ttl: Option<Span>,
    pub persist: Option<Persist>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: true,
            max_memory: ByteSize(256 << 20),
            max_entry_size: ByteSize(1 << 20),
            tracking: Tracking::Bcast,
            serve_stale: Span(Duration::ZERO),
        }
    }
}

impl Default for DefaultRule {
    fn default() -> Self {
        DefaultRule {
            cache: CacheMode::Tracked,
            local_ttl: Span(Duration::from_secs(300)),
            default_ttl: Span(Duration::ZERO),
            max_ttl: Span(Duration::ZERO),
            persist: Persist::Clamp,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads; 0 = auto ([`Runtime::worker_threads`]).
    pub threads: usize,
}

impl Runtime {
    /// The threads to run: `threads`, or when 0, one less than the cores (at least 1), leaving a
    /// core to Redis and the clients when they share the machine. Measured on 2 cores: one
    /// thread is 1.4x faster at -P 16 than two (`benches/compare.sh`).
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Address clients connect to.
    pub address: String,
    /// Clients served at once; one more gets `-ERR max number of clients reached`.
    pub max_clients: usize,
    /// Largest single request (all its arguments and framing).
    pub max_request_size: ByteSize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Requests one client may have awaiting their replies; past it the proxy stops reading
    /// from that client until it reads its replies.
    pub max_pending_replies: usize,
    /// On SIGTERM/SIGINT, how long clients get to receive in-flight replies.
    pub drain_timeout: Span,
    /// The environment variable holding the `default` user's password; empty: none.
    pub password_env: String,
    /// More users, ACL-style (`AUTH <name> <password>`).
    pub users: Vec<User>,
    /// Commands refused with an error, by name (e.g. FLUSHALL, KEYS, DEBUG, CONFIG).
    pub deny_commands: Vec<String>,
    /// With both: clients connect with TLS (PEM files).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

/// A client user: its name and where its password comes from (exactly one of the two).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// The Redis server, `host:port`.
    pub address: String,
    /// Shared, pipelined connections per (db, protocol) in use.
    pub connections: usize,
    pub connect_timeout: Span,
    /// A shared connection whose oldest request has no reply after this long is dropped.
    pub command_timeout: Span,
    /// The Redis user the proxy authenticates as (with a password); empty: `default`.
    pub username: String,
    pub password: String,
    /// Or the password from this environment variable.
    pub password_env: String,
    /// Connect to Redis with TLS, verifying its certificate against `tls_ca_file`.
    pub tls: bool,
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate for Redis's `tls-auth-clients` (both or neither).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The name Redis's certificate must carry; default: the host of `address`.
    pub tls_server_name: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: "127.0.0.1:6380".into(),
            max_clients: 10_000,
            max_request_size: ByteSize(512 << 20),
            max_args: 1 << 20,
            max_pending_replies: 1024,
            drain_timeout: Span(Duration::from_secs(5)),
            password_env: String::new(),
            users: Vec::new(),
            deny_commands: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            address: "127.0.0.1:6379".into(),
            connections: 4,
            connect_timeout: Span(Duration::from_secs(1)),
            command_timeout: Span(Duration::from_secs(5)),
            username: String::new(),
            password: String::new(),
            password_env: String::new(),
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
        }
    }
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// toml's message names the line, column and key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, Overrides::default())
    }

    /// Reads `path`, applies `overrides`, validates.
    pub fn load_with(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.source = Some(path.to_owned());
        config.apply(overrides);
        config.validate().map_err(|(key, message)| ConfigError::Invalid { path: path.to_owned(), key, message })?;
        Ok(config)
    }

    /// Sets the addresses given on the command line (and remembers them for reloads).
    pub fn apply(&mut self, overrides: Overrides) {
        if let Some(listen) = &overrides.listen {
            self.listen.address = listen.clone();
        }
        if let Some(upstream) = &overrides.upstream {
            self.upstream.address = upstream.clone();
        }
        self.overrides = overrides;
    }

    /// The same file read again, with the same overrides: what `PROXY CONFIG RELOAD` and SIGHUP
    /// apply. `None` when the configuration did not come from a file.
    pub fn reread(&self) -> Option<Result<Config, ConfigError>> {
        let path = self.source.as_deref()?;
        Some(Config::load_with(path, self.overrides.clone()))
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid { path: origin.to_owned(), key, message })?;
        Ok(config)
    }

    /// Client users and their passwords: `default` from `listen.password_env`, then
    /// `listen.users`. Empty: clients need no password.
    pub fn credentials(&self) -> Result<Vec<(String, String)>, (&'static str, String)> {
        let mut out = Vec::new();
        if !self.listen.password_env.is_empty() {
            out.push(("default".to_owned(), env_password("listen.password_env", &self.listen.password_env)?));
        }
        for user in &self.listen.users {
            if user.name.is_empty() || user.name.contains(char::is_whitespace) {
                return Err(("listen.users", format!("{:?} is not a user name", user.name)));
            }
            if out.iter().any(|(name, _)| *name == user.name) {
                return Err(("listen.users", format!("user {:?} is defined twice", user.name)));
            }
            let password = match (&user.password_env, &user.password_file) {
                (Some(var), None) => env_password("listen.users.password_env", var)?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
                    .map_err(|e| ("listen.users.password_file", format!("{}: {e}", path.display())))?,
                _ => {
                    let message = format!("user {:?} needs exactly one of password_env, password_file", user.name);
                    return Err(("listen.users", message));
                }
            };
            out.push((user.name.clone(), password));
        }
        Ok(out)
    }

    /// The upstream password: `upstream.password`, else from `upstream.password_env`.
    pub fn upstream_password(&self) -> Result<Option<String>, (&'static str, String)> {
        let up = &self.upstream;
        match (up.password.is_empty(), up.password_env.is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Ok(Some(up.password.clone())),
            (true, false) => env_password("upstream.password_env", &up.password_env).map(Some),
            (false, false) => Err(("upstream.password", "set either password or password_env, not both".into())),
        }
    }

    /// The admin password, read from `admin.password_env` (`None` when not configured).
    pub fn admin_password(&self) -> Result<Option<String>, (&'static str, String)> {
        let name = &self.admin.password_env;
        if name.is_empty() {
            return Ok(None);
        }
        env_password("admin.password_env", name).map(Some)
    }

    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.admin_password()?;
        self.credentials()?;
        self.upstream_password()?;
        crate::transport::acceptor(&self.listen)?;
        crate::transport::connector(&self.upstream)?;
        check_address("listen.address", &self.listen.address)?;
        check_address("upstream.address", &self.upstream.address)?;
        if !self.metrics.address.is_empty() {
            check_address("metrics.address", &self.metrics.address)?;
        }
        check_range("listen.max_clients", self.listen.max_clients, 1, 1_000_000)?;
        check_range("listen.max_args", self.listen.max_args, 1, i32::MAX as usize)?;
        check_range("listen.max_pending_replies", self.listen.max_pending_replies, 1, 1 << 20)?;
        check_range("upstream.connections", self.upstream.connections, 1, 256)?;
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
        // moka panics on lifetimes over 1000 years: keep far below (and TTLs in i64 ms).
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

fn env_password(key: &'static str, var: &str) -> Result<String, (&'static str, String)> {
    match std::env::var(var) {
        Ok(password) if !password.is_empty() => Ok(password),
        _ => Err((key, format!("environment variable {var} is not set (or empty)"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_proxy_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.listen.address, "127.0.0.1:6380");
        assert_eq!(config.upstream.address, "127.0.0.1:6379");
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.max_request_size, ByteSize(512 << 20));
        assert_eq!(config.upstream.connections, 4);
    }

    #[test]
    fn units_are_read() {
        let config =
            parse("[listen]\nmax_request_size = \"64KiB\"\n[upstream]\ncommand_timeout = \"250ms\"\n").unwrap();
        assert_eq!(config.listen.max_request_size, ByteSize(65_536));
        assert_eq!(config.upstream.command_timeout, Span(Duration::from_millis(250)));
    }

    #[test]
    fn unknown_keys_are_named_with_file_and_line() {
        let err = parse("[listen]\naddress = \"127.0.0.1:1\"\nmax_clinets = 5\n").unwrap_err();
        assert!(err.starts_with("test.toml: "), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_clinets"), "{err}");
        let err = parse("[lisen]\n").unwrap_err();
        assert!(err.contains("lisen") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[listen]\nmax_request_size = \"12XB\"\n").unwrap_err();
        assert!(err.contains("12XB") && err.contains("line 2"), "{err}");
        let err = parse("[upstream]\nconnections = 0\n").unwrap_err();
        assert_eq!(err, "test.toml: upstream.connections: 0 is out of range (1..=256)");
        let err = parse("[upstream]\naddress = \"localhost\"\n").unwrap_err();
        assert_eq!(err, "test.toml: upstream.address: \"localhost\" is not host:port");
        let err = parse("[upstream]\ncommand_timeout = \"0s\"\n").unwrap_err();
        assert_eq!(err, "test.toml: upstream.command_timeout: must be greater than 0s");
    }

    #[test]
    fn default_ttl_may_not_exceed_max_ttl() {
        let err =
            parse("[default]\nmax_ttl = \"1h\"\n[[rule]]\npattern = \"s:*\"\ndefault_ttl = \"2h\"\n").unwrap_err();
        assert_eq!(
            err,
            "test.toml: rule.default_ttl: 2h exceeds max_ttl 1h (pattern \"s:*\"; both may come from [default])"
        );
        let err = parse("[default]\ndefault_ttl = \"2d\"\nmax_ttl = \"1d\"\n").unwrap_err();
        assert_eq!(err, "test.toml: default.default_ttl: 2d exceeds default.max_ttl 1d");
        // "0s" is no maximum; a rule may lift the inherited one.
        parse("[default]\nmax_ttl = \"1h\"\n[[rule]]\npattern = \"s:*\"\ndefault_ttl = \"2h\"\nmax_ttl = \"0s\"\n")
            .unwrap();
        let err = parse("[[rule]]\npattern = \"s:*\"\npersist = \"keep\"\n").unwrap_err();
        assert!(err.contains("keep") && err.contains("line 3"), "{err}");
    }
}
