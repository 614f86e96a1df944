//! What happens to a batch's replies on the shared pool before its client gets them: the
//! local tier's fills (with the key's PTTL, read in the same batch), MGETs assembled from the
//! tier's elements and Redis's, written keys invalidated again as their replies arrive, and TTL
//! enforcement's several replies made into the client's one. The upstream connection only
//! finds reply boundaries and hands each reply to this work ([`ReplyWork`]).
//!
//! # The PTTL probe
//! A fill needs the key's remaining lifetime in Redis (an entry must not outlive its key). The
//! proxy's `PTTL key` is sent in the read's own batch, right before it: one admission by the
//! breaker, one failure path, and its reply is read by this batch's work alone. (Sent as a
//! batch of its own, a probe admitted and its read refused left a PTTL on the connection that
//! the next fill took for its own.)

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::cache::{Cause, FillTicket, Registrations, SplitGet, Tier};
use crate::command::{self, Effect};
use crate::error::ProxyError;
use crate::framing::{CommandView, Limits, Parsed, RequestParser, encode_command, parse_int};
use crate::ttl::{Shape, Shaped, Shaper};
use crate::upstream::{Batch, ReplySink, ReplyWork, Step};

/// The work on one batch's replies.
#[derive(Debug)]
pub struct Delivery {
    tier: Option<Arc<Tier>>,
    /// Replies still to come from the proxy's PTTL probes (of `probes_sent`), and the lifetimes
    /// they gave.
    probes: u32,
    probes_sent: u32,
    pttls: VecDeque<i64>,
    /// The batch is one cacheable read: its reply fills the tier.
    fill: Option<FillTicket>,
    /// The batch is an MGET of the keys the tier did not have: the client's reply is assembled.
    split: Option<SplitGet>,
    /// The batch has writes: its requests, to invalidate their keys again as they are answered.
    writes: Option<Written>,
    /// Requests whose replies are shaped (TTL enforcement), by the index of the client's reply.
    shaped: Shaped,
    /// The batch is INFO: its reply as the proxy's clients see it (see [`as_clients_see_it`]).
    info: Option<InfoView>,
    /// Client replies produced so far.
    delivered: u32,
}

#[derive(Debug)]
struct Written {
    /// The tier's count of registered reads before the first of the writes' invalidations.
    before: Registrations,
    requests: Bytes,
    /// Where the next unanswered request starts, and how many requests have been answered by
    /// Redis since the last client reply (a shaped request is several).
    at: usize,
    answered: usize,
}

impl Delivery {
    /// The work for a read through the tier, a request of its own: `fill` (one key) or `split`
    /// (an MGET of the keys the tier did not have). Made when the read is routed: dropped
    /// unsent, it releases the read in flight.
    pub fn for_read(
        tier: Option<&Arc<Tier>>,
        fill: Option<FillTicket>,
        split: Option<SplitGet>,
    ) -> Option<Box<Delivery>> {
        if fill.is_none() && split.is_none() {
            return None;
        }
        let mut read = Delivery::empty(Some(Arc::clone(tier?)));
        (read.fill, read.split) = (fill, split);
        Some(Box::new(read))
    }

    /// The work for a run to the shared pool: `writes` when it has writes, `shaped` for requests
    /// TTL enforcement rewrote (by the index of their reply in the batch). `None` when the
    /// replies need nothing.
    pub fn for_batch(
        tier: Option<&Arc<Tier>>,
        requests: &Bytes,
        writes: Option<Registrations>,
        shaped: Vec<(u32, Shape)>,
    ) -> Option<Box<Delivery>> {
        let writes = writes.filter(|_| tier.is_some());
        if writes.is_none() && shaped.is_empty() {
            return None;
        }
        let written = writes.map(|before| Written { before, requests: requests.clone(), at: 0, answered: 0 });
        let shaped = shaped.into_iter().map(|(at, shape)| (at, Shaper::new(shape))).collect();
        let mut delivery = Delivery::empty(tier.cloned());
        (delivery.writes, delivery.shaped) = (written, shaped);
        Some(Box::new(delivery))
    }

    /// The work for INFO (see [`as_clients_see_it`]).
    pub fn for_info(view: InfoView) -> Box<Delivery> {
        let mut info = Delivery::empty(None);
        info.info = Some(view);
        Box::new(info)
    }

    fn empty(tier: Option<Arc<Tier>>) -> Delivery {
        Delivery {
            tier,
            probes: 0,
            probes_sent: 0,
            pttls: VecDeque::new(),
            fill: None,
            split: None,
            writes: None,
            shaped: VecDeque::new(),
            info: None,
            delivered: 0,
        }
    }

    /// The batch to send: the requests (after the PTTL probes a fill or split needs), with this
    /// work. `count`: the client's replies.
    pub fn into_batch(mut self: Box<Self>, requests: Bytes, seq: u64, count: u32, sink: &ReplySink) -> Batch {
        let probed: Vec<&[u8]> = match (&self.fill, &self.split) {
            (Some(ticket), _) => vec![&ticket.key()[..]],
            (None, Some(split)) => split.probe_keys().collect(),
            (None, None) => Vec::new(),
        };
        let bytes = if probed.is_empty() {
            requests
        } else {
            let mut bytes = BytesMut::new();
            probed.iter().for_each(|key| bytes.extend_from_slice(&encode_command(&[&b"pTTL"[..], key])));
            bytes.extend_from_slice(&requests);
            bytes.freeze()
        };
        self.probes = probed.len() as u32;
        self.probes_sent = self.probes;
        let hidden: usize = self.shaped.iter().map(|(_, shaper)| shaper.commands() - 1).sum();
        let replies = count + self.probes + hidden as u32;
        Batch { bytes, seq, count, replies, sink: sink.clone(), work: Some(self), hops: 0, asking: false }
    }

    /// Redis answered the requests since the last client reply: their written keys are
    /// invalidated again (a fill that read the old value meanwhile must not stay), unless no
    /// read was registered since their first invalidation (then they wait, uncounted, in case
    /// one is before a later reply).
    fn invalidate_answered(&mut self) {
        let (Some(written), Some(tier)) = (self.writes.as_mut(), &self.tier) else { return };
        if !tier.registered_since(written.before) {
            return;
        }
        let mut parser = RequestParser::new(Limits::NONE);
        for _ in 0..std::mem::take(&mut written.answered) {
            let rest = &written.requests[written.at..];
            let Ok(Some(Parsed::Command { len, argc })) = parser.parse(rest) else { return };
            let cmd = CommandView::new(&rest[..len], argc);
            match command::lookup(cmd.arg(0).unwrap_or_default()).effect(&cmd) {
                Effect::Writes(keys) => {
                    command::written_keys(&cmd, keys).for_each(|key| tier.invalidate(key, Cause::WriteAnswered))
                }
                Effect::Flush => tier.clear(),
                Effect::CacheableRead | Effect::MultiGet | Effect::Nothing => {}
            }
            written.at += len;
        }
    }

    /// The reads in flight answer their waiters with `error`.
    fn release(&mut self, error: &Bytes) {
        let Some(tier) = &self.tier else { return };
        if let Some(ticket) = self.fill.take() {
            tier.abort(ticket, error.clone());
        }
        if let Some(split) = self.split.take() {
            split.abort(tier, error.clone());
        }
    }
}

impl ReplyWork for Delivery {
    fn reply(&mut self, frame: &[u8]) -> Step {
        if self.probes > 0 {
            self.probes -= 1;
            self.pttls
                .push_back(parse_int(frame.get(1..frame.len().saturating_sub(2)).unwrap_or_default()).unwrap_or(-1));
            return Step::Swallow;
        }
        if let Some(written) = self.writes.as_mut() {
            written.answered += 1;
        }
        let step = if self.shaped.front().is_some_and(|(at, _)| *at == self.delivered) {
            let (_, shaper) = self.shaped.front_mut().expect("checked above");
            let Some(reply) = shaper.feed(frame) else { return Step::Swallow };
            self.shaped.pop_front();
            Step::Replace(reply)
        } else if let (Some(ticket), Some(tier)) = (self.fill.take(), &self.tier) {
            // A copy: a slice would pin the whole read buffer for as long as it is cached.
            tier.fill(ticket, Bytes::copy_from_slice(frame), self.pttls.pop_front());
            Step::Deliver
        } else if let (Some(split), Some(tier)) = (self.split.take(), &self.tier) {
            split.complete(tier, frame, &mut self.pttls).map_or(Step::Deliver, Step::Replace)
        } else if let Some(view) = self.info {
            as_clients_see_it(frame, view).map_or(Step::Deliver, Step::Replace)
        } else {
            Step::Deliver
        };
        self.delivered += 1;
        self.invalidate_answered();
        step
    }

    fn fail(&mut self, error: &Bytes) {
        self.release(error);
    }

    /// Only written keys to invalidate again (a run of requests): each request's work is that.
    fn per_request(&self) -> bool {
        self.fill.is_none() && self.split.is_none() && self.shaped.is_empty() && self.info.is_none()
    }

    fn for_part(&self, requests: &Bytes) -> Option<Box<dyn ReplyWork>> {
        Delivery::for_batch(self.tier.as_ref(), requests, self.writes.as_ref().map(|w| w.before), Vec::new())
            .map(|delivery| delivery as Box<dyn ReplyWork>)
    }

    fn restart(&mut self) {
        self.probes = self.probes_sent;
        self.pttls.clear();
        self.delivered = 0;
        if let Some(written) = self.writes.as_mut() {
            (written.at, written.answered) = (0, 0);
        }
        self.shaped.iter_mut().for_each(|(_, shaper)| shaper.restart());
        // The read's fill is refused (its waiters still get the reply): the key's epoch moves.
        let Some(tier) = &self.tier else { return };
        if let Some(ticket) = &self.fill {
            tier.invalidate(ticket.key(), Cause::WriteAnswered);
        }
        if let Some(split) = &self.split {
            split.probe_keys().for_each(|key| tier.invalidate(key, Cause::WriteAnswered));
        }
    }
}

impl Drop for Delivery {
    /// A read registered in the tier is answered whatever happens to its batch: otherwise
    /// identical reads would wait for it forever.
    fn drop(&mut self) {
        if self.fill.is_some() || self.split.is_some() {
            self.release(&ProxyError::ReadAbandoned.to_reply());
        }
    }
}

/// What INFO's reply must show the proxy's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoView {
    /// The proxy's shared connections with tracking on (in front of a cluster, the masters'
    /// that INFO adds up): left out of `tracking_clients`.
    pub own_tracking: u64,
    /// The proxy's clients, for `connected_clients` (Redis counts the proxy's connections).
    pub clients: u64,
}

/// INFO's reply as the proxy's clients see it: `connected_clients` is the proxy's client count
/// (as CLIENT LIST lists them), and `tracking_clients` leaves out the shared connections Redis
/// tracks keys for on the tier's behalf. `None` when the reply has none of those fields
/// (another section, an error).
///
/// # What is not left out
/// `tracking_total_keys` and `tracking_total_items` count the keys the tier's reads registered
/// too: a key read by the proxy and by a tracking client counts once in Redis, and which keys
/// are the proxy's alone is not known here.
pub fn as_clients_see_it(frame: &[u8], view: InfoView) -> Option<Bytes> {
    let (&kind, _) = frame.split_first()?;
    if !matches!(kind, b'$' | b'=') {
        return None;
    }
    let header = frame.windows(2).position(|w| w == b"\r\n")? + 2;
    let text = std::str::from_utf8(frame.get(header..frame.len().checked_sub(2)?)?).ok()?;
    let tracking = view.own_tracking > 0 && text.contains("\ntracking_clients:");
    if !tracking && !text.contains("\nconnected_clients:") {
        return None;
    }
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some(("connected_clients", _)) => format!("connected_clients:{}", view.clients),
            Some((field @ "tracking_clients", n)) if view.own_tracking > 0 => match n.parse::<u64>() {
                Ok(n) => format!("{field}:{}", n.saturating_sub(view.own_tracking)),
                Err(_) => line.to_owned(),
            },
            _ => line.to_owned(),
        })
        .collect();
    let body = lines.join("\r\n");
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.extend_from_slice(format!("{}{}\r\n", kind as char, body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"\r\n");
    Some(out.freeze())
}

#[cfg(test)]
mod tests;
