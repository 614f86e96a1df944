//! Talking to one sentinel: a kept connection for questions, and a subscription to
//! `+switch-master`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame as _};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info};

use crate::config;
use crate::framing::encode_command;
use crate::reply::ReplyScanner;
use crate::transport::{Stream, UpstreamTls};
use crate::upstream::{Backoff, Upstream, exchange};

/// How the sentinels are reached (from `[upstream]`).
pub struct Settings {
    pub sentinels: Vec<String>,
    pub master_name: String,
    /// `sentinel_username` (may be empty) and the sentinels' password.
    pub login: Option<(String, String)>,
    /// With `sentinel_tls`.
    pub tls: Option<UpstreamTls>,
    /// Each question, connection included, gets this long (`upstream.connect_timeout`).
    pub timeout: Duration,
}

impl Settings {
    pub fn new(up: &config::Upstream, password: Option<String>, tls: Option<UpstreamTls>) -> Settings {
        Settings {
            sentinels: up.sentinels.clone(),
            master_name: up.master_name.clone(),
            login: password.map(|password| (up.sentinel_username.clone(), password)),
            tls: tls.filter(|_| up.sentinel_tls),
            timeout: up.connect_timeout.0,
        }
    }

    /// A connection to the sentinel at `addr`, logged in.
    async fn connect(&self, addr: &str) -> Result<Stream, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(tls) => tls.connect(tcp, addr, true).await.map_err(|e| e.to_string())?,
        };
        if let Some((user, password)) = &self.login {
            let auth = match user.is_empty() {
                true => encode_command(&["AUTH", password]),
                false => encode_command(&["AUTH", user, password]),
            };
            let reply = exchange(&mut stream, &auth, 1).await?.remove(0);
            if reply.starts_with(b"-") {
                return Err(format!(
                    "AUTH refused (check upstream.sentinel_username/sentinel_password): {}",
                    String::from_utf8_lossy(&reply).trim_end()
                ));
            }
        }
        Ok(stream)
    }
}

/// What a sentinel says of the primary: its address, the configuration epoch it has, and
/// whether it is running a failover (then the address may be the promoted replica's already).
#[derive(Debug, PartialEq, Eq)]
pub struct MasterReply {
    pub addr: String,
    pub epoch: u64,
    pub failing_over: bool,
}

/// One sentinel, with the connection kept between questions.
pub struct Link {
    addr: String,
    stream: Option<Stream>,
}

impl Link {
    pub fn new(addr: &str) -> Link {
        Link { addr: addr.to_owned(), stream: None }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its last question was answered (possibly with an error: an unknown master name).
    pub fn answered(&self) -> bool {
        self.stream.is_some()
    }

    /// Asks one question (connecting first if needed) within the time allowed; a failure
    /// drops the connection.
    async fn ask(&mut self, settings: &Settings, request: &[u8], replies: usize) -> Result<Vec<Bytes>, String> {
        let asked = timeout(settings.timeout, async {
            if self.stream.is_none() {
                self.stream = Some(settings.connect(&self.addr).await?);
            }
            exchange(self.stream.as_mut().expect("connected above"), request, replies).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}ms", settings.timeout.as_millis())));
        if asked.is_err() {
            self.stream = None;
        }
        asked.map_err(|e| format!("sentinel {}: {e}", self.addr))
    }

    /// What this sentinel says of the primary: `SENTINEL MASTER <name>` (config epoch, and
    /// whether it is running a failover) and `SENTINEL GET-MASTER-ADDR-BY-NAME <name>` (the
    /// address, which is already the promoted replica's once the failover it runs has reached
    /// reconfiguring the replicas, before `+switch-master`).
    pub async fn master(&mut self, settings: &Settings) -> Result<MasterReply, String> {
        let name = &settings.master_name;
        let mut request = encode_command(&["SENTINEL", "MASTER", name]).to_vec();
        request.extend_from_slice(&encode_command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name]));
        let replies = self.ask(settings, &request, 2).await?;
        let fields = pairs(&replies[0]).ok_or_else(|| {
            format!(
                "sentinel {}: {}",
                self.addr,
                String::from_utf8_lossy(&replies[0]).trim_end().trim_start_matches('-')
            )
        })?;
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let addr = match redis_protocol::resp2::decode::decode(&replies[1]) {
            Ok(Some((OwnedFrame::Array(items), _))) if items.len() == 2 => {
                items.iter().filter_map(|f| f.to_string()).collect::<Vec<_>>().join(":")
            }
            _ => return Err(format!("sentinel {}: GET-MASTER-ADDR-BY-NAME gave no address", self.addr)),
        };
        Ok(MasterReply {
            addr,
            epoch: field("config-epoch").and_then(|e| e.parse().ok()).unwrap_or(0),
            failing_over: field("flags").is_some_and(|flags| flags.split(',').any(|f| f == "failover_in_progress")),
        })
    }

    /// `SENTINEL SENTINELS <name>`: the other sentinels this one knows.
    pub async fn sentinels(&mut self, settings: &Settings) -> Result<Vec<String>, String> {
        let request = encode_command(&["SENTINEL", "SENTINELS", &settings.master_name]);
        let reply = self.ask(settings, &request, 1).await?.remove(0);
        let Ok(Some((OwnedFrame::Array(items), _))) = redis_protocol::resp2::decode::decode(&reply) else {
            return Err("SENTINEL SENTINELS: unexpected reply".into());
        };
        let mut found = Vec::new();
        for item in items {
            let fields = flat_pairs(item);
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            if let (Some(ip), Some(port)) = (field("ip"), field("port")) {
                found.push(format!("{ip}:{port}"));
            }
        }
        Ok(found)
    }
}

/// A flat array of names and values (RESP2), as strings; `None` for anything else (an error).
fn pairs(reply: &[u8]) -> Option<Vec<(String, String)>> {
    match redis_protocol::resp2::decode::decode(reply).ok()?? {
        (frame @ OwnedFrame::Array(_), _) => Some(flat_pairs(frame)),
        _ => None,
    }
}

fn flat_pairs(frame: OwnedFrame) -> Vec<(String, String)> {
    let OwnedFrame::Array(items) = frame else { return Vec::new() };
    let strings: Vec<String> = items.iter().map(|f| f.to_string().unwrap_or_default()).collect();
    strings.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
}

/// Subscribes to `+switch-master` and `+promoted-slave` on one sentinel for as long as the
/// proxy runs (reconnecting with backoff); a message naming the master makes the primary be
/// checked at once.
pub async fn follow_switches(settings: Arc<Settings>, addr: String, upstream: Arc<Upstream>) {
    let mut backoff = Backoff::default();
    let mut logged = false;
    loop {
        match subscribed(&settings, &addr, &upstream, &mut backoff).await {
            Err(e) if !logged => {
                debug!(sentinel = %addr, error = %e, "cannot follow +switch-master; retrying");
                logged = true;
            }
            _ => {}
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn subscribed(settings: &Settings, addr: &str, upstream: &Upstream, backoff: &mut Backoff) -> Result<(), String> {
    let mut stream = timeout(settings.timeout, settings.connect(addr)).await.map_err(|_| "connect timed out")??;
    let subscribe = encode_command(&["SUBSCRIBE", "+switch-master", "+promoted-slave"]);
    let confirmed =
        timeout(settings.timeout, exchange(&mut stream, &subscribe, 2)).await.map_err(|_| "SUBSCRIBE timed out")??;
    if let Some(refused) = confirmed.iter().find(|r| r.starts_with(b"-")) {
        return Err(String::from_utf8_lossy(refused).into_owned());
    }
    info!(sentinel = %addr, "following +switch-master and +promoted-slave");
    backoff.reset();
    let (switched, promoted) = (format!("{} ", settings.master_name), format!(" @ {} ", settings.master_name));
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = ReplyScanner::default();
    loop {
        while let Some(len) = scanner.scan(&buf).map_err(|e| e.to_string())? {
            let frame = buf.split_to(len);
            // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"],
            // ["message", "+promoted-slave", "slave <ip:port> <ip> <port> @ <name> <ip> <port>"]
            if let Ok(Some((OwnedFrame::Array(items), _))) = redis_protocol::resp2::decode::decode(&frame)
                && let Some(text) = items.get(2).and_then(|f| f.to_string())
                && (text.starts_with(&switched) || text.contains(&promoted))
            {
                info!(sentinel = %addr, message = %text, "the primary is changing");
                upstream.target().doubt();
            }
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed by the sentinel".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sentinel_master_pairs() {
        let reply = b"*6\r\n$4\r\nname\r\n$1\r\nm\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n6379\r\n";
        let fields = pairs(reply).unwrap();
        assert_eq!(fields[1], ("ip".into(), "127.0.0.1".into()));
        assert!(pairs(b"-ERR No such master with that name\r\n").is_none());
    }
}
