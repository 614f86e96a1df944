//! Writing a queue of `Bytes` with vectored writes: replies and requests are forwarded as the
//! slices they arrived in, never copied into one buffer first.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// Most slices handed to one `writev` (Linux allows 1024; more gains nothing).
const MAX_SLICES: usize = 64;

/// Writes and removes everything in `queue`.
pub async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, queue: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !queue.is_empty() {
        let written = poll_fn(|cx| write_some(Pin::new(&mut *writer), cx, queue)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        consume(queue, written);
    }
    Ok(())
}

/// One `writev` of the queue's first slices. The slices live on the stack of this call only,
/// not in the future that awaits it: every client's task holds that future while connected.
fn write_some<W: AsyncWrite>(
    writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    queue: &VecDeque<Bytes>,
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let mut n = 0;
    for (slot, chunk) in slices.iter_mut().zip(queue.iter()) {
        *slot = IoSlice::new(chunk);
        n += 1;
    }
    writer.poll_write_vectored(cx, &slices[..n])
}

/// Drops the first `n` bytes of the queue.
fn consume(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_every_chunk_in_order() {
        let mut queue: VecDeque<Bytes> = (0..200).map(|i| Bytes::from(format!("{i},"))).collect();
        let expected: String = (0..200).map(|i| format!("{i},")).collect();
        let mut out = Vec::new();
        write_all(&mut out, &mut queue).await.unwrap();
        assert!(queue.is_empty());
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn consume_splits_a_chunk() {
        let mut queue: VecDeque<Bytes> = [&b"abc"[..], b"de"].map(Bytes::from_static).into();
        consume(&mut queue, 4);
        assert_eq!(queue, [Bytes::from_static(b"e")]);
    }
}
