//! Commands a Redis Cluster runs on several nodes for one client request: multi-key commands
//! whose keys are in several slots (split per node, replies joined in key order), and keyless
//! commands about the whole dataset (run on every master, replies combined as one Redis would
//! answer).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::map::slot_of;
use crate::command::{self, Keys};
use crate::error::ProxyError;
use crate::framing::{CommandView, encode_command, parse_int};
use crate::reply::ReplyScanner;
use crate::upstream::{ReplyChunk, ReplySink, ReplyWork, Step};

/// Where one request goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// To the master of this slot.
    Slot(u16),
    /// Anywhere (no key): the first master.
    Any,
    /// Its keys are in several slots: split per node (MGET, DEL, UNLINK, EXISTS, TOUCH).
    Split(Combine),
    /// To every master, the replies combined.
    Everywhere(Combine),
    /// SCAN: to the master its cursor names (see [`ScanCursor`]).
    Scan,
}

/// How the replies of the parts make the client's one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Combine {
    /// Integers added (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
    Sum,
    /// Each part's array elements go to these positions of the client's array (MGET).
    Positions(Vec<Vec<usize>>),
    /// Arrays joined (KEYS).
    Concat,
    /// The first error, else the first reply (FLUSHALL, SCRIPT LOAD ...).
    Same,
    /// The first `+OK` if any master said it, else the first reply (SCRIPT KILL: the one master
    /// running a script kills it; the others are not busy).
    AnyOk,
    /// INFO: the first master's, with the counts of the whole dataset summed (see [`info`]).
    Info,
}

/// Where `cmd` goes in a cluster. `split_mset`: MSET across slots is split per slot (then not
/// atomic) rather than refused.
pub(super) fn placement(cmd: &CommandView<'_>, split_mset: bool) -> Placement {
    let name = cmd.arg(0).unwrap_or_default();
    let spec = command::lookup(name).spec;
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match spec.keys {
        Keys::None => {
            let sub = cmd.arg(1).unwrap_or_default();
            let sub_is = |n: &str| sub.eq_ignore_ascii_case(n.as_bytes());
            if is("DBSIZE") {
                Placement::Everywhere(Combine::Sum)
            } else if is("KEYS") {
                Placement::Everywhere(Combine::Concat)
            } else if is("FLUSHALL")
                || is("FLUSHDB")
                || (is("SCRIPT") && (sub_is("LOAD") || sub_is("FLUSH")))
                || (is("FUNCTION") && (sub_is("LOAD") || sub_is("FLUSH") || sub_is("DELETE")))
                || (is("CONFIG") && (sub_is("SET") || sub_is("RESETSTAT")))
            {
                Placement::Everywhere(Combine::Same)
            } else if (is("SCRIPT") || is("FUNCTION")) && sub_is("KILL") {
                Placement::Everywhere(Combine::AnyOk)
            } else if is("SCAN") {
                Placement::Scan
            } else {
                Placement::Any
            }
        }
        // Found only by reading the options: the first key follows STREAMS for XREAD and
        // XREADGROUP, and is the first argument for the others (a wrong guess is corrected by
        // the node's MOVED on a shared connection).
        Keys::Unknown => {
            let mut args = cmd.args().skip(1);
            let key = match is("XREAD") || is("XREADGROUP") {
                true => args.by_ref().find(|a| a.eq_ignore_ascii_case(b"STREAMS")).and_then(|_| args.next()),
                false => args.next(),
            };
            key.map_or(Placement::Any, |key| Placement::Slot(slot_of(key)))
        }
        keys => {
            let mut slots = command::key_args(cmd, keys).map(slot_of);
            let Some(first) = slots.next() else { return Placement::Any };
            if slots.all(|slot| slot == first) {
                return Placement::Slot(first);
            }
            if is("MGET") {
                Placement::Split(Combine::Positions(Vec::new()))
            } else if is("DEL") || is("UNLINK") || is("EXISTS") || is("TOUCH") {
                Placement::Split(Combine::Sum)
            } else if is("MSET") && split_mset && cmd.argc() % 2 == 1 {
                Placement::Split(Combine::Same)
            } else {
                // Redis Cluster answers CROSSSLOT itself.
                Placement::Slot(first)
            }
        }
    }
}

/// The keys of a split command grouped by slot (Redis Cluster runs a multi-key command only
/// when all its keys share one): (the slot's node by `owner`, the request for those keys, their
/// positions among the command's keys). `None` when a slot has no owner.
pub(super) fn split<N>(cmd: &CommandView<'_>, owner: impl Fn(u16) -> Option<N>) -> Option<Parts<N>> {
    let name = cmd.arg(0).unwrap_or_default();
    // MSET's keys come with their values.
    let per_key = if name.eq_ignore_ascii_case(b"MSET") { 2 } else { 1 };
    let args: Vec<&[u8]> = cmd.args().skip(1).collect();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (position, with) in args.chunks(per_key).enumerate() {
        let slot = slot_of(with[0]);
        match groups.iter_mut().find(|g| g.slot == slot) {
            Some(group) => {
                group.args.extend_from_slice(with);
                group.positions.push(position);
            }
            None => {
                let mut args = vec![name];
                args.extend_from_slice(with);
                groups.push(Group { slot, args, positions: vec![position] })
            }
        }
    }
    groups.into_iter().map(|g| Some((owner(g.slot)?, encode_command(&g.args), g.positions))).collect()
}

/// Requests for parts of one client request: (node, request, positions of its keys).
pub(super) type Parts<N> = Vec<(N, Bytes, Vec<usize>)>;

/// The keys of one slot, as a request for them.
struct Group<'a> {
    slot: u16,
    args: Vec<&'a [u8]>,
    positions: Vec<usize>,
}

/// A SCAN over every master, one after the other: the client's cursor carries the master's
/// index in its top byte and that master's own cursor below (Redis's cursors stay far below
/// 2^56), and a master's last page leads to the next master's first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScanCursor {
    pub master: usize,
    pub cursor: u64,
}

const MASTER_SHIFT: u32 = 56;

impl ScanCursor {
    /// The client's cursor (`None`: not a number, or beyond the masters known).
    pub(super) fn parse(arg: &[u8], masters: usize) -> Option<ScanCursor> {
        let client: u64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
        let master = (client >> MASTER_SHIFT) as usize;
        (master < masters.max(1)).then_some(ScanCursor { master, cursor: client & ((1 << MASTER_SHIFT) - 1) })
    }

    /// SCAN with this master's cursor in place of the client's (argument 1).
    pub(super) fn request(&self, cmd: &CommandView<'_>) -> Bytes {
        let cursor = self.cursor.to_string();
        let args: Vec<&[u8]> =
            cmd.args().enumerate().map(|(i, arg)| if i == 1 { cursor.as_bytes() } else { arg }).collect();
        encode_command(&args)
    }
}

/// The work on a SCAN page: the master's next cursor becomes the client's.
pub(super) struct ScanPage {
    pub master: usize,
    pub masters: usize,
}

impl ReplyWork for ScanPage {
    fn reply(&mut self, frame: &[u8]) -> Step {
        let items = elements(frame);
        let (Some(cursor), Some(keys)) = (items.first(), items.get(1)) else { return Step::Deliver };
        let Some(next) = bulk_text(cursor).and_then(parse_int).and_then(|n| u64::try_from(n).ok()) else {
            return Step::Deliver;
        };
        let client = match (next, self.master + 1 < self.masters) {
            (0, true) => ((self.master + 1) as u64) << MASTER_SHIFT,
            (0, false) => 0,
            (next, _) => ((self.master as u64) << MASTER_SHIFT) | next,
        };
        let client = client.to_string();
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*2\r\n${}\r\n{client}\r\n", client.len()).as_bytes());
        out.extend_from_slice(keys);
        Step::Replace(out.freeze())
    }

    fn fail(&mut self, _error: &Bytes) {}

    /// Redirected (a moving slot): the page is read again there; the cursor is the master's.
    fn restart(&mut self) {}
}

/// The client's reply being assembled from its parts' replies.
pub(super) struct Gather {
    sink: ReplySink,
    seq: u64,
    combine: Combine,
    parts: Vec<Option<Bytes>>,
    left: usize,
    /// The request's own work (its written keys invalidated again), given the joined reply.
    work: Option<Box<dyn ReplyWork>>,
}

impl Gather {
    pub(super) fn new(
        sink: ReplySink,
        seq: u64,
        combine: Combine,
        parts: usize,
        work: Option<Box<dyn ReplyWork>>,
    ) -> Arc<Mutex<Gather>> {
        Arc::new(Mutex::new(Gather { sink, seq, combine, parts: vec![None; parts], left: parts, work }))
    }
}

/// The work of one part: its reply is kept for the [`Gather`], never delivered itself.
pub(super) struct Part {
    gather: Arc<Mutex<Gather>>,
    index: usize,
    done: bool,
}

impl Part {
    pub(super) fn new(gather: &Arc<Mutex<Gather>>, index: usize) -> Box<Part> {
        Box::new(Part { gather: Arc::clone(gather), index, done: false })
    }

    fn put(&mut self, reply: Bytes) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut gather = self.gather.lock().unwrap_or_else(|e| e.into_inner());
        gather.parts[self.index] = Some(reply);
        gather.left -= 1;
        if gather.left > 0 {
            return;
        }
        let parts: Vec<Bytes> = gather.parts.iter_mut().map(|p| p.take().unwrap_or_default()).collect();
        let mut joined = join(&gather.combine, &parts);
        if let Some(work) = gather.work.as_mut()
            && let Step::Replace(replaced) = work.reply(&joined)
        {
            joined = replaced;
        }
        let _ = gather.sink.send(ReplyChunk { seq: gather.seq, count: 1, bytes: joined });
    }
}

impl ReplyWork for Part {
    fn reply(&mut self, frame: &[u8]) -> Step {
        self.put(Bytes::copy_from_slice(frame));
        Step::Swallow
    }

    fn fail(&mut self, error: &Bytes) {
        self.put(error.clone());
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.put(ProxyError::ReadAbandoned.to_reply());
    }
}

/// The client's reply from the parts' (the first error, if any part failed).
fn join(combine: &Combine, parts: &[Bytes]) -> Bytes {
    if *combine == Combine::AnyOk {
        return parts.iter().find(|p| &p[..] == b"+OK\r\n").unwrap_or(&parts[0]).clone();
    }
    if *combine == Combine::Info {
        return info(parts).unwrap_or_else(|| parts[0].clone());
    }
    if let Some(error) = parts.iter().find(|p| p.first().is_none_or(|&b| b == b'-' || b == b'!')) {
        return if error.is_empty() { ProxyError::ReadAbandoned.to_reply() } else { error.clone() };
    }
    match combine {
        Combine::Same | Combine::AnyOk | Combine::Info => parts[0].clone(),
        Combine::Sum => {
            let sum: i64 = parts.iter().filter_map(|p| parse_int(p.get(1..p.len().saturating_sub(2))?)).sum();
            Bytes::from(format!(":{sum}\r\n"))
        }
        Combine::Concat => {
            let elements: Vec<&[u8]> = parts.iter().flat_map(|p| elements(p)).collect();
            array(elements.len(), elements.into_iter())
        }
        Combine::Positions(positions) => {
            let total = positions.iter().map(Vec::len).sum();
            let mut out: Vec<&[u8]> = vec![b"$-1\r\n"; total];
            for (part, positions) in parts.iter().zip(positions) {
                for (element, &at) in elements(part).into_iter().zip(positions) {
                    out[at] = element;
                }
            }
            array(total, out.into_iter())
        }
    }
}

/// INFO fields that count something of the whole dataset or of all clients: summed over the
/// masters. The rest (version, role, configuration, uptime ...) is the first master's.
const SUMMED: &[&str] = &[
    "connected_clients",
    "blocked_clients",
    "tracking_clients",
    "clients_in_timeout_table",
    "used_memory",
    "used_memory_dataset",
    "total_connections_received",
    "total_commands_processed",
    "instantaneous_ops_per_sec",
    "total_net_input_bytes",
    "total_net_output_bytes",
    "rejected_connections",
    "expired_keys",
    "evicted_keys",
    "keyspace_hits",
    "keyspace_misses",
    "pubsub_channels",
    "pubsub_patterns",
    "tracking_total_keys",
    "tracking_total_items",
    "tracking_total_prefixes",
    "total_error_replies",
];

/// INFO of one Redis from the masters' (bulk or verbatim strings): the first's text with the
/// [`SUMMED`] fields and the keyspace lines (`db0:keys=..,expires=..`) added up. `None` when a
/// part is not such a reply (an error: then the first part is the reply).
fn info(parts: &[Bytes]) -> Option<Bytes> {
    let texts: Vec<&str> = parts.iter().map(|p| info_text(p)).collect::<Option<_>>()?;
    let mut sums: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut dbs: std::collections::BTreeMap<String, (i64, i64)> = std::collections::BTreeMap::new();
    for text in &texts {
        for line in text.split("\r\n") {
            let Some((field, value)) = line.split_once(':') else { continue };
            if SUMMED.contains(&field) {
                *sums.entry(field).or_default() += value.parse::<i64>().unwrap_or(0);
            } else if field.starts_with("db") && value.starts_with("keys=") {
                let number = |name: &str| {
                    value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(name))
                        .and_then(|n| n.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                let db = dbs.entry(field.to_owned()).or_default();
                (db.0, db.1) = (db.0 + number("keys="), db.1 + number("expires="));
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for line in texts[0].split("\r\n") {
        match line.split_once(':') {
            Some((field, _)) if sums.contains_key(field) => out.push(format!("{field}:{}", sums[field])),
            Some((field, _)) if dbs.contains_key(field) => {}
            _ if line == "# Keyspace" => {
                out.push(line.to_owned());
                out.extend(
                    dbs.iter().map(|(db, (keys, expires))| format!("{db}:keys={keys},expires={expires},avg_ttl=0")),
                );
                dbs.clear();
            }
            _ => out.push(line.to_owned()),
        }
    }
    let body = out.join("\r\n");
    let kind = parts[0][0] as char;
    Some(Bytes::from(format!("{kind}{}\r\n{body}\r\n", body.len())))
}

/// The text of an INFO reply (a bulk or verbatim string).
fn info_text(frame: &[u8]) -> Option<&str> {
    let header = frame.iter().position(|&b| b == b'\n')? + 1;
    frame.first().filter(|&&b| b == b'$' || b == b'=')?;
    std::str::from_utf8(frame.get(header..frame.len().checked_sub(2)?)?).ok()
}

/// The text of a bulk string reply (`$3\r\nabc\r\n`).
fn bulk_text(frame: &[u8]) -> Option<&[u8]> {
    let header = frame.iter().position(|&b| b == b'\n')? + 1;
    frame.first().filter(|&&b| b == b'$')?;
    frame.get(header..frame.len().checked_sub(2)?)
}

/// The elements of an array reply (none for anything else).
fn elements(frame: &[u8]) -> Vec<&[u8]> {
    let Some(header) = frame.iter().position(|&b| b == b'\n').map(|i| i + 1) else { return Vec::new() };
    let count = parse_int(&frame[1..header.saturating_sub(2).max(1)]).unwrap_or(0).max(0) as usize;
    let mut out = Vec::with_capacity(count);
    let mut rest = &frame[header..];
    for _ in 0..count {
        let Ok(Some(len)) = ReplyScanner::default().scan(rest) else { break };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

fn array<'a>(count: usize, elements: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("*{count}\r\n").as_bytes());
    elements.for_each(|e| out.extend_from_slice(e));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{Limits, Parsed, RequestParser};

    fn view(args: &[&str]) -> (Vec<u8>, usize) {
        (encode_command(args).to_vec(), args.len())
    }

    fn place(args: &[&str]) -> Placement {
        let (bytes, argc) = view(args);
        let mut parser = RequestParser::new(Limits::NONE);
        let Ok(Some(Parsed::Command { argc: n, .. })) = parser.parse(&bytes) else { panic!() };
        assert_eq!(n, argc);
        placement(&CommandView::new(&bytes, argc), false)
    }

    #[test]
    fn requests_are_placed_by_their_keys() {
        assert_eq!(place(&["GET", "foo"]), Placement::Slot(12182));
        assert_eq!(place(&["PING"]), Placement::Any);
        assert_eq!(place(&["MGET", "{a}1", "{a}2"]), Placement::Slot(slot_of(b"a")));
        assert_eq!(place(&["MGET", "a", "b"]), Placement::Split(Combine::Positions(Vec::new())));
        assert_eq!(place(&["DEL", "a", "b"]), Placement::Split(Combine::Sum));
        assert_eq!(place(&["MSETNX", "a", "1", "b", "2"]), Placement::Slot(slot_of(b"a")));
        assert_eq!(place(&["MSET", "a", "1", "b", "2"]), Placement::Slot(slot_of(b"a")));
        let (bytes, argc) = view(&["MSET", "a", "1", "b", "2", "{a}c", "3"]);
        let mset = CommandView::new(&bytes, argc);
        assert_eq!(placement(&mset, true), Placement::Split(Combine::Same));
        let parts = split(&mset, Some).unwrap();
        let requests: Vec<Bytes> = parts.into_iter().map(|(_, request, _)| request).collect();
        assert_eq!(
            requests,
            vec![encode_command(&["MSET", "a", "1", "{a}c", "3"]), encode_command(&["MSET", "b", "2"])]
        );
        assert_eq!(place(&["DBSIZE"]), Placement::Everywhere(Combine::Sum));
        assert_eq!(place(&["script", "load", "return 1"]), Placement::Everywhere(Combine::Same));
        assert_eq!(place(&["SCRIPT", "EXISTS", "x"]), Placement::Any);
        assert_eq!(
            place(&["XREAD", "COUNT", "2", "BLOCK", "0", "STREAMS", "s1", "$"]),
            Placement::Slot(slot_of(b"s1"))
        );
        assert_eq!(place(&["SORT", "list", "BY", "w_*"]), Placement::Slot(slot_of(b"list")));
    }

    #[test]
    fn scan_cursors_carry_the_master() {
        let first = ScanCursor::parse(b"0", 3).unwrap();
        assert_eq!(first, ScanCursor { master: 0, cursor: 0 });
        let mut page = ScanPage { master: 0, masters: 3 };
        let reply = |cursor: &str| format!("*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n", cursor.len());
        // A master's last page leads to the next master; its other pages stay on it.
        let next = |page: &mut ScanPage, cursor: &str| match page.reply(reply(cursor).as_bytes()) {
            Step::Replace(bytes) => {
                String::from_utf8(elements(&bytes).first().map(|c| bulk_text(c).unwrap().to_vec()).unwrap()).unwrap()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(next(&mut page, "0"), (1u64 << 56).to_string());
        assert_eq!(next(&mut page, "12"), "12");
        let parsed = ScanCursor::parse((1u64 << 56 | 40).to_string().as_bytes(), 3).unwrap();
        assert_eq!(parsed, ScanCursor { master: 1, cursor: 40 });
        assert_eq!(next(&mut ScanPage { master: 2, masters: 3 }, "0"), "0");
        assert_eq!(ScanCursor::parse(b"x", 3), None);
        assert_eq!(ScanCursor::parse((5u64 << 56).to_string().as_bytes(), 3), None);
    }

    #[test]
    fn info_adds_up_the_masters() {
        let part = |clients: u32, blocked: u32, keys: u32| {
            let body = format!(
                "# Server\r\nredis_version:7.0.15\r\n\r\n# Clients\r\nconnected_clients:{clients}\r\nblocked_clients:{blocked}\r\n\r\n# Keyspace\r\ndb0:keys={keys},expires=1,avg_ttl=5\r\n"
            );
            Bytes::from(format!("${}\r\n{body}\r\n", body.len()))
        };
        let joined = join(&Combine::Info, &[part(2, 0, 10), part(3, 1, 5), part(1, 0, 0)]);
        let text = info_text(&joined).unwrap();
        assert!(text.contains("redis_version:7.0.15\r\n"), "{text}");
        assert!(text.contains("connected_clients:6\r\n") && text.contains("blocked_clients:1\r\n"), "{text}");
        assert!(text.contains("db0:keys=15,expires=3,avg_ttl=0"), "{text}");
        assert_eq!(join(&Combine::Info, &[p_err(), part(1, 1, 1)]), p_err());
    }

    fn p_err() -> Bytes {
        Bytes::from_static(b"-ERR no\r\n")
    }

    #[test]
    fn parts_join_as_one_redis_would_answer() {
        let p = |s: &str| Bytes::from(s.to_owned());
        assert_eq!(join(&Combine::Sum, &[p(":2\r\n"), p(":3\r\n")]), p(":5\r\n"));
        assert_eq!(join(&Combine::Sum, &[p(":2\r\n"), p("-ERR x\r\n")]), p("-ERR x\r\n"));
        let positions = Combine::Positions(vec![vec![0, 2], vec![1]]);
        assert_eq!(
            join(&positions, &[p("*2\r\n$1\r\na\r\n$-1\r\n"), p("*1\r\n$1\r\nb\r\n")]),
            p("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
        );
        assert_eq!(join(&Combine::Concat, &[p("*1\r\n$1\r\na\r\n"), p("*0\r\n")]), p("*1\r\n$1\r\na\r\n"));
        assert_eq!(join(&Combine::Same, &[p("+OK\r\n"), p("+OK\r\n")]), p("+OK\r\n"));
        assert_eq!(join(&Combine::Same, &[p("$2\r\nab\r\n"), p("$2\r\nab\r\n")]), p("$2\r\nab\r\n"));
        assert_eq!(join(&Combine::Same, &[p("+OK\r\n"), p("-ERR no\r\n")]), p("-ERR no\r\n"));
        let (ok, notbusy) = (p("+OK\r\n"), p("-NOTBUSY No scripts in execution right now.\r\n"));
        assert_eq!(join(&Combine::AnyOk, &[notbusy.clone(), ok.clone()]), ok);
        assert_eq!(join(&Combine::AnyOk, &[notbusy.clone(), notbusy.clone()]), notbusy);
    }
}
