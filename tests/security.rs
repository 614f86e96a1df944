//! Client authentication (NOAUTH, wrong and right passwords, users), the tier shared only within
//! a user, denied commands, and the proxy authenticating to a Redis that requires a password.

mod common;

use common::{Proxy, Raw, Redis, call, calls, config_for, wait_for_caching};
use nearcache::config::{Config, User};

/// Sets an environment variable only this test reads; returns its name.
fn secret(name: &str, value: &str) -> String {
    let var = format!("NEARCACHE_TEST_{name}_{}", std::process::id());
    // SAFETY: each test uses its own variables, set before the proxy that reads them starts.
    unsafe { std::env::set_var(&var, value) };
    var
}

fn with_users(redis: &Redis) -> Config {
    let mut config = config_for(&redis.addr());
    config.listen.password_env = secret("DEFAULT", "default-pw");
    config.listen.users = vec![
        User { name: "app".into(), password_env: Some(secret("APP", "app-pw")), password_file: None },
        User { name: "reports".into(), password_env: Some(secret("REPORTS", "reports-pw")), password_file: None },
    ];
    config
}

#[tokio::test]
async fn clients_authenticate_like_with_redis() {
    let redis = Redis::start();
    let proxy = Proxy::start(with_users(&redis)).await;
    let mut client = proxy.raw().await;
    assert_eq!(call(&mut client, &["GET", "k"]).await, "-NOAUTH Authentication required.\r\n");
    assert_eq!(call(&mut client, &["PROXY", "INFO"]).await, "-NOAUTH Authentication required.\r\n");
    let hello = call(&mut client, &["HELLO", "3"]).await;
    assert!(hello.starts_with("-NOAUTH HELLO must be called with the client already authenticated"), "{hello}");
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(call(&mut client, &["AUTH", "nope"]).await, wrongpass);
    assert_eq!(call(&mut client, &["AUTH", "app", "default-pw"]).await, wrongpass);
    assert_eq!(call(&mut client, &["AUTH", "default-pw"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");
    // RESET de-authenticates, as in Redis.
    assert_eq!(call(&mut client, &["RESET"]).await, "+RESET\r\n");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "-NOAUTH Authentication required.\r\n");
    // HELLO ... AUTH authenticates and switches protocol at once.
    let hello = call(&mut client, &["HELLO", "3", "AUTH", "app", "app-pw"]).await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");
    // Also when RESET reaches Redis on a pinned connection (here inside MULTI).
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["RESET"]).await, "+RESET\r\n");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "-NOAUTH Authentication required.\r\n");
    assert_eq!(call(&mut client, &["AUTH", "app", "app-pw"]).await, "+OK\r\n");

    // The redis crate with credentials in the URL.
    let url = format!("redis://reports:reports-pw@{}/", proxy.addr);
    let mut conn = common::multiplexed(&url).await.unwrap();
    let value: String = redis::cmd("GET").arg("k").query_async(&mut conn).await.unwrap();
    assert_eq!(value, "v");
    let url = format!("redis://reports:wrong@{}/", proxy.addr);
    let err = common::multiplexed(&url).await.err().unwrap();
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
}

#[tokio::test]
async fn cached_replies_are_shared_only_between_clients_of_the_same_user() {
    let redis = Redis::start();
    let proxy = Proxy::start(with_users(&redis)).await;
    let mut app = proxy.raw().await;
    let mut app2 = proxy.raw().await;
    let mut reports = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut app, &["AUTH", "app", "app-pw"]).await, "+OK\r\n");
    assert_eq!(call(&mut app2, &["AUTH", "app", "app-pw"]).await, "+OK\r\n");
    assert_eq!(call(&mut reports, &["AUTH", "reports", "reports-pw"]).await, "+OK\r\n");
    wait_for_caching(&mut app, &mut direct).await;
    call(&mut direct, &["SET", "shared", "v"]).await;
    call(&mut app, &["GET", "shared"]).await;
    let gets = calls(&mut direct, "get").await;
    call(&mut app2, &["GET", "shared"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets, "same user: a hit");
    call(&mut reports, &["GET", "shared"]).await;
    assert_eq!(calls(&mut direct, "get").await, gets + 1, "another user: its own read");
    let inspect = call(&mut app, &["PROXY", "CACHE", "INSPECT", "shared"]).await;
    assert!(inspect.contains("variants:2") && inspect.contains("user=1") && inspect.contains("user=2"), "{inspect}");
}

#[tokio::test]
async fn denied_commands_get_a_clear_error() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.listen.deny_commands = vec!["FLUSHALL".into(), "keys".into(), "CONFIG".into()];
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let mut direct = Raw::connect(redis.addr()).await;
    call(&mut client, &["SET", "k", "v"]).await;
    for (cmd, name) in
        [(&["flushall"][..], "FLUSHALL"), (&["KEYS", "*"], "KEYS"), (&["CONFIG", "GET", "maxmemory"], "CONFIG")]
    {
        assert_eq!(
            call(&mut client, cmd).await,
            format!("-ERR command '{name}' is denied by this proxy (listen.deny_commands)\r\n")
        );
    }
    // Also inside a transaction, where it is never queued, and EXEC aborts the transaction (as
    // Redis does after a command it refused to queue).
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["SET", "k", "changed"]).await, "+QUEUED\r\n");
    assert!(call(&mut client, &["FLUSHALL"]).await.starts_with("-ERR command 'FLUSHALL' is denied"));
    assert!(call(&mut client, &["EXEC"]).await.starts_with("-EXECABORT"));
    assert_eq!(calls(&mut direct, "flushall").await, 0);
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");
    // A transaction discarded after a refusal leaves nothing behind for the next one.
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n");
    assert!(call(&mut client, &["FLUSHALL"]).await.starts_with("-ERR command 'FLUSHALL' is denied"));
    assert_eq!(call(&mut client, &["DISCARD"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["SET", "k", "next"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut client, &["EXEC"]).await, "*1\r\n+OK\r\n");
}

#[tokio::test]
async fn the_proxy_authenticates_to_a_redis_that_requires_a_password() {
    let redis = Redis::start_with(common::free_port(), &["--requirepass", "upstream-pw"]);
    let mut config = config_for(&redis.addr());
    config.upstream.password_env = secret("UPSTREAM", "upstream-pw");
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    // Clients need no password (the proxy has no users); the proxy uses its own.
    assert_eq!(call(&mut client, &["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n", "a pinned connection authenticates too");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut client, &["EXEC"]).await, "*1\r\n$1\r\nv\r\n");
    // A client that sends the password the proxy uses upstream changes nothing.
    assert_eq!(call(&mut client, &["AUTH", "upstream-pw"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");

    let mut config = config_for(&redis.addr());
    config.upstream.password = "wrong".into();
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let reply = call(&mut client, &["GET", "k"]).await;
    assert!(reply.contains("WRONGPASS") && reply.contains(&redis.addr()), "{reply}");
}

/// Without proxy-side users, AUTH is Redis's: an ACL user of Redis's works through the proxy,
/// for that client only, and Redis's own errors come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_acl_users_work_through_the_proxy() {
    let redis = Redis::start();
    let mut direct = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut direct, &["ACL", "SETUSER", "bob", "on", ">pw", "~bob:*", "+@all"]).await, "+OK\r\n");
    let proxy = Proxy::in_front_of(&redis).await;
    let mut bob = proxy.raw().await;
    let mut other = proxy.raw().await;
    let wrong = call(&mut bob, &["AUTH", "bob", "nope"]).await;
    assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    assert_eq!(call(&mut bob, &["AUTH", "bob", "pw"]).await, "+OK\r\n");
    assert_eq!(call(&mut bob, &["ACL", "WHOAMI"]).await, "$3\r\nbob\r\n");
    assert_eq!(call(&mut other, &["ACL", "WHOAMI"]).await, "$7\r\ndefault\r\n");
    // Redis enforces bob's key pattern; the tier never answers for him.
    assert_eq!(call(&mut other, &["SET", "secret", "x"]).await, "+OK\r\n");
    call(&mut other, &["GET", "secret"]).await;
    assert!(call(&mut bob, &["GET", "secret"]).await.starts_with("-NOPERM"));
    assert_eq!(call(&mut bob, &["SET", "bob:k", "1"]).await, "+OK\r\n");
    let hello = call(&mut other, &["HELLO", "3", "AUTH", "bob", "pw"]).await;
    assert!(hello.starts_with('%'), "{hello}");
    assert_eq!(call(&mut other, &["ACL", "WHOAMI"]).await, "$3\r\nbob\r\n");
    proxy.stop().await;
}

/// One client changing Redis's password does not lock everyone out: connections the proxy has
/// keep serving (Redis keeps them authenticated), the breaker stays closed, and a client that
/// needs a new connection gets an error that names the proxy's upstream credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_keeps_existing_connections_serving() {
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.upstream.connections = 1;
    config.upstream.spare_connections = 0;
    let proxy = Proxy::start(config).await;
    let mut admin = proxy.raw().await;
    let mut worker = proxy.raw().await;
    assert_eq!(call(&mut worker, &["PING"]).await, "+PONG\r\n");
    assert_eq!(call(&mut admin, &["CONFIG", "SET", "requirepass", "secret"]).await, "+OK\r\n");
    // Writes: they reach Redis (no tier in the way) on the existing shared connection.
    for n in 1..=50 {
        assert_eq!(call(&mut worker, &["INCR", "n"]).await, format!(":{n}\r\n"));
    }
    // A new connection (a transaction's own) is refused by Redis: the error says why. More such
    // refusals than breaker.connect_failures do not open the breaker: Redis is there.
    for _ in 0..5 {
        let mut tx = proxy.raw().await;
        let refused = call(&mut tx, &["MULTI"]).await;
        assert!(refused.contains("check [upstream] username and password") && refused.contains("NOAUTH"), "{refused}");
    }
    for n in 51..=100 {
        assert_eq!(call(&mut worker, &["INCR", "n"]).await, format!(":{n}\r\n"));
    }
    let status = call(&mut admin, &["PROXY", "BREAKER", "STATUS"]).await;
    assert!(status.contains("state:closed"), "{status}");
    let info = call(&mut admin, &["PROXY", "INFO", "upstream"]).await;
    let refused: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("upstream_login_refused:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{info}"));
    assert!(refused >= 5, "{info}");
    // The password is back to none: everything works again.
    assert_eq!(call(&mut admin, &["CONFIG", "SET", "requirepass", ""]).await, "+OK\r\n");
    let mut tx = proxy.raw().await;
    assert_eq!(call(&mut tx, &["MULTI"]).await, "+OK\r\n");
    proxy.stop().await;
}

/// A client that logs in with the proxy's own upstream user (not `default`) is answered at
/// once, by AUTH and by HELLO's AUTH option alike: its shared connections already are that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_user_s_own_login_is_accepted_by_auth_and_hello() {
    let redis = Redis::start();
    let mut direct = Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut direct, &["ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all"]).await, "+OK\r\n");
    let mut config = config_for(&redis.addr());
    (config.upstream.username, config.upstream.password) = ("app".into(), "app-pw".into());
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    assert_eq!(call(&mut client, &["AUTH", "app", "app-pw"]).await, "+OK\r\n");
    let hello = call(&mut client, &["HELLO", "3", "AUTH", "app", "app-pw"]).await;
    assert!(hello.starts_with('%'), "{hello}");
    assert_eq!(call(&mut client, &["ACL", "WHOAMI"]).await, "$3\r\napp\r\n");
    proxy.stop().await;
}
