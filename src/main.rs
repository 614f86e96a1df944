//! The `nearcache` binary: parse the CLI, load the configuration, start logging, bind, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nearcache::config::{Config, Overrides};
use tokio::net::TcpListener;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// A Redis-protocol caching proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (every key is optional; see the shipped proxy.toml).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 when valid.
    #[arg(long)]
    check: bool,
    /// Listen on this address (overrides [listen] address).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Forward to this Redis (overrides [upstream] address).
    #[arg(long, value_name = "HOST:PORT")]
    upstream: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("nearcache: {message}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        if let Err(e) = nearcache::server::resolve(config) {
            eprintln!("nearcache: {e}");
            return ExitCode::from(2);
        }
        let origin = cli.config.as_deref().map_or("defaults".into(), |p| p.display().to_string());
        println!("{origin}: ok");
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // One thread: the current-thread scheduler (no work stealing, no cross-thread wakeups).
    let threads = config.runtime.worker_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(&config.listen.address).await {
            Ok(listener) => listener,
            Err(e) => {
                error!(address = %config.listen.address, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        info!(listen = %config.listen.address, upstream = %config.upstream.address, threads, "nearcache started");
        match nearcache::server::run(listener, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(key = e.key, reason = %e.message, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}

fn load(cli: &Cli) -> Result<Config, String> {
    let overrides = Overrides { listen: cli.listen.clone(), upstream: cli.upstream.clone() };
    match &cli.config {
        Some(path) => Config::load_with(path, overrides).map_err(|e| e.to_string()),
        None => {
            let mut config = Config::default();
            config.apply(overrides);
            config.validate().map_err(|(key, message)| format!("{key}: {message}"))?;
            Ok(config)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("signal received");
}
