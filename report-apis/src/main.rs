//! The `report-apis` binary: arguments, logging, configuration, signals and the runtime, then
//! [`report_apis::run_with_reloads`]; `check-config` and `reload` ([`report_apis::reload`]) for
//! operators and `ExecReload=`.

// A function a reader can hold in their head: at most 60 lines of code (the threshold is in
// clippy.toml; blank and comment lines do not count). An exception is an
// `#[expect(clippy::too_many_lines, reason = "...")]`. Tests read top to bottom and are exempt.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use report_apis::Config;
use report_apis::config::Source;
use report_apis::fence::MarksFileError;
use report_apis::reload::{self, Reloading};
use report_common::{check_config, exit, logging, message_id};

const EXIT_CODES: &str = "\
Exit codes:
  0    stopped by SIGTERM or SIGINT after draining; check-config: the configuration is valid;
       reload: the new configuration is in force
  1    any other failure (the address cannot be bound; reload: the server did not answer)
  64   command-line mistake (unknown option or subcommand, bad value)
  78   configuration error (an unknown key, a bad value, a value outside its allowed range),
       naming file, line and key (reload: refused, the old one stays); or the fence's state
       file cannot be read or holds a bad value, naming the file";

/// Report server: issues tickets and serves CSV reports, slower the more are outstanding.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Args {
    /// Configuration file [default: /etc/report-apis/config.toml, built-in defaults if absent]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `listen` from the configuration file
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration as a start would and print it as TOML (exit 0), or the error
    /// naming file, line and key (exit 78)
    ///
    /// Run it before `systemctl restart report-apis`: a restart stops the old server before
    /// the new one can find a mistake in the file.
    CheckConfig,
    /// Check the configuration, have the server re-read it and wait until it is in force
    /// (systemctl reload)
    ///
    /// Sends SIGHUP to PID and waits for the outcome the server leaves in
    /// $RUNTIME_DIRECTORY/reload: exit 0 once in force, 78 when the file or the server refuses
    /// it (the configuration in force then stays).
    Reload {
        /// The running server's process ID ($MAINPID under systemd)
        #[arg(long, value_name = "PID")]
        pid: i32,
    },
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let source = Source {
        file: args.config,
        listen: args.listen,
    };
    if let Some(Command::CheckConfig) = args.command {
        return check_config(&source);
    }
    let logs_on_stderr = logging::init("report-apis");
    if let Some(Command::Reload { pid }) = args.command {
        return reload::request(&source, pid, logs_on_stderr);
    }
    let config = match source.load() {
        Ok(loaded) => loaded.config,
        Err(err) => {
            tracing::error!(MESSAGE_ID = message_id::APIS_CONFIG_REJECTED, "{err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match serve(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Bind { listen, source }) => {
            tracing::error!(
                MESSAGE_ID = message_id::BIND_FAILED,
                LISTEN = %listen,
                "cannot listen on {listen}: {source}; free the port or choose another with --listen or `listen`"
            );
            ExitCode::FAILURE
        }
        Err(ServeError::Other(err)) => match err.downcast_ref::<MarksFileError>() {
            // Like a configuration mistake: a restart will not fix it.
            Some(refused) => {
                tracing::error!(
                    MESSAGE_ID = message_id::FENCE_STATE_REJECTED,
                    STATE_FILE = %refused.path.display(),
                    "{refused}"
                );
                ExitCode::from(exit::CONFIG)
            }
            None => {
                tracing::error!("{err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `check-config`: the configuration a start would use, or why it is refused; nothing logged.
fn check_config(source: &Source) -> ExitCode {
    match source.load() {
        Ok(loaded) => check_config::valid("report-apis", &loaded, &[], &[]),
        Err(err) => check_config::refused("report-apis", &err),
    }
}

/// Why the server stopped with an error: it could not bind its address (a kind of its own in
/// the journal), or anything else.
#[derive(Debug)]
enum ServeError {
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ServeError {
    fn from(err: anyhow::Error) -> Self {
        ServeError::Other(err)
    }
}

/// The server on a multi-threaded runtime, reloading from `source` on SIGHUP, until SIGTERM
/// or SIGINT.
fn serve(config: Config, source: Source) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        // Installed before READY=1: SIGHUP's default action would end the server.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                listen: config.listen,
                source,
            })?;
        let (reloader, reloads) = report_apis::reload_channel();
        let reloading = Reloading::new(source, reloader, reload::outcome_file());
        tokio::spawn(reload::on_sighup(hangup, reloading));
        Ok(report_apis::run_with_reloads(listener, config, shutdown, reloads).await?)
    });
    // A write of the fence's state file stuck on a file system that does not answer must not
    // keep the process from exiting: dropping the runtime would wait for it.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    served
}

/// How long the runtime waits at exit for blocking tasks still running (see [`serve`]).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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
