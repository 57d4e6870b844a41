//! Who a run runs as. The timer's runs are the `report-collector` user, and the lock file, the
//! state file and the reports belong to it. A run started by root by hand (`sudo
//! report-collector run`) would create root-owned files there that the timer's runs can no
//! longer replace or lock; so before it touches anything, a run by root switches to the owner
//! of the lock file's directory, as `runuser -u report-collector` would.
//!
//! The switch comes before any secret is read: the password file is read only when the lock is
//! made, after it (`commands`). A process that changed user is made dumpable again (below), so
//! its new user may read its memory through `/proc/PID/mem`; had it read the root-only
//! password first, that user could have taken it from there. Read after the switch, the
//! password is read with that user's rights: a file that user may not read is refused, naming
//! the user, as a run of the timer's would be.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::config::Config;

/// Why a run by root could not become the directory's owner.
#[derive(Debug, thiserror::Error)]
#[error(
    "running as root, and cannot switch to {user} (uid {uid}), the owner of {dir}: {reason}; \
     run it as that user instead: runuser -u {user} -- report-collector run"
)]
pub struct SwitchError {
    user: String,
    uid: u32,
    dir: String,
    reason: String,
}

impl SwitchError {
    /// Logs the refusal with its `MESSAGE_ID` and the fields OWNER (the user it could not
    /// become) and DIRECTORY (the directory that user owns).
    pub fn log(&self) {
        tracing::error!(
            MESSAGE_ID = report_common::message_id::OWNER_SWITCH_REFUSED,
            OWNER = self.user.as_str(),
            DIRECTORY = self.dir.as_str(),
            "{self}"
        );
    }
}

/// When this process is root and the lock file's directory belongs to another user, becomes
/// that user (its primary group and supplementary groups included). A directory that does not
/// exist yet, or belongs to root, leaves the process as it is.
pub fn become_owner_of(config: &Config) -> Result<(), SwitchError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let dir = config
        .lock_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let uid = Uid::from_raw(meta.uid());
    let error = |user: &str, reason: String| SwitchError {
        user: user.to_owned(),
        uid: uid.as_raw(),
        dir: dir.display().to_string(),
        reason,
    };
    let user = match User::from_uid(uid) {
        Ok(Some(user)) => user,
        Ok(None) => return Err(error(&uid.to_string(), "no such user".to_owned())),
        Err(e) => return Err(error(&uid.to_string(), e.to_string())),
    };
    switch_to(&user).map_err(|e| error(&user.name, e.to_string()))?;
    tracing::info!(
        MESSAGE_ID = report_common::message_id::RAN_AS_OWNER,
        OWNER = user.name.as_str(),
        DIRECTORY = %dir.display(),
        "started as root: running as {} (the owner of {}), so the timer's runs can use what this run leaves",
        user.name,
        dir.display()
    );
    Ok(())
}

fn switch_to(user: &User) -> nix::Result<()> {
    let name = std::ffi::CString::new(user.name.as_str()).map_err(|_| nix::Error::EINVAL)?;
    nix::unistd::initgroups(&name, user.gid)?;
    nix::unistd::setgid(user.gid)?;
    nix::unistd::setuid(user.uid)?;
    // Checked, not assumed: a process that could regain root must not go on.
    if Uid::effective() != user.uid
        || Gid::effective() != user.gid
        || nix::unistd::setuid(Uid::from_raw(0)).is_ok()
    {
        return Err(nix::Error::EPERM);
    }
    // Changing user cleared the dumpable flag, which hands /proc/PID/fd to root: the timer's
    // runs (as this user) could then not confirm this run as the lock's holder, and `replace`
    // would refuse to signal it. Every privilege is gone by now, and no secret has been read
    // (see the module doc), so the process may be the user's own again, as a run started by
    // runuser is.
    nix::sys::prctl::set_dumpable(true)?;
    Ok(())
}
