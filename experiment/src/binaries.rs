//! Finds the real `report-apis` and `report-collector` executables the experiment drives.
//!
//! The experiment measures the shipped programs, never a copy of their logic, so it looks for
//! them where cargo puts them: beside its own executable (or one folder up, for test binaries in
//! `deps/`), unless an environment variable names them.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Environment variable naming the `report-apis` executable.
pub const REPORT_APIS_ENV: &str = "REPORT_APIS_BIN";
/// Environment variable naming the `report-collector` executable.
pub const REPORT_COLLECTOR_ENV: &str = "REPORT_COLLECTOR_BIN";

/// Paths of the two programs under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub report_apis: PathBuf,
    pub report_collector: PathBuf,
}

impl Binaries {
    /// Looks in the environment variables, then beside the running executable.
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = env::current_exe().context("cannot tell where the experiment's executable is")?;
        let dirs = candidate_dirs(&exe);
        Ok(Binaries {
            report_apis: find("report-apis", REPORT_APIS_ENV, &dirs)?,
            report_collector: find("report-collector", REPORT_COLLECTOR_ENV, &dirs)?,
        })
    }
}

/// When cargo started us (`cargo run -p experiment` or a test, so `CARGO` is set), has it build
/// the two programs for the same profile first: a stale binary would be measured otherwise, and
/// `make experiment` stays one command. Anything else (an installed or copied executable) is left
/// to [`Binaries::locate`].
pub fn build_with_cargo() -> anyhow::Result<()> {
    let Some(cargo) = env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = env::current_exe().context("cannot tell where the experiment's executable is")?;
    let profile_dir = candidate_dirs(&exe).pop();
    let profile = profile_dir
        .as_deref()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "report-apis", "-p", "report-collector"]);
    match profile {
        Some("release") => {
            cmd.arg("--release");
        }
        Some("debug") => {}
        _ => return Ok(()),
    }
    let status = cmd
        .status()
        .context("cannot start cargo to build report-apis and report-collector")?;
    if !status.success() {
        bail!(
            "cargo could not build report-apis and report-collector ({status}); fix the build and try again"
        );
    }
    Ok(())
}

fn candidate_dirs(exe: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        if dir.file_name().is_some_and(|name| name == "deps")
            && let Some(profile_dir) = dir.parent()
        {
            dirs.push(profile_dir.to_path_buf());
        }
    }
    dirs
}

fn find(name: &str, var: &str, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let Some(path) = env::var_os(var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{var} names {}, which is not a file; point it at the {name} executable",
                path.display()
            );
        }
        return Ok(path);
    }
    for dir in dirs {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "{name} was not found in {}; build it first with `cargo build --release -p report-apis -p report-collector` \
         (or without --release for a debug experiment), or set {var} to its path",
        looked.join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binaries_also_look_one_folder_up() {
        let dirs = candidate_dirs(Path::new("/t/debug/deps/experiment-abc"));
        assert_eq!(
            dirs,
            vec![PathBuf::from("/t/debug/deps"), PathBuf::from("/t/debug")]
        );
    }

    #[test]
    fn a_missing_program_says_how_to_build_it() {
        let err = find(
            "no-such-program",
            "EXPERIMENT_TEST_UNSET_VARIABLE",
            &[PathBuf::from("/nonexistent")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cargo build --release -p report-apis -p report-collector"),
            "{err}"
        );
    }
}
