//! A read that may never return, kept off the async runtime: how the server re-reads its
//! configuration file on SIGHUP.
//!
//! [`report_common::files`] refuses a FIFO or a device in place of the file at once, but a
//! regular file on a file system that does not answer (a hung NFS mount) still blocks its read,
//! for good. Done on a runtime thread, that read stopped the server answering (measured with a
//! FIFO, before the files were opened without blocking), and a thread stuck in it kept SIGTERM
//! from stopping the server, since dropping a runtime waits for its blocking tasks. So the
//! read runs on a detached thread of its own, which nothing waits for at shutdown (a process
//! that exits takes it along), and its result comes back over a oneshot channel that the
//! caller waits on under a timeout. One read at a time: while one is stuck, another is refused
//! at once rather than leaving a thread stuck per SIGHUP.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

/// Runs reads one at a time on a detached thread; see the module doc.
#[derive(Debug, Default)]
pub struct BlockingRead {
    /// Set while a read's thread has not returned, timed out or not.
    busy: Arc<AtomicBool>,
}

/// Why a read gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRead {
    /// The read of an earlier call has still not returned.
    StillBusy,
    /// No result within the limit; the read goes on alone, its result dropped.
    TimedOut(Duration),
    /// The thread could not be started, or ended without a result.
    Lost(String),
}

impl fmt::Display for NotRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRead::StillBusy => write!(
                f,
                "the read started by an earlier reload has not returned yet (does its file system answer?)"
            ),
            NotRead::TimedOut(limit) => write!(
                f,
                "not read within {} (does its file system answer?)",
                humantime::format_duration(*limit)
            ),
            NotRead::Lost(why) => write!(f, "the read ended without a result: {why}"),
        }
    }
}

impl BlockingRead {
    /// Runs `read` on a thread of its own and waits at most `limit` for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NotRead> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(NotRead::StillBusy);
        }
        let (done, result) = oneshot::channel();
        let busy = self.busy.clone();
        let spawned = std::thread::Builder::new()
            .name("blocking-read".to_owned())
            .spawn(move || {
                // Idle again however the read ends (a panic included), and before its result
                // is sent: a caller that has it may start the next read at once.
                let value = {
                    let _idle = Idle(busy);
                    read()
                };
                // The caller may have stopped waiting; the result is then dropped.
                let _ = done.send(value);
            });
        if let Err(err) = spawned {
            self.busy.store(false, Ordering::Release);
            return Err(NotRead::Lost(format!("cannot start a thread: {err}")));
        }
        match tokio::time::timeout(limit, result).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(NotRead::Lost("the reading thread failed".to_owned())),
            Err(_) => Err(NotRead::TimedOut(limit)),
        }
    }
}

/// Marks the reader idle when dropped.
struct Idle(Arc<AtomicBool>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// For a read that never returns.
    const LIMIT: Duration = Duration::from_millis(200);
    /// For a read that returns: never reached, however slow the machine (a panic's backtrace
    /// alone can take longer than [`LIMIT`]).
    const AMPLE: Duration = Duration::from_secs(30);
    /// What "at once" means here, on a loaded machine: far below any hang.
    const PROMPT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_read_that_returns_gives_its_result() {
        let reads = BlockingRead::default();
        assert_eq!(reads.run(AMPLE, || 42).await, Ok(42));
        assert_eq!(reads.run(AMPLE, || "again").await, Ok("again"));
    }

    #[test]
    fn a_stuck_read_times_out_refuses_the_next_and_never_holds_up_shutdown() {
        let reads = Arc::new(BlockingRead::default());
        // A read that blocks until the test lets it go, as one on a hung mount never would.
        let (release, stuck) = mpsc::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let outcome = runtime.block_on(reads.run(LIMIT, move || stuck.recv().is_ok()));
        assert_eq!(outcome, Err(NotRead::TimedOut(LIMIT)));
        assert!(
            started.elapsed() < LIMIT + PROMPT,
            "{:?}",
            started.elapsed()
        );

        // A second reload while the first read is stuck: refused at once, no thread started.
        let started = Instant::now();
        let outcome = runtime.block_on(reads.run(LIMIT, || true));
        assert_eq!(outcome, Err(NotRead::StillBusy));
        assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
        assert!(
            NotRead::StillBusy
                .to_string()
                .contains("has not returned yet")
        );

        // The runtime stops without waiting for the stuck thread.
        let started = Instant::now();
        drop(runtime);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        // Once the read returns, the next one runs.
        release.send(()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match runtime.block_on(reads.run(AMPLE, || 7)) {
                Ok(7) => break,
                Err(NotRead::StillBusy) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_read_that_panics_is_lost_and_the_next_one_runs() {
        let reads = BlockingRead::default();
        let outcome = reads
            .run(AMPLE, || -> u8 { panic!("a read that fails") })
            .await;
        assert!(matches!(outcome, Err(NotRead::Lost(_))), "{outcome:?}");
        assert_eq!(reads.run(AMPLE, || 1).await, Ok(1));
    }
}
