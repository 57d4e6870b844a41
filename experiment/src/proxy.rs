//! The pause of the arms on the PostgreSQL lock: a holder stopped (SIGSTOP) past its lease at
//! the moment it sends its ticket request, so that the request reaches the server after another
//! host took the lock over.
//!
//! The collector checks its lease right before each request (see the collector's README,
//! "Several hosts"): a holder stopped anywhere before that check finds its lease gone when it
//! goes on, and stops without sending anything. Only a stop between the check and the write of
//! the request lets a stale request out, a window of microseconds a timed `kill -STOP` almost
//! never hits. So the arm's collectors reach their server through this loopback proxy, which
//! hits it every time: when a ticket request (`GET /request_report`) arrives that is due to be
//! paused, the proxy stops the process that sent it (found by its socket, in `/proc`) and holds
//! the request's bytes. On the wire that is what a stop just before the write gives: the server
//! sees nothing of the request until the holder goes on.
//!
//! Every other ticket request is paused (the 1st, 3rd, ...), and only when a later slot is due
//! within the span, so a host can take the lock over. A paused request is released once the
//! next ticket request (another holder's, after the takeover) has had its answer: the held bytes
//! go to the server, then the holder is continued (SIGCONT). A request still held when the runs
//! are stopped at the end is dropped, never sent, and its holder continued, so the launcher's
//! SIGTERM reaches it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::clock::Clock;

/// How a ticket request starts on the wire.
const TICKET_REQUEST: &[u8] = b"GET /request_report ";

/// One holder the proxy stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub pid: u32,
    /// When it was stopped, seconds after slot 0.
    pub stopped: f64,
    /// When it was continued, seconds after slot 0.
    pub continued: Option<f64>,
    /// Whether its held request was sent on to the server (not when dropped at the end).
    pub delivered: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Ticket requests seen so far.
    requests: usize,
    pauses: Vec<Pause>,
}

/// The proxy in front of one arm's server.
#[derive(Debug, Clone)]
pub struct PauseProxy {
    /// `http://127.0.0.1:PORT`: the collectors' `server-url`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

/// What one connection needs to know.
#[derive(Clone)]
struct Shared {
    target: SocketAddr,
    own: SocketAddr,
    clock: Clock,
    /// The last slot's time: no pause after it (no later slot would take the lock over).
    last_pause_at: f64,
    /// Until when held requests may wait; past it they are dropped.
    give_up_at: Instant,
    state: Arc<Mutex<State>>,
    /// Counts answers to ticket requests that were let through.
    answered: watch::Sender<usize>,
}

impl PauseProxy {
    /// Listens on a loopback port and forwards to `target` until the runtime ends. Pauses only
    /// until `last_pause_at` (seconds after slot 0); held requests are dropped at `give_up_at`.
    pub async fn start(
        target: SocketAddr,
        clock: Clock,
        last_pause_at: f64,
        give_up_at: Instant,
    ) -> anyhow::Result<PauseProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot bind the proxy's loopback port")?;
        let own = listener
            .local_addr()
            .context("cannot read the proxy's port")?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Shared {
            target,
            own,
            clock,
            last_pause_at,
            give_up_at,
            state: Arc::clone(&state),
            answered: watch::channel(0).0,
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, shared.clone()));
            }
        });
        Ok(PauseProxy {
            url: format!("http://{own}"),
            state,
        })
    }

    /// Every holder stopped so far.
    pub fn pauses(&self) -> Vec<Pause> {
        self.state
            .lock()
            .map(|s| s.pauses.clone())
            .unwrap_or_default()
    }
}

/// Whether the `n`th ticket request (from 1) is paused: every other one, the first included.
pub fn is_paused(n: usize) -> bool {
    n % 2 == 1
}

/// Forwards one client connection; pauses its ticket requests as the module says.
async fn connection(client: TcpStream, shared: Shared) {
    let Ok(peer) = client.peer_addr() else { return };
    let Ok(server) = TcpStream::connect(shared.target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Answers that follow a let-through ticket request count as its answer.
    let awaiting = Arc::new(AtomicBool::new(false));
    let awaiting_answer = Arc::clone(&awaiting);
    let answered = shared.answered.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from_server.read(&mut buf).await {
            if n == 0 || to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
            if awaiting_answer.swap(false, Ordering::SeqCst) {
                answered.send_modify(|n| *n += 1);
            }
        }
        let _ = to_client.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from_client.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if chunk.starts_with(TICKET_REQUEST) {
            let n_th = shared.state.lock().map_or(0, |mut s| {
                s.requests += 1;
                s.requests
            });
            if is_paused(n_th) && shared.clock.now() < shared.last_pause_at {
                if !hold(&shared, peer, chunk, &mut to_server).await {
                    return;
                }
                continue;
            }
            awaiting.store(true, Ordering::SeqCst);
        }
        if to_server.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
}

/// Stops the sender of `chunk`, waits for the next let-through ticket request's answer, sends
/// `chunk` on and continues the sender. Returns false when the request was dropped instead.
async fn hold(
    shared: &Shared,
    peer: SocketAddr,
    chunk: &[u8],
    to_server: &mut tokio::net::tcp::OwnedWriteHalf,
) -> bool {
    let pid = sender_pid(peer, shared.own);
    if let Some(pid) = pid {
        signal(pid, Signal::SIGSTOP);
    }
    let index = shared.state.lock().map_or(0, |mut s| {
        s.pauses.push(Pause {
            pid: pid.unwrap_or(0),
            stopped: shared.clock.now(),
            continued: None,
            delivered: false,
        });
        s.pauses.len() - 1
    });
    let mut answered = shared.answered.subscribe();
    let before = *answered.borrow_and_update();
    let released = tokio::select! {
        r = answered.wait_for(|n| *n > before) => r.is_ok(),
        () = tokio::time::sleep_until(shared.give_up_at.into()) => false,
    };
    let delivered = released && to_server.write_all(chunk).await.is_ok();
    if delivered {
        // Let the server take the request in before its sender goes on.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if let Some(pid) = pid {
        signal(pid, Signal::SIGCONT);
    }
    if let Ok(mut s) = shared.state.lock()
        && let Some(p) = s.pauses.get_mut(index)
    {
        p.continued = Some(shared.clock.now());
        p.delivered = delivered;
    }
    delivered
}

fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid)
        && raw > 0
    {
        // Gone already: nothing to stop or continue.
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// The process whose TCP socket `peer` is connected to `own` (the proxy's port): its socket's
/// inode from `/proc/net/tcp`, then the process holding that inode among its files.
pub fn sender_pid(peer: SocketAddr, own: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = socket_inode(&table, peer, own)?;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the IPv4 socket whose local address is `local` and remote `remote`, in the
/// text of `/proc/net/tcp` (`sl local_address rem_address st ... uid timeout inode`, addresses
/// as little-endian hex `0100007F:1F90`).
pub fn socket_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (local, remote) = (hex_addr(local)?, hex_addr(remote)?);
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9
            && fields[1].eq_ignore_ascii_case(&local)
            && fields[2].eq_ignore_ascii_case(&remote))
        .then(|| fields[9].parse().ok())
        .flatten()
    })
}

/// An IPv4 socket address as `/proc/net/tcp` writes it.
fn hex_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn the_senders_socket_is_found_by_both_ends() {
        let proxy: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:41394".parse().unwrap();
        assert_eq!(socket_inode(TABLE, peer, proxy), Some(2222));
        // The proxy's own end of the same connection is the other line.
        assert_eq!(socket_inode(TABLE, proxy, peer), Some(3333));
        let other: SocketAddr = "127.0.0.1:41395".parse().unwrap();
        assert_eq!(socket_inode(TABLE, other, proxy), None);
        assert_eq!(socket_inode(TABLE, "[::1]:1".parse().unwrap(), proxy), None);
    }

    #[test]
    fn every_other_ticket_request_is_paused_the_first_included() {
        let paused: Vec<bool> = (1..=4).map(is_paused).collect();
        assert_eq!(paused, [true, false, true, false]);
    }

    #[tokio::test]
    async fn the_sender_of_a_connection_is_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let own = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(own).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(sender_pid(peer, own), Some(std::process::id()));
        drop(client);
    }
}
