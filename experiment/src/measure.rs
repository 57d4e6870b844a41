//! Turns one arm's run records and server samples into the figures of the table.
//!
//! Each figure is defined here once, so the table, the chart and the shape checks agree on what
//! "runs at once" or "pending" mean.

use std::collections::{BTreeMap, BTreeSet};

use crate::arm::Arm;
use crate::collector::Leftovers;
use crate::launcher::{ExitKind, RunRecord};
use crate::proxy::Pause;
use crate::scrape::{Sample, Scrape};

/// Two collector processes count as two runs at once only when they are alive together for at
/// least this long (seconds). A skip decision or a `replace` hand-over (the old run exiting on
/// SIGTERM while the new one waits for its lock) overlaps for milliseconds; a real second run
/// overlaps for seconds.
pub const OVERLAP_IGNORED: f64 = 0.25;

/// Everything measured for one arm.
#[derive(Debug, Clone)]
pub struct ArmResult {
    pub arm: Arm,
    pub runs: Vec<RunRecord>,
    pub samples: Vec<Sample>,
    /// The server's figures after the last run ended.
    pub last: Scrape,
    /// What the arm's runs left on disk after the last one ended.
    pub leftovers: Leftovers,
    /// The holders the experiment stopped at their ticket request (arms that pause holders).
    pub pauses: Vec<Pause>,
}

/// The table row of one arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub fired: usize,
    pub collected: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Failed runs by exit code (and for 79, how the lock was lost), see
    /// [`crate::launcher::failure_label`].
    pub failed_by: BTreeMap<String, usize>,
    pub replaced: usize,
    /// SIGKILLed by the experiment while holding a ticket (the arm that kills every other run).
    pub killed: usize,
    pub cut_off: usize,
    /// Most collector processes alive together for at least [`OVERLAP_IGNORED`].
    pub peak_runs: usize,
    /// Most runs collecting together (from the ticket they took to their exit) for at least
    /// [`OVERLAP_IGNORED`]; 0 when no run took a ticket.
    pub peak_collecting: usize,
    /// Most tickets pending on the server (its own peak gauge, or the highest sample).
    pub peak_pending: f64,
    /// From a collected run's start to its CSV (its exit), seconds.
    pub to_csv_mean: Option<f64>,
    pub to_csv_max: Option<f64>,
    /// The server's mean time from request to ready, seconds.
    pub generation_mean: Option<f64>,
    pub tickets: Tickets,
    /// Holders stopped at their ticket request by the experiment.
    pub paused: usize,
    /// Of those, the ones whose held request was sent on to the server (after a takeover).
    pub paused_delivered: usize,
    /// Requests the server refused for a token below its lock's mark
    /// (`report_apis_rejections_total{reason="fence-stale"}`).
    pub refused_stale: u64,
}

/// What became of every ticket the arm's server issued.
///
/// Every issued ticket should end one of three ways: **collected** (a saved report carries it),
/// **cancelled** on the server at a collector's request (nobody would fetch it), or **in hand**
/// when the experiment ended (the ticket of a run cut off at the end, from its output, or the
/// ticket the lock's record names after the last run, which the next run would resume). Any
/// other ticket is **wasted**: the server generated it, or kept it pending, for nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tickets {
    /// `report_apis_tickets_issued_total`.
    pub issued: u64,
    /// Distinct tickets among the saved reports' file names.
    pub collected: usize,
    /// Tickets with more than one saved report (should never happen).
    pub saved_twice: usize,
    /// `report_apis_tickets_cancelled_total`.
    pub cancelled: u64,
    /// Tickets not collected but still in hand at the end (see above).
    pub in_hand: usize,
    /// `report_collector_resumed_collections_total` in the arm's metrics textfile: collections
    /// of a ticket a run left unfinished.
    pub resumed: u64,
    /// `issued - collected - cancelled - in hand`, never below 0.
    pub wasted: u64,
}

/// A count from a Prometheus sample (a float), as a whole number.
fn whole(value: f64) -> u64 {
    // Clamped first, so the cast can neither wrap nor cut.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to the range of u64 just before"
    )]
    let n = value.round().clamp(0.0, u64::MAX as f64) as u64;
    n
}

impl Tickets {
    /// The accounting of one arm: the server's counters after the last run, what the runs left
    /// on disk, and the runs cut off at the end.
    pub fn of(arm: &ArmResult) -> Tickets {
        let saved = arm.saved_tickets();
        let in_hand = arm.in_hand();
        let issued = whole(arm.last.issued);
        let cancelled = whole(arm.last.cancelled);
        let accounted = (saved.len() as u64)
            .saturating_add(cancelled)
            .saturating_add(in_hand.len() as u64);
        Tickets {
            issued,
            collected: saved.len(),
            saved_twice: saved.values().filter(|n| **n > 1).count(),
            cancelled,
            in_hand: in_hand.len(),
            resumed: arm.leftovers.resumed,
            wasted: issued.saturating_sub(accounted),
        }
    }
}

impl ArmResult {
    pub fn summary(&self) -> Summary {
        let count =
            |want: fn(&ExitKind) -> bool| self.runs.iter().filter(|r| want(&r.exit)).count();
        let to_csv: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.exit == ExitKind::Collected)
            .map(|r| r.duration())
            .collect();
        let sampled_peak = self
            .samples
            .iter()
            .map(|s| s.scrape.pending)
            .fold(0.0, f64::max);
        let mut failed_by = BTreeMap::new();
        for label in self.runs.iter().filter_map(|r| r.failure.as_deref()) {
            *failed_by.entry(label.to_owned()).or_default() += 1;
        }
        Summary {
            fired: self.runs.len(),
            collected: count(|e| *e == ExitKind::Collected),
            skipped: count(|e| *e == ExitKind::Skipped),
            failed: count(|e| matches!(e, ExitKind::Failed(_))),
            failed_by,
            paused: self.pauses.len(),
            paused_delivered: self.pauses.iter().filter(|p| p.delivered).count(),
            refused_stale: whole(self.last.fence_stale),
            replaced: count(|e| *e == ExitKind::Replaced),
            killed: count(|e| *e == ExitKind::Killed),
            cut_off: count(|e| *e == ExitKind::CutOff),
            peak_runs: peak_at_once(&self.runs, OVERLAP_IGNORED),
            peak_collecting: peak_collecting(&self.runs, OVERLAP_IGNORED),
            peak_pending: self.last.pending_peak.max(sampled_peak),
            to_csv_mean: (!to_csv.is_empty())
                .then(|| to_csv.iter().sum::<f64>() / to_csv.len() as f64),
            to_csv_max: to_csv.iter().copied().reduce(f64::max),
            generation_mean: self.last.mean_generation(),
            tickets: Tickets::of(self),
        }
    }

    /// Every ticket a saved report carries, with how many reports carry it.
    pub fn saved_tickets(&self) -> BTreeMap<&str, usize> {
        let mut saved: BTreeMap<&str, usize> = BTreeMap::new();
        for ticket in &self.leftovers.saved_tickets {
            *saved.entry(ticket.as_str()).or_default() += 1;
        }
        saved
    }

    /// Tickets not collected but in hand when the experiment ended: the ticket of every run cut
    /// off at the end (from its output), and the ticket the lock's record names after the last
    /// run (which the next run would resume).
    pub fn in_hand(&self) -> BTreeSet<&str> {
        let saved = self.saved_tickets();
        self.runs
            .iter()
            .filter(|r| r.exit == ExitKind::CutOff)
            .filter_map(|r| r.ticket.as_deref())
            .chain(self.leftovers.record_ticket.as_deref())
            .filter(|t| !saved.contains_key(t))
            .collect()
    }

    /// Collected runs that outlasted their slot: the runs after which the schedulers differ.
    pub fn long_runs(&self, slot: f64) -> impl Iterator<Item = &RunRecord> {
        self.runs
            .iter()
            .filter(move |r| r.exit == ExitKind::Collected && r.duration() > slot)
    }

    /// The first process started at or after `t`.
    pub fn next_start_after(&self, t: f64) -> Option<&RunRecord> {
        self.runs
            .iter()
            .filter(|r| r.started >= t)
            .min_by(|a, b| a.started.total_cmp(&b.started))
    }

    /// The first collecting process started at or after `t`.
    pub fn next_collecting_after(&self, t: f64) -> Option<&RunRecord> {
        self.runs
            .iter()
            .filter(|r| r.started >= t && r.exit == ExitKind::Collected)
            .min_by(|a, b| a.started.total_cmp(&b.started))
    }
}

/// The highest number of processes alive together for at least `min_overlap` seconds; a single
/// process counts as one however short it lived.
pub fn peak_at_once(runs: &[RunRecord], min_overlap: f64) -> usize {
    let spans: Vec<(f64, f64)> = runs.iter().map(|r| (r.started, r.ended)).collect();
    peak_of(&spans, min_overlap)
}

/// The highest number of runs collecting together for at least `min_overlap` seconds: each
/// from the moment its output says it took a ticket to its exit. A skip, or the time a run
/// waits for the lock or a replaced holder takes to exit, does not count.
pub fn peak_collecting(runs: &[RunRecord], min_overlap: f64) -> usize {
    let spans: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| r.ticket_at.map(|at| (at.min(r.ended), r.ended)))
        .collect();
    peak_of(&spans, min_overlap)
}

/// The highest number of `(start, end)` spans that overlap for at least `min_overlap` seconds.
fn peak_of(spans: &[(f64, f64)], min_overlap: f64) -> usize {
    if spans.is_empty() {
        return 0;
    }
    let mut events: Vec<(f64, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At equal times an exit comes first: a run that starts as another ends is not an overlap.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut segments = Vec::with_capacity(events.len());
    let mut level = 0i32;
    for pair in events.windows(2) {
        level += pair[0].1;
        segments.push((pair[1].0 - pair[0].0, level));
    }
    let top = segments.iter().map(|s| s.1).max().unwrap_or(1);
    for want in (2..=top).rev() {
        let mut stretch = 0.0;
        for &(length, at) in &segments {
            if at >= want {
                stretch += length;
                if stretch >= min_overlap {
                    return usize::try_from(want).unwrap_or(1);
                }
            } else {
                stretch = 0.0;
            }
        }
    }
    1
}

/// Heavy-load phases `(on, off)` seen in the samples, in seconds after slot 0; a phase still on
/// at the last sample ends there.
pub fn heavy_phases(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut phases = Vec::new();
    let mut on_since: Option<f64> = None;
    for s in samples {
        match (s.scrape.heavy_load, on_since) {
            (true, None) => on_since = Some(s.at),
            (false, Some(on)) => {
                phases.push((on, s.at));
                on_since = None;
            }
            _ => {}
        }
    }
    if let (Some(on), Some(last)) = (on_since, samples.last()) {
        phases.push((on, last.at));
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(started: f64, ended: f64, exit: ExitKind) -> RunRecord {
        RunRecord {
            seq: 0,
            slot: 0,
            slot_time: started,
            catch_up: false,
            started,
            ended,
            exit,
            ticket: None,
            ticket_at: None,
            host: 0,
            pid: 0,
            failure: None,
        }
    }

    #[test]
    fn a_handover_of_milliseconds_is_not_two_runs() {
        let runs = [
            run(0.0, 3.02, ExitKind::Replaced),
            run(3.0, 5.0, ExitKind::Collected),
        ];
        assert_eq!(peak_at_once(&runs, OVERLAP_IGNORED), 1);
    }

    #[test]
    fn seconds_of_overlap_are_two_runs() {
        let runs = [
            run(0.0, 8.0, ExitKind::Collected),
            run(3.0, 8.0, ExitKind::Collected),
            run(6.0, 6.01, ExitKind::Skipped),
        ];
        assert_eq!(peak_at_once(&runs, OVERLAP_IGNORED), 2);
    }

    #[test]
    fn collecting_counts_from_the_ticket_to_the_exit() {
        let took = |mut r: RunRecord, at: f64| {
            r.ticket_at = Some(at);
            r
        };
        // A replaced holder slow to exit, a skip slow to decide: processes overlap for 0.6 s,
        // collections never do.
        let runs = [
            took(run(0.0, 3.6, ExitKind::Replaced), 0.1),
            took(run(3.0, 6.0, ExitKind::Collected), 3.6),
            run(4.0, 4.6, ExitKind::Skipped),
        ];
        assert_eq!(peak_at_once(&runs, OVERLAP_IGNORED), 2);
        assert_eq!(peak_collecting(&runs, OVERLAP_IGNORED), 1);
        // Two runs polling at once for seconds.
        let runs = [
            took(run(0.0, 8.0, ExitKind::Collected), 0.1),
            took(run(3.0, 8.0, ExitKind::Collected), 3.1),
        ];
        assert_eq!(peak_collecting(&runs, OVERLAP_IGNORED), 2);
        assert_eq!(
            peak_collecting(&[run(0.0, 1.0, ExitKind::Skipped)], OVERLAP_IGNORED),
            0
        );
    }

    #[test]
    fn back_to_back_runs_never_overlap() {
        let runs = [
            run(0.0, 3.0, ExitKind::Collected),
            run(3.0, 4.0, ExitKind::Collected),
        ];
        assert_eq!(peak_at_once(&runs, OVERLAP_IGNORED), 1);
        assert_eq!(peak_at_once(&[], OVERLAP_IGNORED), 0);
    }

    #[test]
    fn summary_counts_each_outcome() {
        let result = ArmResult {
            arm: crate::arm::Arm::ALL[0],
            runs: vec![
                run(0.0, 1.0, ExitKind::Collected),
                run(3.0, 6.0, ExitKind::Collected),
                run(4.0, 4.01, ExitKind::Skipped),
                RunRecord {
                    failure: Some("1".into()),
                    ..run(5.0, 5.5, ExitKind::Failed("exit status: 1".into()))
                },
                run(6.0, 9.0, ExitKind::CutOff),
            ],
            samples: vec![Sample {
                at: 1.0,
                scrape: Scrape {
                    pending: 5.0,
                    ..Scrape::default()
                },
            }],
            last: Scrape {
                pending_peak: 4.0,
                generation_sum: 6.0,
                generation_count: 4.0,
                ..Scrape::default()
            },
            leftovers: Leftovers::default(),
            pauses: Vec::new(),
        };
        let s = result.summary();
        assert_eq!(
            (
                s.fired,
                s.collected,
                s.skipped,
                s.failed,
                s.replaced,
                s.cut_off
            ),
            (5, 2, 1, 1, 0, 1)
        );
        assert_eq!(s.peak_pending, 5.0);
        assert_eq!(s.to_csv_mean, Some(2.0));
        assert_eq!(s.to_csv_max, Some(3.0));
        assert_eq!(s.generation_mean, Some(1.5));
        assert_eq!(result.long_runs(2.5).count(), 1);
        assert_eq!(s.failed_by, BTreeMap::from([("1".to_owned(), 1)]));
        assert_eq!((s.paused, s.paused_delivered, s.refused_stale), (0, 0, 0));
    }

    #[test]
    fn paused_holders_and_refusals_are_counted() {
        let failed = |label: &str| {
            let mut r = run(3.0, 6.5, ExitKind::Failed("exit status: 79".into()));
            r.failure = Some(label.to_owned());
            r
        };
        let pause = |delivered| Pause {
            pid: 7,
            stopped: 0.1,
            continued: Some(3.2),
            delivered,
        };
        let result = ArmResult {
            arm: crate::arm::Arm::ALL[7],
            runs: vec![
                failed("79 fenced"),
                failed("79 fenced"),
                failed("79 lease"),
                run(3.0, 4.0, ExitKind::Collected),
            ],
            samples: Vec::new(),
            last: Scrape {
                fence_stale: 2.0,
                ..Scrape::default()
            },
            leftovers: Leftovers::default(),
            pauses: vec![pause(true), pause(true), pause(false)],
        };
        let s = result.summary();
        assert_eq!(s.failed, 3);
        assert_eq!(
            s.failed_by,
            BTreeMap::from([("79 fenced".to_owned(), 2), ("79 lease".to_owned(), 1)])
        );
        assert_eq!((s.paused, s.paused_delivered, s.refused_stale), (3, 2, 2));
    }

    #[test]
    fn heavy_phases_follow_the_gauge() {
        let sample = |at: f64, heavy_load: bool| Sample {
            at,
            scrape: Scrape {
                heavy_load,
                ..Scrape::default()
            },
        };
        let samples = [
            sample(0.0, false),
            sample(1.0, true),
            sample(2.0, true),
            sample(3.0, false),
            sample(4.0, true),
        ];
        assert_eq!(heavy_phases(&samples), vec![(1.0, 3.0), (4.0, 4.0)]);
    }

    #[test]
    fn every_issued_ticket_is_collected_cancelled_in_hand_or_wasted() {
        let mut cut = run(40.0, 48.0, ExitKind::CutOff);
        cut.ticket = Some("d".into());
        let mut result = ArmResult {
            arm: crate::arm::Arm::ALL[0],
            runs: vec![run(0.0, 1.0, ExitKind::Collected), cut],
            samples: Vec::new(),
            last: Scrape {
                issued: 7.0,
                cancelled: 1.0,
                ..Scrape::default()
            },
            leftovers: Leftovers {
                // "a" saved twice; "c" left in the lock's record, "d" by the run cut off.
                saved_tickets: vec!["a".into(), "a".into(), "b".into()],
                record_ticket: Some("c".into()),
                resumed: 1,
            },
            pauses: Vec::new(),
        };
        let t = result.summary().tickets;
        assert_eq!(
            t,
            Tickets {
                issued: 7,
                collected: 2,
                saved_twice: 1,
                cancelled: 1,
                in_hand: 2,
                resumed: 1,
                wasted: 2,
            }
        );
        // A ticket in hand that was saved anyway counts once, as collected.
        result.leftovers.record_ticket = Some("b".into());
        assert_eq!(result.summary().tickets.in_hand, 1);
        // Never below zero.
        result.last.issued = 1.0;
        assert_eq!(result.summary().tickets.wasted, 0);
    }
}
