//! Reading a JSON remoting header: every field optional (clients differ in what they
//! send), unknown fields ignored, ext field values of any JSON scalar taken as their text.
//!
//! Invariant: what a header decodes into is about its own size: ext fields are read
//! straight into text, at most [`MAX_EXT_FIELDS`] of them.

use std::collections::HashMap;

use serde::Deserialize;

use crate::command::{LanguageCode, MAX_EXT_FIELDS, RemotingCommand, SerializeType};
use crate::{RemotingError, Result};
use bytes::Bytes;

/// What a JSON header may hold: every field optional (clients differ in what they send),
/// unknown fields ignored, field values of any JSON scalar taken as their text.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsonHeaderIn {
    code: i32,
    language: Option<serde_json::Value>,
    version: i32,
    opaque: i32,
    flag: i32,
    remark: Option<String>,
    #[serde(deserialize_with = "ext_fields_within_bound")]
    ext_fields: Option<HashMap<String, String>>,
}

/// Reads a JSON header's `extFields` straight into text, at most [`MAX_EXT_FIELDS`] of
/// them: no intermediate JSON values, so a header costs about its size in memory (a map of
/// JSON values cost ~25 times the header's bytes, ~375 MB for a 16 MB header of tiny
/// fields). Nulls are left out; a value that is not a scalar is refused.
fn ext_fields_within_bound<'de, D>(
    d: D,
) -> std::result::Result<Option<HashMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{Error, MapAccess, Visitor};
    use std::fmt;

    /// A scalar's text; `None` for null.
    struct ScalarText(Option<String>);
    impl<'de> Deserialize<'de> for ScalarText {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = ScalarText;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }
                fn visit_str<E: Error>(self, v: &str) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(Some(v.to_owned())))
                }
                fn visit_string<E: Error>(self, v: String) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(Some(v)))
                }
                fn visit_bool<E: Error>(self, v: bool) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(Some(v.to_string())))
                }
                fn visit_i64<E: Error>(self, v: i64) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(Some(v.to_string())))
                }
                fn visit_u64<E: Error>(self, v: u64) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(Some(v.to_string())))
                }
                fn visit_f64<E: Error>(self, v: f64) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(Some(v.to_string())))
                }
                fn visit_unit<E: Error>(self) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(None))
                }
                fn visit_none<E: Error>(self) -> std::result::Result<ScalarText, E> {
                    Ok(ScalarText(None))
                }
            }
            d.deserialize_any(V)
        }
    }

    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Option<HashMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an object of at most {MAX_EXT_FIELDS} fields")
        }
        fn visit_unit<E: Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut m: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut fields = HashMap::new();
            let mut count = 0usize;
            while let Some((k, ScalarText(v))) = m.next_entry::<String, ScalarText>()? {
                count += 1;
                if count > MAX_EXT_FIELDS {
                    return Err(A::Error::custom(format!(
                        "extFields has more than {MAX_EXT_FIELDS} fields"
                    )));
                }
                if let Some(v) = v {
                    fields.insert(k, v);
                }
            }
            Ok(Some(fields))
        }
    }
    d.deserialize_any(Fields)
}

/// The three fields a connection driver needs from a JSON header; the rest is skipped
/// unparsed.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct JsonHeaderPeek {
    pub(crate) code: i32,
    pub(crate) opaque: i32,
    pub(crate) flag: i32,
}

/// `header` when it is a JSON object, as RocketMQ writes headers: serde would read a
/// struct from an array too (its fields in order), and serve `[34]` as a heartbeat.
fn object(header: &[u8]) -> Result<&[u8]> {
    match header.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(header),
        _ => Err(RemotingError::BadJsonHeader(
            "the header is not a JSON object".into(),
        )),
    }
}

/// The fields a connection driver needs, from a JSON header.
pub(crate) fn peek_json_header(header: &[u8]) -> Result<JsonHeaderPeek> {
    serde_json::from_slice(object(header)?).map_err(|e| RemotingError::BadJsonHeader(e.to_string()))
}

pub(crate) fn decode_json_header(header: &[u8]) -> Result<RemotingCommand> {
    let h: JsonHeaderIn = serde_json::from_slice(object(header)?)
        .map_err(|e| RemotingError::BadJsonHeader(e.to_string()))?;
    let ext_fields = h.ext_fields.unwrap_or_default();
    Ok(RemotingCommand {
        code: h.code,
        language: match h.language {
            Some(serde_json::Value::String(name)) => LanguageCode::from_name(&name),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|c| u8::try_from(c).ok())
                .map_or(LanguageCode::Other, LanguageCode::from_code),
            _ => LanguageCode::Other,
        },
        version: h.version,
        opaque: h.opaque,
        flag: h.flag,
        remark: h.remark,
        ext_fields,
        serialize_type: SerializeType::Json,
        body: Bytes::new(),
    })
}
