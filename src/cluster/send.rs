//! Sending a client's batch to the cluster: each request placed by its keys' slot (or split,
//! or sent to every master), and requests redirected by a node sent on (`Redirect`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::Cluster;
use super::map::SlotMap;
use super::scatter::{self, Combine, Gather, Part, Placement, ScanCursor, ScanPage};
use crate::error::ProxyError;
use crate::framing::{CommandView, Limits, Parsed, RequestParser};
use crate::upstream::{
    Batch, MAX_HOPS, Pick, PoolKey, Redirect, Redirection, ReplyChunk, ReplySink, ReplyWork, Resend,
};

impl Cluster {
    /// Sends a client's batch (`pick`: its connection index in every node's pool for `key`,
    /// kept while it has requests unanswered): each request to its node, consecutive requests
    /// for one node together.
    pub fn send(&self, key: PoolKey, pick: &mut Pick, batch: Batch) {
        let map = self.map.load();
        if batch.work.as_ref().is_some_and(|work| !work.per_request()) {
            if let Some((range, argc)) = requests(&batch.bytes).into_iter().next()
                && is_info(&CommandView::new(&batch.bytes[range.clone()], argc))
            {
                // INFO: every master's, added up, then the work's rewrite of the result.
                let Batch { bytes, seq, sink, work, .. } = batch;
                let request = (bytes.slice(range), argc);
                return self.scatter(key, pick, request, seq, &sink, work, Combine::Info, true, &map);
            }
            // One request with work of its own (a fill with its PTTL, TTL's MULTI ... EXEC):
            // where its first key goes.
            let to = first_slot(&batch.bytes).map_or_else(|| self.any(&map), |slot| map.owner(slot).cloned());
            return match to {
                Some(addr) => self.send_to(&addr, key, pick, batch),
                None => batch.fail(&ProxyError::SlotNotServed),
            };
        }
        // One request for one node (an unpipelined client): no lists.
        if let Ok(Some(Parsed::Command { len, argc })) = RequestParser::new(Limits::NONE).parse(&batch.bytes)
            && len == batch.bytes.len()
            && let To::Node(addr) = self.to(&batch.bytes, argc, &map)
        {
            return self.send_to(&addr, key, pick, batch);
        }
        let requests = requests(&batch.bytes);
        let places: Vec<To> =
            requests.iter().map(|(range, argc)| self.to(&batch.bytes[range.clone()], *argc, &map)).collect();
        if let Some(To::Node(first)) = places.first()
            && places.iter().all(|to| matches!(to, To::Node(addr) if addr == first))
            && requests.last().is_some_and(|(range, _)| range.end == batch.bytes.len())
        {
            return self.send_to(first, key, pick, batch);
        }
        let mut i = 0;
        while i < places.len() {
            let seq = batch.seq + i as u64;
            match &places[i] {
                To::Node(addr) => {
                    let j = (i..places.len())
                        .find(|&j| !matches!(&places[j], To::Node(a) if a == addr))
                        .unwrap_or(places.len());
                    let bytes = batch.bytes.slice(requests[i].0.start..requests[j - 1].0.end);
                    let work = batch.work.as_ref().and_then(|work| work.for_part(&bytes));
                    let count = (j - i) as u32;
                    let part = Batch {
                        bytes,
                        seq,
                        count,
                        replies: count,
                        sink: batch.sink.clone(),
                        work,
                        hops: 0,
                        asking: false,
                    };
                    self.send_to(addr, key, pick, part);
                    i = j;
                    continue;
                }
                To::Down => {
                    let _ = batch.sink.send(ReplyChunk { seq, count: 1, bytes: ProxyError::SlotNotServed.to_reply() });
                }
                To::Scan(cursor) => {
                    let (range, argc) = requests[i].clone();
                    let bytes = cursor.request(&CommandView::new(&batch.bytes[range], argc));
                    let masters = map.masters().len();
                    let work = Some(Box::new(ScanPage { master: cursor.master, masters }) as Box<dyn ReplyWork>);
                    let page = Batch {
                        bytes,
                        seq,
                        count: 1,
                        replies: 1,
                        sink: batch.sink.clone(),
                        work,
                        hops: 0,
                        asking: false,
                    };
                    self.send_to(&map.masters()[cursor.master], key, pick, page);
                }
                To::Split(combine) | To::Everywhere(combine) => {
                    let request = batch.bytes.slice(requests[i].0.clone());
                    let work = batch.work.as_ref().and_then(|work| work.for_part(&request));
                    let everywhere = matches!(&places[i], To::Everywhere(_));
                    self.scatter(
                        key,
                        pick,
                        (request, requests[i].1),
                        seq,
                        &batch.sink,
                        work,
                        combine.clone(),
                        everywhere,
                        &map,
                    );
                }
            }
            i += 1;
        }
        if requests.last().map_or(0, |(range, _)| range.end) < batch.bytes.len() {
            warn!("a batch for the cluster had bytes that are not requests; dropped");
        }
    }

    /// Where one request goes with `map`.
    fn to(&self, request: &[u8], argc: usize, map: &SlotMap) -> To {
        let cmd = CommandView::new(request, argc);
        match scatter::placement(&cmd, self.config.upstream.cluster_split_mset) {
            Placement::Slot(slot) => map.owner(slot).map_or(To::Down, |addr| To::Node(Arc::clone(addr))),
            Placement::Any => self.any(map).map_or(To::Down, To::Node),
            Placement::Split(combine) => To::Split(combine),
            Placement::Everywhere(combine) => To::Everywhere(combine),
            Placement::Scan => match cmd.arg(1).and_then(|arg| ScanCursor::parse(arg, map.masters().len())) {
                Some(cursor) => map.masters().get(cursor.master).map_or(To::Down, |_| To::Scan(cursor)),
                // Not a cursor: Redis's own error, from any master.
                None => self.any(map).map_or(To::Down, To::Node),
            },
        }
    }

    /// A node for a keyless command: the first master (before any map, the first seed).
    pub(super) fn any(&self, map: &SlotMap) -> Option<Arc<str>> {
        map.masters().first().cloned().or_else(|| self.config.upstream.cluster.first().map(|s| Arc::from(s.as_str())))
    }

    /// Runs one request as parts on several nodes; the client gets the joined reply at `seq`.
    #[allow(clippy::too_many_arguments)]
    fn scatter(
        &self,
        key: PoolKey,
        pick: &mut Pick,
        (request, argc): (Bytes, usize),
        seq: u64,
        sink: &ReplySink,
        work: Option<Box<dyn ReplyWork>>,
        combine: Combine,
        everywhere: bool,
        map: &SlotMap,
    ) {
        let parts: Option<scatter::Parts<Arc<str>>> = if everywhere {
            Some(map.masters().iter().map(|addr| (Arc::clone(addr), request.clone(), Vec::new())).collect())
        } else {
            scatter::split(&CommandView::new(&request, argc), |slot| map.owner(slot).cloned())
        };
        let Some(parts) = parts.filter(|parts| !parts.is_empty()) else {
            let _ = sink.send(ReplyChunk { seq, count: 1, bytes: ProxyError::SlotNotServed.to_reply() });
            return;
        };
        let combine = match combine {
            Combine::Positions(_) => Combine::Positions(parts.iter().map(|(_, _, p)| p.clone()).collect()),
            other => other,
        };
        let gather = Gather::new(sink.clone(), seq, combine, parts.len(), work);
        for (index, (addr, bytes, _)) in parts.into_iter().enumerate() {
            let work = Some(Part::new(&gather, index) as Box<dyn ReplyWork>);
            let part =
                Batch { bytes, seq: 0, count: 1, replies: 1, sink: self.dead.clone(), work, hops: 0, asking: false };
            self.send_to(&addr, key, pick, part);
        }
    }

    /// The node of the first request of `bytes` (up to 64) that has keys, by the map.
    pub fn node_for_requests(&self, bytes: &[u8]) -> Option<Arc<str>> {
        let slot = first_slot(bytes)?;
        self.map.load().owner(slot).cloned()
    }

    /// What a session's client gets for a MOVED or ASK on its own connection (`on`: the node it
    /// is connected to): CROSSSLOT when its keys are on another node than the state it holds
    /// there (a transaction's first keyed command decided the node), else TRYAGAIN (the map
    /// was behind, or a slot is migrating: a retry goes to the right node). The map is read
    /// again.
    pub fn pinned_redirect(&self, to: &Redirection, on: Option<&str>) -> Bytes {
        self.refresh.notify_one();
        let map = self.map.load();
        if to.kind == Resend::Moved
            && map.owner(to.slot).is_some_and(|owner| **owner == *to.addr)
            && on != Some(to.addr.as_str())
        {
            return Bytes::from_static(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n");
        }
        Bytes::from_static(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n")
    }

    pub(super) fn send_to(&self, addr: &str, key: PoolKey, pick: &mut Pick, batch: Batch) {
        let known = self.upstreams.load().iter().find(|r| *r.addr == *addr).cloned();
        let Some(route) = known else { return self.node(addr).pool(key).send(pick, batch) };
        match key.db {
            0 => route.pools[usize::from(key.resp3)].get_or_init(|| route.up.pool(key)).send(pick, batch),
            _ => route.up.pool(key).send(pick, batch),
        }
    }
}

/// Where a request goes, resolved with the map.
enum To {
    Node(Arc<str>),
    /// A SCAN page of one master.
    Scan(ScanCursor),
    /// No node serves its slot.
    Down,
    Split(Combine),
    Everywhere(Combine),
}

impl Redirect for Cluster {
    fn redirect(&self, to: Redirection, batch: Batch, key: PoolKey, lane: usize) {
        let counter = match to.kind {
            Resend::Moved => &self.stats.moved,
            Resend::Ask => &self.stats.asked,
            Resend::Retry => &self.stats.retried,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if to.kind != Resend::Ask {
            self.refresh.notify_one();
        }
        if batch.hops > MAX_HOPS {
            self.stats.hops_exceeded.fetch_add(1, Ordering::Relaxed);
            let reason = format!("more than {MAX_HOPS} cluster redirections (last: slot {} to {})", to.slot, to.addr);
            return batch.fail(&ProxyError::UpstreamUnavailable { addr: to.addr, reason });
        }
        if to.kind != Resend::Retry && batch.hops <= 1 {
            return self.send_to(&to.addr, key, &mut Pick::kept(lane), batch);
        }
        // TRYAGAIN / CLUSTERDOWN: the same node after 10, 20, 40, ... ms (the map may change
        // meanwhile: a MOVED then follows). A MOVED or ASK met again means nodes that disagree
        // while a slot changes owner (one has not learned it yet, slower on a busy machine):
        // after 40, 80, ... ms, so the change can complete within the request's hops.
        let Some(me) = self.me.upgrade() else { return };
        let pause = Duration::from_millis(10 << batch.hops.min(5));
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            me.send_to(&to.addr, key, &mut Pick::kept(lane), batch);
        });
    }
}

/// The requests of a batch: their byte ranges and argument counts.
fn requests(bytes: &[u8]) -> Vec<(std::ops::Range<usize>, usize)> {
    requests_upto(bytes, usize::MAX)
}

fn requests_upto(bytes: &[u8], most: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut parser = RequestParser::new(Limits::NONE);
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() && out.len() < most {
        let Ok(Some(Parsed::Command { len, argc })) = parser.parse(&bytes[at..]) else { break };
        out.push((at..at + len, argc));
        at += len;
    }
    out
}

/// INFO (whose reply the proxy rewrites for its clients: `Route::Info`).
fn is_info(cmd: &CommandView<'_>) -> bool {
    cmd.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"INFO"))
}

/// The slot of the first request of `bytes` that has a key.
fn first_slot(bytes: &[u8]) -> Option<u16> {
    requests_upto(bytes, 64).into_iter().find_map(|(range, argc)| {
        match scatter::placement(&CommandView::new(&bytes[range], argc), false) {
            Placement::Slot(slot) => Some(slot),
            Placement::Split(_) | Placement::Any | Placement::Everywhere(_) | Placement::Scan => None,
        }
    })
}
