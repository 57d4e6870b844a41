//! Reloading a running server, end to end: what `systemctl reload report-apis` sets going.
//!
//! - In the server, a [`Reloader`] hands a new configuration to [`crate::run_with_reloads`],
//!   which applies it without dropping a ticket, or refuses it when it needs a restart.
//! - On every SIGHUP ([`on_sighup`]) the server reads its file again as a start reads it, off
//!   the runtime's threads and within [`READ_TIMEOUT`] ([`crate::blocking_read`]), has it
//!   applied, logs the outcome (RELOADED or RELOAD_REJECTED) and leaves it in the outcome file.
//! - `report-apis reload` ([`request`], the unit's `ExecReload=`) checks the file first, sends
//!   SIGHUP and waits for a new outcome in that file, so that `systemctl reload` fails when the
//!   server refuses the file. Why a file rather than `Type=notify-reload`: the README's
//!   "Reloading" has what was measured on systemd 252 and 257.
//!
//! The outcome file is never opened by its name: the outcome is written to a new file beside
//! it (created exclusively, so nothing planted there is opened) and renamed over it. Written
//! by its name, a FIFO planted at the temporary name blocked that write, on a runtime thread,
//! and a symbolic link there redirected it. The write runs on a detached thread as the read
//! does, since a file system that does not answer blocks any write however the file is opened.

use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use report_common::config::ConfigFile as _;
use report_common::{exit, message_id};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::blocking_read::{BlockingRead, NotRead};
use crate::config::{Config, Source};
use crate::fence::Fences;
use crate::notify;
use crate::tickets::Tickets;

/// Asks a running server to apply a new configuration; see [`crate::run_with_reloads`].
#[derive(Debug, Clone)]
pub struct Reloader(mpsc::Sender<(Config, oneshot::Sender<Result<String, String>>)>);

/// The server's end of a [`Reloader`].
#[derive(Debug)]
pub struct Reloads(mpsc::Receiver<(Config, oneshot::Sender<Result<String, String>>)>);

/// A reloader and the end [`crate::run_with_reloads`] takes.
pub fn reload_channel() -> (Reloader, Reloads) {
    let (tx, rx) = mpsc::channel(1);
    (Reloader(tx), Reloads(rx))
}

impl Reloader {
    /// Applies `config` to the running server once it is in force: `Ok` says what changed,
    /// `Err` why the server refused it (the configuration in force then stays as it was).
    pub async fn reload(&self, config: Config) -> Result<String, String> {
        let (done, outcome) = oneshot::channel();
        self.0
            .send((config, done))
            .await
            .map_err(|_| "the server is not running".to_owned())?;
        outcome
            .await
            .unwrap_or_else(|_| Err("the server stopped during the reload".to_owned()))
    }
}

/// What a reload from `running` to `new` changes, or why it cannot be applied to a running
/// server.
fn reload_changes(running: &Config, new: &Config) -> Result<String, String> {
    if new.listen != running.listen {
        return Err(format!(
            "`listen` changed from {} to {}: that needs a restart (systemctl restart report-apis); \
             nothing was changed",
            running.listen, new.listen
        ));
    }
    if new.fence.state_file != running.fence.state_file {
        return Err(format!(
            "`fence.state-file` changed from {} to {}: that needs a restart (copy the file \
             to its new place first, or every lock's mark starts afresh); nothing was changed",
            running.fence.state_file.display(),
            new.fence.state_file.display()
        ));
    }
    if (new.limits.max_connections, new.limits.header_timeout)
        != (
            running.limits.max_connections,
            running.limits.header_timeout,
        )
    {
        return Err(
            "`limits.max-connections` or `limits.header-timeout` changed: that needs a restart \
             (systemctl restart report-apis); nothing was changed"
                .to_owned(),
        );
    }
    let running = toml::Table::try_from(running).map_err(|e| e.to_string())?;
    let new = toml::Table::try_from(new).map_err(|e| e.to_string())?;
    let mut changed = Vec::new();
    for (table, values) in &new {
        let (Some(values), Some(old)) = (
            values.as_table(),
            running.get(table).and_then(|v| v.as_table()),
        ) else {
            continue;
        };
        for (key, value) in values {
            if old.get(key) != Some(value) {
                changed.push(format!("{table}.{key} = {value}"));
            }
        }
    }
    Ok(if changed.is_empty() {
        "nothing changed".to_owned()
    } else {
        changed.join(", ")
    })
}

/// Applies each reloaded configuration to the ticket store and records it as the one in force,
/// unless it cannot apply to a running server.
pub(crate) async fn apply_reloads(
    mut reloads: Reloads,
    tickets: Arc<Tickets>,
    fences: Arc<Fences>,
    in_force: Arc<Mutex<Config>>,
) {
    while let Some((new, done)) = reloads.0.recv().await {
        let outcome = {
            let mut running = in_force.lock().unwrap_or_else(|p| p.into_inner());
            reload_changes(&running, &new).inspect(|_| {
                tickets.reconfigure(&new, Instant::now());
                fences.reconfigure(&new);
                *running = new;
            })
        };
        let _ = done.send(outcome);
    }
}

/// Where the server leaves the outcome of each reload for `report-apis reload` to read:
/// systemd's `RuntimeDirectory=` (`RUNTIME_DIRECTORY`), or nowhere for a manual run.
pub fn outcome_file() -> Option<PathBuf> {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")?;
    // systemd lists several directories separated by colons when there are several.
    let first = std::env::split_paths(&dir).next()?;
    Some(first.join("reload"))
}

/// How long `report-apis reload` waits for the server's outcome; systemd's own reload timeout
/// is longer.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long the server waits on SIGHUP for its configuration file to be read and checked. A
/// local file takes milliseconds (1 MiB at most); a file system that has not answered in 5 s
/// may never answer, and the server goes on with the configuration in force, well within
/// [`WAIT`], so that `report-apis reload` hears of the refusal.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits for the outcome file to be written; on the same grounds as
/// [`READ_TIMEOUT`], and together with it well within [`WAIT`].
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most the outcome file may hold: the server writes one line there.
const OUTCOME_FILE_LIMIT: u64 = 64 << 10;

/// The server's side of reloading: each [`Reloading::reload`] is what one SIGHUP does.
#[derive(Debug)]
pub struct Reloading {
    source: Source,
    reloader: Reloader,
    outcome_file: Option<PathBuf>,
    reads: BlockingRead,
    writes: BlockingRead,
    /// Reloads so far: with the process ID, what tells one outcome in the file from the last.
    count: u64,
}

impl Reloading {
    /// Reloads from `source` into the server of `reloader`, leaving each outcome in
    /// `outcome_file` (see [`outcome_file`]) when there is one.
    pub fn new(source: Source, reloader: Reloader, outcome_file: Option<PathBuf>) -> Self {
        Reloading {
            source,
            reloader,
            outcome_file,
            reads: BlockingRead::default(),
            writes: BlockingRead::default(),
            count: 0,
        }
    }

    /// Re-reads the configuration as a start would, has the server apply it, logs the outcome
    /// and leaves it in the outcome file. A file that cannot be read within [`READ_TIMEOUT`]
    /// is refused as a bad one is, and the server answers on. Returns the outcome: what
    /// changed, or why the configuration in force stays.
    pub async fn reload(&mut self) -> Result<String, String> {
        self.count += 1;
        notify::reloading();
        let source = self.source.clone();
        let read = self.reads.run(READ_TIMEOUT, move || source.load());
        let outcome = match read.await {
            Ok(Ok(loaded)) => self.reloader.reload(loaded.config).await,
            Ok(Err(err)) => Err(err.to_string()),
            Err(not_read) => Err(not_read_in_time(&self.source.file_name(), &not_read)),
        };
        let line = match &outcome {
            Ok(changes) => {
                tracing::info!(
                    MESSAGE_ID = message_id::RELOADED,
                    "reloaded: the new configuration is in force ({changes}); pending tickets kept"
                );
                format!("reloaded: the new configuration is in force ({changes})")
            }
            Err(why) => {
                tracing::error!(
                    MESSAGE_ID = message_id::RELOAD_REJECTED,
                    CONFIG_FILE = self.source.file_name().as_str(),
                    "reload refused, the configuration in force stays: {why}"
                );
                format!("reload refused, the configuration in force stays: {why}")
            }
        };
        if let Some(file) = &self.outcome_file {
            let text = format!("{}.{} {line}\n", std::process::id(), self.count);
            let target = file.clone();
            let written = self
                .writes
                .run(WRITE_TIMEOUT, move || write_outcome(&target, &text))
                .await;
            let failed = match written {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(not_written) => Some(not_written_in_time(&not_written)),
            };
            if let Some(why) = failed {
                tracing::warn!("cannot write {}: {why}", file.display());
            }
        }
        notify::reloaded();
        outcome
    }
}

/// Reloads on every SIGHUP `hangup` receives; installed before READY=1, since SIGHUP's default
/// action would end the server.
pub async fn on_sighup(mut hangup: tokio::signal::unix::Signal, mut reloading: Reloading) {
    while hangup.recv().await.is_some() {
        let _ = reloading.reload().await;
    }
}

/// Why a reload has no configuration to apply, when the file gave no answer.
fn not_read_in_time(file: &str, not_read: &NotRead) -> String {
    format!(
        "cannot read the configuration file {file}: {not_read}; check the file system it is on, then reload again"
    )
}

/// Why the outcome file was not written, when its file system gave no answer.
fn not_written_in_time(not_written: &NotRead) -> String {
    match not_written {
        NotRead::StillBusy => {
            "the write of an earlier reload's outcome has not returned yet (does its file system answer?)"
                .to_owned()
        }
        NotRead::TimedOut(limit) => format!(
            "not written within {} (does its file system answer?)",
            humantime::format_duration(*limit)
        ),
        NotRead::Lost(why) => format!("the write ended without a result: {why}"),
    }
}

/// Leaves `text` in `file`: written to a new file in its directory and renamed over it, so
/// that whatever is at either name (a FIFO, a link, a directory) is never opened, and
/// `report-apis reload` reads either the last outcome or this one, whole.
fn write_outcome(file: &Path, text: &str) -> io::Result<()> {
    let dir = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".reload.")
        // As a plain create would: the umask (the unit's UMask=) decides.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    temporary.write_all(text.as_bytes())?;
    temporary.persist(file).map_err(|err| err.error)?;
    Ok(())
}

/// The outcome the server last wrote, if there is one to read.
fn read_outcome(file: &Path) -> Option<String> {
    let bytes = report_common::files::read(file, OUTCOME_FILE_LIMIT).ok()?;
    String::from_utf8(bytes).ok()
}

/// `report-apis reload --pid PID`: checks the configuration as a start would, sends SIGHUP to
/// the server and waits for its outcome; exit 0 once the new configuration is in force, 78
/// when the check or the server refuses it. `logs_on_stderr` is what logging's setup said:
/// whether the journal is out of reach (a run by hand).
pub fn request(source: &Source, pid: i32, logs_on_stderr: bool) -> ExitCode {
    use nix::sys::signal::{Signal, kill};
    // Under ExecReload= the refusal goes to the journal with its MESSAGE_ID, as the server's
    // own refusal does; by hand, readable on stderr. The check reads the file without a word:
    // the server says what it read once it applies it.
    if let Err(err) = Config::load_or_default(source.file.as_deref()) {
        tracing::error!(
            MESSAGE_ID = message_id::RELOAD_REJECTED,
            CONFIG_FILE = source.file_name().as_str(),
            "reload refused, the configuration in force stays: {err}"
        );
        // This process ends at once, and journald may then not tie the record above to the
        // unit (`journalctl -t report-apis` and its MESSAGE_ID find it). The unit's own output
        // stream always is tied to it: say it there too, as for the server's refusals below,
        // so `journalctl -u report-apis`, where systemctl points, shows why.
        if !logs_on_stderr {
            eprintln!("report-apis: reload refused, the configuration in force stays: {err}");
        }
        return ExitCode::from(exit::CONFIG);
    }
    let Some(file) = outcome_file() else {
        eprintln!(
            "report-apis: RUNTIME_DIRECTORY is not set: run `systemctl reload report-apis`, \
             or send SIGHUP to the server yourself"
        );
        return ExitCode::from(exit::USAGE);
    };
    let before = read_outcome(&file);
    if let Err(err) = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP) {
        eprintln!("report-apis: cannot signal the server (PID {pid}): {err}");
        return ExitCode::FAILURE;
    }
    match wait_for_outcome(&file, before.as_deref()) {
        Some(Ok(done)) => {
            println!("report-apis: {done}");
            ExitCode::SUCCESS
        }
        Some(Err(refused)) => {
            eprintln!("report-apis: {refused}");
            ExitCode::from(exit::CONFIG)
        }
        None => {
            eprintln!(
                "report-apis: the server (PID {pid}) did not report the reload within {}; see journalctl -u report-apis",
                humantime::format_duration(WAIT)
            );
            ExitCode::FAILURE
        }
    }
}

/// Waits up to [`WAIT`] for an outcome in `file` other than `before`: `Ok` with the sentence
/// of a reload in force, `Err` with that of a refusal; `None` when none came.
fn wait_for_outcome(file: &Path, before: Option<&str>) -> Option<Result<String, String>> {
    let waited_from = std::time::Instant::now();
    while waited_from.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
        let Some(now) = read_outcome(file) else {
            continue;
        };
        if Some(now.as_str()) == before {
            continue;
        }
        return Some(outcome_of(&now));
    }
    None
}

/// What a line of the outcome file says, without its `PID.COUNT` tag.
fn outcome_of(text: &str) -> Result<String, String> {
    let outcome = text.lines().next().unwrap_or_default();
    match outcome.split_once(' ').map(|(_, rest)| rest) {
        Some(rest) if rest.starts_with("reloaded") => Ok(rest.to_owned()),
        _ => Err(outcome
            .split_once(' ')
            .map_or(outcome, |(_, rest)| rest)
            .to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What "at once" means here, on a loaded machine: far below any hang.
    const PROMPT: Duration = Duration::from_secs(10);

    /// A reloader whose server takes every configuration, saying `changes`.
    fn taking_everything(changes: &'static str) -> Reloader {
        let (reloader, mut reloads) = reload_channel();
        tokio::spawn(async move {
            while let Some((_, done)) = reloads.0.recv().await {
                let _ = done.send(Ok(changes.to_owned()));
            }
        });
        reloader
    }

    #[tokio::test]
    async fn the_outcome_replaces_a_fifo_or_a_link_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "listen = \"127.0.0.1:0\"\n").unwrap();
        let file = dir.path().join("reload");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        let source = Source {
            file: Some(config),
            listen: None,
        };
        let mut reloading = Reloading::new(source, taking_everything("x = 1"), Some(file.clone()));

        // A FIFO where the outcome goes and where it was once written first: opening either
        // by name would wait for a reader.
        let fifo = nix::sys::stat::Mode::S_IRWXU;
        nix::unistd::mkfifo(&file, fifo).unwrap();
        nix::unistd::mkfifo(&file.with_extension("new"), fifo).unwrap();
        let outcome = tokio::time::timeout(PROMPT, reloading.reload()).await;
        assert_eq!(outcome.unwrap(), Ok("x = 1".to_owned()));
        // Checked before it is read: reading a FIFO left there would hang the test.
        assert!(std::fs::symlink_metadata(&file).unwrap().is_file());
        let text = std::fs::read_to_string(&file).unwrap();
        let wanted = format!(
            "{}.1 reloaded: the new configuration is in force (x = 1)\n",
            std::process::id()
        );
        assert_eq!(text, wanted);
        assert_eq!(
            outcome_of(&text),
            Ok("reloaded: the new configuration is in force (x = 1)".to_owned())
        );

        // A link in its place is replaced, not written through.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        let outcome = tokio::time::timeout(PROMPT, reloading.reload()).await;
        assert!(outcome.unwrap().is_ok());
        assert!(std::fs::symlink_metadata(&file).unwrap().is_file());
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains(".2 reloaded")
        );
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");

        // Nothing is left beside it but what the test put there.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["config.toml", "elsewhere", "reload", "reload.new"]);
    }

    #[tokio::test]
    async fn a_refused_file_is_left_in_the_outcome_file_and_read_as_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "listne = 1\n").unwrap();
        let file = dir.path().join("reload");
        let source = Source {
            file: Some(config.clone()),
            listen: None,
        };
        let mut reloading = Reloading::new(source, taking_everything("x = 1"), Some(file.clone()));
        let why = reloading.reload().await.unwrap_err();
        assert!(why.contains("key `listne`"), "{why}");
        let refused = outcome_of(&std::fs::read_to_string(&file).unwrap()).unwrap_err();
        assert!(
            refused.starts_with("reload refused, the configuration in force stays: ")
                && refused.contains(&config.display().to_string()),
            "{refused}"
        );
    }

    #[test]
    fn a_directory_in_place_of_the_outcome_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reload");
        std::fs::create_dir(&file).unwrap();
        assert!(write_outcome(&file, "1.1 reloaded\n").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
