//! How both programs read their TOML configuration file: one loader, so that a mistake in
//! either file is found and worded the same way (unknown keys refused; the file, line, column
//! and dotted key named in one sentence) and both exit 78 for it, at start, in `check-config`
//! and (report-apis) on reload. The file is read as [`crate::files`] reads any file another
//! party may have replaced: never blocking, a regular file only, at most [`MAX_FILE_SIZE`].
//!
//! A program describes its file by implementing [`ConfigFile`] on its `Config` (which derives
//! `Deserialize` with `deny_unknown_fields` and kebab-case keys) and gets the loader with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::files;

/// The most a configuration file may hold. The packaged files are 3 and 9 KiB with every key
/// commented; a hundred times that is still a configuration, while a path that names a log or
/// an image by mistake costs one MiB read and a refusal, not the whole file parsed.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// A program's configuration file and its loader. `Default` must be exactly what the packaged
/// file documents: an empty file, or none at the default path, means the defaults.
pub trait ConfigFile: DeserializeOwned + Default {
    /// Where the packaged configuration lives. When this path is absent the defaults apply,
    /// so that the bare program runs anywhere.
    const DEFAULT_PATH: &'static str;

    /// Checks what serde cannot (ranges, values that depend on each other), once the file is
    /// read; `Err` names the key and says what is wrong and what to write instead. The loader
    /// finds the key's line in the file.
    fn check(&self) -> Result<(), Refusal> {
        Ok(())
    }

    /// Top-level keys that are still read but deprecated. [`Loaded::deprecated`] names the ones
    /// a file sets, so that `check-config` can say so without reading the file again.
    const DEPRECATED_KEYS: &'static [&'static str] = &[];

    /// Reads and checks the file at `path`; a missing file is an error, and so is one that is
    /// not a regular file or is larger than [`MAX_FILE_SIZE`].
    fn load(path: &Path) -> Result<Self, ConfigError> {
        load_file::<Self>(path).map(|loaded| loaded.config)
    }

    /// Loads `path` when given; otherwise [`Self::DEFAULT_PATH`] if it exists, else the
    /// defaults. [`Loaded::source`] is the file actually read, for a start-up log line and
    /// `check-config`.
    fn load_or_default(path: Option<&Path>) -> Result<Loaded<Self>, ConfigError> {
        Self::load_or(path, Path::new(Self::DEFAULT_PATH))
    }

    /// [`Self::load_or_default`] with another default path.
    fn load_or(path: Option<&Path>, default: &Path) -> Result<Loaded<Self>, ConfigError> {
        match path {
            Some(path) => load_file(path),
            None => match load_file(default) {
                Ok(loaded) => Ok(loaded),
                // Only absence means "use the defaults"; a file that is there but unreadable
                // or wrong is still an error.
                Err(ConfigError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(Loaded {
                        config: Self::default(),
                        source: None,
                        deprecated: Vec::new(),
                    })
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
        config.check().map_err(|refusal| ConfigError::Rejected {
            path: path.to_owned(),
            place: locate_key(text, &refusal.key).map(|offset| line_and_column(text, offset)),
            key: refusal.key,
            message: refusal.message,
        })?;
        Ok(config)
    }
}

/// A configuration as loaded: its values, the file they came from and what else a program may
/// have to say about that file, from the one read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<C> {
    pub config: C,
    /// The file read; `None` when there was none at the default path and the defaults apply.
    pub source: Option<PathBuf>,
    /// The keys of [`ConfigFile::DEPRECATED_KEYS`] the file sets, in that order.
    pub deprecated: Vec<&'static str>,
}

/// Reads `path` as [`ConfigFile::load`] describes, parses and checks it, and notes the
/// deprecated keys it sets.
fn load_file<C: ConfigFile>(path: &Path) -> Result<Loaded<C>, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = files::read(path, MAX_FILE_SIZE).map_err(read)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let config = C::parse(path, &text)?;
    let deprecated = C::DEPRECATED_KEYS
        .iter()
        .copied()
        .filter(|key| locate_key(&text, key).is_some())
        .collect();
    Ok(Loaded {
        config,
        source: Some(path.to_owned()),
        deprecated,
    })
}

/// A configuration file that cannot be used. Every variant means exit code 78 (EX_CONFIG).
#[derive(Debug)]
pub enum ConfigError {
    /// The file cannot be read (or, given explicitly, is not there), or was refused unread (see
    /// [`files::refusal`]).
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
    /// Read, but refused by [`ConfigFile::check`]; `place` is the key's line and column, or
    /// `None` when the file does not set it (a default that conflicts with another key).
    Rejected {
        path: PathBuf,
        place: Option<(usize, usize)>,
        key: String,
        message: String,
    },
}

/// A value read without error that the program cannot use: its dotted key (`heavy-load.period`)
/// and a message saying what is wrong and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub message: String,
}

impl Refusal {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

/// Refuses a duration outside `min..=max`, naming the allowed range in the file's own units.
pub fn duration_within(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), Refusal> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(Refusal::new(
        key,
        format!(
            "{} is outside the allowed range; write a duration from {} to {}",
            humantime::format_duration(value),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ),
    ))
}

/// Refuses a number outside `min..=max`, naming the allowed range.
pub fn number_within<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Refusal> {
    if value >= min && value <= max {
        return Ok(());
    }
    Err(Refusal::new(
        key,
        format!("{value} is outside the allowed range; write a number from {min} to {max}"),
    ))
}

/// One wording for both programs: `FILE:LINE:COLUMN: key `KEY`: what is wrong; what to do`,
/// speaking of keys (the file has keys, not serde's fields) and pointing at the packaged file.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => read_failed(f, path, source),
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
            Self::Rejected {
                path,
                place: Some((line, column)),
                key,
                message,
            } => write!(
                f,
                "{}:{line}:{column}: key `{key}`: {message}",
                path.display()
            ),
            Self::Rejected {
                path,
                place: None,
                key,
                message,
            } => write!(
                f,
                "{}: key `{key}` (not set in the file, its default): {message}",
                path.display()
            ),
        }
    }
}

/// Why the configuration file at `path` could not be read (`source`), and what to do.
fn read_failed(f: &mut fmt::Formatter<'_>, path: &Path, source: &std::io::Error) -> fmt::Result {
    match files::refusal(source) {
        Some(files::Refused::NotRegular { kind, .. }) => write!(
            f,
            "the configuration file {} is {kind}, not a regular file: replace it with a regular file or pass another path with --config",
            path.display()
        ),
        Some(files::Refused::TooLarge { limit, .. }) => write!(
            f,
            "the configuration file {} is larger than {}, more than any configuration needs: check that it is the right file or pass another path with --config",
            path.display(),
            files::Size(*limit)
        ),
        None if source.kind() == std::io::ErrorKind::NotFound => write!(
            f,
            "cannot read the configuration file {}: {source}; create it or pass another path with --config",
            path.display()
        ),
        None => write!(
            f,
            "cannot read the configuration file {}: {source}; fix it or pass another path with --config",
            path.display()
        ),
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

/// The byte offset where the dotted `key` is written in `text` (`a.b` as `[a]` then `b = ..`,
/// or as `a.b = ..`), or `None` when the file does not set it.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, value) = table.get_key_value(part)?;
        if parts.peek().is_none() {
            return Some(name.span().start);
        }
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return None,
        }
    }
    None
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
        const DEPRECATED_KEYS: &'static [&'static str] = &["policy", "table.name"];

        fn check(&self) -> Result<(), Refusal> {
            number_within("keep-reports", self.keep_reports, 1, 10)?;
            if self.table.name == "bad" {
                return Err(Refusal::new(
                    "table.name",
                    "`bad` is refused; write another name",
                ));
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
    fn check_runs_after_reading_and_names_file_line_and_key() {
        let err = Sample::parse(Path::new("s.toml"), "# c\nkeep-reports = 11\n").unwrap_err();
        assert!(matches!(err, ConfigError::Rejected { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "s.toml:2:1: key `keep-reports`: 11 is outside the allowed range; write a number from 1 to 10"
        );
        for text in [
            "keep-reports = 2\n[table]\n  name = \"bad\"\n",
            "keep-reports = 2\ntable.name = \"bad\"\n",
            "keep-reports = 2\ntable = { name = \"bad\" }\n",
        ] {
            let err = Sample::parse(Path::new("s.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("s.toml:"), "{err}");
            let line = err.split(':').nth(1).unwrap();
            assert_ne!(line, "1", "{text:?}: {err}");
            assert!(
                err.contains(": key `table.name`: `bad` is refused"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_default_that_is_refused_is_named_as_not_set() {
        let err = Sample::parse(Path::new("s.toml"), "")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "s.toml: key `keep-reports` (not set in the file, its default): 0 is outside the allowed range; write a number from 1 to 10"
        );
    }

    #[test]
    fn ranges_name_the_value_and_the_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(duration_within("p", ms(5), ms(5), ms(10)), Ok(()));
        assert_eq!(duration_within("p", ms(10), ms(5), ms(10)), Ok(()));
        assert_eq!(
            duration_within(
                "p",
                Duration::from_nanos(1),
                ms(5),
                Duration::from_secs(86_400)
            )
            .unwrap_err()
            .to_string(),
            "key `p`: 1ns is outside the allowed range; write a duration from 5ms to 1day"
        );
        assert!(number_within("f", f64::NAN, 0.0, 1.0).is_err());
        assert!(number_within("f", 1.5, 0.0, 1.0).is_err());
        assert_eq!(number_within("f", 0.5, 0.0, 1.0), Ok(()));
    }

    #[test]
    fn only_an_absent_default_file_gives_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let loaded = Sample::load_or(None, &missing).unwrap();
        assert_eq!((loaded.config, loaded.source), (Sample::default(), None));
        assert!(matches!(
            Sample::load_or(Some(&missing), &missing),
            Err(ConfigError::Read { .. })
        ));
        let err = Sample::load(&missing).unwrap_err().to_string();
        assert!(err.contains("pass another path with --config"), "{err}");

        let present = dir.path().join("sample.toml");
        std::fs::write(&present, "keep-reports = 3\n").unwrap();
        let loaded = Sample::load_or(None, &present).unwrap();
        assert_eq!(loaded.config.keep_reports, 3);
        assert_eq!(loaded.source.as_deref(), Some(present.as_path()));

        std::fs::write(&present, "keep-reports = \"3\"\n").unwrap();
        assert!(matches!(
            Sample::load_or(None, &present),
            Err(ConfigError::Invalid { line: 1, .. })
        ));
    }

    #[test]
    fn the_load_names_the_deprecated_keys_the_file_sets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.toml");
        for (text, deprecated) in [
            ("keep-reports = 3\n", &[][..]),
            ("keep-reports = 3\npolicy = \"x\"\n", &["policy"]),
            ("keep-reports = 3\n[table]\nname = \"n\"\n", &["table.name"]),
        ] {
            std::fs::write(&path, text).unwrap();
            let loaded = Sample::load_or(Some(&path), &path).unwrap();
            assert_eq!(loaded.deprecated, deprecated, "{text:?}");
        }
        let defaults = Sample::load_or(None, &dir.path().join("none.toml")).unwrap();
        assert!(defaults.deprecated.is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_regular_file_or_too_large_is_refused_in_a_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let big = dir.path().join("big.toml");
        let line = "# a comment\n";
        std::fs::write(
            &big,
            line.repeat(usize::try_from(MAX_FILE_SIZE).unwrap() / line.len() + 1),
        )
        .unwrap();
        for (path, said) in [
            (
                fifo.as_path(),
                "is a FIFO, not a regular file: replace it with a regular file",
            ),
            (Path::new("/dev/zero"), "is a device, not a regular file:"),
            (
                big.as_path(),
                "is larger than 1 MiB, more than any configuration needs",
            ),
        ] {
            // Not even as the default path: only absence means the defaults.
            let err = Sample::load_or(None, path).unwrap_err();
            assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
            let err = err.to_string();
            let wanted = format!("the configuration file {} {said}", path.display());
            assert!(err.starts_with(&wanted), "{wanted:?} in {err}");
            assert!(err.ends_with("pass another path with --config"), "{err}");
        }
        // A file of exactly the limit is read (and here, being empty of keys, checked).
        std::fs::write(&big, " ".repeat(usize::try_from(MAX_FILE_SIZE).unwrap())).unwrap();
        assert!(matches!(
            Sample::load_or(None, &big),
            Err(ConfigError::Rejected { .. })
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
