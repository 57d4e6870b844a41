//! Turns one arm's run records and server samples into the figures of the table.
//!
//! Each figure is defined here once, so the table, the chart and the shape checks agree on what
//! "runs at once" or "pending" mean.

use crate::arm::Arm;
use crate::launcher::{ExitKind, RunRecord};
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
}

/// The table row of one arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub fired: usize,
    pub collected: usize,
    pub skipped: usize,
    pub failed: usize,
    pub replaced: usize,
    pub cut_off: usize,
    /// Most collector processes alive together for at least [`OVERLAP_IGNORED`].
    pub peak_runs: usize,
    /// Most tickets pending on the server (its own peak gauge, or the highest sample).
    pub peak_pending: f64,
    /// From a collected run's start to its CSV (its exit), seconds.
    pub to_csv_mean: Option<f64>,
    pub to_csv_max: Option<f64>,
    /// The server's mean time from request to ready, seconds.
    pub generation_mean: Option<f64>,
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
        Summary {
            fired: self.runs.len(),
            collected: count(|e| *e == ExitKind::Collected),
            skipped: count(|e| *e == ExitKind::Skipped),
            failed: count(|e| matches!(e, ExitKind::Failed(_))),
            replaced: count(|e| *e == ExitKind::Replaced),
            cut_off: count(|e| *e == ExitKind::CutOff),
            peak_runs: peak_at_once(&self.runs, OVERLAP_IGNORED),
            peak_pending: self.last.pending_peak.max(sampled_peak),
            to_csv_mean: (!to_csv.is_empty())
                .then(|| to_csv.iter().sum::<f64>() / to_csv.len() as f64),
            to_csv_max: to_csv.iter().copied().reduce(f64::max),
            generation_mean: self.last.mean_generation(),
        }
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
    if runs.is_empty() {
        return 0;
    }
    let mut events: Vec<(f64, i32)> = runs
        .iter()
        .flat_map(|r| [(r.started, 1), (r.ended, -1)])
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
                run(5.0, 5.5, ExitKind::Failed("exit status: 1".into())),
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
}
