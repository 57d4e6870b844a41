//! The flock's fencing token ([`Token`]), kept in `<lock-file>.token` beside the lock file, one
//! line of JSON: `{"lock":"<id>","boot":"<boot id>","epoch":E,"count":C}`. Runs never delete
//! it; the holder record in the lock file itself stays as it was.
//!
//! Only the holder of the flock reads and writes it, right after taking the lock and before
//! the run sends any request: the kernel's lock is what orders the tokens of one host's runs.
//! What else each guarantee rests on:
//!
//! - **A process killed at any point** leaves the old file or the new one: it is replaced by
//!   rename(2), never written in place. Within one boot nothing waits for the disk: the page
//!   cache outlives every process while the kernel runs.
//! - **A power cut or a kernel crash** may lose the newest counts, but only together with the
//!   boot. The first acquisition of a boot (the kernel's boot id,
//!   `/proc/sys/kernel/random/boot_id`, differs from the file's) raises the epoch and fsyncs
//!   the file and its directory before it hands the token out. So the first token after any
//!   crash is in a higher epoch than every token handed out before it. Without a readable boot
//!   id every acquisition raises the epoch that way.
//! - **The lock's id** (128 random bits) is made when the file is first written and kept with
//!   it. A file that is gone starts a new id in epoch 1: tokens of different ids are not
//!   compared, so a deleted lock directory starts a fresh count instead of a refused one.
//! - **A file that is not a token file** (cut short, overwritten, a value out of range) is
//!   declined in the journal (`VALUE_DECLINED`), moved to `<lock-file>.token.unreadable` and
//!   replaced by a new id. One that cannot be read or written at all (permissions, not a
//!   regular file, larger than 1 MiB, a full disk) fails the run before it sends any request: a count that might
//!   go back is never handed out.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::declined::Declined;
use crate::files::{self, Durability};
use crate::lock::token::Token;

/// Where the token file of the lock file `lock` is.
pub fn path_beside(lock: &Path) -> PathBuf {
    let mut name = lock.as_os_str().to_owned();
    name.push(".token");
    PathBuf::from(name)
}

/// What the journal names as the source of a declined token file.
const SOURCE: &str = "the lock's token file";

/// The most of the file a reader takes: a token file this collector writes is about 130 bytes.
const RECORD_MAX: usize = 512;

/// Where the kernel tells this boot from every other.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The token file's one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    /// 32 lowercase hex digits, made once per file.
    lock: String,
    /// The boot in which `count` was last written; empty when the boot id could not be read.
    boot: String,
    epoch: u64,
    count: u64,
}

/// The next token of the lock file `lock`, written down before it is returned. Call it only
/// while holding the flock.
pub fn next(lock: &Path) -> io::Result<Token> {
    next_in_boot(lock, this_boot().as_deref())
}

/// [`next`] in the boot `boot` (`None`: unknown).
fn next_in_boot(lock: &Path, boot: Option<&str>) -> io::Result<Token> {
    let path = path_beside(lock);
    let previous = read(&path).map_err(|e| in_file(&path, "read", e))?;
    let (record, durability) =
        advance(previous, boot, || uuid::Uuid::new_v4().simple().to_string()).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{why}; remove {} to start a new lock id", path.display()),
            )
        })?;
    let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
    line.push(b'\n');
    files::write_atomically(&path, &line, durability).map_err(|e| in_file(&path, "write", e))?;
    Ok(Token::new(record.epoch, record.count))
}

/// `e`, saying which file it was about.
fn in_file(path: &Path, verb: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot {verb} its token file {}: {e}", path.display()),
    )
}

/// The record at `path`: `None` when there is none, or when it is not a token file (then it
/// is declined and moved aside, and a new id starts). `Err` only when the file cannot be read
/// at all, or moved aside.
fn read(path: &Path) -> io::Result<Option<TokenRecord>> {
    let Some(bytes) = files::read_existing(path)? else {
        return Ok(None);
    };
    match parse(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(value) => {
            let aside = crate::state::unreadable_path(path);
            std::fs::rename(path, &aside)?;
            Declined {
                source: SOURCE,
                field: "record",
                value,
                why: format!(
                    "it is not a token file; moved it to {} and started a new lock id, whose tokens start over",
                    aside.display()
                ),
            }
            .say();
            Ok(None)
        }
    }
}

/// `bytes` as a token file, or what they were (escaped and cut short).
fn parse(bytes: &[u8]) -> Result<TokenRecord, String> {
    let shown =
        || report_common::shown::quoted(&String::from_utf8_lossy(bytes), crate::declined::SHOWN);
    if bytes.len() > RECORD_MAX {
        return Err(format!("more than {RECORD_MAX} bytes"));
    }
    let record: TokenRecord = serde_json::from_slice(bytes).map_err(|_| shown())?;
    let lock_ok = record.lock.len() == 32
        && record
            .lock
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lock_ok || !(record.boot.is_empty() || is_boot_id(&record.boot)) {
        return Err(shown());
    }
    Ok(record)
}

/// The record after `previous` for an acquisition in boot `boot`, and how durably it must be
/// written before its token is used; `Err` says why no token can follow it.
fn advance(
    previous: Option<TokenRecord>,
    boot: Option<&str>,
    new_id: impl FnOnce() -> String,
) -> Result<(TokenRecord, Durability), String> {
    let boot_text = boot.unwrap_or_default().to_owned();
    let Some(previous) = previous else {
        let first = TokenRecord {
            lock: new_id(),
            boot: boot_text,
            epoch: 1,
            count: 1,
        };
        return Ok((first, Durability::Synced));
    };
    let same_boot = boot.is_some_and(|b| b == previous.boot);
    if same_boot && let Some(count) = previous.count.checked_add(1) {
        return Ok((TokenRecord { count, ..previous }, Durability::Renamed));
    }
    let epoch = previous
        .epoch
        .checked_add(1)
        .ok_or_else(|| format!("the lock's token epoch is at its largest ({})", u64::MAX))?;
    Ok((
        TokenRecord {
            lock: previous.lock,
            boot: boot_text,
            epoch,
            count: 1,
        },
        Durability::Synced,
    ))
}

/// This boot's id, when the kernel says it.
fn this_boot() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_ID).ok()?;
    let id = text.trim();
    is_boot_id(id).then(|| id.to_owned())
}

/// A boot id as the kernel writes it: a UUID, 36 characters of lowercase hex and '-'.
fn is_boot_id(text: &str) -> bool {
    text.len() == 36
        && text
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT_A: &str = "0f4c2a5e-6a0b-4e8e-9a7d-3a1c5b6d7e8f";
    const BOOT_B: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

    fn record(path: &Path) -> TokenRecord {
        parse(&std::fs::read(path_beside(path)).unwrap()).unwrap()
    }

    #[test]
    fn counts_within_a_boot_and_raises_the_epoch_with_each_new_boot() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let mut tokens = Vec::new();
        for boot in [
            Some(BOOT_A),
            Some(BOOT_A),
            Some(BOOT_A),
            Some(BOOT_B),
            Some(BOOT_B),
        ] {
            tokens.push(next_in_boot(&lock, boot).unwrap());
        }
        tokens.push(next_in_boot(&lock, None).unwrap());
        tokens.push(next_in_boot(&lock, None).unwrap());
        let shown: Vec<String> = tokens.iter().map(Token::to_string).collect();
        assert_eq!(shown, ["1.1", "1.2", "1.3", "2.1", "2.2", "3.1", "4.1"]);
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{shown:?}");
        let kept = record(&lock);
        assert_eq!((kept.epoch, kept.count, kept.boot.as_str()), (4, 1, ""));
    }

    #[test]
    fn the_lock_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        next_in_boot(&lock, Some(BOOT_A)).unwrap();
        let id = record(&lock).lock;
        assert_eq!(id.len(), 32);
        next_in_boot(&lock, Some(BOOT_B)).unwrap();
        assert_eq!(record(&lock).lock, id);
        std::fs::remove_file(path_beside(&lock)).unwrap();
        assert_eq!(next_in_boot(&lock, Some(BOOT_B)).unwrap(), Token::new(1, 1));
        assert_ne!(
            record(&lock).lock,
            id,
            "a file that is gone starts a new id"
        );
    }

    #[test]
    fn a_file_that_is_not_a_token_file_is_moved_aside_and_a_new_id_starts() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let path = path_beside(&lock);
        let hostile = [
            &b"{\"lock\":\"../../etc\",\"boot\":\"\",\"epoch\":1,\"count\":1}"[..],
            b"{\"lock\":\"0123456789abcdef0123456789abcdef\",\"boot\":\"x\",\"epoch\":1,\"count\":1}",
            b"{\"lock\":\"0123456789abcdef0123456789abcdef\",\"boot\":\"\",\"epoch\":-1,\"count\":1}",
            b"{\"lock\":\"0123456789abcdef0123456789abcdef\",\"boot\":\"\",\"epo",
            b"\0\0\0",
        ];
        for bytes in hostile {
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(next_in_boot(&lock, Some(BOOT_A)).unwrap(), Token::new(1, 1));
            assert_eq!(
                std::fs::read(crate::state::unreadable_path(&path)).unwrap(),
                bytes
            );
        }
        std::fs::write(&path, vec![b' '; 2 << 20]).unwrap();
        assert_eq!(
            next_in_boot(&lock, Some(BOOT_A)).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_count_at_its_largest_goes_on_in_the_next_epoch_and_an_epoch_at_its_largest_fails() {
        let id = || "0123456789abcdef0123456789abcdef".to_owned();
        let at = |epoch, count| TokenRecord {
            lock: id(),
            boot: BOOT_A.to_owned(),
            epoch,
            count,
        };
        let (next, durability) = advance(Some(at(5, u64::MAX)), Some(BOOT_A), id).unwrap();
        assert_eq!(
            (next.epoch, next.count, durability),
            (6, 1, Durability::Synced)
        );
        let (next, durability) = advance(Some(at(5, 9)), Some(BOOT_A), id).unwrap();
        assert_eq!(
            (next.epoch, next.count, durability),
            (5, 10, Durability::Renamed)
        );
        let err = advance(Some(at(u64::MAX, u64::MAX)), Some(BOOT_A), id).unwrap_err();
        assert!(err.contains("at its largest"), "{err}");
    }

    #[test]
    fn a_token_file_that_cannot_be_written_fails_and_one_that_is_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let path = path_beside(&lock);
        std::fs::create_dir(&path).unwrap();
        let err = next_in_boot(&lock, Some(BOOT_A)).unwrap_err();
        assert!(err.to_string().contains("token file"), "{err}");
        std::fs::remove_dir(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = next_in_boot(&lock, Some(BOOT_A)).unwrap_err();
        assert!(err.to_string().contains("token file"), "{err}");
    }

    #[test]
    fn this_boot_is_read_from_the_kernel() {
        assert!(this_boot().is_some_and(|id| is_boot_id(&id)));
    }
}
