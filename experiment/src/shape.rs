//! The conclusions the experiment exists to show, each with its tolerance fixed before any run.
//!
//! The tolerances are loose enough for scheduling noise on a busy two-core machine and tight
//! enough that a server without the slowdown (`slowdown = 0`), a collector without its lock
//! (every arm on `allow`) or a collector that never resumes a ticket (`resume-within = 0s`)
//! fails at least one claim; the integration tests run the three controls.

use std::fmt;

use crate::arm::{Arm, ArmId};
use crate::experiment::Outcome;
use crate::launcher::{ExitKind, RunRecord};
use crate::measure::{ArmResult, Summary};

/// `allow` must reach at least this many runs collecting at once under heavy load.
pub const ALLOW_MIN_RUNS_AT_ONCE: usize = 2;
/// `allow` must leave at least this many tickets pending at once.
pub const ALLOW_MIN_PENDING: f64 = 2.0;
/// `allow`'s server mean generation time must exceed `forbid`'s (both fired by cron) by at least
/// this many base generation times (0.4 s with the 1 s default).
///
/// Why a difference and not a ratio: both means include the time tickets sat frozen through a
/// heavy phase, and `forbid`'s few tickets are as often caught in one as `allow`'s many, which
/// dilutes a ratio as the span grows. Measured here with the defaults, `allow` exceeds `forbid` by
/// about 0.9 s over 18 s and 42 s spans (and tends to about 0.7 s over long spans); with
/// `slowdown = 0` it is 0.0 s shorter over 18 s and 0.3 s shorter over 42 s.
pub const GENERATION_EXCESS: f64 = 0.4;
/// Without a starting deadline, a run must start within this many seconds after a long run ends.
pub const CATCH_UP_WITHIN: f64 = 0.5;
/// With the deadline, no collecting run may start within this many seconds after a long run ends
/// (the catch-up it would have been is skipped within [`CATCH_UP_WITHIN`]).
pub const REST_AT_LEAST: f64 = 1.0;
/// `replace` may have at most this many tickets pending at once on its server. A hand-over
/// adopts the holder's ticket, so one is the rule; two leaves room for a ticket issued in the
/// instant of a hand-over. Before tickets were handed over, `replace` reached 12 over 42 s.
pub const REPLACE_MAX_PENDING: f64 = 2.0;
/// `replace` must collect at least as many reports as `forbid` (both fired by cron) minus this:
/// none, it must not collect fewer.
pub const REPLACE_COLLECTS_NO_FEWER_BY: usize = 0;
/// No arm may waste more tickets than this (see [`crate::measure::Tickets`]), nor save one twice.
pub const MAX_WASTED: u64 = 0;
/// The fenced arm on the PostgreSQL lock: at most this many tickets pending at once.
pub const FENCED_MAX_PENDING: f64 = 1.0;
/// The killed arm: at least this many collections of a ticket a killed run left.
pub const KILLED_MIN_RESUMED: u64 = 1;

/// One claim about the shape of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    AllowOverlaps,
    AllowPilesUpTickets,
    AllowSlowsServer,
    ForbidNeverOverlaps,
    ReplaceNeverOverlaps,
    DeadlineRests,
    NoDeadlineCatchesUp,
    ReplaceFewPending,
    ReplaceCollectsAsMuch,
    NoTicketWasted,
    KilledTicketsResumed,
    ReplaceHandsTicketOver,
    FenceRefusesPausedHolders,
    NoFenceLetsPausedHoldersIn,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Claim::AllowOverlaps => "allow: more than one run collecting at once under heavy load",
            Claim::AllowPilesUpTickets => "allow: more than one ticket pending at once",
            Claim::AllowSlowsServer => {
                return write!(
                    f,
                    "allow: server mean generation time above forbid's by at least \
                     {GENERATION_EXCESS} generation times"
                );
            }
            Claim::ForbidNeverOverlaps => "forbid (all three): never two runs collecting at once",
            Claim::ReplaceNeverOverlaps => "replace: never two runs collecting at once",
            Claim::DeadlineRests => {
                "forbid + starting deadline: the slot after a long run is skipped, the server rests"
            }
            Claim::NoDeadlineCatchesUp => {
                "forbid, no starting deadline: a catch-up run starts at once after a long run"
            }
            Claim::ReplaceFewPending => {
                return write!(
                    f,
                    "replace: at most {REPLACE_MAX_PENDING} tickets pending at once"
                );
            }
            Claim::ReplaceCollectsAsMuch => {
                "replace: collects at least as many reports as forbid (both fired by cron)"
            }
            Claim::NoTicketWasted => {
                "every arm: no ticket wasted (each collected, cancelled or in hand), none saved twice"
            }
            Claim::KilledTicketsResumed => {
                "forbid, killed: the ticket of every killed run is collected by a later run \
                 (or still in hand at the end)"
            }
            Claim::ReplaceHandsTicketOver => {
                "replace: a run that ends another adopts its ticket (resumed, none cancelled)"
            }
            Claim::FenceRefusesPausedHolders => {
                "postgres, paused holders, fenced: every request a paused holder sent after the \
                 takeover is refused (fence-stale), and never more than 1 ticket pending"
            }
            Claim::NoFenceLetsPausedHoldersIn => {
                "postgres, paused holders, no fence (the control): a paused holder's late request \
                 is let in, 2 tickets pending at once or one cancelled, none refused"
            }
        })
    }
}

/// A claim, whether it held, and the figures that decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub claim: Claim,
    pub holds: bool,
    pub evidence: String,
}

/// All claims for one outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.checks.iter().all(|c| c.holds)
    }

    pub fn get(&self, claim: Claim) -> Option<&Check> {
        self.checks.iter().find(|c| c.claim == claim)
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.holds)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "- {} {}: {}",
                if c.holds { "holds:" } else { "FAILS:" },
                c.claim,
                c.evidence
            )?;
        }
        Ok(())
    }
}

/// Judges every claim against an outcome.
pub fn judge(outcome: &Outcome) -> Verdict {
    let slot = outcome.params.slot.as_secs_f64();
    let span = outcome.params.span.as_secs_f64();
    let base = outcome.params.generation_time.as_secs_f64();
    let summary = |id| outcome.arm(id).map(ArmResult::summary);
    let allow = summary(ArmId::Allow);
    let forbid = summary(ArmId::Forbid);
    let mut checks = Vec::new();
    let mut push = |claim, holds, evidence: String| {
        checks.push(Check {
            claim,
            holds,
            evidence,
        })
    };

    match &allow {
        Some(a) => {
            push(
                Claim::AllowOverlaps,
                a.peak_collecting >= ALLOW_MIN_RUNS_AT_ONCE,
                format!("peak {} runs collecting at once", a.peak_collecting),
            );
            push(
                Claim::AllowPilesUpTickets,
                a.peak_pending >= ALLOW_MIN_PENDING,
                format!("peak {} pending", a.peak_pending),
            );
        }
        None => {
            push(
                Claim::AllowOverlaps,
                false,
                "the allow arm is missing".into(),
            );
            push(
                Claim::AllowPilesUpTickets,
                false,
                "the allow arm is missing".into(),
            );
        }
    }
    let (holds, evidence) = match (
        allow.as_ref().and_then(|a| a.generation_mean),
        forbid.as_ref().and_then(|f| f.generation_mean),
    ) {
        (Some(a), Some(f)) => (
            a - f >= GENERATION_EXCESS * base,
            format!("allow {a:.2} s, forbid {f:.2} s, {:+.2} s", a - f),
        ),
        _ => (false, "no report was generated in allow or forbid".into()),
    };
    push(Claim::AllowSlowsServer, holds, evidence);

    let forbids = [
        ArmId::Forbid,
        ArmId::ForbidDeadline,
        ArmId::ForbidNoDeadline,
    ];
    let peaks: Vec<Option<usize>> = forbids
        .iter()
        .map(|id| summary(*id).map(|s| s.peak_collecting))
        .collect();
    push(
        Claim::ForbidNeverOverlaps,
        peaks.iter().all(|p| *p == Some(1)),
        format!(
            "peak runs collecting at once: {}",
            peaks
                .iter()
                .map(|p| p.map_or("missing".into(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let replace = summary(ArmId::Replace).map(|s: Summary| s.peak_collecting);
    push(
        Claim::ReplaceNeverOverlaps,
        replace == Some(1),
        replace.map_or("the replace arm is missing".into(), |n| {
            format!("peak {n} runs collecting at once")
        }),
    );

    let (holds, evidence) = match outcome.arm(ArmId::ForbidDeadline) {
        Some(arm) => judge_rest(arm, slot, span),
        None => (false, "the arm is missing".into()),
    };
    push(Claim::DeadlineRests, holds, evidence);
    let (holds, evidence) = match outcome.arm(ArmId::ForbidNoDeadline) {
        Some(arm) => judge_catch_up(arm, slot, span),
        None => (false, "the arm is missing".into()),
    };
    push(Claim::NoDeadlineCatchesUp, holds, evidence);

    let replace = outcome.arm(ArmId::Replace).map(ArmResult::summary);
    push(
        Claim::ReplaceFewPending,
        replace
            .as_ref()
            .is_some_and(|r| r.peak_pending <= REPLACE_MAX_PENDING),
        replace
            .as_ref()
            .map_or("the replace arm is missing".into(), |r| {
                format!("peak {} pending", r.peak_pending)
            }),
    );
    let (holds, evidence) = match (&replace, &forbid) {
        (Some(r), Some(f)) => (
            r.collected + REPLACE_COLLECTS_NO_FEWER_BY >= f.collected,
            format!("replace {}, forbid {} collected", r.collected, f.collected),
        ),
        _ => (false, "the replace or forbid arm is missing".into()),
    };
    push(Claim::ReplaceCollectsAsMuch, holds, evidence);

    // The unfenced control is there to show what the fence prevents: the tickets its paused
    // holders get late are waste, by design.
    let wasteful: Vec<String> = outcome
        .arms
        .iter()
        .filter(|arm| arm.arm.id != ArmId::PostgresUnfenced)
        .filter_map(|arm| {
            let t = arm.summary().tickets;
            (t.wasted > MAX_WASTED || t.saved_twice > 0).then(|| {
                format!(
                    "{}: {} of {} issued wasted, {} saved twice",
                    arm.arm.label(),
                    t.wasted,
                    t.issued,
                    t.saved_twice
                )
            })
        })
        .collect();
    let issued: u64 = outcome
        .arms
        .iter()
        .map(|a| a.summary().tickets.issued)
        .sum();
    push(
        Claim::NoTicketWasted,
        wasteful.is_empty()
            && outcome.arms.len() == Arm::selected(!outcome.params.without_postgres).len(),
        if wasteful.is_empty() {
            format!(
                "{issued} tickets issued over {} arms, none wasted",
                outcome.arms.len()
            )
        } else {
            wasteful.join("; ")
        },
    );

    let (holds, evidence) = match outcome.arm(ArmId::ForbidKilled) {
        Some(arm) => judge_killed(arm),
        None => (false, "the arm is missing".into()),
    };
    push(Claim::KilledTicketsResumed, holds, evidence);

    let (holds, evidence) = match &replace {
        Some(r) => (
            r.tickets.resumed >= 1 && r.tickets.cancelled == 0,
            format!(
                "{} resumed collections, {} tickets cancelled",
                r.tickets.resumed, r.tickets.cancelled
            ),
        ),
        None => (false, "the replace arm is missing".into()),
    };
    push(Claim::ReplaceHandsTicketOver, holds, evidence);

    if !outcome.params.without_postgres {
        let (holds, evidence) = judge_fence(outcome.arm(ArmId::PostgresFenced), true);
        push(Claim::FenceRefusesPausedHolders, holds, evidence);
        let (holds, evidence) = judge_fence(outcome.arm(ArmId::PostgresUnfenced), false);
        push(Claim::NoFenceLetsPausedHoldersIn, holds, evidence);
    }

    Verdict { checks }
}

/// The arms on the PostgreSQL lock. At least one paused holder's request must have reached the
/// server after a takeover. Fenced: every such request refused, at most
/// [`FENCED_MAX_PENDING`] tickets pending. Not fenced: none refused, and at least 2 pending at
/// once or a ticket cancelled.
fn judge_fence(arm: Option<&ArmResult>, fenced: bool) -> (bool, String) {
    let Some(arm) = arm else {
        return (false, "the arm is missing".into());
    };
    let s = arm.summary();
    let evidence = format!(
        "{} holders paused, {} of their requests sent on after a takeover, {} refused \
         (fence-stale), peak {} pending, {} cancelled",
        s.paused, s.paused_delivered, s.refused_stale, s.peak_pending, s.tickets.cancelled
    );
    let delivered = s.paused_delivered as u64;
    let holds = delivered >= 1
        && if fenced {
            s.refused_stale >= delivered && s.peak_pending <= FENCED_MAX_PENDING
        } else {
            s.refused_stale == 0 && (s.peak_pending >= 2.0 || s.tickets.cancelled >= 1)
        };
    (holds, evidence)
}

/// Every killed run held a ticket; each must be collected by a later run (a saved report
/// carries it) or be still in hand at the end, and the collector must count at least
/// [`KILLED_MIN_RESUMED`] resumed collections. Without a killed run there is nothing to show.
fn judge_killed(arm: &ArmResult) -> (bool, String) {
    let killed: Vec<&RunRecord> = arm
        .runs
        .iter()
        .filter(|r| r.exit == ExitKind::Killed)
        .collect();
    if killed.is_empty() {
        return (
            false,
            "no run was killed: none was seen holding a ticket".into(),
        );
    }
    let saved = arm.saved_tickets();
    let in_hand = arm.in_hand();
    let (mut collected, mut kept, mut lost) = (0, 0, 0);
    for run in &killed {
        match run.ticket.as_deref() {
            Some(t) if saved.contains_key(t) => collected += 1,
            Some(t) if in_hand.contains(t) => kept += 1,
            _ => lost += 1,
        }
    }
    let resumed = arm.leftovers.resumed;
    (
        lost == 0 && resumed >= KILLED_MIN_RESUMED,
        format!(
            "{} runs killed holding a ticket: {collected} of those tickets collected later, \
             {kept} in hand at the end, {lost} lost; {resumed} resumed collections",
            killed.len()
        ),
    )
}

/// Checks `after` at the end of every run that outlasted its slot and ended while the scheduler
/// still had a slot to fire after it; holds when there is at least one and every check holds.
fn after_each_long_run(
    arm: &ArmResult,
    slot: f64,
    span: f64,
    after: impl Fn(f64) -> (bool, String),
) -> (bool, String) {
    let ends: Vec<f64> = arm
        .long_runs(slot)
        .map(|r| r.ended)
        .filter(|end| *end < span - slot)
        .collect();
    if ends.is_empty() {
        return (
            false,
            "no run outlasted its slot, so there was nothing to follow it".into(),
        );
    }
    let (checks, notes): (Vec<bool>, Vec<String>) = ends.into_iter().map(after).unzip();
    (checks.into_iter().all(|holds| holds), notes.join("; "))
}

fn judge_rest(arm: &ArmResult, slot: f64, span: f64) -> (bool, String) {
    after_each_long_run(arm, slot, span, |end| {
        let skipped = arm
            .next_start_after(end)
            .is_some_and(|r| r.started - end <= CATCH_UP_WITHIN && r.exit == ExitKind::Skipped);
        let rest = arm.next_collecting_after(end).map(|r| r.started - end);
        let holds = skipped && rest.is_none_or(|rest| rest >= REST_AT_LEAST);
        let note = format!(
            "long run ended at {end:.2} s, catch-up {}, next collection {}",
            if skipped { "skipped" } else { "NOT skipped" },
            rest.map_or("none in the span".into(), |r| format!("{r:.2} s later")),
        );
        (holds, note)
    })
}

fn judge_catch_up(arm: &ArmResult, slot: f64, span: f64) -> (bool, String) {
    after_each_long_run(arm, slot, span, |end| {
        let Some(next) = arm.next_start_after(end) else {
            return (
                false,
                format!("long run ended at {end:.2} s, no run after it"),
            );
        };
        let collected = next.exit == ExitKind::Collected;
        let note = format!(
            "long run ended at {end:.2} s, next run {:.2} s later, {}",
            next.started - end,
            if collected {
                "collected"
            } else {
                "did not collect"
            }
        );
        (next.started - end <= CATCH_UP_WITHIN && collected, note)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collector::Leftovers;
    use crate::params::Params;
    use crate::scrape::Scrape;

    use ExitKind::{Collected, Killed, Skipped};

    /// Runs in order; every run that gets as far as a ticket holds its own, `t<seq>`.
    fn runs(spans: &[(f64, f64, ExitKind)]) -> Vec<RunRecord> {
        spans
            .iter()
            .enumerate()
            .map(|(seq, (started, ended, exit))| RunRecord {
                seq,
                slot: 0,
                slot_time: 0.0,
                catch_up: false,
                started: *started,
                ended: *ended,
                exit: exit.clone(),
                ticket: (*exit != Skipped).then(|| format!("t{seq}")),
                ticket_at: (*exit != Skipped).then_some(*started),
                host: 0,
                pid: 0,
                failure: None,
            })
            .collect()
    }

    /// What the runs leave on disk when every collected run saved its own ticket.
    fn saved(runs: &[RunRecord]) -> Leftovers {
        Leftovers {
            saved_tickets: runs
                .iter()
                .filter(|r| r.exit == Collected)
                .filter_map(|r| r.ticket.clone())
                .collect(),
            ..Leftovers::default()
        }
    }

    /// The killed arm over 18 s: the 2nd run killed holding t1, which the 3rd resumes and
    /// collects; the 4th skips; the 6th is killed holding t5, left in the lock's record.
    fn killed_arm() -> (Vec<RunRecord>, Leftovers) {
        let mut records = runs(&[
            (0.0, 1.0, Collected),
            (3.0, 3.05, Killed),
            (6.0, 12.5, Collected),
            (9.0, 9.01, Skipped),
            (12.0, 12.01, Skipped),
            (15.0, 15.05, Killed),
        ]);
        records[2].ticket = Some("t1".into());
        let leftovers = Leftovers {
            saved_tickets: vec!["t0".into(), "t1".into()],
            record_ticket: Some("t5".into()),
            resumed: 1,
        };
        (records, leftovers)
    }

    /// An 18 s outcome (slot 3 s, 1 s reports) shaped as the conclusions say: a long run from
    /// 6 s to 12.5 s in every arm but allow, where two overlap.
    fn good() -> Outcome {
        let server = |peak: f64, mean: f64| Scrape {
            pending_peak: peak,
            generation_sum: mean * 4.0,
            generation_count: 4.0,
            ..Scrape::default()
        };
        let issued = |mut last: Scrape, leftovers: &Leftovers| {
            last.issued = (leftovers.saved_tickets.len()
                + usize::from(leftovers.record_ticket.is_some())) as f64;
            last
        };
        let arms = Arm::ALL
            .iter()
            .map(|arm| {
                let (records, last) = match arm.id {
                    ArmId::Allow => (
                        runs(&[
                            (0.0, 1.0, Collected),
                            (6.0, 12.5, Collected),
                            (9.0, 12.6, Collected),
                        ]),
                        server(2.0, 4.0),
                    ),
                    ArmId::ForbidDeadline => (
                        runs(&[
                            (0.0, 1.0, Collected),
                            (6.0, 12.5, Collected),
                            (12.5, 12.52, Skipped),
                            (15.0, 16.0, Collected),
                        ]),
                        server(1.0, 3.0),
                    ),
                    ArmId::ForbidNoDeadline => (
                        runs(&[
                            (0.0, 1.0, Collected),
                            (6.0, 12.5, Collected),
                            (12.55, 13.6, Collected),
                        ]),
                        server(1.0, 3.0),
                    ),
                    _ => (
                        runs(&[
                            (0.0, 1.0, Collected),
                            (6.0, 12.5, Collected),
                            (9.0, 9.01, Skipped),
                            (15.0, 16.0, Collected),
                        ]),
                        server(1.0, 3.0),
                    ),
                };
                let (records, mut leftovers) = match arm.id {
                    ArmId::ForbidKilled => killed_arm(),
                    _ => {
                        let leftovers = saved(&records);
                        (records, leftovers)
                    }
                };
                if arm.id == ArmId::Replace {
                    // The run of 9 s replaced the run of 6 s and collected its ticket.
                    leftovers.resumed = 1;
                }
                let mut last = issued(last, &leftovers);
                if arm.pause_holders {
                    // Two holders paused, both requests sent on after a takeover.
                    (last.fence_stale, last.pending_peak) = if arm.server_enforces_fence() {
                        (2.0, 1.0)
                    } else {
                        (0.0, 3.0)
                    };
                }
                let pauses = if arm.pause_holders {
                    vec![pause(true), pause(true)]
                } else {
                    Vec::new()
                };
                ArmResult {
                    arm: *arm,
                    runs: records,
                    samples: Vec::new(),
                    last,
                    leftovers,
                    pauses,
                }
            })
            .collect();
        Outcome {
            params: Params {
                span: Duration::from_secs(18),
                ..Params::default()
            },
            arms,
        }
    }

    fn pause(delivered: bool) -> crate::proxy::Pause {
        crate::proxy::Pause {
            pid: 1,
            stopped: 0.1,
            continued: Some(3.2),
            delivered,
        }
    }

    fn with_runs(mut outcome: Outcome, id: ArmId, spans: &[(f64, f64, ExitKind)]) -> Outcome {
        let arm = outcome.arms.iter_mut().find(|a| a.arm.id == id).unwrap();
        arm.runs = runs(spans);
        outcome
    }

    fn failed(outcome: &Outcome) -> Vec<Claim> {
        judge(outcome).failed().map(|c| c.claim).collect()
    }

    #[test]
    fn the_expected_shape_holds() {
        let verdict = judge(&good());
        assert!(verdict.holds(), "{verdict}");
        assert_eq!(verdict.checks.len(), 14);
    }

    #[test]
    fn the_fence_claims_fail_on_a_second_ticket_or_a_stale_request_let_in() {
        // Fenced, but a paused holder's request got a ticket: two pending, one refused of two.
        let mut outcome = good();
        let fenced = arm_mut(&mut outcome, ArmId::PostgresFenced);
        fenced.last.pending_peak = 2.0;
        fenced.last.fence_stale = 1.0;
        assert_eq!(failed(&outcome), vec![Claim::FenceRefusesPausedHolders]);
        // No request reached the server late: nothing shown either way.
        let mut outcome = good();
        for id in [ArmId::PostgresFenced, ArmId::PostgresUnfenced] {
            let arm = arm_mut(&mut outcome, id);
            arm.pauses = vec![pause(false)];
        }
        assert_eq!(
            failed(&outcome),
            vec![
                Claim::FenceRefusesPausedHolders,
                Claim::NoFenceLetsPausedHoldersIn
            ]
        );
        // The control: one pending at most and nothing cancelled shows nothing; a cancel does.
        let mut outcome = good();
        arm_mut(&mut outcome, ArmId::PostgresUnfenced)
            .last
            .pending_peak = 1.0;
        assert_eq!(failed(&outcome), vec![Claim::NoFenceLetsPausedHoldersIn]);
        arm_mut(&mut outcome, ArmId::PostgresUnfenced)
            .last
            .cancelled = 1.0;
        assert!(judge(&outcome).holds(), "{}", judge(&outcome));
        // Left out on purpose: neither claim is judged.
        let mut outcome = good();
        outcome.params.without_postgres = true;
        outcome.arms.retain(|a| !a.arm.on_postgres());
        let verdict = judge(&outcome);
        assert!(verdict.holds(), "{verdict}");
        assert_eq!(verdict.checks.len(), 12);
    }

    #[test]
    fn the_unfenced_control_may_waste_tickets_the_fenced_arm_may_not() {
        let mut outcome = good();
        arm_mut(&mut outcome, ArmId::PostgresUnfenced).last.issued += 2.0;
        assert!(judge(&outcome).holds(), "{}", judge(&outcome));
        arm_mut(&mut outcome, ArmId::PostgresFenced).last.issued += 1.0;
        assert_eq!(failed(&outcome), vec![Claim::NoTicketWasted]);
    }

    #[test]
    fn a_catch_up_that_collects_breaks_the_rest() {
        let outcome = with_runs(
            good(),
            ArmId::ForbidDeadline,
            &[(6.0, 12.5, Collected), (12.55, 13.6, Collected)],
        );
        assert_eq!(failed(&outcome), vec![Claim::DeadlineRests]);
    }

    #[test]
    fn a_rest_without_the_deadline_is_no_catch_up() {
        let outcome = with_runs(
            good(),
            ArmId::ForbidNoDeadline,
            &[(6.0, 12.5, Collected), (15.0, 16.0, Collected)],
        );
        assert_eq!(failed(&outcome), vec![Claim::NoDeadlineCatchesUp]);
    }

    #[test]
    fn without_a_long_run_there_is_nothing_to_judge() {
        let outcome = with_runs(good(), ArmId::ForbidDeadline, &[(0.0, 1.0, Collected)]);
        assert_eq!(failed(&outcome), vec![Claim::DeadlineRests]);
    }

    #[test]
    fn two_runs_at_once_break_forbid_and_replace() {
        let overlapping = [
            (0.0, 1.0, Collected),
            (6.0, 12.5, Collected),
            (9.0, 12.6, Collected),
        ];
        let outcome = with_runs(good(), ArmId::Forbid, &overlapping);
        assert_eq!(failed(&outcome), vec![Claim::ForbidNeverOverlaps]);
        let outcome = with_runs(good(), ArmId::Replace, &overlapping);
        assert_eq!(failed(&outcome), vec![Claim::ReplaceNeverOverlaps]);
    }

    #[test]
    fn allow_must_overlap_and_slow_the_server_by_the_stated_margin() {
        let outcome = with_runs(good(), ArmId::Allow, &[(6.0, 12.5, Collected)]);
        assert_eq!(failed(&outcome), vec![Claim::AllowOverlaps]);

        let mut outcome = good();
        let allow = &mut outcome.arms[0];
        // 3.0 s on forbid's server: 0.35 generation times more is not enough, 0.45 is.
        allow.last.generation_sum = 3.35 * 4.0;
        assert_eq!(failed(&outcome), vec![Claim::AllowSlowsServer]);
        outcome.arms[0].last.generation_sum = 3.45 * 4.0;
        assert!(judge(&outcome).holds());
    }

    fn arm_mut(outcome: &mut Outcome, id: ArmId) -> &mut ArmResult {
        outcome.arms.iter_mut().find(|a| a.arm.id == id).unwrap()
    }

    #[test]
    fn replace_must_keep_pending_low_and_collect_as_much_as_forbid() {
        let mut outcome = good();
        arm_mut(&mut outcome, ArmId::Replace).last.pending_peak = 2.0;
        assert!(judge(&outcome).holds(), "2 pending is within the bound");
        arm_mut(&mut outcome, ArmId::Replace).last.pending_peak = 3.0;
        assert_eq!(failed(&outcome), vec![Claim::ReplaceFewPending]);

        let mut outcome = good();
        let replace = arm_mut(&mut outcome, ArmId::Replace);
        replace.runs[3].exit = ExitKind::Replaced;
        // The ticket of the replaced run is in the lock's record at the end: not wasted.
        replace.leftovers.record_ticket = Some("t3".into());
        replace.leftovers.saved_tickets.retain(|t| t != "t3");
        assert_eq!(failed(&outcome), vec![Claim::ReplaceCollectsAsMuch]);
    }

    #[test]
    fn a_ticket_neither_collected_cancelled_nor_in_hand_is_wasted() {
        let mut outcome = good();
        arm_mut(&mut outcome, ArmId::Wait).last.issued += 1.0;
        assert_eq!(failed(&outcome), vec![Claim::NoTicketWasted]);
        // Cancelled on the server at a collector's request: accounted for.
        arm_mut(&mut outcome, ArmId::Wait).last.cancelled = 1.0;
        assert!(judge(&outcome).holds());

        // Still in hand: a run cut off at the end with a ticket, named by its output.
        let mut outcome = good();
        let wait = arm_mut(&mut outcome, ArmId::Wait);
        wait.last.issued += 1.0;
        wait.runs.push(RunRecord {
            seq: 4,
            slot: 5,
            slot_time: 15.0,
            catch_up: false,
            started: 16.0,
            ended: 24.0,
            exit: ExitKind::CutOff,
            ticket: Some("t4".into()),
            ticket_at: Some(16.0),
            host: 0,
            pid: 0,
            failure: None,
        });
        assert!(judge(&outcome).holds(), "{}", judge(&outcome));

        let mut outcome = good();
        let allow = arm_mut(&mut outcome, ArmId::Allow);
        allow.leftovers.saved_tickets.push("t0".into());
        let s = allow.summary();
        assert_eq!((s.tickets.saved_twice, s.tickets.wasted), (1, 0));
        assert_eq!(failed(&outcome), vec![Claim::NoTicketWasted]);
    }

    #[test]
    fn a_killed_run_whose_ticket_is_cancelled_breaks_the_killed_claim() {
        let mut outcome = good();
        let killed = arm_mut(&mut outcome, ArmId::ForbidKilled);
        let s = killed.summary();
        assert_eq!((s.killed, s.tickets.wasted, s.tickets.in_hand), (2, 0, 1));
        // As with resuming off: the next run cancels t1 and collects a ticket of its own.
        killed.runs[2].ticket = Some("t2".into());
        killed.leftovers.saved_tickets = vec!["t0".into(), "t2".into()];
        killed.leftovers.resumed = 0;
        killed.last.issued += 1.0;
        killed.last.cancelled = 1.0;
        assert_eq!(failed(&outcome), vec![Claim::KilledTicketsResumed]);

        let outcome = with_runs(good(), ArmId::ForbidKilled, &[(0.0, 1.0, Collected)]);
        assert!(failed(&outcome).contains(&Claim::KilledTicketsResumed));
    }

    #[test]
    fn a_replace_that_cancels_the_holder_s_ticket_does_not_hand_it_over() {
        let mut outcome = good();
        let replace = arm_mut(&mut outcome, ArmId::Replace);
        replace.leftovers.resumed = 0;
        replace.last.cancelled = 1.0;
        replace.last.issued += 1.0;
        assert_eq!(failed(&outcome), vec![Claim::ReplaceHandsTicketOver]);
    }
}
