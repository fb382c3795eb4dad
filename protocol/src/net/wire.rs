//! Which protocol a connection speaks, and how frames of each look on the wire.
//!
//! A server connection starts undecided: its first 5 bytes decide ([`Wire::sniff`]; weir's
//! frame has its version, 2, where a remoting frame has its serialize type, 0 or 1; any
//! other value goes to weir's reader, which answers a bad version with an error). Both protocols become the same
//! in-memory [`Frame`] for the driver: a remoting frame's `request_id` is its `opaque`, its
//! `header` is the header as sent behind one byte naming its encoding (what
//! `weir_remoting::RemotingCommand::from_parts` reads), and its `kind` comes from its
//! `flag`. Only framing differs; limits, timeouts and back-pressure are shared.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use weir_remoting::RemotingCommand;
use weir_remoting::codes::response as rs;
use weir_remoting::command::{FLAG_ONEWAY, FLAG_RESPONSE};

use std::sync::Arc;

use super::{Handler, Reply};
use crate::codes::ErrorCode;
use crate::error::ProtocolError;
use crate::frame::{self, Frame, Kind};

/// A connection's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// weir's own frame (`crate::frame`).
    #[default]
    Weir,
    /// RocketMQ's 4.x remoting frame.
    Remoting,
}

/// Bytes [`Wire::sniff`] needs.
pub(super) const SNIFF_LEN: usize = weir_remoting::sniff::SNIFF_LEN;

/// The handlers of a connection's requests, by protocol.
#[derive(Clone)]
pub(super) struct Handlers {
    pub(super) weir: Option<Arc<dyn Handler>>,
    pub(super) remoting: Option<Arc<dyn Handler>>,
}

impl Handlers {
    /// Only weir's protocol (every client connection, and servers without remoting).
    pub(super) fn weir(h: Arc<dyn Handler>) -> Self {
        Self {
            weir: Some(h),
            remoting: None,
        }
    }

    pub(super) fn get(&self, wire: Wire) -> Option<&dyn Handler> {
        match wire {
            Wire::Weir => self.weir.as_deref(),
            Wire::Remoting => self.remoting.as_deref(),
        }
    }
}

impl Wire {
    /// The protocol a connection's first [`SNIFF_LEN`] bytes announce, if `handlers` serve
    /// it.
    pub(super) fn sniff(first: &[u8], handlers: &Handlers) -> Result<Wire, ProtocolError> {
        match first.get(4) {
            Some(0 | 1) if handlers.remoting.is_some() => Ok(Wire::Remoting),
            Some(0 | 1) => Err(ProtocolError::Unserved(
                "RocketMQ's remoting protocol is turned off here",
            )),
            // weir's frame, or something weir's frame reader refuses with a reply saying
            // why (another version of it, say).
            Some(_) if handlers.weir.is_some() => Ok(Wire::Weir),
            Some(&v) => Err(ProtocolError::BadVersion(v)),
            None => Err(ProtocolError::Truncated("connection closed before a frame")),
        }
    }

    /// The length field of the frame `buf` starts with (bytes after it), once known.
    pub(super) fn frame_len(
        self,
        buf: &[u8],
        max_frame: usize,
    ) -> Result<Option<usize>, ProtocolError> {
        match self {
            Wire::Weir => frame::frame_len(buf, max_frame),
            Wire::Remoting => {
                let Some(&[a, b, c, d]) = buf.get(..4) else {
                    return Ok(None);
                };
                RemotingCommand::frame_len([a, b, c, d], max_frame)
                    .map(Some)
                    .map_err(remoting_error)
            }
        }
    }

    /// Takes one whole frame off the front of `buf`, if there is one.
    pub(super) fn parse_frame(
        self,
        buf: &mut BytesMut,
        max_frame: usize,
    ) -> Result<Option<Frame>, ProtocolError> {
        match self {
            Wire::Weir => frame::parse_frame(buf, max_frame),
            Wire::Remoting => {
                let Some(len) = self.frame_len(buf, max_frame)? else {
                    return Ok(None);
                };
                if buf.len() - 4 < len {
                    return Ok(None);
                }
                let mut f = buf.split_to(4 + len);
                f.advance(4);
                let f = f.freeze();
                let (header, body, code, opaque, flag) =
                    RemotingCommand::split_frame(&f).map_err(remoting_error)?;
                let kind = if flag & FLAG_RESPONSE != 0 {
                    Kind::Response
                } else if flag & FLAG_ONEWAY != 0 {
                    Kind::Oneway
                } else {
                    Kind::Request
                };
                Ok(Some(Frame {
                    kind,
                    request_id: opaque as u32,
                    // Codes outside u16 are served as "not supported" by the adapter, which
                    // reads the real code from the header.
                    code: u16::try_from(code).unwrap_or(u16::MAX),
                    auth: Bytes::new(),
                    header,
                    body,
                }))
            }
        }
    }

    /// Bytes `f` takes on the wire, length field included.
    pub(super) fn wire_len(self, f: &Frame) -> usize {
        match self {
            Wire::Weir => f.wire_len(),
            // Length and header-info fields; the header loses its encoding byte.
            Wire::Remoting => 8 + f.header.len().saturating_sub(1) + f.body.len(),
        }
    }

    /// Writes `f`'s length field, fixed fields and header (not its body).
    pub(super) fn put_head(self, f: &Frame, out: &mut BytesMut) {
        match self {
            Wire::Weir => {
                f.put_prefix(out);
                out.put_slice(&f.header);
            }
            Wire::Remoting => {
                let (st, header) = f
                    .header
                    .split_first()
                    .map_or((0, &[][..]), |(s, h)| (*s, h));
                // Within the frame limit, checked by the caller: both fit.
                out.put_u32((4 + header.len() + f.body.len()) as u32);
                out.put_u32((u32::from(st) << 24) | (header.len() as u32 & 0x00ff_ffff));
                out.put_slice(header);
            }
        }
    }

    /// The reply refusing a request whose handler could not even read it (the driver's
    /// own: a panicking handler, an answer too large to send, a frame it cannot read).
    pub fn error_reply(self, request_id: u32, code: ErrorCode, message: &str) -> Reply {
        match self {
            Wire::Weir => Reply::error(code, message),
            Wire::Remoting => {
                let status = match code {
                    ErrorCode::SystemBusy => rs::SYSTEM_BUSY,
                    _ => rs::SYSTEM_ERROR,
                };
                let mut r = RemotingCommand::request(status, request_id as i32);
                r.flag = FLAG_RESPONSE;
                r.remark = Some(message.to_owned());
                Reply {
                    status: 0,
                    header: r.header_parts().unwrap_or_default(),
                    body: Bytes::new(),
                }
            }
        }
    }
}

fn remoting_error(e: weir_remoting::RemotingError) -> ProtocolError {
    ProtocolError::Remoting(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NoHandler;

    fn remoting_wire(cmd: &RemotingCommand) -> BytesMut {
        BytesMut::from(&cmd.to_bytes().unwrap()[..])
    }

    #[test]
    fn the_first_bytes_decide() {
        let weir = Frame {
            kind: Kind::Request,
            request_id: 1,
            code: 10,
            auth: Bytes::new(),
            header: Bytes::from_static(b"h"),
            body: Bytes::new(),
        };
        let mut w = BytesMut::new();
        weir.encode(&mut w, 1 << 20).unwrap();
        let both = Handlers {
            weir: Some(Arc::new(NoHandler)),
            remoting: Some(Arc::new(NoHandler)),
        };
        let weir_only = Handlers::weir(Arc::new(NoHandler));
        let remoting_only = Handlers {
            weir: None,
            remoting: Some(Arc::new(NoHandler)),
        };
        assert_eq!(Wire::sniff(&w[..SNIFF_LEN], &both).unwrap(), Wire::Weir);
        assert!(Wire::sniff(&w[..SNIFF_LEN], &remoting_only).is_err());
        let r = remoting_wire(&RemotingCommand::request(105, 1).with("topic", "T"));
        assert_eq!(Wire::sniff(&r[..SNIFF_LEN], &both).unwrap(), Wire::Remoting);
        assert!(Wire::sniff(&r[..SNIFF_LEN], &weir_only).is_err());
        // Another version of weir's frame goes to weir's reader, which says what is wrong.
        assert_eq!(Wire::sniff(&[0, 0, 0, 9, 7], &both).unwrap(), Wire::Weir);
        assert!(Wire::sniff(&[0, 0, 0, 9, 7], &remoting_only).is_err());
    }

    #[test]
    fn remoting_frames_survive_the_round_trip() {
        for oneway in [false, true] {
            let mut cmd = RemotingCommand::request(11, 77)
                .with("topic", "T")
                .with_body(&b"payload"[..]);
            if oneway {
                cmd = cmd.oneway();
            }
            let mut buf = remoting_wire(&cmd);
            let whole = buf.len();
            let f = Wire::Remoting
                .parse_frame(&mut buf, 1 << 20)
                .unwrap()
                .unwrap();
            assert!(buf.is_empty());
            assert_eq!(f.request_id, 77);
            assert_eq!(f.code, 11);
            assert_eq!(f.kind, if oneway { Kind::Oneway } else { Kind::Request });
            assert_eq!(Wire::Remoting.wire_len(&f), whole);
            let mut out = BytesMut::new();
            Wire::Remoting.put_head(&f, &mut out);
            out.put_slice(&f.body);
            assert_eq!(&out[..], &cmd.to_bytes().unwrap()[..]);
        }
        // Partial frames wait; oversize ones fail.
        let full = remoting_wire(&RemotingCommand::request(11, 1));
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert!(
            Wire::Remoting
                .parse_frame(&mut part, 1 << 20)
                .unwrap()
                .is_none()
        );
        let mut big = BytesMut::from(&(64i32 << 20).to_be_bytes()[..]);
        assert!(Wire::Remoting.parse_frame(&mut big, 1 << 20).is_err());
    }

    #[test]
    fn the_drivers_own_refusals_speak_the_connections_protocol() {
        let r = Wire::Remoting.error_reply(9, ErrorCode::SystemError, "boom");
        let cmd = RemotingCommand::from_parts(&r.header, r.body).unwrap();
        assert_eq!((cmd.code, cmd.opaque), (rs::SYSTEM_ERROR, 9));
        assert!(cmd.is_response());
        assert_eq!(cmd.remark.as_deref(), Some("boom"));
    }
}
