//! The checks over every round, and the figures printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::evidence::{self, Activity, RunFacts, TakeOver};
use crate::faults::Fault;
use crate::logline::Kind;
use crate::round::RoundResult;
use crate::runs::{Exit, RunResult};

#[derive(Debug, Default)]
pub struct Figures {
    pub rounds: usize,
    pub faults: BTreeMap<Fault, usize>,
    /// Faults that found the holder already gone or without a session (not counted above).
    pub missed: usize,
    pub collections: usize,
    pub skips: usize,
    pub other_exits: BTreeMap<String, usize>,
    pub overlaps: usize,
    pub slots_twice: usize,
    pub tickets_twice: usize,
    pub take_overs: Vec<Duration>,
    pub by_holder: usize,
    /// Rounds whose slot another host took the lock for but skipped, finding it claimed by
    /// the holder the fault had ended.
    pub slots_lost: Vec<usize>,
    /// By fault: how many rounds the holder kept its slot, another host took the lock and
    /// collected, another host took the lock and skipped the claimed slot, the lock never
    /// moved on.
    pub outcomes: BTreeMap<Fault, [usize; 4]>,
    /// Rounds whose slot was compared with the database's slot table.
    pub db_checked: usize,
    /// Rounds of a database restart in which the other hosts' runs failed closed (exit 69, the
    /// database unreachable as they started) and nobody collected: what the lock promises.
    pub failed_closed: Vec<usize>,
    /// Every failed check, naming its round and evidence.
    pub failures: Vec<String>,
}

fn name(r: &RoundResult, run: &RunResult) -> String {
    format!("round {} h{}", r.index, run.host + 1)
}

fn collected(run: &RunResult) -> bool {
    run.lines
        .iter()
        .any(|l| matches!(&l.kind, Kind::Decision(d) if d.collected()))
}

/// When the run's lines first show it holding the lock: its first action, or its skip of a
/// slot another host had claimed (the claim is checked only by a run holding the lock).
fn took_lock(r: &RoundResult, run: &RunResult) -> Option<SystemTime> {
    let skipped = run.lines.iter().find_map(|l| match &l.kind {
        Kind::Decision(d) if d.skip.as_deref() == Some("slot-taken") => Some(l.at),
        _ => None,
    });
    [activity(r, run).first_action(), skipped]
        .into_iter()
        .flatten()
        .min()
}

fn skip_reason(run: &RunResult) -> Option<String> {
    run.lines.iter().find_map(|l| match &l.kind {
        Kind::Decision(d) => d.skip.clone(),
        _ => None,
    })
}

fn decision_slot(run: &RunResult) -> Option<String> {
    run.lines.iter().find_map(|l| match &l.kind {
        Kind::Decision(d) if d.collected() => d.slot.clone(),
        _ => None,
    })
}

/// The run's actions: its start and action lines, the decision line of a collection (the
/// save came just before it), and the writing of any report file its host gained this round.
fn activity(r: &RoundResult, run: &RunResult) -> Activity {
    let actions = run
        .lines
        .iter()
        .filter(|l| match &l.kind {
            Kind::Start | Kind::Action => true,
            Kind::Decision(d) => d.collected(),
            Kind::Other => false,
        })
        .map(|l| l.at)
        .chain(
            r.saved_at
                .iter()
                .filter(|(host, _)| *host == run.host)
                .map(|(_, at)| *at),
        )
        .collect();
    let stopped = r
        .injected
        .iter()
        .filter(|i| i.host == run.host)
        .filter_map(|i| i.stopped)
        .collect();
    Activity {
        run: name(r, run),
        actions,
        stopped,
    }
}

pub fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The one-line account of a round.
pub fn describe(r: &RoundResult) -> String {
    let mut s = format!(
        "round {} slot {} fault {}",
        r.index,
        humantime::format_rfc3339_seconds(r.slot),
        r.plan.fault.name()
    );
    match &r.injected {
        Some(i) => {
            let _ = write!(s, " on h{} at {}", i.host + 1, stamp(i.at));
            if matches!(i.fault, Fault::Stop | Fault::Partition) {
                let _ = write!(s, " for {}", humantime::format_duration(r.plan.hold));
            }
            if !i.note.is_empty() {
                let _ = write!(s, " ({})", i.note);
            }
            if let Some(why) = &i.missed {
                let _ = write!(s, " (missed: {why})");
            }
        }
        None => s.push_str(" (no holder: nobody collected)"),
    }
    s.push_str(" |");
    for run in &r.runs {
        let what = if collected(run) {
            "collected".to_owned()
        } else {
            match run.exit {
                Exit::Code(75) => match skip_reason(run) {
                    Some(why) => format!("skipped ({why})"),
                    None => "skipped".to_owned(),
                },
                Exit::Code(69) => "database unavailable".to_owned(),
                Exit::Code(79) => "lease lost".to_owned(),
                _ => String::new(),
            }
        };
        let host = format!("h{}", run.host + 1);
        let saved = r.new_files.iter().filter(|(h, _)| *h == host).count();
        let _ = write!(s, " {host} {} {what}", run.exit);
        // Files are evidence of their own: a run may save and then say it saved nothing.
        if saved > 0 {
            let _ = write!(s, " [{saved} report file(s) saved]");
        }
        s.push(';');
    }
    let mut s = s.trim_end_matches(';').to_owned();
    match round_take_over(r) {
        Some(TakeOver::By {
            run,
            after,
            collected,
        }) => {
            let _ = write!(
                s,
                " | lock taken over by {run} after {:.2} s{}",
                after.as_secs_f64(),
                if collected {
                    ""
                } else {
                    ", slot not collected"
                }
            );
        }
        Some(TakeOver::ByHolder) => s.push_str(" | kept by the holder"),
        Some(TakeOver::Nobody) => s.push_str(" | nobody collected"),
        None => {}
    }
    s
}

pub fn judge(rounds: &[RoundResult], bound: Duration) -> Figures {
    let mut f = Figures {
        rounds: rounds.len(),
        ..Figures::default()
    };
    let mut activities = Vec::new();
    let mut slots: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files = Vec::new();
    for r in rounds {
        for run in &r.runs {
            activities.push(activity(r, run));
            if collected(run) {
                f.collections += 1;
                let slot = decision_slot(run).unwrap_or_else(|| format!("round {}", r.index));
                slots.entry(slot).or_default().push(name(r, run));
            }
            match &run.exit {
                Exit::Code(75) => f.skips += 1,
                Exit::Code(0) => {}
                other => *f.other_exits.entry(other.to_string()).or_default() += 1,
            }
        }
        files.extend(r.new_files.iter().cloned());
        if r.new_files.len() > 1 {
            f.failures.push(format!(
                "round {}: {} report files saved for one slot: {:?}",
                r.index,
                r.new_files.len(),
                r.new_files
            ));
        }
        judge_fault(r, bound, &mut f);
        let lock_moved = matches!(round_take_over(r), Some(TakeOver::By { .. }));
        // A restart that strikes while the other hosts are still connecting makes them fail
        // closed (exit 69): nobody may collect then, and nobody did.
        let failed_closed = r.injected.as_ref().is_some_and(|i| {
            i.fault == Fault::DbRestart
                && r.runs
                    .iter()
                    .any(|run| run.host != i.host && run.exit == Exit::Code(69))
        });
        if r.injected.is_some() && !lock_moved && !r.runs.iter().any(collected) && failed_closed {
            f.failed_closed.push(r.index);
        } else if r.injected.is_some() && !lock_moved && !r.runs.iter().any(collected) {
            f.failures.push(format!(
                "round {}: nobody collected the slot: {}",
                r.index,
                describe(r)
            ));
        }
        judge_db(r, &mut f);
    }
    for o in evidence::overlaps(&activities) {
        f.overlaps += 1;
        f.failures.push(format!(
            "overlap: {} collected from {} to {} while {} collected from {} to {}",
            o.a,
            stamp(o.a_span.from),
            stamp(o.a_span.to),
            o.b,
            stamp(o.b_span.from),
            stamp(o.b_span.to)
        ));
    }
    for (slot, runs) in slots.iter().filter(|(_, runs)| runs.len() > 1) {
        f.slots_twice += 1;
        f.failures.push(format!(
            "slot {slot} collected {} times: {runs:?}",
            runs.len()
        ));
    }
    for (ticket, at) in evidence::tickets_saved_twice(&files) {
        f.tickets_twice += 1;
        f.failures
            .push(format!("ticket {ticket} saved more than once: {at:?}"));
    }
    f
}

/// The database's record of the round's slot against the runs' own lines.
fn judge_db(r: &RoundResult, f: &mut Figures) {
    let slot = humantime::format_rfc3339_seconds(r.slot)
        .to_string()
        .replace('Z', "+00:00");
    let by: Vec<String> = r
        .runs
        .iter()
        .filter(|run| collected(run))
        .map(|run| format!("h{}", run.host + 1))
        .collect();
    match evidence::db_slot(&r.db, &slot, &by) {
        evidence::DbSlot::NoTable => {}
        evidence::DbSlot::Agrees => f.db_checked += 1,
        evidence::DbSlot::Disagrees(why) => {
            f.db_checked += 1;
            f.failures
                .push(format!("round {}: slot {slot}: {why}", r.index));
        }
    }
}

/// The take-over after the round's fault, when a fault hit a holder still running.
fn round_take_over(r: &RoundResult) -> Option<TakeOver> {
    let injected = r.injected.as_ref()?;
    if injected.fault == Fault::None || injected.missed.is_some() {
        return None;
    }
    let facts = |run: &RunResult| RunFacts {
        run: name(r, run),
        took_lock: took_lock(r, run),
        collected: collected(run),
    };
    let holder = r.runs.iter().find(|run| run.host == injected.host)?;
    let others: Vec<RunFacts> = r
        .runs
        .iter()
        .filter(|run| run.host != injected.host)
        .map(facts)
        .collect();
    Some(evidence::take_over(injected.at, &facts(holder), &others))
}

fn judge_fault(r: &RoundResult, bound: Duration, f: &mut Figures) {
    let Some(injected) = &r.injected else {
        f.failures.push(format!(
            "round {}: no run started collecting slot {}",
            r.index,
            humantime::format_rfc3339_seconds(r.slot)
        ));
        return;
    };
    if injected.missed.is_some() {
        f.missed += 1;
        return;
    }
    *f.faults.entry(injected.fault).or_default() += 1;
    let Some(take_over) = round_take_over(r) else {
        return;
    };
    let outcome = f.outcomes.entry(injected.fault).or_default();
    match &take_over {
        TakeOver::ByHolder => outcome[0] += 1,
        TakeOver::By {
            collected: true, ..
        } => outcome[1] += 1,
        TakeOver::By { .. } => outcome[2] += 1,
        TakeOver::Nobody => outcome[3] += 1,
    }
    match take_over {
        TakeOver::ByHolder => f.by_holder += 1,
        TakeOver::By {
            run,
            after,
            collected,
        } => {
            f.take_overs.push(after);
            if !collected {
                f.slots_lost.push(r.index);
            }
            if after > bound {
                f.failures.push(format!(
                    "round {}: {} took over {} after the {} at {}, later than the bound {}",
                    r.index,
                    run,
                    humantime::format_duration(after),
                    injected.fault.name(),
                    stamp(injected.at),
                    humantime::format_duration(bound)
                ));
            }
        }
        // Judged with every round: the slot was not collected.
        TakeOver::Nobody => {}
    }
}
