//! Integration tests: the real server over HTTP on loopback, and the real binary for CLI
//! behaviour. One test binary, so everything links once.

mod cancel;
mod cli;
mod fence;
mod hostile;
mod http;
mod journal;
mod load;
mod man_page;
mod reload;
mod util;
