//! systemd's side of a timer run's D-Bus conversation, on a private bus, for
//! `bench/report-collector/run.sh` (systemd cannot run on the bench machine): answers as for a
//! timer start that has just fired. Usage: `systemd_standin BUS_ADDRESS`; prints `ready` once
//! it owns `org.freedesktop.systemd1`, then serves until killed.

#[path = "../tests/collector/util/systemd_standin.rs"]
#[expect(
    dead_code,
    reason = "answers as for a timer start only; the tests construct the other answers"
)]
mod standin;

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: systemd_standin BUS_ADDRESS");
        std::process::exit(64);
    };
    let answers = standin::Answers::TimerStart {
        elapse_ago: Duration::from_millis(50),
    };
    let _connection = match standin::serve(&address, answers).await {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("cannot serve on {address}: {e}");
            std::process::exit(69);
        }
    };
    println!("ready");
    std::future::pending::<()>().await;
}
