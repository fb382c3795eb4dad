//! weir's web console (`weir console`): an HTTP server whose pages show and change the
//! cluster through `weir-client`'s [`Admin`](weir_client::Admin) API, like any client.
//!
//! Invariants:
//! - Every page is the same embedded shell (`assets/`), whose script fetches the page's
//!   JSON twin under `/api/` and builds the page with `textContent`: no HTML is ever made
//!   from data, on the server or in the browser, so message bodies and properties (which
//!   anyone who can send controls) show as text. The Content-Security-Policy allows only
//!   the console's own scripts besides.
//! - GET requests change nothing. Every request that changes state is a POST carrying the
//!   session's CSRF token in the `X-CSRF-Token` header; one without it is refused (403)
//!   before it reaches a handler.
//! - Credentials (when the cluster has access control on) are given once in the login form
//!   and kept only in this process's session table, keyed by an `HttpOnly`,
//!   `SameSite=Strict` cookie: never in a URL, a page or a log line.
//! - An error reaches the page as JSON `{"error": …}` naming its cause, with a status
//!   that says whose fault it is; never a stack trace.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod assets;
mod error;
mod session;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use weir_client::{ClientConfig, ClientInstance};

pub use error::ApiError;

/// What `weir console` is started with.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Name servers, `host:port;host:port`.
    pub namesrv: String,
    /// CA certificates (PEM) to verify name servers and brokers with, when they use TLS.
    pub tls_ca: Option<PathBuf>,
    /// Host names (without port) the console answers to besides IP addresses and
    /// `localhost`: a request naming another host in its `Host` header is refused, so a web
    /// page cannot reach the console by pointing a name of its own at it (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

/// Why the console could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot set up the cluster client: {0}")]
    Client(#[from] weir_client::ClientError),
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Filter uploads a console runs at once: each holds its request (up to 24 MiB) while its
/// brokers take it.
const MAX_UPLOADS: usize = 2;

/// What every request handler shares.
pub(crate) struct AppState {
    /// The settings every session's client starts from (name servers, TLS).
    base: ClientConfig,
    /// The client of sessions without credentials.
    anonymous: ClientInstance,
    sessions: session::Sessions,
    stats: stats::History,
    /// The one filter preview this console runs at a time.
    preview: tokio::sync::Semaphore,
    /// The filter uploads this console runs at once ([`MAX_UPLOADS`]).
    uploads: tokio::sync::Semaphore,
    /// [`ConsoleConfig::allowed_hosts`], lower case.
    allowed_hosts: Vec<String>,
}

impl AppState {
    fn new(config: &ConsoleConfig) -> Result<Arc<Self>, ConsoleError> {
        let mut base = ClientConfig::new(&config.namesrv);
        if let Some(ca) = &config.tls_ca {
            base = base.with_tls_ca(ca)?;
        }
        let anonymous = ClientInstance::new(base.clone())?;
        Ok(Arc::new(AppState {
            base,
            anonymous,
            sessions: session::Sessions::default(),
            stats: stats::History::default(),
            preview: tokio::sync::Semaphore::new(1),
            uploads: tokio::sync::Semaphore::new(MAX_UPLOADS),
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }))
    }
}

/// The console's routes, ready to serve.
pub fn router(config: &ConsoleConfig) -> Result<axum::Router, ConsoleError> {
    let state = AppState::new(config)?;
    Ok(api::routes(state))
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &ConsoleConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let app = router(config)?;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, namesrv = %config.namesrv, "web console listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
