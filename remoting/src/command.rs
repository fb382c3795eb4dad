//! The remoting frame (`RemotingCommand`): every request, response and one-way call.
//!
//! ```text
//! i32  length        big-endian: bytes after this field (4 + header + body)
//! i32  header info   high byte: serialize type (0 JSON, 1 ROCKETMQ); low 3 bytes: header length
//! ...  header        JSON object, or the ROCKETMQ binary layout below
//! ...  body          raw bytes
//! ```
//! ROCKETMQ binary header (`RocketMQSerializable`), big-endian:
//! `i16 code, u8 language, i16 version, i32 opaque, i32 flag, i32 remark len + remark,
//! i32 ext len + (i16 key len + key, i32 value len + value)*`.
//!
//! `flag` bit 0: response; bit 1: one-way. A response carries its request's `opaque` and
//! is written in the request's serialize type. Every request field travels as a string in
//! `extFields` (numbers in decimal), whatever the header encoding.

use std::collections::HashMap;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::json_header::{decode_json_header, peek_json_header};
use crate::{Reader, RemotingError, Result};

/// RocketMQ's default largest frame (`com.rocketmq.remoting.frameMaxLength`), 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Header lengths travel in 3 bytes.
pub const MAX_HEADER: usize = (1 << 24) - 1;
/// Most fields a header's `extFields` may hold (RocketMQ's requests use a few dozen; a
/// message's properties travel as one of them).
pub const MAX_EXT_FIELDS: usize = 1_024;
/// `flag` bit: this is a response.
pub const FLAG_RESPONSE: i32 = 1;
/// `flag` bit: no response is wanted.
pub const FLAG_ONEWAY: i32 = 1 << 1;
/// The `version` weir answers with: RocketMQ 4.9.7's (`MQVersion.Version.V4_9_7`). Java
/// clients read it from heartbeat answers and refuse SQL92 pulls below 232.
pub const SERVER_VERSION: i32 = 407;

/// How the header is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SerializeType {
    /// JSON (fastjson on the Java side): what clients use unless configured otherwise.
    #[default]
    Json = 0,
    /// The compact binary layout (`RocketMQSerializable`).
    RocketMq = 1,
}

impl SerializeType {
    pub fn from_u8(v: u8) -> Result<Self> {
        match v {
            0 => Ok(Self::Json),
            1 => Ok(Self::RocketMq),
            other => Err(RemotingError::UnknownSerializeType(other)),
        }
    }
}

macro_rules! languages {
    ($($variant:ident = $code:expr, $name:expr;)*) => {
        /// The caller's language (`LanguageCode`), as a byte in ROCKETMQ headers and by
        /// name in JSON ones.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum LanguageCode { $($variant = $code,)* }

        impl LanguageCode {
            pub fn from_code(v: u8) -> Self {
                match v { $($code => Self::$variant,)* _ => Self::Other }
            }
            pub fn from_name(s: &str) -> Self {
                match s { $($name => Self::$variant,)* _ => Self::Other }
            }
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }
        }
    };
}

languages! {
    Java = 0, "JAVA";
    Cpp = 1, "CPP";
    Dotnet = 2, "DOTNET";
    Python = 3, "PYTHON";
    Delphi = 4, "DELPHI";
    Erlang = 5, "ERLANG";
    Ruby = 6, "RUBY";
    Other = 7, "OTHER";
    Http = 8, "HTTP";
    Go = 9, "GO";
    Php = 10, "PHP";
    Oms = 11, "OMS";
    Rust = 12, "RUST";
}

/// One remoting frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    /// A request code, or a response's status.
    pub code: i32,
    pub language: LanguageCode,
    pub version: i32,
    /// Matches a response to its request.
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    /// The request (or response) header's fields, every value a string.
    pub ext_fields: HashMap<String, String>,
    pub serialize_type: SerializeType,
    pub body: Bytes,
}

impl RemotingCommand {
    /// A request with `code`; fields added with [`RemotingCommand::with`].
    pub fn request(code: i32, opaque: i32) -> Self {
        Self {
            code,
            // What RocketMQ's own broker says for its calls to clients.
            language: LanguageCode::Java,
            version: SERVER_VERSION,
            opaque,
            flag: 0,
            remark: None,
            ext_fields: HashMap::new(),
            serialize_type: SerializeType::Json,
            body: Bytes::new(),
        }
    }

    /// The response to `req` with status `code`, in the request's encoding.
    pub fn response_to(req: &RemotingCommand, code: i32, remark: Option<String>) -> Self {
        Self {
            code,
            language: LanguageCode::Java,
            version: SERVER_VERSION,
            opaque: req.opaque,
            flag: FLAG_RESPONSE,
            remark,
            ext_fields: HashMap::new(),
            serialize_type: req.serialize_type,
            body: Bytes::new(),
        }
    }

    /// Adds a header field.
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.ext_fields.insert(name.to_owned(), value.to_string());
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn oneway(mut self) -> Self {
        self.flag |= FLAG_ONEWAY;
        self
    }

    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    // -- header fields ---------------------------------------------------------------

    /// A field that may be absent.
    pub fn opt_field(&self, name: &str) -> Option<&str> {
        self.ext_fields.get(name).map(String::as_str)
    }

    /// A field the request must have.
    pub fn field(&self, name: &str) -> Result<&str> {
        self.opt_field(name)
            .ok_or_else(|| RemotingError::MissingField(name.to_owned()))
    }

    /// A numeric field the request must have.
    pub fn num<T: FromStr>(&self, name: &str) -> Result<T> {
        parse_num(name, self.field(name)?)
    }

    /// A numeric field that may be absent (or empty, as some clients send null ones).
    pub fn opt_num<T: FromStr>(&self, name: &str) -> Result<Option<T>> {
        match self.opt_field(name) {
            None | Some("") | Some("null") => Ok(None),
            Some(v) => parse_num(name, v).map(Some),
        }
    }

    /// A boolean field that may be absent: `true` (any case) or `1` is true, anything else
    /// false, as Java's `Boolean.parseBoolean` reads `"true"`.
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        match self.opt_field(name) {
            None | Some("") | Some("null") => None,
            Some(v) => Some(v.trim().eq_ignore_ascii_case("true") || v.trim() == "1"),
        }
    }

    // -- the wire ----------------------------------------------------------------------

    /// The length a frame's first 4 bytes announce, checked against `max`.
    pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize> {
        let len = i32::from_be_bytes(prefix);
        let len = usize::try_from(len).map_err(|_| RemotingError::Malformed {
            what: "frame",
            detail: format!("negative length {len}"),
        })?;
        if len > max {
            return Err(RemotingError::FrameTooLarge { len, max });
        }
        if len < 4 {
            return Err(RemotingError::Truncated {
                what: "frame",
                need: 4,
                have: len,
            });
        }
        Ok(len)
    }

    /// Decodes a frame: the bytes after its length field.
    pub fn decode(frame: Bytes) -> Result<Self> {
        let mut r = Reader::new(&frame, "frame");
        let info = r.i32()?;
        let serialize_type = SerializeType::from_u8(((info >> 24) & 0xff) as u8)?;
        let header_len = (info & 0x00ff_ffff) as usize;
        let header = r.bytes(header_len)?;
        let mut cmd = match serialize_type {
            SerializeType::Json => decode_json_header(header)?,
            SerializeType::RocketMq => decode_binary_header(header)?,
        };
        cmd.serialize_type = serialize_type;
        cmd.body = frame.slice(4 + header_len..);
        Ok(cmd)
    }

    /// Appends the whole frame, length field included.
    pub fn encode(&self, out: &mut BytesMut) -> Result<()> {
        let header = match self.serialize_type {
            SerializeType::Json => self.encode_json_header()?,
            SerializeType::RocketMq => self.encode_binary_header()?,
        };
        if header.len() > MAX_HEADER {
            return Err(RemotingError::TooLong {
                what: "header",
                len: header.len(),
                max: MAX_HEADER,
            });
        }
        let len = 4 + header.len() + self.body.len();
        let len32 = i32::try_from(len).map_err(|_| RemotingError::FrameTooLarge {
            len,
            max: i32::MAX as usize,
        })?;
        out.reserve(4 + len);
        out.put_i32(len32);
        out.put_i32(((self.serialize_type as i32) << 24) | header.len() as i32);
        out.put_slice(&header);
        out.put_slice(&self.body);
        Ok(())
    }

    /// The frame as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    /// The header alone, behind one byte naming its serialize type: how a connection
    /// driver hands a remoting frame to its handler and takes the answer back, without
    /// either side knowing the other's types.
    pub fn header_parts(&self) -> Result<Bytes> {
        let header = match self.serialize_type {
            SerializeType::Json => self.encode_json_header()?,
            SerializeType::RocketMq => self.encode_binary_header()?,
        };
        if header.len() > MAX_HEADER {
            return Err(RemotingError::TooLong {
                what: "header",
                len: header.len(),
                max: MAX_HEADER,
            });
        }
        let mut out = BytesMut::with_capacity(1 + header.len());
        out.put_u8(self.serialize_type as u8);
        out.put_slice(&header);
        Ok(out.freeze())
    }

    /// Reads back what [`RemotingCommand::header_parts`] wrote, with the frame's body.
    pub fn from_parts(typed_header: &[u8], body: Bytes) -> Result<Self> {
        let (&st, header) = typed_header.split_first().ok_or(RemotingError::Truncated {
            what: "header",
            need: 1,
            have: 0,
        })?;
        let serialize_type = SerializeType::from_u8(st)?;
        let mut cmd = match serialize_type {
            SerializeType::Json => decode_json_header(header)?,
            SerializeType::RocketMq => decode_binary_header(header)?,
        };
        cmd.serialize_type = serialize_type;
        cmd.body = body;
        Ok(cmd)
    }

    /// Splits a frame (the bytes after its length field) into its typed header (as
    /// [`RemotingCommand::header_parts`] writes it) and body, and reads the three header
    /// fields a driver needs: `(code, opaque, flag)`. Only those are read (the handler
    /// reads the rest once, with [`RemotingCommand::from_parts`]).
    pub fn split_frame(frame: &Bytes) -> Result<(Bytes, Bytes, i32, i32, i32)> {
        let mut r = Reader::new(frame, "frame");
        let info = r.i32()?;
        let st = ((info >> 24) & 0xff) as u8;
        let serialize_type = SerializeType::from_u8(st)?;
        let header_len = (info & 0x00ff_ffff) as usize;
        let header = r.bytes(header_len)?;
        let (code, opaque, flag) = match serialize_type {
            SerializeType::Json => {
                let h = peek_json_header(header)?;
                (h.code, h.opaque, h.flag)
            }
            SerializeType::RocketMq => {
                // i16 code, u8 language, i16 version, i32 opaque, i32 flag.
                let mut b = Reader::new(header, "binary header");
                let code = i32::from(b.i16()?);
                b.bytes(3)?;
                (code, b.i32()?, b.i32()?)
            }
        };
        let mut typed = BytesMut::with_capacity(1 + header_len);
        typed.put_u8(st);
        typed.put_slice(header);
        Ok((
            typed.freeze(),
            frame.slice(4 + header_len..),
            code,
            opaque,
            flag,
        ))
    }

    /// Writes a whole frame from a typed header and a body.
    pub fn encode_parts(typed_header: &[u8], body: &[u8], out: &mut BytesMut) -> Result<()> {
        let (&st, header) = typed_header.split_first().ok_or(RemotingError::Truncated {
            what: "header",
            need: 1,
            have: 0,
        })?;
        if header.len() > MAX_HEADER {
            return Err(RemotingError::TooLong {
                what: "header",
                len: header.len(),
                max: MAX_HEADER,
            });
        }
        let len = 4 + header.len() + body.len();
        let len32 = i32::try_from(len).map_err(|_| RemotingError::FrameTooLarge {
            len,
            max: i32::MAX as usize,
        })?;
        out.reserve(4 + len);
        out.put_i32(len32);
        out.put_i32((i32::from(st) << 24) | header.len() as i32);
        out.put_slice(header);
        out.put_slice(body);
        Ok(())
    }

    fn encode_json_header(&self) -> Result<Vec<u8>> {
        let h = JsonHeaderOut {
            code: self.code,
            language: self.language.name(),
            version: self.version,
            opaque: self.opaque,
            flag: self.flag,
            remark: self.remark.as_deref(),
            ext_fields: (!self.ext_fields.is_empty()).then_some(&self.ext_fields),
            serialize_type_current_rpc: "JSON",
        };
        serde_json::to_vec(&h).map_err(|e| RemotingError::BadJsonHeader(e.to_string()))
    }

    fn encode_binary_header(&self) -> Result<Vec<u8>> {
        let code = i16::try_from(self.code).map_err(|_| RemotingError::Malformed {
            what: "binary header",
            detail: format!("code {} does not fit 16 bits", self.code),
        })?;
        let mut out = Vec::with_capacity(64);
        out.put_i16(code);
        out.put_u8(self.language as u8);
        out.put_i16(self.version.clamp(i16::MIN.into(), i16::MAX.into()) as i16);
        out.put_i32(self.opaque);
        out.put_i32(self.flag);
        let remark = self.remark.as_deref().unwrap_or("");
        put_len_i32(&mut out, remark.len(), "remark")?;
        out.put_slice(remark.as_bytes());
        let mut ext = Vec::new();
        for (k, v) in &self.ext_fields {
            let klen = i16::try_from(k.len()).map_err(|_| RemotingError::TooLong {
                what: "header field name",
                len: k.len(),
                max: i16::MAX as usize,
            })?;
            ext.put_i16(klen);
            ext.put_slice(k.as_bytes());
            put_len_i32(&mut ext, v.len(), "header field value")?;
            ext.put_slice(v.as_bytes());
        }
        put_len_i32(&mut out, ext.len(), "header fields")?;
        out.extend_from_slice(&ext);
        Ok(out)
    }
}

fn put_len_i32(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<()> {
    let n = i32::try_from(len).map_err(|_| RemotingError::TooLong {
        what,
        len,
        max: i32::MAX as usize,
    })?;
    out.put_i32(n);
    Ok(())
}

fn parse_num<T: FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim().parse().map_err(|_| RemotingError::BadField {
        name: name.to_owned(),
        value: v.to_owned(),
        expected: "a number in range",
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonHeaderOut<'a> {
    code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ext_fields: Option<&'a HashMap<String, String>>,
    flag: i32,
    language: &'a str,
    opaque: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    remark: Option<&'a str>,
    #[serde(rename = "serializeTypeCurrentRPC")]
    serialize_type_current_rpc: &'a str,
    version: i32,
}

fn decode_binary_header(header: &[u8]) -> Result<RemotingCommand> {
    let mut r = Reader::new(header, "binary header");
    let code = i32::from(r.i16()?);
    let language = LanguageCode::from_code(r.u8()?);
    let version = i32::from(r.i16()?);
    let opaque = r.i32()?;
    let flag = r.i32()?;
    let remark_len = r.len_i32()?;
    let remark = match remark_len {
        0 => None,
        n => Some(r.utf8(n)?.to_owned()),
    };
    let ext_len = r.len_i32()?;
    let mut ext = Reader::new(r.bytes(ext_len)?, "header fields");
    let mut ext_fields = HashMap::new();
    let mut count = 0usize;
    while ext.remaining() > 0 {
        count += 1;
        if count > MAX_EXT_FIELDS {
            return Err(RemotingError::Malformed {
                what: "binary header",
                detail: format!("more than {MAX_EXT_FIELDS} fields"),
            });
        }
        let klen = ext.len_i16()?;
        let k = ext.utf8(klen)?;
        let vlen = ext.len_i32()?;
        let v = ext.utf8(vlen)?;
        if !k.is_empty() {
            ext_fields.insert(k.to_owned(), v.to_owned());
        }
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        serialize_type: SerializeType::RocketMq,
        body: Bytes::new(),
    })
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
