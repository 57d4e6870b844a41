//! report-apis' configuration file (read again on every reload): see
//! [`report_fuzz::config_round_trip`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    report_fuzz::config_round_trip::<report_apis::config::Config>(data);
});
