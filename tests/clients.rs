//! Real Redis tools through the proxy, and the `nearcache` binary itself.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, free_port};

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `program -p <port> args...` on a blocking thread.
async fn tool(program: &'static str, port: u16, args: &[&str]) -> (bool, String) {
    let mut all: Vec<String> = vec!["-p".into(), port.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run(program, &all)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_prints_the_same_through_the_proxy_as_directly() {
    // Two servers in the same state: one behind the proxy, one used directly.
    let redis = Redis::start();
    let reference = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let commands: [&[&str]; 9] = [
        &["SET", "greeting", "hello world"],
        &["GET", "greeting"],
        &["-3", "HSET", "h", "f", "v"],
        &["-3", "HGETALL", "h"],
        &["-3", "GET", "nothing"],
        &["-n", "3", "SET", "in3", "yes"],
        &["-n", "3", "GET", "in3"],
        &["LPUSH", "list"],
        &["CONFIG", "GET", "maxmemory"],
    ];
    for args in commands {
        let through = tool("redis-cli", proxy.port(), args).await;
        let direct = tool("redis-cli", reference.port, args).await;
        assert_eq!(through, direct, "redis-cli {args:?}");
    }
    let (ok, info) = tool("redis-cli", proxy.port(), &["INFO", "server"]).await;
    assert!(ok && info.contains("redis_version:"), "INFO goes to Redis: {info}");
    let mut direct = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut direct, &["SELECT", "3"]).await, "+OK\r\n");
    assert_eq!(call(&mut direct, &["GET", "in3"]).await, "$3\r\nyes\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_runs_clean_in_resp2_and_resp3() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let tests = "ping_inline,ping_mbulk,set,get,incr,lpush,rpop,sadd,hset,spop,zadd,lrange_100,mset";
    let runs: [&[&str]; 3] = [
        &["-t", tests, "-n", "2000", "-c", "10", "-q"],
        &["-3", "-t", tests, "-n", "2000", "-c", "10", "-q"],
        &["-t", "set,get", "-n", "20000", "-c", "20", "-P", "16", "-q"],
    ];
    let results = |out: &str| out.split(['\r', '\n']).filter(|l| l.contains("requests per second")).count();
    for args in runs {
        let (ok, out) = tool("redis-benchmark", proxy.port(), args).await;
        assert!(ok, "redis-benchmark {args:?} failed: {out}");
        assert!(!out.contains("rror"), "redis-benchmark {args:?} saw an error: {out}");
        let (_, direct) = tool("redis-benchmark", redis.port, args).await;
        assert!(results(&out) >= 2, "{out}");
        assert_eq!(results(&out), results(&direct), "every test finished: {out}");
    }
    proxy.stop().await;
}

#[test]
fn check_accepts_the_shipped_config_and_names_errors() {
    let bin = env!("CARGO_BIN_EXE_nearcache");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let (ok, out) = run(bin, &["--config", shipped, "--check"]);
    assert!(ok && out.contains("ok"), "{out}");

    let bad = std::env::temp_dir().join(format!("nearcache-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[upstream]\naddress = \"127.0.0.1:6379\"\ncommand_timout = \"1s\"\n").unwrap();
    let out = Command::new(bin).args(["--config", bad.to_str().unwrap(), "--check"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains(bad.to_str().unwrap()) && err.contains("line 3") && err.contains("command_timout"), "{err}");

    std::fs::write(&bad, "[listen]\nmax_request_size = \"lots\"\n").unwrap();
    let (ok, out) = run(bin, &["--config", bad.to_str().unwrap(), "--check"]);
    assert!(!ok && out.contains("invalid size \"lots\""), "{out}");
    let (ok, out) = run(bin, &["--upstream", "nowhere", "--check"]);
    assert!(!ok && out.contains("upstream.address"), "{out}");
    std::fs::remove_file(&bad).unwrap();
}

/// A service manager must see a proxy that cannot start fail: non-zero, with the reason.
#[test]
fn a_proxy_that_cannot_start_exits_non_zero_with_the_reason() {
    let bin = env!("CARGO_BIN_EXE_nearcache");
    let config = std::env::temp_dir().join(format!("nearcache-tls-{}.toml", std::process::id()));
    let listen = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "[listen]\naddress = \"{listen}\"\ntls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n"
    );
    std::fs::write(&config, text).unwrap();
    // `timeout`: were it to start, it would serve until killed.
    let (ok, out) = run("timeout", &["60", bin, "--config", config.to_str().unwrap()]);
    assert!(!ok && out.contains("tls_cert_file") && out.contains("cannot start"), "{out}");
    let (ok, out) = run(bin, &["--config", config.to_str().unwrap(), "--check"]);
    assert!(!ok && out.contains("tls_cert_file"), "--check reads the files too: {out}");
    std::fs::remove_file(&config).unwrap();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (ok, out) = run("timeout", &["60", bin, "--listen", &address]);
    assert!(!ok && out.contains("cannot listen"), "{out}");
}

#[test]
fn the_binary_serves_and_stops_gracefully_on_sigterm() {
    let redis = Redis::start();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args(["--config", concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &redis.addr()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (ok, out) = run("redis-cli", &["-p", &port.to_string(), "PING"]);
        if ok && out.trim() == "PONG" {
            break;
        }
        assert!(Instant::now() < deadline, "the proxy did not start: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, out) = run("sh", &["-c", &format!("kill -TERM {}", child.id())]);
    assert!(out.is_empty(), "{out}");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
