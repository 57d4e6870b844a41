//! How the collector opens, writes and briefly locks the files it keeps: a leaf under the
//! lock, the state, the metrics and the reports, with nothing of theirs in it.
//!
//! A hostile or careless file system: every file the collector opens is opened with
//! `O_NOFOLLOW` (a symbolic link in place of the lock file must not get its target truncated)
//! and `O_NONBLOCK` (a FIFO must not hang a run), then checked with fstat and refused unless it
//! is a regular file, with a message that names the path and what it is. Only the final
//! component is not followed: a report directory or state directory the operator chose to
//! symlink elsewhere keeps working.
//!
//! Atomic writes: a temp file in the same directory, written in full, then renamed onto the
//! final name (with fsyncs of the file and the directory when [`Durability::Synced`]), so no
//! reader ever sees a half-written file under its final name and a write that fails leaves
//! nothing behind. Temp files are created with `O_EXCL` (by `tempfile`), so a link planted at a
//! temp name cannot redirect a write, and the rename onto the final name replaces whatever is
//! there (a link included) without writing through it. A writer holds a shared flock on its
//! temp file until the rename, so the next run tells the temp file of a killed run (unlocked:
//! removed at once) from one still being written.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use report_common::files::file_kind;

/// Temp files are `.<final name>.<random>.tmp`, hidden and never taken for a report.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// A path that is not a regular file where the collector expects one. Carried inside an
/// [`io::Error`] (see [`not_regular`]) so every caller's error path takes it as it is.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} is {kind}, not a regular file, and the collector writes only regular files: remove it, or set the configuration to a regular file's path",
    path.display()
)]
pub struct NotRegular {
    pub path: PathBuf,
    pub kind: &'static str,
}

/// The [`NotRegular`] in `e`, if that is what `e` is.
pub fn not_regular(e: &io::Error) -> Option<&NotRegular> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

fn refused(path: &Path, kind: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        NotRegular {
            path: path.to_owned(),
            kind,
        },
    )
}

/// Opens `path` as `options` say, but never through a final symbolic link and never blocking,
/// and only if it is a regular file (see the module doc). `O_NONBLOCK` is cleared again on the
/// descriptor returned.
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let opened = options
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // ELOOP: a final symlink under O_NOFOLLOW; ENXIO: a FIFO without a reader opened
        // write-only; EISDIR: a directory opened for writing. Say what is there instead.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::ELOOP | nix::libc::ENXIO | nix::libc::EISDIR)
            ) =>
        {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(m) if !m.is_file() => refused(path, file_kind(m.file_type())),
                _ => e,
            });
        }
        Err(e) => return Err(e),
    };
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(refused(path, file_kind(file_type)));
    }
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(file)
}

/// Opens an existing `path` for reading (see [`open_regular`]); `Ok(None)` when there is none.
pub fn open_to_read(path: &Path) -> io::Result<Option<File>> {
    match open_regular(path, File::options().read(true)) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The largest file [`read_existing`] reads: the collector's own small files (the state file,
/// the order of collections, the metrics file, a marker) are a few KiB.
pub const READ_EXISTING_MAX: u64 = 1 << 20;

/// An existing `path` (see [`open_regular`]); `Ok(None)` when there is none. A file larger
/// than [`READ_EXISTING_MAX`] is an `InvalidData` error that says so: another process wrote
/// it, and it is never read into memory whole.
pub fn read_existing(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let Some(file) = open_to_read(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    // One byte over the bound tells a file too large from one that fills it.
    file.take(READ_EXISTING_MAX + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > READ_EXISTING_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than 1 MiB, which no file the collector writes there is: remove it",
                path.display()
            ),
        ));
    }
    Ok(Some(bytes))
}

/// The start of `file`, at most `limit` bytes and one more (which tells a file longer than
/// the bound from one that fills it), by positioned reads: the descriptor's offset is left
/// alone, so the same descriptor can be read again.
pub fn read_start(file: &File, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; limit + 1];
    let mut held = 0;
    while held < buf.len() {
        match file.read_at(&mut buf[held..], u64::try_from(held).unwrap_or(u64::MAX))? {
            0 => break,
            n => held += n,
        }
    }
    buf.truncate(held);
    Ok(buf)
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

fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `target` with `bytes` through a temp file in the same directory and a rename, so
/// readers see the old or the new file, never a mix; the directory is created if needed. A
/// final name that is not a regular file is refused (see [`NotRegular`]); temp files of the
/// same target that a killed run left are removed first.
pub fn write_atomically(target: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let dir = parent_dir(target);
    std::fs::create_dir_all(dir)?;
    refuse_unless_regular(target)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let prefix = format!(".{name}.");
    remove_abandoned_temps(dir, |n| n.starts_with(&prefix) && n.ends_with(TEMP_SUFFIX));
    // Dropped on any error before the rename, which deletes the temp file.
    let mut temp = locked_temp(dir, &prefix)?;
    temp.write_all(bytes)?;
    put_in_place(temp, target, durability)
}

/// Refuses a final name that is there and is not a regular file (see [`NotRegular`]).
pub(crate) fn refuse_unless_regular(target: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if !m.is_file() => Err(refused(target, file_kind(m.file_type()))),
        _ => Ok(()),
    }
}

/// The end of every atomic write: `temp`, written in full, becomes `target` (in the same
/// directory); dropped on any error before the rename, which deletes it.
pub(crate) fn put_in_place(
    temp: tempfile::NamedTempFile,
    target: &Path,
    durability: Durability,
) -> io::Result<()> {
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    if durability == Durability::Synced {
        temp.as_file().sync_all()?;
    }
    replace_by_rename(temp, target)?;
    if durability == Durability::Synced {
        open_dir(parent_dir(target))?.sync_all()?;
    }
    Ok(())
}

/// A new temp file (`O_EXCL`, a random name) in `dir`, share-locked for as long as it is open,
/// which tells a pruning run it is still being written.
pub(crate) fn locked_temp(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    for _ in 0..3 {
        let temp = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)?;
        temp.as_file().lock_shared()?;
        // A concurrent run may have taken it for abandoned between its creation and the lock.
        if names_file(temp.path(), temp.as_file()) {
            return Ok(temp);
        }
    }
    Err(io::Error::other(format!(
        "temp files in {} keep disappearing before they are written",
        dir.display()
    )))
}

/// Whether `path` (not followed) is the file open as `file`.
fn names_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(at_path), Ok(open)) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
        _ => false,
    }
}

/// rename(2): whatever is at `target`, a symbolic link included, is replaced, never written
/// through.
fn replace_by_rename(temp: tempfile::NamedTempFile, target: &Path) -> io::Result<()> {
    temp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

/// Removes the temp files in `dir` whose names `matches` says are temp files and that no
/// process is writing (unlocked: their writer was killed). Best effort; returns what it
/// removed.
pub(crate) fn remove_abandoned_temps(dir: &Path, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(&matches) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = open_regular(&path, File::options().read(true)) else {
            continue;
        };
        // Held while removing, so a writer that locks it now sees its name gone and starts over.
        if file.try_lock().is_ok()
            && names_file(&path, &file)
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
    }
    removed
}

/// Opens `path` for reading and writing, creating it (and its directory) if needed and never
/// truncating it: a file whose inode is a lock must stay the same file for every process. Not
/// through a symbolic link, and only a regular file (see [`open_regular`]).
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    open_regular(
        path,
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
}

/// How long a short critical section (the order file, the metrics file) waits for its flock.
/// Other runs hold it for a few file operations; a process holding it longer is not a
/// collector, and a run must not hang on it past its deadline.
pub const SHORT_LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// Takes an exclusive flock on `file` within [`SHORT_LOCK_PATIENCE`]; `what` names it in the
/// error.
pub fn lock_briefly(file: &File, what: &Path) -> io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if start.elapsed() >= SHORT_LOCK_PATIENCE {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} stayed locked by another process for {}; find it with `fuser -v {}`",
                            what.display(),
                            humantime::format_duration(SHORT_LOCK_PATIENCE),
                            what.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Waits until the directory entries of `path`'s directory are on disk (a file just created
/// there survives a crash of the machine).
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    open_dir(parent_dir(path))?.sync_all()
}

/// Opens a directory (through symbolic links: only files are held to [`open_regular`]);
/// `O_DIRECTORY` makes anything else, a FIFO included, fail at once instead of blocking.
pub(crate) fn open_dir(dir: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(dir)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The names in `dir`, sorted: what the file tests here and the report tests compare.
    pub(crate) fn all_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_larger_than_any_the_collector_writes_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-run.json");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(READ_EXISTING_MAX).unwrap();
        assert_eq!(
            read_existing(&path).unwrap().unwrap().len() as u64,
            READ_EXISTING_MAX
        );
        file.set_len(READ_EXISTING_MAX + 1).unwrap();
        let err = read_existing(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("remove it"), "{err}");
        let err = crate::state::State::load(&path).unwrap_err();
        assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    }

    #[test]
    fn a_state_or_metrics_write_removes_its_own_abandoned_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("last-run.json");
        let killed = dir.path().join(".last-run.json.a1B2c3.tmp");
        let other = dir.path().join(".other.json.a1B2c3.tmp");
        std::fs::write(&killed, "{\"half").unwrap();
        std::fs::write(&other, "x").unwrap();
        write_atomically(&target, b"{}", Durability::Renamed).unwrap();
        assert_eq!(
            all_files(dir.path()),
            [".other.json.a1B2c3.tmp", "last-run.json"]
        );
    }

    #[test]
    fn a_symlink_or_fifo_as_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let lock = dir.path().join("collector.lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let err = open_lock_file(&lock).unwrap_err();
        assert_eq!(not_regular(&err).unwrap().kind, "a symbolic link", "{err}");
        let message = err.to_string();
        assert!(message.contains(&lock.display().to_string()), "{message}");
        assert!(message.contains("remove it"), "{message}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        // A dangling link is not followed to create its target.
        let dangling = dir.path().join("dangling.lock");
        let nowhere = dir.path().join("nowhere");
        std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
        assert!(open_lock_file(&dangling).is_err());
        assert!(!nowhere.exists());

        // A FIFO (no reader, no writer) is refused at once; a blocking open would hang here.
        let fifo = dir.path().join("fifo.lock");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = open_lock_file(&fifo).unwrap_err();
        assert_eq!(not_regular(&err).unwrap().kind, "a FIFO", "{err}");
        let err = open_regular(&fifo, File::options().write(true)).unwrap_err();
        assert_eq!(not_regular(&err).unwrap().kind, "a FIFO", "{err}");
        let err = open_lock_file(dir.path()).unwrap_err();
        assert_eq!(not_regular(&err).unwrap().kind, "a directory", "{err}");
        let err = open_lock_file(Path::new("/dev/null")).unwrap_err();
        assert_eq!(not_regular(&err).unwrap().kind, "a device", "{err}");
    }

    #[test]
    fn an_opened_file_blocks_again_once_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = open_lock_file(&dir.path().join("collector.lock")).unwrap();
        let flags = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn a_final_name_that_is_a_symlink_is_refused_and_a_rename_never_writes_through_one() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let state = dir.path().join("last-run.json");
        std::os::unix::fs::symlink(&victim, &state).unwrap();
        let err = write_atomically(&state, b"{}", Durability::Renamed).unwrap_err();
        assert_eq!(not_regular(&err).unwrap().kind, "a symbolic link", "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&state).unwrap().is_symlink());

        // A link planted after that check: the rename replaces the link itself.
        let mut temp = locked_temp(dir.path(), ".last-run.json.").unwrap();
        temp.write_all(b"{}").unwrap();
        replace_by_rename(temp, &state).unwrap();
        assert!(std::fs::symlink_metadata(&state).unwrap().is_file());
        assert_eq!(std::fs::read(&state).unwrap(), b"{}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
