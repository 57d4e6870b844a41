//! The `report-apis` binary: arguments, logging, configuration, then [`report_apis::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use report_apis::{Config, config};
use report_common::config::ConfigFile;
use report_common::{exit, logging};

/// Report server: issues tickets and serves CSV reports, slower the more are outstanding.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file [default: /etc/report-apis/config.toml, built-in defaults if absent]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `listen` from the configuration file
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init("report-apis");
    let (mut config, source) = match Config::load_or_default(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match &source {
        Some(path) => tracing::info!("configuration read from {}", path.display()),
        None => tracing::info!("no {}: using the built-in defaults", config::DEFAULT_PATH),
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; free the port or choose another with --listen or `listen`",
                    config.listen
                )
            })?;
        report_apis::run(listener, config, shutdown).await
    })
}

/// Installs the SIGTERM (systemd's stop) and SIGINT (Ctrl-C) handlers at once, before the
/// server reports itself ready, and returns a future that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
