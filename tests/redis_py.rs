//! redis-py (Debian's python3-redis, installed by scripts/ensure-redis.sh) through the proxy,
//! where a behaviour is about what a client library does with what the proxy says: how it
//! classifies the proxy's errors, and whether it notices a lost session and rebuilds it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, config_for, free_port, until_reply};

/// The system Python, where Debian's python3-redis lives.
const PYTHON: &str = "/usr/bin/python3";

/// A Python script running with redis-py; its stdout lines arrive on a channel.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn start(code: &str, port: u16) -> Script {
        let mut child = Command::new(PYTHON)
            .args(["-u", "-c", code, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with redis-py must be installed (scripts/ensure-redis.sh installs python3-redis)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Script { child, stdin, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(PATIENCE).expect("a line from the script")
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// While Redis is down, the proxy's refusal is one redis-py takes for "Redis unavailable"
/// (a ConnectionError: its retries and the application's degradation run), not a command error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_takes_a_refusal_for_redis_being_unavailable() {
    let port = free_port();
    let redis = Redis::start_on(port);
    let proxy = Proxy::start(config_for(&redis.addr())).await;
    let mut raw = proxy.raw().await;
    redis.stop();
    until_reply(&mut raw, &["GET", "k"], "refused", |r| r.contains("circuit breaker open")).await;
    let script = Script::start(
        r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
try:
    r.get("k")
    print("answered")
except redis.exceptions.ConnectionError as e:
    print("ConnectionError", type(e).__name__)
except redis.exceptions.ResponseError as e:
    print("ResponseError", e)
"#,
        proxy.port(),
    );
    assert_eq!(script.line(), "ConnectionError BusyLoadingError");
    proxy.stop().await;
}

/// A subscriber whose subscription died with its upstream connection: the proxy closes the
/// client, redis-py reconnects and resubscribes by itself, and messages arrive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_py_subscriber_resubscribes_after_its_connection_is_killed() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut script = Script::start(
        r#"
import sys, time, redis
r = redis.Redis(port=int(sys.argv[1]))
p = r.pubsub()
p.subscribe("news")
p.get_message(timeout=5)
print("subscribed")
sys.stdin.readline()
deadline = time.time() + 10
while time.time() < deadline:
    try:
        m = p.get_message(timeout=0.2)
    except redis.exceptions.ConnectionError:
        continue
    if m and m["type"] == "message":
        print("got", m["data"].decode())
        break
else:
    print("nothing")
"#,
        proxy.port(),
    );
    assert_eq!(script.line(), "subscribed");
    let mut direct = Raw::connect(redis.addr()).await;
    assert!(call(&mut direct, &["CLIENT", "KILL", "TYPE", "pubsub"]).await.starts_with(':'));
    script.say("killed");
    // Published until the resubscribed client hears it.
    let deadline = Instant::now() + PATIENCE;
    let got = loop {
        call(&mut direct, &["PUBLISH", "news", "back"]).await;
        if let Ok(line) = script.lines.recv_timeout(Duration::from_millis(50)) {
            break line;
        }
        assert!(Instant::now() < deadline, "the subscriber never heard anything again");
    };
    assert_eq!(got, "got back");
    proxy.stop().await;
}
