//! The proxy's command table agrees with Redis's own metadata: every command (and subcommand)
//! the upstream's `COMMAND` lists is classified without contradicting Redis's flags and key
//! positions. A newer Redis with a new blocking or writing command fails this test until the
//! table knows it.

mod common;

use common::Redis;
use nearcache::command::{Class, Effect, KeySpec, classify, effect};
use nearcache::framing::{CommandView, encode_command};
use redis::Value;

/// One entry of `COMMAND`'s reply.
struct Info {
    name: String,
    arity: i64,
    flags: Vec<String>,
    first_key: i64,
    last_key: i64,
    step: i64,
    subcommands: Vec<Info>,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        _ => 0,
    }
}

fn parse(entry: &Value) -> Info {
    let Value::Array(fields) = entry else { panic!("COMMAND entry {entry:?}") };
    let list = |v: &Value| match v {
        Value::Array(items) | Value::Set(items) => items.clone(),
        _ => vec![],
    };
    Info {
        name: text(&fields[0]).to_lowercase(),
        arity: int(&fields[1]),
        flags: list(&fields[2]).iter().map(text).collect(),
        first_key: int(&fields[3]),
        last_key: int(&fields[4]),
        step: int(&fields[5]),
        subcommands: fields.get(9).map(|v| list(v).iter().map(parse).collect()).unwrap_or_default(),
    }
}

/// A plausible call: the name (and subcommand), then placeholders up to the arity.
fn call_of(info: &Info) -> Vec<String> {
    let mut args: Vec<String> = info.name.split('|').map(str::to_owned).collect();
    let arity = info.arity.unsigned_abs() as usize;
    while args.len() < arity.max(2) {
        args.push(format!("k{}", args.len()));
    }
    args
}

fn check(info: &Info, problems: &mut Vec<String>) {
    if !info.subcommands.is_empty() {
        for sub in &info.subcommands {
            check(sub, problems);
        }
        return;
    }
    let args = call_of(info);
    let bytes = encode_command(&args);
    let view = CommandView::new(&bytes, args.len());
    let (class, effect) = (classify(&view), effect(&view));
    let has = |flag: &str| info.flags.iter().any(|f| f == flag);
    let name = &info.name;
    let mut problem = |what: String| problems.push(format!("{name}: {what} (flags {:?})", info.flags));
    // A write must invalidate what it may change.
    if has("write") && !matches!(effect, Effect::Writes(_) | Effect::Flush) {
        problem(format!("Redis says write; the table says {effect:?}"));
    }
    // Only a read may be cached, and only its first argument is its key.
    if matches!(effect, Effect::CacheableRead | Effect::MultiGet) && (!has("readonly") || info.first_key != 1) {
        problem(format!("cached as {effect:?}, but not a read of the key at argument 1"));
    }
    match effect {
        Effect::Writes(KeySpec::First) if info.first_key != 1 => problem("first key is not argument 1".into()),
        Effect::Writes(KeySpec::Pairs) if info.step != 2 || info.last_key != -1 => {
            problem(format!("keys not every second argument (last {}, step {})", info.last_key, info.step))
        }
        _ => {}
    }
    // A command that may block never goes on a shared connection (XREAD/XREADGROUP block only
    // with BLOCK, which the table reads from the arguments).
    let conditional = matches!(name.as_str(), "xread" | "xreadgroup");
    if has("blocking") && !conditional && !matches!(class, Class::Blocking | Class::Stream) {
        problem(format!("Redis says blocking; the table says {class:?}"));
    }
    // Subscribing changes what the connection's replies are.
    if name.ends_with("subscribe") && !matches!(class, Class::Stream | Class::Unsubscribe) {
        problem(format!("a subscription command classified {class:?}"));
    }
}

#[tokio::test]
async fn every_command_of_the_upstream_is_classified_as_redis_describes_it() {
    let redis = Redis::start();
    let mut con = common::multiplexed(&redis.url()).await.unwrap();
    let Value::Array(entries) = redis::cmd("COMMAND").query_async::<Value>(&mut con).await.unwrap() else {
        panic!("COMMAND did not answer an array")
    };
    assert!(entries.len() > 200, "{} commands", entries.len());
    let mut problems = Vec::new();
    for entry in &entries {
        check(&parse(entry), &mut problems);
    }
    assert!(problems.is_empty(), "{} contradictions:\n{}", problems.len(), problems.join("\n"));
}
