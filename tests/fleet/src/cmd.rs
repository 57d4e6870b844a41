//! Running the system's tools (`ip`, `iptables`, `tc`, `pg_ctl`, `psql`), each bounded in time
//! and failing with its own words.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Runs `program args` to its end within `within`; its stdout, or an error quoting stderr.
pub async fn run<I, S>(program: &str, args: I, within: Duration) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = || {
        let mut words = vec![program.to_owned()];
        words.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
        words.join(" ")
    };
    let child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", shown()))?;
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .with_context(|| format!("{} did not end within {within:?}", shown()))?
        .with_context(|| format!("cannot wait for {}", shown()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            shown(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The same inside network namespace `ns`.
pub async fn in_ns<I, S>(ns: &str, args: I, within: Duration) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = vec!["netns".into(), "exec".into(), ns.into()];
    all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    run("ip", all, within).await
}
