//! The master's storage: one interface, two backends.
//!
//! * SQLite (the embedded default): one writer thread applies write jobs in
//!   batches, one transaction per batch with a savepoint per job ("group
//!   commit"), so a durable commit (fsync) is shared by every request that
//!   arrived meanwhile; readers use their own connections (WAL).
//! * PostgreSQL: a pool of connections, one transaction per write job; rows
//!   that concurrent masters could both take are locked (`FOR UPDATE SKIP
//!   LOCKED`, advisory locks), so several master processes can share a database.
//!
//! Callers write their logic once against [`Db`] (plain SQL with `$1`
//! placeholders and 64-bit integers or text) and the typed queries of
//! [`queries`]; nothing outside this crate knows SQL.
//!
//! Invariant: a write's result is handed back only after its transaction
//! has committed.

pub mod billing;
mod db;
mod postgres_backend;
pub mod queries;
mod schema;
mod sqlite_backend;
pub mod usage;

pub use db::{Db, Dialect, Param, Row, Value};

use std::future::Future;
use std::sync::Arc;

/// What can go wrong in the store itself (as opposed to a refused request).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgresql: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("unsupported database URI {0:?}: use a file path, sqlite://PATH or postgresql://...")]
    BadUri(String),
}

impl StoreError {
    /// Whether retrying the same job may succeed (a unique index race between
    /// two masters, a serialization failure or a deadlock on PostgreSQL).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e
                .code()
                .is_some_and(|c| matches!(c.code(), "23505" | "40001" | "40P01")),
            _ => false,
        }
    }
}

/// A handle on the store, cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

enum Backend {
    Sqlite(sqlite_backend::SqliteStore),
    Postgres(Box<postgres_backend::PgStore>),
}

/// Options of [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync every commit (SQLite `synchronous=FULL`). Off only for throwaway stores.
    pub durable: bool,
    /// Connections used for reads (SQLite) or for everything (PostgreSQL).
    pub pool_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durable: true,
            pool_size: 8,
        }
    }
}

impl Store {
    /// Opens (and creates or migrates) the database named by `uri`: a file
    /// path or `sqlite://PATH` for SQLite, `postgres://` or `postgresql://`
    /// for PostgreSQL.
    pub fn open(uri: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let backend = if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
            Backend::Postgres(Box::new(postgres_backend::PgStore::open(uri, options)?))
        } else {
            let path = uri.strip_prefix("sqlite://").unwrap_or(uri);
            if path.is_empty() {
                return Err(StoreError::BadUri(uri.to_string()));
            }
            Backend::Sqlite(sqlite_backend::SqliteStore::open(path, options)?)
        };
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match &*self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `job` in a write transaction and returns its result once committed.
    /// If the job returns an error, its changes are rolled back and nothing
    /// else is affected.
    pub fn write<T, E, F>(&self, job: F) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        F: FnMut(&mut dyn Db) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let backend = self.backend.clone();
        async move {
            match &*backend {
                Backend::Sqlite(s) => s.write(job).await,
                Backend::Postgres(p) => p.write(backend.clone(), job).await,
            }
        }
    }

    /// Runs `job` on a consistent read-only snapshot.
    pub fn read<T, E, F>(&self, job: F) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        F: FnOnce(&mut dyn Db) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let backend = self.backend.clone();
        async move {
            tokio::task::spawn_blocking(move || match &*backend {
                Backend::Sqlite(s) => s.read_blocking(job),
                Backend::Postgres(p) => p.read_blocking(job),
            })
            .await
            .unwrap_or_else(|_| Err(StoreError::Closed.into()))
        }
    }

    /// Calls `on_change` when another process commits to the same database
    /// (PostgreSQL: several masters). A SQLite store has one writer process,
    /// whose own changes its callers already know about: nothing to do.
    pub fn subscribe_external_changes(&self, on_change: Box<dyn Fn() + Send>) {
        if let Backend::Postgres(p) = &*self.backend {
            p.subscribe(on_change);
        }
    }

    /// Synchronous variant of [`Store::read`] for tools and tests.
    pub fn read_blocking<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&mut dyn Db) -> Result<T, E>,
        E: From<StoreError>,
    {
        match &*self.backend {
            Backend::Sqlite(s) => s.read_blocking(job),
            Backend::Postgres(p) => p.read_blocking(job),
        }
    }
}

impl Backend {
    fn postgres(&self) -> &postgres_backend::PgStore {
        match self {
            Backend::Postgres(p) => p,
            Backend::Sqlite(_) => unreachable!("postgres-only path"),
        }
    }
}
