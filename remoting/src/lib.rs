//! RocketMQ's 4.x remoting protocol, as its clients (Java, Go, C++, Python, Node.js) speak
//! it: the frame and its two header encodings ([`command`]), request and response codes
//! ([`codes`]), the message encodings of send and pull bodies ([`message`]), and how a
//! connection's first bytes tell it from weir's own frame or a TLS handshake ([`sniff()`]).
//!
//! This crate is only the codec: what a request means is the broker's and the name
//! server's business (their remoting adapters map requests onto the same processors that
//! serve weir's own protocol). Everything here is checked against the sizes it reads
//! before it allocates, and never panics on input.
//!
//! References: `remoting/.../RemotingCommand.java`, `RocketMQSerializable.java` and
//! `common/.../MessageDecoder.java` in apache/rocketmq (rocketmq-all-4.9.7).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod body;
pub mod codes;
pub mod command;
mod json_header;
pub mod message;
pub mod sniff;

pub use command::{LanguageCode, RemotingCommand, SerializeType};
pub use sniff::{Sniffed, sniff};

/// What a remoting frame, header or message body breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemotingError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("truncated {what}: needs {need} bytes, has {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unknown header serialize type {0}")]
    UnknownSerializeType(u8),
    #[error("bad JSON header: {0}")]
    BadJsonHeader(String),
    #[error("bad {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("request field {0} is missing")]
    MissingField(String),
    #[error("request field {name} = {value:?} is not {expected}")]
    BadField {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("compressed body cannot be read: {0}")]
    Decompress(String),
}

pub type Result<T, E = RemotingError> = std::result::Result<T, E>;

/// Reads big-endian integers off the front of a slice, checking lengths.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(RemotingError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A length read as a signed Java int: negative is malformed.
    pub(crate) fn len_i32(&mut self) -> Result<usize> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| RemotingError::Malformed {
            what: self.what,
            detail: format!("negative length {n}"),
        })
    }
    pub(crate) fn len_i16(&mut self) -> Result<usize> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| RemotingError::Malformed {
            what: self.what,
            detail: format!("negative length {n}"),
        })
    }

    pub(crate) fn utf8(&mut self, n: usize) -> Result<&'a str> {
        let what = self.what;
        std::str::from_utf8(self.bytes(n)?).map_err(|e| RemotingError::Malformed {
            what,
            detail: format!("not UTF-8: {e}"),
        })
    }
}
