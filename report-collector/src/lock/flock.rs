//! The local lock: an `flock` on `lock-file` held for the whole run, with the holder record
//! written into that same file.
//!
//! The lock file is created once and never deleted or re-created: two processes would then
//! lock two different inodes. The kernel drops an flock when its holder dies, so a crash never
//! leaves a stale lock; a stale *record* may remain, which is why the holder's pid is always
//! checked against `/proc/locks` before it is believed. `/proc/locks` in turn names the process
//! that *took* the lock, which may be gone while a child that inherited the descriptor keeps
//! the lock alive (and the pid may be reused), so before a signal the process itself is checked
//! for an open descriptor of this file carrying the flock (`/proc/PID/fd`, `/proc/PID/fdinfo`).
//!
//! The lock file is opened without following a final symbolic link and refused unless it is a
//! regular file (`files::open_lock_file`): a link there must not get its target truncated.
//!
//! Each acquisition's fencing token is counted in a file beside the lock file
//! ([`token_file`]), written by the holder before the run sends any request.

pub mod token_file;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::backend::RunLock;
use super::contest::{BackendRefusal, Contest, Judgement, Refusal, Step, Taken};
use super::guard::{Collection, LeaseLost, LockGuard};
use super::holder::{Holder, HolderRecord, LeftTicket, RECORD, this_host};
use super::proc_locks;
use super::request::Request;
use crate::files;
use crate::time::Timestamp;
use report_common::fence::{Fence, LockName};
use report_common::ticket::Ticket;

/// How often a waiting run looks at the lock file again: a look is a system call.
pub const POLL: Duration = Duration::from_millis(50);

/// The flock backend: the lock file at `path`.
#[derive(Debug, Clone)]
pub struct FlockLock {
    path: PathBuf,
}

impl FlockLock {
    pub fn new(path: impl Into<PathBuf>) -> FlockLock {
        FlockLock { path: path.into() }
    }
}

impl RunLock for FlockLock {
    type Guard = HeldFlock;
    type Contest = Contender;

    async fn open(&self, request: &Request) -> Result<Contender, Refusal> {
        let file = LockFile::open(&self.path).map_err(FlockRefusal::Io)?;
        Ok(Contender {
            lock: Some(file),
            grace: request.replace_grace,
        })
    }

    async fn holder(&self) -> io::Result<Option<Holder>> {
        holder_at(&self.path)
    }

    async fn left_ticket(&self) -> io::Result<Option<LeftTicket>> {
        self.left_ticket_now()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn backend(&self) -> &'static str {
        "flock"
    }
}

impl FlockLock {
    /// [`RunLock::left_ticket`] without a runtime: nothing here waits.
    pub fn left_ticket_now(&self) -> io::Result<Option<LeftTicket>> {
        if holder_at(&self.path)?.is_some() {
            return Ok(None);
        }
        Ok(files::open_to_read(&self.path)?
            .and_then(|file| read_record(&file))
            .and_then(LeftTicket::from_record))
    }
}

/// An open lock file, not necessarily locked.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// The flock, held until this is dropped (or the process exits). Dropping it cuts the holder
/// record to nothing, on every path out of a run, unless the record names a ticket that was
/// not finished: then the record stays, for the next holder to find ([`LeftTicket`]). A
/// process killed outright leaves its whole record, which comes to the same.
#[derive(Debug)]
pub struct HeldFlock {
    lock: LockFile,
    /// In a cell: the run shares the guard between its steps (see [`LockGuard`]).
    record: std::cell::RefCell<HolderRecord>,
    /// Named by this host's name: the server tells locks apart by the id.
    fence: Fence,
}

impl LockFile {
    /// Opens (creating if needed, never truncating) the lock file.
    pub fn open(path: &Path) -> io::Result<LockFile> {
        Ok(LockFile {
            file: files::open_lock_file(path)?,
            path: path.to_owned(),
        })
    }

    /// Takes the lock if it is free, with the ticket the previous holder left in the record;
    /// `Err` hands `self` back when it is busy. The new record carries the left ticket on, so
    /// a run killed before it decides what to do with it leaves it to the next one in turn.
    /// The acquisition's token is counted first ([`token_file`]); a token file that cannot be
    /// used is an error, and the lock is released again with the previous record untouched.
    pub fn try_lock(self) -> io::Result<Result<(HeldFlock, Option<LeftTicket>), LockFile>> {
        // The standard library's file lock is flock(2) with LOCK_EX | LOCK_NB on Linux (tested:
        // /proc/locks shows it as FLOCK), released by the kernel when the holder dies.
        match self.file.try_lock() {
            Ok(()) => {
                // Counted first: a token file that fails leaves the previous record as it was.
                let (id, token) = token_file::next(&self.path)?;
                let left = read_left_record(&self.file).and_then(LeftTicket::from_record);
                let mut record = HolderRecord::of_this_process(Timestamp::now());
                if let Some(left) = &left {
                    record.ticket = Some(left.ticket.as_str().to_owned());
                    record.ticket_requested = left.requested;
                }
                let held = HeldFlock {
                    lock: self,
                    record: std::cell::RefCell::new(record),
                    fence: Fence {
                        lock: LockName::lossy(&this_host().unwrap_or_default()),
                        id,
                        token,
                    },
                };
                held.write_record()?;
                Ok(Ok((held, left)))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(Err(self)),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Who holds this lock file now.
    pub fn holder(&self) -> Holder {
        holder_of(&self.file)
    }
}

impl HeldFlock {
    /// Writes in place (write, then cut to length) on the locked descriptor: the file is never
    /// replaced, and a reader catching it mid-write gets invalid JSON, which it discards.
    fn write_record(&self) -> io::Result<()> {
        let mut text = serde_json::to_vec(&*self.record.borrow()).map_err(io::Error::other)?;
        text.push(b'\n');
        self.lock.file.write_all_at(&text, 0)?;
        self.lock
            .file
            .set_len(u64::try_from(text.len()).unwrap_or(u64::MAX))
    }
}

impl HeldFlock {
    /// [`LockGuard::set_ticket`] without a runtime: nothing here waits.
    pub fn set_ticket_now(&self, ticket: &Ticket, requested: Timestamp) -> io::Result<()> {
        self.record.borrow_mut().set_ticket(ticket, requested);
        self.write_record()
    }

    /// [`LockGuard::finish_ticket`] without a runtime.
    pub fn finish_ticket_now(&self) -> io::Result<()> {
        {
            let mut record = self.record.borrow_mut();
            record.ticket = None;
            record.ticket_requested = None;
        }
        self.write_record()
    }
}

impl LockGuard for HeldFlock {
    async fn set_ticket(&self, ticket: &Ticket, requested: Timestamp) -> io::Result<()> {
        self.set_ticket_now(ticket, requested)
    }

    async fn finish_ticket(&self) -> io::Result<()> {
        self.finish_ticket_now()
    }

    /// The kernel holds the lock for as long as this process lives: there is nothing to
    /// confirm or mark.
    async fn commit<T>(&self, _ticket: &Ticket, save: impl FnOnce() -> T) -> Result<T, LeaseLost> {
        Ok(save())
    }

    fn fence(&self) -> Option<Fence> {
        Some(self.fence.clone())
    }

    async fn release(self, _collected: Option<Collection<'_>>) {
        drop(self);
    }
}

impl Drop for HeldFlock {
    fn drop(&mut self) {
        // Cut in place, never removed: the file (its inode) is the lock. Best effort: a stale
        // record is harmless because readers check /proc/locks.
        if self.record.borrow().ticket.is_none() {
            let _ = self.lock.file.set_len(0);
        }
    }
}

/// Reads the holder of `path` without taking the lock and without opening it for writing (what
/// `status` uses): the kernel's word from a stat of the path and `/proc/locks`, so a user who
/// cannot read the file still learns whether it is held; the record only if it can be read.
/// Never blocks, never follows a final symbolic link; a path that is not a regular file is an
/// error naming what it is.
pub fn holder_at(path: &Path) -> io::Result<Option<Holder>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        // Opening it is what says so, in the words every other file's refusal uses.
        files::open_to_read(path)?;
    }
    let Some(pid) = kernel_pid(&meta) else {
        return Ok(None);
    };
    let record = files::open_to_read(path)
        .ok()
        .flatten()
        .and_then(|file| read_record(&file));
    Ok(Some(Holder::from_lock(Some(pid), record)))
}

fn kernel_pid(meta: &std::fs::Metadata) -> Option<u32> {
    let dev = meta.dev();
    proc_locks::locking_pid(
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino(),
    )
}

fn holder_of(file: &File) -> Holder {
    let kernel_pid = file.metadata().ok().and_then(|m| kernel_pid(&m));
    Holder::from_lock(kernel_pid, kernel_pid.and_then(|_| read_record(file)))
}

fn read_record(file: &File) -> Option<HolderRecord> {
    read_bounded_record(file).ok().flatten()
}

/// The most of the lock file a reader reads: a record this collector writes is a few hundred
/// bytes, and its ticket at most [`report_common::ticket::MAX_LEN`].
const RECORD_MAX: usize = 4096;

/// The record in `file`: `Ok(None)` when the file is empty, `Err` (with what the file held,
/// escaped and cut short) when it holds something that is not a record.
fn read_bounded_record(file: &File) -> Result<Option<HolderRecord>, String> {
    // The same descriptor is read again on every attempt.
    parse_record(&files::read_start(file, RECORD_MAX).map_err(|e| e.to_string())?)
}

/// The holder record in `bytes`, the start of a lock file: `Ok(None)` when empty, `Err` (what
/// it held, escaped and cut short) when longer than a record may be or not one.
pub fn parse_record(bytes: &[u8]) -> Result<Option<HolderRecord>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() > RECORD_MAX {
        return Err(format!("more than {RECORD_MAX} bytes"));
    }
    serde_json::from_slice(bytes).map(Some).map_err(|e| {
        format!(
            "{} is not a holder record ({e})",
            report_common::shown::quoted(&String::from_utf8_lossy(bytes), 64)
        )
    })
}

/// The record the previous holder left, read once this process holds the lock (nobody else
/// writes it now): a record that cannot be read is declined in the journal (a run killed in
/// the middle of writing it leaves one too) and counts as none.
fn read_left_record(file: &File) -> Option<HolderRecord> {
    read_bounded_record(file).unwrap_or_else(|value| {
        crate::declined::Declined {
            source: RECORD,
            field: "record",
            value,
            why: "it cannot be read as a holder record; it counts as none".to_owned(),
        }
        .say();
        None
    })
}

/// A busy lock file and the real kill(2). Empty only once the lock is taken.
#[derive(Debug)]
pub struct Contender {
    lock: Option<LockFile>,
    /// `replace-grace`, for the message of a holder that outlived it.
    grace: Duration,
}

impl Contest for Contender {
    type Guard = HeldFlock;

    fn poll(&self) -> Duration {
        POLL
    }

    async fn try_take(
        &mut self,
        _bound: Instant,
        _patient: bool,
    ) -> Result<Option<Taken<HeldFlock>>, Refusal> {
        let Some(lock) = self.lock.take() else {
            return Err(FlockRefusal::Io(io::Error::other("the lock was already taken")).into());
        };
        match lock.try_lock().map_err(FlockRefusal::Io)? {
            Ok((guard, left)) => Ok(Some(Taken {
                guard,
                left,
                previous: None,
            })),
            Err(busy) => {
                self.lock = Some(busy);
                Ok(None)
            }
        }
    }

    fn holder(&self) -> Holder {
        self.lock
            .as_ref()
            .map_or_else(|| Holder::from_lock(None, None), LockFile::holder)
    }

    fn judge(&self, holder: &Holder, _slot: Option<Timestamp>) -> Judgement {
        match (holder.confirmed, holder.pid) {
            // Named by the lock and the record, yet holding nothing: the lock lives on in a
            // process that inherited its descriptor, and the pid may be anyone's now.
            (true, Some(pid)) if pid != std::process::id() && !self.holds_lock(pid) => {
                Judgement::Unconfirmed(Box::new(FlockRefusal::HolderHoldsNoDescriptor(
                    holder.clone(),
                )))
            }
            (true, Some(pid)) if pid != std::process::id() => Judgement::Endable(i64::from(pid)),
            // No record yet (the holder writes it right after locking) or a holder that is not
            // a collector: it gets the grace period to show itself, and is never signalled.
            _ => Judgement::Unconfirmed(Box::new(FlockRefusal::HolderUnconfirmed(holder.clone()))),
        }
    }

    async fn end(&mut self, holder: &Holder, id: i64, step: Step) -> Result<(), Refusal> {
        let pid = u32::try_from(id).unwrap_or(0);
        let signal = match step {
            Step::Ask => {
                tracing::info!(
                    MESSAGE_ID = report_common::message_id::HOLDER_REPLACED,
                    HOLDER_PID = pid,
                    HOLDER_HOST = "",
                    ENDED_BY = "SIGTERM",
                    "policy replace: ending the run holding the lock, {holder}, with SIGTERM"
                );
                Signal::SIGTERM
            }
            Step::Force => {
                tracing::warn!(
                    MESSAGE_ID = report_common::message_id::HOLDER_REPLACED,
                    HOLDER_PID = pid,
                    HOLDER_HOST = "",
                    ENDED_BY = "SIGKILL",
                    "holder pid {pid} still holds the lock {} after SIGTERM; sending SIGKILL",
                    humantime::format_duration(self.grace)
                );
                Signal::SIGKILL
            }
        };
        send(pid, signal).map_err(|error| FlockRefusal::Signal { pid, error }.into())
    }
}

impl Contender {
    /// Whether process `pid` itself holds the lock now: an open descriptor of the lock file
    /// carrying it.
    fn holds_lock(&self, pid: u32) -> bool {
        let Some(meta) = self
            .lock
            .as_ref()
            .and_then(|lock| lock.file.metadata().ok())
        else {
            return false;
        };
        match proc_locks::holds_flock(pid, meta.dev(), meta.ino()) {
            Ok(holds) => holds,
            Err(e) => {
                tracing::warn!(
                    HOLDER_PID = pid,
                    "cannot look at the descriptors of pid {pid} (/proc/{pid}/fd: {e}), so it cannot be confirmed as the holder; run every collector as the same user"
                );
                false
            }
        }
    }
}

/// What stood in the way of the flock, beyond the policies' own refusals.
#[derive(Debug)]
pub enum FlockRefusal {
    /// Under `replace`, the holder could not be confirmed, so nothing was signalled.
    HolderUnconfirmed(Holder),
    /// Under `replace`, the pid the lock and its record name holds no descriptor of the lock
    /// (another process inherited it), so nothing was signalled.
    HolderHoldsNoDescriptor(Holder),
    /// The lock file could not be used at all.
    Io(io::Error),
    /// The holder could not be signalled.
    Signal { pid: u32, error: nix::Error },
}

impl BackendRefusal for FlockRefusal {
    fn is_skip(&self) -> bool {
        matches!(
            self,
            FlockRefusal::HolderUnconfirmed(_) | FlockRefusal::HolderHoldsNoDescriptor(_)
        )
    }

    fn holder(&self) -> Option<&Holder> {
        match self {
            FlockRefusal::HolderUnconfirmed(holder)
            | FlockRefusal::HolderHoldsNoDescriptor(holder) => Some(holder),
            FlockRefusal::Io(_) | FlockRefusal::Signal { .. } => None,
        }
    }

    fn holder_pid(&self) -> Option<u32> {
        match self {
            FlockRefusal::Signal { pid, .. } => Some(*pid),
            _ => self.holder().and_then(|holder| holder.pid),
        }
    }

    fn describe(&self, lock: &str, _request: &Request, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlockRefusal::HolderUnconfirmed(holder) => write!(
                f,
                "the lock {lock} is held by {holder}, but the lock file's record does not name that process, so policy replace signalled nothing"
            ),
            FlockRefusal::HolderHoldsNoDescriptor(holder) => write!(
                f,
                "the lock {lock} is held, but {holder}, whom /proc/locks and the lock file's record name, was not seen holding an open descriptor of it (it exited while a process that inherited the descriptor holds the lock, or this user may not look at its descriptors), so policy replace signalled nothing; find the holder with `fuser -v {lock}`"
            ),
            // A path that is not a regular file, a token file that is not one: its message says
            // what to do.
            FlockRefusal::Io(e)
                if files::not_regular(e).is_some() || e.kind() == io::ErrorKind::InvalidData =>
            {
                write!(f, "cannot use the lock file {lock}: {e}")
            }
            FlockRefusal::Io(e) => write!(
                f,
                "cannot use the lock file {lock}: {e}; check that its directory exists and this user may write it"
            ),
            FlockRefusal::Signal { pid, error } => write!(
                f,
                "cannot signal pid {pid}, the holder of {lock}: {error}; run every collector as the same user"
            ),
        }
    }
}

fn send(pid: u32, signal: Signal) -> Result<(), nix::Error> {
    let raw = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    match kill(Pid::from_raw(raw), signal) {
        // Gone between the check and the signal: the next attempt takes the lock.
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `replace`, `status` and a busy run's message all find the holder as an FLOCK line of
    /// `/proc/locks`: a lock of another kind (POSIX, OFD) underneath would hide it from them.
    #[test]
    fn the_kernel_shows_the_held_lock_file_as_an_flock_of_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.lock");
        let (held, _) = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        let text = std::fs::read_to_string("/proc/locks").unwrap();
        let line = text
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(5)
                    .is_some_and(|id| id.ends_with(&format!(":{inode}")))
            })
            .unwrap_or_else(|| panic!("no line for inode {inode} in /proc/locks:\n{text}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "FLOCK", "{line}");
        assert_eq!(fields[3], "WRITE", "exclusive: {line}");
        assert_eq!(fields[4], std::process::id().to_string(), "{line}");
        drop(held);
    }

    #[test]
    fn the_holder_record_is_written_into_the_lock_file_and_seen_without_locking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/collector.lock");
        let (held, left) = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        assert_eq!(left, None);
        held.set_ticket_now(&crate::t("abc_0"), Timestamp::UNIX_EPOCH)
            .unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();

        let holder = holder_at(&path).unwrap().expect("lock is held");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(holder.confirmed);
        assert_eq!(holder.ticket.as_deref(), Some("abc_0"));
        assert_eq!(
            holder
                .ticket_requested
                .map(|at| at.millis().to_string())
                .as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(holder.host, super::super::holder::this_host());

        // A second open file description is refused while the first holds it.
        let other = LockFile::open(&path).unwrap();
        let other = other.try_lock().unwrap().unwrap_err();
        // Read again and again on the same descriptor, as the replace loop does.
        for _ in 0..2 {
            assert_eq!(other.holder().ticket.as_deref(), Some("abc_0"));
        }

        held.finish_ticket_now().unwrap();
        drop(held);
        assert_eq!(holder_at(&path).unwrap(), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"", "the record is cleared");
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "the lock file is cut in place, never re-created"
        );
        assert!(other.try_lock().unwrap().is_ok());
    }

    #[test]
    fn an_unfinished_ticket_outlives_its_holder_and_is_handed_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.lock");
        let requested = Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (first, _) = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        first
            .set_ticket_now(&crate::t("left_1"), requested)
            .unwrap();
        // Released (or killed) without finishing it: the record stays, the lock is free.
        drop(first);
        assert_eq!(holder_at(&path).unwrap(), None);

        let (second, left) = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        let left = left.expect("the ticket is handed on");
        assert_eq!(left.ticket, "left_1");
        assert_eq!(left.requested, Some(requested));
        assert_eq!(left.by_pid, std::process::id());
        // The new holder's record carries it on, in case this holder is killed in turn.
        let holder = holder_at(&path).unwrap().unwrap();
        assert_eq!(holder.ticket.as_deref(), Some("left_1"));
        assert_eq!(
            holder
                .ticket_requested
                .map(|at| at.millis().to_string())
                .as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        drop(second);
        let (third, left) = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        assert_eq!(left.map(|l| l.ticket).as_deref(), Some("left_1"));

        // Finished: nothing is handed on, and the record is cut on release.
        third.finish_ticket_now().unwrap();
        drop(third);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let (_fourth, left) = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        assert_eq!(left, None);
    }
}
