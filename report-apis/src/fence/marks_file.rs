//! The fence's state file: every lock's mark, so that marks survive a restart.
//!
//! ```json
//! {"version":1,"locks":[{"id":"<32 hex>","lock":"<name>","mark":"<epoch>.<count>","raised":<unix seconds>}]}
//! ```
//!
//! Written whole for every raise, as a new file beside it that is synced, renamed over it and
//! whose directory is synced, so that a crash leaves the old file or the new one, never a
//! part; a raise is acknowledged only once that returned. Read at start as another process
//! may have left it: bounded, and a FIFO, a directory, a device or a symbolic link refused
//! ([`report_common::files`]). A file that cannot be read or holds a bad value stops the start
//! (exit 78): starting without it would start every lock's mark afresh, which the operator
//! must choose knowingly. Pending tickets are not kept: tickets do not survive a restart.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use report_common::fence::{LockName, Token, parse_id};
use report_common::files;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Lock;

/// The only version written and read.
const VERSION: u32 = 1;

/// Room for one lock's record: a name of at most 200 bytes (JSON escapes only quotes and
/// backslashes in a name, which holds no control character), the id, two 20-digit numbers, a
/// time and the keys come to under 400 bytes; twice that leaves room for a lower
/// `max-locks` than the locks kept.
pub const RECORD_BOUND: u64 = 1024;

/// Room for the rest of the file.
const FRAME_BOUND: u64 = 4096;

/// The most a state file for `max_locks` locks may hold.
pub fn size_limit(max_locks: usize) -> u64 {
    u64::try_from(max_locks)
        .unwrap_or(u64::MAX)
        .saturating_mul(RECORD_BOUND)
        .saturating_add(FRAME_BOUND)
}

/// The state file could not be read or holds what it must not: the server does not start.
#[derive(Debug)]
pub struct MarksFileError {
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for MarksFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot use the fence state file {path}: {why}. Restore it or fix it (`[fence] \
             state-file` names it). Removing it starts every lock's mark afresh: a collector \
             paused before the restart could then get a second ticket beside its lock's new \
             holder, or cancel that holder's ticket, until each lock is taken once more",
            path = self.path.display(),
            why = self.why
        )
    }
}

impl std::error::Error for MarksFileError {}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarksFile {
    version: u32,
    locks: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    lock: String,
    mark: String,
    raised: u64,
}

/// The text of a state file holding `locks`, sorted by id so that the same marks are the
/// same bytes.
pub fn encode<'a>(locks: impl Iterator<Item = (&'a Uuid, &'a Lock)>) -> Vec<u8> {
    let mut records: Vec<Record> = locks
        .map(|(id, lock)| Record {
            id: id.simple().to_string(),
            lock: lock.name.as_str().to_owned(),
            mark: lock.mark.to_string(),
            raised: lock
                .raised_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        })
        .collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let mut bytes = serde_json::to_vec(&MarksFile {
        version: VERSION,
        locks: records,
    })
    .unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The marks in `path`: none when it does not exist.
pub fn load(path: &Path, max_locks: usize) -> Result<HashMap<Uuid, Lock>, MarksFileError> {
    let refused = |why: String| MarksFileError {
        path: path.to_owned(),
        why,
    };
    // The server writes a regular file there; a link would let whoever can write the directory
    // point the marks elsewhere.
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(err) => return Err(refused(err.to_string())),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refused(
                "it is a symbolic link, not a regular file".to_owned(),
            ));
        }
        Ok(_) => {}
    }
    let bytes = files::read(path, size_limit(max_locks)).map_err(|err| {
        refused(match files::refusal(&err) {
            Some(files::Refused::TooLarge { limit, .. }) => format!(
                "it is larger than {} bytes, the most {max_locks} locks (limits.max-locks) \
                 take; raise limits.max-locks if it holds more locks than that",
                limit
            ),
            Some(files::Refused::NotRegular { kind, .. }) => {
                format!("it is {kind}, not a regular file")
            }
            None => err.to_string(),
        })
    })?;
    decode(&bytes).map_err(refused)
}

/// Checks every value as a request's header is checked: a file is whole or refused.
fn decode(bytes: &[u8]) -> Result<HashMap<Uuid, Lock>, String> {
    let file: MarksFile =
        serde_json::from_slice(bytes).map_err(|err| format!("it is not a marks file: {err}"))?;
    if file.version != VERSION {
        return Err(format!(
            "its version is {}, and this server reads version {VERSION}",
            file.version
        ));
    }
    let mut locks = HashMap::with_capacity(file.locks.len());
    for (n, record) in file.locks.into_iter().enumerate() {
        let at = |what: &str| format!("lock {} of the file: {what}", n + 1);
        let id = parse_id(&record.id).map_err(|err| at(&err.to_string()))?;
        let name = LockName::new(&record.lock)
            .ok_or_else(|| at("the lock name is empty, longer than 200 bytes or not text"))?;
        let mark = Token::parse(&record.mark)
            .ok_or_else(|| at("the mark is not EPOCH.COUNT in decimal"))?;
        let lock = Lock {
            name,
            mark,
            raised_at: SystemTime::UNIX_EPOCH + Duration::from_secs(record.raised),
            pending: None,
        };
        if locks.insert(id, lock).is_some() {
            return Err(at(&format!("the id {} comes twice", record.id)));
        }
    }
    Ok(locks)
}

/// Replaces `path` with `bytes`, durably: see the module doc.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .ok_or_else(|| io::Error::other("the state file's path names no directory"))?;
    // Created exclusively under a random name, so nothing planted in the directory is opened.
    let mut new = tempfile::Builder::new()
        .prefix(".fence-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    new.write_all(bytes)?;
    new.as_file().sync_all()?;
    new.persist(path).map_err(|err| err.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(name: &str, epoch: u64, count: u64) -> Lock {
        Lock {
            name: LockName::new(name).unwrap(),
            mark: Token::new(epoch, count),
            raised_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000),
            pending: None,
        }
    }

    #[test]
    fn marks_written_read_back_equal_and_a_missing_file_is_no_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence.json");
        assert!(load(&path, 4).unwrap().is_empty());
        let locks: HashMap<Uuid, Lock> = [
            (Uuid::from_u128(1), lock("fleet \"a\"/ä", 3, 7)),
            (
                Uuid::from_u128(2),
                lock(&"x".repeat(200), u64::MAX, u64::MAX),
            ),
        ]
        .into_iter()
        .collect();
        let bytes = encode(locks.iter());
        assert!(bytes.len() < 2 * 400, "{}", bytes.len());
        write(&path, &bytes).unwrap();
        assert_eq!(load(&path, 4).unwrap(), locks);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bad_file_is_refused_naming_what_is_wrong() {
        let id = "0123456789abcdef0123456789abcdef";
        let record = |id: &str, lock: &str, mark: &str| {
            format!(r#"{{"id":"{id}","lock":"{lock}","mark":"{mark}","raised":0}}"#)
        };
        for (text, wanted) in [
            ("".to_owned(), "not a marks file"),
            ("{}".to_owned(), "not a marks file"),
            (r#"{"version":2,"locks":[]}"#.to_owned(), "version is 2"),
            (
                format!(
                    r#"{{"version":1,"locks":[{}],"x":1}}"#,
                    record(id, "a", "1.2")
                ),
                "not a marks file",
            ),
            (
                format!(r#"{{"version":1,"locks":[{}]}}"#, record("ABC", "a", "1.2")),
                "lock 1 of the file: the lock id",
            ),
            (
                format!(r#"{{"version":1,"locks":[{}]}}"#, record(id, "", "1.2")),
                "the lock name",
            ),
            (
                format!(r#"{{"version":1,"locks":[{}]}}"#, record(id, "a\\n", "1.2")),
                "the lock name",
            ),
            (
                format!(r#"{{"version":1,"locks":[{}]}}"#, record(id, "a", "-1.2")),
                "the mark",
            ),
            (
                format!(
                    r#"{{"version":1,"locks":[{},{}]}}"#,
                    record(id, "a", "1.2"),
                    record(id, "b", "1.3")
                ),
                "lock 2 of the file: the id 0123456789abcdef0123456789abcdef comes twice",
            ),
        ] {
            let err = decode(text.as_bytes()).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn a_link_a_fifo_a_directory_and_a_file_too_large_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        write(&real, &encode(std::iter::empty())).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let big = dir.path().join("big.json");
        std::fs::write(
            &big,
            vec![b' '; usize::try_from(size_limit(1)).unwrap() + 1],
        )
        .unwrap();
        for (path, wanted) in [
            (&link, "symbolic link"),
            (&fifo, "a FIFO"),
            (&dir.path().to_owned(), "a directory"),
            (&big, "larger than 5120 bytes"),
        ] {
            let err = load(path, 1).unwrap_err().to_string();
            assert!(err.contains(wanted), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("starts every lock's mark afresh"), "{err}");
        }
    }
}
