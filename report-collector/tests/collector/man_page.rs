//! The documentation says what `report-collector --help` says: the man page documents exactly
//! the long options and commands `--help` lists, `--help`, the man page and both READMEs
//! list the same exit codes of `status`, and `--help` and the man page those a run ends with.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use report_collector::commands::Command as Collector;
use report_collector::schedule::DeclaredTrigger;
use report_collector::status::code;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

const MAN_PAGE: &str = "packaging/debian/report-collector/report-collector.8";

#[test]
fn the_man_page_and_help_name_the_same_options_and_commands() {
    report_common::man_page::assert_matches_help(
        Path::new(env!("CARGO_BIN_EXE_report-collector")),
        &repo_file(MAN_PAGE),
    );
}

/// The numbers of `text` (words of digits, punctuation around them left off).
fn numbers(text: &str) -> BTreeSet<u8> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect()
}

/// The codes `--help` lists under `heading` ("Exit codes:", "Exit codes of `status`:").
fn help_codes(heading: &str) -> BTreeSet<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_report-collector"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (_, section) = text
        .split_once(&format!("{heading}\n"))
        .unwrap_or_else(|| panic!("--help has a section {heading:?}"));
    section
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            line.strip_prefix("  ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The codes of the man page's `.TP` entries after `start`, up to the next paragraph or
/// section.
fn man_page_codes(start: &str) -> BTreeSet<u8> {
    let text = read(MAN_PAGE);
    let (_, section) = text
        .split_once(start)
        .unwrap_or_else(|| panic!("the man page has {start:?}"));
    let mut codes = BTreeSet::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        match line {
            ".TP" => codes.extend(numbers(lines.next().unwrap_or_default())),
            _ if line.starts_with(".PP") || line.starts_with(".SH") => break,
            _ => {}
        }
    }
    codes
}

/// The codes of the crate README's table under "## status" (`| code | health | meaning |`).
fn crate_readme_codes() -> BTreeSet<u8> {
    let text = read("report-collector/README.md");
    let (_, table) = text
        .split_once("| code | health | meaning |\n|---|---|---|\n")
        .expect("report-collector/README.md has the table of status's exit codes");
    table
        .lines()
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| line.split('|').nth(1)?.trim().parse().ok())
        .collect()
}

#[test]
fn status_exit_codes_are_listed_alike_in_help_the_man_page_and_the_readmes() {
    let help = help_codes("Exit codes of `status`:");
    let expected = Collector::Status { json: false }.exit_codes();
    assert_eq!(help, expected, "the exit codes of `status` in --help");
    assert_eq!(
        man_page_codes(".B report-collector status\nexits with:\n"),
        help,
        "the exit codes of `status` in {MAN_PAGE} differ from --help's"
    );
    assert_eq!(
        crate_readme_codes(),
        help,
        "the exit codes of `status` in report-collector/README.md differ from --help's"
    );
    // The top README summarises on its `status` line: no code that is not one.
    let readme = read("README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with("report-collector status "))
        .expect("README.md has a `report-collector status` line");
    let summary = numbers(line);
    assert!(
        summary.is_subset(&help) && summary.contains(&code::STALE),
        "README.md's `status` line names exit codes {summary:?}; --help lists {help:?}"
    );
}

#[test]
fn run_exit_codes_are_listed_alike_in_help_and_the_man_page() {
    let help = help_codes("Exit codes:");
    let expected = Collector::Run {
        trigger: DeclaredTrigger::Auto,
    }
    .exit_codes();
    assert_eq!(help, expected, "the exit codes of a run in --help");
    assert_eq!(
        man_page_codes(".SH EXIT STATUS\n"),
        help,
        "the exit codes of a run in {MAN_PAGE} differ from --help's"
    );
}
