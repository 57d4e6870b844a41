//! The flock's fencing token ([`Token`]), kept in `<lock-file>.token` beside the lock file, one
//! line of JSON of a fixed length: `{"lock":"<id>","boot":"<boot id>","epoch":E,"count":C}`,
//! each number right-aligned in 20 places (JSON allows the spaces). Runs never delete it; the
//! holder record in the lock file itself stays as it was.
//!
//! Only the holder of the flock reads and writes it, right after taking the lock and before
//! the run sends any request: the kernel's lock is what orders the tokens of one host's runs.
//! What else each guarantee rests on:
//!
//! - **A process killed at any point** leaves the old count or one above it. The record is
//!   written in place by one `pwrite(2)` of 148 bytes at offset 0, which a signal does
//!   not split. Were it cut short all the same, the file would hold the new record's start and
//!   the old one's end; with every number right-aligned in a field of fixed width, that reads
//!   as the old token or a greater one, never a smaller one: the count only ever goes up (also
//!   into a new epoch), and so does the epoch. (A temp file renamed into place instead cost
//!   ext4 about 0.6 ms an acquisition in `make bench`, 70 times the flock itself.)
//! - **A power cut or a kernel crash** may lose the newest counts, but only together with the
//!   boot: within a boot nothing waits for the disk (the page cache outlives every process
//!   while the kernel runs). The first acquisition of a boot (the kernel's boot id,
//!   `/proc/sys/kernel/random/boot_id`, differs from the file's) raises the epoch and waits
//!   for the disk (`fdatasync`, and the directory's `fsync` when the file is new) before it
//!   hands the token out, so the first token after any crash is in a higher epoch than every
//!   token handed out before it. That rests on the disk writing the record's 512-byte sector
//!   whole, as PostgreSQL's `pg_control` does. Without a readable boot id every acquisition
//!   raises the epoch that way.
//! - **The lock's id** (128 random bits) is made when the file is first written and kept with
//!   it. A file that is gone starts a new id in epoch 1: tokens of different ids are not
//!   compared, so a deleted lock directory starts a fresh count instead of a refused one.
//! - **A file that is not a token file** (cut short, overwritten, a value out of range) is
//!   declined in the journal (`VALUE_DECLINED`), copied to `<lock-file>.token.unreadable` and
//!   overwritten with a new id. One that cannot be read or written at all (permissions, not a
//!   regular file, a full disk) fails the run before it sends any request: a count that might
//!   go back is never handed out.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::declined::Declined;
use crate::files;
use crate::lock::token::Token;

/// Where the token file of the lock file `lock` is.
pub fn path_beside(lock: &Path) -> PathBuf {
    let mut name = lock.as_os_str().to_owned();
    name.push(".token");
    PathBuf::from(name)
}

/// What the journal names as the source of a declined token file.
const SOURCE: &str = "the lock's token file";

/// The most of the file a reader takes: a token file this collector writes is [`LINE_LEN`]
/// bytes.
const RECORD_MAX: usize = 512;

/// Where the kernel tells this boot from every other.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The token file's one line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct TokenRecord {
    /// 32 lowercase hex digits, made once per file.
    lock: String,
    /// The boot in which `count` was last written; [`UNKNOWN_BOOT`] when the boot id could not
    /// be read.
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
    let file = files::open_lock_file(&path).map_err(|e| in_file(&path, "open", e))?;
    let (previous, held) = read(&file, &path).map_err(|e| in_file(&path, "read", e))?;
    let (record, sync) = advance(previous, boot, || uuid::Uuid::new_v4().simple().to_string())
        .map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{why}; remove {} to start a new lock id", path.display()),
            )
        })?;
    write(&file, &record.line(), held, sync).map_err(|e| in_file(&path, "write", e))?;
    if sync && held == 0 {
        // A new file: its name must survive a crash too, or a new id would start.
        files::sync_dir_of(&path).map_err(|e| in_file(&path, "write", e))?;
    }
    Ok(Token::new(record.epoch, record.count))
}

/// Puts `line` at the start of `file`, which held `held` bytes, in one write; with `sync`,
/// waits until it is on the disk.
fn write(file: &File, line: &[u8], held: usize, sync: bool) -> io::Result<()> {
    file.write_all_at(line, 0)?;
    if held != line.len() {
        file.set_len(u64::try_from(line.len()).unwrap_or(u64::MAX))?;
    }
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// `e`, saying which file it was about.
fn in_file(path: &Path, verb: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot {verb} its token file {}: {e}", path.display()),
    )
}

/// The record in `file` (at `path`) and how many bytes it held: `None` when it is empty, or
/// when it is not a token file (then it is declined and copied aside, and a new id starts).
/// `Err` only when the file cannot be read, or copied aside.
fn read(file: &File, path: &Path) -> io::Result<(Option<TokenRecord>, usize)> {
    // Positioned, one byte over the bound: a file that long is not a token file.
    let mut buf = vec![0; RECORD_MAX + 1];
    let mut held = 0;
    while held < buf.len() {
        match file.read_at(&mut buf[held..], u64::try_from(held).unwrap_or(u64::MAX))? {
            0 => break,
            n => held += n,
        }
    }
    let bytes = &buf[..held];
    if bytes.is_empty() {
        return Ok((None, 0));
    }
    match parse(bytes) {
        Ok(record) => Ok((Some(record), held)),
        Err(value) => {
            let aside = crate::state::unreadable_path(path);
            files::write_atomically(&aside, bytes, files::Durability::Renamed)?;
            Declined {
                source: SOURCE,
                field: "record",
                value,
                why: format!(
                    "it is not a token file; copied it to {} and started a new lock id, whose tokens start over",
                    aside.display()
                ),
            }
            .say();
            Ok((None, held))
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
    if !lock_ok || !is_boot_id(&record.boot) {
        return Err(shown());
    }
    Ok(record)
}

impl TokenRecord {
    /// The line written to the file: always [`LINE_LEN`] bytes, the numbers right-aligned.
    fn line(&self) -> Vec<u8> {
        let line = format!(
            "{{\"lock\":\"{}\",\"boot\":\"{}\",\"epoch\":{:>20},\"count\":{:>20}}}\n",
            self.lock, self.boot, self.epoch, self.count,
        )
        .into_bytes();
        debug_assert_eq!(line.len(), LINE_LEN);
        line
    }
}

/// The length of every line this collector writes.
const LINE_LEN: usize = 148;

/// The length of a boot id.
const BOOT_ID_LEN: usize = 36;

/// The boot written when the kernel's boot id cannot be read: the nil UUID, which is never a
/// boot's (the kernel makes a random one), and of the same shape, so the line's length stays.
const UNKNOWN_BOOT: &str = "00000000-0000-0000-0000-000000000000";

/// The record after `previous` for an acquisition in boot `boot`, and whether it must be on
/// the disk before its token is used; `Err` says why no token can follow it.
fn advance(
    previous: Option<TokenRecord>,
    boot: Option<&str>,
    new_id: impl FnOnce() -> String,
) -> Result<(TokenRecord, bool), String> {
    let boot_text = boot.unwrap_or(UNKNOWN_BOOT).to_owned();
    let Some(previous) = previous else {
        let first = TokenRecord {
            lock: new_id(),
            boot: boot_text,
            epoch: 1,
            count: 1,
        };
        return Ok((first, true));
    };
    // The count only ever goes up, also into a new epoch: a write cut short then never reads
    // as a smaller number (see the module's docs).
    let largest = |what| format!("the lock's token {what} is at its largest ({})", u64::MAX);
    let count = previous
        .count
        .checked_add(1)
        .ok_or_else(|| largest("count"))?;
    if boot.is_some_and(|b| b == previous.boot) {
        return Ok((TokenRecord { count, ..previous }, false));
    }
    let epoch = previous
        .epoch
        .checked_add(1)
        .ok_or_else(|| largest("epoch"))?;
    Ok((
        TokenRecord {
            lock: previous.lock,
            boot: boot_text,
            epoch,
            count,
        },
        true,
    ))
}

/// This boot's id, when the kernel says it.
fn this_boot() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_ID).ok()?;
    let id = text.trim();
    is_boot_id(id).then(|| id.to_owned())
}

/// A boot id as the kernel writes it: a UUID, 36 characters of lowercase hex with '-' at
/// the 9th, 14th, 19th and 24th.
fn is_boot_id(text: &str) -> bool {
    text.len() == BOOT_ID_LEN
        && text.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
            }
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

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
        assert_eq!(shown, ["1.1", "1.2", "1.3", "2.4", "2.5", "3.6", "4.7"]);
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{shown:?}");
        let kept = record(&lock);
        assert_eq!(
            (kept.epoch, kept.count, kept.boot.as_str()),
            (4, 7, UNKNOWN_BOOT)
        );
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
    fn a_file_that_is_not_a_token_file_is_copied_aside_and_a_new_id_starts() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let path = path_beside(&lock);
        let hostile = [
            &b"{\"lock\":\"../../etc\",\"boot\":\"\",\"epoch\":1,\"count\":1}"[..],
            b"{\"lock\":\"0123456789abcdef0123456789abcdef\",\"boot\":\"x\",\"epoch\":1,\"count\":1}",
            b"{\"lock\":\"0123456789abcdef0123456789abcdef\",\"boot\":\"\",\"epoch\":1,\"count\":1}",
            b"{\"lock\":\"0123456789abcdef0123456789abcdef\",\"boot\":\"00000000-0000-0000-0000-000000000000\",\"epoch\":-1,\"count\":1}",
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
        // A huge file: only its start is read, copied aside, and the file cut to one record.
        std::fs::write(&path, vec![b' '; 2 << 20]).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(next_in_boot(&lock, Some(BOOT_A)).unwrap(), Token::new(1, 1));
        let kept = std::fs::metadata(&path).unwrap();
        assert_eq!((kept.len(), kept.ino()), (LINE_LEN as u64, inode));
    }

    /// A write cut short leaves the new line's start over the old line's end: every such mix
    /// reads as the old token or a greater one, for counts and epochs of every length.
    #[test]
    fn a_write_cut_anywhere_never_reads_as_a_smaller_token() {
        let numbers = [
            1,
            9,
            10,
            99,
            100,
            12_345,
            999_999,
            u64::MAX / 10,
            u64::MAX - 1,
        ];
        let numbers = &numbers[..];
        let id = "0123456789abcdef0123456789abcdef".to_owned();
        let mut mixes = 0;
        for &epoch in numbers {
            for &count in numbers {
                for boot in [BOOT_A, UNKNOWN_BOOT] {
                    let old = TokenRecord {
                        lock: id.clone(),
                        boot: boot.to_owned(),
                        epoch,
                        count,
                    };
                    for new_boot in [Some(BOOT_A), Some(BOOT_B), None] {
                        let Ok((new, _)) = advance(Some(old.clone()), new_boot, String::new) else {
                            continue; // at its largest: no next line
                        };
                        let (old_line, new_line) = (old.line(), new.line());
                        for cut in 0..=LINE_LEN {
                            let mut mixed = new_line[..cut].to_vec();
                            mixed.extend_from_slice(&old_line[cut..]);
                            let read = parse(&mixed)
                                .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&mixed)));
                            let token = Token::new(read.epoch, read.count);
                            assert!(
                                token >= Token::new(epoch, count),
                                "cut at {cut}: {} after {epoch}.{count}",
                                String::from_utf8_lossy(&mixed)
                            );
                            mixes += 1;
                        }
                    }
                }
            }
        }
        assert!(mixes > 50_000);
    }

    #[test]
    fn the_file_is_written_in_place_at_one_length() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        next_in_boot(&lock, None).unwrap();
        let path = path_beside(&lock);
        let first = std::fs::metadata(&path).unwrap();
        for boot in [Some(BOOT_A), Some(BOOT_A), None] {
            next_in_boot(&lock, boot).unwrap();
            let now = std::fs::metadata(&path).unwrap();
            assert_eq!((now.ino(), now.len()), (first.ino(), LINE_LEN as u64));
        }
    }

    #[test]
    fn the_count_goes_on_into_a_new_epoch_and_either_at_its_largest_fails() {
        let id = || "0123456789abcdef0123456789abcdef".to_owned();
        let at = |epoch, count| TokenRecord {
            lock: id(),
            boot: BOOT_A.to_owned(),
            epoch,
            count,
        };
        let (next, sync) = advance(Some(at(5, 9)), Some(BOOT_B), id).unwrap();
        assert_eq!((next.epoch, next.count, sync), (6, 10, true));
        let (next, sync) = advance(Some(at(5, 9)), Some(BOOT_A), id).unwrap();
        assert_eq!((next.epoch, next.count, sync), (5, 10, false));
        for (epoch, count, boot) in [(5, u64::MAX, BOOT_A), (u64::MAX, 9, BOOT_B)] {
            let err = advance(Some(at(epoch, count)), Some(boot), id).unwrap_err();
            assert!(err.contains("at its largest"), "{err}");
        }
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
