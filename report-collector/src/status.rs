//! `report-collector status`: a verdict a monitor can act on (healthy, or no collection within
//! `stale-after`), with the lock (held, by whom), the last run, the last collection and the
//! reports kept. It learns about the lock from `/proc/locks` and the holder record without
//! ever taking the lock, so asking never makes a run skip.
//!
//! Every path it reads is checked before it is read: a path it cannot inspect (no
//! permission, not a regular file, a missing directory, a state file that is not one) is
//! reported with the path and the reason and makes the exit code non-zero, because a health
//! check that cannot see must not say "healthy". Files are opened with `O_NONBLOCK` and
//! `O_NOFOLLOW` and their type checked on the open descriptor, so a FIFO in place of a file
//! never blocks `status`, and nothing here ever waits for a lock. Whether the lock is held
//! comes from a stat of the lock file and `/proc/locks`, so a user who may not read the lock
//! file sees "held" (with the permission problem listed), never a wrong "free".

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use report_common::ticket::Ticket;
use serde::Serialize;

use crate::client::FenceNote;
use crate::config::Config;
use crate::lock::{Holder, RunLock};
use crate::state::{Collection, LastRun, State, StateError, file_kind};
use crate::time::Timestamp;
use crate::time::serde::seconds_or_none;
use crate::{files, store};

/// The exit codes of `status` (documented in `--help`, the README and the man page).
pub mod code {
    /// A collection within `stale-after`, or no collection yet but within the grace period
    /// that starts with the first run, or no run yet while the state directory is younger
    /// than `stale-after`.
    pub const HEALTHY: u8 = 0;
    /// No collection within `stale-after` (counted from the first run when none ever was, and
    /// from the state directory's creation when no run ever was).
    pub const STALE: u8 = 1;
    /// A path could not be inspected (not a regular file or directory, missing directory,
    /// a state file that is not one, an I/O error): sysexits' EX_IOERR.
    pub const CANNOT_INSPECT: u8 = 74;
    /// A path could not be inspected for lack of permission: sysexits' EX_NOPERM.
    pub const NO_PERMISSION: u8 = 77;
    /// The last collection (or the first run) lies in the future by more than
    /// [`FUTURE_TOLERANCE`](super::FUTURE_TOLERANCE): the clock was set back, or the state
    /// file is wrong, so how long ago anything happened cannot be told: sysexits' EX_DATAERR.
    pub const IN_THE_FUTURE: u8 = 65;
}

/// How far ahead of the clock a recorded time may lie and still be taken as now: a clock
/// stepped back by NTP by a little. Beyond it, `status` says the clock or the state file is
/// wrong instead of counting "0s ago" until that time comes.
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(5);

/// Text read back from the state file, the lock's record or row, escaped for a line of
/// `status` ([`report_common::shown`]): a newline in it cannot forge a second `health:` line.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    report_common::shown::plain_or_quoted(text, 2000)
}

/// How the collector is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// The last collection is within `stale-after`.
    Healthy,
    /// No collection yet, but the first run was within `stale-after`: a fresh install.
    Grace,
    /// No run on record yet, and the state directory is younger than `stale-after`: the
    /// timer has not started one yet.
    NoRunYet,
    /// No collection within `stale-after`.
    Stale,
    /// The state file could not be read, or what it says lies in the future.
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Grace => "grace",
            Health::NoRunYet => "no-run-yet",
            Health::Stale => "stale",
            Health::Unknown => "unknown",
        }
    }
}

/// The verdict: the word, the exit code, and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub health: Health,
    pub exit_code: u8,
    pub reason: String,
}

/// Judges a readable state (or none) at `now`: the whole rule, in one place.
/// `waiting` is where runs are recorded and since when ([`waiting_since`]): with no run on
/// record, a grace period counts from then, so that a timer that never runs is not healthy
/// for ever.
pub fn judge(
    state: Option<&State>,
    waiting: Option<(&Path, Timestamp)>,
    now: Timestamp,
    stale_after: Duration,
) -> Verdict {
    // Computed in Unix seconds, as the state file holds them: the verdict rounds as it always
    // has.
    let now = now.unix_seconds();
    match state {
        Some(state) => judge_runs(state, now, stale_after),
        None => judge_no_run(waiting, now, stale_after),
    }
}

/// How long before `now` (Unix seconds) the time `at` lies, to the second; nothing for a time
/// ahead.
fn ago(now: f64, at: Timestamp) -> humantime::FormattedDuration {
    humantime::format_duration(
        Duration::try_from_secs_f64((now - at.unix_seconds()).max(0.0).round())
            .unwrap_or(Duration::MAX),
    )
}

/// How long before `now` (Unix seconds) `at` lies, in seconds (negative when after it).
fn since(now: f64, at: Timestamp) -> f64 {
    now - at.unix_seconds()
}

/// Whether `at` lies too far ahead of `now` (Unix seconds) to be taken as now
/// ([`FUTURE_TOLERANCE`]).
fn ahead(now: f64, at: Timestamp) -> bool {
    at.unix_seconds() - now > FUTURE_TOLERANCE.as_secs_f64()
}

/// The verdict on a state whose `what` is recorded at `at`, ahead of the clock.
fn in_the_future(what: &str, at: Timestamp, now: f64) -> Verdict {
    let unix = at.unix_seconds();
    Verdict {
        health: Health::Unknown,
        exit_code: code::IN_THE_FUTURE,
        reason: format!(
            "{what} is recorded at {}, {} ahead of this host's clock: the clock was set back or the state file is wrong, so whether a report was collected lately cannot be told; check the clock (timedatectl) and the state file",
            at,
            humantime::format_duration(
                Duration::try_from_secs_f64((unix - now).round()).unwrap_or(Duration::MAX)
            )
        ),
    }
}

/// The verdict with no run on record: waiting for the first run, or waited too long.
fn judge_no_run(waiting: Option<(&Path, Timestamp)>, now: f64, stale_after: Duration) -> Verdict {
    let stale_after_text = humantime::format_duration(stale_after);
    match waiting {
        Some((dir, created)) if since(now, created) > stale_after.as_secs_f64() => Verdict {
            health: Health::Stale,
            exit_code: code::STALE,
            reason: format!(
                "no run on record since {} was created at {} ({} ago), longer than stale-after ({stale_after_text}); check that the timer runs (systemctl list-timers report-collector.timer) and why runs end before they record (journalctl -u report-collector)",
                dir.display(),
                created,
                ago(now, created)
            ),
        },
        _ => Verdict {
            health: Health::NoRunYet,
            exit_code: code::HEALTHY,
            reason: format!(
                "no run on record yet; the grace period of stale-after ({stale_after_text}) starts with the first run"
            ),
        },
    }
}

/// The verdict on the runs on record: by the last collection, or by the first run while
/// there has been none.
fn judge_runs(state: &State, now: f64, stale_after: Duration) -> Verdict {
    let limit = stale_after.as_secs_f64();
    let stale_after_text = humantime::format_duration(stale_after);
    match &state.last_collection {
        Some(c) if ahead(now, c.finished) => in_the_future("the last collection", c.finished, now),
        None if ahead(now, state.first_run) => in_the_future("the first run", state.first_run, now),
        Some(c) if since(now, c.finished) <= limit => Verdict {
            health: Health::Healthy,
            exit_code: code::HEALTHY,
            reason: format!(
                "last collection {} ago, within stale-after ({stale_after_text})",
                ago(now, c.finished)
            ),
        },
        Some(c) => Verdict {
            health: Health::Stale,
            exit_code: code::STALE,
            reason: format!(
                "no collection for {} (last at {}), longer than stale-after ({stale_after_text}); see the last run below and `journalctl -u report-collector.service`",
                ago(now, c.finished),
                c.finished
            ),
        },
        None if since(now, state.first_run) <= limit => Verdict {
            health: Health::Grace,
            exit_code: code::HEALTHY,
            reason: format!(
                "no collection yet; first run {} ago, within the grace period of stale-after ({stale_after_text})",
                ago(now, state.first_run)
            ),
        },
        None => Verdict {
            health: Health::Stale,
            exit_code: code::STALE,
            reason: format!(
                "no collection at all since the first run at {} ({} ago), longer than stale-after ({stale_after_text}); see the last run below and `journalctl -u report-collector.service`",
                state.first_run,
                ago(now, state.first_run)
            ),
        },
    }
}

/// A path `status` could not inspect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
    pub exit_code: u8,
}

impl Problem {
    fn io(path: &Path, what: &str, e: &io::Error) -> Problem {
        let denied = e.kind() == io::ErrorKind::PermissionDenied;
        Problem {
            path: path.to_owned(),
            reason: if denied {
                format!(
                    "cannot inspect the {what} {}: {e}; run `report-collector status` as root or as the report-collector user (runuser -u report-collector -- report-collector status)",
                    path.display()
                )
            } else {
                format!("cannot inspect the {what} {}: {e}", path.display())
            },
            exit_code: if denied {
                code::NO_PERMISSION
            } else {
                code::CANNOT_INSPECT
            },
        }
    }

    fn state(e: &StateError) -> Problem {
        match e {
            StateError::Io { path, source } => Problem::io(path, "state file", source),
            _ => Problem {
                path: e.path().to_owned(),
                reason: e.to_string(),
                exit_code: code::CANNOT_INSPECT,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// `health`, `exit_code`, `reason`; the exit code of `status` itself.
    pub verdict: Verdict,
    pub stale_after_seconds: f64,
    /// The paths that could not be inspected, with why.
    pub problems: Vec<Problem>,
    pub lock: LockStatus,
    #[serde(serialize_with = "crate::state::moment::serialize_option")]
    pub first_run: Option<Timestamp>,
    pub last_run: Option<LastRun>,
    pub last_collection: Option<Collection>,
    pub reports: Reports,
    /// What the report server last said of a run's fencing token: `enforced`,
    /// `not-acknowledged`, or `null` while no run has sent one.
    pub fence: Option<FenceNote>,
}

#[derive(Debug, Serialize)]
pub struct LockStatus {
    pub path: PathBuf,
    pub policy: String,
    /// `true` whenever `/proc/locks` shows the lock held, even when the lock file could not
    /// be read; `null` when whether it is held cannot be told.
    pub held: Option<bool>,
    pub pid: Option<u32>,
    #[serde(with = "seconds_or_none")]
    pub since: Option<Timestamp>,
    pub ticket: Option<Ticket>,
    /// While the lock is free: the ticket a run left unfinished, for the next run to resume.
    pub left_ticket: Option<LeftTicketStatus>,
    /// `flock` or `postgres`.
    pub backend: String,
    /// How the lock is named: the lock file, or the lock name and the database.
    pub name: String,
    /// The holder's host (always shown for the PostgreSQL lock).
    pub host: Option<String>,
    /// The last collection of any host sharing the lock (PostgreSQL only).
    pub fleet_last_collection: Option<crate::lock::FleetCollection>,
}

/// A ticket left in the lock's record, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct LeftTicketStatus {
    pub ticket: Ticket,
    #[serde(with = "seconds_or_none")]
    pub requested: Option<Timestamp>,
    pub by_pid: u32,
}

#[derive(Debug, Serialize)]
pub struct Reports {
    pub dir: PathBuf,
    /// `null` when the report directory could not be inspected.
    pub kept: Option<usize>,
    pub keep: usize,
    pub newest: Option<String>,
}

/// `report-collector status [--json]`: prints what [`gather`] found; exits with its verdict.
pub async fn print(config: &Config, lock: &impl RunLock, json: bool) -> ExitCode {
    let status = gather(config, lock, Timestamp::now()).await;
    let text = if json {
        match serde_json::to_string_pretty(&status) {
            Ok(mut text) => {
                text.push('\n');
                text
            }
            Err(e) => {
                tracing::error!("cannot render the status as JSON: {e}");
                return ExitCode::from(report_common::exit::FAILURE);
            }
        }
    } else {
        status.render()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::from(status.verdict.exit_code)
}

/// Whether `path` can be looked at as a file of the expected kind; `Ok(false)` when it does
/// not exist but its directory does. A directory is looked at through a symbolic link (a report
/// directory moved to another disk); a file is opened for reading as the collector opens it,
/// never through a final symbolic link and never blocking, so a file this user cannot read is
/// a permission problem here too.
fn inspect(path: &Path, what: &str, want_dir: bool) -> Result<bool, Problem> {
    let found = if want_dir {
        std::fs::metadata(path).and_then(|m| {
            if m.is_dir() {
                Ok(true)
            } else {
                Err(io::Error::other(format!(
                    "it is {}, not a directory",
                    match file_kind(m.file_type()) {
                        "not a regular file" => "a regular file",
                        kind => kind,
                    }
                )))
            }
        })
    } else {
        files::open_to_read(path).and_then(|file| match file {
            Some(_) => Ok(true),
            None => Err(io::ErrorKind::NotFound.into()),
        })
    };
    match found {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => Err(Problem {
                path: path.to_owned(),
                reason: format!(
                    "cannot inspect the {what} {}: its directory {} does not exist (no run has created it, or the configuration points elsewhere)",
                    path.display(),
                    dir.display()
                ),
                exit_code: code::CANNOT_INSPECT,
            }),
            _ => Ok(false),
        },
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(Problem::io(path, what, &e)),
        Err(e) => Err(Problem {
            path: path.to_owned(),
            reason: match files::not_regular(&e) {
                Some(not) => format!(
                    "cannot inspect the {what} {}: it is {}, not a regular file; remove it, or set the configuration to a regular file's path",
                    path.display(),
                    not.kind
                ),
                None => format!("cannot inspect the {what} {}: {e}", path.display()),
            },
            exit_code: code::CANNOT_INSPECT,
        }),
    }
}

/// The directory runs record in (the state file's), and since when it has been there: its
/// creation time where the file system keeps one (the package creates
/// `/var/lib/report-collector` when it is installed), else when its entries last changed.
pub fn waiting_since(state_file: &Path) -> Option<(PathBuf, Timestamp)> {
    let dir = state_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::metadata(dir).ok()?;
    let since = meta.created().or_else(|_| meta.modified()).ok()?;
    Some((dir.to_owned(), Timestamp::from(since)))
}

/// Looks at the state file, the lock and the report directory, and judges at `now`.
pub async fn gather(config: &Config, lock: &impl RunLock, now: Timestamp) -> Status {
    let mut problems = Vec::new();
    let stale_after = config.stale_after();
    let state = State::load(&config.state_file).map_err(|e| problems.push(Problem::state(&e)));
    let lock_status = lock_status(config, lock, &mut problems).await;
    let names = report_names(config)
        .map_err(|problem| problems.push(problem))
        .ok();
    let verdict = state_verdict(config, &state, now, stale_after);
    let verdict = never_healthy_unseen(verdict, &problems, state.is_err());
    let state = state.ok().flatten();
    Status {
        verdict,
        stale_after_seconds: stale_after.as_secs_f64(),
        problems,
        lock: lock_status,
        first_run: state.as_ref().map(|s| s.first_run),
        last_run: state.as_ref().map(|s| s.last_run.clone()),
        fence: state.as_ref().and_then(|s| s.fence),
        last_collection: state.and_then(|s| s.last_collection),
        reports: Reports {
            dir: config.report_dir.clone(),
            kept: names.as_ref().map(Vec::len),
            keep: config.keep_reports,
            newest: names.and_then(|n| n.last().cloned()),
        },
    }
}

/// The lock as `status` shows it: held or free, by whom, and the ticket a run left; a problem
/// in looking at it goes on `problems`.
async fn lock_status(
    config: &Config,
    lock: &impl RunLock,
    problems: &mut Vec<Problem>,
) -> LockStatus {
    let (holder, lock_problem) = read_holder(config, lock).await;
    let held = match (&holder, &lock_problem) {
        (Ok(Some(_)), _) => Some(true),
        (Ok(None), None) => Some(false),
        // Free as far as /proc/locks tells, but the file could not be inspected: unknown.
        _ => None,
    };
    let holder = holder.ok().flatten();
    problems.extend(lock_problem);
    LockStatus {
        path: config.lock_file.clone(),
        policy: config.policy.as_str().to_owned(),
        held,
        pid: holder.as_ref().and_then(|h| h.pid),
        since: holder.as_ref().and_then(|h| h.since),
        ticket: holder.as_ref().and_then(|h| h.ticket.clone()),
        backend: lock.backend().to_owned(),
        name: lock.describe(),
        host: holder
            .as_ref()
            .filter(|h| h.show_host)
            .and_then(|h| h.host.clone()),
        fleet_last_collection: if held.is_some() {
            lock.fleet_last_collection().await.ok().flatten()
        } else {
            None
        },
        left_ticket: match held {
            Some(false) => left_ticket(lock).await,
            _ => None,
        },
    }
}

/// The lock's holder as the lock tells it (`Err(None)` when it was not asked), and the
/// problem in looking at the lock: a lock file that cannot be inspected, or the shared lock's
/// database out of reach.
async fn read_holder(
    config: &Config,
    lock: &impl RunLock,
) -> (Result<Option<Holder>, Option<io::Error>>, Option<Problem>) {
    // Whether the lock is held comes from a stat and /proc/locks, not from reading the file:
    // a user who cannot read it still learns that a run holds it (and the problem is listed).
    let shared = lock.shared();
    let lock_problem = if shared {
        None
    } else {
        inspect(&config.lock_file, "lock file", false).err()
    };
    let holder = match &lock_problem {
        Some(problem) if problem.exit_code != code::NO_PERMISSION => Err(None),
        _ => lock.holder().await.map_err(Some),
    };
    // The shared lock's database out of reach is a problem of its own, with its own exit.
    let lock_problem = match (&holder, lock_problem) {
        (Err(Some(e)), None) if shared => Some(Problem {
            path: PathBuf::from(lock.describe()),
            reason: format!("cannot read the lock {}: {e}", lock.describe()),
            exit_code: report_common::exit::UNAVAILABLE,
        }),
        (_, problem) => problem,
    };
    (holder, lock_problem)
}

/// The ticket a run left unfinished in the free lock's record, as `status` shows it.
async fn left_ticket(lock: &impl RunLock) -> Option<LeftTicketStatus> {
    lock.left_ticket()
        .await
        .ok()
        .flatten()
        .map(|left| LeftTicketStatus {
            ticket: left.ticket,
            requested: left.requested,
            by_pid: left.by_pid,
        })
}

/// The names of the reports kept in the report directory, oldest first, or why they cannot be
/// listed.
fn report_names(config: &Config) -> Result<Vec<String>, Problem> {
    match inspect(&config.report_dir, "report directory", true) {
        Ok(true) => store::list(&config.report_dir, &store::order_path(&config.state_file))
            .map_err(|e| Problem::io(&config.report_dir, "report directory", &e)),
        Ok(false) => Ok(Vec::new()),
        Err(problem) => Err(problem),
    }
}

/// The verdict on the state file as it was read (`Err` when it could not be).
fn state_verdict(
    config: &Config,
    state: &Result<Option<State>, ()>,
    now: Timestamp,
    stale_after: Duration,
) -> Verdict {
    match state {
        Ok(state) => {
            let waiting = state
                .is_none()
                .then(|| waiting_since(&config.state_file))
                .flatten();
            judge(
                state.as_ref(),
                waiting.as_ref().map(|(dir, since)| (dir.as_path(), *since)),
                now,
                stale_after,
            )
        }
        Err(()) => Verdict {
            health: Health::Unknown,
            exit_code: code::CANNOT_INSPECT,
            reason: "the state file cannot be read (see below), so when the last collection was is unknown".to_owned(),
        },
    }
}

/// A check that could not see everything never passes as healthy: the first problem's exit
/// code replaces a healthy one, and the one of a state file that could not be read.
fn never_healthy_unseen(verdict: Verdict, problems: &[Problem], state_unread: bool) -> Verdict {
    match problems.first() {
        Some(problem) if verdict.exit_code == code::HEALTHY || state_unread => Verdict {
            exit_code: problem.exit_code,
            ..verdict
        },
        _ => verdict,
    }
}

impl Status {
    /// The text `status` prints without `--json`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let v = &self.verdict;
        let _ = writeln!(
            out,
            "health:   {} (exit {}): {}",
            v.health.as_str(),
            v.exit_code,
            v.reason
        );
        for problem in &self.problems {
            let _ = writeln!(out, "problem:  {}", shown(&problem.reason));
        }
        self.lock.render(&mut out);
        self.render_last_run(&mut out);
        self.render_last_collection(&mut out);
        self.reports.render(&mut out);
        if self.fence == Some(FenceNote::NotAcknowledged) {
            let _ = writeln!(
                out,
                "fence:    not acknowledged: the report server did not say it enforced the last fenced run's token (the original server, a report-apis without the fence, or [fence] enforce = false), so a holder that lost the lock can still have it issue or cancel a ticket"
            );
        }
        out
    }

    /// The `last run:` line.
    fn render_last_run(&self, out: &mut String) {
        match &self.last_run {
            Some(run) => {
                let _ = writeln!(
                    out,
                    "last run: {} at {} (took {:.3}s, exit {}): {}",
                    shown(&run.outcome),
                    run.started
                        .map_or_else(|| "an unknown time".to_owned(), |at| at.to_string()),
                    run.duration_seconds,
                    run.exit_code,
                    shown(&run.message)
                );
            }
            None if self.verdict.health == Health::Unknown => {
                let _ = writeln!(out, "last run: unknown");
            }
            None => {
                let _ = writeln!(out, "last run: none recorded yet");
            }
        }
    }

    /// The `last collection:` line.
    fn render_last_collection(&self, out: &mut String) {
        match &self.last_collection {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "last collection: {}, ticket {}, {}",
                    c.finished,
                    c.ticket.as_ref().map_or("?", Ticket::as_str),
                    shown(&c.report.display().to_string())
                );
            }
            None if self.verdict.health == Health::Unknown => {
                let _ = writeln!(out, "last collection: unknown");
            }
            None => {
                let _ = writeln!(out, "last collection: none yet");
            }
        }
    }
}

impl LockStatus {
    /// The `lock:` line, the `left:` line of a free lock, the `fleet:` and `policy:` lines.
    fn render(&self, out: &mut String) {
        match self.held {
            Some(true) => {
                let _ = writeln!(
                    out,
                    "lock:     held by pid {}{} since {}, ticket {} ({})",
                    self.pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into()),
                    self.host
                        .as_deref()
                        .map(|h| format!(" on host {}", shown(h)))
                        .unwrap_or_default(),
                    self.since
                        .map_or_else(|| "an unknown time".to_owned(), |at| at.to_string()),
                    self.ticket.as_ref().map_or("(none yet)", Ticket::as_str),
                    shown(&self.name)
                );
            }
            Some(false) => {
                let _ = writeln!(out, "lock:     free ({})", shown(&self.name));
                if let Some(left) = &self.left_ticket {
                    let _ = writeln!(
                        out,
                        "left:     ticket {} requested {}, left unfinished by pid {}; the next run resumes it (resume-within) or cancels it",
                        left.ticket,
                        left.requested
                            .map_or_else(|| "at an unknown time".to_owned(), |at| at.to_string()),
                        left.by_pid
                    );
                }
            }
            None => {
                let _ = writeln!(out, "lock:     unknown ({})", shown(&self.name));
            }
        }
        if let Some(fleet) = &self.fleet_last_collection {
            let _ = writeln!(
                out,
                "fleet:    last collection {} by host {}, {}",
                fleet.at,
                shown(&fleet.host),
                shown(&fleet.report)
            );
        }
        let _ = writeln!(out, "policy:   {}", self.policy);
    }
}

impl Reports {
    /// The `reports:` line.
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "reports:  {} kept of at most {} in {}{}",
            self.kept
                .map(|n| n.to_string())
                .unwrap_or_else(|| "unknown".into()),
            self.keep,
            shown(&self.dir.display().to_string()),
            self.newest
                .as_deref()
                .map(|n| format!(", newest {n}"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Policy;
    use crate::lock::flock::FlockLock;
    use crate::outcome::{Failure, Outcome, RunReport};

    const MINUTE: Duration = Duration::from_secs(60);

    /// The time `unix` seconds after 1970.
    fn at(unix: f64) -> Timestamp {
        Timestamp::from_unix_seconds(unix)
    }

    fn run_at(outcome: Outcome, started_unix: u64) -> RunReport {
        RunReport {
            outcome,
            policy: Policy::Forbid,
            ticket: Some(crate::t("abc_0")),
            holder_pid: None,
            holder_host: None,
            slot: Timestamp::UNIX_EPOCH + Duration::from_secs(started_unix / 60 * 60),
            trigger: "manual".into(),
            started: Timestamp::UNIX_EPOCH + Duration::from_secs(started_unix),
            duration: Duration::ZERO,
            tickets: Default::default(),
            fence: Default::default(),
        }
    }

    fn skipped() -> Outcome {
        Outcome::Skipped {
            skip: crate::outcome::Skip::LockHeld,
            reason: "busy".into(),
        }
    }

    fn state_of(runs: &[RunReport]) -> State {
        runs.iter()
            .fold(None, |state, run| Some(State::after(state, run)))
            .unwrap()
    }

    #[test]
    fn a_collection_in_the_future_is_never_healthy() {
        let state = state_of(&[run_at(Outcome::Collected { report: "r".into() }, 10_000)]);
        // A clock set back by an hour after the collection.
        let verdict = judge(Some(&state), None, at(10_000.0 - 3600.0), 5 * MINUTE);
        assert_eq!(
            (verdict.health, verdict.exit_code),
            (Health::Unknown, code::IN_THE_FUTURE),
            "{}",
            verdict.reason
        );
        assert!(verdict.reason.contains("1h ahead"), "{}", verdict.reason);
        // A step of a second or two (NTP) is taken as now.
        let verdict = judge(Some(&state), None, at(10_000.0 - 2.0), 5 * MINUTE);
        assert_eq!(verdict.health, Health::Healthy);
        // A first run in the future does not start a grace period either.
        let state = state_of(&[run_at(skipped(), 10_000)]);
        let verdict = judge(Some(&state), None, at(10_000.0 - 3600.0), 5 * MINUTE);
        assert_eq!(verdict.exit_code, code::IN_THE_FUTURE, "{}", verdict.reason);
    }

    #[test]
    fn text_read_back_is_escaped_in_every_line() {
        let mut run = run_at(
            Outcome::Failed {
                error: "x\nhealth:   healthy (exit 0): forged\0".into(),
                failure: Failure::Run,
            },
            1000,
        );
        run.holder_host = Some("h\nlock: free".into());
        let mut state = state_of(&[run]);
        // A time that does not read ("t\nlast collection: forged") is read as none.
        state.last_run.started = serde_json::from_str::<LastRun>(
            &serde_json::to_string(&state.last_run)
                .unwrap()
                .replace("1970-01-01T00:16:40Z", "t\\nlast collection: forged"),
        )
        .unwrap()
        .started;
        assert_eq!(state.last_run.started, None);
        let status = Status {
            verdict: judge(Some(&state), None, at(1000.0), 5 * MINUTE),
            stale_after_seconds: 300.0,
            problems: Vec::new(),
            lock: LockStatus {
                path: "l".into(),
                policy: "forbid".into(),
                held: Some(true),
                pid: Some(1),
                since: None,
                ticket: None,
                left_ticket: None,
                backend: "flock".into(),
                name: "l".into(),
                host: Some("h\u{202e}x".into()),
                fleet_last_collection: None,
            },
            first_run: Some(state.first_run),
            last_run: Some(state.last_run.clone()),
            last_collection: None,
            reports: Reports {
                dir: "r".into(),
                kept: Some(0),
                keep: 1,
                newest: None,
            },
            fence: Some(FenceNote::NotAcknowledged),
        };
        let text = status.render();
        let starting = |word: &str| text.lines().filter(|l| l.starts_with(word)).count();
        assert_eq!(starting("health:"), 1, "{text}");
        assert_eq!(starting("problem:"), 0, "{text}");
        assert_eq!(starting("last collection:"), 1, "{text}");
        assert_eq!(starting("fence:    not acknowledged"), 1, "{text}");
        assert_eq!(text.lines().count(), 7, "{text}");
        assert!(!text.contains('\0') && !text.contains('\u{202e}'), "{text}");
    }

    #[test]
    fn a_recent_collection_is_healthy_and_an_old_one_stale_whatever_came_after() {
        let state = state_of(&[
            run_at(Outcome::Collected { report: "r".into() }, 1000),
            run_at(skipped(), 1060),
            run_at(skipped(), 1120),
        ]);
        let fresh = judge(Some(&state), None, at(1000.0 + 300.0), 5 * MINUTE);
        assert_eq!((fresh.health, fresh.exit_code), (Health::Healthy, 0));
        let stale = judge(Some(&state), None, at(1000.0 + 301.0), 5 * MINUTE);
        assert_eq!((stale.health, stale.exit_code), (Health::Stale, 1));
        assert!(stale.reason.contains("5m 1s"), "{}", stale.reason);
        assert!(
            stale.reason.contains("stale-after (5m)"),
            "{}",
            stale.reason
        );
    }

    #[test]
    fn a_fresh_install_gets_a_grace_period_from_its_first_run() {
        let state = state_of(&[run_at(skipped(), 1000), run_at(skipped(), 1060)]);
        let grace = judge(Some(&state), None, at(1000.0 + 300.0), 5 * MINUTE);
        assert_eq!((grace.health, grace.exit_code), (Health::Grace, 0));
        let over = judge(Some(&state), None, at(1000.0 + 301.0), 5 * MINUTE);
        assert_eq!((over.health, over.exit_code), (Health::Stale, 1));
        assert!(
            over.reason.contains("since the first run"),
            "{}",
            over.reason
        );
    }

    #[test]
    fn with_no_run_ever_the_grace_period_counts_from_the_state_directory() {
        let dir = Path::new("/var/lib/report-collector");
        let waiting = Some((dir, at(1000.0)));
        let young = judge(None, waiting, at(1000.0 + 300.0), 5 * MINUTE);
        assert_eq!((young.health, young.exit_code), (Health::NoRunYet, 0));
        let old = judge(None, waiting, at(1000.0 + 301.0), 5 * MINUTE);
        assert_eq!((old.health, old.exit_code), (Health::Stale, code::STALE));
        for words in [
            "no run on record since /var/lib/report-collector was created at 1970-01-01T00:16:40Z (5m 1s ago)",
            "systemctl list-timers report-collector.timer",
            "journalctl -u report-collector",
        ] {
            assert!(old.reason.contains(words), "{words}: {}", old.reason);
        }
        // A run on record: the first run's grace period, whatever the directory's age.
        let state = state_of(&[run_at(skipped(), 1_000_000)]);
        let ran = judge(Some(&state), waiting, at(1_000_060.0), 5 * MINUTE);
        assert_eq!((ran.health, ran.exit_code), (Health::Grace, 0));
        // Nothing known of the directory: no run yet, as before.
        let unknown = judge(None, None, at(1e9), MINUTE);
        assert_eq!((unknown.health, unknown.exit_code), (Health::NoRunYet, 0));
    }

    fn config(dir: &Path) -> Config {
        Config {
            lock_file: dir.join("collector.lock"),
            report_dir: dir.join("reports"),
            state_file: dir.join("last-run.json"),
            ..Config::default()
        }
    }

    fn status(config: &Config) -> Status {
        status_at(config, Timestamp::now())
    }

    fn status_at(config: &Config, now: Timestamp) -> Status {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(gather(config, &FlockLock::new(&config.lock_file), now))
    }

    #[test]
    fn a_ticket_left_for_the_next_run_is_shown_while_the_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (held, _) = crate::lock::flock::LockFile::open(&config.lock_file)
            .unwrap()
            .try_lock()
            .unwrap()
            .unwrap();
        held.set_ticket_now(&crate::t("left_0"), Timestamp::UNIX_EPOCH)
            .unwrap();
        let while_held = status(&config);
        assert!(
            while_held.lock.left_ticket.is_none(),
            "a holder's ticket is its own"
        );
        drop(held);

        let status = status(&config);
        let left = status.lock.left_ticket.as_ref().unwrap();
        assert_eq!(left.ticket, "left_0");
        assert_eq!(left.by_pid, std::process::id());
        let text = status.render();
        assert!(
            text.contains("left:     ticket left_0 requested 1970-01-01T00:00:00Z"),
            "{text}"
        );
    }

    #[test]
    fn a_fresh_state_directory_is_no_run_yet() {
        let dir = tempfile::tempdir().unwrap();
        let status = status(&config(dir.path()));
        assert_eq!(status.verdict.health, Health::NoRunYet);
        assert_eq!(status.verdict.exit_code, 0);
        assert!(status.problems.is_empty(), "{:?}", status.problems);
        assert_eq!(status.reports.kept, Some(0));
        assert_eq!(status.lock.held, Some(false));
    }

    #[test]
    fn a_state_directory_no_run_ever_recorded_in_turns_stale_after_stale_after() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let later = Timestamp::now() + 5 * MINUTE + Duration::from_secs(5);
        let status = status_at(&config, later);
        assert_eq!(status.verdict.health, Health::Stale);
        assert_eq!(status.verdict.exit_code, code::STALE);
        let reason = &status.verdict.reason;
        let named = format!(
            "no run on record since {} was created",
            dir.path().display()
        );
        assert!(reason.contains(&named), "{reason}");
        let json: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(json["verdict"]["health"], "stale");
        assert_eq!(json["verdict"]["exit_code"], 1);
        assert_eq!(json["verdict"]["reason"], reason.as_str());
        assert!(
            status
                .render()
                .starts_with("health:   stale (exit 1): no run on record since")
        );

        // The first run starts a grace period of its own.
        let started = later
            .duration_since(Timestamp::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        crate::state::record(&config.state_file, &run_at(skipped(), started));
        assert_eq!(status_at(&config, later).verdict.health, Health::Grace);
    }

    #[test]
    fn a_missing_directory_cannot_be_inspected() {
        let dir = tempfile::tempdir().unwrap();
        let status = status(&config(&dir.path().join("gone")));
        assert_eq!(status.verdict.exit_code, code::CANNOT_INSPECT);
        assert!(
            status.problems[0].reason.contains("does not exist"),
            "{:?}",
            status.problems
        );
    }

    #[test]
    fn fifos_in_place_of_the_files_are_reported_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        for path in [&config.state_file, &config.lock_file, &config.report_dir] {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        // A blocking open of any of them would hang this test.
        let status = status(&config);
        assert_eq!(status.verdict.health, Health::Unknown);
        assert_eq!(status.verdict.exit_code, code::CANNOT_INSPECT);
        assert_eq!(status.problems.len(), 3, "{:?}", status.problems);
        for problem in &status.problems {
            assert!(problem.reason.contains("a FIFO"), "{}", problem.reason);
        }
        let text = status.render();
        assert!(
            text.contains(&config.state_file.display().to_string()),
            "{text}"
        );
        assert!(text.contains("lock:     unknown"), "{text}");
    }

    #[test]
    fn the_json_carries_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        crate::state::record(&config.state_file, &run_at(skipped(), 1000));
        let status = status(&config);
        assert_eq!(status.verdict.health, Health::Stale);
        let json: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(json["verdict"]["health"], "stale");
        assert_eq!(json["verdict"]["exit_code"], 1);
        assert_eq!(json["stale_after_seconds"], 300.0);
        assert!(json["last_collection"].is_null());
        assert_eq!(json["last_run"]["outcome"], "skipped");
    }
}
