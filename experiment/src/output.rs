//! Saves an outcome as `results.md` and `pending.svg` in one folder.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::chart::pending_svg;
use crate::experiment::Outcome;
use crate::shape::Verdict;
use crate::table::results_page;

/// Writes both files into `dir` (created if missing) and returns their paths.
pub fn save(
    outcome: &Outcome,
    verdict: &Verdict,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}; pass --out with a folder you can write",
            dir.display()
        )
    })?;
    let page = dir.join("results.md");
    let chart = dir.join("pending.svg");
    fs::write(&page, results_page(outcome, verdict))
        .with_context(|| format!("cannot write {}", page.display()))?;
    fs::write(&chart, pending_svg(outcome)?)
        .with_context(|| format!("cannot write {}", chart.display()))?;
    Ok((page, chart))
}
