//! weir's wire protocol: length-prefixed frames with a bincode-2 header and a raw body
//! ([`frame`]), request codes and statuses ([`codes`]), typed requests ([`rpc`], [`route`]),
//! and a connection that multiplexes requests both ways ([`net`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod codes;
pub mod error;
pub mod frame;
pub mod net;
pub mod route;
pub mod rpc;

pub use codes::{ErrorCode, RequestCode};
pub use error::{CallError, ProtocolError};
pub use net::{ConnConfig, Connection, Handler, NoHandler, Reply, Request, Server};
pub use rpc::Rpc;
