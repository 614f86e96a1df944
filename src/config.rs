//! `proxy.toml`: parse, reject unknown keys (naming file, line and key), then `validate()`.
//!
//! Every key has a named default, so an empty file is a valid configuration. The shipped
//! `proxy.toml` documents each key with its unit and default; a test parses it.

mod pairs;
mod secrets;
mod units;
mod validate;

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
    /// Redis tracks the keys the shared connections read and sends their invalidations to a
    /// dedicated connection (`CLIENT TRACKING ON REDIRECT`).
    On,
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
    /// What the rule's numbers are labelled with in `/metrics` and `PROXY INFO`; default: the
    /// pattern.
    pub name: Option<String>,
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
            tracking: Tracking::On,
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
    /// A client with nothing outstanding that sends nothing this long is closed (0s: never).
    pub idle_timeout: Span,
    /// A request begun must be complete within this (0s: never).
    pub request_timeout: Span,
    /// Replies a client does not read for this long close it (0s: never).
    pub write_timeout: Span,
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
    /// Connected, idle connections kept ready per (db, protocol) in use for sessions that
    /// need one of their own (MULTI, blocking commands, pub/sub).
    pub spare_connections: usize,
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
    /// Sentinels (`host:port`) that name the primary of `master_name`; instead of `address`.
    pub sentinels: Vec<String>,
    pub master_name: String,
    /// Credentials for the sentinels (their `requirepass`/ACL), as for Redis.
    pub sentinel_username: String,
    pub sentinel_password: String,
    pub sentinel_password_env: String,
    /// Reach the sentinels over TLS (same CA and client certificate as for Redis).
    pub sentinel_tls: bool,
    /// Seed nodes (`host:port`) of a Redis Cluster; non-empty: the proxy fronts the cluster
    /// (see `cluster.rs`), instead of `address`.
    pub cluster: Vec<String>,
    /// MSET whose keys are in several slots is split per slot (not atomic) instead of refused
    /// with CROSSSLOT.
    pub cluster_split_mset: bool,
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
            idle_timeout: Span(Duration::ZERO),
            request_timeout: Span(Duration::from_secs(30)),
            write_timeout: Span(Duration::from_secs(30)),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Listen {
    /// The three client timeouts; `None` for those set to 0s.
    pub fn timeouts(&self) -> Timeouts {
        let some = |span: Span| (!span.0.is_zero()).then_some(span.0);
        Timeouts { idle: some(self.idle_timeout), request: some(self.request_timeout), write: some(self.write_timeout) }
    }
}

/// How long a client may stall (see [`Listen`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub request: Option<Duration>,
    pub write: Option<Duration>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            address: "127.0.0.1:6379".into(),
            connections: 4,
            spare_connections: 2,
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
            sentinels: Vec::new(),
            master_name: String::new(),
            sentinel_username: String::new(),
            sentinel_password: String::new(),
            sentinel_password_env: String::new(),
            sentinel_tls: false,
            cluster: Vec::new(),
            cluster_split_mset: false,
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
}

#[cfg(test)]
mod tests;
