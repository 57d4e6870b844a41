//! The server's TOML configuration file and its documented defaults.
//!
//! Read by the one loader both programs share ([`report_common::config`]), so that a mistake in
//! the file is always reported the same way: file, line, column and (past the TOML syntax) the
//! dotted key, which `main` turns into exit code 78. `Serialize` writes the same keys, so a
//! configuration built in code (the experiment's) is a file this loader reads back.

use std::net::SocketAddr;
use std::time::Duration;

use report_common::config::ConfigFile;
use serde::{Deserialize, Deserializer, Serialize};

/// Where the packaged configuration lives; when this default path is absent the built-in
/// defaults apply, so a bare `report-apis` runs anywhere.
pub const DEFAULT_PATH: &str = "/etc/report-apis/config.toml";

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
            },
            shutdown: Shutdown {
                drain_timeout: Duration::ZERO,
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
        let (config, source) = Config::load_or(None, absent).unwrap();
        assert_eq!((config, source), (Config::default(), None));

        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("config.toml");
        std::fs::write(&default, "[report]\nslowdown = 2.5\n").unwrap();
        let (config, source) = Config::load_or(None, &default).unwrap();
        assert_eq!(config.report.slowdown, 2.5);
        assert_eq!(source.as_deref(), Some(default.as_path()));

        std::fs::write(&default, "[report]\nslowdwn = 2.5\n").unwrap();
        let err = Config::load_or(None, &default).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: 2, .. }), "{err}");
    }
}
