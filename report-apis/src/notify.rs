//! What the server tells systemd: READY, RELOADING, STATUS, WATCHDOG and STOPPING.
//!
//! Every call is a no-op when the server was not started by systemd with `Type=notify`
//! (no `NOTIFY_SOCKET`), so tests and manual runs need nothing special.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {err}");
    }
}

/// The socket is bound and requests are being answered.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has begun (SIGHUP). MONOTONIC_USEC lets systemd 253 and later tell this reload from
/// an earlier one; 252 ignores it. Under `systemctl reload` the unit is already reloading and
/// waits for `ExecReload=` (`report-apis reload`); a bare `kill -HUP` makes systemd show the
/// unit reloading until [`reloaded`].
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The reload is over, whether the new configuration is in force or was refused.
pub fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// The one-line state shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Proof of life for `WatchdogSec=`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// How often to send WATCHDOG=1: half the interval systemd expects, or never.
pub fn watchdog_interval() -> Option<Duration> {
    ping_every(sd_notify::watchdog_enabled())
}

/// Half the watchdog timeout, so one late ping never trips it. A zero timeout (which systemd
/// never sends, but a hand-set `WATCHDOG_USEC=0` would) means no watchdog rather than a timer
/// that cannot tick.
fn ping_every(timeout: Option<Duration>) -> Option<Duration> {
    timeout.map(|t| t / 2).filter(|every| !every.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(
            ping_every(Some(Duration::from_secs(30))),
            Some(Duration::from_secs(15))
        );
        assert_eq!(ping_every(None), None);
        assert_eq!(ping_every(Some(Duration::ZERO)), None);
    }
}
