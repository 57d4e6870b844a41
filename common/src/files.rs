//! How both programs read a whole file that another party may have put there or replaced:
//! the configuration files, the collector's password file and its CA file.
//!
//! A plain `read_to_string` trusts the path. Measured against it: a FIFO in place of a
//! configuration file hung `check-config`, a start and report-apis' reload until someone wrote
//! to it (and a thread caught in that `open()` kept SIGTERM from stopping the server);
//! `/dev/zero` grew `check-config` to 3.9 GB in 3 s; a 30 MB password file ran past 60 s. So
//! [`open`] opens with `O_NONBLOCK` (a FIFO's open returns at once), `O_NOCTTY` and
//! `O_CLOEXEC`, refuses anything fstat does not call a regular file, refuses a file larger
//! than the caller's limit, and [`Bounded::read`] reads at most one byte past the limit (the
//! file may grow between fstat and read). Symbolic links are followed: an operator may link
//! a configuration file from elsewhere, and only what the link leads to is judged.
//!
//! What this cannot bound is a regular file on a file system that does not answer (a hung NFS
//! mount): its read blocks. report-apis therefore also reloads off its runtime's threads,
//! under a timeout.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Why a file was refused before it was read. Carried inside an [`io::Error`] (see
/// [`refusal`]), so that callers keep one error type and word the sentence for their file.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not a regular file: `kind` says what it is ("a FIFO", "a device", ...).
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// Larger than `limit` bytes.
    #[error("{} is larger than {}", path.display(), Size(*limit))]
    TooLarge { path: PathBuf, limit: u64 },
}

impl Refused {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, self)
    }
}

/// The [`Refused`] in `e`, if that is why [`open`] or [`read`] failed.
pub fn refusal(e: &io::Error) -> Option<&Refused> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// A size in the words a limit is given in: `1 MiB`, `64 KiB`, `100 bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{} KiB", n >> 10),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// What a file that is not a regular file is, in words.
pub fn file_kind(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// A regular file of at most `limit` bytes, open for reading and not read yet: its fstat is
/// there for checks to make before the bytes are read (the password file's mode).
#[derive(Debug)]
pub struct Bounded {
    file: File,
    metadata: Metadata,
    path: PathBuf,
    limit: u64,
}

/// Opens `path` (through symbolic links) for reading without ever blocking, and only if it is
/// a regular file of at most `limit` bytes; a refusal is a [`Refused`] (see [`refusal`]).
pub fn open(path: &Path, limit: u64) -> io::Result<Bounded> {
    let not_regular = |kind| {
        Refused::NotRegular {
            path: path.to_owned(),
            kind,
        }
        .into_io()
    };
    // Judged by its path first, so that a device named by mistake is not even opened (opening
    // some has effects of its own); judged again below by what was opened, which is what counts.
    let before = std::fs::metadata(path)?;
    if !before.is_file() {
        return Err(not_regular(file_kind(before.file_type())));
    }
    let file = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // A socket put there since: open(2) says ENXIO; say what it is.
            Some(nix::libc::ENXIO) => match std::fs::metadata(path) {
                Ok(m) if !m.is_file() => not_regular(file_kind(m.file_type())),
                _ => e,
            },
            _ => e,
        })?;
    // O_NONBLOCK stays set: it changes nothing for a regular file, and nothing else is read.
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(not_regular(file_kind(metadata.file_type())));
    }
    let bounded = Bounded {
        file,
        metadata,
        path: path.to_owned(),
        limit,
    };
    if bounded.metadata.len() > limit {
        return Err(bounded.too_large());
    }
    Ok(bounded)
}

/// The whole of `path`, a regular file of at most `limit` bytes (see [`open`]).
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    open(path, limit)?.read()
}

impl Bounded {
    /// What fstat said of the file opened.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Reads the file to its end, refusing it if it has grown past the limit since it was
    /// opened: at most `limit + 1` bytes are ever read.
    pub fn read(self) -> io::Result<Vec<u8>> {
        let expected = usize::try_from(self.metadata.len().min(self.limit)).unwrap_or(0);
        let mut bytes = Vec::with_capacity(expected.saturating_add(1));
        (&self.file)
            .take(self.limit.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > self.limit {
            return Err(self.too_large());
        }
        Ok(bytes)
    }

    fn too_large(&self) -> io::Error {
        Refused::TooLarge {
            path: self.path.clone(),
            limit: self.limit,
        }
        .into_io()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Every case must be answered at once: a blocking open or an endless read fails here.
    fn promptly<T>(what: &str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let value = f();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            started.elapsed()
        );
        value
    }

    fn refused(path: &Path, limit: u64) -> Refused {
        let err = promptly(&path.display().to_string(), || read(path, limit)).unwrap_err();
        match err.into_inner().map(|inner| inner.downcast::<Refused>()) {
            Some(Ok(refused)) => *refused,
            other => panic!("{}: not refused: {other:?}", path.display()),
        }
    }

    #[test]
    fn a_regular_file_within_the_limit_is_read_whole_and_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read(&path, 5).unwrap(), b"12345");
        assert_eq!(read(&path, 1 << 20).unwrap(), b"12345");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(read(&link, 5).unwrap(), b"12345");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(&path, 0).unwrap(), b"");
    }

    #[test]
    fn a_fifo_a_device_a_directory_and_a_socket_are_refused_by_name_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let link_to_fifo = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link_to_fifo).unwrap();
        for (path, kind) in [
            (fifo.as_path(), "a FIFO"),
            (link_to_fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a device"),
            (dir.path(), "a directory"),
            (socket.as_path(), "a socket"),
        ] {
            let said = refused(path, 1 << 20);
            assert!(
                matches!(&said, Refused::NotRegular { kind: k, .. } if *k == kind),
                "{said:?}"
            );
            assert_eq!(
                said.to_string(),
                format!("{} is {kind}, not a regular file", path.display())
            );
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; (64 << 10) + 1]).unwrap();
        let said = refused(&path, 64 << 10);
        assert_eq!(
            said.to_string(),
            format!("{} is larger than 64 KiB", path.display())
        );
        // A file that grows between fstat and read is still read no further than the limit.
        std::fs::write(&path, b"1234").unwrap();
        let opened = open(&path, 4).unwrap();
        std::fs::write(&path, b"123456789").unwrap();
        let err = opened.read().unwrap_err();
        assert!(
            matches!(refusal(&err), Some(Refused::TooLarge { limit: 4, .. })),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_not_found_and_not_a_refusal() {
        let err = read(Path::new("/nonexistent/file"), 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(refusal(&err).is_none());
    }

    #[test]
    fn sizes_are_written_as_limits_are_given() {
        assert_eq!(Size(1 << 20).to_string(), "1 MiB");
        assert_eq!(Size(64 << 10).to_string(), "64 KiB");
        assert_eq!(Size(1000).to_string(), "1000 bytes");
        assert_eq!(Size(0).to_string(), "0 bytes");
    }
}
