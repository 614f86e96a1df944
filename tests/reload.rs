//! Hot reload: a changed proxy.toml applied under traffic without a client error, an invalid
//! file refused with the running configuration kept, SIGHUP on the real binary.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, Proxy, Raw, Redis, call, calls, free_port, until_reply, wait_for_caching};
use nearcache::config::Config;

/// A proxy.toml of the test's own, removed on drop.
struct File(PathBuf);

impl File {
    fn new(name: &str) -> File {
        File(std::env::temp_dir().join(format!("nearcache-{name}-{}.toml", std::process::id())))
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn toml(redis: &Redis, rules: &str) -> String {
    format!("[upstream]\naddress = \"{}\"\n\n{rules}", redis.addr())
}

const HOT_NONE: &str = "[[rule]]\npattern = \"hot:*\"\ncache = \"none\"\n";
const HOT_TRACKED_USER_TTL: &str =
    "[[rule]]\npattern = \"hot:*\"\ncache = \"tracked\"\n\n[[rule]]\npattern = \"user:*\"\nlocal_ttl = \"1s\"\n";

#[tokio::test]
async fn a_rule_change_applies_under_traffic_without_a_client_error() {
    let redis = Redis::start();
    let file = File::new("rules");
    file.write(&toml(&redis, HOT_NONE));
    let proxy = Proxy::start(Config::load(&file.0).unwrap()).await;
    let mut admin = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut admin, &mut direct).await;
    for key in ["hot:1", "user:1", "item:1"] {
        call(&mut direct, &["SET", key, "v"]).await;
        call(&mut admin, &["GET", key]).await;
    }
    let gets = calls(&mut direct, "get").await;
    call(&mut admin, &["GET", "hot:1"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets + 1, "hot:* is not cached yet");

    // Clients keep reading and writing through the reload.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let done = Arc::new(AtomicU64::new(0));
    let mut traffic = Vec::new();
    for t in 0..4 {
        let mut raw = proxy.raw().await;
        let (stopped, done) = (stopped.clone(), Arc::clone(&done));
        traffic.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !*stopped.borrow() {
                let key = format!("hot:{}", n % 10);
                let value = format!("{t}-{n}");
                assert_eq!(call(&mut raw, &["SET", &key, &value]).await, "+OK\r\n");
                let read = call(&mut raw, &["GET", &key]).await;
                assert!(read.starts_with('$') && !read.starts_with("$-1"), "{read}");
                assert_eq!(call(&mut raw, &["GET", "user:1"]).await, "$1\r\nv\r\n");
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            n
        }));
    }
    let rounds = |at_least: u64| {
        let done = Arc::clone(&done);
        async move {
            let deadline = Instant::now() + PATIENCE;
            while done.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    rounds(100).await;
    file.write(&toml(&redis, HOT_TRACKED_USER_TTL));
    let summary = call(&mut admin, &["PROXY", "CONFIG", "RELOAD"]).await;
    assert!(summary.contains("reloaded:") && summary.contains("rules changed"), "{summary}");
    assert!(!summary.contains("restart"), "{summary}");
    let after = done.load(Ordering::Relaxed) + 100;
    rounds(after).await;
    stop.send(true).unwrap();
    for task in traffic {
        assert!(task.await.expect("no client saw an error") > 0);
    }

    // The new rules: hot:* is cached now; user:1's rule changed, so its entry was dropped;
    // item:1's did not.
    call(&mut admin, &["GET", "hot:1"]).await;
    let gets = calls(&mut direct, "get").await;
    call(&mut admin, &["GET", "hot:1"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets, "hot:* is cached after the reload");
    let rule = call(&mut admin, &["PROXY", "CACHE", "INSPECT", "user:9"]).await;
    assert!(rule.contains("rule_local_ttl_ms:1000"), "{rule}");
    assert!(call(&mut admin, &["PROXY", "CACHE", "INSPECT", "item:1"]).await.contains("cached:1"));
    let config = call(&mut admin, &["PROXY", "CONFIG", "GET", "rule.0.cache"]).await;
    assert_eq!(config, "*2\r\n$12\r\nrule.0.cache\r\n$7\r\ntracked\r\n");
}

#[tokio::test]
async fn a_reload_drops_the_entries_whose_rule_changed() {
    let redis = Redis::start();
    let file = File::new("flush");
    file.write(&toml(&redis, ""));
    let proxy = Proxy::start(Config::load(&file.0).unwrap()).await;
    let mut admin = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut admin, &mut direct).await;
    for key in ["user:1", "user:2", "item:1"] {
        call(&mut direct, &["SET", key, "v"]).await;
        call(&mut admin, &["GET", key]).await;
    }
    file.write(&toml(&redis, "[[rule]]\npattern = \"user:*\"\nlocal_ttl = \"1s\"\n"));
    let summary = call(&mut admin, &["PROXY", "CONFIG", "RELOAD"]).await;
    assert!(summary.contains("rules changed, 2 cached key(s) dropped"), "{summary}");
    assert!(call(&mut admin, &["PROXY", "CACHE", "INSPECT", "user:1"]).await.contains("cached:0"));
    assert!(call(&mut admin, &["PROXY", "CACHE", "INSPECT", "item:1"]).await.contains("cached:1"));
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_running_configuration_stays() {
    let redis = Redis::start();
    let file = File::new("invalid");
    file.write(&toml(&redis, "[cache]\nmax_memory = \"64MiB\"\n"));
    let proxy = Proxy::start(Config::load(&file.0).unwrap()).await;
    let mut admin = proxy.raw().await;
    file.write(&toml(&redis, "[cache]\nmax_memory = \"lots\"\n"));
    let refused = call(&mut admin, &["PROXY", "CONFIG", "RELOAD"]).await;
    assert!(refused.starts_with("-ERR configuration reload refused, the running configuration stays: "), "{refused}");
    assert!(refused.contains(file.0.to_str().unwrap()) && refused.contains("invalid size \"lots\""), "{refused}");
    file.write(&toml(&redis, "[breaker]\nwindow = 0\n"));
    let refused = call(&mut admin, &["PROXY", "CONFIG", "RELOAD"]).await;
    assert!(refused.contains("breaker.window: 0 is out of range"), "{refused}");
    let kept = call(&mut admin, &["PROXY", "CONFIG", "GET", "cache.max_memory"]).await;
    assert!(kept.contains("64MiB"), "{kept}");

    // A valid file: the cache size applies; an address change needs a restart.
    file.write("[upstream]\naddress = \"127.0.0.1:1\"\n[cache]\nmax_memory = \"2MiB\"\n");
    let summary = call(&mut admin, &["PROXY", "CONFIG", "RELOAD"]).await;
    assert!(summary.contains("needs a restart to take effect: upstream.address"), "{summary}");
    let info = call(&mut admin, &["PROXY", "INFO", "cache"]).await;
    assert!(info.contains(&format!("cache_max_bytes:{}\r\n", 2 << 20)), "{info}");
    // Still serving through the old upstream, and PROXY CONFIG GET says so: it shows the values
    // in effect, the new cache size and the running address.
    assert_eq!(call(&mut admin, &["SET", "k", "v"]).await, "+OK\r\n");
    let running = call(&mut admin, &["PROXY", "CONFIG", "GET", "upstream.address"]).await;
    assert!(running.contains(&redis.addr()) && !running.contains("127.0.0.1:1\r\n"), "{running}");
    assert!(call(&mut admin, &["PROXY", "CONFIG", "GET", "cache.max_memory"]).await.contains("2MiB"));
    // Reloading the same file again still reports what waits for a restart.
    let summary = call(&mut admin, &["PROXY", "CONFIG", "RELOAD"]).await;
    assert!(summary.contains("needs a restart to take effect: upstream.address"), "{summary}");
}

#[test]
fn sighup_reloads_the_running_binary() {
    let redis = Redis::start();
    let file = File::new("sighup");
    file.write(&toml(&redis, HOT_NONE));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args(["--config", file.0.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + PATIENCE;
        let mut admin = loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                break Raw::from_stream(stream);
            }
            assert!(Instant::now() < deadline, "the proxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let get = ["PROXY", "CONFIG", "GET", "rule.0.cache"];
        assert!(call(&mut admin, &get).await.contains("none"));
        file.write(&toml(&redis, HOT_TRACKED_USER_TTL));
        let hup = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
        assert!(hup.success());
        until_reply(&mut admin, &get, "reloaded by SIGHUP", |reply| reply.contains("tracked")).await;
        // The connection survived the reload.
        assert_eq!(call(&mut admin, &["PING"]).await, "+PONG\r\n");
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
