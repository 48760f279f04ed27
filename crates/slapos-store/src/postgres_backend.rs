//! PostgreSQL backend: pooled connections, one transaction per job, retried
//! when PostgreSQL reports a race another master won (unique violation,
//! serialization failure, deadlock).

use std::collections::HashMap;
use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};

use crate::db::{Db, Dialect, Param, Row, Value};
use crate::{schema, Backend, StoreError, StoreOptions};

const MAX_ATTEMPTS: usize = 8;

pub(crate) struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

pub(crate) struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        Ok(PgConn {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

pub(crate) struct PgStore {
    /// Always `Some` until dropped.
    pool: Option<r2d2::Pool<Manager>>,
    config: postgres::Config,
}

impl Drop for PgStore {
    /// Each connection owns a small runtime that must not be dropped on an
    /// async worker thread: close them on a plain thread.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl PgStore {
    pub(crate) fn open(uri: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let config: postgres::Config = uri
            .parse()
            .map_err(|e| StoreError::Schema(format!("bad PostgreSQL URI: {e}")))?;
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(2))
            .connection_timeout(std::time::Duration::from_secs(15))
            .build(Manager {
                config: config.clone(),
            })?;
        let store = PgStore {
            pool: Some(pool),
            config,
        };
        let mut conn = store.pool().get()?;
        // Two masters starting at once must not both migrate.
        conn.client
            .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7270617);")?;
        let migrated = schema::migrate(
            &mut PgDb {
                conn: &mut conn,
                retryable: false,
            },
            Dialect::Postgres,
        );
        match migrated {
            Ok(()) => conn.client.batch_execute("COMMIT")?,
            Err(e) => {
                let _ = conn.client.batch_execute("ROLLBACK");
                return Err(e);
            }
        }
        Ok(store)
    }

    /// Calls `on_change` whenever any process commits a write to this
    /// database (LISTEN/NOTIFY on a dedicated connection, reconnecting).
    pub(crate) fn subscribe(&self, on_change: Box<dyn Fn() + Send>) {
        let config = self.config.clone();
        let spawned = std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || loop {
                match config.connect(NoTls) {
                    Ok(mut client) => {
                        if client.batch_execute("LISTEN slapos_changes").is_ok() {
                            let mut notifications = client.notifications();
                            let mut iter = notifications.blocking_iter();
                            while let Ok(Some(_)) = iter.next() {
                                on_change();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen for changes; retrying"),
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the change listener");
        }
    }

    fn pool(&self) -> &r2d2::Pool<Manager> {
        self.pool.as_ref().expect("pool present until drop")
    }

    pub(crate) async fn write<T, E, F>(&self, backend: Arc<Backend>, mut job: F) -> Result<T, E>
    where
        F: FnMut(&mut dyn Db) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let store = backend.postgres();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut conn = store.pool().get().map_err(StoreError::from)?;
                conn.client
                    .batch_execute("BEGIN")
                    .map_err(StoreError::from)?;
                let mut db = PgDb {
                    conn: &mut conn,
                    retryable: false,
                };
                let result = job(&mut db);
                let retryable = db.retryable;
                match result {
                    Ok(value) => match conn.client.batch_execute("COMMIT") {
                        Ok(()) => {
                            // Wakes the watchers of every master sharing this database.
                            let _ = conn.client.batch_execute("NOTIFY slapos_changes");
                            return Ok(value);
                        }
                        Err(e) => {
                            let e = StoreError::from(e);
                            if !(e.is_retryable() && attempt < MAX_ATTEMPTS) {
                                return Err(e.into());
                            }
                        }
                    },
                    Err(e) => {
                        let _ = conn.client.batch_execute("ROLLBACK");
                        if !(retryable && attempt < MAX_ATTEMPTS) {
                            return Err(e);
                        }
                    }
                }
                tracing::debug!(attempt, "retrying a write that lost a race");
            }
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Closed.into()))
    }

    pub(crate) fn read_blocking<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&mut dyn Db) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut conn = self.pool().get().map_err(StoreError::from)?;
        conn.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(StoreError::from)?;
        let result = job(&mut PgDb {
            conn: &mut conn,
            retryable: false,
        });
        let _ = conn.client.batch_execute("COMMIT");
        result
    }
}

pub(crate) struct PgDb<'c> {
    conn: &'c mut PgConn,
    /// Set when a statement failed in a way a retry of the whole job can fix.
    retryable: bool,
}

impl PgDb<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.conn.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.conn.client.prepare(sql)?;
        self.conn.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn note(&mut self, e: postgres::Error) -> StoreError {
        let e = StoreError::from(e);
        if e.is_retryable() {
            self.retryable = true;
        }
        e
    }
}

fn to_sql<'a>(
    params: &'a [Param<'a>],
    owned: &'a mut Vec<Option<i32>>,
    types: &[Type],
) -> Vec<&'a (dyn ToSql + Sync)> {
    // INTEGER columns or casts (`$1::int`) want i32; everything else is BIGINT or TEXT.
    owned.clear();
    for (i, p) in params.iter().enumerate() {
        if let (Param::Int(v), Some(&Type::INT4)) = (p, types.get(i)) {
            owned.push(v.map(|v| v as i32));
        } else {
            owned.push(None);
        }
    }
    params
        .iter()
        .enumerate()
        .map(|(i, p)| -> &(dyn ToSql + Sync) {
            match (p, types.get(i)) {
                (Param::Int(_), Some(&Type::INT4)) => &owned[i],
                (Param::Int(v), _) => v,
                (Param::Text(v), _) => v,
            }
        })
        .collect()
}

impl Db for PgDb<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let mut owned = Vec::new();
        let values = to_sql(params, &mut owned, stmt.params());
        let result = self.conn.client.execute(&stmt, &values);
        result.map_err(|e| self.note(e))
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let mut owned = Vec::new();
        let values = to_sql(params, &mut owned, stmt.params());
        let rows = self.conn.client.query(&stmt, &values);
        let rows = rows.map_err(|e| self.note(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                let ty = column.type_();
                let v = if *ty == Type::INT8 {
                    row.try_get::<_, Option<i64>>(i)?
                        .map_or(Value::Null, Value::Int)
                } else if *ty == Type::INT4 {
                    row.try_get::<_, Option<i32>>(i)?
                        .map_or(Value::Null, |v| Value::Int(v as i64))
                } else if *ty == Type::BOOL {
                    row.try_get::<_, Option<bool>>(i)?
                        .map_or(Value::Null, |v| Value::Int(v as i64))
                } else {
                    row.try_get::<_, Option<String>>(i)?
                        .map_or(Value::Null, Value::Text)
                };
                values.push(v);
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}
