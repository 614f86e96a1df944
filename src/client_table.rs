//! The proxy's clients, as `CLIENT LIST` shows them and `CLIENT KILL` finds them: each client's
//! task keeps its row up to date once per batch of requests, and listens for being killed.
//!
//! A client's id is the one `CLIENT ID` told it (its own upstream connection's, see
//! `proxy.rs`), or, until it asked, the proxy's number for it plus [`UNSHOWN_IDS`] (a range
//! Redis's own ids never reach), also in HELLO's reply.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;

use crate::upstream::{ReplyChunk, ReplySink};

/// Ids of clients that have not asked for theirs start here.
pub const UNSHOWN_IDS: u64 = 1 << 40;

/// Every connected client, by the proxy's number for it.
#[derive(Default)]
pub struct ClientTable {
    clients: DashMap<u64, Arc<Listed>>,
}

/// One client: what its connection is, what its task last published, how to kill it.
pub struct Listed {
    number: u64,
    addr: SocketAddr,
    laddr: SocketAddr,
    fd: i64,
    since: Instant,
    row: std::sync::Mutex<Row>,
    /// Replies waiting while the client does not read them (`oll`).
    unwritten: std::sync::atomic::AtomicUsize,
    /// Where the client's task receives its replies: [`Listed::kill`] sends [`KILLED`] there,
    /// so that being killable costs the task no extra future to poll.
    sink: ReplySink,
}

/// The reply chunks (sequence numbers, with no replies: no real chunk has none) that tell a
/// client's task it was killed, or that the proxy is shutting down (drain, then close).
pub const KILLED: u64 = u64::MAX;
pub const SHUTDOWN: u64 = u64::MAX - 1;

/// What a client's session looks like now (published by its task).
#[derive(Debug, Clone)]
pub struct Row {
    /// The id it was shown (`CLIENT ID`), if any.
    pub shown_id: Option<u64>,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub db: u32,
    pub resp3: bool,
    pub user: String,
    /// Which of Redis's flags apply ([`FLAGS`]).
    pub flags: u8,
    /// Commands queued in its transaction, or -1 outside one.
    pub multi: i64,
    /// Its last command: the table's name, or its full label when that is not just the name
    /// in lowercase (`client|list`, a command the table does not know).
    pub cmd_name: &'static str,
    pub cmd_label: Option<Bytes>,
    pub last: Instant,
    pub pubsub: bool,
    /// Channels, patterns, shard channels.
    pub subscriptions: [u32; 3],
    /// Bytes read and not yet answered.
    pub qbuf: usize,
}

impl Default for Row {
    fn default() -> Row {
        Row {
            shown_id: None,
            name: None,
            lib_name: None,
            lib_ver: None,
            db: 0,
            resp3: false,
            user: "default".into(),
            flags: 0,
            multi: -1,
            cmd_name: "NULL",
            cmd_label: None,
            last: Instant::now(),
            pubsub: false,
            subscriptions: [0; 3],
            qbuf: 0,
        }
    }
}

/// Redis's flag letters the proxy shows, in Redis's order, by bit: pub/sub, in MULTI, blocked,
/// tracking.
pub const FLAGS: [char; 4] = ['P', 'x', 'b', 't'];

/// Removes the client from the table when its task ends.
pub struct Registration {
    table: Arc<ClientTable>,
    pub listed: Arc<Listed>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.clients.remove(&self.listed.number);
    }
}

impl ClientTable {
    /// Lists a new client (`number`: the proxy's number for it).
    /// `sink`: where its task receives reply chunks.
    pub fn register(
        self: &Arc<Self>,
        number: u64,
        addr: SocketAddr,
        laddr: SocketAddr,
        fd: i64,
        sink: ReplySink,
    ) -> Registration {
        let listed = Arc::new(Listed {
            number,
            addr,
            laddr,
            fd,
            since: Instant::now(),
            row: Default::default(),
            unwritten: Default::default(),
            sink,
        });
        self.clients.insert(number, Arc::clone(&listed));
        Registration { table: Arc::clone(self), listed }
    }

    /// Every client, oldest first (as Redis lists them).
    pub fn all(&self) -> Vec<Arc<Listed>> {
        let mut all: Vec<_> = self.clients.iter().map(|c| Arc::clone(c.value())).collect();
        all.sort_by_key(|c| c.number);
        all
    }

    /// Tells every client the proxy is shutting down.
    pub fn shut_down_all(&self) {
        for client in self.clients.iter() {
            let _ = client.sink.send(ReplyChunk { seq: SHUTDOWN, count: 0, bytes: Bytes::new() });
        }
    }

    pub fn get(&self, number: u64) -> Option<Arc<Listed>> {
        self.clients.get(&number).map(|c| Arc::clone(c.value()))
    }
}

impl Listed {
    pub fn number(&self) -> u64 {
        self.number
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Row> {
        self.row.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn publish(&self, update: impl FnOnce(&mut Row)) {
        update(&mut self.lock());
    }

    /// Replies waiting because the client does not read them (0 once they are written).
    pub fn set_unwritten(&self, replies: usize) {
        self.unwritten.store(replies, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn row(&self) -> Row {
        self.lock().clone()
    }

    /// The id the client is known by.
    pub fn id(&self) -> u64 {
        self.id_of(self.lock().shown_id)
    }

    /// The id of a client whose row says it was shown `shown_id`.
    pub fn id_of(&self, shown_id: Option<u64>) -> u64 {
        shown_id.unwrap_or(UNSHOWN_IDS + self.number)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn laddr(&self) -> SocketAddr {
        self.laddr
    }

    pub fn age_secs(&self) -> u64 {
        self.since.elapsed().as_secs()
    }

    /// Closes the client (its task notices at once).
    pub fn kill(&self) {
        let _ = self.sink.send(ReplyChunk { seq: KILLED, count: 0, bytes: Bytes::new() });
    }

    /// The client's line of `CLIENT LIST` / `CLIENT INFO`, in Redis 7.0's format (with 7.2's
    /// `lib-name` and `lib-ver` when the upstream has them), without the newline.
    pub fn line(&self, lib_fields: bool) -> String {
        let row = self.row();
        let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        let mut flags: String =
            FLAGS.iter().enumerate().filter(|(i, _)| row.flags & (1 << i) != 0).map(|(_, c)| c).collect();
        if flags.is_empty() {
            flags.push('N');
        }
        let cmd = match &row.cmd_label {
            Some(label) => String::from_utf8_lossy(label).into_owned(),
            None => row.cmd_name.to_ascii_lowercase(),
        };
        let mut line = String::with_capacity(300);
        let _ = write!(
            line,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} \
             qbuf={} qbuf-free={} argv-mem=0 multi-mem=0 rbs=16384 rbp=0 obl=0 oll={} omem=0 tot-mem={} \
             events=r cmd={} user={} redir=-1 resp={}",
            self.id_of(row.shown_id),
            self.addr,
            self.laddr,
            self.fd,
            text(&row.name),
            self.age_secs(),
            row.last.elapsed().as_secs(),
            flags,
            row.db,
            row.subscriptions[0],
            row.subscriptions[1],
            row.subscriptions[2],
            row.multi,
            row.qbuf,
            (16 * 1024usize).saturating_sub(row.qbuf),
            self.unwritten.load(std::sync::atomic::Ordering::Relaxed),
            16 * 1024 + row.qbuf,
            cmd,
            row.user,
            if row.resp3 { 3 } else { 2 },
        );
        if lib_fields {
            let _ = write!(line, " lib-name={} lib-ver={}", text(&row.lib_name), text(&row.lib_ver));
        }
        line
    }
}

/// Whether a command (its table name) has subcommands, which Redis shows with the name
/// (`client|list`).
pub fn is_container(name: &str) -> bool {
    matches!(
        name,
        "ACL"
            | "CLIENT"
            | "CLUSTER"
            | "COMMAND"
            | "CONFIG"
            | "FUNCTION"
            | "LATENCY"
            | "MEMORY"
            | "MODULE"
            | "OBJECT"
            | "PUBSUB"
            | "SCRIPT"
            | "SLOWLOG"
            | "XGROUP"
            | "XINFO"
    )
}

/// A command's name as `CLIENT LIST` shows it: lowercase, with its subcommand if it has some.
pub fn command_name(name: &[u8], sub: Option<&[u8]>) -> String {
    let mut out = String::from_utf8_lossy(name).to_ascii_lowercase();
    if let (true, Some(sub)) = (is_container(&out.to_ascii_uppercase()), sub) {
        out.push('|');
        out.push_str(&String::from_utf8_lossy(sub).to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_redis_fields_in_order_and_ids_follow_what_was_shown() {
        let table = Arc::new(ClientTable::default());
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let laddr: SocketAddr = "127.0.0.1:6380".parse().unwrap();
        let (sink, _chunks) = tokio::sync::mpsc::unbounded_channel();
        let reg = table.register(7, addr, laddr, 12, sink);
        reg.listed.publish(|row| {
            row.name = Some(Bytes::from_static(b"worker"));
            row.cmd_label = Some(command_name(b"CLIENT", Some(b"List")).into());
            row.flags = 0b101;
        });
        let line = reg.listed.line(false);
        let keys: Vec<&str> = line.split(' ').map(|kv| kv.split_once('=').unwrap().0).collect();
        assert_eq!(
            keys.join(" "),
            "id addr laddr fd name age idle flags db sub psub ssub multi qbuf qbuf-free argv-mem multi-mem rbs \
             rbp obl oll omem tot-mem events cmd user redir resp"
        );
        assert!(line.starts_with(&format!(
            "id={} addr=127.0.0.1:5000 laddr=127.0.0.1:6380 fd=12 name=worker ",
            UNSHOWN_IDS + 7
        )));
        assert!(line.contains(" cmd=client|list user=default "), "{line}");
        assert!(line.contains(" flags=Pb "), "{line}");
        assert!(reg.listed.line(true).ends_with(" resp=2 lib-name= lib-ver="));
        reg.listed.publish(|row| row.shown_id = Some(42));
        assert_eq!(reg.listed.id(), 42);
        assert_eq!(table.all().len(), 1);
        drop(reg);
        assert!(table.all().is_empty(), "a client that ends leaves the table");
        assert_eq!(command_name(b"GET", Some(b"k")), "get");
    }
}
