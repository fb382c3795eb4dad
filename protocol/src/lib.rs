//! weir's message model and wire protocol: the record format every message is stored and
//! pulled in ([`record`]); length-prefixed frames with a bincode-2 header and a raw body
//! ([`frame`]), request codes and statuses ([`codes`]), typed requests ([`rpc`], [`route`]),
//! a connection that multiplexes requests both ways ([`net`]), and signed requests for
//! access control ([`auth`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod names;
pub mod record;

#[cfg(feature = "net")]
pub mod admin;
#[cfg(feature = "net")]
pub mod auth;
#[cfg(feature = "net")]
pub mod broker;
#[cfg(feature = "net")]
pub mod codes;
#[cfg(feature = "net")]
pub mod error;
#[cfg(feature = "net")]
pub mod filter;
#[cfg(feature = "net")]
pub mod frame;
#[cfg(feature = "net")]
pub mod ha;
#[cfg(feature = "net")]
pub mod metrics;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "net")]
pub mod route;
#[cfg(feature = "net")]
pub mod rpc;

/// The header encoding, re-exported so every crate uses the same bincode.
#[cfg(feature = "net")]
pub use bincode;
#[cfg(feature = "net")]
pub use codes::{ErrorCode, RequestCode};
#[cfg(feature = "net")]
pub use error::{CallError, ProtocolError};
#[cfg(feature = "net")]
pub use net::{
    AnswerRoom, ConnConfig, ConnLoad, Connection, FAIR_SHARE, Handler, MIN_FAIR_SHARE, NetConfig,
    NoHandler, Reply, Request, Server, ServerConfig, ServerStats, ServerStatsHandle, TlsConfig,
    TlsError, TlsMode,
};
pub use record::{Message, MessageId, RecordError, RecordView};
#[cfg(feature = "net")]
pub use rpc::Rpc;
