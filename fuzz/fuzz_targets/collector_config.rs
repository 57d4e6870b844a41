//! report-collector's configuration file (read by every run): see
//! [`report_fuzz::config_round_trip`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    report_fuzz::config_round_trip::<report_collector::config::Config>(data);
});
