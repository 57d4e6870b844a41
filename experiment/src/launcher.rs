//! The experiment's own schedulers, cron-like and systemd-252-like, and the record of every run
//! they started.
//!
//! These belong to the experiment, not to the product: they reproduce what each scheduler does
//! when a run outlasts its slot (systemd 252 as measured on Debian 12), so the collector's
//! policies can be compared under each.
//!
//! In an arm that kills every other run (see [`Arm::kill_every_other`]), the 2nd, 4th, ... run
//! fired (odd `seq`) is SIGKILLed at the first check, every [`KILL_CHECK_EVERY`], at which it
//! holds a ticket: its own output says it took ticket T (requested or resumed) and the lock's
//! record names T under its pid. A run that never gets that far (it skips, or collects an
//! already saved report) is not killed.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use report_collector::lock::Policy;
use report_common::{exit, message_id};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::arm::{Arm, Launcher};
use crate::clock::Clock;
use crate::collector::{CollectorSetup, effective_policy, ticket_in_output, ticket_taken_at};
use crate::params::Params;

/// How often a run due to be killed is checked for holding a ticket.
pub const KILL_CHECK_EVERY: Duration = Duration::from_millis(20);

/// How a run ended, from its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit 0: the CSV was printed and saved.
    Collected,
    /// Exit 75: the run decided not to run (lock busy, lock-wait over, or late for its slot).
    Skipped,
    /// SIGTERMed (exit 143) or killed by a newer run under `replace`.
    Replaced,
    /// SIGKILLed by the experiment while it held a ticket (the arm that kills every other run).
    Killed,
    /// Still going when the experiment ended; stopped by the experiment.
    CutOff,
    /// Anything else, with the status and the last line the run wrote on stderr.
    Failed(String),
}

/// One started collector process.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Start order within the arm, from 0.
    pub seq: usize,
    /// The slot it was fired for (for a catch-up run: the last slot missed during the run before).
    pub slot: u32,
    /// That slot's time, seconds after slot 0.
    pub slot_time: f64,
    /// Fired by the systemd-like launcher when the run before ended, not at its slot.
    pub catch_up: bool,
    /// Process start, seconds after slot 0.
    pub started: f64,
    /// Process exit, seconds after slot 0.
    pub ended: f64,
    pub exit: ExitKind,
    /// The ticket its output last says it took (requested or resumed), if any.
    pub ticket: Option<String>,
    /// When its output first says it took a ticket, seconds after slot 0: from then on it is
    /// collecting (a skip, or a run still waiting for the lock, never gets there).
    pub ticket_at: Option<f64>,
    /// The host it ran on, from 0 (arms of one host: 0).
    pub host: usize,
    /// Its process id.
    pub pid: u32,
    /// For a failed run, its exit code and why, as the table shows it (see [`failure_label`]).
    pub failure: Option<String>,
}

/// A failed run's exit code, and for exit 79 (the lock lost) which way it was lost, from the
/// `MESSAGE_ID` of its line: `79 fenced` (the server refused its token), `79 lease` (its lease
/// ran out while it was paused or cut off); `signal` when it had no exit code.
pub fn failure_label(code: Option<i32>, stderr: &str) -> String {
    let has = |id: &str| stderr.contains(&format!("MESSAGE_ID=\"{id}\""));
    match code {
        None => "signal".to_owned(),
        Some(79) if has(message_id::FENCED) => "79 fenced".to_owned(),
        Some(79) if has(message_id::LEASE_LOST) => "79 lease".to_owned(),
        Some(code) => code.to_string(),
    }
}

impl RunRecord {
    pub fn duration(&self) -> f64 {
        self.ended - self.started
    }
}

struct Live {
    pid: u32,
    host: usize,
    slot: u32,
    catch_up: bool,
    started: f64,
}

/// Fires the arm's runs over the span, waits for them (stopping stragglers after the drain) and
/// returns one record per process, in start order.
pub async fn launch(
    arm: &Arm,
    params: &Params,
    clock: Clock,
    setup: &CollectorSetup,
) -> anyhow::Result<Vec<RunRecord>> {
    let slot_secs = params.slot.as_secs_f64();
    let slots = params.slot_count();
    let span_end = params.span.as_secs_f64();
    let drain_end = clock.instant(span_end) + params.drain;
    let policy = effective_policy(arm, params);

    let (tx, mut rx) = mpsc::unbounded_channel::<Ended>();
    let mut live: HashMap<usize, Live> = HashMap::new();
    let mut cut_off: HashSet<usize> = HashSet::new();
    let mut records = Vec::new();
    let mut seq = 0usize;
    let mut next_slot = 0u32;
    let mut missed: Option<u32> = None;
    let mut kill_at: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86_400);

    let mut fire = |slot: u32,
                    catch_up: bool,
                    host: usize,
                    live: &mut HashMap<usize, Live>|
     -> anyhow::Result<()> {
        let started = clock.now();
        // Outside systemd, a timer start is declared (`--trigger timer`); the collector
        // places it in its schedule-period slot, which is the experiment's slot.
        let timer_started = matches!(arm.launcher, Launcher::Systemd252);
        let mut cmd = setup.command(seq, host, timer_started)?;
        let mut child = cmd.spawn().context("cannot start report-collector")?;
        let pid = child.id().unwrap_or(0);
        let tx = tx.clone();
        let this = seq;
        let to_kill = (arm.kill_every_other && seq % 2 == 1).then(|| setup.clone());
        tokio::spawn(async move {
            let (status, killed) = match to_kill {
                None => (child.wait().await, false),
                Some(setup) => tokio::select! {
                    status = child.wait() => (status, false),
                    () = holding_a_ticket(&setup, this, pid) => {
                        // Already gone if it exited meanwhile; the wait says how it ended.
                        let _ = child.start_kill();
                        (child.wait().await, true)
                    }
                },
            };
            // The receiver outlives every child; a send error only means the launcher gave up.
            let _ = tx.send(Ended {
                seq: this,
                status,
                at: Instant::now(),
                killed,
            });
        });
        live.insert(
            seq,
            Live {
                pid,
                host,
                slot,
                catch_up,
                started,
            },
        );
        seq += 1;
        Ok(())
    };

    loop {
        if next_slot >= slots && live.is_empty() {
            break;
        }
        let slot_at = if next_slot < slots {
            clock.instant(f64::from(next_slot) * slot_secs)
        } else {
            far
        };
        let draining = next_slot >= slots && kill_at.is_none();
        tokio::select! {
            _ = sleep_until(slot_at.into()), if next_slot < slots => {
                let slot = next_slot;
                next_slot += 1;
                match arm.launcher {
                    // Every host's cron fires at the slot.
                    Launcher::Cron => {
                        for host in 0..setup.hosts() {
                            fire(slot, false, host, &mut live)?;
                        }
                    }
                    // systemd swallows the elapse while the unit runs and re-fires once at its end.
                    Launcher::Systemd252 if !live.is_empty() => missed = Some(slot),
                    Launcher::Systemd252 => fire(slot, false, 0, &mut live)?,
                }
            }
            Some(Ended { seq: id, status, at, killed }) = rx.recv() => {
                let Some(run) = live.remove(&id) else { continue };
                let output = setup.stderr_of(id);
                let ticket = ticket_in_output(&output);
                let ticket_at = ticket_taken_at(&output).map(|at| clock.secs_of_wall(at));
                let end = End { cut_off: cut_off.contains(&id), killed };
                let code = status.as_ref().ok().and_then(ExitStatus::code);
                let exit = classify(status, end, policy, || output.clone());
                let failure =
                    matches!(exit, ExitKind::Failed(_)).then(|| failure_label(code, &output));
                records.push(RunRecord {
                    host: run.host,
                    pid: run.pid,
                    failure,
                    seq: id,
                    slot: run.slot,
                    slot_time: f64::from(run.slot) * slot_secs,
                    catch_up: run.catch_up,
                    started: run.started,
                    ended: clock.secs(at),
                    exit,
                    ticket,
                    ticket_at,
                });
                if arm.launcher == Launcher::Systemd252
                    && live.is_empty()
                    && clock.now() < span_end
                    && let Some(slot) = missed.take()
                {
                    fire(slot, true, 0, &mut live)?;
                }
            }
            _ = sleep_until(drain_end.into()), if draining => {
                for (id, run) in &live {
                    cut_off.insert(*id);
                    signal(run.pid, Signal::SIGTERM);
                }
                kill_at = Some(Instant::now() + Duration::from_secs(3));
            }
            _ = sleep_until(kill_at.unwrap_or(far).into()), if kill_at.is_some() => {
                for run in live.values() {
                    signal(run.pid, Signal::SIGKILL);
                }
                kill_at = Some(far);
            }
        }
    }
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// A process that ended, as its waiter reports it.
struct Ended {
    seq: usize,
    status: std::io::Result<ExitStatus>,
    at: Instant,
    /// The experiment SIGKILLed it while it held a ticket.
    killed: bool,
}

/// Who ended a run other than itself, as far as the launcher knows.
#[derive(Debug, Clone, Copy, Default)]
struct End {
    /// Stopped by the launcher after the drain.
    cut_off: bool,
    /// SIGKILLed by the launcher while it held a ticket.
    killed: bool,
}

/// Returns once run `seq` (process `pid`) holds a ticket; see the module's note.
async fn holding_a_ticket(setup: &CollectorSetup, seq: usize, pid: u32) {
    let mut ticker = tokio::time::interval(KILL_CHECK_EVERY);
    loop {
        ticker.tick().await;
        if setup.holds_ticket(seq, pid).is_some() {
            return;
        }
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid)
        && raw > 0
    {
        // The process may have exited in the meantime; its waiter reports that.
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

fn classify(
    status: std::io::Result<ExitStatus>,
    end: End,
    policy: Policy,
    stderr: impl FnOnce() -> String,
) -> ExitKind {
    let status = match status {
        Ok(status) => status,
        Err(err) => return ExitKind::Failed(format!("could not be waited for: {err}")),
    };
    let code = status.code().and_then(|code| u8::try_from(code).ok());
    let terminated = code == Some(exit::SIGTERM) || matches!(status.signal(), Some(15) | Some(9));
    match code {
        _ if end.killed && status.signal() == Some(9) => ExitKind::Killed,
        _ if terminated && end.cut_off => ExitKind::CutOff,
        _ if terminated && policy == Policy::Replace => ExitKind::Replaced,
        Some(exit::SUCCESS) => ExitKind::Collected,
        Some(exit::TEMPFAIL) => ExitKind::Skipped,
        _ => {
            let text = stderr();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("(nothing on stderr)");
            ExitKind::Failed(format!("{status}: {}", last.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(c << 8))
    }

    #[test]
    fn a_lost_lock_says_how_it_was_lost() {
        let fenced = format!(
            "x ERROR the server refused this run's fence MESSAGE_ID=\"{}\" HOST=h\n",
            message_id::FENCED
        );
        let lease = format!(
            "x ERROR lease lost MESSAGE_ID=\"{}\"\n",
            message_id::LEASE_LOST
        );
        assert_eq!(failure_label(Some(79), &fenced), "79 fenced");
        assert_eq!(failure_label(Some(79), &lease), "79 lease");
        assert_eq!(failure_label(Some(79), "nothing said"), "79");
        assert_eq!(failure_label(Some(1), &fenced), "1");
        assert_eq!(failure_label(None, ""), "signal");
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        const CUT_OFF: End = End {
            cut_off: true,
            killed: false,
        };
        let none = String::new;
        assert_eq!(
            classify(code(0), End::default(), Policy::Forbid, none),
            ExitKind::Collected
        );
        assert_eq!(
            classify(code(75), End::default(), Policy::Forbid, none),
            ExitKind::Skipped
        );
        assert_eq!(
            classify(code(143), End::default(), Policy::Replace, none),
            ExitKind::Replaced
        );
        assert_eq!(
            classify(code(143), CUT_OFF, Policy::Replace, none),
            ExitKind::CutOff
        );
        assert_eq!(
            classify(
                Ok(ExitStatus::from_raw(9)),
                End::default(),
                Policy::Replace,
                none
            ),
            ExitKind::Replaced
        );
        assert!(matches!(
            classify(code(143), End::default(), Policy::Forbid, none),
            ExitKind::Failed(_)
        ));
        let killed = End {
            cut_off: false,
            killed: true,
        };
        let sigkill = || Ok(ExitStatus::from_raw(9));
        assert_eq!(
            classify(sigkill(), killed, Policy::Forbid, none),
            ExitKind::Killed
        );
        // Killed at the drain's end is still the experiment's kill, not a cut-off.
        let both = End {
            cut_off: true,
            killed: true,
        };
        assert_eq!(
            classify(sigkill(), both, Policy::Forbid, none),
            ExitKind::Killed
        );
        // A run that exited on its own before the kill landed ended as it did.
        assert_eq!(
            classify(code(0), killed, Policy::Forbid, none),
            ExitKind::Collected
        );
        let failed = classify(code(1), End::default(), Policy::Allow, || {
            "error: server down\n".into()
        });
        assert_eq!(
            failed,
            ExitKind::Failed("exit status: 1: error: server down".into())
        );
    }
}
