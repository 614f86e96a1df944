//! Which connection of a shared pool a client's batch goes to.
//!
//! Redis runs a client's requests in order only when they travel on one connection, so a
//! client with a request unanswered keeps the connection it used. A client with nothing in
//! flight may take any: it takes the first connection with less than [`LANE_FILL`] bytes
//! waiting for its writer. At light load (clients sending one request at a time) every request
//! of a wave then travels on one connection and Redis reads them all with one read of one
//! socket, where spreading clients over every connection made it read each (Redis's CPU per
//! request follows its reads; twemproxy's one connection gathers the same way). Under heavier
//! load (pipelines, large values) the next connections fill in turn, and a connection with a
//! large write waiting, or a large reply arriving, is passed over: an idle client does not
//! queue behind another's transfer (on a 1 Gbit/s link, 1 MB takes 8 ms).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender, error::SendError};

use super::Batch;

/// Bytes a connection may have waiting for its writer, or of a reply arriving, before an idle
/// client is given the next one (Redis reads a client's socket 16 KiB at a time).
pub const LANE_FILL: usize = 16 * 1024;

/// The sending side of one shared connection: its channel, the bytes waiting in it and those
/// of an incomplete reply its reader holds.
pub struct Lane {
    tx: UnboundedSender<Batch>,
    waiting: Arc<AtomicUsize>,
    receiving: Arc<AtomicUsize>,
}

/// The connection task's side: batches in the order clients sent them.
pub struct Queue {
    rx: UnboundedReceiver<Batch>,
    waiting: Arc<AtomicUsize>,
    receiving: Arc<AtomicUsize>,
}

pub fn lane() -> (Lane, Queue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (waiting, receiving) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    (Lane { tx, waiting: Arc::clone(&waiting), receiving: Arc::clone(&receiving) }, Queue { rx, waiting, receiving })
}

impl Lane {
    pub fn send(&self, batch: Batch) -> Result<(), SendError<Batch>> {
        let len = batch.bytes.len();
        self.waiting.fetch_add(len, Ordering::Relaxed);
        self.tx.send(batch).inspect_err(|_| {
            self.waiting.fetch_sub(len, Ordering::Relaxed);
        })
    }

    /// How loaded the connection is for a client choosing one: bytes waiting for its writer
    /// plus those of a reply it is in the middle of reading.
    fn load(&self) -> usize {
        self.waiting.load(Ordering::Relaxed) + self.receiving.load(Ordering::Relaxed)
    }
}

impl Queue {
    pub async fn recv(&mut self) -> Option<Batch> {
        let batch = self.rx.recv().await?;
        Some(self.taken(batch))
    }

    pub fn try_recv(&mut self) -> Option<Batch> {
        let batch = self.rx.try_recv().ok()?;
        Some(self.taken(batch))
    }

    fn taken(&self, batch: Batch) -> Batch {
        self.waiting.fetch_sub(batch.bytes.len(), Ordering::Relaxed);
        batch
    }

    /// Where the reader tells how many bytes of an incomplete reply it holds.
    pub fn receiving(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.receiving)
    }
}

/// Which connection a client's batch takes, in every pool it goes to (each node's, in front of
/// a cluster): while any of its requests is unanswered it keeps `current`; otherwise the first
/// pool its batch reaches chooses (see [`choose`]) and the rest of the batch (other nodes'
/// parts, redirections) follows that choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub current: usize,
    pub in_flight: bool,
}

impl Pick {
    /// A batch already on its way (a redirection): it stays on its connection index.
    pub fn kept(current: usize) -> Pick {
        Pick { current, in_flight: true }
    }

    /// The connection of `lanes` for this batch; what follows of it keeps the same one.
    pub fn on(&mut self, lanes: &[Lane]) -> usize {
        let lane = choose(lanes, self.current, self.in_flight);
        *self = Pick::kept(lane);
        lane
    }
}

/// The connection for a client's next batch: `current` (the one its last batch went to) while
/// any of its requests is unanswered, else the first with less than [`LANE_FILL`] bytes waiting
/// or arriving (the least loaded when none has).
fn choose(lanes: &[Lane], current: usize, in_flight: bool) -> usize {
    if in_flight {
        return current % lanes.len();
    }
    let mut least = (usize::MAX, 0);
    for (i, lane) in lanes.iter().enumerate() {
        let load = lane.load();
        if load < LANE_FILL {
            return i;
        }
        least = least.min((load, i));
    }
    least.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(len: usize) -> Batch {
        let (sink, _) = mpsc::unbounded_channel();
        Batch::plain(Bytes::from(vec![b'x'; len]), 0, 1, sink)
    }

    #[tokio::test]
    async fn idle_clients_fill_the_first_connection_and_busy_ones_stay() {
        let (lanes, mut queues): (Vec<Lane>, Vec<Queue>) = (0..3).map(|_| lane()).unzip();
        assert_eq!(choose(&lanes, 2, false), 0, "an idle client takes the first connection");
        assert_eq!(choose(&lanes, 2, true), 2, "a client with a request in flight keeps its own");
        lanes[0].send(batch(LANE_FILL)).unwrap();
        assert_eq!(choose(&lanes, 0, false), 1, "a full connection is passed over");
        lanes[1].send(batch(LANE_FILL + 10)).unwrap();
        lanes[2].send(batch(LANE_FILL + 5)).unwrap();
        assert_eq!(choose(&lanes, 0, false), 0, "when all are full, the least loaded");
        assert_eq!(queues[0].recv().await.map(|b| b.bytes.len()), Some(LANE_FILL));
        assert_eq!(choose(&lanes, 1, false), 0, "taken by its writer: empty again");
        assert!(queues[1].try_recv().is_some() && queues[1].try_recv().is_none());
        assert_eq!(lanes[1].load(), 0);
    }

    #[test]
    fn an_idle_client_does_not_queue_behind_a_large_reply() {
        let (lanes, queues): (Vec<Lane>, Vec<Queue>) = (0..2).map(|_| lane()).unzip();
        let receiving = queues[0].receiving();
        receiving.store(LANE_FILL, Ordering::Relaxed);
        assert_eq!(choose(&lanes, 0, false), 1, "the first connection is reading a large reply");
        assert_eq!(choose(&lanes, 0, true), 0, "a client waiting on it stays");
        receiving.store(0, Ordering::Relaxed);
        assert_eq!(choose(&lanes, 1, false), 0, "read: the first again");
    }

    #[test]
    fn a_batch_keeps_the_choice_of_its_first_pool() {
        let (full, _queues): (Vec<Lane>, Vec<Queue>) = (0..3).map(|_| lane()).unzip();
        full[0].send(batch(LANE_FILL)).unwrap();
        let (empty, _other): (Vec<Lane>, Vec<Queue>) = (0..3).map(|_| lane()).unzip();
        let mut pick = Pick { current: 2, in_flight: false };
        assert_eq!(pick.on(&full), 1, "the first pool chooses past its full connection");
        assert_eq!(pick.on(&empty), 1, "another node's part follows, though its first is empty");
        assert_eq!(pick, Pick::kept(1));
    }
}
