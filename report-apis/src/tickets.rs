//! Issued tickets, their states, expiry, the cap, and the load model that decides when each
//! report is ready.
//!
//! The load model: a ticket is *pending* from its request until its report is fetched, it
//! expires or it is cancelled. A report needs `generation-time x (1 + slowdown x other pending tickets)`,
//! re-evaluated whenever the count changes, and makes no progress during heavy load.
//!
//! Every report being generated advances at the same rate, so one shared "work clock" (seconds
//! of undisturbed generation done since start) describes them all: a ticket is ready once the
//! work clock has moved `generation-time` past its value at the request. The clock is brought up
//! to date lazily, under one mutex, whenever a handler touches the store, stepping from event to
//! event (a report becoming ready, a ticket expiring, a heavy-load toggle) so the result is
//! exact however rarely it is called. No handler sleeps and there is no task per ticket.
//!
//! A reload ([`Tickets::reconfigure`]) drops nothing: each ticket keeps the generation time and
//! ticket-ttl it was issued with, so only tickets issued afterwards see new ones; the slowdown,
//! the cap and the heavy-load period are the server's present state and apply from the reload
//! on (a lower cap refuses new tickets until enough expire, and evicts none).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use report_common::fence::Token;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::Config;
use crate::load::{LoadClock, later};
use crate::metrics::Metrics;

/// A ticket still being generated expires this many ticket-ttls after its request.
const UNREADY_TTL_FACTOR: u32 = 3;

/// Tolerance on the work clock, in seconds, for floating-point rounding (a ticket requested
/// exactly when another becomes ready, say).
const WORK_EPSILON: f64 = 1e-9;

/// What Retry-After says under a heavy load that never ends (period 0): the original
/// collector's poll interval.
const HEAVY_FOREVER_RETRY: Duration = Duration::from_secs(10);

/// What `/get_report` should answer for a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// The report is ready: serve the CSV for this offset.
    Ready { offset: u64 },
    /// Heavy load, or still generating: ask again after this many whole seconds (>= 1).
    NotReady { retry_after: u64 },
    /// Never issued with this offset, or expired.
    Unknown,
}

/// `/request_report` was refused: the store already holds `max-pending` tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// Whole seconds until the next ticket expires and frees a place (>= 1).
    pub retry_after: u64,
}

/// Counts for the service status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub pending: usize,
    pub ready: usize,
    pub held: usize,
    pub heavy: bool,
}

/// The fence a ticket was issued under: its lock and the token of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketFence {
    pub lock: Uuid,
    pub token: Token,
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    /// Set when the ticket was issued to a fenced request ([`crate::fence`]).
    fence: Option<TicketFence>,
    issued_at: Instant,
    /// Work clock value at which the report is ready: its value at the request plus the
    /// generation time in force then.
    target: f64,
    /// Orders tickets with the same target by request.
    seq: u64,
    /// The ticket-ttl in force at the request.
    ttl: Duration,
    /// When the ticket expires: 3 ttl after the request while generating, ttl after it became
    /// ready then. Its key in `Inner::expiring_unready` or `Inner::expiring_ready`.
    expires_at: Instant,
    ready_at: Option<Instant>,
    fetched: bool,
}

/// What a reload may change, in force from the reload on.
#[derive(Debug, Clone, Copy)]
struct Settings {
    clock: LoadClock,
    generation: f64,
    slowdown: f64,
    max_held: usize,
    ttl: Duration,
}

impl Settings {
    fn from(config: &Config, clock: LoadClock) -> Self {
        Self {
            clock,
            generation: config.report.generation_time.as_secs_f64(),
            slowdown: config.report.slowdown,
            max_held: config.limits.max_pending,
            ttl: config.limits.ticket_ttl,
        }
    }
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    /// Instant up to which `work` and all events have been computed.
    last: Instant,
    work: f64,
    next_seq: u64,
    entries: HashMap<Uuid, Entry>,
    /// Tickets still generating, in the order they become ready: by target (its bits order as
    /// the number does, targets being never negative), then by request.
    generating: BTreeMap<(u64, u64), Uuid>,
    /// Generating tickets by the instant they expire unready.
    expiring_unready: BTreeSet<(Instant, Uuid)>,
    /// Tickets with a ready report (fetched or not), by the instant they expire.
    expiring_ready: BTreeSet<(Instant, Uuid)>,
    pending: usize,
    ready_unfetched: usize,
    peak: usize,
}

/// The ticket store shared by all handlers.
#[derive(Debug)]
pub struct Tickets {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

/// The longest Retry-After the server sends: a week, as long as a ticket lives or a heavy-load
/// phase lasts at the most the configuration allows, and far inside what any client parses.
const MAX_RETRY_AFTER: u64 = 7 * 86_400;

/// Whole seconds for Retry-After, rounded up, from 1 to [`MAX_RETRY_AFTER`].
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.clamp(1, MAX_RETRY_AFTER)
}

impl Tickets {
    pub fn new(config: &Config, clock: LoadClock, metrics: Arc<Metrics>, start: Instant) -> Self {
        Self {
            inner: Mutex::new(Inner {
                settings: Settings::from(config, clock),
                last: start,
                work: 0.0,
                next_seq: 0,
                entries: HashMap::with_capacity(config.limits.max_pending.min(1 << 16)),
                generating: BTreeMap::new(),
                expiring_unready: BTreeSet::new(),
                expiring_ready: BTreeSet::new(),
                pending: 0,
                ready_unfetched: 0,
                peak: 0,
            }),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the store inconsistent in a way that
        // matters more than refusing every later request would.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a reloaded configuration at `now`: everything up to `now` is computed with the
    /// settings that were in force, then the new ones apply (see the module docs). No ticket
    /// is dropped or changed.
    pub fn reconfigure(&self, config: &Config, now: Instant) {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let clock = inner.settings.clock.reloaded(&config.heavy_load, now);
        inner.settings = Settings::from(config, clock);
        self.publish(&inner);
    }

    /// The next heavy-load toggle after `at`, by the clock in force.
    pub fn next_toggle(&self, at: Instant) -> Option<Instant> {
        self.lock().settings.clock.next_toggle(at)
    }

    /// Issues a new ticket for `offset`, unless `max-pending` tickets are already held.
    pub fn issue(&self, offset: u64, now: Instant) -> Result<Uuid, Full> {
        self.issue_under(offset, None, now)
    }

    /// [`Tickets::issue`], recording the fence the ticket was issued under, if any.
    pub fn issue_under(
        &self,
        offset: u64,
        fence: Option<TicketFence>,
        now: Instant,
    ) -> Result<Uuid, Full> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let settings = inner.settings;
        if inner.entries.len() >= settings.max_held {
            self.metrics.tickets_rejected.inc();
            return Err(Full {
                retry_after: next_free(&inner, now),
            });
        }
        let mut id = Uuid::new_v4();
        while inner.entries.contains_key(&id) {
            id = Uuid::new_v4();
        }
        let target = inner.work + settings.generation;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let expires_at = later(now, settings.ttl.saturating_mul(UNREADY_TTL_FACTOR));
        inner.entries.insert(
            id,
            Entry {
                offset,
                fence,
                issued_at: now,
                target,
                seq,
                ttl: settings.ttl,
                expires_at,
                ready_at: None,
                fetched: false,
            },
        );
        inner.generating.insert((target.to_bits(), seq), id);
        inner.expiring_unready.insert((expires_at, id));
        inner.pending += 1;
        inner.peak = inner.peak.max(inner.pending);
        // A zero generation time makes the report ready at once.
        self.settle(&mut inner);
        self.metrics.tickets_issued.inc();
        self.publish(&inner);
        Ok(id)
    }

    /// Looks a ticket up; a ready report is marked fetched (no longer pending) and stays
    /// fetchable until it expires, so a client may retry a download that failed midway.
    pub fn fetch(&self, id: Uuid, offset: u64, now: Instant) -> Fetch {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let settings = inner.settings;
        let heavy = settings.clock.is_heavy(now);
        let (pending, work) = (inner.pending, inner.work);
        let Some(entry) = inner.entries.get_mut(&id).filter(|e| e.offset == offset) else {
            return Fetch::Unknown;
        };
        if entry.ready_at.is_none() {
            let remaining = (entry.target - work).max(0.0);
            let at_current_rate = remaining * settings.factor(pending);
            let mut wait = Duration::try_from_secs_f64(at_current_rate).unwrap_or(Duration::MAX);
            if heavy {
                wait = wait.saturating_add(settings.heavy_left(now));
            }
            return Fetch::NotReady {
                retry_after: whole_seconds(wait),
            };
        }
        if heavy {
            return Fetch::NotReady {
                retry_after: whole_seconds(settings.heavy_left(now)),
            };
        }
        if !entry.fetched {
            entry.fetched = true;
            inner.pending -= 1;
            inner.ready_unfetched -= 1;
            self.publish(&inner);
        }
        Fetch::Ready { offset }
    }

    /// Whether the ticket is held and still pending at `now`: issued, its report not fetched,
    /// not expired, not cancelled.
    pub fn is_pending(&self, id: Uuid, offset: u64, now: Instant) -> bool {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        inner
            .entries
            .get(&id)
            .is_some_and(|entry| entry.offset == offset && !entry.fetched)
    }

    /// The fence a held ticket was issued under; `None` for a ticket not held or issued
    /// without one.
    pub fn fence_of(&self, id: Uuid, offset: u64, now: Instant) -> Option<TicketFence> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        inner
            .entries
            .get(&id)
            .filter(|entry| entry.offset == offset)
            .and_then(|entry| entry.fence)
    }

    /// Drops a ticket at the client's request, in whatever state, and says whether the store
    /// held it. Work done up to `now` is kept at the old rate; from `now` on the ticket no longer
    /// slows the others, and a later fetch finds nothing.
    pub fn cancel(&self, id: Uuid, offset: u64, now: Instant) -> bool {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        // Like a fetch, the ticket is the id with its offset: another offset names nothing.
        if inner
            .entries
            .get(&id)
            .is_none_or(|entry| entry.offset != offset)
        {
            return false;
        }
        let Some(entry) = inner.entries.remove(&id) else {
            return false;
        };
        if entry.ready_at.is_none() {
            inner
                .generating
                .remove(&(entry.target.to_bits(), entry.seq));
            inner.expiring_unready.remove(&(entry.expires_at, id));
            inner.pending -= 1;
        } else {
            inner.expiring_ready.remove(&(entry.expires_at, id));
            if !entry.fetched {
                inner.pending -= 1;
                inner.ready_unfetched -= 1;
            }
        }
        // Restarts the work clock if nothing generates any more, as every other removal does.
        self.settle(&mut inner);
        self.metrics.tickets_cancelled.inc();
        self.publish(&inner);
        true
    }

    /// Brings the store up to `now` (expiring what is due) and returns its counts; also
    /// refreshes the gauges, so a scrape sees current values even without traffic.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        self.publish(&inner);
        let heavy = inner.settings.clock.is_heavy(now);
        self.metrics.heavy_load.set(i64::from(heavy));
        Snapshot {
            pending: inner.pending,
            ready: inner.ready_unfetched,
            held: inner.entries.len(),
            heavy,
        }
    }

    /// Moves the work clock from `inner.last` to `now`, one event at a time.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        self.settle(inner);
        let settings = inner.settings;
        while inner.last < now {
            let from = inner.last;
            let mut until = now;
            let mut rate = 0.0;
            // The work clock value at which the first report to be ready is, and the instant
            // that happens at the current rate.
            let mut next_ready = None;
            if let Some((&(bits, _), _)) = inner.generating.first_key_value() {
                if let Some(toggle) = settings.clock.next_toggle(from) {
                    until = until.min(toggle);
                }
                if !settings.clock.is_heavy(from) {
                    rate = 1.0 / settings.factor(inner.pending);
                    let target = f64::from_bits(bits);
                    let needed = (target - inner.work).max(0.0);
                    // At least 1 ns, so that the loop always moves on.
                    let wall = Duration::try_from_secs_f64(needed / rate)
                        .unwrap_or(Duration::MAX)
                        .max(Duration::from_nanos(1));
                    let at = later(from, wall);
                    until = until.min(at);
                    next_ready = Some((target, at));
                }
            }
            for expiring in [&inner.expiring_unready, &inner.expiring_ready] {
                if let Some(&(at, _)) = expiring.first() {
                    until = until.min(at);
                }
            }
            inner.work += rate * (until - from).as_secs_f64();
            // Reaching the readiness instant means reaching its work value, whatever the
            // rounding of the step (which could otherwise strand the clock a few ulps short).
            if let Some((target, _)) = next_ready.filter(|&(_, at)| at == until) {
                inner.work = inner.work.max(target);
            }
            inner.last = until;
            self.settle(inner);
        }
    }

    /// Applies every event due at `inner.last`: reports that are ready, tickets that expired.
    fn settle(&self, inner: &mut Inner) {
        let now = inner.last;
        while let Some((&(bits, _), &id)) = inner.generating.first_key_value() {
            if inner.work + WORK_EPSILON < f64::from_bits(bits) {
                break;
            }
            inner.generating.pop_first();
            let Some(entry) = inner.entries.get_mut(&id) else {
                continue;
            };
            let took = now.saturating_duration_since(entry.issued_at);
            let unready_until = entry.expires_at;
            entry.ready_at = Some(now);
            entry.expires_at = later(now, entry.ttl);
            let expires_at = entry.expires_at;
            inner.expiring_unready.remove(&(unready_until, id));
            inner.expiring_ready.insert((expires_at, id));
            inner.ready_unfetched += 1;
            self.metrics
                .report_generation_seconds
                .observe(took.as_secs_f64());
        }
        while let Some(&(at, id)) = inner.expiring_unready.first() {
            if at > now {
                break;
            }
            inner.expiring_unready.pop_first();
            if let Some(entry) = inner.entries.remove(&id) {
                inner
                    .generating
                    .remove(&(entry.target.to_bits(), entry.seq));
            }
            inner.pending -= 1;
            self.metrics.tickets_expired.inc();
        }
        // Only differences of the work clock matter, and only while something generates:
        // restarting it from zero then keeps its precision over any uptime.
        if inner.generating.is_empty() {
            inner.work = 0.0;
        }
        while let Some(&(at, id)) = inner.expiring_ready.first() {
            if at > now {
                break;
            }
            inner.expiring_ready.pop_first();
            let fetched = inner.entries.remove(&id).is_none_or(|entry| entry.fetched);
            if !fetched {
                inner.pending -= 1;
                inner.ready_unfetched -= 1;
            }
            self.metrics.tickets_expired.inc();
        }
    }

    fn publish(&self, inner: &Inner) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.tickets_pending.set(gauge(inner.pending));
        self.metrics.tickets_ready.set(gauge(inner.ready_unfetched));
        self.metrics.tickets_pending_peak.set(gauge(inner.peak));
    }
}

impl Settings {
    /// `1 + slowdown x (other pending tickets)`: how much slower than alone a report is made.
    fn factor(&self, pending: usize) -> f64 {
        1.0 + self.slowdown * pending.saturating_sub(1) as f64
    }

    fn heavy_left(&self, now: Instant) -> Duration {
        self.clock
            .next_toggle(now)
            .map_or(HEAVY_FOREVER_RETRY, |toggle| {
                toggle.saturating_duration_since(now)
            })
    }
}

/// Whole seconds until the next ticket expires and frees a place.
fn next_free(inner: &Inner, now: Instant) -> u64 {
    let free_at = [&inner.expiring_unready, &inner.expiring_ready]
        .into_iter()
        .filter_map(|expiring| expiring.first().map(|&(at, _)| at))
        .min()
        .unwrap_or(now);
    whole_seconds(free_at.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeavyLoad;

    const G: u64 = 1000; // generation time in ms

    struct Fixture {
        tickets: Tickets,
        metrics: Arc<Metrics>,
        start: Instant,
    }

    impl Fixture {
        fn new(heavy: HeavyLoad, slowdown: f64, max_pending: usize, ttl_ms: u64) -> Self {
            let mut config = Config {
                heavy_load: heavy,
                ..Config::default()
            };
            config.report.generation_time = Duration::from_millis(G);
            config.report.slowdown = slowdown;
            config.limits.max_pending = max_pending;
            config.limits.ticket_ttl = Duration::from_millis(ttl_ms);
            let start = Instant::now();
            let metrics = Arc::new(Metrics::new());
            let clock = LoadClock::new(&config.heavy_load, start);
            let tickets = Tickets::new(&config, clock, metrics.clone(), start);
            Self {
                tickets,
                metrics,
                start,
            }
        }

        fn calm() -> Self {
            Self::new(no_heavy_load(), 1.0, 100, 600_000)
        }

        fn at(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }

        fn issue(&self, ms: u64) -> Uuid {
            self.tickets
                .issue(7, self.at(ms))
                .expect("room for a ticket")
        }

        fn fetch(&self, id: Uuid, ms: u64) -> Fetch {
            self.tickets.fetch(id, 7, self.at(ms))
        }

        fn ready(&self, id: Uuid, ms: u64) -> bool {
            matches!(self.fetch(id, ms), Fetch::Ready { .. })
        }

        /// Readiness without fetching, which would change the pending count.
        fn peek_ready(&self, id: Uuid, ms: u64) -> bool {
            self.tickets.snapshot(self.at(ms));
            self.tickets.lock().entries[&id].ready_at.is_some()
        }
    }

    /// One sample's value from the exposition.
    fn sample(metrics: &Metrics, name: &str) -> f64 {
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|line| line.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn no_heavy_load() -> HeavyLoad {
        HeavyLoad {
            period: Duration::ZERO,
            initially_on: false,
        }
    }

    #[test]
    fn a_lone_ticket_is_ready_after_the_generation_time() {
        let f = Fixture::calm();
        let id = f.issue(0);
        assert_eq!(f.fetch(id, G - 1), Fetch::NotReady { retry_after: 1 });
        assert_eq!(f.fetch(id, G), Fetch::Ready { offset: 7 });
        assert_eq!(
            sample(&f.metrics, "report_apis_report_generation_seconds_count"),
            1.0
        );
    }

    #[test]
    fn overlapping_tickets_slow_each_other_down() {
        let f = Fixture::calm();
        let a = f.issue(0);
        let b = f.issue(0);
        let c = f.issue(0);
        // Three pending: each needs 1 s x (1 + 2) = 3 s.
        assert!(!f.peek_ready(a, 3 * G - 1));
        assert!(f.peek_ready(a, 3 * G));
        assert!(f.peek_ready(b, 3 * G) && f.peek_ready(c, 3 * G));
    }

    #[test]
    fn rate_is_re_evaluated_as_the_pending_count_changes() {
        // A alone for 0.5 s (half done), then B joins: both at half speed. A needs 1 s more,
        // ready at 1.5 s. B has done 0.5 s of work by then and, with A still pending, needs
        // another second at half speed: 2.5 s.
        let f = Fixture::calm();
        let a = f.issue(0);
        let b = f.issue(G / 2);
        assert!(!f.peek_ready(a, 3 * G / 2 - 1));
        assert!(f.peek_ready(a, 3 * G / 2));
        assert!(!f.peek_ready(b, 5 * G / 2 - 1));
        assert!(f.peek_ready(b, 5 * G / 2));

        // Same, but A is fetched as soon as it is ready: B runs alone from 1.5 s, ready at 2 s.
        let f = Fixture::calm();
        let a = f.issue(0);
        let b = f.issue(G / 2);
        assert!(f.ready(a, 3 * G / 2));
        assert!(!f.peek_ready(b, 2 * G - 1));
        assert!(f.peek_ready(b, 2 * G));
    }

    #[test]
    fn zero_slowdown_keeps_every_report_at_the_generation_time() {
        let f = Fixture::new(no_heavy_load(), 0.0, 100, 600_000);
        let ids: Vec<_> = (0..10).map(|_| f.issue(0)).collect();
        assert!(ids.iter().all(|&id| f.peek_ready(id, G)));
    }

    #[test]
    fn heavy_load_freezes_generation_and_serves_nothing() {
        // Heavy for the first 2 s, normal for the next 2 s, heavy again from 4 s.
        let f = Fixture::new(
            HeavyLoad {
                period: Duration::from_millis(2 * G),
                initially_on: true,
            },
            1.0,
            100,
            600_000,
        );
        let id = f.issue(0);
        assert_eq!(f.fetch(id, 100), Fetch::NotReady { retry_after: 3 });
        assert!(!f.peek_ready(id, 3 * G - 1));
        assert!(f.peek_ready(id, 3 * G));
        // Ready, but a heavy phase serves nothing until it ends at 6 s.
        assert_eq!(f.fetch(id, 4 * G + 500), Fetch::NotReady { retry_after: 2 });
        assert!(f.ready(id, 6 * G));
        assert_eq!(
            sample(&f.metrics, "report_apis_report_generation_seconds_sum"),
            3.0
        );
    }

    #[test]
    fn requests_during_heavy_load_leave_the_server_slower_afterwards() {
        let f = Fixture::new(
            HeavyLoad {
                period: Duration::from_millis(10 * G),
                initially_on: true,
            },
            1.0,
            100,
            600_000,
        );
        // Four abandoned tickets piled up during the heavy phase...
        for ms in [0, 1000, 2000, 3000] {
            f.issue(ms);
        }
        // ...make a fresh request after it ends take five times as long.
        let fresh = f.issue(10 * G);
        assert!(!f.peek_ready(fresh, 15 * G - 1));
        assert!(f.peek_ready(fresh, 15 * G));
    }

    #[test]
    fn fetching_marks_the_ticket_fetched_once_and_keeps_it_until_ttl() {
        let f = Fixture::new(no_heavy_load(), 1.0, 100, 5 * G);
        let id = f.issue(0);
        assert_eq!(f.tickets.snapshot(f.at(G)).pending, 1);
        assert_eq!(f.tickets.snapshot(f.at(G)).ready, 1);
        assert!(f.ready(id, G));
        assert!(f.ready(id, 2 * G), "a second fetch still gets the report");
        let snap = f.tickets.snapshot(f.at(2 * G));
        assert_eq!((snap.pending, snap.ready, snap.held), (0, 0, 1));
        assert_eq!(f.fetch(id, 6 * G), Fetch::Unknown);
        assert_eq!(f.tickets.snapshot(f.at(6 * G)).held, 0);
    }

    #[test]
    fn unfetched_reports_expire_ttl_after_ready_and_unready_ones_after_three_ttl() {
        let f = Fixture::new(no_heavy_load(), 1.0, 100, 2 * G);
        let id = f.issue(0);
        assert!(f.peek_ready(id, 3 * G - 1));
        assert_eq!(f.fetch(id, 3 * G), Fetch::Unknown);
        assert_eq!(f.metrics.tickets_expired.get(), 1);

        let forever_heavy = HeavyLoad {
            period: Duration::ZERO,
            initially_on: true,
        };
        let f = Fixture::new(forever_heavy, 1.0, 100, 2 * G);
        let id = f.issue(0);
        assert!(matches!(f.fetch(id, 6 * G - 1), Fetch::NotReady { .. }));
        assert_eq!(f.fetch(id, 6 * G), Fetch::Unknown);
        let snap = f.tickets.snapshot(f.at(6 * G));
        assert_eq!((snap.pending, snap.held), (0, 0));
    }

    #[test]
    fn expiry_of_an_abandoned_ticket_speeds_up_the_others() {
        // ttl 1 s: A, alone, is ready at 1 s and expires unfetched at 2 s.
        let f = Fixture::new(no_heavy_load(), 1.0, 100, G);
        let _a = f.issue(0);
        let c = f.issue(G);
        // From 1 s to 2 s: A still pending (ready, unfetched), so C runs at half speed and does
        // 0.5 s of work. At 2 s A expires; C runs alone and needs 0.5 s more: ready at 2.5 s.
        assert!(!f.peek_ready(c, 2 * G + G / 2 - 1));
        assert!(f.peek_ready(c, 2 * G + G / 2));
    }

    #[test]
    fn a_cancelled_pending_ticket_stops_slowing_the_others_at_once() {
        let f = Fixture::calm();
        let a = f.issue(0);
        let b = f.issue(0);
        // At 0.5 s each has done 0.25 s of work at half speed: B's estimate is 0.75 s x 2.
        assert_eq!(f.fetch(b, G / 2), Fetch::NotReady { retry_after: 2 });
        assert!(f.tickets.cancel(a, 7, f.at(G / 2)));
        assert_eq!(f.metrics.tickets_pending.get(), 1);
        // Alone from 0.5 s, B needs 0.75 s more: ready at 1.25 s instead of 2 s.
        assert_eq!(f.fetch(b, G / 2), Fetch::NotReady { retry_after: 1 });
        assert!(!f.peek_ready(b, 5 * G / 4 - 1));
        assert!(f.peek_ready(b, 5 * G / 4));
        assert_eq!(f.fetch(a, 5 * G / 4), Fetch::Unknown);
        assert_eq!(f.metrics.tickets_pending_peak.get(), 2);
        assert_eq!(f.metrics.tickets_cancelled.get(), 1);
        assert_eq!(f.metrics.tickets_expired.get(), 0);
    }

    #[test]
    fn cancelling_the_only_generating_ticket_leaves_a_fresh_start() {
        let f = Fixture::calm();
        let a = f.issue(0);
        assert!(f.tickets.cancel(a, 7, f.at(G / 2)));
        let b = f.issue(G / 2);
        assert!(!f.peek_ready(b, 3 * G / 2 - 1));
        assert!(f.peek_ready(b, 3 * G / 2));
    }

    #[test]
    fn cancelling_twice_or_an_unheld_ticket_drops_nothing_more() {
        let f = Fixture::calm();
        let a = f.issue(0);
        assert!(
            !f.tickets.cancel(a, 8, f.at(0)),
            "another offset is another ticket"
        );
        assert!(!f.tickets.cancel(Uuid::new_v4(), 7, f.at(0)));
        assert_eq!(f.tickets.snapshot(f.at(0)).pending, 1);
        assert!(f.tickets.cancel(a, 7, f.at(0)));
        assert!(!f.tickets.cancel(a, 7, f.at(0)));
        assert_eq!(f.metrics.tickets_cancelled.get(), 1);
        let snap = f.tickets.snapshot(f.at(0));
        assert_eq!((snap.pending, snap.ready, snap.held), (0, 0, 0));
    }

    #[test]
    fn a_cancelled_ready_ticket_is_gone_and_frees_its_place() {
        let f = Fixture::new(no_heavy_load(), 1.0, 2, 10 * G);
        let unfetched = f.issue(0);
        let fetched = f.issue(0);
        assert!(f.ready(fetched, 2 * G));
        let snap = f.tickets.snapshot(f.at(2 * G));
        assert_eq!((snap.pending, snap.ready, snap.held), (1, 1, 2));
        assert!(f.tickets.issue(7, f.at(2 * G)).is_err());

        assert!(f.tickets.cancel(unfetched, 7, f.at(2 * G)));
        let snap = f.tickets.snapshot(f.at(2 * G));
        assert_eq!((snap.pending, snap.ready, snap.held), (0, 0, 1));
        assert_eq!(f.fetch(unfetched, 2 * G), Fetch::Unknown);
        // A fetched ticket is no longer pending, but still held: cancelling frees its place.
        assert!(f.tickets.cancel(fetched, 7, f.at(2 * G)));
        assert_eq!(f.tickets.snapshot(f.at(2 * G)).held, 0);
        assert_eq!(f.fetch(fetched, 2 * G), Fetch::Unknown);
        assert!(f.tickets.issue(7, f.at(2 * G)).is_ok());
        // Of the three, only the ticket issued last is left to expire.
        f.tickets.snapshot(f.at(100 * G));
        assert_eq!(f.metrics.tickets_expired.get(), 1);
        assert_eq!(f.metrics.tickets_cancelled.get(), 2);
    }

    #[test]
    fn the_cap_refuses_new_tickets_until_one_expires() {
        let f = Fixture::new(no_heavy_load(), 1.0, 2, 10 * G);
        let a = f.issue(0);
        f.issue(0);
        assert_eq!(
            f.tickets.issue(0, f.at(500)),
            Err(Full { retry_after: 30 }),
            "nothing ready yet: the first place frees when the oldest unready ticket expires"
        );
        assert!(f.ready(a, 2 * G));
        // Fetched tickets are still held until they expire, 10 s after they became ready.
        assert_eq!(
            f.tickets.issue(0, f.at(2 * G)),
            Err(Full { retry_after: 10 })
        );
        assert!(f.tickets.issue(0, f.at(12 * G)).is_ok());
        assert_eq!(f.metrics.tickets_rejected.get(), 2);
    }

    #[test]
    fn wrong_offset_or_unknown_id_is_unknown() {
        let f = Fixture::calm();
        let id = f.issue(0);
        assert_eq!(f.tickets.fetch(id, 8, f.at(G)), Fetch::Unknown);
        assert_eq!(f.tickets.fetch(Uuid::new_v4(), 7, f.at(G)), Fetch::Unknown);
    }

    #[test]
    fn peak_and_gauges_follow_the_counts() {
        let f = Fixture::calm();
        let a = f.issue(0);
        let b = f.issue(0);
        assert!(f.ready(a, 2 * G));
        assert!(f.ready(b, 2 * G));
        f.tickets.snapshot(f.at(2 * G));
        assert_eq!(f.metrics.tickets_pending.get(), 0);
        assert_eq!(f.metrics.tickets_pending_peak.get(), 2);
        assert_eq!(f.metrics.tickets_issued.get(), 2);
    }

    #[test]
    fn readiness_stays_exact_when_the_work_clock_is_large() {
        // Ten million seconds of generation: the work clock's rounding is then about 2 ns per
        // step, which must neither strand a report nor spin the loop.
        let mut config = Config::default();
        config.report.generation_time = Duration::from_secs(10_000_000);
        config.report.slowdown = 0.0;
        config.limits.ticket_ttl = Duration::from_secs(10_000_000);
        let start = Instant::now();
        let metrics = Arc::new(Metrics::new());
        let clock = LoadClock::new(&no_heavy_load(), start);
        let tickets = Tickets::new(&config, clock, metrics, start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        let a = tickets.issue(1, at(0)).unwrap();
        let b = tickets.issue(2, at(9_999_999_700)).unwrap();
        assert!(matches!(
            tickets.fetch(a, 1, at(9_999_999_999)),
            Fetch::NotReady { .. }
        ));
        assert_eq!(
            tickets.fetch(a, 1, at(10_000_000_000)),
            Fetch::Ready { offset: 1 }
        );
        assert!(matches!(
            tickets.fetch(b, 2, at(19_999_999_699)),
            Fetch::NotReady { .. }
        ));
        assert_eq!(
            tickets.fetch(b, 2, at(19_999_999_700)),
            Fetch::Ready { offset: 2 }
        );
    }

    #[test]
    fn retry_after_saturates_at_extreme_durations_and_factors() {
        assert_eq!(whole_seconds(Duration::MAX), MAX_RETRY_AFTER);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        for (generation, ttl, slowdown, period) in [
            (Duration::MAX, Duration::MAX, f64::MAX, Duration::MAX),
            (
                Duration::MAX,
                Duration::from_millis(1),
                1e300,
                Duration::from_nanos(1),
            ),
            (
                Duration::from_nanos(1),
                Duration::MAX,
                1e300,
                Duration::ZERO,
            ),
            (
                Duration::from_secs(3600),
                Duration::from_secs(7 * 86_400),
                100.0,
                Duration::MAX,
            ),
        ] {
            let mut config = Config::default();
            config.report.generation_time = generation;
            config.report.slowdown = slowdown;
            config.limits.ticket_ttl = ttl;
            config.limits.max_pending = 1000;
            config.heavy_load = HeavyLoad {
                period,
                initially_on: true,
            };
            let start = Instant::now();
            let clock = LoadClock::new(&config.heavy_load, start);
            let tickets = Tickets::new(&config, clock, Arc::new(Metrics::new()), start);
            let ids: Vec<Uuid> = (0..1000)
                .map(|n| tickets.issue(n, start).unwrap())
                .collect();
            let Err(full) = tickets.issue(0, start) else {
                panic!("the cap holds");
            };
            assert!((1..=MAX_RETRY_AFTER).contains(&full.retry_after));
            for at in [
                start,
                start + Duration::from_secs(1),
                start + Duration::from_secs(30 * 86_400),
            ] {
                match tickets.fetch(ids[0], 0, at) {
                    Fetch::NotReady { retry_after } => {
                        assert!(
                            (1..=MAX_RETRY_AFTER).contains(&retry_after),
                            "{generation:?} {slowdown}: {retry_after}"
                        );
                    }
                    Fetch::Ready { .. } | Fetch::Unknown => {}
                }
                tickets.snapshot(at);
            }
        }
    }

    #[test]
    fn long_idle_gaps_are_computed_in_one_step() {
        let f = Fixture::new(
            HeavyLoad {
                period: Duration::from_millis(1),
                initially_on: false,
            },
            1.0,
            100,
            600_000,
        );
        // No ticket generating: the toggles in between cost nothing.
        f.tickets.snapshot(f.at(86_400_000));
        let id = f.issue(86_400_000);
        assert!(f.peek_ready(id, 86_400_000 + 2 * G + 10));
    }

    #[test]
    fn a_reload_keeps_every_ticket_and_changes_only_what_comes_after() {
        let f = Fixture::new(no_heavy_load(), 0.0, 3, 10 * G);
        let old = f.issue(0);
        let held = [f.issue(0), f.issue(0)];
        let mut config = Config::default();
        config.report.generation_time = Duration::from_millis(5 * G);
        config.report.slowdown = 0.0;
        config.limits.max_pending = 1;
        config.limits.ticket_ttl = Duration::from_millis(10 * G);
        config.heavy_load = no_heavy_load();
        f.tickets.reconfigure(&config, f.at(G / 2));

        // A lower cap refuses new tickets but evicts none.
        assert_eq!(f.tickets.snapshot(f.at(G / 2)).held, 3);
        assert!(f.tickets.issue(7, f.at(G / 2)).is_err());
        // The tickets issued before keep their generation time of 1 s.
        assert!(f.ready(old, G));
        assert!(held.iter().all(|&id| f.ready(id, G)));
        assert_eq!(f.tickets.snapshot(f.at(G)).held, 3);

        // Once they expire there is room again, and new tickets take the new 5 s.
        let new = f.issue(11 * G);
        assert!(!f.peek_ready(new, 16 * G - 1));
        assert!(f.peek_ready(new, 16 * G));
    }

    #[test]
    fn a_shorter_generation_time_may_make_a_newer_ticket_ready_first() {
        let f = Fixture::new(no_heavy_load(), 0.0, 100, 600_000);
        let slow = f.issue(0);
        let mut config = Config::default();
        config.report.generation_time = Duration::from_millis(G / 10);
        config.report.slowdown = 0.0;
        config.heavy_load = no_heavy_load();
        f.tickets.reconfigure(&config, f.at(0));
        let fast = f.issue(0);
        assert!(f.peek_ready(fast, G / 10));
        assert!(!f.peek_ready(slow, G - 1));
        assert!(f.peek_ready(slow, G));
    }
}
