//! The proxy's command table agrees with Redis's own metadata: every command (and subcommand)
//! the upstream's `COMMAND` lists has a line, with Redis's arity, flags and key positions, and
//! for a plausible call of each, the keys the table finds are the keys `COMMAND GETKEYS` finds.
//! A newer Redis with a new command fails this test until the table knows it.

mod common;

use common::Redis;
use nearcache::command::{Class, Command, Conn, Data, Effect, Keys, TABLE, key_args, lookup};
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

impl Info {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
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

/// A plausible call: written out for commands whose keys depend on their options, else the name
/// (and subcommand), then placeholders up to the arity.
fn call_of(info: &Info) -> Vec<String> {
    let written: &[&str] = match info.name.as_str() {
        "eval" | "eval_ro" | "evalsha" | "evalsha_ro" | "fcall" | "fcall_ro" => &["f", "2", "a", "b", "x"],
        "lmpop" | "zmpop" => &["2", "a", "b", "LEFT"],
        "blmpop" | "bzmpop" => &["0", "2", "a", "b", "LEFT"],
        "sintercard" | "zintercard" | "zdiff" | "zinter" | "zunion" => &["2", "a", "b"],
        "zdiffstore" | "zinterstore" | "zunionstore" => &["d", "2", "a", "b"],
        "sort" | "sort_ro" => &["a", "BY", "p", "GET", "q", "STORE", "d"],
        "georadius" => &["a", "0", "0", "1", "m", "STORE", "d"],
        "georadiusbymember" => &["a", "m", "1", "m", "STORE", "d"],
        "xread" => &["COUNT", "1", "STREAMS", "a", "b", "0", "0"],
        "xreadgroup" => &["GROUP", "g", "c", "STREAMS", "a", "b", "0", "0"],
        "migrate" => &["h", "1", "", "0", "5", "KEYS", "a", "b"],
        "pfmerge" => &["d", "a", "b"],
        _ => &[],
    };
    let mut args: Vec<String> = info.name.split('|').map(str::to_owned).collect();
    if !written.is_empty() {
        args.extend(written.iter().map(|a| a.to_string()));
        return args;
    }
    let arity = info.arity.unsigned_abs() as usize;
    while args.len() < arity.max(2) {
        args.push(format!("k{}", args.len()));
    }
    args
}

/// What `COMMAND GETKEYS` says the call's keys are (none when Redis says it has none).
async fn redis_keys(con: &mut redis::aio::MultiplexedConnection, call: &[String]) -> Result<Vec<String>, String> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS").arg(call);
    match cmd.query_async::<Vec<String>>(con).await {
        Ok(keys) => Ok(keys),
        Err(e) if e.to_string().contains("no key arguments") => Ok(vec![]),
        Err(e) => Err(e.to_string()),
    }
}

struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn problem(&mut self, info: &Info, what: String) {
        self.problems.push(format!("{}: {what} (flags {:?})", info.name, info.flags));
    }

    /// A top-level command: its line agrees with Redis's description.
    fn line(&mut self, info: &Info, command: &Command) {
        let spec = &command.spec;
        if i64::from(spec.arity) != info.arity {
            self.problem(info, format!("arity {} in the table, {} in Redis", spec.arity, info.arity));
        }
        let movable = info.has("movablekeys");
        // Containers (XGROUP, OBJECT, ...) have their key positions on their subcommands.
        let range = info
            .subcommands
            .iter()
            .find(|s| s.first_key > 0)
            .map_or((info.first_key, info.last_key, info.step), |s| (s.first_key, s.last_key, s.step));
        match spec.keys {
            Keys::Range { first, last, step }
                if movable || (i64::from(first), i64::from(last), i64::from(step)) != range =>
            {
                self.problem(info, format!("keys {:?} in the table, {range:?} in Redis", spec.keys))
            }
            Keys::None if range.0 != 0 || movable => self.problem(info, "keys none in the table".into()),
            Keys::NumKeys { .. } | Keys::StoreNumKeys | Keys::Script | Keys::Unknown if !movable && range.0 == 0 => {
                self.problem(info, format!("keys {:?} in the table, none in Redis", spec.keys))
            }
            _ => {}
        }
        // Only a read may be cached, and only its first argument is its key.
        if matches!(spec.data, Data::Cached | Data::Exists | Data::MultiGet) && (!info.has("readonly") || range.0 != 1)
        {
            self.problem(info, format!("{:?}, but not a read of the key at argument 1", spec.data));
        }
        // A command that changes keys must say so, or the tier would not know (a container is
        // read-only when every subcommand with keys is).
        let pubsub_or_watch = info.has("pubsub") || info.name == "watch";
        let keyed = info.subcommands.iter().filter(|s| s.first_key > 0);
        let readonly =
            info.has("readonly") || (!info.subcommands.is_empty() && keyed.clone().all(|s| s.has("readonly")));
        if spec.data == Data::Unchanged && !readonly && range.0 != 0 && !pubsub_or_watch {
            self.problem(info, "has keys and is not read-only, but the table says it changes none".into());
        }
    }

    /// One call of a command or subcommand: its class and effect agree with Redis's flags, and
    /// its keys with `COMMAND GETKEYS`.
    fn call(&mut self, info: &Info, call: &[String], redis_keys: Result<Vec<String>, String>) {
        let bytes = encode_command(call);
        let view = CommandView::new(&bytes, call.len());
        let command = lookup(call[0].as_bytes());
        let (class, effect) = (command.class(&view), command.effect(&view));
        if info.has("write") && !matches!(effect, Effect::Writes(_) | Effect::Flush) {
            self.problem(info, format!("Redis says write; the table says {effect:?}"));
        }
        // A command that may block never goes on a shared connection (XREAD/XREADGROUP block only
        // with BLOCK, which the table reads from the arguments).
        if info.has("blocking")
            && command.spec.conn != Conn::BlockOption
            && !matches!(class, Class::Blocking | Class::Stream)
        {
            self.problem(info, format!("Redis says blocking; the table says {class:?}"));
        }
        // Subscribing changes what the connection's replies are.
        if info.name.ends_with("subscribe") && !matches!(class, Class::Stream | Class::Unsubscribe) {
            self.problem(info, format!("a subscription command classified {class:?}"));
        }
        let ours: Vec<String> =
            key_args(&view, command.spec.keys).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        match redis_keys {
            // Shard channels have key positions (they hash to slots) but are not keys.
            Ok(theirs) if info.has("pubsub") && theirs.is_empty() => {}
            // Every argument may be a key: a superset is the promise.
            Ok(theirs) if command.spec.keys == Keys::Unknown => {
                if let Some(missing) = theirs.iter().find(|k| !ours.contains(k)) {
                    self.problem(info, format!("{call:?}: key {missing} not among the table's {ours:?}"));
                }
            }
            Ok(theirs) if theirs != ours => {
                self.problem(info, format!("{call:?}: keys {ours:?} in the table, {theirs:?} in Redis"))
            }
            Ok(_) => {}
            Err(e) => self.problem(info, format!("{call:?}: COMMAND GETKEYS failed: {e}")),
        }
    }
}

#[tokio::test]
async fn every_command_of_the_upstream_is_in_the_table_as_redis_describes_it() {
    let redis = Redis::start();
    let mut con = common::multiplexed(&redis.url()).await.unwrap();
    let Value::Array(entries) = redis::cmd("COMMAND").query_async::<Value>(&mut con).await.unwrap() else {
        panic!("COMMAND did not answer an array")
    };
    assert!(entries.len() > 200, "{} commands", entries.len());
    let mut checker = Checker { problems: Vec::new() };
    let mut known = 0;
    for info in entries.iter().map(parse) {
        let command = lookup(info.name.as_bytes());
        if command == Command::OTHER {
            checker.problem(&info, "not in the table".into());
            continue;
        }
        known += 1;
        checker.line(&info, &command);
        let calls: Vec<&Info> =
            if info.subcommands.is_empty() { vec![&info] } else { info.subcommands.iter().collect() };
        for sub in calls {
            let call = call_of(sub);
            // Subcommands without keys: GETKEYS refuses some of them for other reasons.
            let keys = if sub.first_key == 0 && !sub.has("movablekeys") && sub.name.contains('|') {
                Ok(vec![])
            } else {
                redis_keys(&mut con, &call).await
            };
            checker.call(sub, &call, keys);
        }
    }
    let problems = checker.problems;
    assert!(problems.is_empty(), "{} contradictions:\n{}", problems.len(), problems.join("\n"));
    // The table names a few commands newer than this Redis, and the proxy's own PROXY.
    assert!(TABLE.len() >= known && TABLE.len() - known < 20, "{} lines, {known} in Redis", TABLE.len());
}
