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
    for (version, sql) in migrations.iter().filter(|(v, _)| *v > current) {
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
