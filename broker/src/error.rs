//! The broker's errors: what stops it from starting ([`BrokerError`]), and why a request
//! was refused ([`ProcessError`]).
//!
//! Processors return `ProcessError`; each protocol adapter maps its kinds to its own wire
//! statuses in one place (`adapter::weir::status_of` for weir's frames). A processor never
//! picks a status code.

use weir_store::StoreError;

use crate::filter::FilterError;
use crate::topics::{NameError, TopicError};

/// Why the broker could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    /// A `[tls]` file that cannot be read or used (the error names it).
    #[error(transparent)]
    Tls(#[from] weir_protocol::TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topic configuration: {0}")]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Filters(#[from] FilterError),
    #[error("{what} task failed: {error}")]
    Task {
        what: &'static str,
        error: tokio::task::JoinError,
    },
    #[error("cannot start the {what} thread: {error}")]
    Thread {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("stopped while starting")]
    Stopped,
}

/// A setting out of its range, naming the setting and the range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Why a request was refused. The kinds are what a client can act on; the text says the
/// particulars.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The request itself is malformed (inconsistent lengths, an empty batch).
    #[error("{0}")]
    BadRequest(String),
    /// A field is out of its range or refers to something that cannot exist.
    #[error("{0}")]
    InvalidParameter(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{0}")]
    TopicNotFound(String),
    /// The topic or the operation is not open to this request (a system topic, a topic
    /// without the read or write permission).
    #[error("{0}")]
    NoPermission(String),
    /// The message cannot be stored as it is (too large, a bad delay level).
    #[error("{0}")]
    MessageIllegal(String),
    /// The subscription expression does not parse.
    #[error("{0}")]
    BadSubscription(String),
    /// What was looked up (a message by key or id) is not there.
    #[error("{0}")]
    NotFound(String),
    /// An uploaded filter was refused; nothing was stored.
    #[error("{0}")]
    FilterRejected(String),
    /// The group's filter failed on this pull; the offset did not move.
    #[error("{0}")]
    FilterFailed(String),
    /// The group's filter is marked failed: its pulls fail without running it until a new
    /// version is uploaded or the mark is reset.
    #[error("{0}")]
    FilterMarkedFailed(String),
    #[error("{0}")]
    FilterNotFound(String),
    /// A bound on what clients may make the broker hold was reached (connections' client
    /// ids, groups, in-flight requests of a family); retry later or elsewhere.
    #[error("{0}")]
    Busy(String),
    /// Flow control: the send waited longer than `send_queue_wait_ms` for its append to
    /// start. Nothing was stored; retry after a pause or on another broker.
    #[error("{0}")]
    StoreBusy(String),
    /// A write sent to a slave.
    #[error("{0}")]
    NotMaster(String),
    /// A slave whose log differs from its master's serves nothing.
    #[error("{0}")]
    ReplicaDiverged(String),
    /// The group has live members whose commits would undo the operation.
    #[error("{0}")]
    GroupHasMembers(String),
    /// An end-transaction that does not match its half message.
    #[error("{0}")]
    TransactionInvalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topic configuration: {0}")]
    Topics(#[from] TopicError),
    /// Access control: the principal lacks a permission (the text names it).
    #[error("{0}")]
    AccessDenied(String),
    /// Access control: the request's signature was refused.
    #[error(transparent)]
    Auth(#[from] weir_protocol::auth::AuthError),
    /// The broker does not serve this request.
    #[error("{0}")]
    Unsupported(String),
    /// Something that should not happen did (a task panicked).
    #[error("{0}")]
    Internal(String),
}

impl From<FilterError> for ProcessError {
    fn from(e: FilterError) -> Self {
        match e {
            e @ (FilterError::Storage(_) | FilterError::Runtime(_)) => {
                ProcessError::Internal(e.to_string())
            }
            e @ FilterError::TooMany { .. } => ProcessError::Busy(e.to_string()),
            e => ProcessError::FilterRejected(e.to_string()),
        }
    }
}

pub type Processed<T> = Result<T, ProcessError>;
