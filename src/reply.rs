//! Upstream replies: finding frame boundaries, and building the few replies the proxy writes
//! itself.
//!
//! Replies from Redis are forwarded as the bytes Redis wrote; the proxy only needs to know
//! where each reply ends to route it to the right client. [`ReplyScanner`] does that for RESP2
//! and RESP3 without building frames and without recursion (a stack of remaining child
//! counts), and it resumes where it stopped when a large reply arrives in several reads, so
//! an N-byte reply costs O(N) however it is split.

use bytes::{BufMut, Bytes, BytesMut};

use crate::framing::parse_int;

/// The reply stream from upstream is not valid RESP: the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reply from upstream: {0}")]
pub struct ScanError(&'static str);

impl ScanError {
    /// A reply arrived on a connection with no request waiting for it.
    pub fn unexpected() -> ScanError {
        ScanError("a reply arrived with no request waiting for it")
    }

    /// Redis refused a command the proxy sent to bring a connection to a session's state.
    pub fn state_refused() -> ScanError {
        ScanError("Redis refused to move the connection to the session's db, protocol or name")
    }
}

/// Resumable boundary scanner for one reply at the front of a buffer.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Offset (from the frame start) where scanning resumes.
    pos: usize,
    /// Children still expected by each open aggregate, innermost last.
    open: Vec<u64>,
}

impl ReplyScanner {
    /// Scans the reply starting at `buf[0]`. Returns its length once complete; `None` when more
    /// bytes are needed (call again with the same start and more bytes appended).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ScanError> {
        loop {
            let Some((tag, line, after_line)) = header(buf, self.pos) else { return Ok(None) };
            let element_end = match tag {
                b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => after_line,
                b'$' | b'=' | b'!' => match bulk_end(line, after_line)? {
                    None => after_line,
                    Some(end) if buf.len() < end => return Ok(None),
                    Some(end) => end,
                },
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or(ScanError("bad aggregate length"))?;
                    let children = match tag {
                        _ if n <= 0 => 0,
                        b'%' => 2 * n as u64,
                        // An attribute is its key/value pairs followed by the value it annotates.
                        b'|' => 2 * n as u64 + 1,
                        _ => n as u64,
                    };
                    if children > 0 {
                        self.open.push(children);
                        self.pos = after_line;
                        continue;
                    }
                    after_line
                }
                _ => return Err(ScanError("unknown type byte")),
            };
            self.pos = element_end;
            if self.close_element() {
                let len = self.pos;
                self.pos = 0;
                return Ok(Some(len));
            }
        }
    }

    /// While the reply at the start of `buf` is incomplete (`scan` answered `None`), how long
    /// it is known to be at least: what was scanned, and past a bulk string's length line, up to
    /// that string's end. (Only read when a reply is incomplete: `scan` keeps no more state.)
    pub fn known_len(&self, buf: &[u8]) -> usize {
        match header(buf, self.pos) {
            Some((b'$' | b'=' | b'!', line, after_line)) => bulk_end(line, after_line).ok().flatten(),
            _ => None,
        }
        .unwrap_or(self.pos)
    }

    /// Counts one finished element against the open aggregates; true when the reply is complete.
    fn close_element(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

/// The element header at `pos`: its type byte, its line (without the CRLF) and where the line
/// ends. `None` until the whole line is in.
fn header(buf: &[u8], pos: usize) -> Option<(u8, &[u8], usize)> {
    let &tag = buf.get(pos)?;
    let line_end = buf[pos + 1..].windows(2).position(|w| w == b"\r\n")?;
    Some((tag, &buf[pos + 1..pos + 1 + line_end], pos + 1 + line_end + 2))
}

/// Where a bulk string ends whose length line is `line`, ending at `after_line`; `None` for a
/// null (negative length).
fn bulk_end(line: &[u8], after_line: usize) -> Result<Option<usize>, ScanError> {
    let len = parse_int(line).ok_or(ScanError("bad bulk length"))?;
    if len < 0 {
        return Ok(None);
    }
    usize::try_from(len)
        .ok()
        .and_then(|len| after_line.checked_add(len)?.checked_add(2))
        .map(Some)
        .ok_or(ScanError("bulk length too large"))
}

/// True when a complete reply is an out-of-band RESP3 push (`>`), not the answer to a request.
pub fn is_push(reply: &[u8]) -> bool {
    reply.first() == Some(&b'>')
}

/// The proxy's own commands (PTTL probes, handshakes, the tracking connection's setup) are sent
/// with their name's first letter in lowercase and the rest in uppercase (`pTTL`, `hELLO`):
/// Redis ignores the case, and a MONITOR through the proxy leaves out the lines of commands so
/// written ([`is_own_monitor_line`]), so that clients see what clients sent, as from Redis.
pub fn is_own_monitor_line(line: &[u8]) -> bool {
    let Some(at) = line.windows(3).position(|w| w == b"] \"") else { return false };
    let rest = &line[at + 3..];
    let name = &rest[..rest.iter().position(|&c| c == b'"').unwrap_or(rest.len())];
    match name.split_first() {
        Some((first, tail)) if first.is_ascii_lowercase() && !tail.is_empty() => {
            !tail.iter().any(u8::is_ascii_lowercase) && tail.iter().any(u8::is_ascii_uppercase)
        }
        _ => false,
    }
}

/// True for Redis's refusal of a write on a replica: the primary has moved (Sentinel).
pub fn is_readonly(reply: &[u8]) -> bool {
    reply.starts_with(b"-READONLY ")
}

/// True for the pushes client-side caching sends on its own (`invalidate`,
/// `tracking-redir-broken`): never the reply to a request, unlike an (un)subscribe push.
pub fn is_tracking_push(reply: &[u8]) -> bool {
    let Some(rest) = reply.strip_prefix(b">") else { return false };
    let Some(header) = rest.windows(2).position(|w| w == b"\r\n") else { return false };
    let kind = &rest[header + 2..];
    kind.starts_with(b"$10\r\ninvalidate\r\n") || kind.starts_with(b"$21\r\ntracking-redir-broken\r\n")
}

pub const OK: &[u8] = b"+OK\r\n";

/// `-<message>\r\n`. CR and LF inside the message would break framing and are replaced.
pub fn error(message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 3);
    out.put_u8(b'-');
    out.extend(message.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The same error reply repeated `count` times (one per failed command of a batch).
pub fn errors(message: &str, count: usize) -> Bytes {
    let one = error(message);
    if count == 1 {
        return one;
    }
    let mut out = BytesMut::with_capacity(one.len() * count);
    for _ in 0..count {
        out.extend_from_slice(&one);
    }
    out.freeze()
}

/// Writer for replies the proxy builds itself, in the client's protocol version.
pub struct ReplyWriter {
    out: BytesMut,
    resp3: bool,
}

impl ReplyWriter {
    pub fn new(resp3: bool) -> Self {
        ReplyWriter { out: BytesMut::with_capacity(128), resp3 }
    }

    pub fn finish(self) -> Bytes {
        self.out.freeze()
    }

    fn header(&mut self, tag: u8, n: usize) -> &mut Self {
        self.out.put_u8(tag);
        self.out.extend_from_slice(n.to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// A map of `pairs` entries: `%n` in RESP3, a flat `*2n` array in RESP2.
    pub fn map(&mut self, pairs: usize) -> &mut Self {
        if self.resp3 { self.header(b'%', pairs) } else { self.header(b'*', pairs * 2) }
    }

    pub fn array(&mut self, n: usize) -> &mut Self {
        self.header(b'*', n)
    }

    pub fn bulk(&mut self, data: &[u8]) -> &mut Self {
        self.header(b'$', data.len());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Text for humans: a verbatim string (`=`, format `txt`) in RESP3, a bulk string in RESP2.
    pub fn verbatim(&mut self, text: &[u8]) -> &mut Self {
        if !self.resp3 {
            return self.bulk(text);
        }
        self.header(b'=', text.len() + 4);
        self.out.extend_from_slice(b"txt:");
        self.out.extend_from_slice(text);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.out.put_u8(b':');
        self.out.extend_from_slice(value.to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// The null reply: `_` in RESP3, `$-1` in RESP2.
    pub fn null(&mut self) -> &mut Self {
        self.out.extend_from_slice(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_own_commands_are_told_apart_in_monitor_lines() {
        assert!(is_own_monitor_line(b"+1796081652.297015 [0 127.0.0.1:37780] \"pTTL\" \"foo\"\r\n"));
        assert!(is_own_monitor_line(b"+1.0 [0 127.0.0.1:1] \"hELLO\" \"2\"\r\n"));
        for client in [&b"\"PTTL\" \"foo\""[..], b"\"pttl\" \"foo\"", b"\"set\" \"pTTL\"", b"\"p\"", b"\"p1\""] {
            let line = [&b"+1.0 [0 127.0.0.1:1] "[..], client, b"\r\n"].concat();
            assert!(!is_own_monitor_line(&line), "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn tracking_pushes_are_told_from_subscription_replies() {
        assert!(is_tracking_push(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"));
        assert!(is_tracking_push(b">2\r\n$10\r\ninvalidate\r\n_\r\n"));
        assert!(is_tracking_push(b">1\r\n$21\r\ntracking-redir-broken\r\n"));
        assert!(!is_tracking_push(b">3\r\n$12\r\npunsubscribe\r\n$2\r\nch\r\n:0\r\n"));
        assert!(!is_tracking_push(b"*2\r\n$10\r\ninvalidate\r\n*0\r\n"), "RESP2 arrays are replies");
    }

    fn scan_all(input: &[u8]) -> Vec<usize> {
        let mut scanner = ReplyScanner::default();
        let mut lens = Vec::new();
        let mut start = 0;
        while let Some(len) = scanner.scan(&input[start..]).unwrap() {
            lens.push(len);
            start += len;
        }
        lens
    }

    #[test]
    fn finds_each_resp2_reply() {
        let input = b"+OK\r\n-ERR x\r\n:42\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n*0\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n";
        assert_eq!(scan_all(input), vec![5, 8, 5, 9, 5, 5, 4, 19]);
    }

    #[test]
    fn finds_each_resp3_reply() {
        let map = b"%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n,1.5\r\n";
        let attr = b"|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n";
        let push = b">2\r\n$10\r\ninvalidate\r\n_\r\n";
        let mut input = Vec::new();
        for part in [&map[..], attr, push, b"#t\r\n", b"(123\r\n", b"=8\r\ntxt:abcd\r\n", b"!3\r\nerr\r\n"] {
            input.extend_from_slice(part);
        }
        let lens = scan_all(&input);
        assert_eq!(lens, vec![map.len(), attr.len(), push.len(), 4, 6, 14, 9]);
        assert!(is_push(&input[map.len() + attr.len()..]));
    }

    #[test]
    fn resumes_across_partial_reads_byte_by_byte() {
        let input = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n:2\r\n%1\r\n+k\r\n$2\r\nvv\r\n+next\r\n";
        let first = input.len() - 7;
        let mut scanner = ReplyScanner::default();
        for end in 0..first {
            assert_eq!(scanner.scan(&input[..end]).unwrap(), None, "at {end}");
        }
        assert_eq!(scanner.scan(&input[..first]).unwrap(), Some(first));
        assert_eq!(scanner.scan(&input[first..]).unwrap(), Some(7));
    }

    #[test]
    fn an_incomplete_reply_tells_how_long_it_is_known_to_be() {
        let mut scanner = ReplyScanner::default();
        let start = b"*2\r\n:1\r\n$1000\r\nab";
        assert_eq!(scanner.scan(start).unwrap(), None);
        assert_eq!(scanner.known_len(start), 8 + 7 + 1000 + 2, "up to the end of the bulk it is in");
        let whole = [&b"*2\r\n:1\r\n$1000\r\n"[..], &[b'x'; 1000], b"\r\n"].concat();
        assert_eq!(scanner.scan(&whole).unwrap(), Some(whole.len()));
        assert_eq!(scanner.known_len(b""), 0, "between replies");
        assert_eq!(scanner.scan(b"*3\r\n:1\r\n").unwrap(), None);
        assert_eq!(scanner.known_len(b"*3\r\n:1\r\n"), 8, "what it scanned, while no bulk is waited for");
        assert_eq!(scanner.scan(b"*3\r\n:1\r\n$10").unwrap(), None);
        assert_eq!(scanner.known_len(b"*3\r\n:1\r\n$10"), 8, "a length line not read whole");
    }

    #[test]
    fn rejects_garbage() {
        assert!(ReplyScanner::default().scan(b"?x\r\n").is_err());
        assert!(ReplyScanner::default().scan(b"$abc\r\n").is_err());
    }

    #[test]
    fn error_replies_cannot_break_framing() {
        assert_eq!(&error("bad\r\nthing")[..], b"-bad  thing\r\n");
        assert_eq!(&errors("E", 3)[..], b"-E\r\n-E\r\n-E\r\n");
    }

    #[test]
    fn maps_follow_the_protocol() {
        let mut w = ReplyWriter::new(false);
        w.map(1).bulk(b"k").int(1);
        assert_eq!(&w.finish()[..], b"*2\r\n$1\r\nk\r\n:1\r\n");
        let mut w = ReplyWriter::new(true);
        w.map(1).bulk(b"k").null();
        assert_eq!(&w.finish()[..], b"%1\r\n$1\r\nk\r\n_\r\n");
    }
}
