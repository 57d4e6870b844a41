//! The arms of the experiment: which collector policy is fired by which kind of scheduler.
//!
//! Cron fires a process at every slot whatever is running; that is where the collector's own
//! policy does all the work. systemd 252 never starts a second run and fires a swallowed slot the
//! moment the run ends; that is where `forbid` with and without a starting deadline differ.
//! One more arm is `forbid` under cron with every other run killed (`kill -9`) while it holds a
//! ticket: what the next run makes of the ticket a dead run left behind. The last two are a fleet
//! of hosts on the PostgreSQL lock whose holders the experiment pauses past their lease, against
//! a server with the fence enforced and with it off.

use report_collector::lock::Policy;

/// Hosts of each arm on the PostgreSQL lock.
pub const POSTGRES_HOSTS: usize = 3;

/// How the experiment's own launcher fires runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// A process at every slot, whatever is running.
    Cron,
    /// Never two at once; a slot that elapsed during a run fires the moment the run ends,
    /// declared a timer start (`--trigger timer`) so that starting-deadline applies.
    Systemd252,
}

impl Launcher {
    pub fn as_str(self) -> &'static str {
        match self {
            Launcher::Cron => "cron",
            Launcher::Systemd252 => "systemd 252",
        }
    }
}

/// Which arm; the names the table, the chart and the shape checks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArmId {
    Allow,
    Forbid,
    ForbidDeadline,
    ForbidNoDeadline,
    Replace,
    Wait,
    ForbidKilled,
    PostgresFenced,
    PostgresUnfenced,
}

/// Which lock the arm's collectors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// The flock of one host (`lock-backend = "flock"`, the default).
    File,
    /// The lease in a PostgreSQL row, shared by the arm's hosts (`lock-backend = "postgres"`),
    /// against a server that enforces the fence or not (`[fence] enforce`).
    Postgres { fence: bool },
}

/// One arm: a policy, a launcher and whether the collector has a starting deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm {
    pub id: ArmId,
    pub policy: Policy,
    pub launcher: Launcher,
    pub starting_deadline: bool,
    /// The experiment `kill -9`s every other run it fires (the 2nd, 4th, ...) once that run
    /// holds a ticket (see [`crate::launcher`]).
    pub kill_every_other: bool,
    pub lock: LockKind,
    /// Simulated hosts: each slot fires one run on each (one collector config, state and
    /// report folder each; on the PostgreSQL lock each its own `host-name`).
    pub hosts: usize,
    /// The experiment stops (SIGSTOP) every other holder as it sends its ticket request and
    /// continues it once another host took over (see [`crate::proxy`]).
    pub pause_holders: bool,
}

impl Arm {
    /// Every arm, in table order.
    pub const ALL: [Arm; 9] = [
        Arm {
            id: ArmId::Allow,
            policy: Policy::Allow,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::Forbid,
            policy: Policy::Forbid,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::ForbidDeadline,
            policy: Policy::Forbid,
            launcher: Launcher::Systemd252,
            starting_deadline: true,
            kill_every_other: false,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::ForbidNoDeadline,
            policy: Policy::Forbid,
            launcher: Launcher::Systemd252,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::Replace,
            policy: Policy::Replace,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::Wait,
            policy: Policy::Wait,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::ForbidKilled,
            policy: Policy::Forbid,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: true,
            lock: LockKind::File,
            hosts: 1,
            pause_holders: false,
        },
        Arm {
            id: ArmId::PostgresFenced,
            policy: Policy::Forbid,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::Postgres { fence: true },
            hosts: POSTGRES_HOSTS,
            pause_holders: true,
        },
        Arm {
            id: ArmId::PostgresUnfenced,
            policy: Policy::Forbid,
            launcher: Launcher::Cron,
            starting_deadline: false,
            kill_every_other: false,
            lock: LockKind::Postgres { fence: false },
            hosts: POSTGRES_HOSTS,
            pause_holders: true,
        },
    ];

    /// The arms of one experiment: all, or all but those on the PostgreSQL lock.
    pub fn selected(with_postgres: bool) -> Vec<Arm> {
        Arm::ALL
            .into_iter()
            .filter(|a| with_postgres || !a.on_postgres())
            .collect()
    }

    /// Whether the arm's collectors take the PostgreSQL lock.
    pub fn on_postgres(&self) -> bool {
        matches!(self.lock, LockKind::Postgres { .. })
    }

    /// Whether the arm's server enforces the fence (`[fence] enforce`, on by default).
    pub fn server_enforces_fence(&self) -> bool {
        !matches!(self.lock, LockKind::Postgres { fence: false })
    }

    /// The label in the table and the chart legend.
    pub fn label(&self) -> &'static str {
        match self.id {
            ArmId::Allow => "allow",
            ArmId::Forbid => "forbid",
            ArmId::ForbidDeadline => "forbid + starting deadline",
            ArmId::ForbidNoDeadline => "forbid, no starting deadline",
            ArmId::Replace => "replace",
            ArmId::Wait => "wait",
            ArmId::ForbidKilled => "forbid, killed",
            ArmId::PostgresFenced => "postgres, paused holders, fenced",
            ArmId::PostgresUnfenced => "postgres, paused holders, no fence",
        }
    }

    /// A name fit for a directory.
    pub fn slug(&self) -> &'static str {
        match self.id {
            ArmId::Allow => "allow",
            ArmId::Forbid => "forbid",
            ArmId::ForbidDeadline => "forbid-deadline",
            ArmId::ForbidNoDeadline => "forbid-no-deadline",
            ArmId::Replace => "replace",
            ArmId::Wait => "wait",
            ArmId::ForbidKilled => "forbid-killed",
            ArmId::PostgresFenced => "postgres-fenced",
            ArmId::PostgresUnfenced => "postgres-unfenced",
        }
    }
}
