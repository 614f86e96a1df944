//! What a command is, as far as the proxy is concerned: forwarded as is, answered by the proxy,
//! or in need of a pinned upstream connection because it leaves state on the connection.

use crate::framing::CommandView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Stateless on the connection: goes over the shared, pipelined connections.
    Ordinary,
    // Answered by the proxy for the client's own session.
    Hello,
    Auth,
    Select,
    Quit,
    Reset,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientInfo,
    ClientSetInfo,
    // Transactions: pinned from MULTI/WATCH until EXEC/DISCARD/UNWATCH end the state.
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// May block the connection for a long time: pinned until its reply arrives.
    Blocking,
    /// Turns the connection into a stream that is not one reply per request (pub/sub,
    /// MONITOR, CLIENT REPLY OFF|SKIP, CLIENT TRACKING ON, replication): pinned for good.
    Stream,
    /// Sets per-connection flags with no end command (CLIENT NO-EVICT, READONLY): pinned for good.
    Sticky,
}

/// Longest command or subcommand name we need to recognise.
const NAME_MAX: usize = 24;

/// ASCII-uppercases `arg` into `buf`; names longer than any we match come back empty.
fn upper<'b>(arg: &[u8], buf: &'b mut [u8; NAME_MAX]) -> &'b [u8] {
    if arg.len() > NAME_MAX {
        return &[];
    }
    let out = &mut buf[..arg.len()];
    out.copy_from_slice(arg);
    out.make_ascii_uppercase();
    out
}

pub fn classify(cmd: &CommandView<'_>) -> Class {
    let mut args = cmd.args();
    let Some(name) = args.next() else { return Class::Ordinary };
    let mut buf = [0u8; NAME_MAX];
    match upper(name, &mut buf) {
        b"GET" | b"SET" => Class::Ordinary,
        b"HELLO" => Class::Hello,
        b"AUTH" => Class::Auth,
        b"SELECT" => Class::Select,
        b"QUIT" => Class::Quit,
        b"RESET" => Class::Reset,
        b"CLIENT" => classify_client(args.next(), args.next()),
        b"MULTI" => Class::Multi,
        b"EXEC" => Class::Exec,
        b"DISCARD" => Class::Discard,
        b"WATCH" => Class::Watch,
        b"UNWATCH" => Class::Unwatch,
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX" | b"BZMPOP"
        | b"WAIT" | b"WAITAOF" => Class::Blocking,
        b"XREAD" | b"XREADGROUP" => classify_xread(args),
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"MONITOR" | b"SYNC" | b"PSYNC" => Class::Stream,
        b"READONLY" | b"READWRITE" => Class::Sticky,
        _ => Class::Ordinary,
    }
}

fn classify_client(sub: Option<&[u8]>, arg: Option<&[u8]>) -> Class {
    let Some(sub) = sub else { return Class::Ordinary };
    let mut buf = [0u8; NAME_MAX];
    let on_off = |arg: Option<&[u8]>, value: &[u8]| arg.is_some_and(|a| a.eq_ignore_ascii_case(value));
    match upper(sub, &mut buf) {
        b"SETNAME" => Class::ClientSetName,
        b"GETNAME" => Class::ClientGetName,
        b"ID" => Class::ClientId,
        b"INFO" => Class::ClientInfo,
        b"SETINFO" => Class::ClientSetInfo,
        b"REPLY" if on_off(arg, b"OFF") || on_off(arg, b"SKIP") => Class::Stream,
        b"TRACKING" if on_off(arg, b"ON") => Class::Stream,
        b"NO-EVICT" | b"NO-TOUCH" => Class::Sticky,
        _ => Class::Ordinary,
    }
}

/// XREAD and XREADGROUP block only with a BLOCK option (which comes before STREAMS).
fn classify_xread<'a>(args: impl Iterator<Item = &'a [u8]>) -> Class {
    for arg in args {
        if arg.eq_ignore_ascii_case(b"BLOCK") {
            return Class::Blocking;
        }
        if arg.eq_ignore_ascii_case(b"STREAMS") {
            break;
        }
    }
    Class::Ordinary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode_command;

    fn class_of(args: &[&str]) -> Class {
        let bytes = encode_command(args);
        classify(&CommandView::new(&bytes, args.len()))
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(class_of(&["get", "k"]), Class::Ordinary);
        assert_eq!(class_of(&["mUlTi"]), Class::Multi);
        assert_eq!(class_of(&["blpop", "q", "0"]), Class::Blocking);
    }

    #[test]
    fn client_subcommands() {
        assert_eq!(class_of(&["CLIENT", "setname", "x"]), Class::ClientSetName);
        assert_eq!(class_of(&["CLIENT", "REPLY", "off"]), Class::Stream);
        assert_eq!(class_of(&["CLIENT", "REPLY", "ON"]), Class::Ordinary);
        assert_eq!(class_of(&["CLIENT", "TRACKING", "on", "BCAST"]), Class::Stream);
        assert_eq!(class_of(&["CLIENT", "LIST"]), Class::Ordinary);
        assert_eq!(class_of(&["CLIENT"]), Class::Ordinary);
        assert_eq!(class_of(&["CLIENT", "NO-EVICT", "on"]), Class::Sticky);
    }

    #[test]
    fn xread_blocks_only_with_block() {
        assert_eq!(class_of(&["XREAD", "COUNT", "1", "STREAMS", "s", "0"]), Class::Ordinary);
        assert_eq!(class_of(&["XREAD", "BLOCK", "100", "STREAMS", "s", "$"]), Class::Blocking);
        // A stream named "block" is not an option.
        assert_eq!(class_of(&["XREAD", "STREAMS", "block", "0"]), Class::Ordinary);
        assert_eq!(class_of(&["XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "s", ">"]), Class::Blocking);
    }

    #[test]
    fn long_names_are_ordinary() {
        assert_eq!(class_of(&["A-VERY-LONG-COMMAND-NAME-INDEED"]), Class::Ordinary);
    }
}
