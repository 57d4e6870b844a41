//! The checks over every round, and the figures printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use report_common::message_id;

use crate::evidence::{self, Activity, RunFacts, TakeOver};
use crate::faults::Fault;
use crate::logline::{self, Kind};
use crate::round::RoundResult;
use crate::runs::{Exit, RunResult};
use crate::server_view::{FENCE_STALE, ServerRound};

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
    /// The server's view: reads of its /metrics that answered, and that failed.
    pub server_samples: usize,
    pub server_failed: usize,
    /// The most tickets pending under each lock name in any sample, and server-wide.
    pub max_pending_by_lock: BTreeMap<String, f64>,
    pub max_pending: f64,
    /// The server's own peak of pending tickets, read at the last round's end.
    pub pending_peak: Option<f64>,
    /// The `fence-*` refusals the server counted over the run, by reason.
    pub fence_refusals: BTreeMap<String, f64>,
    /// Rounds with `fence-stale` refusals: the round, the refusals, and the runs that exited
    /// 79 with the FENCED line.
    pub refused: Vec<(usize, f64, Vec<String>)>,
    /// The time the sampler spent reading /metrics over the run.
    pub sampling_busy: Duration,
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

/// Whether the run wrote the line of a run whose token report-apis refused (MESSAGE_ID
/// FENCED).
fn fenced(run: &RunResult) -> bool {
    run.lines
        .iter()
        .any(|l| logline::field(&l.text, "MESSAGE_ID").as_deref() == Some(message_id::FENCED))
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
                Exit::Code(79) if fenced(run) => "fenced".to_owned(),
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
    s.push_str(&describe_server(&r.server));
    s
}

/// The server's view of a round, in a few words.
fn describe_server(v: &ServerRound) -> String {
    let mut s = format!(
        " | server: {} samples, at most {} pending",
        v.samples, v.max_pending
    );
    for (reason, n) in &v.refusals {
        let _ = write!(s, ", {n} refused {reason}");
    }
    if v.failed > 0 {
        let _ = write!(s, ", {} reads failed", v.failed);
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
        judge_server(r, &mut f);
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

/// The server's view of one round, against the runs' own lines: never more than one ticket
/// pending, and every refusal of a stale token matched by a run that says it was fenced.
fn judge_server(r: &RoundResult, f: &mut Figures) {
    let v = &r.server;
    f.server_samples += v.samples;
    f.server_failed += v.failed;
    for (lock, &n) in &v.max_by_lock {
        let max = f.max_pending_by_lock.entry(lock.clone()).or_default();
        *max = max.max(n);
    }
    f.max_pending = f.max_pending.max(v.max_pending);
    let peak_before = f.pending_peak.unwrap_or(0.0);
    f.pending_peak = v.peak.or(f.pending_peak);
    for (reason, n) in &v.refusals {
        *f.fence_refusals.entry(reason.clone()).or_default() += n;
    }
    f.failures
        .extend(pending_failures(r.index, v, peak_before <= 1.0));
    let runs: Vec<Refused> = r
        .runs
        .iter()
        .map(|run| Refused {
            run: name(r, run),
            exit: run.exit.clone(),
            fenced_line: fenced(run),
        })
        .collect();
    let (matched, failures) = refusals_accounted(r.index, v, &runs);
    if v.stale() > 0.0 || !matched.is_empty() {
        f.refused.push((r.index, v.stale(), matched));
    }
    f.failures.extend(failures);
}

/// The pending tickets the server showed in a round: at most one per lock name and, the
/// fleet having one lock, at most one server-wide, in every sample and by the server's own
/// peak (`new_peak`: the peak was still at most one before this round, so it is named once).
fn pending_failures(index: usize, v: &ServerRound, new_peak: bool) -> Vec<String> {
    let mut out = Vec::new();
    if v.samples == 0 {
        out.push(format!(
            "round {index}: no sample of report-apis' /metrics ({} reads failed: {})",
            v.failed,
            v.last_error.as_deref().unwrap_or("none made")
        ));
    }
    for (lock, n) in v.max_by_lock.iter().filter(|(_, n)| **n > 1.0) {
        out.push(format!(
            "round {index}: {n} tickets pending at once under lock \"{lock}\" (report_apis_fence_pending_tickets): {}",
            v.over_one.join("; ")
        ));
    }
    if v.max_pending > 1.0 {
        out.push(format!(
            "round {index}: {} tickets pending at once on the server (report_apis_tickets_pending), one lock: {}",
            v.max_pending,
            v.over_one.join("; ")
        ));
    }
    if let Some(peak) = v.peak.filter(|p| *p > 1.0 && new_peak) {
        out.push(format!(
            "round {index}: the server's peak of pending tickets rose to {peak} (report_apis_tickets_pending_peak)"
        ));
    }
    out
}

/// A run, as the count of refusals needs it.
#[derive(Debug, Clone)]
struct Refused {
    run: String,
    exit: Exit,
    /// It wrote the FENCED line.
    fenced_line: bool,
}

/// Every `fence-stale` refusal the server counted in round `index` met by a run of the round
/// that exited 79 (the lock lost), and every run that exited 79 with the FENCED line counted
/// by the server (at least one refusal each); no other
/// `fence-*` refusal at all (one lock, every request well formed and fenced). The runs that
/// matched, and the failures.
fn refusals_accounted(
    index: usize,
    v: &ServerRound,
    runs: &[Refused],
) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    if let Some(e) = &v.counters_error {
        failures.push(format!(
            "round {index}: report-apis' refusal counters unreadable at the round's end: {e}"
        ));
        return (Vec::new(), failures);
    }
    let matched: Vec<String> = runs
        .iter()
        .filter(|r| r.fenced_line && r.exit == Exit::Code(79))
        .map(|r| r.run.clone())
        .collect();
    for r in runs
        .iter()
        .filter(|r| r.fenced_line && r.exit != Exit::Code(79))
    {
        failures.push(format!(
            "round {index}: {} wrote the FENCED line but ended with {}, not exit 79",
            r.run, r.exit
        ));
    }
    let stale = v.stale();
    // A count of a few runs: exact in an f64.
    let fenced = matched.len() as f64;
    // A refused run stops with 79: with the FENCED line when it read the refusal, as a lost
    // lease when its own clock told it first (the refusal then went unread); one run may be
    // refused more than once (requests it sent before it stopped, delivered late).
    let lost = runs.iter().any(|r| r.exit == Exit::Code(79));
    if stale > 0.0 && !lost {
        failures.push(format!(
            "round {index}: report-apis refused {stale} stale token(s) ({FENCE_STALE}), but no run of the round exited 79 (the lock lost)"
        ));
    } else if stale < fenced {
        failures.push(format!(
            "round {index}: {} run(s) exited 79 with the FENCED line ({matched:?}), but report-apis counted {stale} {FENCE_STALE} refusal(s)",
            matched.len()
        ));
    }
    for (reason, n) in v.refusals.iter().filter(|(r, _)| *r != FENCE_STALE) {
        failures.push(format!(
            "round {index}: report-apis refused {n} request(s) for {reason}, which no run of one lock should meet"
        ));
    }
    (matched, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(samples: usize, by_lock: &[(&str, f64)], pending: f64) -> ServerRound {
        ServerRound {
            samples,
            max_by_lock: by_lock.iter().map(|(l, n)| ((*l).to_owned(), *n)).collect(),
            max_pending: pending,
            peak: Some(pending),
            ..ServerRound::default()
        }
    }

    fn refused(run: &str, exit: i32, fenced_line: bool) -> Refused {
        Refused {
            run: run.into(),
            exit: Exit::Code(exit),
            fenced_line,
        }
    }

    fn run_with(exit: i32, raw: &str) -> RunResult {
        RunResult {
            host: 1,
            lines: logline::parse(raw).into_iter().collect(),
            exit: Exit::Code(exit),
            pid: None,
        }
    }

    #[test]
    fn the_fenced_line_is_known_by_its_message_id() {
        let line = |id: &str| {
            format!(
                "2026-12-08T02:27:22.670407Z ERROR run failed after 2.284s: stopped without saving anything: report-apis refused /get_report/t for this run's token 3.1 of the lock \"fleet\" (409, its mark: 3.2) MESSAGE_ID=\"{id}\" OUTCOME=\"failed\" SKIP=\"\" TICKET=\"t\""
            )
        };
        assert!(fenced(&run_with(79, &line(message_id::FENCED))));
        // The lease lost by the run's own clock: exit 79 too, another MESSAGE_ID.
        assert!(!fenced(&run_with(79, &line(message_id::LEASE_LOST))));
    }

    #[test]
    fn one_ticket_pending_at_a_time_passes() {
        assert!(pending_failures(1, &view(60, &[("fleet", 1.0)], 1.0), true).is_empty());
        assert!(pending_failures(1, &view(60, &[], 0.0), true).is_empty());
    }

    #[test]
    fn two_tickets_pending_or_no_sample_fail() {
        let by_lock = pending_failures(3, &view(60, &[("fleet", 2.0)], 1.0), true);
        assert_eq!(by_lock.len(), 1);
        assert!(by_lock[0].starts_with("round 3: 2 tickets pending at once under lock \"fleet\""));
        // Two locks of one ticket each: fine by lock, not server-wide (the fleet has one).
        let wide = pending_failures(4, &view(60, &[("a", 1.0), ("b", 1.0)], 2.0), true);
        assert_eq!(wide.len(), 2, "{wide:?}");
        assert!(wide[0].contains("report_apis_tickets_pending)"));
        assert!(wide[1].contains("peak of pending tickets rose to 2"));
        // The peak is named in the round it rose, not again.
        assert_eq!(pending_failures(5, &view(60, &[], 2.0), false).len(), 1);
        let mut none = view(0, &[], 0.0);
        none.failed = 7;
        none.last_error = Some("connection refused".into());
        let failed = pending_failures(6, &none, true);
        assert_eq!(
            failed,
            vec![
                "round 6: no sample of report-apis' /metrics (7 reads failed: connection refused)"
            ]
        );
    }

    #[test]
    fn each_stale_refusal_is_matched_by_a_fenced_run() {
        let mut v = view(60, &[("fleet", 1.0)], 1.0);
        let quiet = [
            refused("round 2 h1", 0, false),
            refused("round 2 h2", 75, false),
        ];
        assert_eq!(refusals_accounted(2, &v, &quiet), (vec![], vec![]));
        v.refusals.insert(FENCE_STALE.into(), 1.0);
        let runs = [
            refused("round 2 h1", 79, true),
            refused("round 2 h2", 0, false),
            refused("round 2 h3", 79, false),
        ];
        assert_eq!(
            refusals_accounted(2, &v, &runs),
            (vec!["round 2 h1".to_owned()], vec![])
        );
        // A refusal no run stopped for.
        let (matched, failures) = refusals_accounted(2, &v, &quiet);
        assert!(matched.is_empty());
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].contains("refused 1 stale token(s)"),
            "{failures:?}"
        );
        // Refused twice, and its own clock told it first: exit 79 without the FENCED line.
        v.refusals.insert(FENCE_STALE.into(), 2.0);
        let lease_first = [refused("round 2 h1", 79, false)];
        assert_eq!(refusals_accounted(2, &v, &lease_first), (vec![], vec![]));
    }

    #[test]
    fn a_fenced_run_without_a_refusal_or_exit_79_fails() {
        let v = view(60, &[("fleet", 1.0)], 1.0);
        let (matched, failures) = refusals_accounted(7, &v, &[refused("round 7 h3", 79, true)]);
        assert_eq!(matched, vec!["round 7 h3".to_owned()]);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].contains("counted 0 fence-stale"),
            "{failures:?}"
        );
        let (_, failures) = refusals_accounted(7, &v, &[refused("round 7 h3", 1, true)]);
        assert_eq!(
            failures,
            vec!["round 7: round 7 h3 wrote the FENCED line but ended with exit 1, not exit 79"]
        );
    }

    #[test]
    fn other_fence_refusals_and_unread_counters_fail() {
        let mut v = view(60, &[], 0.0);
        v.refusals.insert("fence-header".into(), 2.0);
        let (_, failures) = refusals_accounted(8, &v, &[]);
        assert_eq!(
            failures,
            vec![
                "round 8: report-apis refused 2 request(s) for fence-header, which no run of one lock should meet"
            ]
        );
        v.counters_error = Some("timed out".into());
        let (_, failures) = refusals_accounted(8, &v, &[]);
        assert_eq!(
            failures,
            vec!["round 8: report-apis' refusal counters unreadable at the round's end: timed out"]
        );
    }
}
