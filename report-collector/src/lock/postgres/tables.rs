//! The lock's tables as the database has them, checked against the columns this version reads
//! and writes, once per connection, before any row is read.
//!
//! The tables are shared: they may have been created by hand, by another version, or altered
//! since. A column of another type does not fail cleanly on its own: read, it is a decoding
//! error; written, a `varchar(5)` ticket refuses every ticket, which a holder took for a lost
//! lease (exit 79). So the columns are compared with [`COLUMNS`] (what [`super::SCHEMA`]
//! creates, the README's "The tables") from the catalog (`pg_attribute`, through
//! `to_regclass`, which resolves the names as the statements do, by `search_path`), and a
//! table of another shape is a sentence naming each column, its type and the type expected,
//! and what to do (exit 69), before any statement could trip on it.

/// `format_type`'s name for `timestamptz`.
const TIMESTAMPTZ: &str = "timestamp with time zone";
const LOCK: &str = "report_collector_lock";
const SLOT: &str = "report_collector_slot";

/// Every column this version reads or writes, with its type as `format_type` names it. Other
/// columns an operator added are left alone.
pub const COLUMNS: [(&str, &str, &str); 25] = [
    (LOCK, "name", "text"),
    (LOCK, "holder_host", "text"),
    (LOCK, "holder_pid", "integer"),
    (LOCK, "since", TIMESTAMPTZ),
    (LOCK, "session", "integer"),
    (LOCK, "generation", "bigint"),
    (LOCK, "lease_until", TIMESTAMPTZ),
    (LOCK, "slot", TIMESTAMPTZ),
    (LOCK, "ticket", "text"),
    (LOCK, "ticket_requested", TIMESTAMPTZ),
    (LOCK, "ticket_host", "text"),
    (LOCK, "ticket_pid", "integer"),
    (LOCK, "last_collected_at", TIMESTAMPTZ),
    (LOCK, "last_collected_host", "text"),
    (LOCK, "last_report", "text"),
    (LOCK, "ticket_saving_generation", "bigint"),
    (LOCK, "ticket_saved_by_host", "text"),
    (LOCK, "lock_id", "uuid"),
    (SLOT, "name", "text"),
    (SLOT, "slot", TIMESTAMPTZ),
    (SLOT, "host", "text"),
    (SLOT, "pid", "integer"),
    (SLOT, "generation", "bigint"),
    (SLOT, "claimed_at", TIMESTAMPTZ),
    (SLOT, "collected_at", TIMESTAMPTZ),
];

/// The columns of both tables, as the statements will find them: (table, column, type). From
/// `pg_attribute` alone, no join with `pg_class`: a run's new session, whose caches are cold,
/// plans it in about a fifth less time.
pub const COLUMNS_SQL: &str = "SELECT CASE a.attrelid WHEN to_regclass('report_collector_lock') \
       THEN 'report_collector_lock' ELSE 'report_collector_slot' END, \
     a.attname::text, format_type(a.atttypid, a.atttypmod) \
     FROM pg_attribute a \
     WHERE a.attrelid IN (to_regclass('report_collector_lock'), to_regclass('report_collector_slot')) \
     AND a.attnum > 0 AND NOT a.attisdropped";

/// A column of [`COLUMNS`] that the database has of another type, or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub table: &'static str,
    pub column: &'static str,
    /// Its type in the database; `None` when it has no such column.
    pub found: Option<String>,
    pub expected: &'static str,
}

/// What the database has, against [`COLUMNS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Every column, of its type.
    Fits,
    /// Neither table exists yet: no run has created them.
    Absent,
    /// Columns missing or of another type, in the order of [`COLUMNS`].
    Differs(Vec<Mismatch>),
}

impl Shape {
    /// Whether the schema statements could make the tables fit: a table or a column is
    /// missing (a first run, or tables of a version before the last columns were added).
    pub fn lacks_columns(&self) -> bool {
        match self {
            Shape::Fits => false,
            Shape::Absent => true,
            Shape::Differs(mismatches) => mismatches.iter().any(|m| m.found.is_none()),
        }
    }
}

/// Compares `found` (table, column, type; [`COLUMNS_SQL`]'s rows) with [`COLUMNS`].
pub fn shape(found: &[(String, String, String)]) -> Shape {
    if found.is_empty() {
        return Shape::Absent;
    }
    let mismatches: Vec<Mismatch> = COLUMNS
        .iter()
        .filter_map(|&(table, column, expected)| {
            let found = found
                .iter()
                .find(|(t, c, _)| t == table && c == column)
                .map(|(_, _, ty)| ty.clone());
            (found.as_deref() != Some(expected)).then_some(Mismatch {
                table,
                column,
                found,
                expected,
            })
        })
        .collect();
    if mismatches.is_empty() {
        Shape::Fits
    } else {
        Shape::Differs(mismatches)
    }
}

/// The sentence for tables of another shape on `target`: every column that differs, and the
/// statement that fixes the first.
pub fn describe(target: &str, mismatches: &[Mismatch]) -> String {
    let columns: Vec<String> = mismatches
        .iter()
        .map(|m| match &m.found {
            Some(found) => format!(
                "column {}.{} is {}, not {} as expected",
                m.table,
                m.column,
                report_common::shown::plain_or_quoted(found, 64),
                m.expected
            ),
            None => format!(
                "column {}.{} ({}) is missing",
                m.table, m.column, m.expected
            ),
        })
        .collect();
    let fix = mismatches
        .first()
        .map_or_else(String::new, |m| match m.found {
            Some(_) => format!(
                "ALTER TABLE {table} ALTER COLUMN {column} TYPE {ty} USING {column}::{ty}",
                table = m.table,
                column = m.column,
                ty = m.expected
            ),
            None => format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                m.table, m.column, m.expected
            ),
        });
    format!(
        "the tables of the lock on {target} are not the ones this version of report-collector uses: {}; make them match the README's schema (\"The tables\"), e.g. `{fix}`, or drop report_collector_lock and report_collector_slot while no collector runs and the next run creates them",
        columns.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<(String, String, String)> {
        COLUMNS
            .iter()
            .map(|(t, c, ty)| (t.to_string(), c.to_string(), ty.to_string()))
            .collect()
    }

    /// The columns [`super::super::SCHEMA`] creates, read from its text.
    fn schema_columns() -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        let mut table = None;
        for line in super::super::SCHEMA.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
                table = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("ALTER TABLE ") {
                let words: Vec<&str> = rest.trim_end_matches(';').split_whitespace().collect();
                // ALTER TABLE t ADD COLUMN IF NOT EXISTS c type
                found.push((words[0].into(), words[6].into(), words[7].into()));
            } else if line.starts_with(')') {
                table = None;
            } else if let (Some(table), Some((column, rest))) = (&table, line.split_once(' '))
                && column != "PRIMARY"
            {
                let ty = rest.split([' ', ',']).next().unwrap_or_default();
                found.push((table.clone(), column.into(), ty.into()));
            }
        }
        for column in &mut found {
            if column.2 == "timestamptz" {
                column.2 = TIMESTAMPTZ.into();
            }
        }
        found
    }

    #[test]
    fn the_expected_columns_are_what_the_schema_creates() {
        let mut expected = columns();
        let mut schema = schema_columns();
        expected.sort();
        schema.sort();
        assert_eq!(expected, schema);
    }

    #[test]
    fn the_readme_shows_the_schema_a_run_creates() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(super::super::SCHEMA.trim()),
            "README.md, \"The tables\", must hold SCHEMA as it is"
        );
    }

    #[test]
    fn tables_of_another_shape_are_named_column_by_column() {
        assert_eq!(shape(&columns()), Shape::Fits);
        assert_eq!(shape(&[]), Shape::Absent);
        assert!(Shape::Absent.lacks_columns());

        let mut found = columns();
        // Columns an operator added are no concern.
        found.push((LOCK.into(), "note".into(), "text".into()));
        for (_, column, ty) in &mut found {
            match column.as_str() {
                "holder_pid" => *ty = "bigint".into(),
                "ticket" => *ty = "character varying(5)".into(),
                _ => {}
            }
        }
        found.retain(|(_, c, _)| c != "ticket_saved_by_host");
        let Shape::Differs(mismatches) = shape(&found) else {
            panic!("{:?}", shape(&found));
        };
        assert_eq!(mismatches.len(), 3);
        assert!(Shape::Differs(mismatches.clone()).lacks_columns());
        let message = describe("/run/postgresql/.s.PGSQL.5432", &mismatches);
        assert!(
            message.contains(
                "column report_collector_lock.holder_pid is bigint, not integer as expected"
            ),
            "{message}"
        );
        assert!(
            message
                .contains("column report_collector_lock.ticket is character varying(5), not text"),
            "{message}"
        );
        assert!(
            message.contains("column report_collector_lock.ticket_saved_by_host (text) is missing"),
            "{message}"
        );
        assert!(
            message.contains(
                "`ALTER TABLE report_collector_lock ALTER COLUMN holder_pid TYPE integer USING holder_pid::integer`"
            ),
            "{message}"
        );
    }
}
