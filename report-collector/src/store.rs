//! Files on disk. Reports: each saved atomically (temp file in the same directory, fsync,
//! rename, fsync of the directory) as `<UTC timestamp>_<ticket>.csv`, the newest
//! `keep-reports` kept. The state and metrics files go through the same atomic write, without
//! the fsyncs. A write that fails (disk full, unwritable directory) leaves nothing behind: the
//! temp file is removed, and no reader ever sees a half-written file under its final name.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Temp files are `.<final name>.<random>.tmp`, hidden and never taken for a report.
const TEMP_SUFFIX: &str = ".tmp";
/// What collectors before 0.1.1 named a report's temp file; still cleaned up.
const OLD_TEMP_PREFIX: &str = ".report-";
const OLD_TEMP_SUFFIX: &str = ".csv.tmp";

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

/// `20240101T120000Z_<ticket>.csv`: names sort by time.
pub fn file_name(at: SystemTime, ticket: &str) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{stamp}_{ticket}.csv")
}

/// Whether `name` is a report this collector saved (so retention never touches other files).
pub fn is_report_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() > 18
        && name.ends_with(".csv")
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'_'
}

/// Saves `csv` under `dir`; returns the final path.
pub fn save(dir: &Path, at: SystemTime, ticket: &str, csv: &[u8]) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    let target = dir.join(file_name(at, ticket));
    write_atomically(&target, csv, Durability::Synced).map_err(|source| StoreError::Write {
        dir: dir.to_owned(),
        source,
    })?;
    Ok(target)
}

/// How much an atomic write does to survive a crash of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The file and its directory are fsynced before the write counts as done: a report.
    Synced,
    /// Rename only: files rewritten every run (state, metrics), where losing the newest
    /// version to a crash costs nothing.
    Renamed,
}

/// Replaces `target` with `bytes` through a temp file in the same directory and a rename, so
/// readers see the old or the new file, never a mix; the directory is created if needed.
pub fn write_atomically(target: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    // Dropped on any error before `persist`, which deletes the temp file.
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    if durability == Durability::Synced {
        temp.as_file().sync_all()?;
    }
    temp.persist(target).map_err(|e| e.error)?;
    if durability == Durability::Synced {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Opens `path` for reading and writing, creating it (and its directory) if needed and never
/// truncating it: a file whose inode is a lock must stay the same file for every process.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
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

/// Names of the saved reports in `dir`, oldest first; an absent directory has none.
pub fn list(dir: &Path) -> io::Result<Vec<String>> {
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
    Ok(names)
}

/// Deletes all but the newest `keep` reports, and temp files a killed run left (older than a
/// day, so a concurrent `allow` run's file in progress is never touched). Returns what it
/// deleted.
pub fn prune(dir: &Path, keep: usize) -> io::Result<Vec<PathBuf>> {
    let names = list(dir)?;
    let mut removed = Vec::new();
    for name in names.iter().take(names.len().saturating_sub(keep)) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Another run pruned it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_report_temp(name) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < day_ago);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn all_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn file_names_carry_utc_time_and_ticket() {
        let name = file_name(at(1_704_110_400), "abc_0");
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
    fn old_temp_files_are_pruned_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".20240101T120000Z_abc_0.csv.a1B2c3.tmp");
        let fresh = dir.path().join(".20240101T120100Z_abc_1.csv.d4E5f6.tmp");
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&fresh, "x").unwrap();
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        assert_eq!(prune(dir.path(), 10).unwrap(), std::slice::from_ref(&old));
        assert!(!old.exists());
        assert!(fresh.exists(), "a write in progress is never touched");
    }

    #[test]
    fn save_writes_the_whole_report_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        let path = save(&reports, at(1_704_110_400), "abc_0", b"timestamp,data\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"timestamp,data\n");
        assert_eq!(all_files(&reports), ["20240101T120000Z_abc_0.csv"]);
    }

    #[test]
    fn a_failed_save_leaves_nothing_partial() {
        let dir = tempfile::tempdir().unwrap();
        // The rename cannot replace a non-empty directory: the write fails at the last step.
        let blocker = dir.path().join(file_name(at(1_704_110_400), "abc_0"));
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), "x").unwrap();
        let err = save(dir.path(), at(1_704_110_400), "abc_0", b"timestamp,data\n").unwrap_err();
        assert!(err.to_string().contains("nothing was saved"), "{err}");
        assert_eq!(all_files(dir.path()), ["20240101T120000Z_abc_0.csv"]);
        assert!(blocker.is_dir());
    }

    #[test]
    fn an_unusable_report_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "").unwrap();
        let err = save(&file.join("reports"), at(0), "a_0", b"x").unwrap_err();
        assert!(err.to_string().contains("report-dir"), "{err}");
    }

    #[test]
    fn retention_keeps_the_newest_reports_only() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            save(
                dir.path(),
                at(1_704_110_400 + i * 60),
                &format!("t{i}_0"),
                b"x",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("README"), "not a report").unwrap();
        let removed = prune(dir.path(), 2).unwrap();
        assert_eq!(removed.len(), 3);
        assert_eq!(
            list(dir.path()).unwrap(),
            ["20240101T120300Z_t3_0.csv", "20240101T120400Z_t4_0.csv"]
        );
        assert!(dir.path().join("README").exists());
    }
}
