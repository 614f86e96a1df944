use super::fill::lifetime;
use super::*;
use tokio::sync::mpsc;

const TTL: Duration = Duration::from_secs(60);

fn tier() -> Tier {
    Tier::new(1 << 20, 64 << 10, true, std::time::Duration::ZERO)
}

fn nobody() -> Waiter {
    panic!("no waiter expected")
}

fn miss(tier: &Tier, key: &str, id: &str) -> FillTicket {
    match tier.lookup(key.as_bytes(), id.as_bytes(), TTL, LookupAt::now(), nobody) {
        Lookup::Miss(ticket) => ticket,
        other => panic!("expected a miss, got {other:?}"),
    }
}

fn hit(tier: &Tier, key: &str, id: &str) -> Option<Bytes> {
    match tier.lookup(key.as_bytes(), id.as_bytes(), TTL, LookupAt::now(), nobody) {
        Lookup::Hit(reply) => Some(reply),
        Lookup::Miss(ticket) => {
            tier.abort(ticket, Bytes::new());
            None
        }
        Lookup::Joined => panic!("unexpected join"),
    }
}

#[test]
fn a_filled_read_is_a_hit_and_an_invalidation_removes_every_variant() {
    let tier = tier();
    let get = miss(&tier, "k", "GET k");
    tier.fill(get, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    let strlen = miss(&tier, "k", "STRLEN k");
    tier.fill(strlen, Bytes::from_static(b":1\r\n"), Some(-1));
    assert_eq!(hit(&tier, "k", "GET k").as_deref(), Some(&b"$1\r\nv\r\n"[..]));
    assert_eq!(hit(&tier, "k", "STRLEN k").as_deref(), Some(&b":1\r\n"[..]));
    tier.invalidate(b"k", Cause::Write);
    assert_eq!(hit(&tier, "k", "GET k"), None);
    assert_eq!(hit(&tier, "k", "STRLEN k"), None);
}

#[test]
fn a_read_in_flight_during_an_invalidation_is_not_cached() {
    let tier = tier();
    let ticket = miss(&tier, "k", "GET k");
    tier.invalidate(b"k", Cause::Write); // a write happened while the read was in flight
    tier.fill(ticket, Bytes::from_static(b"$3\r\nold\r\n"), Some(-1));
    assert_eq!(hit(&tier, "k", "GET k"), None, "the possibly stale reply must not be cached");
    // A read sent after the invalidation fills normally.
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"$3\r\nnew\r\n"), Some(-1));
    assert!(hit(&tier, "k", "GET k").is_some());
}

#[test]
fn a_read_in_flight_during_a_clear_is_not_cached() {
    let tier = tier();
    let ticket = miss(&tier, "k", "GET k");
    tier.tracking_lost();
    assert!(!tier.tracking_up());
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    assert_eq!(hit(&tier, "k", "GET k"), None);
}

#[test]
fn concurrent_misses_share_one_read() {
    let tier = tier();
    let ticket = miss(&tier, "k", "GET k");
    let (sink, mut replies) = mpsc::unbounded_channel();
    for seq in [7, 8] {
        let joined = tier.lookup(b"k", b"GET k", TTL, LookupAt::now(), || Waiter { sink: sink.clone(), seq });
        assert!(matches!(joined, Lookup::Joined));
    }
    // A different variant of the same key is its own read.
    assert!(matches!(tier.lookup(b"k", b"HGET k f", TTL, LookupAt::now(), nobody), Lookup::Miss(_)));
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(-1));
    for seq in [7, 8] {
        let chunk = replies.try_recv().unwrap();
        assert_eq!((chunk.seq, &chunk.bytes[..]), (seq, &b"$1\r\nv\r\n"[..]));
    }
}

#[test]
fn a_failed_read_answers_its_waiters_with_the_error() {
    let tier = tier();
    let ticket = miss(&tier, "k", "GET k");
    let (sink, mut replies) = mpsc::unbounded_channel();
    assert!(matches!(tier.lookup(b"k", b"GET k", TTL, LookupAt::now(), || Waiter { sink, seq: 1 }), Lookup::Joined));
    tier.abort(ticket, Bytes::from_static(b"-ERR gone\r\n"));
    assert_eq!(&replies.try_recv().unwrap().bytes[..], b"-ERR gone\r\n");
    // Nothing is left in flight: the next miss leads a new read.
    assert!(matches!(tier.lookup(b"k", b"GET k", TTL, LookupAt::now(), nobody), Lookup::Miss(_)));
}

#[test]
fn a_waiter_never_joins_a_read_sent_before_an_invalidation() {
    let tier = tier();
    let _old = miss(&tier, "k", "GET k");
    tier.invalidate(b"k", Cause::Write);
    assert!(matches!(tier.lookup(b"k", b"GET k", TTL, LookupAt::now(), nobody), Lookup::Miss(_)));
}

#[test]
fn entries_never_outlive_the_key() {
    assert_eq!(lifetime(TTL, Some(1500)), Duration::from_millis(1500));
    assert_eq!(lifetime(Duration::from_secs(1), Some(5000)), Duration::from_secs(1));
    assert_eq!(lifetime(TTL, Some(-1)), TTL);
    assert_eq!(lifetime(TTL, Some(-2)), TTL);
    assert_eq!(lifetime(TTL, None), TTL);
    let tier = tier();
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(30));
    assert!(hit(&tier, "k", "GET k").is_some());
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(hit(&tier, "k", "GET k"), None, "expired with the key's PTTL");
    let ticket = miss(&tier, "gone", "GET gone");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(0));
    assert_eq!(hit(&tier, "gone", "GET gone"), None);
}

#[test]
fn errors_and_oversized_replies_are_not_cached() {
    let tier = tier();
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"-WRONGTYPE x\r\n"), Some(-1));
    assert_eq!(hit(&tier, "k", "GET k"), None);
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from(vec![b'x'; 65 << 10]), Some(-1));
    assert_eq!(hit(&tier, "k", "GET k"), None);
}

#[test]
fn the_tier_stays_within_max_memory() {
    let tier = Tier::new(1 << 20, 64 << 10, true, std::time::Duration::ZERO);
    let value = Bytes::from(vec![b'v'; 10_000]);
    for i in 0..1000 {
        let key = format!("key:{i}");
        let ticket = miss(&tier, &key, &format!("GET {key}"));
        tier.fill(ticket, value.clone(), Some(-1));
    }
    // 10 MB written into a 1 MiB tier.
    let size = tier.weighted_size();
    assert!(size <= 1 << 20, "{size} bytes held");
    assert!(size > 900 << 10, "the tier should be nearly full, holds {size}");
    // What the list evicted left the map hits read, too (~10 KB per key in 1 MiB).
    let count = tier.entry_count();
    assert!((80..=105).contains(&count), "{count} keys held");
    // LRU: the most recent keys are the ones kept.
    assert!(hit(&tier, "key:999", "GET key:999").is_some());
    assert!(hit(&tier, "key:0", "GET key:0").is_none());
}

#[test]
fn a_split_mget_is_assembled_in_key_order_and_fills_the_missing_keys() {
    let tier = tier();
    // MGET a b c: b is cached, a and c go upstream as MGET a c.
    let b = miss(&tier, "b", "GET b");
    tier.fill(b, Bytes::from_static(b"$1\r\n2\r\n"), Some(-1));
    let parts = vec![None, hit(&tier, "b", "GET b"), None];
    let tickets = vec![Some(miss(&tier, "a", "GET a")), Some(miss(&tier, "c", "GET c"))];
    let split = SplitGet::new(parts, tickets);
    assert_eq!(split.probe_keys().collect::<Vec<_>>(), [&b"a"[..], b"c"]);
    let mut pttls = std::collections::VecDeque::from([-1, -2]);
    let reply = split.complete(&tier, b"*2\r\n$1\r\n1\r\n$-1\r\n", &mut pttls).unwrap();
    assert_eq!(&reply[..], b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n");
    assert!(pttls.is_empty());
    assert_eq!(hit(&tier, "a", "GET a").as_deref(), Some(&b"$1\r\n1\r\n"[..]));
    assert_eq!(hit(&tier, "c", "GET c").as_deref(), Some(&b"$-1\r\n"[..]));
}

#[test]
fn a_split_mget_with_an_unexpected_reply_is_left_alone() {
    let tier = tier();
    let split = SplitGet::new(vec![None], vec![Some(miss(&tier, "a", "GET a"))]);
    assert_eq!(split.complete(&tier, b"-ERR nope\r\n", &mut Default::default()), None);
    // Its flight is over: the next miss leads a new read.
    assert!(matches!(tier.lookup(b"a", b"GET a", TTL, LookupAt::now(), nobody), Lookup::Miss(_)));
}

#[test]
fn a_null_mget_element_is_cached_only_for_a_missing_key() {
    let tier = tier();
    let tickets = vec![Some(miss(&tier, "hash", "GET hash")), Some(miss(&tier, "none", "GET none"))];
    let split = SplitGet::new(vec![None, None], tickets);
    // "hash" exists (PTTL -1) but is not a string: GET would answer WRONGTYPE, not null.
    let mut pttls = std::collections::VecDeque::from([-1, -2]);
    split.complete(&tier, b"*2\r\n$-1\r\n$-1\r\n", &mut pttls).unwrap();
    assert_eq!(hit(&tier, "hash", "GET hash"), None);
    assert_eq!(hit(&tier, "none", "GET none").as_deref(), Some(&b"$-1\r\n"[..]));
}

fn stale_ok() -> LookupAt {
    LookupAt { now: Instant::now(), stale_ok: true }
}

#[test]
fn past_its_lifetime_a_reply_is_served_only_as_a_stale_answer_within_serve_stale() {
    let tier = Tier::new(1 << 20, 1 << 10, true, Duration::from_millis(200));
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"+v\r\n"), Some(20));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(hit(&tier, "k", "GET k"), None, "expired for normal reads");
    assert!(matches!(tier.lookup(b"k", b"GET k", TTL, stale_ok(), nobody), Lookup::Hit(_)));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!matches!(tier.lookup(b"k", b"GET k", TTL, stale_ok(), nobody), Lookup::Hit(_)), "older than serve_stale");
}

#[test]
fn with_serve_stale_losing_tracking_demotes_instead_of_dropping() {
    let tier = Tier::new(1 << 20, 1 << 10, true, Duration::from_secs(60));
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"+v\r\n"), Some(-1));
    let in_flight = miss(&tier, "j", "GET j");
    tier.tracking_lost();
    tier.fill(in_flight, Bytes::from_static(b"+j\r\n"), Some(-1));
    assert_eq!(hit(&tier, "j", "GET j"), None, "a read in flight across the loss is not cached");
    assert_eq!(hit(&tier, "k", "GET k"), None, "never a normal hit again");
    assert!(matches!(tier.lookup(b"k", b"GET k", TTL, stale_ok(), nobody), Lookup::Hit(_)));
    // New fills are normal hits again once tracking is back.
    tier.tracking_started();
    std::thread::sleep(Duration::from_millis(2));
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"+w\r\n"), Some(-1));
    assert_eq!(hit(&tier, "k", "GET k").as_deref(), Some(&b"+w\r\n"[..]));
}

fn fill(tier: &Tier, key: &str, value: &Bytes, at: Option<&Arc<RuleStats>>) {
    let ticket = miss(tier, key, &format!("GET {key}"));
    let ticket = match at {
        Some(rule) => ticket.for_rule(rule),
        None => ticket,
    };
    tier.fill(ticket, value.clone(), Some(-1));
}

#[test]
fn a_key_read_lately_outlives_keys_read_before_it() {
    // Room for three entries of ~11 KB.
    let tier = Tier::new(35_000, 64 << 10, true, Duration::ZERO);
    let value = Bytes::from(vec![b'v'; 10_000]);
    for key in ["a", "b", "c"] {
        fill(&tier, key, &value, None);
    }
    // A hit moves its key at most once per TOUCH_EVERY: read `a` as if that much later.
    let later = LookupAt { now: Instant::now() + TOUCH_EVERY * 2, stale_ok: false };
    assert!(matches!(tier.lookup(b"a", b"GET a", TTL, later, nobody), Lookup::Hit(_)));
    fill(&tier, "d", &value, None);
    assert_eq!(tier.entry_count(), 3);
    assert!(hit(&tier, "b", "GET b").is_none(), "the least recently used key goes first");
    for key in ["a", "c", "d"] {
        assert!(hit(&tier, key, &format!("GET {key}")).is_some(), "{key} kept");
    }
    assert_eq!(tier.stats.evictions.load(Ordering::Relaxed), 1);
}

#[test]
fn a_rules_numbers_follow_its_entries_whatever_removes_them() {
    let tier = Tier::new(35_000, 64 << 10, true, Duration::ZERO);
    let rule = Arc::new(RuleStats::default());
    let value = Bytes::from(vec![b'v'; 10_000]);
    let counted = |tier: &Tier| {
        assert_eq!(rule.entries.load(Ordering::Relaxed), tier.entry_count() as i64);
        assert_eq!(rule.bytes.load(Ordering::Relaxed), tier.weighted_size() as i64);
    };
    for key in ["a", "b", "c", "d", "e"] {
        fill(&tier, key, &value, Some(&rule)); // two evicted
    }
    counted(&tier);
    // Replaced: a second variant of `e`.
    let strlen = miss(&tier, "e", "STRLEN e").for_rule(&rule);
    tier.fill(strlen, Bytes::from_static(b":10000\r\n"), Some(-1));
    counted(&tier);
    tier.invalidate(b"e", Cause::Write);
    counted(&tier);
    tier.clear();
    counted(&tier);
    assert_eq!((tier.entry_count(), tier.weighted_size()), (0, 0));
}

#[test]
fn an_expired_entry_leaves_when_a_fill_finds_it_least_recently_used() {
    let tier = tier();
    let ticket = miss(&tier, "short", "GET short");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(1));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(tier.entry_count(), 1, "held until something needs the list");
    fill(&tier, "next", &Bytes::from_static(b"$1\r\nw\r\n"), None);
    assert_eq!(tier.entry_count(), 1);
    assert!(hit(&tier, "next", "GET next").is_some());
    assert_eq!(tier.stats.evictions.load(Ordering::Relaxed), 0, "expired, not evicted");
    assert_eq!(tier.stats.expired.load(Ordering::Relaxed), 1);
}

#[test]
fn concurrent_fills_evictions_and_invalidations_leave_the_map_the_list_and_the_numbers_agreeing() {
    // Room for ~18 of 64 keys' entries: fills evict, replace (two variants per key), invalidate
    // and move entries from four threads at once.
    let tier = Arc::new(Tier::new(50_000, 64 << 10, true, Duration::ZERO));
    let rule = Arc::new(RuleStats::default());
    let threads: Vec<_> = (1..=4u64)
        .map(|seed| {
            let (tier, rule) = (Arc::clone(&tier), Arc::clone(&rule));
            std::thread::spawn(move || {
                let mut x = seed;
                for _ in 0..20_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("k{}", x % 64);
                    let id = if x & 64 == 0 { format!("GET {key}") } else { format!("STRLEN {key}") };
                    if x % 4 == 0 {
                        tier.invalidate(key.as_bytes(), Cause::Write);
                        continue;
                    }
                    // Hits seen up to 8 s ahead: they move their entry in the list.
                    let at = LookupAt { now: Instant::now() + Duration::from_secs(x % 8), stale_ok: false };
                    if let Err(Some(ticket)) = tier.lookup_or_register(key.as_bytes(), id.as_bytes(), TTL, at) {
                        tier.fill(ticket.for_rule(&rule), Bytes::from(vec![b'v'; 2000]), Some(-1));
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(tier.weighted_size() <= 50_000, "{} bytes held", tier.weighted_size());
    assert!(tier.stats.evictions.load(Ordering::Relaxed) > 0);
    // The rule counts what is in the list; the map holds the same entries.
    assert_eq!(rule.entries.load(Ordering::Relaxed), tier.entry_count() as i64);
    assert_eq!(rule.bytes.load(Ordering::Relaxed), tier.weighted_size() as i64);
    for entry in tier.entries.iter() {
        assert_ne!(entry.value().slot.load(Ordering::Relaxed), lru::NIL, "{:?} is in the list", entry.key());
    }
}

#[test]
fn the_sweep_drops_expired_entries_wherever_they_are_in_the_list() {
    let tier = tier();
    let rule = Arc::new(RuleStats::default());
    let value = Bytes::from_static(b"$1\r\nv\r\n");
    // Every other key expires (PTTL 10 s, long enough that no fill here finds one expired): swept
    // as if 20 s later, the expired ones sit all along the list, not only at its cold end, which
    // is all a fill looks at.
    for n in 0..1000 {
        let ticket = miss(&tier, &format!("k{n}"), &format!("GET k{n}")).for_rule(&rule);
        tier.fill(ticket, value.clone(), Some(if n % 2 == 0 { 10_000 } else { -1 }));
    }
    let later = Instant::now() + Duration::from_secs(20);
    let mut dropped = 0;
    for _ in 0..8 {
        dropped += tier.sweep_expired(later);
    }
    assert_eq!(dropped, 500);
    assert_eq!(tier.entry_count(), 500);
    assert_eq!(tier.stats.expired.load(Ordering::Relaxed), 500);
    assert_eq!(tier.stats.evictions.load(Ordering::Relaxed), 0);
    assert_eq!(rule.entries.load(Ordering::Relaxed), 500);
    assert_eq!(rule.bytes.load(Ordering::Relaxed), tier.weighted_size() as i64);
    for n in [0, 1, 998, 999] {
        assert_eq!(hit(&tier, &format!("k{n}"), &format!("GET k{n}")).is_some(), n % 2 == 1, "k{n}");
    }
}

#[test]
fn the_sweep_keeps_what_may_still_be_served_stale() {
    let tier = Tier::new(1 << 20, 64 << 10, true, Duration::from_secs(10));
    let ticket = miss(&tier, "k", "GET k");
    tier.fill(ticket, Bytes::from_static(b"$1\r\nv\r\n"), Some(1));
    assert_eq!(tier.sweep_expired(Instant::now() + Duration::from_secs(1)), 0, "within serve_stale");
    assert_eq!(tier.sweep_expired(Instant::now() + Duration::from_secs(11)), 1, "past it");
    assert_eq!(tier.entry_count(), 0);
}
