//! What the upstream's own `COMMAND` metadata says that the proxy's command table does not
//! know: commands Redis flags as blocking (or subscribing) that `command::classify` would send
//! on a shared connection, from a newer Redis or a module. They are then given the session's
//! own connection until answered, like the blocking commands the table names. With a stock
//! Redis of the version the table was checked against (`tests/command_table.rs`) the list is
//! empty and costs one atomic load per command.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::handshake::read_replies;
use super::{PoolKey, Upstream};
use crate::command::{Class, classify};
use crate::framing::{CommandView, encode_command};

#[derive(Debug, Default)]
pub struct Unknown {
    any: AtomicBool,
    /// Lowercase names.
    names: RwLock<Vec<Vec<u8>>>,
}

impl Unknown {
    /// `cmd` is one the table would share but Redis flags as blocking or subscribing.
    pub fn must_pin(&self, cmd: &CommandView<'_>) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let Some(name) = cmd.arg(0) else { return false };
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    fn set(&self, names: Vec<Vec<u8>>) {
        self.any.store(!names.is_empty(), Ordering::Relaxed);
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
    }
}

impl Upstream {
    /// Reads `COMMAND` once and remembers what the table does not know (see the module doc).
    /// Failing that, the table alone decides.
    pub async fn learn_commands(&self) {
        let reply = self
            .within("COMMAND", async {
                let mut stream = self.connect(PoolKey::default()).await.map_err(|e| e.to_string())?;
                stream.write_all(&encode_command(&["COMMAND"])).await.map_err(|e| e.to_string())?;
                read_replies(&mut stream, 1).await
            })
            .await;
        let Ok(Some(reply)) = reply.map(|mut r| r.pop()) else {
            return debug!("COMMAND could not be read; the command table alone decides");
        };
        let Ok(Some((OwnedFrame::Array(entries), _))) = redis_protocol::resp2::decode::decode(&reply) else { return };
        let names: Vec<Vec<u8>> = entries.iter().filter_map(unknown_blocking).collect();
        debug!(commands = entries.len(), unknown_blocking = names.len(), "read the upstream's COMMAND");
        if !names.is_empty() {
            let list: Vec<String> = names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
            info!(commands = %list.join(" "), "commands Redis flags as blocking get a connection of their own");
        }
        self.info().unknown.set(names);
    }
}

/// The name of a `COMMAND` entry flagged blocking or subscribing that the table would share.
fn unknown_blocking(entry: &OwnedFrame) -> Option<Vec<u8>> {
    let OwnedFrame::Array(fields) = entry else { return None };
    let name = match fields.first()? {
        OwnedFrame::BulkString(name) => name.to_ascii_lowercase(),
        OwnedFrame::SimpleString(name) => name.to_ascii_lowercase(),
        _ => return None,
    };
    let OwnedFrame::Array(flags) = fields.get(2)? else { return None };
    let flagged = flags.iter().any(|f| match f {
        OwnedFrame::SimpleString(f) | OwnedFrame::BulkString(f) => f == b"blocking",
        _ => false,
    });
    let subscribes = name.ends_with(b"subscribe");
    if !(flagged || subscribes) {
        return None;
    }
    // Its most blocking form (XREAD blocks only with BLOCK, which the table reads).
    let call = encode_command(&[&name[..], b"BLOCK", b"0", b"STREAMS", b"k", b"0"]);
    (classify(&CommandView::new(&call, 6)) == Class::Ordinary).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: &[&str]) -> OwnedFrame {
        let flags = flags.iter().map(|f| OwnedFrame::SimpleString(f.as_bytes().to_vec())).collect();
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(name.as_bytes().to_vec()),
            OwnedFrame::Integer(-2),
            OwnedFrame::Array(flags),
        ])
    }

    #[test]
    fn only_blocking_commands_the_table_would_share_are_kept() {
        assert_eq!(unknown_blocking(&entry("blpop", &["write", "blocking"])), None, "the table knows it");
        assert_eq!(unknown_blocking(&entry("get", &["readonly", "fast"])), None);
        assert_eq!(
            unknown_blocking(&entry("XREAD", &["readonly", "blocking"])),
            None,
            "conditional: the table reads BLOCK"
        );
        assert_eq!(unknown_blocking(&entry("mod.bpop", &["write", "blocking"])), Some(b"mod.bpop".to_vec()));
        let unknown = Unknown::default();
        unknown.set(vec![b"mod.bpop".to_vec()]);
        let call = encode_command(&["MOD.BPOP", "q"]);
        assert!(unknown.must_pin(&CommandView::new(&call, 2)));
        let call = encode_command(&["GET", "q"]);
        assert!(!unknown.must_pin(&CommandView::new(&call, 2)));
    }
}
