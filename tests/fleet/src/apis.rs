//! The real `report-apis`, inside the `db` namespace, listening on every address there (that
//! is, on each host's link and nowhere else).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::cleanup;
use crate::netns::{self, Probe};

pub const PORT: u16 = 8080;

#[derive(Debug)]
pub struct Apis {
    child: Child,
    log: PathBuf,
}

/// The shipped configuration with no heavy load, a fixed generation time (no slow-down with
/// the tickets pending), a short drain, and the fence's marks kept in `fence_state`, a file of
/// the run's own work directory (never the host's /var/lib).
pub fn config_text(generation_time: Duration, fence_state: &Path) -> String {
    // A JSON string is a TOML basic string: any path is written as it is.
    let state = serde_json::to_string(&fence_state.to_string_lossy()).unwrap_or_default();
    format!(
        "# Written by fleet-faults.\n\
         listen = \"0.0.0.0:{PORT}\"\n\n\
         [heavy-load]\nperiod = \"0s\"\ninitially-on = false\n\n\
         [report]\ngeneration-time = \"{}\"\nslowdown = 0.0\n\n\
         [shutdown]\ndrain-timeout = \"1s\"\n\n\
         [fence]\nstate-file = {state}\n",
        humantime::format_duration(generation_time)
    )
}

impl Apis {
    pub fn spawn(
        binary: &Path,
        dir: &Path,
        ns: &str,
        generation_time: Duration,
    ) -> anyhow::Result<Apis> {
        let config = dir.join("report-apis.toml");
        std::fs::write(
            &config,
            config_text(generation_time, &dir.join("report-apis-fence.json")),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        let log = dir.join("report-apis.log");
        let out = File::create(&log).context("cannot create the server's log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary)
            .arg("--config")
            .arg(&config)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        // `ip netns exec` executes the program in its own place: this pid is report-apis.
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            cleanup::pid(pid);
        }
        Ok(Apis { child, log })
    }

    /// Waits until `/healthz` answers 200 from inside `from_ns` at `addr`.
    pub async fn wait_ready(
        &mut self,
        from_ns: &str,
        addr: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("report-apis exited ({status}): {}", self.log_tail());
            }
            let (probe, first) = netns::probe(
                from_ns,
                addr,
                Duration::from_millis(500),
                Some("GET /healthz HTTP/1.0\r\n\r\n"),
            )
            .await?;
            if probe == Probe::Connected && first.contains(" 200") {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "report-apis did not answer at {addr} within {within:?} ({probe:?} {first}): {}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_marks_are_kept_in_the_given_file() {
        let text = config_text(
            Duration::from_millis(1500),
            Path::new("/var/tmp/fleet-faults-1/report-apis-fence.json"),
        );
        assert!(
            text.ends_with(
                "\n[fence]\nstate-file = \"/var/tmp/fleet-faults-1/report-apis-fence.json\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("generation-time = \"1s 500ms\""), "{text}");
    }
}
