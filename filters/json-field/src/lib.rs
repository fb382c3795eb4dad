//! Keeps the messages whose body is a JSON document with a field, at a dotted path, that
//! satisfies a condition: e.g. `path=order.customer.tier op=in value=gold,platinum`.
//!
//! # Parameters
//!
//! - `path` (required): dot-separated field names from the document's root, e.g.
//!   `order.customer.tier`. A segment of digits also indexes arrays (`items.0.sku`); on an
//!   object it is an ordinary key. Keys that contain a `.` cannot be addressed.
//! - `op` (optional, default `eq`; case-insensitive):
//!   - `eq` / `ne`: the field equals / does not equal `value`;
//!   - `in`: the field equals one of the values in `value`;
//!   - `gt`, `ge`, `lt`, `le`: the field is greater than / at least / less than / at most
//!     `value`;
//!   - `exists`: the field is present (a `null` counts as present); takes no `value`.
//! - `value` (required except for `exists`): read as JSON when it parses as JSON
//!   (`42`, `true`, `null`, `"text"`, `[1, 2]`), else taken as a plain string (`gold`).
//!   For `in`: a JSON array, or a comma-separated list whose items are each read the same
//!   way (`gold, platinum`, `1,2,3`; surrounding spaces trimmed); any other single JSON
//!   value is a list of one (so `"a,b"`, quoted, is the one string `a,b`). For `gt`, `ge`,
//!   `lt`, `le` it must be a number or a string.
//!
//! # What matches
//!
//! - Equality is JSON equality, except that numbers compare by value (`1` equals `1.0`)
//!   and exactly (no rounding through `f64` for large integers). A string is never equal
//!   to a number: `"42"` is not `42`.
//! - `gt`, `ge`, `lt`, `le` compare numerically when the field and `value` are both
//!   numbers, by Unicode code point when both are strings (so ISO dates order correctly);
//!   with any other pair the message is not kept.
//! - A message whose field is missing is not kept, for every op including `ne` (as in SQL,
//!   an absent value is neither equal nor unequal).
//! - A body that is not UTF-8 or not a single valid JSON document is not kept; this is
//!   not an error.
//!
//! Only the path is materialised: the rest of the document is checked and skipped without
//! building values.

use std::cmp::Ordering;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use weir_filter_sdk::{Filter, Message, ParamError, Params};

/// One step of the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    key: Box<str>,
    /// The key as an array index, when it is all digits.
    index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Cmp(Ordering, bool, Value),
    Exists,
}

/// The filter.
#[derive(Debug, Clone)]
pub struct JsonField {
    path: Vec<Segment>,
    op: Op,
}

impl Filter for JsonField {
    const NEEDS_BODY: bool = true;

    fn init(params: &Params) -> Result<Self, ParamError> {
        params.allow_only(&["path", "op", "value"])?;
        let path = parse_path(params.require("path")?)?;
        let op_name = params
            .get("op")
            .map_or("eq", str::trim)
            .to_ascii_lowercase();
        let value = params.get("value");
        let need_value = || {
            value.ok_or_else(|| {
                ParamError::new(format!(
                    "missing parameter \"value\" (op={op_name} needs one)"
                ))
            })
        };
        let op = match op_name.as_str() {
            "eq" => Op::Eq(parse_value(need_value()?)),
            "ne" => Op::Ne(parse_value(need_value()?)),
            "in" => Op::In(parse_list(need_value()?)),
            "gt" | "ge" | "lt" | "le" => {
                let v = parse_value(need_value()?);
                if !matches!(v, Value::Number(_) | Value::String(_)) {
                    return Err(ParamError::new(format!(
                        "parameter \"value\": op={op_name} compares numbers or strings, got {v}"
                    )));
                }
                match op_name.as_str() {
                    "gt" => Op::Cmp(Ordering::Greater, false, v),
                    "ge" => Op::Cmp(Ordering::Greater, true, v),
                    "lt" => Op::Cmp(Ordering::Less, false, v),
                    _ => Op::Cmp(Ordering::Less, true, v),
                }
            }
            "exists" => {
                if value.is_some() {
                    return Err(ParamError::new(
                        "parameter \"value\": op=exists takes no value",
                    ));
                }
                Op::Exists
            }
            other => {
                return Err(ParamError::new(format!(
                    "parameter \"op\": expected eq, ne, in, gt, ge, lt, le or exists, got {other:?}"
                )));
            }
        };
        Ok(JsonField { path, op })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        let Some(field) = msg.body().and_then(|b| find(b, &self.path)) else {
            return false;
        };
        match &self.op {
            Op::Eq(v) => json_eq(&field, v),
            Op::Ne(v) => !json_eq(&field, v),
            Op::In(list) => list.iter().any(|v| json_eq(&field, v)),
            Op::Cmp(want, or_equal, v) => {
                order(&field, v).is_some_and(|o| o == *want || (*or_equal && o == Ordering::Equal))
            }
            Op::Exists => true,
        }
    }
}

weir_filter_sdk::export_filter!(JsonField);

fn parse_path(path: &str) -> Result<Vec<Segment>, ParamError> {
    if path.is_empty() {
        return Err(ParamError::new("parameter \"path\": is empty"));
    }
    path.split('.')
        .map(|key| {
            if key.is_empty() {
                return Err(ParamError::new(format!(
                    "parameter \"path\": empty segment in {path:?} (segments are separated by single dots)"
                )));
            }
            let index = if key.bytes().all(|b| b.is_ascii_digit()) {
                key.parse().ok()
            } else {
                None
            };
            Ok(Segment {
                key: key.into(),
                index,
            })
        })
        .collect()
}

/// JSON when it parses as JSON, else the text itself as a string.
fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn parse_list(text: &str) -> Vec<Value> {
    match serde_json::from_str(text) {
        Ok(Value::Array(items)) => items,
        Ok(single) => vec![single],
        Err(_) => text
            .split(',')
            .map(|item| parse_value(item.trim()))
            .collect(),
    }
}

/// The value at `path` in `body`, or `None` when the body is not UTF-8, not one JSON
/// document, or has nothing there.
pub fn find_path(body: &[u8], path: &str) -> Option<Value> {
    find(body, &parse_path(path).ok()?)
}

fn find(body: &[u8], path: &[Segment]) -> Option<Value> {
    // Strings the walk skips are not UTF-8-checked by serde_json: check the whole body.
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Walk(path).deserialize(&mut de).ok()?;
    de.end().ok()?;
    found
}

/// Deserializes the value at a path (`None` when absent) and skips everything else.
struct Walk<'p>(&'p [Segment]);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.0.split_first() {
            None => Value::deserialize(d).map(Some),
            Some((segment, rest)) => d.deserialize_any(Step { segment, rest }),
        }
    }
}

struct Step<'p> {
    segment: &'p Segment,
    rest: &'p [Segment],
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // A scalar where the path goes on: nothing there.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        // Read to the end (so the document is validated); with duplicate keys the last
        // one wins, as in JavaScript's JSON.parse and serde_json's own `Value`.
        while let Some(hit) = map.next_key_seed(KeyIs(&self.segment.key))? {
            if hit {
                found = map.next_value_seed(Walk(self.rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut i = 0_usize;
        loop {
            if Some(i) == self.segment.index {
                match seq.next_element_seed(Walk(self.rest))? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

/// Whether an object key equals the wanted one, without copying the key.
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// JSON equality with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

fn order(field: &Value, value: &Value) -> Option<Ordering> {
    match (field, value) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Exact comparison of two JSON numbers (each an `i64`, a `u64` or an `f64`).
fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => cmp_int_float(x, b.as_f64()?),
        (None, Some(y)) => cmp_int_float(y, a.as_f64()?).map(Ordering::reverse),
        (None, None) => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Compares an integer in the `i64`/`u64` range with a float, exactly.
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    // 2^64 and -2^63 are exact as f64; beyond them the float is beyond every such integer.
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    const MINUS_TWO_63: f64 = -9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_64 {
        return Some(Ordering::Less);
    }
    if f < MINUS_TWO_63 {
        return Some(Ordering::Greater);
    }
    // In [-2^63, 2^64) `as` truncates exactly, and the whole part converts back exactly.
    let whole = f as i128;
    match i.cmp(&whole) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - whole as f64)),
        other => Some(other),
    }
}

#[cfg(test)]
mod tests;
