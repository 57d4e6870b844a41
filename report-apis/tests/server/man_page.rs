//! The man page documents exactly what `report-apis --help` lists: every long option and
//! command, each command's own options, and nothing `--help` does not know.

use std::path::Path;

#[test]
fn the_man_page_and_help_name_the_same_options_and_commands() {
    report_common::man_page::assert_matches_help(
        Path::new(crate::cli::BIN),
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/debian/report-apis/report-apis.8"),
    );
}
