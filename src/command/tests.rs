//! The table's lookups and its per-call answers.

use super::*;
use crate::framing::encode_command;

fn class_of(args: &[&str]) -> Class {
    let bytes = encode_command(args);
    let cmd = CommandView::new(&bytes, args.len());
    lookup(cmd.arg(0).unwrap_or_default()).class(&cmd)
}

#[test]
fn names_are_case_insensitive() {
    assert_eq!(class_of(&["get", "k"]), Class::Ordinary);
    assert_eq!(class_of(&["mUlTi"]), Class::Multi);
    assert_eq!(class_of(&["blpop", "q", "0"]), Class::Blocking);
}

#[test]
fn commands_without_one_reply_each_never_go_shared() {
    for cmd in [&["UNSUBSCRIBE"][..], &["punsubscribe", "a", "b"], &["SUNSUBSCRIBE", "x"]] {
        assert_eq!(class_of(cmd), Class::Unsubscribe, "{cmd:?}");
    }
    assert_eq!(class_of(&["REPLCONF", "ACK", "0"]), Class::Stream);
    assert_eq!(class_of(&["script", "kill"]), Class::Interrupt);
    assert_eq!(class_of(&["FUNCTION", "KILL"]), Class::Interrupt);
    assert_eq!(class_of(&["FUNCTION", "LIST"]), Class::Ordinary);
    assert_eq!(class_of(&["SHUTDOWN", "NOSAVE"]), Class::Interrupt);
    assert_eq!(class_of(&["EVAL", "return 1", "0"]), Class::Blocking);
    assert_eq!(class_of(&["fcall_ro", "f", "0"]), Class::Blocking);
}

#[test]
fn client_subcommands() {
    assert_eq!(class_of(&["CLIENT", "setname", "x"]), Class::ClientSetName);
    assert_eq!(class_of(&["CLIENT", "REPLY", "off"]), Class::Stream);
    assert_eq!(class_of(&["CLIENT", "REPLY", "ON"]), Class::Ordinary);
    assert_eq!(class_of(&["CLIENT", "TRACKING", "on", "BCAST"]), Class::Sticky, "counted, pushes passed on");
    // Never on a shared connection, where Redis tracks keys for the tier.
    for sub in [
        &["CLIENT", "TRACKING", "off"][..],
        &["CLIENT", "CACHING", "yes"],
        &["CLIENT", "GETREDIR"],
        &["CLIENT", "TRACKINGINFO"],
    ] {
        assert_eq!(class_of(sub), Class::Sticky, "{sub:?}");
    }
    assert_eq!(class_of(&["CLIENT", "LIST"]), Class::ClientList);
    assert_eq!(class_of(&["client", "kill", "id", "3"]), Class::ClientKill);
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

fn effect_of(args: &[&str]) -> (Effect, Vec<String>) {
    let bytes = encode_command(args);
    let view = CommandView::new(&bytes, args.len());
    let effect = lookup(view.arg(0).unwrap()).effect(&view);
    let keys = match effect {
        Effect::Writes(keys) => written_keys(&view, keys).map(|k| String::from_utf8_lossy(k).into_owned()).collect(),
        _ => vec![],
    };
    (effect, keys)
}

fn keys_of(args: &[&str]) -> Vec<String> {
    let bytes = encode_command(args);
    let view = CommandView::new(&bytes, args.len());
    key_args(&view, lookup(view.arg(0).unwrap()).spec.keys).map(|k| String::from_utf8_lossy(k).into_owned()).collect()
}

#[test]
fn tier_effects() {
    assert_eq!(effect_of(&["get", "k"]).0, Effect::CacheableRead);
    assert_eq!(effect_of(&["GET"]).0, Effect::Nothing, "malformed: Redis refuses it, nothing to cache");
    assert_eq!(effect_of(&["GET", "a", "b"]).0, Effect::Nothing, "malformed");
    assert_eq!(effect_of(&["EXISTS", "k"]).0, Effect::CacheableRead);
    assert_eq!(effect_of(&["EXISTS", "a", "b"]).0, Effect::Nothing);
    assert_eq!(effect_of(&["TTL", "k"]).0, Effect::Nothing);
    assert_eq!(effect_of(&["MGET", "a", "b"]).0, Effect::MultiGet);
    assert_eq!(effect_of(&["FLUSHALL", "ASYNC"]).0, Effect::Flush);
    assert_eq!(effect_of(&["SET", "k", "v", "EX", "5"]).1, vec!["k"]);
    assert_eq!(effect_of(&["MSET", "a", "1", "b", "2"]).1, vec!["a", "b"]);
    assert_eq!(effect_of(&["DEL", "a", "b"]).1, vec!["a", "b"]);
    assert_eq!(effect_of(&["RENAME", "a", "b"]).1, vec!["a", "b"]);
    assert_eq!(effect_of(&["XGROUP", "CREATE", "s", "g", "$"]).1, vec!["s"]);
    // A script may write keys it was not given: every argument, which includes its keys.
    let (effect, keys) = effect_of(&["EVAL", "return 1", "2", "k1", "k2", "arg"]);
    assert_eq!(effect, Effect::Writes(Keys::Script));
    assert_eq!(keys, vec!["return 1", "2", "k1", "k2", "arg"]);
    // Unknown names: shared, and any argument may be a written key.
    assert_eq!(effect_of(&["NOSUCH", "a", "b"]), (Effect::Writes(Keys::Unknown), vec!["a".into(), "b".into()]));
}

#[test]
fn key_positions() {
    assert_eq!(keys_of(&["EVAL", "return 1", "2", "k1", "k2", "arg"]), vec!["k1", "k2"]);
    assert_eq!(keys_of(&["BLPOP", "a", "b", "0"]), vec!["a", "b"]);
    assert_eq!(keys_of(&["LMPOP", "2", "a", "b", "LEFT"]), vec!["a", "b"]);
    assert_eq!(keys_of(&["BLMPOP", "0", "1", "a", "LEFT"]), vec!["a"]);
    assert_eq!(keys_of(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]), vec!["d", "a", "b"]);
    assert_eq!(keys_of(&["MSET", "a", "1", "b", "2"]), vec!["a", "b"]);
    assert_eq!(keys_of(&["PING"]), Vec::<String>::new());
    // A count larger than the arguments: only what is there.
    assert_eq!(keys_of(&["LMPOP", "9", "a"]), vec!["a"]);
    assert_eq!(keys_of(&["LMPOP", "-1", "a"]), Vec::<String>::new());
}

#[test]
fn lookup_finds_every_line_and_nothing_else() {
    assert!(TABLE.windows(2).all(|w| w[0].name < w[1].name), "TABLE must stay sorted");
    for (slot, spec) in TABLE.iter().enumerate() {
        assert_eq!(lookup(spec.name.as_bytes()).slot, slot, "{}", spec.name);
        assert_eq!(lookup(spec.name.to_lowercase().as_bytes()).slot, slot, "{}", spec.name);
    }
    assert_eq!(TABLE[lookup(b"ZsCoRe").slot].name, "ZSCORE");
    assert_eq!(lookup(b"GEORADIUSBYMEMBER_RO").spec.name, "GEORADIUSBYMEMBER_RO");
    for other in [&b"NOSUCHCOMMAND"[..], b"A-VERY-LONG-COMMAND-NAME-INDEED", b"GET\0", b"", b"GE"] {
        assert_eq!(lookup(other), Command::OTHER, "{}", String::from_utf8_lossy(other));
    }
}

#[test]
fn long_names_are_ordinary() {
    assert_eq!(class_of(&["A-VERY-LONG-COMMAND-NAME-INDEED"]), Class::Ordinary);
}

#[test]
fn uppercasing_eight_bytes_at_once_matches_the_bytewise_one() {
    for b in 0..=255u8 {
        let word = u64::from_le_bytes([b, b'a', b'z', b'`', b'{', b'A', 0xE1, b]);
        let expected = u64::from_le_bytes(word.to_le_bytes().map(|b| b.to_ascii_uppercase()));
        assert_eq!(upper_word(word), expected, "byte {b:#x}");
    }
}
