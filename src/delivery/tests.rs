//! The work on a batch's replies, without sockets: each reply as a connection would hand it.

use std::time::Duration;

use super::*;
use crate::cache::{Lookup, LookupAt, Waiter};

const LOCAL_TTL: Duration = Duration::from_secs(3600);

fn tier() -> Arc<Tier> {
    Arc::new(Tier::new(1 << 20, 64 << 10, true, Duration::ZERO))
}

fn nobody() -> Waiter {
    panic!("no waiter expected")
}

fn miss(tier: &Tier, key: &str) -> FillTicket {
    match tier.lookup(key.as_bytes(), b"GET", LOCAL_TTL, LookupAt::now(), nobody) {
        Lookup::Miss(ticket) => ticket,
        other => panic!("expected a miss, got {other:?}"),
    }
}

fn sink() -> ReplySink {
    tokio::sync::mpsc::unbounded_channel().0
}

/// The batch's work, given each reply in turn: what becomes of each.
fn feed(batch: &mut Batch, replies: &[&[u8]]) -> Vec<Step> {
    let work = batch.work.as_mut().expect("work");
    replies.iter().map(|reply| work.reply(reply)).collect()
}

#[test]
fn a_fill_reads_its_own_pttl_sent_in_its_own_batch() {
    let tier = tier();
    let get = encode_command(&["GET", "k"]);
    let ticket = miss(&tier, "k");
    let delivery = Delivery::for_read(Some(&tier), Some(ticket), None).unwrap();
    let mut batch = delivery.into_batch(get.clone(), 7, 1, &sink());
    assert_eq!(&batch.bytes[..], [&encode_command(&["pTTL", "k"])[..], &get[..]].concat(), "the probe, then the read");
    assert_eq!((batch.count, batch.replies), (1, 2));
    let steps = feed(&mut batch, &[b":5000\r\n", b"$1\r\nv\r\n"]);
    assert_eq!(steps, vec![Step::Swallow, Step::Deliver]);
    let variants = tier.inspect(b"k");
    assert_eq!(variants.len(), 1);
    assert!(variants[0].remaining <= Duration::from_secs(5), "the key's own lifetime: {:?}", variants[0].remaining);
}

#[test]
fn an_mget_split_fills_each_key_with_its_own_pttl() {
    let tier = tier();
    let (a, b) = (miss(&tier, "a"), miss(&tier, "b"));
    let split = SplitGet::new(vec![None, None], vec![Some(a), Some(b)]);
    let mget = encode_command(&["MGET", "a", "b"]);
    let mut batch = Delivery::for_read(Some(&tier), None, Some(split)).unwrap().into_batch(mget, 0, 1, &sink());
    assert_eq!(batch.replies, 3);
    let steps = feed(&mut batch, &[b":-1\r\n", b":2000\r\n", b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n"]);
    assert_eq!(steps[..2], [Step::Swallow, Step::Swallow]);
    assert_eq!(steps[2], Step::Replace(Bytes::from_static(b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n")));
    assert!(tier.inspect(b"a")[0].remaining > Duration::from_secs(3000), "no expiry in Redis: the local TTL");
    assert!(tier.inspect(b"b")[0].remaining <= Duration::from_secs(2));
}

#[test]
fn a_batch_that_fails_or_is_dropped_releases_its_read() {
    let tier = tier();
    let get = encode_command(&["GET", "k"]);
    let mut batch =
        Delivery::for_read(Some(&tier), Some(miss(&tier, "k")), None).unwrap().into_batch(get.clone(), 0, 1, &sink());
    batch.work.as_mut().unwrap().fail(&Bytes::from_static(b"-ERR lost\r\n"));
    // Released: the next read is a miss of its own, not joined to one that never completes.
    let ticket = miss(&tier, "k");
    let batch = Delivery::for_read(Some(&tier), Some(ticket), None).unwrap().into_batch(get, 0, 1, &sink());
    drop(batch);
    miss(&tier, "k");
}

#[test]
fn written_keys_are_invalidated_when_their_reply_arrives() {
    let tier = tier();
    let ticket = miss(&tier, "k");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    let set = encode_command(&["SET", "k", "w"]);
    let requests = [&encode_command(&["GET", "x"])[..], &set[..]].concat().into();
    let mut batch = Delivery::for_batch(Some(&tier), &requests, Some(Registrations::default()), vec![])
        .unwrap()
        .into_batch(requests, 0, 2, &sink());
    assert_eq!(feed(&mut batch, &[b"$-1\r\n"]), vec![Step::Deliver]);
    assert_eq!(tier.inspect(b"k").len(), 1, "GET x's reply: k not yet written");
    assert_eq!(feed(&mut batch, &[b"+OK\r\n"]), vec![Step::Deliver]);
    assert!(tier.inspect(b"k").is_empty(), "SET k answered: k invalidated");
}

/// The second invalidation is for reads registered after the first one (taken as the write
/// was routed): with none since, there is nothing it could drop, and it is skipped; a read
/// registered and filled meanwhile is dropped when the write's reply arrives.
#[test]
fn written_keys_are_invalidated_again_only_after_a_read_was_registered() {
    let tier = tier();
    let set = encode_command(&["SET", "k", "w"]);
    let requests: Bytes = [&set[..], &set[..]].concat().into();
    let before = tier.registrations();
    let mut batch =
        Delivery::for_batch(Some(&tier), &requests, Some(before), vec![]).unwrap().into_batch(requests, 0, 2, &sink());
    assert_eq!(feed(&mut batch, &[b"+OK\r\n"]), vec![Step::Deliver]);
    assert!(!tier.registered_since(before));
    // A read of k registered (and filled) after the write was routed, before its second reply.
    let ticket = miss(&tier, "k");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    assert_eq!(tier.inspect(b"k").len(), 1);
    assert_eq!(feed(&mut batch, &[b"+OK\r\n"]), vec![Step::Deliver]);
    assert!(tier.inspect(b"k").is_empty(), "the fill after the first invalidation is dropped");
}

#[test]
fn a_shaped_request_becomes_one_reply_and_its_commands_are_invalidated_at_the_end() {
    let tier = tier();
    let ticket = miss(&tier, "k");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    let sent = [
        &encode_command(&["GET", "x"])[..],
        b"*1\r\n$5\r\nMULTI\r\n",
        &encode_command(&["HSET", "k", "f", "v"]),
        &encode_command(&["PEXPIRE", "k", "1000", "NX"]),
        b"*1\r\n$4\r\nEXEC\r\n",
    ]
    .concat()
    .into();
    let shaped = vec![(1, Shape::Transaction { extra: 1 })];
    let written = Some(Registrations::default());
    let mut batch = Delivery::for_batch(Some(&tier), &sent, written, shaped).unwrap().into_batch(sent, 0, 2, &sink());
    assert_eq!((batch.count, batch.replies), (2, 5));
    let steps = feed(&mut batch, &[b"$-1\r\n", b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"]);
    assert_eq!(steps, vec![Step::Deliver, Step::Swallow, Step::Swallow, Step::Swallow]);
    assert_eq!(tier.inspect(b"k").len(), 1, "queued, not run: nothing written yet");
    let steps = feed(&mut batch, &[b"*2\r\n:1\r\n:1\r\n"]);
    assert_eq!(steps, vec![Step::Replace(Bytes::from_static(b":1\r\n"))]);
    assert!(tier.inspect(b"k").is_empty());
}

#[test]
fn replies_that_need_nothing_get_no_work() {
    let get = encode_command(&["GET", "k"]);
    assert!(Delivery::for_batch(None, &get, Some(Registrations::default()), vec![]).is_none(), "writes without a tier");
    assert!(Delivery::for_batch(Some(&tier()), &get, None, vec![]).is_none());
    assert!(Delivery::for_read(Some(&tier()), None, None).is_none());
}

#[test]
fn info_leaves_out_the_proxys_own_tracking_connection() {
    let view = InfoView { own_tracking: 2, clients: 5 };
    let without_own_tracking = |frame: &[u8]| as_clients_see_it(frame, view);
    let text = "# Stats\r\ntotal_connections_received:9\r\ntracking_keys:0\r\ntracking_clients:3\r\ntracking_total_prefixes:2\r\n";
    let frame = format!("${}\r\n{text}\r\n", text.len());
    let out = without_own_tracking(frame.as_bytes()).unwrap();
    let expected = text.replace("tracking_clients:3", "tracking_clients:1");
    assert_eq!(String::from_utf8(out.to_vec()).unwrap(), format!("${}\r\n{expected}\r\n", expected.len()));
    // RESP3: a verbatim string.
    let verbatim = format!("={}\r\ntxt:{text}\r\n", text.len() + 4);
    let out = String::from_utf8(without_own_tracking(verbatim.as_bytes()).unwrap().to_vec()).unwrap();
    assert!(
        out.starts_with(&format!("={}\r\ntxt:", expected.len() + 4)) && out.contains("tracking_clients:1\r\n"),
        "{out}"
    );
    // Other sections and errors pass as they are.
    assert_eq!(without_own_tracking(b"$10\r\n# Server\r\n\r\n"), None);
    assert_eq!(without_own_tracking(b"-ERR nope\r\n"), None);
    // Tracking down: its fields stay; connected_clients is the proxy's count either way.
    let clients = "# Clients\r\nconnected_clients:14\r\nblocked_clients:0\r\n";
    let frame = format!("${}\r\n{clients}\r\n", clients.len());
    let down = InfoView { own_tracking: 0, clients: 3 };
    let out = String::from_utf8(as_clients_see_it(frame.as_bytes(), down).unwrap().to_vec()).unwrap();
    assert!(out.contains("\r\nconnected_clients:3\r\nblocked_clients:0\r\n"), "{out}");
    assert_eq!(as_clients_see_it(frame.as_bytes(), down).unwrap().len(), frame.len() - 1);
    let tracking = format!("${}\r\n{text}\r\n", text.len());
    assert_eq!(as_clients_see_it(tracking.as_bytes(), down), None);
}
