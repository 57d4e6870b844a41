//! What more than one fuzz target asserts, written once.

use std::fmt::Debug;
use std::path::Path;

use report_common::config::ConfigFile;
use serde::Serialize;

/// A configuration file of either program: any text is read or refused with a `ConfigError`,
/// never a panic. A file that reads passes `check()`, and the effective configuration written
/// back as TOML (what `check-config` shows) reads as the same configuration.
pub fn config_round_trip<C: ConfigFile + Serialize + PartialEq + Debug>(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = C::parse(Path::new("fuzz.toml"), text) else {
        return;
    };
    assert!(config.check().is_ok());
    let written = toml::to_string(&config).expect("a configuration that reads can be written");
    let again = C::parse(Path::new("fuzz.toml"), &written)
        .unwrap_or_else(|err| panic!("{written}\ndoes not read back: {err}"));
    assert_eq!(again, config, "{written}");
}
