//! MGET through the tier: one GET per key. Keys the tier has are answered from it; the others
//! go upstream as a smaller MGET, whose elements fill the tier as GET replies.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{FillTicket, Tier};
use crate::reply::ReplyScanner;

/// An MGET answered partly from the tier: the cached elements, and fill tickets for the keys
/// sent upstream (in a smaller MGET of just those keys, in order).
#[derive(Debug, PartialEq, Eq)]
pub struct SplitGet {
    /// One per key of the client's MGET: the element when it came from the tier.
    parts: Vec<Option<Bytes>>,
    /// One per key sent upstream: a ticket when its element may be cached.
    tickets: Vec<Option<FillTicket>>,
}

impl SplitGet {
    pub fn new(parts: Vec<Option<Bytes>>, tickets: Vec<Option<FillTicket>>) -> SplitGet {
        SplitGet { parts, tickets }
    }

    /// The MGET reply when every element came from the tier.
    pub fn all_cached(parts: Vec<Option<Bytes>>) -> Bytes {
        assemble(parts.into_iter().flatten().collect())
    }

    /// Keys whose PTTL is read before the upstream MGET (one per ticket, in order).
    pub fn probe_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.tickets.iter().flatten().map(|t| &t.key[..])
    }

    /// The upstream MGET `reply` arrived: fill the tier with its elements (`pttls` holds the
    /// probed PTTLs, in order) and return the client's reply. `None` if the reply is not an
    /// array of one element per key sent (an error reply, which is then delivered as is).
    pub fn complete(self, tier: &Tier, reply: &[u8], pttls: &mut VecDeque<i64>) -> Option<Bytes> {
        let mut elements = Vec::with_capacity(self.tickets.len());
        let header = reply.iter().position(|&b| b == b'\n')? + 1;
        let mut at = header;
        let mut scanner = ReplyScanner::default();
        while at < reply.len() {
            let len = scanner.scan(&reply[at..]).ok()??;
            elements.push(Bytes::copy_from_slice(&reply[at..at + len]));
            at += len;
        }
        if reply.first() != Some(&b'*') || elements.len() != self.tickets.len() {
            self.abort(tier, Bytes::from_static(b"-ERR MGET reply did not match its keys\r\n"));
            return None;
        }
        for (ticket, element) in self.tickets.into_iter().zip(&elements) {
            let Some(ticket) = ticket else { continue };
            let pttl = pttls.pop_front();
            // MGET answers null both for a missing key and for a key of another type, where
            // GET would answer WRONGTYPE: a null is GET's answer only if the key does not exist.
            if is_null(element) && pttl != Some(-2) {
                tier.abort(ticket, element.clone());
            } else {
                tier.fill(ticket, element.clone(), pttl);
            }
        }
        let mut fetched = elements.into_iter();
        Some(assemble(self.parts.into_iter().map(|part| part.or_else(|| fetched.next()).unwrap_or_default()).collect()))
    }

    pub fn abort(self, tier: &Tier, error: Bytes) {
        self.tickets.into_iter().flatten().for_each(|ticket| tier.abort(ticket, error.clone()));
    }
}

fn assemble(elements: Vec<Bytes>) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + elements.iter().map(Bytes::len).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", elements.len()).as_bytes());
    elements.iter().for_each(|element| out.extend_from_slice(element));
    out.freeze()
}

fn is_null(reply: &[u8]) -> bool {
    reply == b"$-1\r\n" || reply == b"_\r\n"
}
