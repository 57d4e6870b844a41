//! The knobs of one experiment run, with the compressed-time defaults.
//!
//! The shipped product works on a one-minute timer; the experiment squeezes that minute into a
//! short `slot` and scales every other duration of the shipped configuration by the same factor,
//! so that a run of under a minute shows what an hour of the real timer would.

use std::time::Duration;

/// The slot length of the real product: the timer fires every minute.
pub const REAL_SLOT: Duration = Duration::from_secs(60);

/// How one experiment is run: timings, server load model and the two control switches.
///
/// Also the experiment's command-line flags, so that the defaults are written down once, here.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Params {
    /// Slots are fired during this span; nothing new starts after it.
    #[arg(long, default_value = "42s", value_parser = humantime::parse_duration)]
    pub span: Duration,
    /// Time between two slots: the compressed minute of the real timer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub slot: Duration,
    /// The server toggles heavy load this often.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub heavy_period: Duration,
    /// The collector's poll interval.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// The server's base generation time of one report.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub generation_time: Duration,
    /// The server's slowdown per other pending ticket (0 = a server that never slows down).
    #[arg(long, default_value_t = 1.0)]
    pub slowdown: f64,
    /// Run every collector with policy allow: what happens without the lock.
    #[arg(long)]
    pub without_lock: bool,
    /// How long runs still going after the span may take before they are stopped.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// The collector's `resume-within` in every arm (0s = resuming off: a ticket a run left
    /// is cancelled and a new one requested). Default: the shipped 30 min, scaled by slot / 1 min.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub resume_within: Option<Duration>,
    /// Leave out the two arms on the PostgreSQL lock (they need PostgreSQL 15 and root).
    #[arg(long)]
    pub without_postgres: bool,
}

impl Default for Params {
    /// The flags' defaults.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            params: Params,
        }
        <Defaults as clap::Parser>::parse_from(["experiment"]).params
    }
}

impl Params {
    /// Scales a duration of the shipped one-minute configuration to this run's slot.
    pub fn scaled(&self, real: Duration) -> Duration {
        real.mul_f64(self.slot.as_secs_f64() / REAL_SLOT.as_secs_f64())
    }

    /// Number of slots fired during the span.
    pub fn slot_count(&self) -> u32 {
        let slots = (self.span.as_secs_f64() / self.slot.as_secs_f64()).ceil();
        // Clamped first, so the cast can neither wrap nor cut.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to the range of u32 just before"
        )]
        let count = slots.clamp(0.0, f64::from(u32::MAX)) as u32;
        count
    }

    /// The collector's `starting-deadline` for the arm that sets one: 10 s of a real minute.
    pub fn starting_deadline(&self) -> Duration {
        self.scaled(Duration::from_secs(10))
    }

    /// The collector's `replace-grace`: 10 s of a real minute.
    pub fn replace_grace(&self) -> Duration {
        self.scaled(Duration::from_secs(10))
    }

    /// The collector's `lock-wait`: 5 min of a real minute.
    pub fn lock_wait(&self) -> Duration {
        self.scaled(Duration::from_secs(5 * 60))
    }

    /// The collector's `deadline`: 10 min of a real minute.
    pub fn run_deadline(&self) -> Duration {
        self.scaled(Duration::from_secs(10 * 60))
    }

    /// The collector's `resume-within`: `--resume-within` as given, else the shipped default
    /// (30 min) scaled like every other duration.
    pub fn resume_within(&self) -> Duration {
        self.resume_within.unwrap_or_else(|| {
            self.scaled(report_collector::config::Config::default().resume_within)
        })
    }

    /// The server's `limits.ticket-ttl`: 10 min of a real minute.
    pub fn ticket_ttl(&self) -> Duration {
        self.scaled(Duration::from_secs(10 * 60))
    }

    /// The PostgreSQL lock's `postgres.lease`: the shipped 15 s scaled, but at least the 1 s
    /// the collector accepts.
    pub fn lease(&self) -> Duration {
        let shipped = report_collector::config::PostgresConfig::default().lease;
        self.scaled(shipped)
            .max(report_collector::config::LEASE_RANGE.0)
    }

    /// How long before the first slot the servers start.
    ///
    /// A server's heavy-load clock starts with the server. Starting it at this lead puts the first
    /// heavy phase a twelfth of a slot before the third slot: the first two slots run on a calm
    /// server, the third and fourth fire into heavy load, and the run of the third slot ends
    /// mid-slot, well clear of both the next slot and the poll instants, so that each policy's
    /// decision after it is not decided by a few milliseconds.
    pub fn server_lead(&self) -> Duration {
        let slot = self.slot.as_secs_f64();
        let cycle = 2.0 * self.heavy_period.as_secs_f64();
        let mut lead = self.heavy_period.as_secs_f64() - 2.0 * slot + slot / 12.0;
        while lead < 0.1 {
            lead += cycle;
        }
        Duration::from_secs_f64(lead)
    }

    /// Checks the combination makes sense, in words a user can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.slot < Duration::from_millis(500) {
            return Err(
                "--slot must be at least 500ms: shorter slots drown in process start-up times"
                    .into(),
            );
        }
        if self.span < self.slot {
            return Err("--span must be at least one --slot long".into());
        }
        if self.heavy_period.is_zero() {
            return Err(
                "--heavy-period must be above zero: without heavy load there is nothing to measure"
                    .into(),
            );
        }
        if self.poll_interval.is_zero() || self.generation_time.is_zero() {
            return Err("--poll-interval and --generation-time must be above zero".into());
        }
        if !(self.slowdown >= 0.0 && self.slowdown.is_finite()) {
            return Err("--slowdown must be a number of at least 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_scale_the_shipped_minute_to_three_seconds() {
        let p = Params::default();
        assert_eq!(p.starting_deadline(), Duration::from_millis(500));
        assert_eq!(p.replace_grace(), Duration::from_millis(500));
        assert_eq!(p.lock_wait(), Duration::from_secs(15));
        assert_eq!(p.run_deadline(), Duration::from_secs(30));
        assert_eq!(p.slot_count(), 14);
        assert_eq!(p.resume_within(), Duration::from_secs(90));
        let off = Params {
            resume_within: Some(Duration::ZERO),
            ..Params::default()
        };
        assert_eq!(off.resume_within(), Duration::ZERO);
        // 15 s scaled is 0.75 s, below the collector's 1 s minimum.
        assert_eq!(p.lease(), Duration::from_secs(1));
    }

    #[test]
    fn heavy_load_starts_just_before_the_third_slot() {
        let p = Params::default();
        let heavy_on = p.heavy_period.as_secs_f64() - p.server_lead().as_secs_f64();
        assert!((heavy_on - 5.75).abs() < 1e-9, "{heavy_on}");
    }

    #[test]
    fn nonsense_is_refused_with_a_sentence() {
        let p = Params {
            span: Duration::from_secs(1),
            ..Params::default()
        };
        assert!(p.validate().unwrap_err().contains("--span"));
    }
}
