//! Holds many connections open against a server, for the memory figures of
//! `bench/report-apis/run.sh`: each idle, or each having sent `BYTES` of a request head that
//! never ends (a header line without its end), or as much of them as the server read before it
//! closed the connection.
//!
//! Usage: `flood ADDR COUNT [BYTES]`; prints `holding COUNT connections` on stdout once all are
//! open and written, then holds them until killed.

use std::io::Write;
use std::net::TcpStream;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: flood ADDR COUNT [BYTES]");
        std::process::exit(64);
    };
    let count: usize = count.parse().map_err(std::io::Error::other)?;
    let bytes: usize = match args.next() {
        Some(bytes) => bytes.parse().map_err(std::io::Error::other)?,
        None => 0,
    };
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Flood: ".to_vec();
    head.resize(bytes.max(head.len()), b'f');
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(&address)?;
        // A server that refuses the head closes the connection mid-write: that is an outcome
        // to measure, not an error here.
        if bytes > 0 {
            let _ = stream.write_all(&head[..bytes]);
        }
        held.push(stream);
    }
    println!("holding {count} connections");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
