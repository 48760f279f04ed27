//! The HTTP server: shared state, the router of every interface, limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use rand::distr::{Alphanumeric, SampleString};
use slapos_store::Store;
use tokio::sync::watch;

use crate::auth::Authentication;
use crate::engine::EngineConfig;
use crate::tls::Peer;

/// How the master is set up.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub engine: EngineConfig,
    /// `name URL` pairs answered by `getSoftwareReleaseListFromSoftwareProduct`.
    pub software_products: Vec<(String, String)>,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Other masters that requests for some releases are forwarded to
    /// (the proxy's `[multimaster/URL]` sections).
    pub forwards: Vec<Forward>,
    /// Whether JSON API callers must name their user with a token (only
    /// `slapos master`; the proxy is always `Off`).
    pub authentication: Authentication,
}

/// A `[multimaster/URL]` section: requests for these releases, or whose SLA
/// names this `master_url`, are sent to that master.
#[derive(Debug, Clone)]
pub struct Forward {
    pub master_url: String,
    pub software_releases: Vec<String>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            engine: EngineConfig::default(),
            software_products: Vec::new(),
            max_body_bytes: 32 * 1024 * 1024,
            forwards: Vec::new(),
            authentication: Authentication::Off,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub engine: EngineConfig,
    pub software_products: Arc<Vec<(String, String)>>,
    pub forwards: Arc<Vec<Forward>>,
    pub authentication: Authentication,
    pub http: reqwest::Client,
    /// Parameter schemas of native releases.
    pub schemas: Arc<crate::schemas::Schemas>,
    /// Random per process: lets a caller tell whether a URL is this master.
    pub run_id: Arc<String>,
    /// Bumped after every change nodes should react to (for watchers).
    pub changes: Arc<watch::Sender<u64>>,
    /// True once the server is stopping: long polls answer at once.
    pub stopping: Arc<watch::Sender<bool>>,
    contacts: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How often a computer's last contact is written back.
const CONTACT_WRITE_INTERVAL: Duration = Duration::from_secs(30);

impl AppState {
    pub fn new(store: Store, config: &MasterConfig) -> AppState {
        AppState {
            store,
            engine: config.engine.clone(),
            software_products: Arc::new(config.software_products.clone()),
            forwards: Arc::new(config.forwards.clone()),
            authentication: config.authentication,
            schemas: Arc::new(crate::schemas::Schemas::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            run_id: Arc::new(Alphanumeric.sample_string(&mut rand::rng(), 32)),
            changes: Arc::new(watch::channel(0).0),
            stopping: Arc::new(watch::channel(false).0),
            contacts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn notify_change(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Records that a computer polled, at most every 30 s per computer, off
    /// the request's path: the node's poll stays a pure read.
    pub fn note_contact(&self, computer: &str) {
        let now = Instant::now();
        {
            let Ok(mut contacts) = self.contacts.lock() else {
                return;
            };
            match contacts.get(computer) {
                Some(last) if now.duration_since(*last) < CONTACT_WRITE_INTERVAL => return,
                _ => {
                    contacts.insert(computer.to_string(), now);
                }
            }
        }
        let store = self.store.clone();
        let computer = computer.to_string();
        tokio::spawn(async move {
            let _ = store
                .write(move |db| crate::engine::touch_computer(db, &computer))
                .await;
        });
    }
}

pub fn router(state: AppState, config: &MasterConfig) -> Router {
    Router::new()
        .merge(crate::legacy::routes())
        .merge(crate::api::routes())
        .merge(crate::api_billing::routes())
        // With accounts on, its pages ask for a login and run in the user's
        // scope (web::Viewer).
        .merge(crate::web::routes())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "Not found: this master has no such route",
            )
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

/// Serves until `shutdown` resolves; in-flight requests are finished first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    config: MasterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, None, store, config, shutdown).await
}

/// Like [`serve`], over HTTPS when `tls` is given (client certificates
/// requested, optional at the handshake; see [`crate::tls`]).
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    store: Store,
    config: MasterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(store.clone(), &config);
    let changes = state.changes.clone();
    store.subscribe_external_changes(Box::new(move || {
        changes.send_modify(|v| *v = v.wrapping_add(1))
    }));
    // Long polls answer as soon as the server starts stopping, so that a
    // graceful shutdown does not wait for every node's watch to time out.
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let app = router(state, &config);
    match tls {
        None => {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
