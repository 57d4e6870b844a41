//! The collector's configuration: one TOML file with kebab-case keys, its documented defaults,
//! and errors that name the file, the line and the key so an operator can fix them at once.
//! The file is read by the loader both programs share ([`report_common::config`]); `Serialize`
//! writes the same keys, so a configuration built in code (the experiment's) is a file this
//! loader reads back.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use report_common::config::{ConfigFile, Loaded, Refusal, duration_within, number_within};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lock::policy::Policy;

/// Where the packaged configuration lives; a missing file there means "use the defaults".
pub const DEFAULT_CONFIG_PATH: &str = "/etc/report-collector/config.toml";

/// Which lock keeps runs apart: this host's `flock`, or a PostgreSQL lease shared by every host
/// that names the same database and `lock-name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LockBackend {
    #[default]
    Flock,
    Postgres,
}

/// Whether a TCP connection to the database is TLS with the chain and the host name verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Tls {
    #[default]
    VerifyFull,
    Disable,
}

/// Where systemd's `LoadCredential=postgres-password:...` puts the password.
/// The roots `tls-ca-file` defaults to (Debian's ca-certificates bundle).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `[postgres]` table: the shared lock's database and lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A libpq `key=value` string or a `postgresql://` URL, without a password.
    pub connect: String,
    /// Unset: `$CREDENTIALS_DIRECTORY/postgres-password` when that file exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Fleets sharing one database keep apart by this name.
    pub lock_name: String,
    /// Unset: this machine's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub tls: Tls,
    /// Unset: [`SYSTEM_CA_FILE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            connect: String::new(),
            password_file: None,
            lock_name: "report-collector".to_owned(),
            host_name: None,
            lease: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            tls: Tls::VerifyFull,
            tls_ca_file: None,
        }
    }
}

impl PostgresConfig {
    /// The host name the lock's row, the journal and `status` show for this host.
    pub fn host_name(&self) -> String {
        self.host_name
            .clone()
            .or_else(crate::lock::holder::this_host)
            .unwrap_or_else(|| "unknown-host".to_owned())
    }

    pub fn tls_ca_file(&self) -> PathBuf {
        self.tls_ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_FILE))
    }

    /// The checks serde cannot do; keys are named as `locate_key` finds them.
    fn check(&self) -> Result<(), Refusal> {
        for (key, value, min, max) in [
            ("postgres.lease", self.lease, LEASE_RANGE.0, LEASE_RANGE.1),
            (
                "postgres.connect-timeout",
                self.connect_timeout,
                CONNECT_TIMEOUT_RANGE.0,
                CONNECT_TIMEOUT_RANGE.1,
            ),
        ] {
            duration_within(key, value, min, max)?;
        }
        self.check_names()?;
        self.check_connect()?;
        Ok(())
    }

    /// Refuses a lock name or host name too long or empty for the lock's row.
    fn check_names(&self) -> Result<(), Refusal> {
        // As report-apis takes it in the fence ([`report_common::fence::LockName`]).
        if report_common::fence::LockName::new(&self.lock_name).is_none() {
            return Err(Refusal::new(
                "postgres.lock-name",
                "write a name of 1 to 200 bytes without control characters",
            ));
        }
        if let Some(host) = &self.host_name
            && (host.is_empty() || host.len() > 255)
        {
            return Err(Refusal::new(
                "postgres.host-name",
                "write a name of 1 to 255 characters, or leave it out for this machine's host name",
            ));
        }
        Ok(())
    }

    /// Refuses a `postgres.connect` that cannot be read, holds a password, or names no host or
    /// hosts of both kinds; whether its hosts are Unix-socket directories (TLS never applies
    /// to them).
    fn check_connect(&self) -> Result<(), Refusal> {
        let parsed: tokio_postgres::Config = self.connect.parse().map_err(|e| {
            Refusal::new(
                "postgres.connect",
                format!(
                    "cannot read it ({e}); write it like \"host=db.example port=5432 user=report_collector dbname=report_collector\" or postgresql://report_collector@db.example/report_collector"
                ),
            )
        })?;
        if parsed.get_password().is_some() {
            return Err(Refusal::new(
                "postgres.connect",
                "it holds a password, which a configuration file readable by others must not; put the password in a file of its own (chmod 600) named by postgres.password-file, or load it as the systemd credential postgres-password",
            ));
        }
        if parsed.get_hosts().is_empty() {
            return Err(Refusal::new(
                "postgres.connect",
                "it names no host; add host=NAME (or host=/run/postgresql for a local server)",
            ));
        }
        let unix = parsed
            .get_hosts()
            .iter()
            .filter(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
            .count();
        if unix != 0 && unix != parsed.get_hosts().len() {
            return Err(Refusal::new(
                "postgres.connect",
                "it names both Unix-socket directories and TCP hosts; name one kind only (TLS applies to TCP hosts, never to sockets)",
            ));
        }
        Ok(())
    }
}

/// The allowed range of `postgres.lease`.
pub const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(1), HOUR);
/// The allowed range of `postgres.connect-timeout`.
pub const CONNECT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(60));

/// Every setting of the collector. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Base URL of report-apis.
    pub server_url: String,
    pub policy: Policy,
    /// The file that is flocked for the whole run; it also holds the holder record.
    pub lock_file: PathBuf,
    pub report_dir: PathBuf,
    /// Where the outcome of the last run is kept for `status`.
    pub state_file: PathBuf,
    pub keep_reports: usize,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Timeout of every single HTTP request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound on the whole run, waiting for the lock included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub replace_grace: Duration,
    /// Under `forbid`, a timer-started run later than this after its slot skips itself.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Duration>,
    /// Deprecated: slots of this length, only where systemd cannot name the timer's elapse.
    #[serde(with = "humantime_serde")]
    pub schedule_period: Duration,
    /// `status` reports stale (exit 1) when the last collection is older than this; unset
    /// means [`default_stale_after`] of the schedule period.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Duration>,
    /// Prometheus textfile written after every run, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_file: Option<PathBuf>,
    /// How many times a ticket the server no longer knows (404) is replaced by a new one.
    pub max_ticket_renewals: u32,
    /// A ticket the previous run left unfinished is resumed if it was requested less than this
    /// long ago, and cancelled on the server otherwise; zero turns resuming off.
    #[serde(with = "humantime_serde")]
    pub resume_within: Duration,
    /// The largest report the collector takes; a larger answer fails the run unread.
    pub max_report_size: ByteSize,
    /// `flock` (this host only) or `postgres` (every host naming the same database).
    pub lock_backend: LockBackend,
    /// Only read when `lock-backend = "postgres"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_url: "http://127.0.0.1:8080".to_owned(),
            policy: Policy::default(),
            lock_file: PathBuf::from("/var/lib/report-collector/collector.lock"),
            report_dir: PathBuf::from("/var/lib/report-collector/reports"),
            state_file: PathBuf::from("/var/lib/report-collector/last-run.json"),
            keep_reports: 100,
            poll_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(600),
            lock_wait: Duration::from_secs(300),
            replace_grace: Duration::from_secs(10),
            starting_deadline: None,
            schedule_period: Duration::from_secs(60),
            stale_after: None,
            metrics_file: None,
            max_ticket_renewals: 3,
            resume_within: Duration::from_secs(30 * 60),
            max_report_size: ByteSize(64 * MIB),
            lock_backend: LockBackend::Flock,
            postgres: None,
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A number of bytes, written in the file as `"64MiB"` (units B, KiB, MiB, GiB) or as a bare
/// integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// In the largest unit that divides it exactly, as the file would write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
            .into_iter()
            .find(|(size, _)| self.0 != 0 && self.0.is_multiple_of(*size));
        match unit {
            Some((size, name)) => write!(f, "{}{name}", self.0 / size),
            None => write!(f, "{}B", self.0),
        }
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let unit_size = match unit.trim() {
            "" | "B" => Some(1),
            "KiB" => Some(KIB),
            "MiB" => Some(MIB),
            "GiB" => Some(GIB),
            _ => None,
        };
        number
            .parse::<u64>()
            .ok()
            .zip(unit_size)
            .and_then(|(n, size)| n.checked_mul(size))
            .map(ByteSize)
            .ok_or_else(|| {
                format!("`{s}` is not a size: write it like \"64MiB\" (units B, KiB, MiB, GiB)")
            })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"64MiB\" (units B, KiB, MiB, GiB) or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: write a number of bytes of 0 or more, or a size like \"64MiB\"")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The allowed range of every duration key (README, man page and the shipped file show this
/// table). Wide enough for any real schedule and for the tests' sub-second ones; narrow enough
/// that no deadline computed from them can overflow a clock, and that a typo (`10h` for `10s`)
/// is caught rather than obeyed.
pub const DURATION_RANGES: [(&str, Duration, Duration); 9] = [
    ("poll-interval", Duration::from_millis(10), HOUR),
    ("request-timeout", Duration::from_millis(100), HOUR),
    ("deadline", Duration::from_millis(100), DAY),
    ("lock-wait", Duration::ZERO, DAY),
    ("replace-grace", Duration::ZERO, HOUR),
    ("starting-deadline", Duration::from_millis(1), DAY),
    ("schedule-period", Duration::from_millis(100), WEEK),
    ("stale-after", Duration::from_millis(100), YEAR),
    ("resume-within", Duration::ZERO, WEEK),
];

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
/// 365.25 days: the year of humantime, so the message and the docs can say `1year`.
const YEAR: Duration = Duration::from_secs(31_557_600);

/// The allowed range of `keep-reports`.
pub const KEEP_REPORTS_RANGE: (usize, usize) = (1, 1_000_000);
/// The allowed range of `max-ticket-renewals`.
pub const MAX_TICKET_RENEWALS_RANGE: (u32, u32) = (0, 100);
/// The allowed range of `max-report-size`.
pub const MAX_REPORT_SIZE_RANGE: (ByteSize, ByteSize) = (ByteSize(KIB), ByteSize(GIB));

/// How many schedule periods without a collection make `status` report stale by default.
pub const STALE_AFTER_PERIODS: u32 = 5;

/// The default `stale-after`: [`STALE_AFTER_PERIODS`] schedule periods (5m for the minutely
/// timer), so one or two skipped or failed slots never alert but a collector that stopped
/// collecting does. The one place the default is derived from the schedule.
pub fn default_stale_after(schedule_period: Duration) -> Duration {
    schedule_period.saturating_mul(STALE_AFTER_PERIODS)
}

impl Config {
    /// `stale-after` as configured, or its default from `schedule-period`.
    pub fn stale_after(&self) -> Duration {
        self.stale_after
            .unwrap_or_else(|| default_stale_after(self.schedule_period))
    }
}

impl ConfigFile for Config {
    const DEFAULT_PATH: &'static str = DEFAULT_CONFIG_PATH;
    const DEPRECATED_KEYS: &'static [&'static str] = &["schedule-period"];

    /// Checks the values serde cannot: things that would make a run meaningless or spin. Also
    /// run on the values the command line overrides.
    fn check(&self) -> Result<(), Refusal> {
        let url = reqwest::Url::parse(&self.server_url).map_err(|e| {
            Refusal::new(
                "server-url",
                format!(
                    "`{}` is not a URL ({e}); write it like http://127.0.0.1:8080",
                    self.server_url
                ),
            )
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Refusal::new(
                "server-url",
                format!("`{}` must start with http:// or https://", self.server_url),
            ));
        }
        for (key, min, max) in DURATION_RANGES {
            if let Some(value) = self.duration(key) {
                duration_within(key, value, min, max)?;
            }
        }
        let (min, max) = KEEP_REPORTS_RANGE;
        number_within("keep-reports", self.keep_reports, min, max)?;
        let (min, max) = MAX_TICKET_RENEWALS_RANGE;
        number_within("max-ticket-renewals", self.max_ticket_renewals, min, max)?;
        let (min, max) = MAX_REPORT_SIZE_RANGE;
        if !(min..=max).contains(&self.max_report_size) {
            return Err(Refusal::new(
                "max-report-size",
                format!(
                    "{} is outside the allowed range; write a size from {min} to {max}",
                    self.max_report_size
                ),
            ));
        }
        match (self.lock_backend, &self.postgres) {
            (LockBackend::Postgres, None) => {
                return Err(Refusal::new(
                    "lock-backend",
                    "\"postgres\" needs a [postgres] table with at least connect = \"host=... user=... dbname=...\"",
                ));
            }
            (LockBackend::Postgres, Some(pg)) => pg.check()?,
            (LockBackend::Flock, _) => {}
        }
        if let Some(stale_after) = self.stale_after
            && stale_after < self.schedule_period
        {
            return Err(Refusal::new(
                "stale-after",
                format!(
                    "{} must be at least schedule-period ({}): every gap between two collections would be reported stale",
                    humantime::format_duration(stale_after),
                    humantime::format_duration(self.schedule_period)
                ),
            ));
        }
        Ok(())
    }
}

/// Where a run, `status` and `check-config` take the configuration from: the file (`--config`,
/// else [`DEFAULT_CONFIG_PATH`] if it exists, else the defaults), then the command line's
/// overrides over it.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub server_url: Option<String>,
    pub policy: Option<Policy>,
    pub lock_file: Option<PathBuf>,
}

impl Source {
    /// The configuration, the overrides checked as the file's values are; `Err` is the sentence
    /// that refuses it (exit 78).
    pub fn load(self) -> Result<Loaded<Config>, String> {
        let mut loaded = Config::load_or_default(self.file.as_deref())
            .map_err(|e| format!("configuration error: {e}"))?;
        let config = &mut loaded.config;
        if let Some(url) = self.server_url {
            config.server_url = url;
        }
        if let Some(policy) = self.policy {
            config.policy = policy;
        }
        if let Some(lock_file) = self.lock_file {
            config.lock_file = lock_file;
        }
        config
            .check()
            .map_err(|e| format!("configuration error (command line): {e}"))?;
        Ok(loaded)
    }
}

/// What `check-config` says about a deprecated `key` set in `file`: it still works, but the
/// schedule is the timer's (the key's value stays in the printed configuration).
pub fn deprecation_note(key: &str, file: &Path) -> String {
    match key {
        "schedule-period" => format!(
            "note: schedule-period in {} is deprecated: the schedule is the timer's own \
             (change OnCalendar= with `systemctl edit report-collector.timer`); the key is used \
             only where systemd cannot tell it (no system bus, a timer without OnCalendar=, \
             --trigger timer) and, there, for the default stale-after",
            file.display()
        ),
        _ => format!("note: {key} in {} is deprecated", file.display()),
    }
}

impl Config {
    /// The value of a duration key of [`DURATION_RANGES`]; `None` when it is unset.
    fn duration(&self, key: &str) -> Option<Duration> {
        match key {
            "poll-interval" => Some(self.poll_interval),
            "request-timeout" => Some(self.request_timeout),
            "deadline" => Some(self.deadline),
            "lock-wait" => Some(self.lock_wait),
            "replace-grace" => Some(self.replace_grace),
            "starting-deadline" => self.starting_deadline,
            "schedule-period" => Some(self.schedule_period),
            "stale-after" => self.stale_after,
            "resume-within" => Some(self.resume_within),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use report_common::config::ConfigError;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = Config::parse(Path::new("c.toml"), "").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.policy, Policy::Forbid);
        assert_eq!(config.deadline, Duration::from_secs(600));
        assert_eq!(config.starting_deadline, None);
        assert_eq!(config.stale_after(), Duration::from_secs(300));
    }

    #[test]
    fn stale_after_defaults_to_periods_and_is_at_least_one() {
        let config = Config::parse(Path::new("c.toml"), "schedule-period = \"5m\"").unwrap();
        assert_eq!(config.stale_after(), Duration::from_secs(25 * 60));
        let config = Config::parse(Path::new("c.toml"), "stale-after = \"1h\"").unwrap();
        assert_eq!(config.stale_after(), Duration::from_secs(3600));
        let err = Config::parse(Path::new("c.toml"), "stale-after = \"30s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least schedule-period"), "{err}");
    }

    #[test]
    fn a_serialised_configuration_loads_back_equal() {
        let text = toml::to_string(&Config::default()).unwrap();
        let parsed = Config::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(parsed, Config::default(), "{text}");
        let config = Config {
            policy: Policy::Replace,
            poll_interval: Duration::from_nanos(500_000_001),
            starting_deadline: Some(Duration::from_millis(500)),
            metrics_file: Some(PathBuf::from("/tmp/m.prom")),
            max_ticket_renewals: 0,
            ..Config::default()
        };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(Config::parse(Path::new("c.toml"), &text).unwrap(), config);
        assert!(text.contains("starting-deadline = \"500ms\"\n"), "{text}");
        assert!(text.contains("policy = \"replace\"\n"), "{text}");
    }

    #[test]
    fn keys_are_kebab_case_and_durations_humane() {
        let text = r#"
server-url = "http://127.0.0.1:9000"
policy = "replace"
poll-interval = "250ms"
starting-deadline = "10s"
metrics-file = "/tmp/m.prom"
max-ticket-renewals = 5
"#;
        let config = Config::parse(Path::new("c.toml"), text).unwrap();
        assert_eq!(config.policy, Policy::Replace);
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.starting_deadline, Some(Duration::from_secs(10)));
        assert_eq!(config.metrics_file, Some(PathBuf::from("/tmp/m.prom")));
        assert_eq!(config.max_ticket_renewals, 5);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "policy = \"wait\"\n\npoll-intervall = \"5s\"\n";
        let err = Config::parse(Path::new("/etc/x.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/x.toml"), "{err}");
        assert!(
            err.starts_with("/etc/x.toml:3:1: key `poll-intervall`: unknown key"),
            "{err}"
        );
        assert!(err.contains("poll-intervall"), "{err}");
    }

    #[test]
    fn the_shipped_config_parses_and_documents_every_key() {
        let text = include_str!("../../config/report-collector.toml");
        let config = Config::parse(Path::new("report-collector.toml"), text).unwrap();
        assert_eq!(config.starting_deadline, Some(Duration::from_secs(10)));
        for key in [
            "server-url",
            "policy",
            "lock-file",
            "report-dir",
            "state-file",
            "keep-reports",
            "poll-interval",
            "request-timeout",
            "deadline",
            "lock-wait",
            "replace-grace",
            "starting-deadline",
            "schedule-period",
            "stale-after",
            "metrics-file",
            "max-ticket-renewals",
            "max-report-size",
            "lock-backend",
            "connect",
            "password-file",
            "lock-name",
            "host-name",
            "lease",
            "connect-timeout",
            "tls",
            "tls-ca-file",
        ] {
            assert!(
                text.contains(&format!("\n{key} = ")) || text.contains(&format!("# {key} = ")),
                "{key}"
            );
        }
    }

    /// The one table of ranges, as the README, the man page and the shipped file show it.
    fn documented_ranges() -> Vec<(&'static str, String)> {
        let d = |v| humantime::format_duration(v).to_string();
        let mut ranges: Vec<(&str, String)> = DURATION_RANGES
            .iter()
            .map(|&(key, min, max)| (key, format!("{} to {}", d(min), d(max))))
            .collect();
        ranges.push((
            "keep-reports",
            format!("{} to {}", KEEP_REPORTS_RANGE.0, KEEP_REPORTS_RANGE.1),
        ));
        ranges.push((
            "max-ticket-renewals",
            format!(
                "{} to {}",
                MAX_TICKET_RENEWALS_RANGE.0, MAX_TICKET_RENEWALS_RANGE.1
            ),
        ));
        ranges.push((
            "max-report-size",
            format!("{} to {}", MAX_REPORT_SIZE_RANGE.0, MAX_REPORT_SIZE_RANGE.1),
        ));
        for (key, (min, max)) in [
            ("lease", LEASE_RANGE),
            ("connect-timeout", CONNECT_TIMEOUT_RANGE),
        ] {
            ranges.push((key, format!("{} to {}", d(min), d(max))));
        }
        ranges
    }

    #[test]
    fn the_ranges_are_documented_as_they_are_checked() {
        let readme = include_str!("../README.md");
        let man = include_str!("../../packaging/debian/report-collector/report-collector.8");
        let shipped = include_str!("../../config/report-collector.toml");
        for (key, range) in documented_ranges() {
            assert!(
                readme.contains(&format!("| `{key}` | {range}")),
                "README: {key} {range}"
            );
            assert!(
                man.contains(&format!("; {range}]")),
                "man page: {key} {range}"
            );
            assert!(
                shipped.contains(&format!("[{range}]")),
                "config: {key} {range}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "policy = \"sometimes\"",
            "deadline = \"soon\"",
            "poll-interval = \"0s\"",
            "server-url = \"127.0.0.1:8080\"",
            "keep-reports = 0",
        ] {
            assert!(Config::parse(Path::new("c.toml"), text).is_err(), "{text}");
        }
    }

    fn refusal(text: &str) -> String {
        match Config::parse(Path::new("c.toml"), text) {
            Ok(config) => panic!("{text:?} was taken: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_wrong_type_names_key_and_line() {
        let err = refusal("policy = \"wait\"\nkeep-reports = \"many\"\n");
        assert!(err.starts_with("c.toml:2:"), "{err}");
        assert!(err.contains("key `keep-reports`"), "{err}");
        let err = refusal("\ndeadline = 30\n");
        assert!(err.starts_with("c.toml:2:"), "{err}");
        assert!(err.contains("key `deadline`"), "{err}");
    }

    #[test]
    fn a_bad_policy_names_key_line_and_every_policy() {
        let err = refusal("server-url = \"http://127.0.0.1:1\"\npolicy = \"sometimes\"\n");
        assert!(err.starts_with("c.toml:2:"), "{err}");
        assert!(err.contains("key `policy`"), "{err}");
        for policy in Policy::ALL {
            assert!(err.contains(policy.as_str()), "{err}");
        }
    }

    #[test]
    fn a_zero_duration_is_refused_where_it_makes_no_sense() {
        for key in [
            "poll-interval",
            "request-timeout",
            "deadline",
            "starting-deadline",
            "schedule-period",
            "stale-after",
        ] {
            let err = refusal(&format!("policy = \"forbid\"\n{key} = \"0s\"\n"));
            assert!(
                err.starts_with(&format!(
                    "c.toml:2:1: key `{key}`: 0s is outside the allowed range"
                )),
                "{err}"
            );
        }
        for key in ["lock-wait", "replace-grace"] {
            Config::parse(Path::new("c.toml"), &format!("{key} = \"0s\"")).unwrap();
        }
    }

    #[test]
    fn each_duration_is_taken_at_its_bounds_and_refused_past_them() {
        let nanosecond = Duration::from_nanos(1);
        for (key, min, max) in DURATION_RANGES {
            // stale-after must also be at least schedule-period: give it the smallest one.
            let base = if key == "stale-after" {
                "schedule-period = \"100ms\"\n"
            } else {
                "policy = \"forbid\"\n"
            };
            let set =
                |d: Duration| format!("{base}{key} = \"{}\"\n", humantime::format_duration(d));
            for within in [min, max] {
                let config = Config::parse(Path::new("c.toml"), &set(within))
                    .unwrap_or_else(|e| panic!("{key} = {within:?}: {e}"));
                assert_eq!(config.duration(key), Some(within), "{key}");
            }
            let mut outside = vec![max + nanosecond, Duration::from_secs(u64::MAX / 2)];
            if !min.is_zero() {
                outside.push(min - nanosecond);
            }
            for d in outside {
                let err = refusal(&set(d));
                assert!(
                    err.starts_with(&format!("c.toml:2:1: key `{key}`: ")),
                    "{err}"
                );
                assert!(
                    err.contains("outside the allowed range; write a duration from"),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn each_number_is_taken_at_its_bounds_and_refused_past_them() {
        let numbers = [
            (
                "keep-reports",
                u64::try_from(KEEP_REPORTS_RANGE.0).unwrap(),
                u64::try_from(KEEP_REPORTS_RANGE.1).unwrap(),
            ),
            (
                "max-ticket-renewals",
                u64::from(MAX_TICKET_RENEWALS_RANGE.0),
                u64::from(MAX_TICKET_RENEWALS_RANGE.1),
            ),
            (
                "max-report-size",
                MAX_REPORT_SIZE_RANGE.0.bytes(),
                MAX_REPORT_SIZE_RANGE.1.bytes(),
            ),
        ];
        for (key, min, max) in numbers {
            for within in [min, max] {
                Config::parse(Path::new("c.toml"), &format!("{key} = {within}"))
                    .unwrap_or_else(|e| panic!("{key} = {within}: {e}"));
            }
            let mut outside = vec![max + 1];
            if min > 0 {
                outside.push(min - 1);
            }
            for n in outside {
                let err = refusal(&format!("{key} = {n}"));
                assert!(
                    err.starts_with(&format!("c.toml:1:1: key `{key}`: ")),
                    "{err}"
                );
                assert!(err.contains("outside the allowed range"), "{err}");
            }
            let err = refusal(&format!("{key} = -1"));
            assert!(err.contains(&format!("key `{key}`")), "{err}");
        }
    }

    #[test]
    fn report_sizes_read_with_binary_units() {
        for (text, bytes) in [
            ("\"64MiB\"", 64 << 20),
            ("\"512 KiB\"", 512 << 10),
            ("\"1GiB\"", 1 << 30),
            ("\"4096\"", 4096),
            ("\"2048B\"", 2048),
            ("100000", 100_000),
        ] {
            let config = Config::parse(Path::new("c.toml"), &format!("max-report-size = {text}"))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(config.max_report_size.bytes(), bytes, "{text}");
        }
        for text in [
            "\"64MB\"",
            "\"lots\"",
            "\"-5MiB\"",
            "\"99999999999999999999GiB\"",
            "1.5",
        ] {
            let err = refusal(&format!("\nmax-report-size = {text}"));
            assert!(err.starts_with("c.toml:2:"), "{err}");
            assert!(err.contains("key `max-report-size`"), "{err}");
        }
        let err = refusal("max-report-size = \"2GiB\"");
        assert!(err.contains("write a size from 1KiB to 1GiB"), "{err}");
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    fn postgres(table: &str) -> Result<Config, String> {
        Config::parse(
            Path::new("c.toml"),
            &format!("lock-backend = \"postgres\"\n[postgres]\n{table}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_postgres_table_is_read_checked_and_named_in_errors() {
        let config = postgres("connect = \"host=/run/postgresql user=rc dbname=rc\"\n").unwrap();
        assert_eq!(config.lock_backend, LockBackend::Postgres);
        let pg = config.postgres.unwrap();
        assert_eq!(pg.lock_name, "report-collector");
        assert_eq!(pg.lease, Duration::from_secs(15));
        assert_eq!(pg.connect_timeout, Duration::from_secs(5));
        assert_eq!(pg.tls, Tls::VerifyFull);

        let err = Config::parse(Path::new("c.toml"), "lock-backend = \"postgres\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `lock-backend`"), "{err}");
        let err = postgres("connect = \"host=/tmp\"\nleese = \"5s\"\n").unwrap_err();
        assert!(err.starts_with("c.toml:4:1: key `postgres.leese`"), "{err}");
        let err = postgres("connect = \"host=/tmp password=hunter2\"\n").unwrap_err();
        assert!(
            err.starts_with("c.toml:3:1: key `postgres.connect`"),
            "{err}"
        );
        assert!(
            err.contains("password-file") && !err.contains("hunter2"),
            "{err}"
        );
        let err = postgres("connect = \"postgresql://u:hunter2@db/x\"\n").unwrap_err();
        assert!(
            err.contains("password-file") && !err.contains("hunter2"),
            "{err}"
        );
        let err = postgres("connect = \"dbname=x\"\n").unwrap_err();
        assert!(err.contains("names no host"), "{err}");
        let err = postgres("connect = \"host=/tmp,db.example\"\n").unwrap_err();
        assert!(err.contains("both Unix-socket"), "{err}");
        // Neither the CA file nor the password file is read by loading the configuration:
        // the lock reads them, once, when it is made (see `lock::postgres`).
        postgres("connect = \"host=db.example\"\ntls-ca-file = \"/nonexistent/ca.pem\"\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The password file is a secret: loading the configuration never reads it (the lock
        // does, after a run by root has switched user).
        let not_a_file = dir.path().join("password");
        std::fs::create_dir(&not_a_file).unwrap();
        postgres(&format!(
            "connect = \"host=/tmp\"\npassword-file = {:?}\n",
            not_a_file.display().to_string()
        ))
        .unwrap();
    }

    #[test]
    fn each_postgres_duration_is_taken_at_its_bounds_and_refused_past_them() {
        let nanosecond = Duration::from_nanos(1);
        for (key, (min, max)) in [
            ("lease", LEASE_RANGE),
            ("connect-timeout", CONNECT_TIMEOUT_RANGE),
        ] {
            let set = |d: Duration| {
                format!(
                    "connect = \"host=/tmp\"\n{key} = \"{}\"\n",
                    humantime::format_duration(d)
                )
            };
            for within in [min, max] {
                postgres(&set(within)).unwrap_or_else(|e| panic!("{key} = {within:?}: {e}"));
            }
            for outside in [min - nanosecond, max + nanosecond] {
                let err = postgres(&set(outside)).unwrap_err();
                assert!(
                    err.starts_with(&format!("c.toml:4:1: key `postgres.{key}`: ")),
                    "{err}"
                );
                assert!(err.contains("outside the allowed range"), "{err}");
            }
        }
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert_eq!(
            Config::load_or(None, &missing).unwrap().config,
            Config::default()
        );
        assert!(matches!(
            Config::load(&missing),
            Err(ConfigError::Read { .. })
        ));
    }
}
