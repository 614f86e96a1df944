//! Errors the proxy itself reports to clients, and the one place they become RESP replies.
//!
//! Error replies *from Redis* are not here: they are data, forwarded byte for byte.

use std::time::Duration;

use bytes::Bytes;

use crate::framing::FrameError;
use crate::reply;

/// Which side caused an error decides what happens next (only upstream-caused errors will
/// feed the circuit breaker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    // --- caused by the client (downstream) ---
    /// The byte stream cannot be framed: reply, then close the connection.
    #[error("Protocol error: {0}")]
    Protocol(#[from] FrameError),
    #[error("max number of clients reached")]
    MaxClients,
    #[error("request not completed within {}ms (listen.request_timeout)", .0.as_millis())]
    RequestTimeout(Duration),
    #[error("wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    #[error("value is not an integer or out of range")]
    NotInteger,
    #[error("DB index is out of range")]
    DbOutOfRange,
    #[error("unsupported protocol version")]
    NoProto,
    #[error("Protocol version is not an integer or out of range")]
    BadProtoVersion,
    #[error("Syntax error in HELLO option '{0}'")]
    HelloSyntax(String),
    #[error("Unrecognized option '{0}'")]
    UnknownOption(String),
    /// What Redis answers a CLIENT subcommand it does not have (CLIENT SETINFO before 7.2).
    #[error("unknown subcommand '{0}'. Try CLIENT HELP.")]
    UnknownClientSubcommand(String),
    #[error(
        "unknown PROXY subcommand '{0}' (try PROXY INFO, PROXY CACHE INSPECT|INVALIDATE|CLEAR|HOTKEYS|WARM, PROXY CONFIG GET|RELOAD, PROXY BREAKER STATUS, PROXY AUTH)"
    )]
    UnknownProxyCommand(String),
    #[error("PROXY AUTH <password> required for admin commands ([admin] password_env is set)")]
    AdminAuthRequired,
    #[error("invalid admin password")]
    AdminWrongPass,
    #[error("PROXY AUTH called without an admin password configured ([admin] password_env)")]
    AdminAuthNotConfigured,
    #[error("the local tier is disabled (cache.enabled = false)")]
    TierDisabled,
    #[error("configuration reload refused, the running configuration stays: {0}")]
    ReloadRefused(String),
    #[error("Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    #[error("invalid username-password pair or user is disabled.")]
    WrongPass,
    #[error("Authentication required.")]
    NoAuth,
    #[error(
        "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
    )]
    HelloNoAuth,
    #[error("syntax error")]
    Syntax,
    #[error("a warm-up is running (PROXY CACHE WARM STATUS)")]
    WarmRunning,
    #[error("client-id should be greater than 0")]
    InvalidClientId,
    #[error("No such client")]
    NoSuchClient,
    #[error("No such user '{0}'")]
    NoSuchUser(String),
    #[error("Unknown client type '{0}'")]
    UnknownClientType(String),
    #[error("command '{0}' is denied by this proxy (listen.deny_commands)")]
    Denied(String),

    /// `persist = "refuse"`: the command would leave a key under a `max_ttl` without expiry.
    #[error(
        "{command} refused: key '{key}' must keep a TTL of at most {max_ttl} (its rule has max_ttl, persist = \"refuse\")"
    )]
    TtlRefused { command: &'static str, key: String, max_ttl: String },

    #[error("the read this one waited for was abandoned (its client disconnected); retry")]
    ReadAbandoned,

    #[error("the proxy does not front a Redis Cluster ([upstream] cluster is empty)")]
    NotCluster,
    /// Redis Cluster has db 0 only (its own words).
    #[error("SELECT is not allowed in cluster mode")]
    SelectInCluster,

    // --- caused by the upstream ---
    /// Redis Cluster: no node serves the key's slot (Redis Cluster's own words).
    #[error("Hash slot not served")]
    SlotNotServed,
    /// Nothing was sent: the upstream cannot be reached right now.
    #[error("upstream {addr} unavailable: {reason}")]
    UpstreamUnavailable { addr: String, reason: String },
    /// The request was (or may have been) sent and the connection broke before its reply.
    #[error("upstream {addr} connection lost ({reason}); the command may or may not have been executed")]
    UpstreamLost { addr: String, reason: String },
    /// The circuit breaker is open: nothing is sent until it probes the upstream again.
    #[error("upstream {addr} unavailable: circuit breaker open, retrying in {}ms", .retry_in.as_millis())]
    BreakerOpen { addr: String, retry_in: Duration },
    /// The request was sent and no reply came in time.
    #[error("upstream {addr} did not reply within {}ms; the command may or may not have been executed", .after.as_millis())]
    UpstreamTimeout { addr: String, after: Duration },
}

impl ProxyError {
    /// A connection attempt that Redis answered with an error: -BUSY (a long script runs), or
    /// -WRONGPASS/-NOAUTH/-NOPERM (the credentials in `[upstream]` are not, or no longer,
    /// accepted). Redis is there, so it is no connection failure for the circuit breaker:
    /// connections already open keep serving, and the error names the cause.
    pub fn is_answered_refusal(&self) -> bool {
        matches!(self, ProxyError::UpstreamUnavailable { reason, .. }
            if [": -BUSY", ": -WRONGPASS", ": -NOAUTH", ": -NOPERM"].iter().any(|code| reason.contains(code)))
    }

    /// The RESP reply a client receives for this error.
    pub fn to_reply(&self) -> Bytes {
        reply::error(&self.reply_text())
    }

    /// The same reply once per failed command of a batch.
    pub fn to_replies(&self, count: usize) -> Bytes {
        reply::errors(&self.reply_text(), count)
    }

    fn reply_text(&self) -> String {
        let code = match self {
            ProxyError::NoProto => "NOPROTO",
            ProxyError::WrongPass | ProxyError::AdminWrongPass => "WRONGPASS",
            ProxyError::AdminAuthRequired | ProxyError::NoAuth | ProxyError::HelloNoAuth => "NOAUTH",
            // Nothing was sent: like Redis's own LOADING, a refusal that ran nothing and may be
            // retried as is. Client libraries classify it so (redis-py: BusyLoadingError, a
            // ConnectionError; go-redis and rustis retry it; Lettuce: RedisLoadingException;
            // ioredis users retry it with reconnectOnError), so their "Redis is down" handling
            // runs instead of treating it as a bug in the command.
            ProxyError::UpstreamUnavailable { .. } | ProxyError::BreakerOpen { .. } => "LOADING",
            ProxyError::SlotNotServed => "CLUSTERDOWN",
            _ => "ERR",
        };
        format!("{code} {self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_look_like_redis_errors() {
        assert_eq!(
            &ProxyError::WrongArity("select").to_reply()[..],
            b"-ERR wrong number of arguments for 'select' command\r\n"
        );
        assert_eq!(&ProxyError::NoProto.to_reply()[..], b"-NOPROTO unsupported protocol version\r\n");
        let frame = ProxyError::Protocol(FrameError::InvalidBulkLength);
        assert_eq!(&frame.to_reply()[..], b"-ERR Protocol error: invalid bulk length\r\n");
    }

    #[test]
    fn upstream_errors_name_the_upstream() {
        let err = ProxyError::UpstreamUnavailable { addr: "10.0.0.1:6379".into(), reason: "Connection refused".into() };
        assert_eq!(
            &err.to_replies(2)[..],
            b"-LOADING upstream 10.0.0.1:6379 unavailable: Connection refused\r\n".repeat(2)
        );
    }
}
