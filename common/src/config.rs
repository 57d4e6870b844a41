//! How both programs read their TOML configuration file: one loader, so that a mistake in
//! either file is found and worded the same way (unknown keys refused; the file, line, column
//! and dotted key named in one sentence) and both exit 78 for it, at start, in `check-config`
//! and (report-apis) on reload.
//!
//! A program describes its file by implementing [`ConfigFile`] on its `Config` (which derives
//! `Deserialize` with `deny_unknown_fields` and kebab-case keys) and gets the loader with it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A program's configuration file and its loader. `Default` must be exactly what the packaged
/// file documents: an empty file, or none at the default path, means the defaults.
pub trait ConfigFile: DeserializeOwned + Default {
    /// Where the packaged configuration lives. When this path is absent the defaults apply,
    /// so that the bare program runs anywhere.
    const DEFAULT_PATH: &'static str;

    /// Checks what serde cannot, once the file is read; `Err` says what is wrong and what to
    /// write instead.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Reads and checks the file at `path`; a missing file is an error.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Loads `path` when given; otherwise [`Self::DEFAULT_PATH`] if it exists, else the
    /// defaults. Returns the file actually read, for a start-up log line.
    fn load_or_default(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        Self::load_or(path, Path::new(Self::DEFAULT_PATH))
    }

    /// [`Self::load_or_default`] with another default path.
    fn load_or(
        path: Option<&Path>,
        default: &Path,
    ) -> Result<(Self, Option<PathBuf>), ConfigError> {
        match path {
            Some(path) => Ok((Self::load(path)?, Some(path.to_owned()))),
            None => match Self::load(default) {
                Ok(config) => Ok((config, Some(default.to_owned()))),
                // Only absence means "use the defaults"; a file that is there but unreadable
                // or wrong is still an error.
                Err(ConfigError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok((Self::default(), None))
                }
                Err(err) => Err(err),
            },
        }
    }

    /// Parses and checks TOML text; `path` only names the file in error messages.
    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let packaged = Self::DEFAULT_PATH;
        let place =
            |err: &toml::de::Error| line_and_column(text, err.span().map_or(0, |span| span.start));
        let document = toml::Deserializer::parse(text).map_err(|err| {
            let (line, column) = place(&err);
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: err.message().trim().to_owned(),
                packaged,
            }
        })?;
        // The path tracker names the dotted key toml's own error leaves out.
        let config: Self = serde_path_to_error::deserialize(document).map_err(|err| {
            let key = err.path().to_string();
            let err = err.into_inner();
            let (line, column) = place(&err);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key,
                message: err.message().trim().to_owned(),
                packaged,
            }
        })?;
        config.check().map_err(|message| ConfigError::Rejected {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }
}

/// A configuration file that cannot be used. Every variant means exit code 78 (EX_CONFIG).
#[derive(Debug)]
pub enum ConfigError {
    /// The file cannot be read (or, given explicitly, is not there).
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not TOML.
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        /// The packaged file, which shows every key in use.
        packaged: &'static str,
    },
    /// A key that does not exist or a value of the wrong kind; `key` is dotted
    /// (`report.slowdown`).
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
        /// The packaged file, which documents every key and its default.
        packaged: &'static str,
    },
    /// Read, but refused by [`ConfigFile::check`].
    Rejected { path: PathBuf, message: String },
}

/// One wording for both programs: `FILE:LINE:COLUMN: key `KEY`: what is wrong; what to do`,
/// speaking of keys (the file has keys, not serde's fields) and pointing at the packaged file.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => write!(
                f,
                "cannot read the configuration file {}: {source}; create it or pass another path with --config",
                path.display()
            ),
            Self::Syntax {
                path,
                line,
                column,
                message,
                packaged,
            } => write!(
                f,
                "{}:{line}:{column}: {message}; fix the TOML syntax there (the packaged {packaged} shows every key in use)",
                path.display()
            ),
            Self::Invalid {
                path,
                line,
                column,
                key,
                message,
                packaged,
            } => write!(
                f,
                "{}:{line}:{column}: key `{key}`: {}; fix or remove it (the packaged {packaged} documents every key and its default)",
                path.display(),
                in_words_of_keys(message)
            ),
            Self::Rejected { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

/// serde speaks of "fields"; the file has keys.
fn in_words_of_keys(message: &str) -> String {
    // Only an unknown field's list is a list of keys ("unknown variant" lists values).
    if !message.starts_with("unknown field") {
        return message.to_owned();
    }
    let message = message
        .replace("unknown field", "unknown key")
        .replace("expected one of", "the known keys are")
        .replace("there are no fields", "this table has no keys");
    // serde lists one or two known fields as "expected `a`" and "expected `a` or `b`".
    match message.split_once(", expected `") {
        Some((head, known)) if known.contains("` or `") => {
            format!(
                "{head}, the known keys are `{}",
                known.replace("` or `", "`, `")
            )
        }
        Some((head, known)) => format!("{head}, the only known key is `{known}"),
        None => message,
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct Sample {
        keep_reports: u32,
        policy: String,
        table: Table,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct Table {
        name: String,
    }

    impl ConfigFile for Sample {
        const DEFAULT_PATH: &'static str = "/nonexistent/sample.toml";

        fn check(&self) -> Result<(), String> {
            if self.keep_reports > 10 {
                return Err("keep-reports must be 10 or less".to_owned());
            }
            Ok(())
        }
    }

    #[test]
    fn errors_name_file_line_column_and_dotted_key() {
        let text = "keep-reports = 1\n[table]\n  nmae = \"x\"\n";
        let err = Sample::parse(Path::new("s.toml"), text).unwrap_err();
        match &err {
            ConfigError::Invalid {
                line, column, key, ..
            } => assert_eq!((*line, *column, key.as_str()), (3, 3, "table.nmae")),
            other => panic!("expected an invalid key, got {other:?}"),
        }
        let err = err.to_string();
        assert!(
            err.starts_with(
                "s.toml:3:3: key `table.nmae`: unknown key `nmae`, the only known key is `name`;"
            ),
            "{err}"
        );
        assert!(
            err.ends_with(
                "; fix or remove it (the packaged /nonexistent/sample.toml documents every key and its default)"
            ),
            "{err}"
        );
    }

    #[test]
    fn serde_fields_are_spoken_of_as_keys() {
        for (serde, ours) in [
            (
                "unknown field `x`, expected one of `a`, `b`, `c`",
                "unknown key `x`, the known keys are `a`, `b`, `c`",
            ),
            (
                "unknown field `x`, expected `a` or `b`",
                "unknown key `x`, the known keys are `a`, `b`",
            ),
            (
                "unknown field `x`, expected `a`",
                "unknown key `x`, the only known key is `a`",
            ),
            (
                "unknown field `x`, there are no fields",
                "unknown key `x`, this table has no keys",
            ),
            (
                "invalid type: string \"3\", expected u32",
                "invalid type: string \"3\", expected u32",
            ),
        ] {
            assert_eq!(in_words_of_keys(serde), ours);
        }
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let err = Sample::parse(Path::new("/etc/t.toml"), "keep-reports = 1\n[table\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/t.toml:2:"), "{err}");
        assert!(err.contains("fix the TOML syntax there"), "{err}");
    }

    #[test]
    fn check_runs_after_reading_and_names_the_file() {
        let err = Sample::parse(Path::new("s.toml"), "keep-reports = 11\n").unwrap_err();
        assert!(matches!(err, ConfigError::Rejected { .. }), "{err:?}");
        assert_eq!(err.to_string(), "s.toml: keep-reports must be 10 or less");
    }

    #[test]
    fn only_an_absent_default_file_gives_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let (config, source) = Sample::load_or(None, &missing).unwrap();
        assert_eq!((config, source), (Sample::default(), None));
        assert!(matches!(
            Sample::load_or(Some(&missing), &missing),
            Err(ConfigError::Read { .. })
        ));
        let err = Sample::load(&missing).unwrap_err().to_string();
        assert!(err.contains("pass another path with --config"), "{err}");

        let present = dir.path().join("sample.toml");
        std::fs::write(&present, "keep-reports = 3\n").unwrap();
        let (config, source) = Sample::load_or(None, &present).unwrap();
        assert_eq!(config.keep_reports, 3);
        assert_eq!(source.as_deref(), Some(present.as_path()));

        std::fs::write(&present, "keep-reports = \"3\"\n").unwrap();
        assert!(matches!(
            Sample::load_or(None, &present),
            Err(ConfigError::Invalid { line: 1, .. })
        ));
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_and_column("", 0), (1, 1));
        assert_eq!(line_and_column("a\nbc", 3), (2, 2));
        assert_eq!(line_and_column("é = 1", 2), (1, 2));
        assert_eq!(line_and_column("a", 99), (1, 2));
    }
}
