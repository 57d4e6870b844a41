//! The exit codes of both programs, from sysexits(3) where one fits, so that systemd, scripts
//! and the experiment can tell a run that should be retried from one that never will work.

/// Done.
pub const SUCCESS: u8 = 0;
/// Any other failure: the server unreachable until the deadline, a bad answer, the disk.
pub const FAILURE: u8 = 1;
/// EX_USAGE: the command line is wrong.
pub const USAGE: u8 = 64;
/// EX_UNAVAILABLE: a service the run depends on cannot be reached (the collector: the
/// PostgreSQL lock's database at start); nothing was collected. systemd counts it as a failure.
pub const UNAVAILABLE: u8 = 69;
/// EX_TEMPFAIL: nothing went wrong, but nothing was done; the next run may do it (the
/// collector's skips).
pub const TEMPFAIL: u8 = 75;
/// EX_CONFIG: the configuration is unusable; restarting will not help.
pub const CONFIG: u8 = 78;
/// The collector lost its lock while it ran: its PostgreSQL lease ran out (paused, partitioned,
/// or its session ended by another host), or report-apis refused its fencing token (another
/// run took the lock since). It saved nothing and stopped. Outside the sysexits range on
/// purpose, so no other failure shares it.
pub const LEASE_LOST: u8 = 79;
/// Ended by SIGINT, as a shell reports it (128 + 2).
pub const SIGINT: u8 = 130;
/// Ended by SIGTERM, as a shell reports it (128 + 15).
pub const SIGTERM: u8 = 143;
