//! Typed requests: each request header type names its code and its response type.

use bincode::{Decode, Encode};
use bytes::Bytes;

use crate::codes::RequestCode;
use crate::error::ProtocolError;

/// A request header type. Its bincode encoding is the frame header; a body, if any,
/// travels raw beside it.
pub trait Rpc: Encode + Decode<()> + Send + Sync + 'static {
    const CODE: RequestCode;
    type Response: Encode + Decode<()> + Send + std::fmt::Debug + 'static;
}

/// The header of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ErrorHeader {
    pub message: String,
}

/// Largest header accepted (headers are small; bodies carry the bulk).
const MAX_HEADER: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_HEADER>()
}

pub fn encode_header<T: Encode>(value: &T, what: &'static str) -> Result<Bytes, ProtocolError> {
    bincode::encode_to_vec(value, config())
        .map(Bytes::from)
        .map_err(|e| ProtocolError::Encode {
            what,
            detail: e.to_string(),
        })
}

/// Largest body encoded with [`encode_body`]: a frame's limit.
const MAX_BODY: usize = crate::frame::DEFAULT_MAX_FRAME;

fn body_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// Encodes a structured body (a list too large for a header, such as a broker's topics).
pub fn encode_body<T: Encode>(value: &T, what: &'static str) -> Result<Bytes, ProtocolError> {
    bincode::encode_to_vec(value, body_config())
        .map(Bytes::from)
        .map_err(|e| ProtocolError::Encode {
            what,
            detail: e.to_string(),
        })
}

/// Decodes a structured body, requiring every byte to be used.
pub fn decode_body<T: Decode<()>>(bytes: &[u8], what: &'static str) -> Result<T, ProtocolError> {
    let (value, used) =
        bincode::decode_from_slice(bytes, body_config()).map_err(|e| ProtocolError::Decode {
            what,
            detail: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode {
            what,
            detail: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}

/// Decodes a header, requiring every byte to be used.
pub fn decode_header<T: Decode<()>>(bytes: &[u8], what: &'static str) -> Result<T, ProtocolError> {
    let (value, used) =
        bincode::decode_from_slice(bytes, config()).map_err(|e| ProtocolError::Decode {
            what,
            detail: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode {
            what,
            detail: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}
