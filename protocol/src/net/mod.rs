//! A connection that carries many requests at once in both directions, and a server.
//!
//! Either side may send requests: the client's calls, and the server's own requests to
//! clients (transaction checks, rebalance notices). Responses are matched to calls by
//! request id. Call timeouts are the caller's.
//!
//! Each connection is driven by one task (`driver`) that reads frames, runs the handler
//! futures of the peer's requests inside itself, and writes. What a peer can make a
//! connection hold is bounded ([`ConnConfig`]): requests being handled and replies not yet
//! written, by count and by bytes; past either, the connection stops reading until the peer
//! reads; and a server's connections together hold at most `max_pending_bytes_total`
//! beyond each one's [`FAIR_SHARE`]. A frame must arrive whole in time, an idle connection is closed, a server takes
//! at most `max_connections` ([`ServerConfig`]), and a connection that closes drops the
//! handler futures of its requests at once. What peers cause (bad frames, timeouts,
//! refusals) is counted ([`ServerStats`]) and logged at most once per cause per 10 s.
//!
//! A handler that calls back its own peer holds its request's place while it waits: with
//! every place taken that way, the connection reads nothing, and the callbacks end by their
//! timeouts.
//!
//! Either end may run over TLS ([`tls`]): a server per its [`TlsMode`], a client with a
//! [`ClientTls`] (`Connection::connect_with`). The driver is generic over the stream, so
//! plaintext connections run the same code as without TLS.

mod config;
mod connection;
mod driver;
mod events;
mod outq;
mod server;
pub mod tls;
mod transport;
mod wire;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;

pub use config::{ConnConfig, FAIR_SHARE, MIN_FAIR_SHARE, NetConfig, NetConfigError, ServerConfig};
pub use connection::{AnswerRoom, ConnLoad, Connection};
pub use events::{Cause, LOG_INTERVAL};
pub use server::{Server, ServerStats, ServerStatsHandle};
pub use tls::{ClientTls, ServerTls, TlsConfig, TlsError, TlsMode};
pub use wire::Wire;

use crate::codes::{ErrorCode, SUCCESS};
use crate::error::ProtocolError;
use crate::rpc::{ErrorHeader, Rpc, decode_header, encode_header};

/// An inbound request, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub code: u16,
    pub request_id: u32,
    pub oneway: bool,
    /// The request's signature, as sent (empty: unsigned); see [`crate::auth`].
    pub auth: Bytes,
    pub header: Bytes,
    pub body: Bytes,
    /// When the connection's driver read the frame whole, before any wait for its turn:
    /// how long a request waited (for flow control) is measured from here.
    pub received: Instant,
}

impl Request {
    pub fn decode<R: Rpc>(&self) -> Result<R, ProtocolError> {
        decode_header(&self.header, R::CODE.as_str())
    }

    /// What its signature (`auth`) covers.
    pub fn signed(&self) -> crate::auth::Signed<'_> {
        crate::auth::Signed {
            oneway: self.oneway,
            code: self.code,
            header: &self.header,
            body: &self.body,
        }
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub header: Bytes,
    pub body: Bytes,
}

impl Reply {
    pub fn ok<T: bincode::Encode>(value: &T) -> Reply {
        Self::ok_with_body(value, Bytes::new())
    }

    pub fn ok_with_body<T: bincode::Encode>(value: &T, body: Bytes) -> Reply {
        match encode_header(value, "response header") {
            Ok(header) => Reply {
                status: SUCCESS,
                header,
                body,
            },
            Err(e) => Reply::error(ErrorCode::SystemError, e.to_string()),
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        let header = ErrorHeader {
            message: message.into(),
        };
        Reply {
            status: code as u16,
            header: encode_header(&header, "error header").unwrap_or_default(),
            body: Bytes::new(),
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Serves the requests arriving on connections. A request's future runs inside its
/// connection's task (so it must not block the thread), and is dropped unfinished when the
/// connection closes.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply>;
    /// Called once when a connection closes.
    fn on_close(&self, _conn: &Connection) {}
    /// Whether `req` still runs to its end (for a short while) when its peer closes or
    /// resets the connection after sending it: writes the peer may count on, such as
    /// sends (RocketMQ's Go producer sends its "one-way" messages as ordinary requests and
    /// closes without reading the answers). Everything else (held pulls) is dropped at
    /// once. One-way requests always run on. Default: no.
    fn completes_after_close(&self, _req: &Request) -> bool {
        false
    }
}

/// Answers every request with "not supported": for clients that serve nothing.
pub struct NoHandler;

impl Handler for NoHandler {
    fn handle<'a>(&'a self, _conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            Reply::error(
                ErrorCode::RequestCodeNotSupported,
                format!("request code {} is not served here", req.code),
            )
        })
    }
}
