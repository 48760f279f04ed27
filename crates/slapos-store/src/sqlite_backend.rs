//! SQLite backend: a single writer thread with group commit, pooled readers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::db::{Db, Dialect, Param, Row, Value};
use crate::{schema, StoreError, StoreOptions};

/// Jobs taken into one transaction at most; bounds the latency of the first.
const MAX_BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// A write job: runs in the writer thread, says whether to keep its changes,
/// and gives the callback to run once the batch's fate is known.
type Job = Box<dyn FnOnce(&mut dyn Db) -> (bool, Reply) + Send>;

pub(crate) struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    max_readers: usize,
}

impl SqliteStore {
    pub(crate) fn open(path: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = PathBuf::from(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Schema(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if options.durable { "FULL" } else { "OFF" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(128);
        schema::migrate(&mut SqliteDb { conn: &conn }, Dialect::Sqlite)?;

        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Schema(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            jobs: Mutex::new(Some(tx)),
            readers: Mutex::new(Vec::new()),
            path,
            max_readers: options.pool_size.max(1) as usize,
        })
    }

    pub(crate) async fn write<T, E, F>(&self, mut job: F) -> Result<T, E>
    where
        F: FnMut(&mut dyn Db) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let boxed: Job = Box::new(move |db: &mut dyn Db| {
            let result = job(db);
            let keep = result.is_ok();
            let reply: Reply = Box::new(move |committed| {
                let outcome = match committed {
                    Ok(()) => result,
                    Err(e) => Err(E::from(StoreError::Schema(format!("commit failed: {e}")))),
                };
                let _ = done_tx.send(outcome);
            });
            (keep, reply)
        });
        let sender = self.jobs.lock().map_err(|_| StoreError::Closed)?.clone();
        match sender {
            Some(s) if s.send(boxed).is_ok() => {}
            _ => return Err(StoreError::Closed.into()),
        }
        done_rx
            .await
            .unwrap_or_else(|_| Err(StoreError::Closed.into()))
    }

    pub(crate) fn read_blocking<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&mut dyn Db) -> Result<T, E>,
        E: From<StoreError>,
    {
        let pooled = self.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        conn.execute_batch("BEGIN").map_err(StoreError::from)?;
        let result = job(&mut SqliteDb { conn: &conn });
        let end = conn.execute_batch("COMMIT");
        if end.is_ok() {
            if let Ok(mut r) = self.readers.lock() {
                if r.len() < self.max_readers {
                    r.push(conn);
                }
            }
        }
        result
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

fn writer_loop(conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, batch);
    }
    tracing::debug!("sqlite writer stopped");
}

fn run_batch(conn: &Connection, batch: Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        // Dropping the jobs drops their senders: every waiter sees an error.
        tracing::error!(error = %err, "cannot begin a write transaction");
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    let mut db = SqliteDb { conn };
    for job in batch {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            tracing::error!(error = %e, "cannot open a savepoint");
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| job(&mut db))) {
            Ok((keep, reply)) => {
                if !keep {
                    let _ = conn.execute_batch("ROLLBACK TO job");
                }
                replies.push(reply);
            }
            Err(_) => {
                tracing::error!("a write job panicked; its changes were rolled back");
                let _ = conn.execute_batch("ROLLBACK TO job");
            }
        }
        let _ = conn.execute_batch("RELEASE job");
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => replies.into_iter().for_each(|r| r(Ok(()))),
        Err(e) => {
            let err = StoreError::from(e);
            tracing::error!(error = %err, "commit failed; the batch was rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            replies.into_iter().for_each(|r| r(Err(&err)));
        }
    }
}

/// `$1` → `?1`: SQLite numbers `$name` parameters by first appearance, not by
/// the digits, so positional placeholders are rewritten to `?NNN`.
fn to_sqlite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return sql.into();
    }
    sql.replace('$', "?").into()
}

pub(crate) struct SqliteDb<'c> {
    pub(crate) conn: &'c Connection,
}

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, params: &[Param<'_>]) -> Result<(), StoreError> {
    for (i, p) in params.iter().enumerate() {
        match *p {
            Param::Int(v) => stmt.raw_bind_parameter(i + 1, v)?,
            Param::Text(v) => stmt.raw_bind_parameter(i + 1, v)?,
        }
    }
    Ok(())
}

impl Db for SqliteDb<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(&to_sqlite_placeholders(sql))?;
        bind(&mut stmt, params)?;
        Ok(stmt.raw_execute()? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&to_sqlite_placeholders(sql))?;
        bind(&mut stmt, params)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Real(f) => Value::Int(f as i64),
                    ValueRef::Blob(_) => {
                        return Err(StoreError::Corrupt(format!("column {i} holds a blob")))
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}
