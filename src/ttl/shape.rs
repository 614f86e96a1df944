//! Turning the replies to what the proxy sent back into the reply the client's own command
//! gets from Redis, when enforcement sent more than that command.

use bytes::{Bytes, BytesMut};

use crate::framing::parse_int;
use crate::reply::ReplyScanner;

/// How the upstream's replies map to the client's one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `MULTI`, the command, `extra` commands, `EXEC`: the command's reply is its queueing
    /// error, or its element of EXEC's array (or EXEC's own error).
    Transaction { extra: u32 },
    /// The command's reply, then `hidden` replies to the proxy's commands, dropped.
    Trailing { hidden: u32 },
    /// The client's EXEC: `visible[i]` says whether the i-th queued command was the client's;
    /// the others' elements are dropped from the array.
    Exec(Vec<bool>),
    /// The client's EXEC, sent as DISCARD because the proxy refused a command queued in the
    /// transaction: Redis would have aborted it.
    Discarded,
}

impl Shape {
    /// How many commands were sent for the request.
    pub fn commands(&self) -> usize {
        match self {
            Shape::Transaction { extra } => 3 + *extra as usize,
            Shape::Trailing { hidden } => 1 + *hidden as usize,
            Shape::Exec(_) | Shape::Discarded => 1,
        }
    }
}

/// The shaped requests of a batch: each one's index among the batch's replies to the client,
/// and its shaper, in order.
pub type Shaped = std::collections::VecDeque<(u32, Shaper)>;

/// Consumes the upstream replies of one shaped request.
#[derive(Debug)]
pub struct Shaper {
    shape: Shape,
    seen: u32,
    reply: Option<Bytes>,
}

const QUEUED: &[u8] = b"+QUEUED\r\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

impl Shaper {
    pub fn new(shape: Shape) -> Shaper {
        Shaper { shape, seen: 0, reply: None }
    }

    /// The request is sent again (a Redis Cluster redirection): no reply seen yet.
    pub fn restart(&mut self) {
        (self.seen, self.reply) = (0, None);
    }

    /// How many commands were sent for the request.
    pub fn commands(&self) -> usize {
        self.shape.commands()
    }

    /// Takes the next upstream reply; returns the client's reply once every upstream reply of
    /// the request has arrived.
    pub fn feed(&mut self, frame: &[u8]) -> Option<Bytes> {
        let index = self.seen;
        self.seen += 1;
        match &self.shape {
            Shape::Transaction { extra } => {
                // Anything but QUEUED (an error, or the reply itself should MULTI have failed)
                // is the command's own reply.
                if index == 1 && frame != QUEUED {
                    self.reply = Some(Bytes::copy_from_slice(frame));
                }
                if index < 2 + extra {
                    return None;
                }
                Some(self.reply.take().unwrap_or_else(|| first_element(frame)))
            }
            Shape::Trailing { hidden } => {
                if index == 0 {
                    self.reply = Some(Bytes::copy_from_slice(frame));
                }
                if index < *hidden {
                    return None;
                }
                self.reply.take()
            }
            Shape::Exec(visible) => Some(keep_elements(frame, visible)),
            Shape::Discarded if frame == b"+OK\r\n" => Some(Bytes::from_static(EXECABORT)),
            Shape::Discarded => Some(Bytes::copy_from_slice(frame)),
        }
    }
}

/// The elements of an array reply, or `None` if `frame` is not an array.
fn elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let header = frame.iter().position(|&b| b == b'\n')? + 1;
    if frame.first() != Some(&b'*') || header < 4 {
        return None;
    }
    let count = usize::try_from(parse_int(&frame[1..header - 2])?).ok()?;
    let mut out = Vec::with_capacity(count);
    let mut pos = header;
    for _ in 0..count {
        let len = ReplyScanner::default().scan(&frame[pos..]).ok()??;
        out.push(&frame[pos..pos + len]);
        pos += len;
    }
    Some(out)
}

/// EXEC's reply to a transaction whose first command is the client's.
fn first_element(frame: &[u8]) -> Bytes {
    match elements(frame).as_deref() {
        Some([first, ..]) => Bytes::copy_from_slice(first),
        _ => Bytes::copy_from_slice(frame),
    }
}

fn keep_elements(frame: &[u8], visible: &[bool]) -> Bytes {
    let Some(items) = elements(frame).filter(|items| items.len() == visible.len()) else {
        // A null (WATCH) or an error (EXECABORT): as it is.
        return Bytes::copy_from_slice(frame);
    };
    let kept = visible.iter().filter(|&&v| v).count();
    let mut out = BytesMut::with_capacity(frame.len());
    out.extend_from_slice(format!("*{kept}\r\n").as_bytes());
    for (item, _) in items.iter().zip(visible).filter(|(_, v)| **v) {
        out.extend_from_slice(item);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(shape: Shape, frames: &[&[u8]]) -> Vec<Option<Bytes>> {
        let mut shaper = Shaper::new(shape);
        frames.iter().map(|f| shaper.feed(f)).collect()
    }

    #[test]
    fn a_transaction_answers_with_the_commands_element() {
        let out = run(Shape::Transaction { extra: 1 }, &[b"+OK\r\n", QUEUED, QUEUED, b"*2\r\n:1\r\n:1\r\n"]);
        assert_eq!(out, [None, None, None, Some(Bytes::from_static(b":1\r\n"))]);
        // An aggregate element is taken whole.
        let exec = b"*2\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n:0\r\n";
        let out = run(Shape::Transaction { extra: 1 }, &[b"+OK\r\n", QUEUED, QUEUED, exec]);
        assert_eq!(out[3].as_deref(), Some(&b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"[..]));
    }

    #[test]
    fn a_queueing_error_is_the_commands_reply() {
        let arity = b"-ERR wrong number of arguments for 'hset' command\r\n";
        let out = run(Shape::Transaction { extra: 1 }, &[b"+OK\r\n", arity, QUEUED, EXECABORT]);
        assert_eq!(out[3].as_deref(), Some(&arity[..]));
    }

    #[test]
    fn trailing_replies_are_dropped() {
        let out = run(Shape::Trailing { hidden: 2 }, &[b":3\r\n", b":1\r\n", b":0\r\n"]);
        assert_eq!(out, [None, None, Some(Bytes::from_static(b":3\r\n"))]);
        assert_eq!(run(Shape::Trailing { hidden: 0 }, &[b"+OK\r\n"])[0].as_deref(), Some(&b"+OK\r\n"[..]));
    }

    #[test]
    fn exec_keeps_the_clients_elements() {
        let exec = b"*4\r\n:1\r\n:1\r\n$1\r\nv\r\n:0\r\n";
        let out = run(Shape::Exec(vec![true, false, true, false]), &[exec]);
        assert_eq!(out[0].as_deref(), Some(&b"*2\r\n:1\r\n$1\r\nv\r\n"[..]));
        // A failed WATCH (null) or an aborted transaction pass as they are.
        for reply in [&b"*-1\r\n"[..], b"_\r\n", EXECABORT] {
            assert_eq!(run(Shape::Exec(vec![true, false]), &[reply])[0].as_deref(), Some(reply));
        }
    }

    #[test]
    fn a_discarded_transaction_answers_execabort() {
        assert_eq!(run(Shape::Discarded, &[b"+OK\r\n"])[0].as_deref(), Some(EXECABORT));
    }
}
