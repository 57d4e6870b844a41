//! The network: a `db` namespace and one namespace per host, each host joined to `db` by a
//! veth pair with a link-local /30, and nothing else. Faults act only inside these
//! namespaces: iptables rules in a host's namespace, a qdisc on a host's link.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cleanup;
use crate::cmd;

const T: Duration = Duration::from_secs(10);

/// One host's namespace and its link to `db`.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's name in configs and verdicts ("h1").
    pub name: String,
    pub ns: String,
    /// The veth end inside the host's namespace, and its peer inside `db`.
    pub veth: String,
    pub db_veth: String,
    pub addr: Ipv4Addr,
    /// The address of `db` on this host's link: where this host reaches the servers.
    pub db_addr: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct Net {
    pub db: String,
    pub hosts: Vec<Host>,
}

/// Host `i`'s /30: 169.254.10.(4i+1) on `db`'s end, .(4i+2) on the host's.
fn addrs(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = u8::try_from(4 * i).unwrap_or(0);
    (
        Ipv4Addr::new(169, 254, 10, base + 1),
        Ipv4Addr::new(169, 254, 10, base + 2),
    )
}

/// Creates the namespaces, named after `tag` (the harness's pid makes them unique per run).
pub async fn create(tag: &str, hosts: usize) -> anyhow::Result<Net> {
    let db = format!("fleet{tag}-db");
    add_ns(&db).await?;
    let mut out = Vec::new();
    for i in 0..hosts {
        let name = format!("h{}", i + 1);
        let ns = format!("fleet{tag}-{name}");
        add_ns(&ns).await?;
        // Interface names are at most 15 bytes: "f" + pid + "h1".
        let veth = format!("f{tag}{name}");
        let db_veth = format!("f{tag}d{}", i + 1);
        let (db_addr, addr) = addrs(i);
        // Created inside the host's namespace, so no link ever exists in the host's own.
        cmd::run(
            "ip",
            [
                "-n", &ns, "link", "add", &veth, "type", "veth", "peer", "name", &db_veth, "netns",
                &db,
            ],
            T,
        )
        .await?;
        cmd::run(
            "ip",
            [
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                &veth,
            ],
            T,
        )
        .await?;
        cmd::run(
            "ip",
            [
                "-n",
                &db,
                "addr",
                "add",
                &format!("{db_addr}/30"),
                "dev",
                &db_veth,
            ],
            T,
        )
        .await?;
        cmd::run("ip", ["-n", &ns, "link", "set", &veth, "up"], T).await?;
        cmd::run("ip", ["-n", &db, "link", "set", &db_veth, "up"], T).await?;
        out.push(Host {
            name,
            ns,
            veth,
            db_veth,
            addr,
            db_addr,
        });
    }
    Ok(Net { db, hosts: out })
}

async fn add_ns(ns: &str) -> anyhow::Result<()> {
    if std::path::Path::new("/run/netns").join(ns).exists() {
        bail!("network namespace {ns} exists already: a run with this pid was not cleaned up");
    }
    // Registered first: a failure half-way still deletes it.
    cleanup::namespace(ns);
    cmd::run("ip", ["netns", "add", ns], T).await?;
    cmd::run("ip", ["-n", ns, "link", "set", "lo", "up"], T).await?;
    Ok(())
}

/// Drops every packet in and out of `host` (the peer sees silence: no reset, no ICMP), or
/// lets them through again.
pub async fn partition(host: &Host, on: bool) -> anyhow::Result<()> {
    if on {
        for chain in ["INPUT", "OUTPUT"] {
            cmd::in_ns(&host.ns, ["iptables", "-w", "-I", chain, "-j", "DROP"], T).await?;
        }
    } else {
        for chain in ["INPUT", "OUTPUT"] {
            cmd::in_ns(&host.ns, ["iptables", "-w", "-F", chain], T).await?;
        }
    }
    Ok(())
}

/// A 64 kbit/s token bucket on both ends of `host`'s link, or none.
pub async fn slow(net: &Net, host: &Host, on: bool) -> anyhow::Result<()> {
    for (ns, dev) in [(&host.ns, &host.veth), (&net.db, &host.db_veth)] {
        if on {
            cmd::run(
                "ip",
                [
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    "64kbit", "burst", "1600", "latency", "400ms",
                ],
                T,
            )
            .await?;
        } else {
            // Absent already when the round had no slow link: nothing to remove.
            let _ = cmd::in_ns(ns, ["tc", "qdisc", "del", "dev", dev, "root"], T).await;
        }
    }
    Ok(())
}

/// The qdiscs on `host`'s end of its link, as `tc` shows them.
pub async fn qdiscs(host: &Host) -> anyhow::Result<String> {
    cmd::in_ns(&host.ns, ["tc", "qdisc", "show", "dev", &host.veth], T).await
}

/// What a TCP connection from inside `ns` to `to` meets within `within`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Connected,
    Refused,
    /// No answer at all: what a silent partition looks like.
    Silent,
    Other(String),
}

/// Connects from inside namespace `ns` (one thread moved into it with setns(2), so the
/// harness itself needs no address anywhere) and, for HTTP, sends `request` and returns the
/// first line of the answer.
pub async fn probe(
    ns: &str,
    to: SocketAddr,
    within: Duration,
    request: Option<&'static str>,
) -> anyhow::Result<(Probe, String)> {
    let path = format!("/run/netns/{ns}");
    // A thread of its own, never one of tokio's pool: it stays in the namespace until it ends.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(probe_here(&path, to, within, request));
    });
    rx.await.context("the probe thread failed")?
}

fn probe_here(
    path: &str,
    to: SocketAddr,
    within: Duration,
    request: Option<&'static str>,
) -> anyhow::Result<(Probe, String)> {
    {
        let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter {path}"))?;
        let mut stream = match TcpStream::connect_timeout(&to, within) {
            Ok(s) => s,
            Err(e) => {
                let probe = match e.kind() {
                    std::io::ErrorKind::TimedOut => Probe::Silent,
                    std::io::ErrorKind::ConnectionRefused => Probe::Refused,
                    _ => Probe::Other(e.to_string()),
                };
                return Ok((probe, String::new()));
            }
        };
        let mut first = String::new();
        if let Some(request) = request {
            stream.set_read_timeout(Some(within))?;
            stream.set_write_timeout(Some(within))?;
            stream.write_all(request.as_bytes())?;
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf)?;
            first = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
        }
        Ok((Probe::Connected, first))
    }
}
