//! Client-side RESP framing: finds complete commands in a client's read buffer.
//!
//! redis-protocol's decoder is not used on this side, for three measured reasons (see
//! `shared/CRATES.md`): it re-parses an incomplete frame from byte 0 on every call (a slowly
//! trickled 100k-argument MSET becomes O(n²)), it has no size or nesting limits (10 000 nested
//! `*1` overflow the stack), and it rejects inline commands (`PING\r\n`, redis-benchmark's
//! PING_INLINE, fred's `HELLO 3`). Client commands are flat arrays of bulk strings, so a flat,
//! resumable scanner is both simpler and safer: it validates each header once, rejects a bulk
//! length or argument count over the limits *before* buffering the payload, and never recurses.
//!
//! The scanner only finds boundaries; the bytes of a multibulk command are forwarded upstream
//! exactly as the client sent them. [`CommandView`] walks the (already validated) arguments
//! without allocating.

use bytes::{BufMut, Bytes, BytesMut};

/// Redis caps inline commands and unterminated header lines at 64 KiB.
const MAX_INLINE: usize = 64 * 1024;
/// A `$<len>\r\n` header longer than this is malformed (lengths have at most 20 digits).
const MAX_BULK_HEADER: usize = 32;

/// Request limits from `[listen]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_size: usize,
    pub max_args: usize,
}

impl Limits {
    /// For bytes a client did not send: requests already framed under the client's limits,
    /// or a key list in Redis's own invalidation push.
    pub const NONE: Limits = Limits { max_request_size: usize::MAX, max_args: usize::MAX };
}

/// Why a client's byte stream cannot be framed. The connection replies
/// `-ERR Protocol error: <this>` and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    // Redis's own words first (clients and Redis's test suite match them), the proxy's limit after.
    #[error("invalid multibulk length ({count} arguments > listen.max_args {limit})")]
    TooManyArgs { count: u64, limit: usize },
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("invalid bulk length ({len} > listen.max_request_size {limit})")]
    BulkTooLarge { len: u64, limit: usize },
    #[error("request exceeds listen.max_request_size {limit}")]
    RequestTooLarge { limit: usize },
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("too big inline request")]
    InlineTooLarge,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// One complete item at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A multibulk command occupying `buf[..len]`, to be forwarded as is.
    Command { len: usize, argc: usize },
    /// An inline command line of `len` bytes, re-encoded as a RESP array.
    Inline { len: usize, argc: usize, encoded: Bytes },
    /// `len` bytes that carry no command (`*0`, `*-1`, an empty line): consumed, no reply.
    Empty { len: usize },
}

/// Resumable scanner for the frame at the front of a client's buffer.
///
/// `pos`/`seen` remember how much of an incomplete frame was already validated, so more bytes
/// arriving never cause a re-scan of earlier arguments.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    argc: usize,
    seen: usize,
    pos: usize,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser { limits, argc: 0, seen: 0, pos: 0 }
    }

    /// Looks at `buf`, whose byte 0 is the start of a frame (the caller consumes exactly the
    /// `len` of each returned item before calling again).
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Parsed>, FrameError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if self.pos == 0 {
            if buf[0] != b'*' {
                return parse_inline(buf, self.limits);
            }
            let Some(end) = find_crlf(buf, 1, MAX_INLINE) else {
                return incomplete_line(buf, MAX_INLINE, FrameError::InvalidMultibulkLength);
            };
            let count = parse_int(&buf[1..end]).ok_or(FrameError::InvalidMultibulkLength)?;
            if count <= 0 {
                return Ok(Some(Parsed::Empty { len: end + 2 }));
            }
            let count = count as u64;
            if count > self.limits.max_args as u64 {
                return Err(FrameError::TooManyArgs { count, limit: self.limits.max_args });
            }
            self.argc = count as usize;
            self.seen = 0;
            self.pos = end + 2;
        }
        while self.seen < self.argc {
            if !self.scan_bulk(buf)? {
                return Ok(None);
            }
        }
        let parsed = Parsed::Command { len: self.pos, argc: self.argc };
        self.pos = 0;
        Ok(Some(parsed))
    }

    /// Validates the bulk string at `self.pos`; `Ok(false)` when more bytes are needed.
    fn scan_bulk(&mut self, buf: &[u8]) -> Result<bool, FrameError> {
        let start = self.pos;
        let Some(&tag) = buf.get(start) else { return Ok(false) };
        if tag != b'$' {
            return Err(FrameError::ExpectedBulk(tag));
        }
        let Some(end) = find_crlf(buf, start + 1, MAX_BULK_HEADER) else {
            return incomplete_line(&buf[start..], MAX_BULK_HEADER, FrameError::InvalidBulkLength).map(|_| false);
        };
        let len = parse_int(&buf[start + 1..end]).ok_or(FrameError::InvalidBulkLength)?;
        if len < 0 {
            return Err(FrameError::InvalidBulkLength);
        }
        let len = len as u64;
        let limit = self.limits.max_request_size;
        if len > limit as u64 {
            return Err(FrameError::BulkTooLarge { len, limit });
        }
        let frame_end = end + 2 + len as usize + 2;
        if frame_end > limit {
            return Err(FrameError::RequestTooLarge { limit });
        }
        if buf.len() < frame_end {
            return Ok(false);
        }
        // The two bytes after the payload are not checked: Redis skips them too.
        self.pos = frame_end;
        self.seen += 1;
        Ok(true)
    }
}

/// An incomplete header line: an error once it is longer than any valid one could be.
fn incomplete_line(buf: &[u8], max: usize, err: FrameError) -> Result<Option<Parsed>, FrameError> {
    if buf.len() > max { Err(err) } else { Ok(None) }
}

/// Position of the `\r` of the first CRLF at or after `from`, looking at most `max` bytes.
fn find_crlf(buf: &[u8], from: usize, max: usize) -> Option<usize> {
    let window = buf.get(from..)?;
    let window = &window[..window.len().min(max)];
    let mut i = 0;
    while i < window.len() {
        let r = window[i..].iter().position(|&b| b == b'\r')? + i;
        if window.get(r + 1) == Some(&b'\n') {
            return Some(from + r);
        }
        if r + 1 >= window.len() {
            return None;
        }
        i = r + 1;
    }
    None
}

/// Parses a signed decimal integer the way Redis's `string2ll` does (no spaces, no `+`).
pub fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -value } else { value })
}

fn parse_inline(buf: &[u8], limits: Limits) -> Result<Option<Parsed>, FrameError> {
    let Some(nl) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        return incomplete_line(buf, MAX_INLINE, FrameError::InlineTooLarge);
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args = split_args(line).ok_or(FrameError::UnbalancedQuotes)?;
    let len = nl + 1;
    if args.is_empty() {
        return Ok(Some(Parsed::Empty { len }));
    }
    if args.len() > limits.max_args {
        return Err(FrameError::TooManyArgs { count: args.len() as u64, limit: limits.max_args });
    }
    Ok(Some(Parsed::Inline { len, argc: args.len(), encoded: encode_command(&args) }))
}

/// Encodes arguments as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.put_u8(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out.freeze()
}

/// Splits an inline command line like Redis's `sdssplitargs`: whitespace-separated words,
/// `"..."` with backslash escapes (`\n \r \t \b \a \\ \" \xHH`) and `'...'` with `\'`.
/// `None` for unbalanced quotes (or a closing quote not followed by a space).
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => i = split_double_quoted(line, i + 1, &mut arg)?,
            b'\'' => i = split_single_quoted(line, i + 1, &mut arg)?,
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

fn split_double_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Option<usize> {
    loop {
        match *line.get(i)? {
            b'\\' if line.get(i + 1) == Some(&b'x') && hex_pair(line.get(i + 2..i + 4)).is_some() => {
                arg.push(hex_pair(line.get(i + 2..i + 4))?);
                i += 4;
            }
            b'\\' => {
                let c = *line.get(i + 1)?;
                arg.push(match c {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                i += 2;
            }
            b'"' => return closing_quote(line, i + 1),
            c => {
                arg.push(c);
                i += 1;
            }
        }
    }
}

fn split_single_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Option<usize> {
    loop {
        match *line.get(i)? {
            b'\\' if line.get(i + 1) == Some(&b'\'') => {
                arg.push(b'\'');
                i += 2;
            }
            b'\'' => return closing_quote(line, i + 1),
            c => {
                arg.push(c);
                i += 1;
            }
        }
    }
}

/// A closing quote must be followed by whitespace or the end of the line.
fn closing_quote(line: &[u8], next: usize) -> Option<usize> {
    match line.get(next) {
        None => Some(next),
        Some(c) if c.is_ascii_whitespace() => Some(next),
        Some(_) => None,
    }
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

/// A validated RESP command (array of bulk strings), viewed without copying.
#[derive(Debug, Clone, Copy)]
pub struct CommandView<'a> {
    bytes: &'a [u8],
    argc: usize,
}

impl<'a> CommandView<'a> {
    /// `bytes` must be a frame [`RequestParser`] accepted (or [`encode_command`] produced).
    pub fn new(bytes: &'a [u8], argc: usize) -> Self {
        CommandView { bytes, argc }
    }

    pub fn argc(&self) -> usize {
        self.argc
    }

    /// The whole frame.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn args(&self) -> Args<'a> {
        let header = self.bytes.iter().position(|&b| b == b'\n').map_or(self.bytes.len(), |p| p + 1);
        Args { bytes: self.bytes, pos: header, left: self.argc }
    }

    pub fn arg(&self, index: usize) -> Option<&'a [u8]> {
        self.args().nth(index)
    }
}

/// Iterator over the arguments of a [`CommandView`].
#[derive(Clone)]
pub struct Args<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let rest = self.bytes.get(self.pos + 1..)?;
        let digits = rest.iter().position(|&b| b == b'\r')?;
        let len = parse_int(&rest[..digits])? as usize;
        let start = self.pos + 1 + digits + 2;
        let arg = self.bytes.get(start..start + len)?;
        self.pos = start + len + 2;
        self.left -= 1;
        Some(arg)
    }
}

#[cfg(test)]
mod tests;
