//! One real `report-apis` process per arm, on its own loopback port, with a config file written
//! for the compressed time line.
//!
//! The config files are the programs' own `Config` values serialised, so a key renamed in a
//! program is a compile error here rather than a server that refuses to start mid-experiment.
//!
//! Each arm gets its own server so the load one policy causes never leaks into another's numbers.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use report_apis::config::{Config, Fencing, HeavyLoad, Limits, Report, Shutdown};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::params::Params;

/// A started server and where it listens.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    dir: PathBuf,
}

/// The server's configuration for these parameters: the shipped defaults with time compressed,
/// a short drain so that stopping a server does not hold up the experiment, and the fence's
/// marks kept in the arm's own directory `dir`, the fence enforced or not (`[fence] enforce`).
pub fn config(params: &Params, listen: SocketAddr, dir: &Path, enforce: bool) -> Config {
    let shipped = Config::default();
    Config {
        listen,
        heavy_load: HeavyLoad {
            period: params.heavy_period,
            initially_on: false,
        },
        report: Report {
            generation_time: params.generation_time,
            slowdown: params.slowdown,
        },
        limits: Limits {
            ticket_ttl: params.ticket_ttl(),
            ..shipped.limits
        },
        shutdown: Shutdown {
            drain_timeout: Duration::from_secs(1),
        },
        fence: Fencing {
            enforce,
            state_file: dir.join("fence.json"),
        },
    }
}

/// A program's configuration as the file it reads.
pub fn config_file(config: &impl Serialize) -> anyhow::Result<String> {
    let text = toml::to_string(config).context("cannot write the configuration as TOML")?;
    Ok(format!(
        "# Written by the experiment: the shipped defaults with time compressed.\n{text}"
    ))
}

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a loopback port")?;
    listener
        .local_addr()
        .context("cannot read the bound loopback port")
}

impl Server {
    /// Writes the config into `dir` and starts the server; returns at once.
    pub fn spawn(
        binary: &Path,
        dir: &Path,
        params: &Params,
        enforce: bool,
    ) -> anyhow::Result<Server> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let addr = free_port()?;
        let path = dir.join("report-apis.toml");
        // The server takes only an absolute state-file path.
        let absolute = std::path::absolute(dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?;
        fs::write(
            &path,
            config_file(&config(params, addr, &absolute, enforce))?,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        let log = File::create(dir.join("report-apis.log"))
            .context("cannot create the server's log file")?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("cannot share the server's log file")?,
            )
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Server {
            child,
            url: format!("http://{addr}"),
            dir: dir.to_path_buf(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.url
            .trim_start_matches("http://")
            .parse()
            .context("the server's address")
    }

    /// Waits until `/healthz` answers 200, or fails with the server's own words.
    pub async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        within: Duration,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + within;
        let url = format!("{}/healthz", self.url);
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot watch the server process")?
            {
                bail!(
                    "report-apis exited before it was ready ({status}): {}",
                    self.log_tail()
                );
            }
            if let Ok(resp) = client
                .get(&url)
                .timeout(Duration::from_millis(200))
                .send()
                .await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "report-apis did not answer {url} within {within:?}: {}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then SIGKILL if the drain takes too long.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = Pid::from_raw(i32::try_from(pid).context("process id out of range")?);
            // The process may already be gone; then there is nothing to stop.
            let _ = kill(pid, Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await.context("cannot kill report-apis")?;
        }
        Ok(())
    }

    /// The last lines the server wrote, for error messages.
    /// Whether the server exited because its port was taken before it could bind it.
    pub fn lost_its_port(&self) -> bool {
        fs::read_to_string(self.dir.join("report-apis.log"))
            .is_ok_and(|log| log.contains(report_common::message_id::BIND_FAILED))
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("report-apis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(no output)".to_string()
        } else {
            tail
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use report_common::config::ConfigFile;

    #[test]
    fn config_uses_the_documented_keys() {
        let config = config(
            &Params::default(),
            "127.0.0.1:9".parse().unwrap(),
            Path::new("/tmp/arm"),
            true,
        );
        let text = config_file(&config).unwrap();
        for needle in [
            "listen = \"127.0.0.1:9\"",
            "[heavy-load]",
            "period = \"6s\"",
            "generation-time = \"1s\"",
            "slowdown = 1.0",
            "ticket-ttl = \"30s\"",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let read = Config::parse(Path::new("report-apis.toml"), &text).unwrap();
        assert_eq!(read, config, "{text}");
        assert!(text.contains("enforce = true"), "{text}");
        let off = config_file(&super::config(
            &Params::default(),
            "127.0.0.1:9".parse().unwrap(),
            Path::new("/tmp/arm"),
            false,
        ))
        .unwrap();
        assert!(off.contains("[fence]\nenforce = false"), "{off}");
    }
}
