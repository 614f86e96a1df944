//! What the upstream's own `COMMAND` metadata says about commands the table does not name (a
//! newer Redis, a module): their flags (blocking, subscribing, read-only, write) and key
//! positions give them a route and a tier effect as safe as the table's own lines: a blocking
//! one gets the session's own connection until answered, a write invalidates its keys (every
//! argument when they move), a read-only one changes nothing. With a stock Redis of the version
//! the table was checked against (`tests/command_table.rs`) the list is empty and costs one
//! atomic load per unknown name.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use redis_protocol::resp2::types::OwnedFrame;
use tracing::{debug, info};

use super::{Class, Command, Conn, Data, Keys, Spec, Ttl, lookup};

/// Commands the table does not name, as the upstream describes them.
#[derive(Debug, Default)]
pub struct Learned {
    any: AtomicBool,
    /// Lowercase names.
    commands: RwLock<Vec<(Vec<u8>, Spec)>>,
}

impl Learned {
    /// How the upstream describes `name`, if the table does not know it and the upstream does.
    pub fn find(&self, name: &[u8]) -> Option<Command> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let commands = self.commands.read().unwrap_or_else(|e| e.into_inner());
        let (_, spec) = commands.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(Command { spec: *spec, ..Command::OTHER })
    }

    /// What a request's command is: the table's line, else what the upstream said of it.
    pub fn command(&self, name: &[u8]) -> Command {
        match lookup(name) {
            Command::OTHER => self.find(name).unwrap_or(Command::OTHER),
            known => known,
        }
    }

    /// Learns from the upstream's reply to `COMMAND` (RESP2) what the table does not know.
    pub fn learn(&self, reply: &[u8]) {
        let Ok(Some((OwnedFrame::Array(entries), _))) = redis_protocol::resp2::decode::decode(reply) else {
            return debug!("COMMAND's reply could not be read; the command table alone decides");
        };
        let learned: Vec<(Vec<u8>, Spec)> = entries.iter().filter_map(unknown).collect();
        debug!(commands = entries.len(), unknown = learned.len(), "read the upstream's COMMAND");
        if !learned.is_empty() {
            let list: Vec<String> = learned.iter().map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect();
            info!(commands = %list.join(" "), "commands the table does not know follow the upstream's COMMAND");
        }
        self.set(learned);
    }

    fn set(&self, commands: Vec<(Vec<u8>, Spec)>) {
        self.any.store(!commands.is_empty(), Ordering::Relaxed);
        *self.commands.write().unwrap_or_else(|e| e.into_inner()) = commands;
    }
}

/// A `COMMAND` entry the table does not name, described from its flags and key positions.
fn unknown(entry: &OwnedFrame) -> Option<(Vec<u8>, Spec)> {
    let OwnedFrame::Array(fields) = entry else { return None };
    let text = |f: &OwnedFrame| match f {
        OwnedFrame::BulkString(t) | OwnedFrame::SimpleString(t) => Some(t.to_ascii_lowercase()),
        _ => None,
    };
    let int = |i: usize| match fields.get(i) {
        Some(OwnedFrame::Integer(n)) => *n,
        _ => 0,
    };
    let name = text(fields.first()?)?;
    if lookup(&name) != Command::OTHER {
        return None;
    }
    let flags: Vec<Vec<u8>> = match fields.get(2)? {
        OwnedFrame::Array(flags) => flags.iter().filter_map(text).collect(),
        _ => return None,
    };
    let has = |flag: &str| flags.iter().any(|f| f == flag.as_bytes());
    let conn = if name.ends_with(b"subscribe") {
        Conn::Is(Class::Stream)
    } else if has("blocking") {
        Conn::Is(Class::Blocking)
    } else {
        Conn::Is(Class::Ordinary)
    };
    let (first, last, step) = (int(3), int(4), int(5));
    let keys = if has("movablekeys") {
        Keys::Unknown
    } else if first > 0 {
        match (u8::try_from(first), i8::try_from(last), u8::try_from(step)) {
            (Ok(first), Ok(last), Ok(step)) => Keys::Range { first, last, step },
            _ => Keys::Unknown,
        }
    } else {
        Keys::None
    };
    // Not marked read-only: it may write its keys (or, with none, nothing the tier holds).
    let data = if has("readonly") { Data::Unchanged } else { Data::Write };
    let arity = i16::try_from(int(1)).unwrap_or(-1);
    Some((name, Spec { name: "other", arity, conn, data, keys, ttl: Ttl::None }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{CommandView, encode_command};

    fn entry(name: &str, flags: &[&str], keys: [i64; 3]) -> OwnedFrame {
        let flags = flags.iter().map(|f| OwnedFrame::SimpleString(f.as_bytes().to_vec())).collect();
        let [first, last, step] = keys.map(OwnedFrame::Integer);
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(name.as_bytes().to_vec()),
            OwnedFrame::Integer(-2),
            OwnedFrame::Array(flags),
            first,
            last,
            step,
        ])
    }

    #[test]
    fn commands_the_table_does_not_know_follow_their_flags() {
        assert_eq!(unknown(&entry("blpop", &["write", "blocking"], [1, -2, 1])), None, "the table knows it");
        let (name, spec) = unknown(&entry("MOD.BPOP", &["write", "blocking"], [1, 1, 1])).unwrap();
        assert_eq!(name, b"mod.bpop");
        assert_eq!(
            (spec.conn, spec.data, spec.keys),
            (Conn::Is(Class::Blocking), Data::Write, Keys::Range { first: 1, last: 1, step: 1 })
        );
        let (_, spec) = unknown(&entry("mod.get", &["readonly", "fast"], [1, 1, 1])).unwrap();
        assert_eq!((spec.conn, spec.data), (Conn::Is(Class::Ordinary), Data::Unchanged));
        let (_, spec) = unknown(&entry("mod.mset", &["write", "movablekeys"], [0, 0, 0])).unwrap();
        assert_eq!(spec.keys, Keys::Unknown);
        let (_, spec) = unknown(&entry("mod.subscribe", &["pubsub"], [0, 0, 0])).unwrap();
        assert_eq!(spec.conn, Conn::Is(Class::Stream));

        let learned = Learned::default();
        assert_eq!(learned.find(b"mod.bpop"), None);
        learned.set(vec![(b"mod.bpop".to_vec(), spec_of("MOD.BPOP", &["write", "blocking"]))]);
        let call = encode_command(&["MOD.BPOP", "q"]);
        let found = learned.find(b"Mod.BPop").unwrap();
        assert_eq!(found.class(&CommandView::new(&call, 2)), Class::Blocking);
        assert_eq!(found.slot, Command::OTHER.slot, "counted as other: clients cannot create metric labels");
        assert_eq!(learned.find(b"GET"), None);
    }

    fn spec_of(name: &str, flags: &[&str]) -> Spec {
        unknown(&entry(name, flags, [1, 1, 1])).unwrap().1
    }
}
