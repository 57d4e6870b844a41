//! The flock's fencing token ([`Token`]), kept in `<lock-file>.token` beside the lock file, one
//! line of JSON of a fixed length, `{"lock":"<id>","epoch":E,"count":C,"boot":"<boot id>"}`,
//! each number right-aligned in 20 places (JSON allows the spaces). Runs never delete it; the
//! holder record in the lock file itself stays as it was.
//!
//! Only the holder of the flock reads and writes it, right after taking the lock and before
//! the run sends any request: the kernel's lock is what orders the tokens of one host's runs.
//! What else each guarantee rests on:
//!
//! - **A process killed at any point** leaves the old count or one above it. The line is
//!   written in place by one `pwrite(2)` of 148 bytes at offset 0, which a signal does not
//!   split. Were it cut short all the same, the file would hold the new line's start and the
//!   old one's end; with every number right-aligned in a field of fixed width, that reads as
//!   the old token or a greater one, never a smaller one: the count only ever goes up (also
//!   into a new epoch), and so does the epoch. The boot comes last, so no cut shows a new boot
//!   beside old numbers. (A temp file renamed into place instead cost ext4 about 0.6 ms an
//!   acquisition in `make bench`, 70 times the flock itself.)
//! - **A power cut or a kernel crash** may lose the newest counts, but only together with the
//!   boot: within a boot nothing waits for the disk (the page cache outlives every process
//!   while the kernel runs). The first acquisition of a boot (the kernel's boot id,
//!   `/proc/sys/kernel/random/boot_id`, differs from the file's) raises the epoch, writes the
//!   raised numbers under the old boot and waits until they are on the disk (`fdatasync`, and
//!   the directory's `fsync` when the file is new), and only then writes this boot and hands
//!   the token out. So the first token after any crash is in a higher epoch than every token
//!   handed out before it, and a sync that failed or was interrupted leaves the old boot, so
//!   the next run raises and waits again. That rests on the disk writing the line's 512-byte
//!   sector whole, as PostgreSQL's `pg_control` does, and on the disk losing writes only with
//!   the boot (not a virtual machine's disk rolled back under a running kernel). Without a
//!   readable boot id every acquisition raises the epoch that way.
//! - **The lock's id** (128 random bits) is made when the file is first written and kept with
//!   it. Only removing the file starts a new id (at epoch 1); tokens of different ids are not
//!   to be compared.
//! - **A file that is not a token file** (cut short, overwritten, a value out of range, a
//!   count at its largest) fails the run before any request, showing what it holds (escaped)
//!   and saying to remove it: the count it kept cannot be known, so it is never started again
//!   by a run, as the PostgreSQL lock's `generation` is not. So does one that cannot be read
//!   or written at all (permissions, not a regular file, a full disk).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use crate::files;
use crate::lock::token::Token;

/// Where the token file of the lock file `lock` is.
pub fn path_beside(lock: &Path) -> PathBuf {
    let mut name = lock.as_os_str().to_owned();
    name.push(".token");
    PathBuf::from(name)
}

/// The longest token file read: one this collector writes is [`LINE_LEN`] bytes. A reader
/// takes one byte more, to tell a longer file from one that fills it.
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
/// Returns the lock's id with it: the namespace the token counts in.
pub fn next(lock: &Path) -> io::Result<(Uuid, Token)> {
    issue_in_boot(lock, this_boot().as_deref())
}

/// [`next`]'s token in the boot `boot` (`None`: unknown).
#[cfg(test)]
fn next_in_boot(lock: &Path, boot: Option<&str>) -> io::Result<Token> {
    issue_in_boot(lock, boot).map(|(_, token)| token)
}

/// [`next`] in the boot `boot` (`None`: unknown).
fn issue_in_boot(lock: &Path, boot: Option<&str>) -> io::Result<(Uuid, Token)> {
    let path = path_beside(lock);
    let file = files::open_lock_file(&path).map_err(|e| in_file(&path, "open", e))?;
    let (previous, held) = read(&file, &path).map_err(|e| in_file(&path, "read", e))?;
    let previous_boot = previous.as_ref().map(|p| p.boot.clone());
    let (record, sync) = advance(previous, boot, || uuid::Uuid::new_v4().simple().to_string())
        .map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{why}; remove {} to start a new lock id", path.display()),
            )
        })?;
    let written = if sync {
        // First the raised numbers under the boot they were raised after, on the disk; only
        // then this boot: until it is there, the next run raises the epoch again and waits for
        // the disk again, so a failed or interrupted sync never lets a later run skip its own.
        let before = TokenRecord {
            boot: previous_boot.unwrap_or_else(|| UNKNOWN_BOOT.to_owned()),
            ..record.clone()
        };
        write(&file, &before.line(), held)
            .and_then(|()| file.sync_data())
            .and_then(|()| match held {
                // A new file: its name must survive a crash too, or a new id would start.
                0 => files::sync_dir_of(&path),
                _ => Ok(()),
            })
            .and_then(|()| write(&file, &record.line(), held.max(LINE_LEN)))
    } else {
        write(&file, &record.line(), held)
    };
    written.map_err(|e| in_file(&path, "write", e))?;
    // Checked by `parse` (or made here) already; an id that fails now is one more bad file.
    let id = Uuid::try_parse(&record.lock).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the lock id in {} is not one; remove the file to start a new lock id",
                path.display()
            ),
        )
    })?;
    Ok((id, Token::new(record.epoch, record.count)))
}

/// Puts `line` at the start of `file`, which held `held` bytes, in one write. A longer file
/// (one this collector did not write) keeps its length: the line is padded with spaces, which
/// JSON allows, so the write is still one and nothing is cut after it.
fn write(file: &File, line: &[u8], held: usize) -> io::Result<()> {
    let mut line = line.to_vec();
    if held > line.len() {
        line.pop();
        line.resize(held - 1, b' ');
        line.push(b'\n');
    }
    file.write_all_at(&line, 0)
}

/// `e`, saying which file it was about. A file that is not a regular file is said as every
/// other one is (its error names it and says to remove it).
fn in_file(path: &Path, verb: &str, e: io::Error) -> io::Error {
    if files::not_regular(&e).is_some() {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!("cannot {verb} its token file {}: {e}", path.display()),
    )
}

/// The record in `file` (at `path`) and how many bytes it held: `None` when it is empty. A
/// file that is not a token file is an error that shows what it holds and says what to do: a
/// count that cannot be read is never started again by a run, as the PostgreSQL lock's
/// `generation` is not.
fn read(file: &File, path: &Path) -> io::Result<(Option<TokenRecord>, usize)> {
    let bytes = files::read_start(file, RECORD_MAX)?;
    let held = bytes.len();
    if bytes.is_empty() {
        return Ok((None, 0));
    }
    parse(&bytes).map(|record| (Some(record), held)).map_err(|value| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is not a token file ({value}); the count it kept cannot be known, so no token is handed out: remove {} to start a new lock id",
                path.display()
            ),
        )
    })
}

/// `bytes` as a token file, or what they were (escaped and cut short).
fn parse(bytes: &[u8]) -> Result<TokenRecord, String> {
    let shown =
        || report_common::shown::quoted(&String::from_utf8_lossy(bytes), crate::declined::SHOWN);
    if bytes.len() > RECORD_MAX {
        return Err(format!("more than {RECORD_MAX} bytes"));
    }
    let record: TokenRecord = serde_json::from_slice(bytes).map_err(|_| shown())?;
    let lock_ok =
        uuid::Uuid::try_parse(&record.lock).is_ok_and(|id| id.simple().to_string() == record.lock);
    if !lock_ok || !is_boot_id(&record.boot) {
        return Err(shown());
    }
    Ok(record)
}

impl TokenRecord {
    /// The line written to the file: always [`LINE_LEN`] bytes, the numbers right-aligned.
    fn line(&self) -> Vec<u8> {
        let line = format!(
            "{{\"lock\":\"{}\",\"epoch\":{:>20},\"count\":{:>20},\"boot\":\"{}\"}}\n",
            self.lock, self.epoch, self.count, self.boot,
        )
        .into_bytes();
        debug_assert_eq!(line.len(), LINE_LEN);
        line
    }
}

/// The length of every line this collector writes.
const LINE_LEN: usize = 148;

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

/// A boot id as the kernel writes it: a UUID, hyphenated, in lowercase (36 characters).
fn is_boot_id(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok_and(|id| id.hyphenated().to_string() == text)
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
    fn a_file_that_is_not_a_token_file_fails_and_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let path = path_beside(&lock);
        let id = "0123456789abcdef0123456789abcdef";
        let hostile = [
            format!("{{\"lock\":\"../../etc\",\"boot\":\"{BOOT_A}\",\"epoch\":1,\"count\":1}}"),
            format!("{{\"lock\":\"{id}\",\"boot\":\"x\",\"epoch\":1,\"count\":1}}"),
            format!("{{\"lock\":\"{id}\",\"boot\":\"\",\"epoch\":1,\"count\":1}}"),
            format!("{{\"lock\":\"{id}\",\"boot\":\"{BOOT_A}\",\"epoch\":-1,\"count\":1}}"),
            format!("{{\"lock\":\"{id}\",\"boot\":\"{BOOT_A}\",\"epo"),
            format!(
                "{{\"lock\":\"{id}\",\"boot\":\"{BOOT_A}\",\"epoch\":1,\"count\":18446744073709551615}}"
            ),
            "\u{0}\u{1b}[31m".to_owned(),
            " ".repeat(2 << 20),
        ];
        for bytes in hostile {
            std::fs::write(&path, &bytes).unwrap();
            let err = next_in_boot(&lock, Some(BOOT_A)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let text = err.to_string();
            assert!(
                text.contains(&format!("remove {}", path.display())),
                "{text}"
            );
            assert!(!text.contains('\u{1b}') && text.len() < 600, "{text}");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                bytes,
                "left as it was"
            );
        }
    }

    /// A valid file longer than a line (written by hand, or by a later version) keeps its
    /// length: the line is padded, so one write replaces it.
    #[test]
    fn a_longer_token_file_keeps_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let path = path_beside(&lock);
        let text = format!(
            "{{ \"lock\": \"0123456789abcdef0123456789abcdef\", \"boot\": \"{BOOT_A}\",   \"epoch\": 3, \"count\": 41, \"written-by\": \"a later version, with more to say\" }}\n"
        );
        assert!(text.len() > LINE_LEN);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            next_in_boot(&lock, Some(BOOT_A)).unwrap(),
            Token::new(3, 42)
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), text.len() as u64);
        assert_eq!(
            next_in_boot(&lock, Some(BOOT_B)).unwrap(),
            Token::new(4, 43)
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), text.len() as u64);
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
                            // A cut that shows the new boot shows the new numbers too, so
                            // no run skips the epoch's rise on the strength of it.
                            if read.boot == new.boot && new.boot != old.boot {
                                assert_eq!(
                                    (read.epoch, read.count),
                                    (new.epoch, new.count),
                                    "cut at {cut}"
                                );
                            }
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
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = next_in_boot(&lock, Some(BOOT_A)).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn this_boot_is_read_from_the_kernel() {
        assert!(this_boot().is_some_and(|id| is_boot_id(&id)));
    }
}
