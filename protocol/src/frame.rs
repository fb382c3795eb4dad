//! The frame: how every request and response travels.
//!
//! ```text
//! u32  length      big-endian, bytes after this field (12 + header + body)
//! u8   version     1
//! u8   kind        0 request, 1 response, 2 one-way request
//! u32  request id  big-endian; a response echoes its request's
//! u16  code        request code, or response status (0 = success)
//! u32  header len  big-endian
//! ...  header      bincode 2 (standard config) of the code's header struct
//! ...  body        raw bytes, never re-encoded (message bodies, stored records)
//! ```
//! The length is checked against the maximum before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ProtocolError;

pub const VERSION: u8 = 1;
/// Bytes after the length field that every frame has.
pub const FIXED_LEN: usize = 1 + 1 + 4 + 2 + 4;
/// Default largest frame accepted (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

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
    pub header: Bytes,
    pub body: Bytes,
}

impl Frame {
    /// Total bytes on the wire, length field included.
    pub fn wire_len(&self) -> usize {
        4 + FIXED_LEN + self.header.len() + self.body.len()
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut, max_frame: usize) -> Result<(), ProtocolError> {
        let len = FIXED_LEN + self.header.len() + self.body.len();
        if len > max_frame {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: max_frame,
            });
        }
        out.reserve(4 + len);
        out.put_u32(len as u32);
        out.put_u8(VERSION);
        out.put_u8(self.kind as u8);
        out.put_u32(self.request_id);
        out.put_u16(self.code);
        out.put_u32(self.header.len() as u32);
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
        let kind = Kind::from_u8(buf[1])?;
        let request_id = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
        let code = u16::from_be_bytes([buf[6], buf[7]]);
        let header_len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        let _ = buf.split_to(FIXED_LEN);
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
            header,
            body: buf,
        })
    }
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
}
