//! The slot map: which master owns each of Redis Cluster's 16384 slots, read from
//! `CLUSTER SLOTS`.

use std::sync::Arc;

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame as Frame;

pub const SLOTS: usize = 16384;
/// An owner index meaning "no node serves the slot".
const NONE: u16 = u16::MAX;

/// The key's slot (its `{hash tag}` only, when it has one).
#[inline]
pub fn slot_of(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// Whether every key is in the same slot.
pub fn one_slot<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> bool {
    let Some(first) = keys.next().map(slot_of) else { return true };
    keys.all(|key| slot_of(key) == first)
}

/// Masters and the slots each owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Master addresses (`host:port`), in the order first seen.
    nodes: Vec<Arc<str>>,
    /// Per slot, an index into `nodes` (or [`NONE`]).
    owners: Box<[u16]>,
}

impl Default for SlotMap {
    fn default() -> SlotMap {
        SlotMap { nodes: Vec::new(), owners: vec![NONE; SLOTS].into_boxed_slice() }
    }
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply (RESP2) given by the node at `asked` (an empty host in
    /// the reply means that node's own).
    pub fn parse(reply: &[u8], asked: &str) -> Result<SlotMap, String> {
        let frame = match decode(reply) {
            Ok(Some((frame, _))) => frame,
            Ok(None) => return Err("incomplete CLUSTER SLOTS reply".into()),
            Err(e) => return Err(format!("unreadable CLUSTER SLOTS reply: {e:?}")),
        };
        let ranges = match frame {
            Frame::Array(ranges) => ranges,
            Frame::Error(e) => return Err(format!("CLUSTER SLOTS refused: {e}")),
            other => return Err(format!("unexpected CLUSTER SLOTS reply: {other:?}")),
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(host, _)| host);
        let mut map = SlotMap::default();
        for range in ranges {
            let Frame::Array(fields) = range else { return Err("a slot range is not an array".into()) };
            let (Some(Frame::Integer(start)), Some(Frame::Integer(end)), Some(Frame::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err("a slot range without start, end and master".into());
            };
            let host = match master.first() {
                Some(Frame::BulkString(host)) if !host.is_empty() && host.as_slice() != b"?" => {
                    String::from_utf8_lossy(host).into_owned()
                }
                _ => asked_host.to_owned(),
            };
            let Some(Frame::Integer(port)) = master.get(1) else { return Err("a master without a port".into()) };
            let (start, end) = (*start as usize, *end as usize);
            if start > end || end >= SLOTS {
                return Err(format!("slot range {start}-{end} out of bounds"));
            }
            let index = map.index_of(&format!("{host}:{port}"));
            map.owners[start..=end].fill(index);
        }
        Ok(map)
    }

    fn index_of(&mut self, addr: &str) -> u16 {
        match self.nodes.iter().position(|node| &**node == addr) {
            Some(i) => i as u16,
            None => {
                self.nodes.push(addr.into());
                (self.nodes.len() - 1) as u16
            }
        }
    }

    /// The master serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&Arc<str>> {
        self.nodes.get(usize::from(self.owners[usize::from(slot)]))
    }

    pub fn masters(&self) -> &[Arc<str>] {
        &self.nodes
    }

    /// Slots no master serves.
    pub fn uncovered(&self) -> usize {
        self.owners.iter().filter(|&&o| o == NONE).count()
    }

    /// The slots whose owner differs between the two maps.
    pub fn changed(&self, other: &SlotMap) -> Vec<u16> {
        (0..SLOTS as u16).filter(|&slot| self.owner(slot) != other.owner(slot)).collect()
    }

    /// The slots `addr` serves, as ranges `(first, last)`.
    pub fn ranges_of(&self, addr: &str) -> Vec<(u16, u16)> {
        let Some(index) = self.nodes.iter().position(|node| &**node == addr) else { return Vec::new() };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for (slot, &owner) in self.owners.iter().enumerate() {
            if usize::from(owner) != index {
                continue;
            }
            match ranges.last_mut() {
                Some((_, last)) if usize::from(*last) + 1 == slot => *last = slot as u16,
                _ => ranges.push((slot as u16, slot as u16)),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots_reply() -> Vec<u8> {
        // Two masters; the second named with an empty host (the asked node's own).
        let mut r = b"*2\r\n".to_vec();
        r.extend_from_slice(b"*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nr1\r\n");
        r.extend_from_slice(b"*3\r\n:8192\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n");
        r
    }

    #[test]
    fn cluster_slots_gives_each_slot_its_master() {
        let map = SlotMap::parse(&slots_reply(), "10.0.0.9:7001").unwrap();
        assert_eq!(map.owner(0).map(|a| &**a), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(8191).map(|a| &**a), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(8192).map(|a| &**a), Some("10.0.0.9:7001"));
        assert_eq!(map.uncovered(), 0);
        assert_eq!(map.ranges_of("10.0.0.9:7001"), vec![(8192, 16383)]);
        let mut moved = map.clone();
        moved.owners[100] = 1;
        assert_eq!(map.changed(&moved), vec![100]);
        assert_eq!(SlotMap::default().uncovered(), SLOTS);
        assert!(SlotMap::parse(b"-ERR This instance has cluster support disabled\r\n", "a:1").is_err());
    }

    #[test]
    fn hash_tags_pick_the_slot() {
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"{user1000}.followers"));
        assert_eq!(slot_of(b"foo"), 12182);
    }
}
