//! Operating the proxy: Prometheus metrics after a known workload, `PROXY INFO` agreeing with
//! them, the `PROXY` admin commands and their password.

mod common;

use std::collections::HashMap;

use common::{Proxy, Raw, Redis, call, calls, config_for, free_port, until_reply, wait_for_caching};
use nearcache::config::Rule;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP GET; the status line and the body.
async fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Samples of a Prometheus text body: `name{labels}` -> value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(name, value)| (name.to_owned(), value.parse().unwrap()))
        .collect()
}

async fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    samples(&body)
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, name: &str) -> f64 {
    after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

/// Redis, a proxy with metrics on a port of its own and a rule (a TTL rule for `session:*`
/// unless given), a client through it (reads cached already) and one straight to Redis; the
/// metrics address.
struct Setup {
    _redis: Redis,
    _proxy: Proxy,
    client: Raw,
    direct: Raw,
    metrics: String,
}

async fn setup() -> Setup {
    setup_with(Rule { pattern: "session:*".into(), default_ttl: Some("1h".parse().unwrap()), ..Rule::default() }).await
}

async fn setup_with(rule: Rule) -> Setup {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    let metrics = format!("127.0.0.1:{}", free_port());
    config.metrics.address = metrics.clone();
    config.rule.push(rule);
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut client, &mut direct).await;
    Setup { _redis: redis, _proxy: proxy, client, direct, metrics }
}

/// A number from `PROXY INFO` (`name:value`).
fn info_number(info: &str, name: &str) -> i64 {
    let line = info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'));
    line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {name} in {info}"))
}

#[tokio::test]
async fn clients_that_leave_leave_no_tasks_or_connections_behind() {
    let Setup { _redis, _proxy: proxy, mut client, mut direct, metrics } = setup().await;
    let info = call(&mut client, &["PROXY", "INFO", "proxy"]).await;
    let (tasks, before) = (info_number(&info, "tasks_alive"), scrape(&metrics).await);
    assert!(tasks > 0, "{info}");
    // Every kind of client: plain reads and writes, a transaction (a pinned connection), a
    // subscriber, a blocked pop, a pipeline left unread, a half-sent request.
    for round in 0..5 {
        let mut kinds = Vec::new();
        for kind in 0..6 {
            let mut raw = proxy.raw().await;
            let key = format!("leak:{round}:{kind}");
            match kind {
                0 => {
                    raw.cmd(&[b"SET", key.as_bytes(), b"v"]).await;
                    raw.cmd(&[b"GET", key.as_bytes()]).await;
                    raw.reply().await;
                    raw.reply().await;
                }
                1 => {
                    for args in
                        [&[&b"WATCH"[..], key.as_bytes()][..], &[b"MULTI"], &[b"INCR", key.as_bytes()], &[b"EXEC"]]
                    {
                        raw.cmd(args).await;
                        raw.reply().await;
                    }
                }
                2 => {
                    raw.cmd(&[b"SUBSCRIBE", key.as_bytes()]).await;
                    raw.reply().await;
                }
                3 => raw.cmd(&[b"BLPOP", key.as_bytes(), b"0"]).await,
                4 => raw.send(&b"*1\r\n$4\r\nPING\r\n".repeat(1000)).await,
                _ => raw.send(b"*2\r\n$3\r\nGET\r\n$10\r\nleak:").await,
            }
            kinds.push(raw);
        }
        drop(kinds);
    }
    let info = until_reply(&mut client, &["PROXY", "INFO", "proxy"], "back to the tasks at start", |info| {
        info_number(info, "tasks_alive") == tasks
    })
    .await;
    assert_eq!(info_number(&info, "connected_clients"), 1, "{info}");
    // Redis let go of the blocked pops with them.
    until_reply(&mut direct, &["INFO", "clients"], "no blocked client in Redis", |info| {
        info_number(info, "blocked_clients") == 0
    })
    .await;
    let after = scrape(&metrics).await;
    assert_eq!(after["nearcache_upstream_connections"], before["nearcache_upstream_connections"]);
    // A scrape is served by a task of its own, counted in both.
    assert_eq!(after["nearcache_tasks_alive"], before["nearcache_tasks_alive"]);
}

#[tokio::test]
async fn metrics_add_up_after_a_known_workload() {
    let Setup { _redis, _proxy, mut client, mut direct, metrics } = setup().await;
    let before = scrape(&metrics).await;
    let gets = calls(&mut direct, "get").await;

    call(&mut client, &["SET", "user:1", "alice"]).await;
    for _ in 0..10 {
        assert_eq!(call(&mut client, &["GET", "user:1"]).await, "$5\r\nalice\r\n");
    }
    for i in 0..3 {
        call(&mut client, &["SET", &format!("session:{i}"), "x"]).await;
    }
    call(&mut client, &["NOSUCHCOMMAND"]).await;
    call(&mut client, &["CLIENT", "SETNAME", "metrics-test"]).await;
    let after = scrape(&metrics).await;

    let requests = |command: &str, outcome: &str| {
        delta(&before, &after, &format!("nearcache_requests_total{{command=\"{command}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(requests("SET", "forwarded"), 4.0);
    assert_eq!(requests("GET", "miss"), 1.0);
    assert_eq!(requests("GET", "hit"), 9.0);
    assert_eq!(requests("other", "forwarded"), 1.0, "unknown names count as other");
    assert_eq!(requests("CLIENT", "local"), 1.0);
    assert_eq!(delta(&before, &after, "nearcache_cache_lookups_total{result=\"hit\"}"), 9.0);
    assert_eq!(delta(&before, &after, "nearcache_cache_lookups_total{result=\"miss\"}"), 1.0);
    assert_eq!(delta(&before, &after, "nearcache_cache_fills_total"), 1.0);
    assert_eq!(delta(&before, &after, "nearcache_ttl_writes_total{action=\"enforced\"}"), 3.0);
    // Redis saw exactly the misses: the hits never reached it.
    assert_eq!(calls(&mut direct, "get").await, gets + 1);
    assert_eq!(after["nearcache_clients_connected"], 1.0);
    assert!(after["nearcache_cache_entries"] >= 1.0 && after["nearcache_cache_bytes"] > 0.0);
    assert_eq!(after["nearcache_breaker_state"], 0.0);
    // Shared connections (4 in db 0) and the tracking connection.
    assert!(after["nearcache_upstream_connections"] >= 2.0, "{after:?}");
    // Every forwarded batch is one latency observation, in the +Inf bucket too.
    let latency = after["nearcache_upstream_latency_seconds_count"];
    assert!(latency >= 5.0);
    assert_eq!(after["nearcache_upstream_latency_seconds_bucket{le=\"+Inf\"}"], latency);

    // PROXY INFO reads the same numbers.
    let info = call(&mut client, &["PROXY", "INFO"]).await;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or_else(|| panic!("{name} in {info}"))
    };
    assert_eq!(field("cache_hits").parse::<f64>().unwrap(), after["nearcache_cache_lookups_total{result=\"hit\"}"]);
    assert_eq!(field("ttl_enforced"), "3");
    assert_eq!(field("breaker_state"), "closed");
    assert!(field("requests_get").contains("hit="), "{info}");
    for section in ["# Proxy", "# Cache", "# Breaker", "# Upstream"] {
        assert!(info.contains(section), "{section} in {info}");
    }
    let cache_only = call(&mut client, &["PROXY", "INFO", "cache"]).await;
    assert!(cache_only.contains("# Cache") && !cache_only.contains("# Proxy"), "{cache_only}");
    // Plain INFO is Redis's.
    assert!(call(&mut client, &["INFO", "server"]).await.contains("redis_version"));

    assert_eq!(http_get(&metrics, "/other").await.0, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn tracking_invalidations_and_their_delay_are_measured() {
    let Setup { _redis, _proxy, mut client, mut direct, metrics } = setup().await;
    let before = scrape(&metrics).await;
    // Writes elsewhere invalidate cached keys through tracking; writes here of cached keys
    // (Redis pushes for keys read through the proxy) are sampled (1 in 16) for the delay from
    // forwarding them to Redis's push for their key.
    for i in 0..20 {
        call(&mut client, &["GET", &format!("k{i}")]).await;
        call(&mut direct, &["SET", &format!("k{i}"), "v"]).await;
    }
    for i in 0..64 {
        call(&mut client, &["GET", &format!("w{i}")]).await;
        call(&mut client, &["SET", &format!("w{i}"), "v"]).await;
    }
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let after = scrape(&metrics).await;
        let tracked = delta(&before, &after, "nearcache_cache_invalidations_total{cause=\"tracking\"}");
        let delays = delta(&before, &after, "nearcache_invalidation_delay_seconds_count");
        if tracked >= 20.0 && delays >= 4.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "tracking {tracked}, delays {delays}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_commands_inspect_invalidate_and_clear_the_tier() {
    let redis = Redis::start();
    let proxy = Proxy::in_front_of(&redis).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut client, &mut direct).await;
    for key in ["user:1", "user:2", "item:1"] {
        call(&mut direct, &["SET", key, "v"]).await;
        call(&mut client, &["GET", key]).await;
    }
    call(&mut client, &["STRLEN", "user:1"]).await;
    let inspect = call(&mut client, &["PROXY", "CACHE", "INSPECT", "user:1"]).await;
    assert!(inspect.contains("cached:1\r\nvariants:2\r\n"), "{inspect}");
    assert!(inspect.contains("variant_0:db=0 resp=2 user=0 GET reply_bytes=7 local_ttl_remaining_ms="), "{inspect}");
    assert!(inspect.contains("db=0 resp=2 user=0 STRLEN"), "{inspect}");
    assert!(inspect.contains("rule_cache:Tracked"), "{inspect}");

    assert_eq!(call(&mut client, &["PROXY", "CACHE", "INVALIDATE", "user:1"]).await, ":1\r\n");
    assert_eq!(call(&mut client, &["PROXY", "CACHE", "INVALIDATE", "user:1"]).await, ":0\r\n");
    assert!(call(&mut client, &["PROXY", "CACHE", "INSPECT", "user:1"]).await.contains("cached:0"));
    let gets = calls(&mut direct, "get").await;
    call(&mut client, &["GET", "user:1"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets + 1, "an invalidated key is read from Redis again");

    assert_eq!(call(&mut client, &["PROXY", "CACHE", "INVALIDATE", "PATTERN", "user:*"]).await, ":2\r\n");
    assert!(call(&mut client, &["PROXY", "CACHE", "INSPECT", "item:1"]).await.contains("cached:1"));
    assert_eq!(call(&mut client, &["PROXY", "CACHE", "CLEAR"]).await, "+OK\r\n");
    assert!(call(&mut client, &["PROXY", "INFO", "cache"]).await.contains("cache_entries:0\r\n"));

    let config = call(&mut client, &["PROXY", "CONFIG", "GET", "cache.max_*"]).await;
    assert_eq!(
        config,
        "*4\r\n$20\r\ncache.max_entry_size\r\n$4\r\n1MiB\r\n$16\r\ncache.max_memory\r\n$6\r\n256MiB\r\n"
    );
    let status = call(&mut client, &["PROXY", "BREAKER", "STATUS"]).await;
    assert!(status.contains("state:closed"), "{status}");
    let unknown = call(&mut client, &["PROXY", "FROB"]).await;
    assert!(unknown.starts_with("-ERR unknown PROXY subcommand 'FROB'"), "{unknown}");
    // Inside MULTI, PROXY commands are still the proxy's (Redis would not know them).
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n");
    assert!(call(&mut client, &["PROXY", "BREAKER", "STATUS"]).await.contains("state:closed"));
    assert_eq!(call(&mut client, &["EXEC"]).await, "*0\r\n");
}

#[tokio::test]
async fn admin_commands_need_the_admin_password_when_one_is_set() {
    let redis = Redis::start();
    let var = format!("NEARCACHE_TEST_ADMIN_{}", std::process::id());
    // SAFETY: a variable no other test reads or writes, set before the proxy starts.
    unsafe { std::env::set_var(&var, "s3cret") };
    let mut config = config_for(&redis.addr());
    config.admin.password_env = var;
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let noauth = "-NOAUTH PROXY AUTH <password> required for admin commands ([admin] password_env is set)\r\n";
    assert_eq!(call(&mut client, &["PROXY", "INFO"]).await, noauth);
    assert_eq!(call(&mut client, &["PROXY", "CACHE", "CLEAR"]).await, noauth);
    assert_eq!(call(&mut client, &["PROXY", "AUTH", "wrong"]).await, "-WRONGPASS invalid admin password\r\n");
    assert_eq!(call(&mut client, &["PROXY", "AUTH", "s3cret"]).await, "+OK\r\n");
    assert!(call(&mut client, &["PROXY", "INFO"]).await.contains("# Proxy"));
    // Ordinary commands never needed it; another connection still does.
    assert_eq!(call(&mut client, &["PING"]).await, "+PONG\r\n");
    let mut other = proxy.raw().await;
    assert_eq!(call(&mut other, &["PROXY", "INFO"]).await, noauth);
    // RESET forgets it, as Redis forgets AUTH.
    assert_eq!(call(&mut client, &["RESET"]).await, "+RESET\r\n");
    assert_eq!(call(&mut client, &["PROXY", "INFO"]).await, noauth);
}

/// The shipped dashboard (`deploy/grafana/nearcache.json`) and alert rules
/// (`deploy/prometheus/alerts.yml`) query only metrics the proxy exports.
#[tokio::test]
async fn the_dashboard_and_alert_rules_name_only_exported_metrics() {
    let Setup { _redis, _proxy, mut client, direct: _, metrics } = setup().await;
    // A write through the proxy: the invalidation delay histogram has a sample to show.
    call(&mut client, &["SET", "k", "v"]).await;
    let (_, body) = http_get(&metrics, "/metrics").await;
    let exported: Vec<&str> =
        body.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.split(['{', ' ']).next()).collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["deploy/grafana/nearcache.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut named = 0;
        for (at, _) in text.match_indices("nearcache_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            assert!(exported.contains(&name.as_str()), "{file} queries {name}, which /metrics does not export");
            named += 1;
        }
        assert!(named >= 5, "{file} names {named} metrics");
    }
}

/// Per-rule numbers: lookups by result, fills, invalidations, entries and bytes, labelled by the
/// rule's name (or its pattern), in `/metrics` and `PROXY INFO`.
#[tokio::test]
async fn every_rule_has_its_own_hit_rate_and_footprint() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    let metrics = format!("127.0.0.1:{}", free_port());
    config.metrics.address = metrics.clone();
    config.rule.push(Rule { pattern: "user:*".into(), name: Some("users".into()), ..Rule::default() });
    config.rule.push(Rule { pattern: "item:*".into(), ..Rule::default() });
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    wait_for_caching(&mut client, &mut direct).await;
    for key in ["user:1", "user:2", "item:1"] {
        call(&mut direct, &["SET", key, "value"]).await;
    }
    for _ in 0..3 {
        for key in ["user:1", "user:2", "item:1"] {
            call(&mut client, &["GET", key]).await;
        }
    }
    call(&mut client, &["SET", "user:1", "changed"]).await;
    let m = scrape(&metrics).await;
    let get = |name: &str| m.get(name).copied().unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(get(r#"nearcache_rule_cache_lookups_total{rule="users",result="hit"}"#), 4.0);
    assert_eq!(get(r#"nearcache_rule_cache_lookups_total{rule="users",result="miss"}"#), 2.0);
    assert_eq!(get(r#"nearcache_rule_cache_lookups_total{rule="item:*",result="hit"}"#), 2.0);
    assert_eq!(get(r#"nearcache_rule_cache_lookups_total{rule="item:*",result="miss"}"#), 1.0);
    assert_eq!(get(r#"nearcache_rule_cache_fills_total{rule="users"}"#), 2.0);
    assert_eq!(get(r#"nearcache_rule_cache_invalidations_total{rule="users"}"#), 1.0, "the SET dropped user:1");
    assert_eq!(get(r#"nearcache_rule_cache_entries{rule="users"}"#), 1.0);
    assert_eq!(get(r#"nearcache_rule_cache_entries{rule="item:*"}"#), 1.0);
    assert_eq!(get(r#"nearcache_rule_cache_entries{rule="default"}"#), 1.0, "the probe key");
    let (users, items) =
        (get(r#"nearcache_rule_cache_bytes{rule="users"}"#), get(r#"nearcache_rule_cache_bytes{rule="item:*"}"#));
    assert!(users > 0.0 && users == items, "one key of the same size each: {users} {items}");
    let total = get("nearcache_cache_bytes");
    assert_eq!(
        users + items + get(r#"nearcache_rule_cache_bytes{rule="default"}"#),
        total,
        "the rules add up to the tier"
    );

    let info = call(&mut client, &["PROXY", "INFO", "rules"]).await;
    assert!(info.contains("rule_0:label=users,hits=4,misses=2,fills=2,invalidations=1,entries=1,bytes="), "{info}");
    assert!(info.contains("rule_1:label=item:*,hits=2,misses=1,fills=1,invalidations=0,entries=1,bytes="), "{info}");
    assert!(info.contains("rule_default:label=default,"), "{info}");

    call(&mut client, &["PROXY", "CACHE", "CLEAR"]).await;
    let m = scrape(&metrics).await;
    assert_eq!(m[r#"nearcache_rule_cache_entries{rule="users"}"#], 0.0);
    assert_eq!(m[r#"nearcache_rule_cache_bytes{rule="item:*"}"#], 0.0);
}

#[tokio::test]
async fn an_entry_past_its_local_ttl_leaves_the_tier_without_being_read_again() {
    let brief = Rule { pattern: "brief:*".into(), local_ttl: Some("300ms".parse().unwrap()), ..Rule::default() };
    let Setup { _redis, _proxy, mut client, mut direct, metrics } = setup_with(brief).await;
    for key in ["brief:1", "kept"] {
        call(&mut direct, &["SET", key, "v"]).await;
        call(&mut client, &["GET", key]).await;
    }
    // The key lives on in Redis (no push comes), nobody reads it again and no fill comes:
    // the sweep alone can drop it (counted once it has: the entry was cached, then expired).
    until_reply(&mut client, &["PROXY", "INFO", "cache"], "dropped the expired entry", |info| {
        info_number(info, "cache_expired") == 1
    })
    .await;
    assert!(call(&mut client, &["PROXY", "CACHE", "INSPECT", "brief:1"]).await.contains("cached:0"));
    assert!(call(&mut client, &["PROXY", "CACHE", "INSPECT", "kept"]).await.contains("cached:1"));
    assert_eq!(scrape(&metrics).await["nearcache_cache_expired_total"], 1.0);
}
