//! The reports on disk: their names, how one is received and saved, and which are kept.
//!
//! Reports: each saved atomically (see [`crate::files`]: temp file in the same directory,
//! fsync, rename, fsync of the directory) as `<UTC time of the ticket's request>_<ticket>.csv`,
//! so a ticket saved again lands on its own name. A report is written into its temp file, a
//! [`Spool`], as it streams in from the server, so a run never holds it in memory whole; only
//! once it is whole and checked, and the run may save it, is it renamed into place. A write
//! that fails (disk full, unwritable directory), a report refused and a run cancelled leave
//! nothing behind: the temp file is removed, and no reader ever sees a half-written report
//! under its final name. A temp file a killed run left is removed by the next run's [`prune`].
//!
//! Retention keeps the `keep-reports` most recently *collected* reports, whatever their names
//! or mtimes say (both come from the clock, and a clock moved back makes a new report look
//! old). The collector records the order it saved reports in, in `<state-file>.order` (one
//! name per line, oldest first, rewritten atomically under an flock on the report directory),
//! and prunes by that order: reports it has no record of (saved before this
//! record existed, or put there by hand) count as older than every recorded one and are
//! ordered among themselves by name. Two reports are never deleted, whatever the order says:
//! the one just saved and the one the state file names as the last collection.

use std::fs::File;
use std::io::{self, Seek as _, Write};
use std::path::{Path, PathBuf};

use report_common::ticket::Ticket;

use crate::files::{
    Durability, TEMP_SUFFIX, lock_briefly, locked_temp, open_dir, put_in_place, read_existing,
    refuse_unless_regular, remove_abandoned_temps, write_atomically,
};
use crate::time::Timestamp;

/// What collectors before 0.1.1 named a report's temp file; still cleaned up.
const OLD_TEMP_PREFIX: &str = ".report-";
const OLD_TEMP_SUFFIX: &str = ".csv.tmp";
/// The record of the order reports were collected in, beside the state file (see the module
/// doc).
pub fn order_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".order");
    PathBuf::from(name)
}

/// Why a report could not be saved; the message says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the report directory {dir}: {source}; fix report-dir or its permissions"
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write the report into {dir}: {source}; nothing was saved (check free space and permissions)"
    )]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `20240101T120000Z_<ticket>.csv`: names sort by time (by the clock's word for it).
pub fn file_name(at: Timestamp, ticket: &Ticket) -> String {
    // Written clamped to 1970..=9999: a clock outside it never panics a save.
    let stamp: String = at
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{stamp}_{ticket}.csv")
}

/// Whether `name` is a report this collector saved (so retention never touches other files):
/// the time stamp, `_`, a name that passes the ticket check, `.csv`. Names read back from the
/// order file are held to it too, so a line there is never more than one such file name.
pub fn is_report_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() > 18
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'_'
        && name[17..]
            .strip_suffix(".csv")
            .is_some_and(report_common::ticket::is_safe)
}

/// A report being received: written, as it streams in, into a new temp file in the report
/// directory (hidden, never taken for a report, share-locked while open: see the module doc),
/// and put under its final name by [`save`]. Dropped unsaved (a body refused, a run cancelled),
/// it removes its temp file; one a killed run left is removed by the next run's [`prune`].
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl Spool {
    /// A new, empty spool for the report of `ticket` in `dir`, which is created if needed.
    pub fn create(dir: &Path, ticket: &Ticket) -> Result<Spool, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        // Named as the temp file of a report saved now, so a run that finds it abandoned knows
        // it for one; `save` names the report by its ticket's request instead.
        let prefix = format!(".{}.", file_name(Timestamp::now(), ticket));
        let temp = locked_temp(dir, &prefix).map_err(|source| StoreError::Write {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Spool {
            dir: dir.to_owned(),
            temp,
        })
    }

    /// Appends `bytes`, the next piece of the report.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.temp
            .write_all(bytes)
            .map_err(|source| StoreError::Write {
                dir: self.dir.clone(),
                source,
            })
    }

    /// Copies the report from its start to `out`, a piece at a time.
    pub fn copy_to(&mut self, out: &mut impl Write) -> io::Result<u64> {
        let file = self.temp.as_file_mut();
        file.rewind()?;
        io::copy(file, out)
    }
}

#[cfg(test)]
impl Spool {
    /// A spool holding `bytes`, as the client leaves a report it received.
    pub(crate) fn holding(dir: &Path, ticket: &Ticket, bytes: &[u8]) -> Result<Spool, StoreError> {
        let mut spool = Spool::create(dir, ticket)?;
        spool.write(bytes)?;
        Ok(spool)
    }

    /// What was written.
    pub(crate) fn read_back(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.copy_to(&mut bytes).unwrap();
        bytes
    }
}

/// Saves the report in `report` under `dir` (the directory it was spooled in) and records it
/// as the newest collection; returns the final path. `order` is the record of the order of
/// collections ([`order_path`]).
pub fn save(
    dir: &Path,
    order: &Path,
    at: Timestamp,
    ticket: &Ticket,
    report: Spool,
) -> Result<PathBuf, StoreError> {
    let name = file_name(at, ticket);
    let target = dir.join(&name);
    refuse_unless_regular(&target)
        .and_then(|()| put_in_place(report.temp, &target, Durability::Synced))
        .map_err(|source| StoreError::Write {
            dir: dir.to_owned(),
            source,
        })?;
    // The report is saved either way; without its place in the order, retention falls back
    // to its name for it.
    if let Err(e) = note_collected(dir, order, &name) {
        tracing::warn!(
            "cannot record the order of collections in {}: {e}; retention orders this report by its name",
            order.display()
        );
    }
    Ok(target)
}

/// Whether `name` is the temp file of a report write that never finished.
fn is_report_temp(name: &str) -> bool {
    let current = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(report, _random)| is_report_name(report));
    current || (name.starts_with(OLD_TEMP_PREFIX) && name.ends_with(OLD_TEMP_SUFFIX))
}

/// The recorded order of collections, oldest first (unreadable or absent: none).
fn read_order(order: &Path) -> Vec<String> {
    let bytes = read_existing(order).ok().flatten().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|n| is_report_name(n))
        .map(str::to_owned)
        .collect()
}

fn write_order(order: &Path, names: &[String]) -> io::Result<()> {
    let text: String = names.iter().map(|n| format!("{n}\n")).collect();
    write_atomically(order, text.as_bytes(), Durability::Renamed)
}

/// An exclusive flock on the directory itself, serialising the order file's updates.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = open_dir(dir)?;
    lock_briefly(&file, dir)?;
    Ok(file)
}

/// Puts `name` at the end of the order of collections.
fn note_collected(dir: &Path, order: &Path, name: &str) -> io::Result<()> {
    let _lock = lock_dir(dir)?;
    let mut names = read_order(order);
    names.retain(|n| n != name);
    names.push(name.to_owned());
    write_order(order, &names)
}

/// `names` (sorted by name) in the order they were collected, oldest first: those without a
/// record first, by name, then the recorded ones in their recorded order.
fn by_collection(names: Vec<String>, order: &[String]) -> Vec<String> {
    let rank: std::collections::HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut names = names;
    // Stable: the unrecorded keep their order by name.
    names.sort_by_key(|n| rank.get(n.as_str()).map(|&i| i + 1).unwrap_or(0));
    names
}

/// The saved report of `ticket` in `dir`, if there is one: how a run that resumes a ticket
/// finds that the run before it saved the report and was ended before it could say so.
pub fn find_ticket(dir: &Path, ticket: &Ticket) -> io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let suffix = format!("_{ticket}.csv");
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // The ticket follows the 16-character time stamp and its `_`.
        if is_report_name(name)
            && name.len() == 16 + suffix.len()
            && name.ends_with(&suffix)
            && entry.file_type()?.is_file()
        {
            return Ok(Some(dir.join(name)));
        }
    }
    Ok(None)
}

/// Names of the saved reports in `dir`, oldest collection first (see the module doc); an
/// absent directory has none. `order` is the record of the order of collections.
pub fn list(dir: &Path, order: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str().filter(|n| is_report_name(n)) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(by_collection(names, &read_order(order)))
}

/// Deletes all but the `keep` most recently collected reports, never one of `protect` (the
/// report just saved, the state file's last collection), and the temp files of killed runs.
/// Returns what it deleted.
pub fn prune(dir: &Path, order: &Path, keep: usize, protect: &[&Path]) -> io::Result<Vec<PathBuf>> {
    let _lock = match lock_dir(dir) {
        Ok(lock) => lock,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let recorded = read_order(order);
    let names = list(dir, order)?;
    let protected = |name: &str| {
        protect
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == name))
    };
    let mut excess = names.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for name in &names {
        if excess == 0 {
            break;
        }
        if protected(name) {
            continue;
        }
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Another run pruned it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        excess -= 1;
    }
    let kept: Vec<String> = recorded
        .iter()
        .filter(|n| dir.join(n).exists())
        .cloned()
        .collect();
    if kept != recorded {
        write_order(order, &kept)?;
    }
    removed.extend(remove_abandoned_temps(dir, is_report_temp));
    Ok(removed)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::open_lock_file;
    use crate::files::tests::all_files;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    fn at(secs: u64) -> Timestamp {
        Timestamp::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Saves `bytes` as a run saves a report it received: spooled, then saved.
    fn save_bytes(
        dir: &Path,
        order: &Path,
        at: Timestamp,
        ticket: &Ticket,
        bytes: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let report = Spool::holding(dir, ticket, bytes)?;
        save(dir, order, at, ticket, report)
    }

    #[test]
    fn file_names_carry_utc_time_and_ticket() {
        let name = file_name(at(1_704_110_400), &crate::t("abc_0"));
        assert_eq!(name, "20240101T120000Z_abc_0.csv");
        assert!(is_report_name(&name));
        assert!(!is_report_name("notes.csv"));
        assert!(!is_report_name(".report-x.csv.tmp"));
        assert!(!is_report_name(".20240101T120000Z_abc_0.csv.a1B2c3.tmp"));
    }

    #[test]
    fn temp_files_of_unfinished_writes_are_recognised() {
        assert!(is_report_temp(".20240101T120000Z_abc_0.csv.a1B2c3.tmp"));
        assert!(is_report_temp(".report-a1B2c3.csv.tmp"));
        assert!(!is_report_temp(".last-run.json.a1B2c3.tmp"));
        assert!(!is_report_temp("20240101T120000Z_abc_0.csv"));
    }

    #[test]
    fn temp_files_of_killed_writes_are_pruned_and_ones_being_written_kept() {
        let dir = tempfile::tempdir().unwrap();
        let killed = dir.path().join(".20240101T120000Z_abc_0.csv.a1B2c3.tmp");
        let old_style = dir.path().join(".report-a1B2c3.csv.tmp");
        std::fs::write(&killed, "x").unwrap();
        std::fs::write(&old_style, "x").unwrap();
        // A write in progress holds its temp file share-locked, whatever its age.
        let writing = locked_temp(dir.path(), ".20240101T120100Z_abc_1.csv.").unwrap();
        let mut removed = prune(dir.path(), &dir.path().join("o"), 10, &[]).unwrap();
        removed.sort();
        assert_eq!(removed, [killed.clone(), old_style.clone()]);
        assert!(
            writing.path().exists(),
            "a write in progress is never touched"
        );
        drop(writing);
    }

    #[test]
    fn a_symlinked_directory_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("other-disk");
        std::fs::create_dir(&real).unwrap();
        let linked = dir.path().join("reports");
        std::os::unix::fs::symlink(&real, &linked).unwrap();
        let path = save_bytes(
            &linked,
            &dir.path().join("o"),
            at(1_704_110_400),
            &crate::t("abc_0"),
            b"x",
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        assert!(real.join("20240101T120000Z_abc_0.csv").is_file());
        open_lock_file(&linked.join("collector.lock")).unwrap();
        assert!(real.join("collector.lock").is_file());
    }

    #[test]
    fn save_writes_the_whole_report_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        let path = save_bytes(
            &reports,
            &dir.path().join("o"),
            at(1_704_110_400),
            &crate::t("abc_0"),
            b"timestamp,data\n",
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"timestamp,data\n");
        assert_eq!(all_files(&reports), ["20240101T120000Z_abc_0.csv"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("o")).unwrap(),
            "20240101T120000Z_abc_0.csv\n"
        );
    }

    #[test]
    fn a_report_is_spooled_hidden_and_a_spool_dropped_unsaved_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let order = dir.path().join("o");
        let mut report = Spool::create(dir.path(), &crate::t("abc_0")).unwrap();
        report.write(b"timestamp,data\n").unwrap();
        report.write(b"0,data-0\n").unwrap();
        let names = all_files(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(is_report_temp(&names[0]), "{names:?}");
        assert!(
            list(dir.path(), &order).unwrap().is_empty(),
            "never a report"
        );
        // Being written: another run's pruning leaves it alone.
        assert!(prune(dir.path(), &order, 1, &[]).unwrap().is_empty());
        let mut echoed = Vec::new();
        report.copy_to(&mut echoed).unwrap();
        assert_eq!(echoed, b"timestamp,data\n0,data-0\n");
        drop(report);
        assert!(all_files(dir.path()).is_empty());

        let report = Spool::holding(dir.path(), &crate::t("abc_0"), b"timestamp,data\n").unwrap();
        let path = save(
            dir.path(),
            &order,
            at(1_704_110_400),
            &crate::t("abc_0"),
            report,
        )
        .unwrap();
        assert_eq!(all_files(dir.path()), ["20240101T120000Z_abc_0.csv", "o"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_failed_save_leaves_nothing_partial() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the final name is refused before anything is written.
        let blocker = dir
            .path()
            .join(file_name(at(1_704_110_400), &crate::t("abc_0")));
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), "x").unwrap();
        let err = save_bytes(
            dir.path(),
            &dir.path().join("o"),
            at(1_704_110_400),
            &crate::t("abc_0"),
            b"timestamp,data\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("nothing was saved"), "{err}");
        assert_eq!(all_files(dir.path()), ["20240101T120000Z_abc_0.csv"]);
        assert!(blocker.is_dir());
    }

    #[test]
    fn an_unusable_report_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "").unwrap();
        let err = save_bytes(
            &file.join("reports"),
            &dir.path().join("o"),
            at(0),
            &crate::t("a_0"),
            b"x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("report-dir"), "{err}");
    }

    #[test]
    fn retention_keeps_the_newest_reports_only() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            save_bytes(
                dir.path(),
                &dir.path().join("o"),
                at(1_704_110_400 + i * 60),
                &crate::t(&format!("t{i}_0")),
                b"x",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("README"), "not a report").unwrap();
        let removed = prune(dir.path(), &dir.path().join("o"), 2, &[]).unwrap();
        assert_eq!(removed.len(), 3);
        assert_eq!(
            list(dir.path(), &dir.path().join("o")).unwrap(),
            ["20240101T120300Z_t3_0.csv", "20240101T120400Z_t4_0.csv"]
        );
        assert!(dir.path().join("README").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("o")).unwrap(),
            "20240101T120300Z_t3_0.csv\n20240101T120400Z_t4_0.csv\n",
            "the record of the order lists only what is kept"
        );
    }

    fn set_mtime(path: &Path, to: Timestamp) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(to.system_time())
            .unwrap();
    }

    #[test]
    fn after_the_clock_moved_back_retention_keeps_what_was_collected_last() {
        let dir = tempfile::tempdir().unwrap();
        let order = dir.path().join("o");
        // Collected while the clock was a year ahead: names and mtimes in the future.
        let future = Timestamp::now() + Duration::from_secs(365 * 24 * 3600);
        for i in 0..3 {
            let when = future + Duration::from_secs(i * 60);
            let path = save_bytes(
                dir.path(),
                &order,
                when,
                &crate::t(&format!("f{i}_0")),
                b"x",
            )
            .unwrap();
            set_mtime(&path, when);
        }
        // The clock is put right; two more collections, their names older than all the rest.
        let mut newest = Vec::new();
        for i in 0..2 {
            let path = save_bytes(
                dir.path(),
                &order,
                at(1_704_110_400 + i * 60),
                &crate::t(&format!("n{i}_0")),
                b"x",
            )
            .unwrap();
            newest.push(path.file_name().unwrap().to_str().unwrap().to_owned());
            let removed = prune(dir.path(), &dir.path().join("o"), 2, &[&path]).unwrap();
            assert!(!removed.contains(&path), "the report just saved is kept");
        }
        assert_eq!(list(dir.path(), &dir.path().join("o")).unwrap(), newest);
    }

    #[test]
    fn reports_without_a_record_count_as_older_and_protected_ones_are_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        // Saved by a collector that kept no record of the order (names in the future).
        for name in ["29990101T000000Z_old1_0.csv", "29990101T000100Z_old2_0.csv"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let recorded = save_bytes(
            dir.path(),
            &dir.path().join("o"),
            at(1_704_110_400),
            &crate::t("new_0"),
            b"x",
        )
        .unwrap();
        let last_collection = dir.path().join("29990101T000000Z_old1_0.csv");
        let removed = prune(
            dir.path(),
            &dir.path().join("o"),
            2,
            &[&recorded, &last_collection],
        )
        .unwrap();
        assert_eq!(removed, [dir.path().join("29990101T000100Z_old2_0.csv")]);
        assert_eq!(
            list(dir.path(), &dir.path().join("o")).unwrap(),
            ["29990101T000000Z_old1_0.csv", "20240101T120000Z_new_0.csv"]
        );
        // Even with keep 1, neither protected report goes.
        assert!(
            prune(
                dir.path(),
                &dir.path().join("o"),
                1,
                &[&recorded, &last_collection]
            )
            .unwrap()
            .is_empty()
        );
    }
}
