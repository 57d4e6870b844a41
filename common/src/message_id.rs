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
/// timed out (wait), or its holder could not be confirmed (replace): `SKIP=lock-held`.
pub const SKIPPED_LOCK_HELD: &str = "d0b59ee9a55745759e93c69d0b1731d2";
/// report-collector: a timer start later than `starting-deadline` after its slot skipped itself.
pub const SKIPPED_LATE: &str = "dc71fbd7fb7f41c993f4163c72c59947";
/// report-collector: skipped because another host sharing the PostgreSQL lock claimed the
/// slot first: `SKIP=slot-taken`.
pub const SKIPPED_SLOT_TAKEN: &str = "78b58419927f4e45b87f0106607f79f8";
/// report-collector: the run failed (server, disk, lock file) and exited 1.
pub const FAILED: &str = "228d0a2afd1448c5b9e3bef585cbc6cb";
/// report-collector: the run failed because the PostgreSQL lock's database could not be
/// reached (exit 69).
pub const DATABASE_UNAVAILABLE: &str = "d0b3c2c5e24c4f2a80f9b816e9b27c01";
/// report-collector: the run failed because the PostgreSQL lock's lease ran out while it held
/// it (exit 79, shared with [`FENCED`]).
pub const LEASE_LOST: &str = "c562304aedb54c09a50a4b86a4d5496f";
/// report-collector: the run failed because report-apis refused its fencing token: a later
/// holder has the lock (exit 79).
pub const FENCED: &str = "e6d1ab9cd92e42a09e6b3814145f175a";
/// report-collector: the report server did not acknowledge the run's fencing token (said once,
/// until it does).
pub const FENCE_NOT_ACKNOWLEDGED: &str = "e0fbb970d1f447b798106fbadc7026e0";
/// report-collector: the lease ran out after the report was saved; the run still collected.
pub const LEASE_LOST_AFTER_SAVE: &str = "8595ec1705bb48db94dd4fddeb93ab75";
/// report-collector: the run took over the ticket an earlier run left unfinished.
pub const TICKET_RESUMED: &str = "ff9d5fd34ccf4fe8bc68897c82abc193";
/// report-collector: the run did not take over the ticket an earlier run left unfinished.
pub const RESUME_DECLINED: &str = "78f6acef39024b0387299ac0c2686ead";
/// report-collector: a value read back from what another process or host can write (the lock
/// file's holder record, a PostgreSQL row, the state file) failed the check it passed where it
/// first entered, and was declined: `SOURCE`, `FIELD`, `VALUE` (escaped, cut short).
pub const VALUE_DECLINED: &str = "3b9e0c5f7a2d4e61b8c4d1f0a6e93c27";
/// report-collector: a left ticket no run will fetch was cancelled on the server, or could not
/// be.
pub const TICKET_CANCEL: &str = "14415de29fe944e692bc8e330c8dc0ed";
/// report-collector: the PostgreSQL lock's slot was claimed by a run that stopped before
/// saving its report; this run took the slot over.
pub const SLOT_TAKEN_OVER: &str = "1662fb38ce474fc0bea7d9e3394faf7d";
/// report-collector: the database session of a holder whose lease ran out was ended.
pub const STALE_SESSION_ENDED: &str = "a28ae7bb5f244bcfb90e5724ea894ce1";
/// report-collector: policy replace signalled or ended the run holding the lock.
pub const HOLDER_REPLACED: &str = "2f41b836e2cd4759960e7e94358b0089";
/// report-collector: a run started as root switched to the state directory's owner.
pub const RAN_AS_OWNER: &str = "118a32c5cf1d4487a8d544d2afc3dfb8";
/// report-collector: a run started as root could not switch to the state directory's owner.
pub const OWNER_SWITCH_REFUSED: &str = "6594206aed10489096ca4b2d9f07abac";
/// report-collector: the state file could not be read or written as usual (an unreadable one
/// is moved aside).
pub const STATE_FILE_PROBLEM: &str = "8da2fb2ad28747b186d32b47f0b2edaa";
/// report-collector: the metrics file could not be written.
pub const METRICS_NOT_WRITTEN: &str = "867c1b8d6d8041389ea6336efe151db0";
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
/// report-apis: `limits.max-connections` was lowered at start to what the open-file limit
/// leaves room for.
pub const CONNECTIONS_CAPPED: &str = "ba6c0e5ac44f4541b4b56aa32152a7f5";
/// report-apis: the listen address could not be bound; the server did not start.
pub const BIND_FAILED: &str = "c7e2b56bde664bad8b0887faa2206abb";
/// report-apis: `systemctl reload` re-read the configuration.
pub const RELOADED: &str = "be4bf0bd5bee48408c470f6f71744f23";
/// report-apis: `systemctl reload` was refused, the configuration in force stays: the file has
/// a mistake (refused by `report-apis reload`), or a change needs a restart (by the server).
pub const RELOAD_REJECTED: &str = "66790bed26e3495b9abd3456fc8e9b06";
/// report-apis: requests and connections refused at a limit, summed up at most every 10 s.
pub const REJECTIONS: &str = "1d630918afd14a3fbe62e71418599577";
/// report-apis: connections were still open at the end of the drain timeout and were closed.
pub const DRAIN_TIMEOUT: &str = "05359034602944be9629b9d0b9162a06";
/// report-apis: the server stopped after SIGTERM or SIGINT.
pub const STOPPED: &str = "35e0918262e8449b98c58e8965121173";
/// report-apis: the fence's state file could not be read at start; the server did not start
/// (exit 78).
pub const FENCE_STATE_REJECTED: &str = "b84ab48d83dd45ad826c671357944e50";
/// report-apis: a raised fence mark could not be written to the state file; requests that
/// would raise a mark are refused with 503 until it can be.
pub const FENCE_STATE_NOT_WRITTEN: &str = "2d9ec47ae45f45c58604f4082f68490a";

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
