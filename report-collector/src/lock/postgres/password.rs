//! The password of the PostgreSQL lock: which file holds it (the configured one, else the
//! systemd credential) and reading it, once, when the lock is made. Configuration only names
//! the file; this is where it is read.

use std::path::{Path, PathBuf};

use crate::config::PostgresConfig;

/// The name of the systemd credential (`LoadCredential=`) that holds the password.
pub const CREDENTIAL_NAME: &str = "postgres-password";

/// The password file in effect: the configured one, else systemd's credential if present.
pub fn password_file(config: &PostgresConfig) -> Option<PathBuf> {
    config.password_file.clone().or_else(|| {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        let path = PathBuf::from(dir).join(CREDENTIAL_NAME);
        path.is_file().then_some(path)
    })
}

/// The most a password file may hold. A password is a line; 64 KiB is far beyond any, and
/// a path that names the wrong file (a log, a device) is refused at once rather than read whole.
pub const MAX_PASSWORD_FILE_SIZE: u64 = 64 << 10;

/// The password in `path`, without its final line break. Read as [`report_common::files`]
/// reads any file (never blocking, a regular file of at most [`MAX_PASSWORD_FILE_SIZE`]), and
/// refused before a byte is read when the file opened may be read by group or others: the
/// password would be theirs too.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    use report_common::files::{self, Refused};
    use std::os::unix::fs::PermissionsExt as _;
    let cannot = |e: std::io::Error| match files::refusal(&e) {
        Some(Refused::NotRegular { kind, .. }) => format!(
            "the password file {} is {kind}, not a regular file: put the password alone in a regular file (chmod 600) and name that",
            path.display()
        ),
        Some(Refused::TooLarge { limit, .. }) => format!(
            "the password file {} is larger than {}, more than any password: name the file that holds the password alone",
            path.display(),
            files::Size(*limit)
        ),
        None if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .ok()
                .flatten()
                .map_or_else(|| nix::unistd::Uid::effective().to_string(), |u| u.name);
            format!(
                "cannot read the password file {}: {e}; the collector reads it as {user}: give the file to that user (chown {user} {}; chmod 600 {})",
                path.display(),
                path.display(),
                path.display()
            )
        }
        None => format!("cannot read the password file {}: {e}", path.display()),
    };
    let file = files::open(path, MAX_PASSWORD_FILE_SIZE).map_err(cannot)?;
    let mode = file.metadata().permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the password file {} may be read by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    let bytes = file.read().map_err(cannot)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "the password file {} is not UTF-8 text; write the password alone in it",
            path.display()
        )
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_password_file_is_a_private_regular_file_of_bounded_size_or_refused_at_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let private = |path: &Path| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let good = dir.path().join("password");
        std::fs::write(&good, "hunter2\r\n").unwrap();
        private(&good);
        assert_eq!(read_password_file(&good).unwrap(), "hunter2");

        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_password_file(&good).unwrap_err();
        assert!(err.contains("(mode 640); run `chmod 600"), "{err}");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 30 << 20]).unwrap();
        private(&big);
        let directory = dir.path().join("directory");
        std::fs::create_dir(&directory).unwrap();
        private(&directory);
        for (path, said) in [
            (
                fifo.as_path(),
                "is a FIFO, not a regular file: put the password alone",
            ),
            (Path::new("/dev/zero"), "is a device, not a regular file:"),
            (directory.as_path(), "is a directory, not a regular file:"),
            (
                big.as_path(),
                "is larger than 64 KiB, more than any password",
            ),
        ] {
            let started = std::time::Instant::now();
            let err = read_password_file(path).unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(2), "{err}");
            let wanted = format!("the password file {} {said}", path.display());
            assert!(err.starts_with(&wanted), "{wanted:?} in {err}");
        }
    }
}
