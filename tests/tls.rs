//! TLS on both sides, with certificates made at test time (rcgen): redis-cli --tls through the
//! proxy, and the proxy to a redis-server that speaks only TLS and requires client certificates.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Proxy, Redis, call, config_for, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair};

/// A test CA and two certificates it signed (for "localhost" and 127.0.0.1), as PEM files in a
/// directory of the test's own.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("nearcache-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf named like its issuer looks self-signed to OpenSSL.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "nearcache test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for who in ["server", "client"] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, format!("nearcache test {who}"));
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{who}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).to_str().unwrap().to_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs redis-cli off the runtime's thread (the proxy runs on it).
async fn redis_cli(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout").arg("10").arg("redis-cli").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn clients_connect_with_tls() {
    let pki = Pki::new("clients");
    let redis = Redis::start();
    let mut config = config_for(&redis.addr());
    config.listen.tls_cert_file = Some(pki.path("server.pem"));
    config.listen.tls_key_file = Some(pki.path("server.key"));
    let proxy = Proxy::start(config).await;
    let port = proxy.port().to_string();
    let tls = ["--tls", "--cacert", &pki.arg("ca.pem"), "-h", "127.0.0.1", "-p", &port];
    let cli = |cmd: &[&str]| {
        let mut args = tls.to_vec();
        args.extend_from_slice(cmd);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move { redis_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    assert_eq!(cli(&["SET", "greeting", "hello over tls"]).await.trim(), "OK");
    assert_eq!(cli(&["GET", "greeting"]).await.trim(), "hello over tls");
    // Again: this read is a hit, served over TLS too.
    assert_eq!(cli(&["GET", "greeting"]).await.trim(), "hello over tls");
    // A plain-text client gets no Redis answer from a TLS port.
    let plain = redis_cli(&["-h", "127.0.0.1", "-p", &port, "PING"]).await;
    assert!(!plain.contains("PONG"), "{plain}");
    // A client that does not trust the proxy's certificate is refused by its own TLS.
    let untrusted = redis_cli(&["--tls", "-h", "127.0.0.1", "-p", &port, "PING"]).await;
    assert!(!untrusted.contains("PONG"), "{untrusted}");
    // The proxy carries on.
    assert_eq!(cli(&["PING"]).await.trim(), "PONG");
}

#[tokio::test]
async fn the_proxy_connects_to_redis_with_tls_and_a_client_certificate() {
    let pki = Pki::new("upstream");
    let tls_port = free_port();
    let redis = Redis::start_with(
        free_port(),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &pki.arg("server.pem"),
            "--tls-key-file",
            &pki.arg("server.key"),
            "--tls-ca-cert-file",
            &pki.arg("ca.pem"),
            "--tls-auth-clients",
            "yes",
        ],
    );
    let mut config = config_for(&format!("127.0.0.1:{tls_port}"));
    config.upstream.tls = true;
    config.upstream.tls_ca_file = Some(pki.path("ca.pem"));
    config.upstream.tls_cert_file = Some(pki.path("client.pem"));
    config.upstream.tls_key_file = Some(pki.path("client.key"));
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    assert_eq!(call(&mut client, &["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(call(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(call(&mut client, &["MULTI"]).await, "+OK\r\n", "pinned connections use TLS too");
    assert_eq!(call(&mut client, &["INCR", "n"]).await, "+QUEUED\r\n");
    assert_eq!(call(&mut client, &["EXEC"]).await, "*1\r\n:1\r\n");
    // The write reached the TLS-only server (read back over its plain port).
    let mut direct = common::Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut direct, &["GET", "k"]).await, "$1\r\nv\r\n");

    // Without a client certificate Redis refuses the handshake: the error names the upstream.
    let mut config = config_for(&format!("127.0.0.1:{tls_port}"));
    config.upstream.tls = true;
    config.upstream.tls_ca_file = Some(pki.path("ca.pem"));
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    let refused = call(&mut client, &["GET", "k"]).await;
    assert!(refused.starts_with(&format!("-LOADING upstream 127.0.0.1:{tls_port} unavailable")), "{refused}");
}

/// `sentinel_tls`: the sentinels are reached over TLS (each certificate checked for the
/// sentinel's own host), while Redis itself may speak plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_over_tls() {
    let pki = Pki::new("sentinel");
    let redis = Redis::start();
    let tls_port = free_port();
    let conf = pki.path("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {tls_port}\nbind 127.0.0.1\ndir {dir}\ntls-cert-file {cert}\ntls-key-file {key}\n\
             tls-ca-cert-file {ca}\ntls-auth-clients no\nsentinel monitor mymaster 127.0.0.1 {port} 1\n",
            dir = pki.dir.display(),
            cert = pki.arg("server.pem"),
            key = pki.arg("server.key"),
            ca = pki.arg("ca.pem"),
            port = redis.port,
        ),
    )
    .unwrap();
    let _sentinel = Killed(
        Command::new("redis-server").arg(&conf).arg("--sentinel").stdout(std::process::Stdio::null()).spawn().unwrap(),
    );
    let mut config = nearcache::config::Config::default();
    config.upstream.sentinels = vec![format!("127.0.0.1:{tls_port}")];
    config.upstream.master_name = "mymaster".into();
    config.upstream.sentinel_tls = true;
    config.upstream.tls_ca_file = Some(pki.path("ca.pem"));
    let proxy = Proxy::start(config).await;
    let mut client = proxy.raw().await;
    common::until_reply(&mut client, &["SET", "k", "v"], "the primary found over TLS", |r| r == "+OK\r\n").await;
    let mut direct = common::Raw::connect(redis.addr()).await;
    assert_eq!(call(&mut direct, &["GET", "k"]).await, "$1\r\nv\r\n");
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
