//! The checks, on evidence gathered independently of the collector's verdicts: when each run
//! acted against the report server (its own time-stamped lines), when the harness had it
//! stopped, and which report files each host holds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// A closed stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: SystemTime,
    pub to: SystemTime,
}

impl Span {
    /// Whether both share an instant that is inside at least one of them: two runs acting at
    /// exactly the same microsecond at their very ends do not happen, and a single action
    /// inside another run's interval must count.
    pub fn overlaps(&self, other: &Span) -> bool {
        self.from < other.to && other.from < self.to
    }
}

/// What one run did, as the evidence shows it.
#[derive(Debug, Clone)]
pub struct Activity {
    /// How the run is named in a verdict, e.g. "round 3 host h2".
    pub run: String,
    /// The instants of its lines that say it acted against the report server.
    pub actions: Vec<SystemTime>,
    /// When the harness had it stopped (SIGSTOP to SIGCONT): a stopped process does not act.
    pub stopped: Vec<Span>,
}

impl Activity {
    /// Its collection intervals: from the first action to the last, cut where it was stopped.
    /// A single action is an interval of one instant.
    pub fn intervals(&self) -> Vec<Span> {
        let mut actions = self.actions.clone();
        actions.sort();
        let mut out: Vec<Span> = Vec::new();
        let mut current: Option<Span> = None;
        for at in actions {
            if let Some(span) = current.as_mut() {
                let stopped_between = self
                    .stopped
                    .iter()
                    .any(|s| s.from >= span.to && s.from <= at);
                if !stopped_between {
                    span.to = at;
                    continue;
                }
                out.push(*span);
            }
            current = Some(Span { from: at, to: at });
        }
        out.extend(current);
        out
    }

    pub fn first_action(&self) -> Option<SystemTime> {
        self.actions.iter().min().copied()
    }
}

/// Two runs collecting at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub a: String,
    pub a_span: Span,
    pub b: String,
    pub b_span: Span,
}

/// Every pair of intervals of different runs that overlap.
pub fn overlaps(runs: &[Activity]) -> Vec<Overlap> {
    let spans: Vec<(usize, Span)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, run)| run.intervals().into_iter().map(move |s| (i, s)))
        .collect();
    let mut out = Vec::new();
    for (n, (i, a)) in spans.iter().enumerate() {
        for (j, b) in &spans[n + 1..] {
            if i != j && a.overlaps(b) {
                out.push(Overlap {
                    a: runs[*i].run.clone(),
                    a_span: *a,
                    b: runs[*j].run.clone(),
                    b_span: *b,
                });
            }
        }
    }
    out
}

/// What became of the slot after a fault hit its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOver {
    /// The holder collected the slot itself (the fault only delayed it).
    ByHolder,
    /// Another run took the lock `after` the fault; `collected` says whether it collected
    /// the slot or found it claimed by the faulted holder and skipped it.
    By {
        run: String,
        after: Duration,
        collected: bool,
    },
    /// The lock never moved on and the slot was not collected.
    Nobody,
}

/// One run's part in a take-over.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub run: String,
    /// When its lines first show it holding the lock: its first action against the report
    /// server, or its skip of a slot already claimed (checked once the lock is held).
    pub took_lock: Option<SystemTime>,
    pub collected: bool,
}

/// Judges the take-over after a fault at `fault_at` on `holder`. A holder that collected in
/// the end kept its slot, whatever others did (two collections are reported on their own).
pub fn take_over(fault_at: SystemTime, holder: &RunFacts, others: &[RunFacts]) -> TakeOver {
    if holder.collected {
        return TakeOver::ByHolder;
    }
    others
        .iter()
        .filter_map(|r| {
            let first = r.took_lock?;
            let after = first.duration_since(fault_at).ok()?;
            Some((after, r))
        })
        .min_by_key(|(after, _)| *after)
        .map_or(TakeOver::Nobody, |(after, r)| TakeOver::By {
            run: r.run.clone(),
            after,
            collected: r.collected,
        })
}

/// The worst and the median of the take-over times (the lower middle of an even count).
pub fn worst_and_median(times: &[Duration]) -> Option<(Duration, Duration)> {
    let mut sorted = times.to_vec();
    sorted.sort();
    let worst = *sorted.last()?;
    Some((worst, sorted[(sorted.len() - 1) / 2]))
}

/// The ticket in a report file's name (`<16-character UTC stamp>_<ticket>.csv`); `None` for
/// any other file (a temporary file of a write under way starts with a dot).
pub fn ticket_of_report(name: &str) -> Option<&str> {
    if name.starts_with('.') || name.len() <= 21 || !name.is_char_boundary(17) {
        return None;
    }
    let (stamp, rest) = name.split_at(17);
    if !stamp.ends_with("Z_") {
        return None;
    }
    rest.strip_suffix(".csv").filter(|t| !t.is_empty())
}

/// The tickets saved on more than one host, or more than once on one host, with where.
pub fn tickets_saved_twice(files: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut by_ticket: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (host, name) in files {
        if let Some(ticket) = ticket_of_report(name) {
            by_ticket
                .entry(ticket)
                .or_default()
                .push(format!("{host}:{name}"));
        }
    }
    by_ticket
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(t, at)| (t.to_owned(), at))
        .collect()
}

/// The slot-claim table of the PostgreSQL backend, as the database snapshot names it.
pub const SLOT_TABLE: &str = "public.report_collector_slot";

/// What the database says of one slot, against the hosts whose runs said they collected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbSlot {
    /// No slot table (another backend, or one that names it otherwise): nothing to compare.
    NoTable,
    Agrees,
    Disagrees(String),
}

/// Compares the rows of the slot table for `slot` (as PostgreSQL writes a `timestamptz` in
/// UTC: `2026-12-02T06:57:30+00:00`) with the hosts that collected it by their own lines: at
/// most one row, marked collected exactly when one host collected, by that host.
pub fn db_slot(db: &serde_json::Value, slot: &str, collected_by: &[String]) -> DbSlot {
    let Some(rows) = db.get(SLOT_TABLE).and_then(|t| t.as_array()) else {
        return DbSlot::NoTable;
    };
    let rows: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r.get("slot").and_then(|s| s.as_str()) == Some(slot))
        .collect();
    let text =
        |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let collected: Vec<(Option<String>, Option<String>)> = rows
        .iter()
        .filter(|r| !r.get("collected_at").is_none_or(|v| v.is_null()))
        .map(|r| (text(r, "host"), text(r, "collected_at")))
        .collect();
    let shown = || serde_json::to_string(&rows).unwrap_or_default();
    match (collected.as_slice(), collected_by) {
        _ if rows.len() > 1 => {
            DbSlot::Disagrees(format!("{} rows claim it: {}", rows.len(), shown()))
        }
        ([], []) => DbSlot::Agrees,
        ([(host, _)], [by]) if host.as_deref() == Some(by.as_str()) => DbSlot::Agrees,
        _ => DbSlot::Disagrees(format!(
            "the runs' lines say collected by {collected_by:?}, the slot table says {}",
            shown()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn run(name: &str, actions: &[u64], stopped: &[(u64, u64)]) -> Activity {
        Activity {
            run: name.into(),
            actions: actions.iter().map(|&ms| t(ms)).collect(),
            stopped: stopped
                .iter()
                .map(|&(a, b)| Span {
                    from: t(a),
                    to: t(b),
                })
                .collect(),
        }
    }

    #[test]
    fn runs_one_after_the_other_do_not_overlap() {
        let runs = [
            run("a", &[1000, 1200, 1400], &[]),
            run("b", &[1500, 1700], &[]),
            run("c", &[], &[]),
        ];
        assert!(overlaps(&runs).is_empty());
    }

    #[test]
    fn a_single_action_inside_another_run_is_an_overlap() {
        let runs = [run("a", &[1000, 2000], &[]), run("b", &[1500], &[])];
        let found = overlaps(&runs);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].a, "a");
        assert_eq!(found[0].b_span.from, t(1500));
    }

    #[test]
    fn a_stopped_run_is_not_acting_while_stopped() {
        // a is stopped from 1300 to 5000; b collects from 3500 to 4500 in between.
        let a = run("a", &[1000, 1200, 5100, 5300], &[(1300, 5000)]);
        assert_eq!(
            a.intervals(),
            vec![
                Span {
                    from: t(1000),
                    to: t(1200)
                },
                Span {
                    from: t(5100),
                    to: t(5300)
                }
            ]
        );
        let b = run("b", &[3500, 4500], &[]);
        assert!(overlaps(&[a.clone(), b]).is_empty());
        // But a polling again after SIGCONT while b still collects is an overlap.
        let b = run("b", &[3500, 5200], &[]);
        let found = overlaps(&[a, b]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].a_span.from, t(5100));
    }

    #[test]
    fn intervals_of_the_same_run_never_overlap_each_other() {
        let a = run("a", &[1000, 1200, 5100], &[(1300, 5000)]);
        assert!(overlaps(&[a]).is_empty());
    }

    fn facts(name: &str, first: Option<u64>, collected: bool) -> RunFacts {
        RunFacts {
            run: name.into(),
            took_lock: first.map(t),
            collected,
        }
    }

    #[test]
    fn take_over_is_the_next_run_to_act_after_the_fault() {
        let holder = facts("h1", Some(1000), false);
        let others = [
            facts("h2", Some(4200), true),
            facts("h3", None, false),
            facts("h0", Some(500), false),
        ];
        assert_eq!(
            take_over(t(1500), &holder, &others),
            TakeOver::By {
                run: "h2".into(),
                after: Duration::from_millis(2700),
                collected: true,
            }
        );
    }

    #[test]
    fn a_holder_that_collected_kept_its_slot() {
        let holder = facts("h1", Some(1000), true);
        assert_eq!(take_over(t(1500), &holder, &[]), TakeOver::ByHolder);
        let holder = facts("h1", Some(1000), false);
        assert_eq!(
            take_over(t(1500), &holder, &[facts("h2", None, false)]),
            TakeOver::Nobody
        );
        // A host that took the lock and skipped the slot the holder had claimed.
        assert_eq!(
            take_over(t(1500), &holder, &[facts("h2", Some(3600), false)]),
            TakeOver::By {
                run: "h2".into(),
                after: Duration::from_millis(2100),
                collected: false,
            }
        );
    }

    #[test]
    fn worst_and_median_of_take_overs() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(worst_and_median(&[]), None);
        assert_eq!(
            worst_and_median(&ms(&[300, 100, 200])),
            Some((Duration::from_millis(300), Duration::from_millis(200)))
        );
        assert_eq!(
            worst_and_median(&ms(&[400, 100, 300, 200])),
            Some((Duration::from_millis(400), Duration::from_millis(200)))
        );
    }

    #[test]
    fn tickets_come_from_report_names() {
        assert_eq!(
            ticket_of_report("20240101T120000Z_abc_0.csv"),
            Some("abc_0")
        );
        assert_eq!(ticket_of_report(".20240101T120000Z_abc_0.csv.x.tmp"), None);
        assert_eq!(ticket_of_report("notes.csv"), None);
        assert_eq!(ticket_of_report("last-run.json.order"), None);
    }

    #[test]
    fn a_ticket_on_two_hosts_is_saved_twice() {
        let files = [
            ("h1".to_owned(), "20240101T120000Z_abc_0.csv".to_owned()),
            ("h2".to_owned(), "20240101T120000Z_abc_0.csv".to_owned()),
            ("h2".to_owned(), "20240101T120010Z_def_0.csv".to_owned()),
        ];
        let twice = tickets_saved_twice(&files);
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].0, "abc_0");
        assert_eq!(twice[0].1.len(), 2);
    }

    #[test]
    fn the_slot_table_must_name_the_host_that_collected() {
        let slot = "2026-12-02T06:57:30+00:00";
        let db = serde_json::json!({
            "public.report_collector_slot": [
                {"slot": slot, "host": "h2", "collected_at": "2026-12-02T06:57:32+00:00"},
                {"slot": "2026-12-02T06:57:40+00:00", "host": "h1", "collected_at": null},
            ]
        });
        assert_eq!(db_slot(&db, slot, &["h2".into()]), DbSlot::Agrees);
        assert!(matches!(
            db_slot(&db, slot, &["h1".into()]),
            DbSlot::Disagrees(_)
        ));
        assert!(matches!(db_slot(&db, slot, &[]), DbSlot::Disagrees(_)));
        assert!(matches!(
            db_slot(&db, slot, &["h1".into(), "h2".into()]),
            DbSlot::Disagrees(_)
        ));
        // Claimed, never collected, and no run says it collected: they agree.
        assert_eq!(
            db_slot(&db, "2026-12-02T06:57:40+00:00", &[]),
            DbSlot::Agrees
        );
        assert_eq!(db_slot(&serde_json::json!({}), slot, &[]), DbSlot::NoTable);
    }
}
