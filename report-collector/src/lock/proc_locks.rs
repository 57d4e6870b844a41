//! Who holds an flock, from `/proc/locks`, without taking the lock.
//!
//! The kernel produces that file a record at a time and keeps it consistent only within one
//! read(2): when another lock is taken or dropped between two reads (builds and package
//! managers take flocks all the time), a line can be skipped. So the file is read with a
//! buffer large enough for one call, and looked at again before a lock is called free.
//!
//! `/proc/locks` names the process that took a lock, not the ones holding it now: a child that
//! inherited the descriptor keeps the lock after its parent exits, and the line goes on naming
//! the parent's pid, which may be reused. [`holds_flock`] asks the process itself.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;

/// How many times `/proc/locks` is read before concluding that nobody holds an inode.
const READS: usize = 3;

/// The pid holding an flock on the inode `major:minor:ino`.
pub fn locking_pid(major: u64, minor: u64, ino: u64) -> Option<u32> {
    (0..READS).find_map(|_| {
        let text = read().ok()?;
        parse(&text, major, minor, ino)
    })
}

fn read() -> io::Result<String> {
    // A spare capacity this large makes std read straight into it, without small probe reads.
    let mut text = String::with_capacity(64 * 1024);
    File::open("/proc/locks")?.read_to_string(&mut text)?;
    Ok(text)
}

/// Finds the active FLOCK line for the inode (waiters, marked `->`, are not holders).
pub fn parse(text: &str, major: u64, minor: u64, ino: u64) -> Option<u32> {
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

/// Whether process `pid` has an open descriptor of the file `dev:ino` that carries an FLOCK:
/// a descriptor whose target stats as that file and whose `/proc/PID/fdinfo/N` lists a
/// `lock:` line for an FLOCK on that inode. `Ok(false)` when the process is gone; `Err` when
/// its descriptors may not be looked at (another user's, or one that changed its user and is
/// no longer dumpable), which a caller must take as "not confirmed".
pub fn holds_flock(pid: u32, dev: u64, ino: u64) -> io::Result<bool> {
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(fds.flatten().any(|fd| {
        // stat follows the magic link to the open file itself, whatever its path now is.
        let same_file =
            std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
        same_file
            && std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| fdinfo_has_flock(&info, ino))
    }))
}

/// Whether an fdinfo text has a `lock:` line for an FLOCK on inode `ino` (the device is not
/// compared: overlay file systems report another one, and the descriptor was matched by stat).
fn fdinfo_has_flock(info: &str, ino: u64) -> bool {
    info.lines()
        .filter_map(|line| line.strip_prefix("lock:"))
        .any(|lock| {
            let fields: Vec<&str> = lock.split_whitespace().collect();
            fields.len() >= 6
                && fields[1] == "FLOCK"
                && fields[5]
                    .rsplit(':')
                    .next()
                    .and_then(|i| i.parse::<u64>().ok())
                    == Some(ino)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_matched_by_device_and_inode() {
        let text = "\
1: POSIX  ADVISORY  WRITE 99 08:01:4242 0 EOF
2: FLOCK  ADVISORY  WRITE 1234 fd:01:4242 0 EOF
2: -> FLOCK  ADVISORY  WRITE 555 fd:01:4242 0 EOF
3: FLOCK  ADVISORY  WRITE 777 08:01:1000 0 EOF
";
        assert_eq!(parse(text, 0xfd, 1, 4242), Some(1234));
        assert_eq!(parse(text, 8, 1, 1000), Some(777));
        assert_eq!(parse(text, 8, 1, 5), None);
        // The same inode on another device is only a fallback.
        assert_eq!(parse(text, 0, 0x2a, 1000), Some(777));
    }

    #[test]
    fn fdinfo_lock_lines_are_matched_by_kind_and_inode() {
        let info = "pos:\t0\nflags:\t0100002\nmnt_id:\t30\nino:\t4242\n\
lock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:4242 0 EOF\n";
        assert!(fdinfo_has_flock(info, 4242));
        assert!(!fdinfo_has_flock(info, 4243));
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 1234 fd:01:4242 0 EOF\n";
        assert!(!fdinfo_has_flock(posix, 4242));
        assert!(!fdinfo_has_flock("pos:\t0\n", 4242));
    }
}
