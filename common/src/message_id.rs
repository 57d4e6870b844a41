//! The journal's `MESSAGE_ID` of every kind of line an operator may look for, one per kind and
//! never reused, so `journalctl MESSAGE_ID=<id>` finds every line of that kind and
//! `journalctl -x` shows the catalog's explanation of it (what happened, why, what to do).
//!
//! The catalog entries live in `packaging/debian/<package>/<package>.catalog`, installed under
//! `/usr/lib/systemd/catalog/`; every constant here has exactly one entry there (tested). An ID
//! is 128 random bits in hex: a new kind gets a new one, and a kind's ID never changes.

/// report-collector: a report was collected and saved.
pub const COLLECTED: &str = "48f90c49e58148d79eba1360cfbb768d";
/// report-collector: skipped because another run holds the lock (forbid), the wait for it
/// timed out (wait), or its holder could not be confirmed (replace).
pub const SKIPPED_LOCK_HELD: &str = "d0b59ee9a55745759e93c69d0b1731d2";
/// report-collector: a timer start later than `starting-deadline` after its slot skipped itself.
pub const SKIPPED_LATE: &str = "dc71fbd7fb7f41c993f4163c72c59947";
/// report-collector: the run failed (server, disk, lock file).
pub const FAILED: &str = "228d0a2afd1448c5b9e3bef585cbc6cb";
/// report-collector: the run was cancelled by SIGTERM or SIGINT.
pub const CANCELLED: &str = "50f22f13d83b4c02a3bde8ea59229442";
/// report-collector: the configuration (file or command line) was rejected.
pub const COLLECTOR_CONFIG_REJECTED: &str = "352762ec9c8a45b494677fb92b190326";
/// report-collector: systemd could not be asked over D-Bus how this run was started.
pub const NO_BUS: &str = "a658013705df4e1bae4352e583ed7e43";
/// report-apis: the server listens and told systemd READY=1.
pub const SERVER_READY: &str = "91f213b92fd848088a306d9646d75d01";
/// report-apis: a heavy-load phase began (ticket generation frozen).
pub const HEAVY_LOAD_ON: &str = "68b33298cd1a4bf4867ab0e6121aa951";
/// report-apis: a heavy-load phase ended.
pub const HEAVY_LOAD_OFF: &str = "4c003a0b9ff84b9687ee6e0e45a93260";
/// report-apis: the configuration was rejected at start.
pub const APIS_CONFIG_REJECTED: &str = "a06e84b8259840a3b62c5bc06938a4f5";
/// report-apis: `systemctl reload` re-read the configuration.
pub const RELOADED: &str = "be4bf0bd5bee48408c470f6f71744f23";
/// report-apis: `systemctl reload` found the new configuration invalid; the old one stays.
pub const RELOAD_REJECTED: &str = "66790bed26e3495b9abd3456fc8e9b06";
/// report-apis: requests and connections refused at a limit, summed up at most every 10 s.
pub const REJECTIONS: &str = "1d630918afd14a3fbe62e71418599577";

/// Test support (feature `test-util`): the `@FIELD@` placeholders of `id`'s entry in `catalog`
/// (the text of a catalog file), which `journalctl -x` fills from the line's fields.
///
/// # Panics
/// When `catalog` has no entry for `id`.
#[cfg(feature = "test-util")]
pub fn placeholders(catalog: &str, id: &str) -> Vec<String> {
    let (_, entry) = catalog
        .split_once(&format!("\n-- {id}\n"))
        .unwrap_or_else(|| panic!("no catalog entry for {id}"));
    let entry = entry.split("\n-- ").next().unwrap_or_default();
    entry
        .split('@')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}
