//! Accepting clients under `listen.max_clients`, one task each, and shutting down gracefully.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

use crate::cache::Tier;
use crate::command::Learned;
use crate::config::{Config, Tracking};
use crate::connection::{self, REFUSAL_TIMEOUT};
use crate::context::{Context, Live};
use crate::error::ProxyError;
use crate::framing::Limits;
use crate::metrics::{self, Metrics};
use crate::reload;
use crate::report;
use crate::tracking;
use crate::transport;
use crate::ttl;
use crate::upstream::{PoolKey, Upstream};
use tokio_rustls::TlsAcceptor;

/// Why the proxy cannot start: a setting whose file, variable or value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct StartError {
    pub key: &'static str,
    pub message: String,
}

impl From<(&'static str, String)> for StartError {
    fn from((key, message): (&'static str, String)) -> StartError {
        StartError { key, message }
    }
}

/// What the configuration names outside itself, read once: the TLS files, the passwords in
/// environment variables and files, the users.
pub struct Resolved {
    pub config: Config,
    pub live: Live,
    pub listen_tls: Option<TlsAcceptor>,
    pub upstream_tls: Option<transport::UpstreamTls>,
    pub upstream_password: Option<String>,
    pub sentinel_password: Option<String>,
}

/// Reads what `config` refers to (`nearcache --check` and [`run`] both start here).
pub fn resolve(config: Config) -> Result<Resolved, StartError> {
    Ok(Resolved {
        listen_tls: transport::acceptor(&config.listen)?,
        upstream_tls: transport::connector(&config.upstream)?,
        upstream_password: config.upstream_password()?,
        sentinel_password: config.sentinel_password()?,
        live: Live::new(config.clone())?,
        config,
    })
}

/// Serves clients from `listener` until `shutdown` completes, then stops accepting, lets
/// connected clients receive the replies to what they already sent (up to
/// `listen.drain_timeout`), and closes the rest. An error when what the configuration refers
/// to cannot be used (nothing is served then).
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let Resolved { config, live, listen_tls: tls, upstream_tls, upstream_password: password, sentinel_password } =
        resolve(config)?;
    let metrics = Arc::new(Metrics::default());
    let upstream = Upstream::new(&config, password.clone(), upstream_tls.clone(), Arc::clone(&metrics));
    let cache = &config.cache;
    let tier = cache
        .enabled
        .then(|| Arc::new(Tier::new(cache.max_memory.0, cache.max_entry_size.0 as usize, false, cache.serve_stale.0)));
    // With Sentinel, the primary is found first (the connections below wait for it).
    let sentinel = (!config.upstream.sentinels.is_empty()).then(|| {
        let settings =
            crate::sentinel::Settings::new(&config.upstream, sentinel_password.clone(), upstream_tls.clone());
        crate::sentinel::start(settings, Arc::clone(&upstream), tier.clone())
    });
    // With a cluster, its slot map is read first (shared requests are routed by it).
    let cluster = (!config.upstream.cluster.is_empty()).then(|| {
        let metrics = Arc::clone(&metrics);
        crate::cluster::Cluster::start(&config, password.clone(), upstream_tls.clone(), metrics, tier.clone())
    });
    if let Some((cluster, _)) = &cluster {
        cluster.mapped(config.upstream.connect_timeout.0).await;
    }
    // Dial the default pool now, so an unreachable upstream is reported at start.
    upstream.pool(PoolKey::default());
    // Clients are served once the first handshake told Redis's version (HELLO's reply has it),
    // or after connect_timeout without it.
    upstream.info().learned(upstream.connect_timeout()).await;
    let commands = Arc::new(Learned::default());
    let learning = tokio::spawn({
        let (upstream, commands) = (Arc::clone(&upstream), Arc::clone(&commands));
        async move {
            match upstream.read_commands().await {
                Some(reply) => commands.learn(&reply),
                None => debug!("COMMAND could not be read; the command table alone decides"),
            }
        }
    });
    let recovery = tokio::spawn(crate::upstream::recover(Arc::clone(&upstream)));
    let tracking = match (&tier, cache.tracking) {
        // A cluster's tier tracks each node (`cluster.rs`).
        _ if cluster.is_some() => None,
        (Some(tier), Tracking::On) => Some(tokio::spawn(tracking::run(Arc::clone(&upstream), Arc::clone(tier)))),
        _ => None,
    };
    let expiry = tier.as_ref().map(|tier| tokio::spawn(crate::cache::sweep(Arc::clone(tier))));
    let ctx = Arc::new(Context {
        upstream: Arc::clone(&upstream),
        limits: Limits {
            max_request_size: config.listen.max_request_size.0 as usize,
            max_args: config.listen.max_args,
        },
        max_pending: config.listen.max_pending_replies,
        timeouts: config.listen.timeouts(),
        live: ArcSwap::from_pointee(live),
        tier,
        ttl: ttl::Counters::default(),
        metrics,
        commands,
        clients: Default::default(),
        warm: Default::default(),
        sentinel: sentinel.as_ref().map(|(stats, _)| Arc::clone(stats)),
        cluster: cluster.as_ref().map(|(cluster, _)| Arc::clone(cluster)),
    });
    let exporter = serve_metrics(&config.metrics.address, &ctx).await;
    let hangups = tokio::spawn(reload::on_sighup(Arc::clone(&ctx)));
    let permits = Arc::new(Semaphore::new(config.listen.max_clients));
    let (stop, stopped) = watch::channel(false);
    let mut clients = JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        next_id += 1;
                        let (ctx, stopped, tls) = (Arc::clone(&ctx), stopped.clone(), tls.clone());
                        metrics::inc(&ctx.metrics.clients_accepted);
                        ctx.metrics.clients_connected.fetch_add(1, Ordering::Relaxed);
                        clients.spawn(async move {
                            connection::serve(stream, tls, next_id, Arc::clone(&ctx), stopped).await;
                            ctx.metrics.clients_connected.fetch_sub(1, Ordering::Relaxed);
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        metrics::inc(&ctx.metrics.clients_refused);
                        clients.spawn(refuse(stream, ProxyError::MaxClients));
                    }
                },
                Err(e) => {
                    // Out of file descriptors, usually: wait a little instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    ctx.clients.shut_down_all();
    let drain = config.listen.drain_timeout.0;
    info!(clients = clients.len(), drain_ms = drain.as_millis() as u64, "shutting down: draining clients");
    if timeout(drain, async { while clients.join_next().await.is_some() {} }).await.is_err() {
        warn!(clients = clients.len(), "drain timeout: closing the remaining clients");
        clients.shutdown().await;
    }
    let following = sentinel.map(|(_, task)| task).or(cluster.map(|(_, task)| task));
    for task in
        [tracking, expiry, exporter, following, Some(hangups), Some(recovery), Some(learning)].into_iter().flatten()
    {
        task.abort();
    }
    upstream.close();
    info!("shut down");
    Ok(())
}

/// Serves `/metrics` on `address` when it is set; a bind failure is logged and leaves the proxy
/// running without it.
async fn serve_metrics(address: &str, ctx: &Arc<Context>) -> Option<JoinHandle<()>> {
    if address.is_empty() {
        return None;
    }
    match TcpListener::bind(address).await {
        Ok(listener) => {
            info!(address, "metrics at http://{address}/metrics");
            Some(tokio::spawn(report::http::serve(listener, Arc::clone(ctx))))
        }
        Err(e) => {
            error!(address, error = %e, "cannot serve metrics; carrying on without them");
            None
        }
    }
}

async fn refuse(mut stream: TcpStream, err: ProxyError) {
    let _ = timeout(REFUSAL_TIMEOUT, stream.write_all(&err.to_reply())).await;
}
