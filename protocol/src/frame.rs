//! The frame: how every request and response travels.
//!
//! ```text
//! u32  length      big-endian, bytes after this field (12 + header + body)
//! u8   version     2 (never 0 or 1: there RocketMQ's remoting frame has its serialize
//!                  type, so one port tells the two apart by this byte; see
//!                  `weir_remoting::sniff`)
//! u8   kind        0 request, 1 response, 2 one-way request; bit 0x80: signed
//! u32  request id  big-endian; a response echoes its request's
//! u16  code        request code, or response status (0 = success)
//! u32  header len  big-endian
//! [u16 auth len, auth]  only when signed: the request's signature (`crate::auth`)
//! ...  header      bincode 2 (standard config) of the code's header struct
//! ...  body        raw bytes, never re-encoded (message bodies, stored records)
//! ```
//! The length is checked against the maximum before anything is allocated. An unsigned
//! frame carries nothing for access control (its cost when ACL is off is nil).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ProtocolError;

/// 2 since the broker also speaks RocketMQ's remoting protocol on the same port (1 was
/// indistinguishable from a remoting frame with a binary header).
pub const VERSION: u8 = 2;
/// Bytes after the length field that every frame has.
pub const FIXED_LEN: usize = 1 + 1 + 4 + 2 + 4;
/// Default largest frame accepted (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// The kind byte's bit saying an auth section follows the fixed header.
pub const SIGNED: u8 = 0x80;
/// Largest auth section.
pub const MAX_AUTH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 0,
    Response = 1,
    Oneway = 2,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Self, ProtocolError> {
        match v {
            0 => Ok(Kind::Request),
            1 => Ok(Kind::Response),
            2 => Ok(Kind::Oneway),
            other => Err(ProtocolError::BadKind(other)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub request_id: u32,
    pub code: u16,
    /// The request's signature (empty: unsigned).
    pub auth: Bytes,
    pub header: Bytes,
    pub body: Bytes,
}

impl Frame {
    /// Total bytes on the wire, length field included.
    pub fn wire_len(&self) -> usize {
        4 + self.len()
    }

    /// Bytes after the length field.
    pub fn len(&self) -> usize {
        FIXED_LEN + auth_section_len(self.auth.len()) + self.header.len() + self.body.len()
    }

    /// Never: every frame has its fixed header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The kind byte: the kind, with [`SIGNED`] when an auth section follows.
    pub fn kind_byte(&self) -> u8 {
        if self.auth.is_empty() {
            self.kind as u8
        } else {
            self.kind as u8 | SIGNED
        }
    }

    /// Writes the fixed header and the auth section (what comes before the header).
    pub fn put_prefix(&self, out: &mut BytesMut) {
        out.put_u32(self.len() as u32);
        out.put_u8(VERSION);
        out.put_u8(self.kind_byte());
        out.put_u32(self.request_id);
        out.put_u16(self.code);
        out.put_u32(self.header.len() as u32);
        if !self.auth.is_empty() {
            out.put_u16(self.auth.len() as u16);
            out.put_slice(&self.auth);
        }
    }

    /// Checks the frame against `max_frame` (and its auth section against [`MAX_AUTH`]).
    pub fn check_len(&self, max_frame: usize) -> Result<(), ProtocolError> {
        if self.auth.len() > MAX_AUTH {
            return Err(ProtocolError::Truncated("auth section over its maximum"));
        }
        let len = self.len();
        if len > max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: max_frame,
            });
        }
        Ok(())
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut, max_frame: usize) -> Result<(), ProtocolError> {
        self.check_len(max_frame)?;
        out.reserve(self.wire_len());
        self.put_prefix(out);
        out.put_slice(&self.header);
        out.put_slice(&self.body);
        Ok(())
    }

    /// Parses one frame's bytes (after the length field).
    pub fn decode(mut buf: Bytes) -> Result<Self, ProtocolError> {
        if buf.len() < FIXED_LEN {
            return Err(ProtocolError::Truncated(
                "frame shorter than its fixed header",
            ));
        }
        let version = buf[0];
        if version != VERSION {
            return Err(ProtocolError::BadVersion(version));
        }
        let signed = buf[1] & SIGNED != 0;
        let kind = Kind::from_u8(buf[1] & !SIGNED)?;
        let request_id = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
        let code = u16::from_be_bytes([buf[6], buf[7]]);
        let header_len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        let _ = buf.split_to(FIXED_LEN);
        let auth = if signed {
            let Some(&[a, b]) = buf.get(..2) else {
                return Err(ProtocolError::Truncated("auth length runs past the frame"));
            };
            let auth_len = u16::from_be_bytes([a, b]) as usize;
            if auth_len == 0 || auth_len > MAX_AUTH || auth_len + 2 > buf.len() {
                return Err(ProtocolError::Truncated(
                    "auth section empty, over its maximum, or past the frame",
                ));
            }
            let _ = buf.split_to(2);
            buf.split_to(auth_len)
        } else {
            Bytes::new()
        };
        if header_len > buf.len() {
            return Err(ProtocolError::Truncated(
                "header length runs past the frame",
            ));
        }
        let header = buf.split_to(header_len);
        Ok(Frame {
            kind,
            request_id,
            code,
            auth,
            header,
            body: buf,
        })
    }
}

/// Bytes an auth section of `auth_len` takes in a frame.
pub fn auth_section_len(auth_len: usize) -> usize {
    if auth_len == 0 { 0 } else { 2 + auth_len }
}

/// Takes the first frame out of `buf` when it holds all of it (`Ok(None)` when it does not
/// yet); the frame's header and body share `buf`'s memory. The length is checked against
/// `max_frame` as soon as its 4 bytes are there.
pub fn parse_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    if buf.len() - 4 < len {
        return Ok(None);
    }
    let mut f = buf.split_to(4 + len);
    f.advance(4);
    Frame::decode(f.freeze()).map(Some)
}

/// The length field of the frame that `buf` starts with, checked, once its 4 bytes are
/// there.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > max_frame {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if len < FIXED_LEN {
        return Err(ProtocolError::Truncated(
            "frame length below the fixed header",
        ));
    }
    Ok(Some(len))
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: usize,
) -> Result<Option<Frame>, ProtocolError> {
    let mut len = [0u8; 4];
    // End of stream before a frame starts is a clean close; inside one, an error.
    if r.read(&mut len[..1]).await.map_err(ProtocolError::Io)? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..])
        .await
        .map_err(ProtocolError::Io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if len < FIXED_LEN {
        return Err(ProtocolError::Truncated(
            "frame length below the fixed header",
        ));
    }
    let mut buf = BytesMut::zeroed(len);
    r.read_exact(&mut buf).await.map_err(ProtocolError::Io)?;
    Frame::decode(buf.freeze()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            kind: Kind::Request,
            request_id: 0xDEAD_BEEF,
            code: 105,
            auth: Bytes::new(),
            header: Bytes::from_static(b"hdr"),
            body: Bytes::from_static(b"the body"),
        }
    }

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut out = BytesMut::new();
        frame().encode(&mut out, DEFAULT_MAX_FRAME).unwrap();
        frame().encode(&mut out, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(out.len(), 2 * frame().wire_len());
        let mut r = &out[..];
        assert_eq!(
            read_frame(&mut r, DEFAULT_MAX_FRAME).await.unwrap(),
            Some(frame())
        );
        assert_eq!(
            read_frame(&mut r, DEFAULT_MAX_FRAME).await.unwrap(),
            Some(frame())
        );
        assert_eq!(read_frame(&mut r, DEFAULT_MAX_FRAME).await.unwrap(), None);

        // Over the limit: refused from the length alone.
        let mut huge = &[0xFFu8, 0xFF, 0xFF, 0xFF][..];
        assert!(matches!(
            read_frame(&mut huge, DEFAULT_MAX_FRAME).await,
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            frame().encode(&mut BytesMut::new(), 10),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        // Every truncation of a valid frame is an error or a clean end, never a panic.
        for cut in 0..out.len() / 2 {
            let mut r = &out[..cut];
            let res = read_frame(&mut r, DEFAULT_MAX_FRAME).await;
            assert!(
                cut == 0 && matches!(res, Ok(None)) || res.is_err(),
                "cut {cut}"
            );
        }
        // The same frames parsed from a buffer filled a byte at a time.
        let mut buf = BytesMut::new();
        let mut parsed = Vec::new();
        for b in out.iter() {
            buf.put_u8(*b);
            while let Some(f) = parse_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                parsed.push(f);
            }
        }
        assert_eq!(parsed, vec![frame(), frame()]);
        assert!(buf.is_empty());
        assert!(matches!(
            parse_frame(
                &mut BytesMut::from(&[0xFFu8, 0xFF, 0xFF, 0xFF][..]),
                DEFAULT_MAX_FRAME
            ),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let mut bad = out.clone();
        bad[4] = 9;
        assert!(matches!(
            read_frame(&mut &bad[..], DEFAULT_MAX_FRAME).await,
            Err(ProtocolError::BadVersion(9))
        ));
    }

    #[test]
    fn signed_frames_round_trip_and_bad_auth_is_refused() {
        let mut f = frame();
        f.auth = Bytes::from_static(b"signature bytes");
        let mut out = BytesMut::new();
        f.encode(&mut out, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(out.len(), f.wire_len());
        assert_eq!(out[5], Kind::Request as u8 | SIGNED);
        let got = parse_frame(&mut out.clone(), DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(got, f);
        // An auth length past the frame, or zero, is refused.
        for bad_len in [0u16, 999] {
            let mut bad = out.clone();
            bad[16..18].copy_from_slice(&bad_len.to_be_bytes());
            assert!(
                parse_frame(&mut bad, DEFAULT_MAX_FRAME).is_err(),
                "{bad_len}"
            );
        }
        f.auth = Bytes::from(vec![0u8; MAX_AUTH + 1]);
        assert!(f.encode(&mut BytesMut::new(), DEFAULT_MAX_FRAME).is_err());
    }
}
