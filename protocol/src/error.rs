use crate::codes::ErrorCode;

/// A frame or header that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    #[error("cannot decode {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("cannot encode {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A RocketMQ remoting frame that cannot be read.
    #[error("bad remoting frame: {0}")]
    Remoting(String),
    /// A protocol this side does not serve.
    #[error("{0}")]
    Unserved(&'static str),
}

/// Why a call over a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer answered with an error status.
    #[error("{code}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection to {peer} closed")]
    Closed { peer: String },
    /// (The cause is part of the message, not a chained source, so it prints once.)
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl CallError {
    /// The remote status, if the peer answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}
