//! report-apis' configuration file: any text is read or refused with a `ConfigError`, never a
//! panic (the server reads it again on every reload). A file that reads passes `check()`, and
//! the effective configuration written back as TOML (what `check-config` shows) reads as the
//! same configuration.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use report_apis::config::Config;
use report_common::config::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(Path::new("fuzz.toml"), text) else {
        return;
    };
    assert!(config.check().is_ok());
    let written = toml::to_string(&config).expect("a configuration that reads can be written");
    let again = Config::parse(Path::new("fuzz.toml"), &written)
        .unwrap_or_else(|err| panic!("{written}\ndoes not read back: {err}"));
    assert_eq!(again, config, "{written}");
});
