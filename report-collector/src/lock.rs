//! The run lock: an `flock` on `lock-file` held for the whole run, the holder record written
//! into that same file, who holds it (from `/proc/locks`, without taking it), and the four
//! policies for a busy lock.
//!
//! The lock file is created once and never deleted or re-created: two processes would then
//! lock two different inodes. The kernel drops an flock when its holder dies, so a crash never
//! leaves a stale lock; a stale *record* may remain, which is why the holder's pid is always
//! checked against `/proc/locks` before it is believed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileExt as _, MetadataExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::Policy;
use crate::schedule::format_time;

/// How often a waiting run looks at the lock again.
pub const LOCK_POLL: Duration = Duration::from_millis(50);

/// What the holder writes into the lock file once it has the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub pid: u32,
    /// RFC 3339 UTC.
    pub since: String,
    pub ticket: Option<String>,
}

/// Who holds the lock, as far as can be told without taking it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// From `/proc/locks` when available, else from the record.
    pub pid: Option<u32>,
    pub since: Option<String>,
    pub ticket: Option<String>,
    /// True when the record's pid is the pid the kernel shows holding the lock.
    pub confirmed: bool,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => write!(f, "an unknown process")?,
        }
        write!(
            f,
            " since {} with ticket {}",
            self.since.as_deref().unwrap_or("an unknown time"),
            self.ticket.as_deref().unwrap_or("(none yet)")
        )
    }
}

/// An open lock file, not necessarily locked.
#[derive(Debug)]
pub struct LockFile {
    file: File,
}

/// The lock, held until this is dropped (or the process exits); dropping it also clears the
/// holder record, on every path out of a run.
#[derive(Debug)]
pub struct HeldLock {
    lock: LockFile,
    record: HolderRecord,
}

impl LockFile {
    /// Opens (creating if needed, never truncating) the lock file.
    pub fn open(path: &Path) -> io::Result<LockFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(LockFile { file })
    }

    /// Takes the lock if it is free; `Ok(None)` hands `self` back when it is busy.
    pub fn try_lock(self) -> io::Result<Result<HeldLock, LockFile>> {
        match fs2::FileExt::try_lock_exclusive(&self.file) {
            Ok(()) => {
                let record = HolderRecord {
                    pid: std::process::id(),
                    since: format_time(SystemTime::now()),
                    ticket: None,
                };
                let held = HeldLock { lock: self, record };
                held.write_record()?;
                Ok(Ok(held))
            }
            Err(e) if is_contention(&e) => Ok(Err(self)),
            Err(e) => Err(e),
        }
    }

    /// Who holds this lock file now.
    pub fn holder(&self) -> Holder {
        holder_of(&self.file)
    }
}

fn is_contention(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

impl HeldLock {
    /// Records the ticket so a skipped run can name what the holder is waiting for.
    pub fn set_ticket(&mut self, ticket: &str) -> io::Result<()> {
        self.record.ticket = Some(ticket.to_owned());
        self.write_record()
    }

    /// Writes in place (write, then cut to length) on the locked descriptor: the file is never
    /// replaced, and a reader catching it mid-write gets invalid JSON, which it discards.
    fn write_record(&self) -> io::Result<()> {
        let mut text = serde_json::to_vec(&self.record).map_err(io::Error::other)?;
        text.push(b'\n');
        self.lock.file.write_all_at(&text, 0)?;
        self.lock.file.set_len(text.len() as u64)
    }

    /// Clears the record and releases the lock.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Cut in place, never removed: the file (its inode) is the lock. Best effort: a stale
        // record is harmless because readers check /proc/locks.
        let _ = self.lock.file.set_len(0);
    }
}

/// Reads the holder of `path` without taking the lock (what `status` uses).
pub fn holder_at(path: &Path) -> io::Result<Option<Holder>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let holder = holder_of(&file);
    Ok(holder.pid.is_some().then_some(holder))
}

fn holder_of(file: &File) -> Holder {
    let record = read_record(file);
    let kernel_pid = file.metadata().ok().and_then(|m| {
        let dev = m.dev();
        locking_pid(
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev),
            m.ino(),
        )
    });
    match (kernel_pid, record) {
        (Some(pid), Some(r)) if r.pid == pid => Holder {
            pid: Some(pid),
            since: Some(r.since),
            ticket: r.ticket,
            confirmed: true,
        },
        (Some(pid), _) => Holder {
            pid: Some(pid),
            since: None,
            ticket: None,
            confirmed: false,
        },
        (None, _) => Holder {
            pid: None,
            since: None,
            ticket: None,
            confirmed: false,
        },
    }
}

fn read_record(file: &File) -> Option<HolderRecord> {
    // Positioned read: the same descriptor is read again on every attempt.
    let mut buf = vec![0; 4096];
    let n = file.read_at(&mut buf, 0).ok()?;
    serde_json::from_slice(&buf[..n]).ok()
}

/// How many times `/proc/locks` is read before concluding that nobody holds an inode.
const PROC_LOCKS_READS: usize = 3;

/// The pid holding an flock on the inode `major:minor:ino`, from `/proc/locks`.
///
/// The kernel produces that file a record at a time and keeps it consistent only within one
/// read(2): when another lock is taken or dropped between two reads (builds and package
/// managers take flocks all the time), a line can be skipped. So the file is read with a
/// buffer large enough for one call, and looked at again before a lock is called free.
pub fn locking_pid(major: u64, minor: u64, ino: u64) -> Option<u32> {
    (0..PROC_LOCKS_READS).find_map(|_| {
        let text = read_proc_locks().ok()?;
        parse_proc_locks(&text, major, minor, ino)
    })
}

fn read_proc_locks() -> io::Result<String> {
    // A spare capacity this large makes std read straight into it, without small probe reads.
    let mut text = String::with_capacity(64 * 1024);
    File::open("/proc/locks")?.read_to_string(&mut text)?;
    Ok(text)
}

/// Finds the active FLOCK line for the inode (waiters, marked `->`, are not holders).
pub fn parse_proc_locks(text: &str, major: u64, minor: u64, ino: u64) -> Option<u32> {
    let mut same_inode_other_dev = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] == "->" || fields[1] != "FLOCK" {
            continue;
        }
        let Ok(pid) = fields[4].parse::<u32>() else {
            continue;
        };
        let mut id = fields[5].split(':');
        let (Some(maj), Some(min), Some(i)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(i)) = (
            u64::from_str_radix(maj, 16),
            u64::from_str_radix(min, 16),
            i.parse::<u64>(),
        ) else {
            continue;
        };
        if i != ino {
            continue;
        }
        if maj == major && min == minor {
            return Some(pid);
        }
        // Overlay file systems report another device to stat() than the one the lock is on.
        same_inode_other_dev.get_or_insert(pid);
    }
    same_inode_other_dev
}

/// Why the lock could not be had.
#[derive(Debug)]
pub enum NotAcquired {
    /// Busy under `forbid`.
    Busy(Holder),
    /// `lock-wait` (or the run deadline) passed under `wait`.
    WaitTimedOut { holder: Holder, waited: Duration },
    /// Under `replace`, the holder could not be confirmed, so nothing was signalled.
    HolderUnconfirmed(Holder),
    /// The run deadline passed while ending the holder.
    DeadlinePassed(Holder),
    /// The lock file could not be used at all.
    Io(io::Error),
    /// The holder could not be signalled.
    Signal { pid: u32, error: nix::Error },
}

/// The result of taking the lock per policy.
#[derive(Debug)]
pub struct Acquired {
    /// `None` under `allow`.
    pub lock: Option<HeldLock>,
    /// The other run this one waited for or ended, if any.
    pub previous_holder: Option<u32>,
}

/// Takes the lock as `policy` says, giving up at `deadline`.
pub async fn acquire(
    path: &Path,
    policy: Policy,
    lock_wait: Duration,
    replace_grace: Duration,
    deadline: Instant,
) -> Result<Acquired, NotAcquired> {
    if policy == Policy::Allow {
        return Ok(Acquired {
            lock: None,
            previous_holder: None,
        });
    }
    let lock = LockFile::open(path).map_err(NotAcquired::Io)?;
    let lock = match lock.try_lock().map_err(NotAcquired::Io)? {
        Ok(held) => {
            return Ok(Acquired {
                lock: Some(held),
                previous_holder: None,
            });
        }
        Err(busy) => busy,
    };
    let holder = lock.holder();
    match policy {
        Policy::Forbid | Policy::Allow => Err(NotAcquired::Busy(holder)),
        Policy::Wait => {
            let started = Instant::now();
            let until = deadline.min(started + lock_wait);
            tracing::info!(
                "lock {} is held by {holder}; waiting up to {} for it",
                path.display(),
                humantime::format_duration(until - started)
            );
            let mut contender = Contender(Some(lock));
            let got = wait_for(until, || contender.try_take())
                .await
                .map_err(NotAcquired::Io)?;
            match got {
                Some(held) => Ok(Acquired {
                    lock: Some(held),
                    previous_holder: holder.pid,
                }),
                None => Err(NotAcquired::WaitTimedOut {
                    holder: contender.holder(),
                    waited: started.elapsed(),
                }),
            }
        }
        Policy::Replace => {
            let (held, previous_holder) =
                replace(Contender(Some(lock)), replace_grace, deadline).await?;
            Ok(Acquired {
                lock: Some(held),
                previous_holder,
            })
        }
    }
}

/// What the replace loop deals with: the lock it wants, who holds it, and kill(2).
/// [`Contender`] is the real one; the tests script one on tokio's paused clock.
pub trait Contest {
    type Held;
    /// Takes the lock if it is free.
    fn try_take(&mut self) -> io::Result<Option<Self::Held>>;
    /// Who holds the lock now.
    fn holder(&self) -> Holder;
    fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), NotAcquired>;
}

/// A busy lock file and the real kill(2). Empty only once the lock is taken.
struct Contender(Option<LockFile>);

impl Contest for Contender {
    type Held = HeldLock;

    fn try_take(&mut self) -> io::Result<Option<HeldLock>> {
        let lock = self.0.take().expect("no attempt after the lock is taken");
        match lock.try_lock()? {
            Ok(held) => Ok(Some(held)),
            Err(busy) => {
                self.0 = Some(busy);
                Ok(None)
            }
        }
    }

    fn holder(&self) -> Holder {
        self.0
            .as_ref()
            .expect("no question after the lock is taken")
            .holder()
    }

    fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), NotAcquired> {
        send(pid, signal)
    }
}

/// Calls `attempt` every [`LOCK_POLL`] until it gives something or `until` passes.
pub async fn wait_for<T>(
    until: Instant,
    mut attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    loop {
        if let Some(got) = attempt()? {
            return Ok(Some(got));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        tokio::time::sleep_until((now + LOCK_POLL).min(until)).await;
    }
}

/// Ends the holder: SIGTERM, up to `grace` for it to go, then SIGKILL; each signal only after
/// checking, right before, that the pid in the record is the pid the kernel shows holding the
/// lock (pids are reused: a stale record must never get an unrelated process killed).
/// Returns the lock and the pid of the first holder it ended.
pub async fn replace<C: Contest>(
    mut contest: C,
    grace: Duration,
    deadline: Instant,
) -> Result<(C::Held, Option<u32>), NotAcquired> {
    let started = Instant::now();
    // (pid, when SIGTERM was sent, whether SIGKILL was sent)
    let mut signalled: Option<(u32, Instant, bool)> = None;
    let mut first_holder = None;
    loop {
        if let Some(held) = contest.try_take().map_err(NotAcquired::Io)? {
            return Ok((held, first_holder));
        }
        let now = Instant::now();
        let holder = contest.holder();
        if now >= deadline {
            return Err(NotAcquired::DeadlinePassed(holder));
        }
        match (holder.confirmed, holder.pid) {
            (true, Some(pid)) if pid != std::process::id() => {
                first_holder.get_or_insert(pid);
                match signalled {
                    Some((p, at, killed)) if p == pid => {
                        if !killed && now >= at + grace {
                            tracing::warn!(
                                HOLDER_PID = pid,
                                "holder pid {pid} still holds the lock {} after SIGTERM; sending SIGKILL",
                                humantime::format_duration(grace)
                            );
                            contest.signal(pid, Signal::SIGKILL)?;
                            signalled = Some((pid, at, true));
                        }
                    }
                    _ => {
                        tracing::info!(
                            HOLDER_PID = pid,
                            "policy replace: ending the run holding the lock, {holder}, with SIGTERM"
                        );
                        contest.signal(pid, Signal::SIGTERM)?;
                        signalled = Some((pid, now, false));
                    }
                }
            }
            _ => {
                // No record yet (the holder writes it right after locking) or a holder that
                // is not a collector: give it the grace period to show itself, never signal.
                if signalled.is_none() && now >= started + grace {
                    return Err(NotAcquired::HolderUnconfirmed(holder));
                }
            }
        }
        tokio::time::sleep_until((now + LOCK_POLL).min(deadline)).await;
    }
}

fn send(pid: u32, signal: Signal) -> Result<(), NotAcquired> {
    let raw = i32::try_from(pid).map_err(|_| NotAcquired::Signal {
        pid,
        error: nix::Error::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), signal) {
        // Gone between the check and the signal: the next attempt takes the lock.
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(error) => Err(NotAcquired::Signal { pid, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let text = "\
1: POSIX  ADVISORY  WRITE 99 08:01:4242 0 EOF
2: FLOCK  ADVISORY  WRITE 1234 fd:01:4242 0 EOF
2: -> FLOCK  ADVISORY  WRITE 555 fd:01:4242 0 EOF
3: FLOCK  ADVISORY  WRITE 777 08:01:1000 0 EOF
";
        assert_eq!(parse_proc_locks(text, 0xfd, 1, 4242), Some(1234));
        assert_eq!(parse_proc_locks(text, 8, 1, 1000), Some(777));
        assert_eq!(parse_proc_locks(text, 8, 1, 5), None);
        // The same inode on another device is only a fallback.
        assert_eq!(parse_proc_locks(text, 0, 0x2a, 1000), Some(777));
    }

    #[test]
    fn the_holder_record_is_written_into_the_lock_file_and_seen_without_locking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/collector.lock");
        let mut held = LockFile::open(&path).unwrap().try_lock().unwrap().unwrap();
        held.set_ticket("abc_0").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();

        let holder = holder_at(&path).unwrap().expect("lock is held");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(holder.confirmed);
        assert_eq!(holder.ticket.as_deref(), Some("abc_0"));

        // A second open file description is refused while the first holds it.
        let other = LockFile::open(&path).unwrap();
        let other = other.try_lock().unwrap().unwrap_err();
        // Read again and again on the same descriptor, as the replace loop does.
        for _ in 0..2 {
            assert_eq!(other.holder().ticket.as_deref(), Some("abc_0"));
        }

        held.release();
        assert_eq!(holder_at(&path).unwrap(), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"", "the record is cleared");
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "the lock file is cut in place, never re-created"
        );
        assert!(other.try_lock().unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_gives_up_exactly_at_the_limit() {
        let start = Instant::now();
        let mut attempts = 0;
        let got: Option<()> = wait_for(start + Duration::from_secs(2), || {
            attempts += 1;
            Ok(None)
        })
        .await
        .unwrap();
        assert_eq!(got, None);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // One attempt at once, then one every LOCK_POLL, including one at the limit.
        assert_eq!(attempts, 2000 / LOCK_POLL.as_millis() as usize + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_takes_the_lock_as_soon_as_it_is_free() {
        let start = Instant::now();
        let free_at = start + Duration::from_millis(730);
        let got = wait_for(start + Duration::from_secs(5), || {
            Ok((Instant::now() >= free_at).then_some("lock"))
        })
        .await
        .unwrap();
        assert_eq!(got, Some("lock"));
        assert!(start.elapsed() - Duration::from_millis(730) < LOCK_POLL);
    }

    /// A holder on tokio's paused clock: it lets go of the lock `exits_after` a SIGTERM (never,
    /// if `None`) or at once on SIGKILL; every signal is recorded with its time.
    struct ScriptedHolder {
        pid: u32,
        confirmed: bool,
        exits_after: Option<Duration>,
        term_at: Option<Instant>,
        killed: bool,
        start: Instant,
        signals: Vec<(u32, Signal, Duration)>,
    }

    impl ScriptedHolder {
        fn new(confirmed: bool, exits_after: Option<Duration>) -> ScriptedHolder {
            ScriptedHolder {
                pid: 4242,
                confirmed,
                exits_after,
                term_at: None,
                killed: false,
                start: Instant::now(),
                signals: Vec::new(),
            }
        }
    }

    impl Contest for &mut ScriptedHolder {
        type Held = Duration;

        fn try_take(&mut self) -> io::Result<Option<Duration>> {
            let gone = self.killed
                || matches!((self.term_at, self.exits_after), (Some(at), Some(after)) if Instant::now() >= at + after);
            Ok(gone.then(|| self.start.elapsed()))
        }

        fn holder(&self) -> Holder {
            Holder {
                pid: Some(self.pid),
                since: None,
                ticket: None,
                confirmed: self.confirmed,
            }
        }

        fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), NotAcquired> {
            self.signals.push((pid, signal, self.start.elapsed()));
            match signal {
                Signal::SIGKILL => self.killed = true,
                _ => self.term_at = Some(Instant::now()),
            }
            Ok(())
        }
    }

    const GRACE: Duration = Duration::from_secs(10);

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[tokio::test(start_paused = true)]
    async fn replace_sends_sigterm_once_and_takes_the_lock_when_the_holder_goes() {
        let mut holder = ScriptedHolder::new(true, Some(Duration::from_millis(1200)));
        let (taken_at, previous) = replace(&mut holder, GRACE, far()).await.unwrap();
        assert_eq!(holder.signals, [(4242, Signal::SIGTERM, Duration::ZERO)]);
        assert_eq!(previous, Some(4242));
        // Seen at the first look after it went.
        assert_eq!(taken_at, Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_sends_sigkill_exactly_when_the_grace_runs_out() {
        let mut holder = ScriptedHolder::new(true, None);
        let (taken_at, _) = replace(&mut holder, GRACE, far()).await.unwrap();
        assert_eq!(
            holder.signals,
            [
                (4242, Signal::SIGTERM, Duration::ZERO),
                (4242, Signal::SIGKILL, GRACE)
            ]
        );
        assert_eq!(taken_at, GRACE + LOCK_POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn replace_never_signals_an_unconfirmed_holder_and_gives_up_after_the_grace() {
        let mut holder = ScriptedHolder::new(false, Some(Duration::ZERO));
        let start = Instant::now();
        let err = replace(&mut holder, GRACE, far()).await.unwrap_err();
        assert!(matches!(err, NotAcquired::HolderUnconfirmed(_)), "{err:?}");
        assert!(holder.signals.is_empty());
        assert_eq!(start.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_deadline_bounds_replacing() {
        let mut holder = ScriptedHolder::new(true, None);
        let start = Instant::now();
        let err = replace(&mut holder, GRACE, start + Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, NotAcquired::DeadlinePassed(_)), "{err:?}");
        assert_eq!(holder.signals, [(4242, Signal::SIGTERM, Duration::ZERO)]);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
