//! The scheduler experiment: drives the real `report-apis` and `report-collector` binaries on
//! loopback with time compressed, once per concurrency policy, and shows what each policy does to
//! an overloaded server as a Markdown table and an SVG chart.

pub mod arm;
pub mod binaries;
pub mod chart;
pub mod clock;
pub mod collector;
pub mod experiment;
pub mod launcher;
pub mod measure;
pub mod output;
pub mod params;
pub mod postgres;
pub mod proxy;
pub mod scrape;
pub mod server;
pub mod shape;
pub mod table;

pub use arm::{Arm, ArmId, Launcher};
pub use binaries::Binaries;
pub use experiment::{Outcome, run};
pub use params::Params;
pub use report_collector::lock::Policy;
pub use shape::{Claim, Verdict, judge};
