//! Test support (feature `test-util`): whether a program's man page and its `--help` name the
//! same long options and commands, so that neither can gain or lose one without the other.
//!
//! The page documents an option when its SYNOPSIS names it in bold, or a `.TP` entry of its
//! OPTIONS or COMMANDS section does; a command, when its SYNOPSIS names it in bold after the
//! program's name, or a `.TP` entry of COMMANDS starts with it. `--help` is read as clap prints
//! it: the `Commands:` and `Options:` sections, then each command's own `--help`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The long options (`--config`) and commands (`status`) one side names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    pub options: BTreeSet<String>,
    pub commands: BTreeSet<String>,
}

/// What a man page documents, by where.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ManPage {
    /// Every long option and command the page documents.
    pub documented: Names,
    /// The long options that have an entry of their own in OPTIONS.
    pub described_options: BTreeSet<String>,
}

/// What `--help` lists: the program's own options and commands, and each command's options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Help {
    pub top: Names,
    /// `(command, its options)`, for every command but clap's own `help`.
    pub commands: Vec<(String, BTreeSet<String>)>,
}

/// Runs `program --help` and `program COMMAND --help` for each command it lists.
pub fn help_of(program: &Path) -> Help {
    let run = |args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?} exited {}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("--help is UTF-8")
    };
    let top = parse_help(&run(&["--help"]));
    let commands = top
        .commands
        .iter()
        .map(|command| {
            let own = parse_help(&run(&[command, "--help"]));
            (command.clone(), own.options)
        })
        .collect();
    Help { top, commands }
}

/// The long options and commands in one `--help` text. clap's own `help` command is left out:
/// it is not a command of the program.
pub fn parse_help(text: &str) -> Names {
    let mut names = Names::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let entry = line.trim_start();
        match section {
            // "  -h, --help  ..." or "      --config <PATH>  ...": deeper lines are descriptions.
            // The names end where two spaces start the description (or with the line).
            "Options:" if indent <= 6 && entry.starts_with('-') => {
                let spec = entry.split("  ").next().unwrap_or_default();
                names
                    .options
                    .extend(spec.split([' ', ',']).filter_map(long_option));
            }
            "Commands:" if indent == 2 => {
                if let Some(command) = entry.split_whitespace().next()
                    && command != "help"
                {
                    names.commands.insert(command.to_owned());
                }
            }
            _ => {}
        }
    }
    names
}

/// `word` as a long option (`--lock-file`), with any `=VALUE` or `<VALUE>` left off.
fn long_option(word: &str) -> Option<String> {
    let name = word.strip_prefix("--")?;
    let name: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!name.is_empty()).then(|| format!("--{name}"))
}

/// The bold words of one roff line: a font macro's bold arguments (`.B`, `.BI`, `.BR`, `.IB`,
/// `.RB`), with `\-` read as `-` and quotes and font escapes dropped. Other lines have none.
fn bold_words(line: &str) -> Vec<String> {
    let Some(rest) = line.strip_prefix('.') else {
        return Vec::new();
    };
    let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let fonts: Vec<char> = match name {
        "B" | "BI" | "BR" | "I" | "IB" | "IR" | "RB" | "RI" => name.chars().collect(),
        _ => return Vec::new(),
    };
    let args = args
        .replace("\\-", "-")
        .replace("\\%", "")
        .replace("\\&", "")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "");
    // Arguments are words or "quoted strings"; `.B` and `.I` take all of theirs in one font.
    let mut arguments = Vec::new();
    let mut chars = args.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
        } else if c == '"' {
            chars.next();
            arguments.push(chars.by_ref().take_while(|&c| c != '"').collect::<String>());
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            arguments.push(word);
        }
    }
    arguments
        .iter()
        .enumerate()
        .filter(|(i, _)| fonts[if fonts.len() == 1 { 0 } else { i % 2 }] == 'B')
        .flat_map(|(_, argument)| argument.split_whitespace().map(str::to_owned))
        .collect()
}

/// What the man page `text` of `program` documents.
pub fn parse_man_page(program: &str, text: &str) -> ManPage {
    let mut page = ManPage::default();
    let mut section = String::new();
    let mut tag_next = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix(".SH ") {
            section = name.trim_matches('"').to_owned();
            tag_next = false;
            continue;
        }
        if line == ".TP" {
            tag_next = true;
            continue;
        }
        let is_tag = std::mem::take(&mut tag_next);
        let words = bold_words(line);
        match section.as_str() {
            "SYNOPSIS" => {
                for word in words {
                    if let Some(option) = long_option(&word) {
                        page.documented.options.insert(option);
                    } else if word != program && !word.starts_with('-') {
                        page.documented.commands.insert(word);
                    }
                }
            }
            "OPTIONS" | "COMMANDS" if is_tag => {
                if section == "COMMANDS"
                    && let Some(command) = words.first()
                {
                    page.documented.commands.insert(command.clone());
                }
                for option in words.iter().filter_map(|word| long_option(word)) {
                    if section == "OPTIONS" {
                        page.described_options.insert(option.clone());
                    }
                    page.documented.options.insert(option);
                }
            }
            _ => {}
        }
    }
    page
}

/// Every way `help` and the man page disagree, one sentence each naming the option or command
/// and where it is missing; empty when they agree. `page` names the man page in the sentences.
pub fn mismatches(program: &str, help: &Help, man: &ManPage, page: &str) -> Vec<String> {
    let mut found = Vec::new();
    for option in &help.top.options {
        if !man.described_options.contains(option) {
            found.push(format!(
                "`{program} --help` lists {option}, but the OPTIONS section of {page} has no entry (.TP) for it"
            ));
        }
    }
    for (command, options) in &help.commands {
        if !man.documented.commands.contains(command) {
            found.push(format!(
                "`{program} --help` lists the command {command}, but {page} names it neither in its SYNOPSIS nor in COMMANDS"
            ));
        }
        for option in options.difference(&help.top.options) {
            if !man.documented.options.contains(option) {
                found.push(format!(
                    "`{program} {command} --help` lists {option}, but {page} names it neither in its SYNOPSIS nor in an OPTIONS or COMMANDS entry"
                ));
            }
        }
    }
    let all_options: BTreeSet<&String> = help
        .top
        .options
        .iter()
        .chain(help.commands.iter().flat_map(|(_, options)| options))
        .collect();
    for option in &man.documented.options {
        if !all_options.contains(option) {
            found.push(format!(
                "{page} documents {option}, but no `{program} --help` (nor any command's) lists it"
            ));
        }
    }
    for command in &man.documented.commands {
        if !help.top.commands.contains(command) {
            found.push(format!(
                "{page} documents the command {command}, but `{program} --help` does not list it"
            ));
        }
    }
    found
}

/// Panics, naming every mismatch, unless `program`'s `--help` and the man page at `page` agree.
#[track_caller]
pub fn assert_matches_help(program: &Path, page: &Path) {
    let name = program
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a program name");
    let text = std::fs::read_to_string(page)
        .unwrap_or_else(|e| panic!("cannot read the man page {}: {e}", page.display()));
    let help = help_of(program);
    assert!(
        !help.top.options.is_empty() && !help.top.commands.is_empty(),
        "no options or commands read from `{name} --help`: {help:?}"
    );
    let shown = page.canonicalize().unwrap_or_else(|_| page.to_owned());
    let found = mismatches(
        name,
        &help,
        &parse_man_page(name, &text),
        &shown.display().to_string(),
    );
    assert!(
        found.is_empty(),
        "the man page and --help disagree:\n  {}",
        found.join("\n  ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "\
Collects one report.

Usage: prog [OPTIONS] [COMMAND]

Commands:
  run           Collect one report
  status        Judge whether the collector is healthy
  help          Print this message or the help of the given subcommand(s)

Options:
      --config <PATH>
          Configuration file
          --not-an-option in a description
  -h, --help
          Print help (see a summary with '-h')
  -V, --version
          Print version
";

    const PAGE: &str = r#".TH PROG 8
.SH SYNOPSIS
.B prog
.RI [ options ]
.RB [ run ]
.br
.B prog status
.RB [ \-\-json ]
.SH DESCRIPTION
Mentions
.B \-\-no\-block
of systemctl, which is no option of prog.
.SH OPTIONS
.TP
.BI \-\-config " PATH"
The configuration file.
.TP
.BR \-h ", " \-\-help
Help.
.TP
.BR \-V ", " \-\-version
Version.
"#;

    fn help(top: &str, status: &str) -> Help {
        let top = parse_help(top);
        let commands = top
            .commands
            .iter()
            .map(|command| {
                let own = if command == "status" {
                    parse_help(status)
                } else {
                    parse_help("Options:\n  -h, --help  Print help\n")
                };
                (command.clone(), own.options)
            })
            .collect();
        Help { top, commands }
    }

    const STATUS: &str = "Options:\n      --json  Print JSON\n  -h, --help  Print help\n";

    #[test]
    fn help_is_read_as_clap_prints_it() {
        let names = parse_help(HELP);
        assert_eq!(
            names.options,
            ["--config", "--help", "--version"].map(String::from).into()
        );
        assert_eq!(names.commands, ["run", "status"].map(String::from).into());
        let short =
            parse_help("Options:\n      --lock-file <PATH>  The lock file (overrides lock-file)\n");
        assert_eq!(short.options, ["--lock-file"].map(String::from).into());
    }

    #[test]
    fn the_page_is_read_from_synopsis_and_entries_not_prose() {
        let page = parse_man_page("prog", PAGE);
        assert_eq!(
            page.documented.options,
            ["--config", "--help", "--json", "--version"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            page.documented.commands,
            ["run", "status"].map(String::from).into()
        );
        assert_eq!(
            page.described_options,
            ["--config", "--help", "--version"].map(String::from).into()
        );
    }

    #[test]
    fn agreeing_sides_have_no_mismatch() {
        let found = mismatches(
            "prog",
            &help(HELP, STATUS),
            &parse_man_page("prog", PAGE),
            "p.8",
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn an_option_missing_from_the_page_is_named() {
        let more = HELP.replace(
            "  -h, --help\n",
            "      --trigger <HOW>\n          What started this run\n  -h, --help\n",
        );
        let found = mismatches(
            "prog",
            &help(&more, STATUS),
            &parse_man_page("prog", PAGE),
            "p.8",
        );
        assert_eq!(
            found,
            [
                "`prog --help` lists --trigger, but the OPTIONS section of p.8 has no entry (.TP) for it"
            ]
        );
    }

    #[test]
    fn a_command_or_its_option_missing_from_the_page_is_named() {
        let more = HELP.replace("  help ", "  check-config  Check\n  help ");
        let status = STATUS.replace("  -h,", "      --verbose  More\n  -h,");
        let found = mismatches(
            "prog",
            &help(&more, &status),
            &parse_man_page("prog", PAGE),
            "p.8",
        );
        assert_eq!(
            found,
            [
                "`prog --help` lists the command check-config, but p.8 names it neither in its SYNOPSIS nor in COMMANDS",
                "`prog status --help` lists --verbose, but p.8 names it neither in its SYNOPSIS nor in an OPTIONS or COMMANDS entry",
            ]
        );
    }

    #[test]
    fn what_only_the_page_documents_is_named() {
        let page = format!("{PAGE}.TP\n.BI \\-\\-listen \" ADDR\"\nGone.\n")
            .replace(".B prog status", ".B prog stats");
        let found = mismatches(
            "prog",
            &help(HELP, STATUS),
            &parse_man_page("prog", &page),
            "p.8",
        );
        assert_eq!(
            found,
            [
                "`prog --help` lists the command status, but p.8 names it neither in its SYNOPSIS nor in COMMANDS",
                "p.8 documents --listen, but no `prog --help` (nor any command's) lists it",
                "p.8 documents the command stats, but `prog --help` does not list it",
            ]
        );
    }
}
