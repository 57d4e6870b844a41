//! `check-config`, worded once for both programs: the configuration a start would use, printed
//! as TOML under a line naming where it came from (exit 0), or why it is refused (exit 78). The
//! TOML is the program's own `Serialize` of its `Config`, so what is printed reads back as the
//! same configuration, and an operator can keep it as the configuration in effect.

use std::fmt;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{ConfigFile, Loaded};
use crate::exit;

/// What `program check-config` prints on stdout for a configuration that passed: the line
/// naming where it came from, `comments` (what the check could not see) as `#` lines, then the
/// configuration.
pub fn effective<C: ConfigFile + Serialize>(
    program: &str,
    loaded: &Loaded<C>,
    comments: &[String],
) -> Result<String, toml::ser::Error> {
    let toml = toml::to_string(&loaded.config)?;
    let from = match &loaded.source {
        Some(path) => path.display().to_string(),
        None => format!("the built-in defaults (no {})", C::DEFAULT_PATH),
    };
    let mut text = format!("# {program}: the configuration is valid; in effect, from {from}:\n");
    for comment in comments {
        text.push_str(&format!("# {comment}\n"));
    }
    text.push_str(&toml);
    Ok(text)
}

/// `check-config` for a configuration that passed: `warnings` on stderr (a deprecated key,
/// still obeyed), then [`effective`] on stdout; exit 0, or 1 if it cannot be written as TOML.
pub fn valid<C: ConfigFile + Serialize>(
    program: &str,
    loaded: &Loaded<C>,
    warnings: &[String],
    comments: &[String],
) -> ExitCode {
    for warning in warnings {
        eprintln!("{program}: {warning}");
    }
    match effective(program, loaded, comments) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{program}: cannot print the configuration: {err}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// `check-config` for a configuration that is refused: `program: why` on stderr; exit 78.
pub fn refused(program: &str, why: &dyn fmt::Display) -> ExitCode {
    eprintln!("{program}: {why}");
    ExitCode::from(exit::CONFIG)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct Sample {
        keep_reports: u32,
    }

    impl ConfigFile for Sample {
        const DEFAULT_PATH: &'static str = "/nonexistent/sample.toml";
    }

    fn loaded(source: Option<&str>) -> Loaded<Sample> {
        Loaded {
            config: Sample { keep_reports: 3 },
            source: source.map(PathBuf::from),
            deprecated: Vec::new(),
        }
    }

    #[test]
    fn the_effective_configuration_names_its_source_and_reads_back() {
        let text = effective("prog", &loaded(Some("/etc/prog.toml")), &[]).unwrap();
        assert_eq!(
            text,
            "# prog: the configuration is valid; in effect, from /etc/prog.toml:\nkeep-reports = 3\n"
        );
        let text = effective("prog", &loaded(None), &["not checked: x".to_owned()]).unwrap();
        assert_eq!(
            text,
            "# prog: the configuration is valid; in effect, from the built-in defaults (no /nonexistent/sample.toml):\n# not checked: x\nkeep-reports = 3\n"
        );
        assert_eq!(
            toml::from_str::<Sample>(&text).unwrap(),
            Sample { keep_reports: 3 }
        );
    }
}
