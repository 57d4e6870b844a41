//! The Markdown table and the `results.md` page built from an outcome.

use std::fmt::Write;

use crate::experiment::Outcome;
use crate::measure::{OVERLAP_IGNORED, Summary, Tickets};
use crate::shape::Verdict;

const HEADER: &str = "| policy | scheduler | runs fired | collected | skipped | failed | replaced | killed | cut off at end \
| peak runs at once | peak collecting at once | peak pending tickets | run to CSV, mean (s) | run to CSV, max (s) | server mean generation (s) \
| tickets issued | tickets resumed | tickets cancelled | tickets wasted | holders paused | requests refused (fence-stale) |\n\
|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";

fn secs(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}"))
}

/// Wasted tickets, and any ticket saved twice flagged beside them.
fn wasted(t: &Tickets) -> String {
    if t.saved_twice == 0 {
        t.wasted.to_string()
    } else {
        format!("{} ({} saved twice)", t.wasted, t.saved_twice)
    }
}

/// Failed runs, with their exit codes when any failed: `2 (79 fenced: 2)`.
fn failed(s: &Summary) -> String {
    if s.failed_by.is_empty() {
        return s.failed.to_string();
    }
    let codes: Vec<String> = s
        .failed_by
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    format!("{} ({})", s.failed, codes.join(", "))
}

/// Paused holders, with how many of their held requests reached the server when not all did.
fn paused(s: &Summary) -> String {
    if s.paused == s.paused_delivered {
        s.paused.to_string()
    } else {
        format!("{} ({} sent on)", s.paused, s.paused_delivered)
    }
}

/// One row per arm.
pub fn markdown_table(outcome: &Outcome) -> String {
    let mut out = String::from(HEADER);
    for arm in &outcome.arms {
        let s = arm.summary();
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            arm.arm.label(),
            arm.arm.launcher.as_str(),
            s.fired,
            s.collected,
            s.skipped,
            failed(&s),
            s.replaced,
            s.killed,
            s.cut_off,
            s.peak_runs,
            s.peak_collecting,
            s.peak_pending,
            secs(s.to_csv_mean),
            secs(s.to_csv_max),
            secs(s.generation_mean),
            s.tickets.issued,
            s.tickets.resumed,
            s.tickets.cancelled,
            wasted(&s.tickets),
            paused(&s),
            s.refused_stale,
        );
    }
    out
}

/// The parameters in one sentence.
pub fn parameters(outcome: &Outcome) -> String {
    let p = &outcome.params;
    let s = |d: std::time::Duration| format!("{} s", d.as_secs_f64());
    format!(
        "Span {} ({} slots of {}), heavy load toggling every {}, poll every {}, generation time {}, \
         slowdown {}{}. Collector durations are the shipped ones scaled by slot / 1 min: starting deadline {}, \
         replace grace {}, lock wait {}, run deadline {}, resume within {}{}; server ticket TTL {}. {}",
        s(p.span),
        p.slot_count(),
        s(p.slot),
        s(p.heavy_period),
        s(p.poll_interval),
        s(p.generation_time),
        p.slowdown,
        if p.without_lock {
            ", every collector on policy allow (no lock)"
        } else {
            ""
        },
        s(p.starting_deadline()),
        s(p.replace_grace()),
        s(p.lock_wait()),
        s(p.run_deadline()),
        s(p.resume_within()),
        if p.resume_within().is_zero() {
            " (resuming off)"
        } else {
            ""
        },
        s(p.ticket_ttl()),
        if p.without_postgres {
            "The arms on the PostgreSQL lock were left out (--without-postgres).".to_owned()
        } else {
            format!(
                "On the PostgreSQL lock: {} hosts, lease {} (the shipped 15 s scaled, at least the 1 s minimum).",
                crate::arm::POSTGRES_HOSTS,
                s(p.lease())
            )
        },
    )
}

/// The whole `results.md` page.
pub fn results_page(outcome: &Outcome, verdict: &Verdict) -> String {
    format!(
        "# Experiment results\n\n{}\n\n{}\n\"Peak runs at once\" counts collector processes alive together for at least {} s \
         (waiting for the lock included); \"peak collecting at once\" counts runs from the ticket they took (requested \
         or resumed, as their log line says) to their exit, together for as long. \"Run to CSV\" is from a collected run's start to its exit. \
         \"Killed\": runs the experiment SIGKILLed while they held a ticket (every other run of the killed arm). \
         Tickets: issued and cancelled are the server's counts; resumed, collections of a ticket an earlier run \
         left (the collector's metrics file); wasted, tickets issued that were neither collected (a saved report \
         carries them), cancelled, nor still in hand at the end (a cut-off run's, or the one the lock's record names). \
         \"Failed\" lists exit codes; 79 is a lost lock, `79 fenced` refused by the server's fence (MESSAGE_ID e6d1ab9c...), \
         `79 lease` its lease ran out (MESSAGE_ID c562304a...). \"Holders paused\": runs the experiment stopped (SIGSTOP) as \
         they sent their ticket request, their request held until another host had taken the lock over and had its \
         ticket; \"requests refused (fence-stale)\": the server's own count of requests refused for a token below their lock's mark.\n\n\
         ![Pending tickets over time](pending.svg)\n\n## Conclusions\n\n{}",
        parameters(outcome),
        markdown_table(outcome),
        OVERLAP_IGNORED,
        verdict,
    )
}
