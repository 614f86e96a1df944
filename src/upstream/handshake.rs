//! Opening a connection to the upstream: TCP (and TLS), then `HELLO <proto> [AUTH ...]`, the
//! server's version and database count, and `SELECT` for another db.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::{OwnedFrame as Resp2Frame, Resp2Frame as _};
use redis_protocol::resp3::types::{OwnedFrame as Resp3Frame, Resp3Frame as _};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{PoolKey, Switch, Upstream};
use crate::error::ProxyError;
use crate::framing::encode_command;
use crate::reply::ReplyScanner;
use crate::transport::Stream;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

/// What the proxy learned about the upstream server from handshakes.
#[derive(Debug)]
pub struct ServerInfo {
    version: Mutex<String>,
    databases: AtomicU32,
    /// Told when a handshake has filled in the version.
    learned: tokio::sync::Notify,
    /// The user and password every upstream connection logs in with (`HELLO ... AUTH`, from
    /// `[upstream]`).
    login: Option<(String, String)>,
}

impl ServerInfo {
    pub fn new(version: &str, databases: u32) -> ServerInfo {
        ServerInfo {
            version: Mutex::new(version.into()),
            databases: AtomicU32::new(databases),
            learned: tokio::sync::Notify::new(),
            login: None,
        }
    }

    pub(super) fn with_login(mut self, login: Option<(String, String)>) -> ServerInfo {
        self.login = login;
        self
    }

    /// Whether `user`/`password` are what the proxy's upstream connections already logged in
    /// with: a client's AUTH with them changes nothing on a shared connection.
    pub fn is_upstream_login(&self, user: &[u8], password: &[u8]) -> bool {
        self.login.as_ref().is_some_and(|(u, p)| u.as_bytes() == user && p.as_bytes() == password)
    }

    fn set_version(&self, version: String) {
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = version;
        self.learned.notify_waiters();
    }

    /// Waits (at most `limit`) until a handshake has told the server's version: the proxy
    /// answers HELLO itself, with Redis's version in it.
    pub async fn learned(&self, limit: Duration) {
        let _ = timeout(limit, async {
            loop {
                let learned = self.learned.notified();
                tokio::pin!(learned);
                learned.as_mut().enable();
                if self.version() != "unknown" {
                    return;
                }
                learned.await;
            }
        })
        .await;
    }

    pub fn version(&self) -> String {
        self.version.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the upstream is Redis `major.minor` or newer (true while the version is unknown).
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        let version = self.version();
        let mut parts = version.split('.').map(|p| p.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(ma)), Some(Ok(mi))) => (ma, mi) >= (major, minor),
            _ => true,
        }
    }

    /// `CONFIG GET databases`, or Redis's default of 16 if it could not be read.
    pub fn databases(&self) -> u32 {
        self.databases.load(Ordering::Relaxed)
    }
}

impl Upstream {
    /// A new connection to the upstream, handshake done, in the protocol and db of `key`.
    pub async fn connect(&self, key: PoolKey) -> Result<Stream, ProxyError> {
        Ok(self.connect_watched(key).await?.0)
    }

    /// Like [`Upstream::connect`], with the [`Switch`] that tells when the primary it was
    /// opened to is no longer the current one.
    pub async fn connect_watched(&self, key: PoolKey) -> Result<(Stream, Switch), ProxyError> {
        let (mut stream, switch) = self.open().await?;
        self.within("handshake", self.handshake(&mut stream, key)).await?;
        if switch.happened() {
            return Err(self.unavailable("the primary changed while connecting".into()));
        }
        Ok((stream, switch))
    }

    /// TCP (and TLS) to the current primary, no handshake.
    async fn open(&self) -> Result<(Stream, Switch), ProxyError> {
        let (addr, switch) = self.target.current();
        let Some(addr) = addr else {
            return Err(
                self.unavailable("no primary known: Sentinel has not named one that says it is a primary".into())
            );
        };
        let tcp = self.within("connect", async { TcpStream::connect(&*addr).await.map_err(|e| e.to_string()) }).await?;
        let _ = tcp.set_nodelay(true);
        Ok((self.within("TLS handshake", self.secure(tcp, &addr)).await?, switch))
    }

    /// The stream over `tcp` to `addr`: TLS with `[upstream] tls`, else as it is.
    async fn secure(&self, tcp: TcpStream, addr: &str) -> Result<Stream, String> {
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => tls.connect(tcp, addr, false).await.map_err(|e| e.to_string()),
        }
    }

    /// What the server at `addr` says it is (`ROLE`'s first element: "master", "slave", ...),
    /// asked on a connection of its own, logged in as the proxy's connections are: Sentinel's
    /// word is checked before any request goes there.
    pub async fn role_of(&self, addr: &str) -> Result<String, String> {
        let ask = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut stream = self.secure(tcp, addr).await?;
            let mut request = self.hello("2").to_vec();
            request.extend_from_slice(&encode_command(&["rOLE"]));
            let replies = exchange(&mut stream, &request, 2).await?;
            if replies[0].starts_with(b"-") {
                return Err(format!("HELLO failed: {}", String::from_utf8_lossy(&replies[0]).trim_end()));
            }
            match redis_protocol::resp2::decode::decode(&replies[1]) {
                Ok(Some((Resp2Frame::Array(items), _))) => {
                    items.first().and_then(|role| role.to_string()).ok_or_else(|| "empty ROLE reply".into())
                }
                _ => Err(format!("ROLE failed: {}", String::from_utf8_lossy(&replies[1]).trim_end())),
            }
        };
        let limit = self.connect_timeout;
        timeout(limit, ask).await.map_err(|_| format!("no answer within {}ms", limit.as_millis()))?
    }

    /// `HELLO <proto>`, logged in as `[upstream]` says.
    fn hello(&self, proto: &str) -> Bytes {
        match &self.info.login {
            Some((user, password)) => encode_command(&["hELLO", proto, "AUTH", user, password]),
            None => encode_command(&["hELLO", proto]),
        }
    }

    /// Whether Redis answers a `PING` on a new connection within `limit`: any reply counts
    /// (`-BUSY` from a long script, `-NOAUTH`, `-LOADING`: a server that is there). Tells a busy
    /// Redis, which other clients would simply wait for, from one that is gone.
    pub async fn answers_ping(&self, limit: Duration) -> Option<Bytes> {
        let ping = async {
            let (mut stream, _) = self.open().await.ok()?;
            stream.write_all(b"*1\r\n$4\r\npING\r\n").await.ok()?;
            read_replies(&mut stream, 1).await.ok()?.pop()
        };
        timeout(limit, ping).await.ok().flatten()
    }

    async fn handshake(&self, stream: &mut Stream, key: PoolKey) -> Result<(), String> {
        let mut request = BytesMut::new();
        let proto = if key.resp3 { "3" } else { "2" };
        request.extend_from_slice(&self.hello(proto));
        request.extend_from_slice(&encode_command(&["cONFIG", "GET", "databases"]));
        if key.db != 0 {
            request.extend_from_slice(&encode_command(&["sELECT".to_string(), key.db.to_string()]));
        }
        let replies = exchange(stream, &request, if key.db != 0 { 3 } else { 2 }).await?;
        let hello = &replies[0];
        if hello.first() == Some(&b'-') {
            let reply = String::from_utf8_lossy(hello);
            let reply = reply.trim_end();
            if ["-WRONGPASS", "-NOAUTH", "-NOPERM"].iter().any(|code| reply.starts_with(code)) {
                crate::metrics::inc(&self.metrics.upstream_login_refused);
                // A configuration problem, not a dead Redis: say which settings to look at.
                return Err(format!(
                    "Redis refused the proxy's login (check [upstream] username and password/password_env): HELLO failed: {reply}"
                ));
            }
            return Err(format!("HELLO failed: {reply}"));
        }
        if let Some(version) = field(hello, key.resp3, "version") {
            self.info.set_version(version);
        }
        if let Some(n) = field(&replies[1], key.resp3, "databases").and_then(|n| n.parse().ok()) {
            self.info.databases.store(n, Ordering::Relaxed);
        }
        if let Some(select) = replies.get(2).filter(|r| r.first() == Some(&b'-')) {
            return Err(format!("SELECT {} failed: {}", key.db, String::from_utf8_lossy(select).trim_end()));
        }
        Ok(())
    }
}

/// Writes `request` (one or more commands) and reads `n` complete replies.
pub async fn exchange(stream: &mut Stream, request: &[u8], n: usize) -> Result<Vec<Bytes>, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    read_replies(stream, n).await
}

/// Reads exactly `n` complete replies.
pub async fn read_replies(stream: &mut Stream, n: usize) -> Result<Vec<Bytes>, String> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = ReplyScanner::default();
    let mut replies = Vec::with_capacity(n);
    while replies.len() < n {
        match scanner.scan(&buf).map_err(|e| e.to_string())? {
            Some(len) => replies.push(buf.split_to(len).freeze()),
            None => {
                if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed during handshake".into());
                }
            }
        }
    }
    Ok(replies)
}

/// The value of `name` in a map-shaped reply (HELLO's map, CONFIG GET's pairs), decoded with
/// redis-protocol: handshakes are rare, so here a full decode is the simple choice.
fn field(reply: &[u8], resp3: bool, name: &str) -> Option<String> {
    if resp3 {
        let (frame, _) = redis_protocol::resp3::decode::complete::decode(reply).ok()??;
        match frame {
            Resp3Frame::Map { data, .. } => {
                data.iter().find(|(k, _)| k.as_str() == Some(name)).and_then(|(_, v)| v.to_string())
            }
            Resp3Frame::Array { data, .. } => pair_value(data.iter().map(|f| f.to_string()), name),
            _ => None,
        }
    } else {
        let (frame, _) = redis_protocol::resp2::decode::decode(reply).ok()??;
        match frame {
            Resp2Frame::Array(data) => pair_value(data.iter().map(|f| f.to_string()), name),
            _ => None,
        }
    }
}

fn pair_value(mut items: impl Iterator<Item = Option<String>>, name: &str) -> Option<String> {
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        if key.as_deref() == Some(name) {
            return value;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_both_protocols() {
        let resp2 = b"*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.1\r\n";
        assert_eq!(field(resp2, false, "version").as_deref(), Some("7.0.1"));
        let resp3 = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n";
        assert_eq!(field(resp3, true, "proto").as_deref(), Some("3"));
        let config = b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n";
        assert_eq!(field(config, false, "databases").as_deref(), Some("16"));
        assert_eq!(field(b"-ERR unknown\r\n", false, "databases"), None);
    }
}
