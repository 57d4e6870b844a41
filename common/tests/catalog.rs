//! The journal catalogs the packages ship against the IDs the programs log: every constant in
//! `message_id.rs` has exactly one entry, in its own package's catalog, and every entry is one
//! of them and has the headers `journalctl -x` and `--list-catalog` show.
//!
//! The constants are read from the source text, so a kind added there without a catalog entry
//! fails here, with no list to keep in step.

use std::collections::BTreeMap;

const MESSAGE_IDS: &str = include_str!("../src/message_id.rs");
const CATALOGS: [(&str, &str); 2] = [
    (
        "report-collector",
        include_str!("../../packaging/debian/report-collector/report-collector.catalog"),
    ),
    (
        "report-apis",
        include_str!("../../packaging/debian/report-apis/report-apis.catalog"),
    ),
];

/// A constant of `message_id.rs`: its name, its ID, and the package its doc comment names.
#[derive(Debug)]
struct Constant {
    name: String,
    id: String,
    package: String,
}

/// `/// package: what it is` then `pub const NAME: &str = "id";`.
fn constants() -> Vec<Constant> {
    let mut found = Vec::new();
    let mut package = None;
    for line in MESSAGE_IDS.lines() {
        if let Some(doc) = line.strip_prefix("/// ") {
            if package.is_none() {
                package = doc.split_once(':').map(|(p, _)| p.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("pub const ") {
            let (name, value) = rest.split_once(": &str = ").expect(line);
            let id = value.trim_end_matches(';').trim_matches('"');
            found.push(Constant {
                name: name.to_owned(),
                id: id.to_owned(),
                package: package
                    .take()
                    .unwrap_or_else(|| panic!("{name} has no doc comment")),
            });
        } else {
            package = None;
        }
    }
    found
}

/// One catalog entry: `-- ID`, header lines up to the first empty line, then the body.
#[derive(Debug)]
struct Entry {
    id: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Parses a catalog as journalctl does: `#` lines are comments, `-- ` starts an entry.
fn entries(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut in_headers = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(id) = line.strip_prefix("-- ") {
            entries.push(Entry {
                id: id.to_owned(),
                headers: BTreeMap::new(),
                body: String::new(),
            });
            in_headers = true;
            continue;
        }
        let Some(entry) = entries.last_mut() else {
            assert!(line.is_empty(), "text before the first entry: {line:?}");
            continue;
        };
        if in_headers && line.is_empty() {
            in_headers = false;
        } else if in_headers {
            let (key, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("{}: not a header line: {line:?}", entry.id));
            let old = entry.headers.insert(key.to_owned(), value.to_owned());
            assert!(old.is_none(), "{}: header {key} twice", entry.id);
        } else {
            entry.body.push_str(line);
            entry.body.push('\n');
        }
    }
    entries
}

#[test]
fn message_id_rs_is_read_whole() {
    let constants = constants();
    assert_eq!(
        constants.len(),
        MESSAGE_IDS.matches("pub const ").count(),
        "{constants:?}"
    );
    assert!(constants.iter().any(|c| c.name == "SKIPPED_LOCK_HELD"));
    for c in &constants {
        assert!(
            c.id.len() == 32 && c.id.chars().all(|ch| matches!(ch, '0'..='9' | 'a'..='f')),
            "{}: not 128 bits in lower-case hex: {}",
            c.name,
            c.id
        );
        assert!(
            CATALOGS.iter().any(|(package, _)| *package == c.package),
            "{}: its doc comment must start with the package that logs it, not {:?}",
            c.name,
            c.package
        );
    }
}

#[test]
fn every_message_id_has_exactly_one_entry_in_its_packages_catalog() {
    let all: Vec<(&str, Entry)> = CATALOGS
        .iter()
        .flat_map(|(package, text)| entries(text).into_iter().map(move |e| (*package, e)))
        .collect();
    let constants = constants();
    for c in &constants {
        let found: Vec<&str> = all
            .iter()
            .filter(|(_, e)| e.id == c.id)
            .map(|(package, _)| *package)
            .collect();
        assert_eq!(
            found,
            [c.package.as_str()],
            "{} ({}): catalogs with an entry for it",
            c.name,
            c.id
        );
    }
    for (package, entry) in &all {
        assert!(
            constants.iter().any(|c| c.id == entry.id),
            "{package}.catalog: entry {} is no constant of message_id.rs",
            entry.id
        );
    }
}

#[test]
fn every_entry_has_the_headers_and_says_something() {
    for (package, text) in CATALOGS {
        let entries = entries(text);
        assert!(!entries.is_empty(), "{package}.catalog has no entry");
        for e in entries {
            let header = |key: &str| {
                e.headers
                    .get(key)
                    .unwrap_or_else(|| panic!("{package}.catalog {}: no {key}: header", e.id))
                    .as_str()
            };
            assert!(!header("Subject").is_empty(), "{}", e.id);
            assert_eq!(header("Defined-By"), package, "{}", e.id);
            assert!(header("Support").starts_with("https://"), "{}", e.id);
            assert_eq!(
                header("Documentation"),
                format!("man:{package}(8)"),
                "{}",
                e.id
            );
            assert!(
                e.body.trim().len() > 40,
                "{package}.catalog {}: the body must say what happened, why and what to do",
                e.id
            );
        }
    }
}

#[test]
fn placeholders_name_fields() {
    for (package, text) in CATALOGS {
        for e in entries(text) {
            let whole = format!("{}\n{}", header_text(&e), e.body);
            // Between pairs of @: a field name, upper case as journald stores it.
            for (i, part) in whole.split('@').enumerate() {
                if i % 2 == 1 {
                    assert!(
                        !part.is_empty()
                            && part
                                .chars()
                                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                        "{package}.catalog {}: @{part}@ is not a field name (an odd @?)",
                        e.id
                    );
                }
            }
        }
    }
}

fn header_text(e: &Entry) -> String {
    e.headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect()
}
