//! Append-only migrations, one folder per backend. Never edit a released
//! migration: add the next one.
//! Statements are split on `;`, so comments in a migration must not contain one.

use crate::db::{Db, Dialect};
use crate::StoreError;

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_accounts.sql")),
    (
        3,
        include_str!("../migrations/sqlite/0003_usage_ledger.sql"),
    ),
    (
        4,
        include_str!("../migrations/sqlite/0004_certificates.sql"),
    ),
    (5, include_str!("../migrations/sqlite/0005_accounting.sql")),
    (
        6,
        include_str!("../migrations/sqlite/0006_web_sessions.sql"),
    ),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_accounts.sql")),
    (
        3,
        include_str!("../migrations/postgres/0003_usage_ledger.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_certificates.sql"),
    ),
    (
        5,
        include_str!("../migrations/postgres/0005_accounting.sql"),
    ),
    (
        6,
        include_str!("../migrations/postgres/0006_web_sessions.sql"),
    ),
];

/// Brings the schema up to date. Runs inside the caller's transaction on
/// PostgreSQL; on SQLite each migration is its own transaction.
pub(crate) fn migrate(db: &mut dyn Db, dialect: Dialect) -> Result<(), StoreError> {
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migration (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        &[],
    )?;
    let current = db
        .query_opt(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migration",
            &[],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    let migrations = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    let newest = migrations.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(StoreError::Schema(format!(
            "the database has schema version {current}, newer than this program knows ({newest}): upgrade slapos"
        )));
    }
    // Every migration not yet recorded, not only those above the newest
    // applied: versions may be numbered out of order across branches (a
    // gap is filled later), and each one runs exactly once.
    let applied: std::collections::HashSet<i64> = db
        .query("SELECT version FROM schema_migration", &[])?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<_, _>>()?;
    for (version, sql) in migrations.iter().filter(|(v, _)| !applied.contains(v)) {
        tracing::info!(version, "applying database migration");
        let sql_statements: Vec<&str> = sql
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty() && !s.lines().all(|l| l.trim_start().starts_with("--")))
            .collect();
        if dialect == Dialect::Sqlite {
            db.execute("BEGIN IMMEDIATE", &[])?;
        }
        let applied = (|| {
            for statement in &sql_statements {
                db.execute(statement, &[])?;
            }
            db.execute(
                "INSERT INTO schema_migration (version, applied_at) VALUES ($1, $2)",
                &[(*version).into(), slapos_core::now_micros().into()],
            )?;
            Ok::<(), StoreError>(())
        })();
        if dialect == Dialect::Sqlite {
            db.execute(
                if applied.is_ok() {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                },
                &[],
            )?;
        }
        applied?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreOptions};

    /// A database migrated by a build that did not know version 4 (numbers
    /// are reserved across branches) gets it on the next open, once.
    #[test]
    fn a_skipped_version_is_applied_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let uri = path.to_str().unwrap().to_string();
        drop(Store::open(&uri, &StoreOptions::default()).unwrap());
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE certificate; DELETE FROM schema_migration WHERE version = 4",
            )
            .unwrap();
        }
        drop(Store::open(&uri, &StoreOptions::default()).unwrap());
        drop(Store::open(&uri, &StoreOptions::default()).unwrap());
        let c = rusqlite::Connection::open(&path).unwrap();
        let versions: Vec<i64> = c
            .prepare("SELECT version FROM schema_migration ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let known: Vec<i64> = super::SQLITE.iter().map(|(v, _)| *v).collect();
        assert!(known.contains(&4));
        assert_eq!(versions, known, "every known version, once");
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM certificate", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
