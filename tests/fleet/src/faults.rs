//! The faults and the schedule of rounds, drawn from one seed so a failing run can be played
//! again exactly (`--seed`).

use std::time::Duration;

/// How many hosts collect.
pub const HOSTS: usize = 3;

/// One fault, injected into the holder of the round's slot while it collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    None,
    /// `kill -9` of the holder.
    Kill,
    /// SIGSTOP of the holder for longer than the lease, then SIGCONT.
    Stop,
    /// Every packet in and out of the holder's host dropped, then let through again.
    Partition,
    /// `pg_ctl restart -m fast`.
    DbRestart,
    /// `pg_terminate_backend` of the holder's sessions.
    Terminate,
    /// A 64 kbit/s token bucket on the holder's link, both ways, for the rest of the round.
    Slow,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::None,
        Fault::Kill,
        Fault::Stop,
        Fault::Partition,
        Fault::DbRestart,
        Fault::Terminate,
        Fault::Slow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Kill => "kill-9",
            Fault::Stop => "sigstop",
            Fault::Partition => "partition",
            Fault::DbRestart => "db-restart",
            Fault::Terminate => "terminate-backend",
            Fault::Slow => "slow-link",
        }
    }

    /// Whether the fault needs the holder alive to be injected.
    pub fn targets_holder(self) -> bool {
        !matches!(self, Fault::None | Fault::DbRestart)
    }
}

/// What happens in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    pub fault: Fault,
    /// From the holder's first action to the fault.
    pub after: Duration,
    /// How long a stop or a partition lasts.
    pub hold: Duration,
    /// How long after the slot each host's timer fires.
    pub jitter: [Duration; HOSTS],
}

/// How often a fault comes up in a deck of rounds: each fault twice, "none" once.
const DECK: [(Fault, usize); 7] = [
    (Fault::None, 1),
    (Fault::Kill, 2),
    (Fault::Stop, 2),
    (Fault::Partition, 2),
    (Fault::DbRestart, 2),
    (Fault::Terminate, 2),
    (Fault::Slow, 2),
];

/// The rounds of a run: faults dealt from shuffled decks, so that every fault comes up in
/// every 13 rounds however the seed falls. A fault strikes within `collecting` (how long a
/// collection lasts) of the holder's first action; a stop lasts longer than the lease (up to
/// 3 s more); a partition from half a second to three leases, so some end before the lease
/// does.
pub fn plan(seed: u64, rounds: usize, lease: Duration, collecting: Duration) -> Vec<RoundPlan> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut deck: Vec<Fault> = Vec::new();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (lease_ms, collecting_ms) = (ms(lease), ms(collecting).max(1));
    (0..rounds)
        .map(|_| {
            if deck.is_empty() {
                deck = DECK
                    .iter()
                    .flat_map(|&(f, n)| std::iter::repeat_n(f, n))
                    .collect();
                rng.shuffle(&mut deck);
            }
            let fault = deck.pop().unwrap_or(Fault::None);
            let hold = match fault {
                Fault::Stop => lease_ms + rng.u64(500..=3000),
                Fault::Partition => rng.u64(500..=(3 * lease_ms).max(501)),
                _ => 0,
            };
            RoundPlan {
                fault,
                after: Duration::from_millis(rng.u64(0..collecting_ms)),
                hold: Duration::from_millis(hold),
                jitter: std::array::from_fn(|_| Duration::from_millis(rng.u64(0..1000))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(2);
    const COLLECTING: Duration = Duration::from_millis(1500);

    #[test]
    fn the_same_seed_plays_the_same_rounds() {
        assert_eq!(
            plan(7, 40, LEASE, COLLECTING),
            plan(7, 40, LEASE, COLLECTING)
        );
        assert_ne!(
            plan(7, 40, LEASE, COLLECTING),
            plan(8, 40, LEASE, COLLECTING)
        );
    }

    #[test]
    fn every_fault_comes_up_in_every_deck() {
        for seed in 0..20 {
            let rounds = plan(seed, 13, LEASE, COLLECTING);
            for fault in Fault::ALL {
                assert!(
                    rounds.iter().any(|r| r.fault == fault),
                    "seed {seed}: no {}",
                    fault.name()
                );
            }
        }
    }

    #[test]
    fn stops_outlast_the_lease_and_faults_strike_while_collecting() {
        for r in plan(3, 200, LEASE, COLLECTING) {
            assert!(r.after < COLLECTING);
            assert!(r.jitter.iter().all(|j| *j < Duration::from_secs(1)));
            match r.fault {
                Fault::Stop => assert!(r.hold > LEASE && r.hold <= LEASE * 3),
                Fault::Partition => {
                    assert!(r.hold >= Duration::from_millis(500) && r.hold <= LEASE * 3)
                }
                _ => assert_eq!(r.hold, Duration::ZERO),
            }
        }
    }
}
