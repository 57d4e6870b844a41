//! What a run asks of the lock, and what it gets when it is taken.

use std::time::Duration;

use tokio::time::Instant;

use super::holder::LeftTicket;
use super::policy::Policy;
use crate::time::Timestamp;

/// What a run asks of the lock.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub policy: Policy,
    /// Under `wait`: how long to wait at most.
    pub lock_wait: Duration,
    /// Under `replace`: how long the holder has between SIGTERM and SIGKILL.
    pub replace_grace: Duration,
    /// The run's deadline: nothing about the lock goes on past it.
    pub deadline: Instant,
    /// The `deadline` setting that deadline came from, for messages.
    pub deadline_setting: Duration,
    /// The slot the run belongs to: under `replace`, a shared lock is taken from a holder of
    /// an earlier slot only.
    pub slot: Option<Timestamp>,
}

/// The result of taking the lock per policy.
#[derive(Debug)]
pub struct Acquired<G> {
    /// `None` under `allow`.
    pub guard: Option<G>,
    /// The other run this one waited for or ended, if any.
    pub previous_holder: Option<u32>,
    /// The host of that run, when the lock is shared by several hosts.
    pub previous_host: Option<String>,
    /// The ticket the previous holder left unfinished, if any; the new holder's record carries
    /// it on until the new holder finishes it or records another.
    pub left: Option<LeftTicket>,
}

impl<G> Acquired<G> {
    /// What `allow` gets from any backend: no lock, nobody before it.
    pub fn unlocked() -> Acquired<G> {
        Acquired {
            guard: None,
            previous_holder: None,
            previous_host: None,
            left: None,
        }
    }
}
