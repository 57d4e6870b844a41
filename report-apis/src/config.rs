//! The server's TOML configuration file and its documented defaults.
//!
//! Read by the one loader both programs share ([`report_common::config`]), so that a mistake in
//! the file is always reported the same way: file, line, column and (past the TOML syntax) the
//! dotted key, which `main` turns into exit code 78. `Serialize` writes the same keys, so a
//! configuration built in code (the experiment's) is a file this loader reads back.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use report_common::config::{
    ConfigError, ConfigFile, Loaded, Refusal, duration_within, number_within,
};
use serde::{Deserialize, Deserializer, Serialize};

/// Where the packaged configuration lives; when this default path is absent the built-in
/// defaults apply, so a bare `report-apis` runs anywhere.
pub const DEFAULT_PATH: &str = "/etc/report-apis/config.toml";

/// Where a start, a reload and `check-config` take the configuration from: the file
/// (`--config`, else [`DEFAULT_PATH`] if it exists, else the defaults), then `--listen` over it.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

impl Source {
    /// The configuration as a start uses it; logs which file it was read from.
    pub fn load(&self) -> Result<Loaded<Config>, ConfigError> {
        let mut loaded = Config::load_or_default(self.file.as_deref())?;
        match &loaded.source {
            Some(path) => tracing::info!("configuration read from {}", path.display()),
            None => tracing::info!("no {DEFAULT_PATH}: using the built-in defaults"),
        }
        if let Some(listen) = self.listen {
            loaded.config.listen = listen;
        }
        Ok(loaded)
    }

    /// The file a start or a reload reads, as the journal's `CONFIG_FILE` names it.
    pub fn file_name(&self) -> String {
        self.file.as_deref().map_or_else(
            || DEFAULT_PATH.to_owned(),
            |path| path.display().to_string(),
        )
    }
}

/// The whole configuration. `Default` is exactly what `config/report-apis.toml` documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Address and port the HTTP server binds.
    pub listen: SocketAddr,
    pub heavy_load: HeavyLoad,
    pub report: Report,
    pub limits: Limits,
    pub shutdown: Shutdown,
    pub fence: Fencing,
}

/// The periodic heavy-load phases during which no report is served and none progresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HeavyLoad {
    /// Time between two toggles; zero means the state never changes.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Whether the server starts in a heavy-load phase.
    pub initially_on: bool,
}

/// How long a report takes to generate and how much every other pending ticket slows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Report {
    /// Generation time of a report when it is the only pending ticket.
    #[serde(with = "humantime_serde")]
    pub generation_time: Duration,
    /// Extra generation time per other pending ticket, as a fraction of `generation_time`.
    #[serde(deserialize_with = "non_negative_finite")]
    pub slowdown: f64,
}

/// Bounds on what the server holds in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Limits {
    /// Most tickets held at once, in any state; past it `/request_report` answers 503.
    #[serde(deserialize_with = "positive_count")]
    pub max_pending: usize,
    /// How long a ready report stays fetchable; a ticket never ready expires after 3x this.
    #[serde(
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "positive_duration"
    )]
    pub ticket_ttl: Duration,
    /// Most connections served at once; further ones wait in the listen backlog. Lowered at
    /// start to what the open-file limit leaves room for. Needs a restart.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after it was opened,
    /// or after its previous response, is closed: slow senders and idle keep-alive alike.
    /// Needs a restart.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Most locks whose mark the server keeps ([`crate::fence`]); a request naming a new lock
    /// past it is refused with 503. A lower value on reload evicts no mark.
    pub max_locks: usize,
}

/// The fence of collector requests ([`crate::fence`]): enforced or not, and where the marks
/// are kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Fencing {
    /// Refuse requests whose token is below their lock's mark. Off only for comparison (an
    /// experiment's control arm): the server then acts as before the fence existed.
    pub enforce: bool,
    /// The JSON file of every lock's mark, written before a raised mark is acknowledged and
    /// read at start. Needs a restart.
    pub state_file: PathBuf,
}

/// Graceful shutdown on SIGTERM/SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Shutdown {
    /// Longest wait for open connections to finish before the server exits anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            heavy_load: HeavyLoad::default(),
            report: Report::default(),
            limits: Limits::default(),
            shutdown: Shutdown::default(),
            fence: Fencing::default(),
        }
    }
}

impl Default for HeavyLoad {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(120),
            initially_on: false,
        }
    }
}

impl Default for Report {
    fn default() -> Self {
        Self {
            generation_time: Duration::from_secs(1),
            slowdown: 1.0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pending: 10_000,
            ticket_ttl: Duration::from_secs(600),
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            max_locks: 1024,
        }
    }
}

/// Where the packaged unit's `StateDirectory=report-apis` puts the marks.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/report-apis/fence.json";

impl Default for Fencing {
    fn default() -> Self {
        Self {
            enforce: true,
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl ConfigFile for Config {
    const DEFAULT_PATH: &'static str = DEFAULT_PATH;

    /// The documented ranges (README, report-apis(8), the packaged file): wide enough for the
    /// experiment's compressed time and for tests, narrow enough that no value makes the
    /// server spin (a heavy-load period of 1 ns toggles in a busy loop) or its time arithmetic
    /// reach the ends of its types.
    fn check(&self) -> Result<(), Refusal> {
        check_heavy_load_period(self.heavy_load.period)?;
        let within = |key, value, range: &RangeInclusive<Duration>| {
            duration_within(key, value, *range.start(), *range.end())
        };
        let count_within = |key, value, range: &RangeInclusive<usize>| {
            number_within(key, value, *range.start(), *range.end())
        };
        within(
            "report.generation-time",
            self.report.generation_time,
            &ranges::GENERATION_TIME,
        )?;
        number_within(
            "report.slowdown",
            self.report.slowdown,
            *ranges::SLOWDOWN.start(),
            *ranges::SLOWDOWN.end(),
        )?;
        count_within(
            "limits.max-pending",
            self.limits.max_pending,
            &ranges::MAX_PENDING,
        )?;
        within(
            "limits.ticket-ttl",
            self.limits.ticket_ttl,
            &ranges::TICKET_TTL,
        )?;
        count_within(
            "limits.max-connections",
            self.limits.max_connections,
            &ranges::MAX_CONNECTIONS,
        )?;
        within(
            "limits.header-timeout",
            self.limits.header_timeout,
            &ranges::HEADER_TIMEOUT,
        )?;
        count_within(
            "limits.max-locks",
            self.limits.max_locks,
            &ranges::MAX_LOCKS,
        )?;
        within(
            "shutdown.drain-timeout",
            self.shutdown.drain_timeout,
            &ranges::DRAIN_TIMEOUT,
        )?;
        check_state_file(&self.fence.state_file)
    }
}

/// A heavy-load period is 0 (never toggle) or within its range.
fn check_heavy_load_period(period: Duration) -> Result<(), Refusal> {
    if period.is_zero() || ranges::HEAVY_LOAD_PERIOD.contains(&period) {
        return Ok(());
    }
    Err(Refusal::new(
        "heavy-load.period",
        format!(
            "{} is outside the allowed range; write \"0s\" (never toggle) or a duration from {} \
             to {}",
            humantime::format_duration(period),
            humantime::format_duration(*ranges::HEAVY_LOAD_PERIOD.start()),
            humantime::format_duration(*ranges::HEAVY_LOAD_PERIOD.end()),
        ),
    ))
}

/// The state file is written beside itself (a temporary file renamed over it), so it must
/// name a file in a directory; a relative path would depend on the directory the server was
/// started in (`/` under systemd).
fn check_state_file(path: &std::path::Path) -> Result<(), Refusal> {
    let named_file = path.file_name().is_some()
        && path.parent().is_some_and(|dir| !dir.as_os_str().is_empty())
        && !path.as_os_str().to_string_lossy().ends_with('/');
    if path.is_absolute() && named_file {
        return Ok(());
    }
    Err(Refusal::new(
        "fence.state-file",
        format!(
            "{} is not an absolute path to a file; write one such as \"{DEFAULT_STATE_FILE}\"",
            path.display()
        ),
    ))
}

/// The allowed range of every ranged key, in one place; the documentation repeats this table.
pub mod ranges {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    const DAY: u64 = 86_400;

    /// Besides 0 (never toggle).
    pub const HEAVY_LOAD_PERIOD: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(7 * DAY);
    pub const GENERATION_TIME: RangeInclusive<Duration> =
        Duration::ZERO..=Duration::from_secs(3600);
    pub const SLOWDOWN: RangeInclusive<f64> = 0.0..=100.0;
    pub const MAX_PENDING: RangeInclusive<usize> = 1..=1_000_000;
    pub const TICKET_TTL: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(7 * DAY);
    pub const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=65_536;
    pub const MAX_LOCKS: RangeInclusive<usize> = 1..=65_536;
    pub const HEADER_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(300);
    pub const DRAIN_TIMEOUT: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(600);
}

fn non_negative_finite<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a number of 0 or more (got {value})"
        )))
    }
}

fn positive_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(deserializer)?;
    if value == 0 {
        Err(serde::de::Error::custom("must be at least 1"))
    } else {
        Ok(value)
    }
}

fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let value = humantime_serde::deserialize::<Duration, D>(deserializer)?;
    if value.is_zero() {
        Err(serde::de::Error::custom(
            "must be longer than zero, such as \"10m\"",
        ))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use report_common::config::ConfigError;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn shipped_file_loads_and_matches_the_defaults() {
        let text = include_str!("../../config/report-apis.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn a_serialised_configuration_loads_back_equal() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(parse(&text).unwrap(), Config::default(), "{text}");
        let config = Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
            heavy_load: HeavyLoad {
                period: Duration::from_millis(5750),
                initially_on: true,
            },
            report: Report {
                generation_time: Duration::from_nanos(1_000_000_001),
                slowdown: 0.1,
            },
            limits: Limits {
                max_pending: 3,
                ticket_ttl: Duration::from_secs(5400),
                max_connections: 7,
                header_timeout: Duration::from_millis(1500),
                max_locks: 2,
            },
            shutdown: Shutdown {
                drain_timeout: Duration::ZERO,
            },
            fence: Fencing {
                enforce: false,
                state_file: PathBuf::from("/srv/marks \"ä\".json"),
            },
        };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(parse(&text).unwrap(), config, "{text}");
        assert!(
            text.contains("[heavy-load]\nperiod = \"5s 750ms\""),
            "{text}"
        );
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn human_durations_and_kebab_case_keys() {
        let config = parse(
            "listen = \"0.0.0.0:9000\"\n[heavy-load]\nperiod = \"0s\"\ninitially-on = true\n\
             [report]\ngeneration-time = \"250ms\"\nslowdown = 0.5\n\
             [limits]\nmax-pending = 3\nticket-ttl = \"1h 30m\"\n[shutdown]\ndrain-timeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.heavy_load.period, Duration::ZERO);
        assert!(config.heavy_load.initially_on);
        assert_eq!(config.report.generation_time, Duration::from_millis(250));
        assert_eq!(config.report.slowdown, 0.5);
        assert_eq!(config.limits.max_pending, 3);
        assert_eq!(config.limits.ticket_ttl, Duration::from_secs(5400));
        assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(2));
    }

    #[test]
    fn unknown_key_names_line_and_dotted_key() {
        let (line, key, message) = invalid("[report]\ngeneration-time = \"1s\"\nslowdwn = 2\n");
        assert_eq!(line, 3);
        assert_eq!(key, "report.slowdwn");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, wanted) in [
            ("listen = \"127.0.0.1:1\"\n[report\n", 2),
            ("[limits]\nmax-pending =\n", 2),
        ] {
            match parse(text) {
                Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, wanted, "{text}"),
                other => panic!("expected a syntax error for {text:?}, got {other:?}"),
            }
        }
        let err = parse("[report\n").unwrap_err().to_string();
        assert!(err.starts_with("test.toml:1:"), "{err}");
        assert!(err.contains("fix the TOML syntax"), "{err}");
    }

    #[test]
    fn keys_in_inline_tables_and_dotted_keys_are_named_in_full() {
        let (line, key, _) = invalid("heavy-load = { period = \"soon\" }\n");
        assert_eq!((line, key.as_str()), (1, "heavy-load.period"));
        let (line, key, _) = invalid("\nreport.slowdwn = 2\n");
        assert_eq!((line, key.as_str()), (2, "report.slowdwn"));
    }

    #[test]
    fn unknown_table_is_named() {
        let (line, key, _) = invalid("listen = \"127.0.0.1:1\"\n[reports]\nslowdown = 1\n");
        assert_eq!(line, 2);
        assert_eq!(key, "reports");
    }

    #[test]
    fn bad_values_name_their_key() {
        let (line, key, _) = invalid("[heavy-load]\nperiod = \"fast\"\n");
        assert_eq!((line, key.as_str()), (2, "heavy-load.period"));
        let (line, key, _) = invalid("\n[report]\nslowdown = -1.0\n");
        assert_eq!((line, key.as_str()), (3, "report.slowdown"));
        let (_, key, _) = invalid("[limits]\nmax-pending = 0\n");
        assert_eq!(key, "limits.max-pending");
        let (_, key, _) = invalid("[limits]\nticket-ttl = \"0s\"\n");
        assert_eq!(key, "limits.ticket-ttl");
        let (line, key, _) = invalid("listen = \"localhost\"\n");
        assert_eq!((line, key.as_str()), (1, "listen"));
    }

    /// Each ranged key, a value just outside its range and the range as the message words it.
    pub(crate) const OUT_OF_RANGE: [(&str, &str, &str, &str); 16] = [
        (
            "heavy-load",
            "period",
            "\"1ns\"",
            "\"0s\" (never toggle) or a duration from 100ms to 7days",
        ),
        ("heavy-load", "period", "\"99ms\"", "from 100ms to 7days"),
        ("heavy-load", "period", "\"8days\"", "from 100ms to 7days"),
        ("report", "generation-time", "\"1h 1s\"", "from 0s to 1h"),
        ("report", "slowdown", "100.5", "from 0 to 100"),
        ("limits", "max-pending", "1000001", "from 1 to 1000000"),
        ("limits", "ticket-ttl", "\"99ms\"", "from 100ms to 7days"),
        ("limits", "ticket-ttl", "\"8days\"", "from 100ms to 7days"),
        ("limits", "max-connections", "0", "from 1 to 65536"),
        ("limits", "max-connections", "65537", "from 1 to 65536"),
        ("limits", "max-locks", "0", "from 1 to 65536"),
        ("limits", "max-locks", "65537", "from 1 to 65536"),
        ("limits", "header-timeout", "\"99ms\"", "from 100ms to 5m"),
        ("limits", "header-timeout", "\"5m 1s\"", "from 100ms to 5m"),
        ("shutdown", "drain-timeout", "\"10m 1s\"", "from 0s to 10m"),
        (
            "shutdown",
            "drain-timeout",
            "\"100years\"",
            "from 0s to 10m",
        ),
    ];

    #[test]
    fn values_outside_the_documented_ranges_are_refused_naming_key_line_and_range() {
        for (table, key, value, range) in OUT_OF_RANGE {
            let text = format!("listen = \"127.0.0.1:1\"\n\n[{table}]\n{key} = {value}\n");
            match parse(&text) {
                Err(ConfigError::Rejected {
                    place: Some((line, _)),
                    key: refused,
                    message,
                    ..
                }) => {
                    assert_eq!(line, 4, "{text}");
                    assert_eq!(refused, format!("{table}.{key}"));
                    assert!(message.contains(range), "{text}: {message}");
                }
                other => panic!("{text}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_ends_of_every_range_are_accepted() {
        for text in [
            "[heavy-load]\nperiod = \"0s\"\n",
            "[heavy-load]\nperiod = \"100ms\"\n",
            "[heavy-load]\nperiod = \"7days\"\n",
            "[report]\ngeneration-time = \"0s\"\nslowdown = 100\n",
            "[report]\ngeneration-time = \"1h\"\nslowdown = 0\n",
            "[limits]\nmax-pending = 1\nticket-ttl = \"100ms\"\n",
            "[limits]\nmax-pending = 1000000\nticket-ttl = \"7days\"\n",
            "[limits]\nmax-connections = 1\nheader-timeout = \"100ms\"\n",
            "[limits]\nmax-connections = 65536\nheader-timeout = \"5m\"\n",
            "[limits]\nmax-locks = 1\n",
            "[limits]\nmax-locks = 65536\n",
            "[shutdown]\ndrain-timeout = \"0s\"\n",
            "[shutdown]\ndrain-timeout = \"10m\"\n",
        ] {
            assert!(parse(text).is_ok(), "{text}: {:?}", parse(text));
        }
    }

    #[test]
    fn the_fence_table_reads_and_its_state_file_must_be_an_absolute_file_path() {
        let config =
            parse("[fence]\nenforce = false\nstate-file = \"/tmp/x/fence.json\"\n").unwrap();
        assert!(!config.fence.enforce);
        assert_eq!(config.fence.state_file, Path::new("/tmp/x/fence.json"));
        for path in [
            "fence.json",
            "state/fence.json",
            "/",
            "/var/lib/report-apis/",
            "",
        ] {
            let text = format!("\n[fence]\nstate-file = \"{path}\"\n");
            match parse(&text) {
                Err(ConfigError::Rejected {
                    place: Some((line, _)),
                    key,
                    message,
                    ..
                }) => {
                    assert_eq!((line, key.as_str()), (3, "fence.state-file"), "{path}");
                    assert!(message.contains("absolute path to a file"), "{message}");
                }
                other => panic!("{path:?}: expected a refusal, got {other:?}"),
            }
        }
        let (line, key, _) = invalid("[fence]\nenforced = true\n");
        assert_eq!((line, key.as_str()), (2, "fence.enforced"));
    }

    #[test]
    fn error_message_reads_as_a_sentence_with_file_line_and_key() {
        let err = parse("[report]\nslowdown = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:2:"), "{err}");
        assert!(err.contains("key `report.slowdown`"), "{err}");
        assert!(err.contains("fix or remove it"), "{err}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = Config::load(Path::new("/nonexistent/report-apis.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        let missing = Path::new("/nonexistent/report-apis.toml");
        let err = Config::load_or(Some(missing), Path::new("/nonexistent/default.toml"));
        assert!(matches!(err, Err(ConfigError::Read { .. })));
    }

    #[test]
    fn absent_default_file_gives_the_defaults_and_a_present_one_is_read() {
        let absent = Path::new("/nonexistent/report-apis.toml");
        let loaded = Config::load_or(None, absent).unwrap();
        assert_eq!((loaded.config, loaded.source), (Config::default(), None));

        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("config.toml");
        std::fs::write(&default, "[report]\nslowdown = 2.5\n").unwrap();
        let loaded = Config::load_or(None, &default).unwrap();
        assert_eq!(loaded.config.report.slowdown, 2.5);
        assert_eq!(loaded.source.as_deref(), Some(default.as_path()));

        std::fs::write(&default, "[report]\nslowdwn = 2.5\n").unwrap();
        let err = Config::load_or(None, &default).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: 2, .. }), "{err}");
    }
}
