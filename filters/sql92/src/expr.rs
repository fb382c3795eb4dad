//! The parsed expression and its evaluation. Everything here is built once by the parser;
//! evaluation only reads it, borrows property values and never allocates.
//!
//! Values are compared as bytes, and read as UTF-8 only where text matters (`CONTAINS`,
//! `STARTSWITH`, `ENDSWITH`, and numbers beyond plain integers): in a filter this runs for
//! every message, and checking each value's UTF-8 first cost a tenth of the filter's time.
//! Every value a broker stores is UTF-8 (it checks at send); one that is not (given
//! natively) compares as its bytes, and is UNKNOWN where text matters.

use std::cmp::Ordering;
use std::fmt;

/// A parsed SQL92 expression, ready to evaluate against any number of messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub(crate) root: Node,
    /// The distinct property names, in order of first appearance; a [`Prop`]'s `slot` is
    /// its index here.
    pub(crate) names: Box<[Box<str>]>,
}

/// A property reference: its name, and its slot in [`Expr::property_names`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prop {
    pub(crate) name: Box<str>,
    pub(crate) slot: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `TRUE` or `FALSE` on its own.
    Const(bool),
    Not(Box<Node>),
    /// Two or more conditions; nested ANDs are flattened into one list.
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Cmp(CmpOp, Operand, Operand),
    /// `value [NOT] BETWEEN low AND high`; its own node so `value` is looked up once.
    Between {
        value: Operand,
        low: Operand,
        high: Operand,
        negated: bool,
    },
    /// `prop [NOT] IN (...)`; `list` is sorted and deduplicated for binary search.
    In {
        prop: Prop,
        list: Box<[Box<str>]>,
        negated: bool,
    },
    IsNull {
        prop: Prop,
        negated: bool,
    },
    /// `prop [NOT] CONTAINS|STARTSWITH|ENDSWITH 'needle'` (RocketMQ 5 extensions).
    Text {
        op: TextOp,
        prop: Prop,
        needle: Box<str>,
        negated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextOp {
    Contains,
    StartsWith,
    EndsWith,
}

/// One side of a comparison. Numeric literals are parsed once, here.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Prop(Prop),
    Str(Box<str>),
    Num(Num),
    Bool(bool),
}

/// A number: integers stay exact, decimals are `f64`. Always finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
}

/// A resolved operand: property values and string literals are both strings, as in
/// RocketMQ, where every property value is a `String` (held as its UTF-8 bytes).
#[derive(Clone, Copy)]
enum Val<'a> {
    Str(&'a [u8]),
    Num(Num),
    Bool(bool),
}

impl Expr {
    /// Whether a message with these properties is kept: `true` only when the expression
    /// is TRUE (UNKNOWN and FALSE both drop it). `lookup` returns a property's value, or
    /// `None` when the message does not have it.
    pub fn evaluate<'v>(&self, lookup: impl Fn(&str) -> Option<&'v str>) -> bool {
        eval(&self.root, &ByName(lookup)) == Some(true)
    }

    /// The three-valued result: `Some(true)`, `Some(false)`, or `None` for UNKNOWN.
    pub fn evaluate3<'v>(&self, lookup: impl Fn(&str) -> Option<&'v str>) -> Option<bool> {
        eval(&self.root, &ByName(lookup))
    }

    /// The distinct property names the expression reads, in order of first appearance.
    pub fn property_names(&self) -> &[Box<str>] {
        &self.names
    }

    /// Like [`Expr::evaluate`], with the properties already looked up: `values[i]` is the
    /// value of `property_names()[i]` (a shorter slice means the rest are missing). Lets a
    /// caller fetch every property in one pass over a message.
    pub fn evaluate_resolved(&self, values: &[Option<&str>]) -> bool {
        eval(&self.root, &BySlot(values)) == Some(true)
    }

    /// [`Expr::evaluate_resolved`] with the values as their bytes (UTF-8 as stored,
    /// unchecked: see the module docs), as a filter reads them from a message.
    pub fn evaluate_resolved_bytes(&self, values: &[Option<&[u8]>]) -> bool {
        eval(&self.root, &BySlot(values)) == Some(true)
    }

    /// [`Expr::evaluate`] with values as bytes (UTF-8 as stored, unchecked).
    pub fn evaluate_bytes<'v>(&self, lookup: impl Fn(&str) -> Option<&'v [u8]>) -> bool {
        eval(&self.root, &BytesByName(lookup)) == Some(true)
    }
}

/// Where evaluation gets property values from.
trait Props<'v> {
    fn get(&self, prop: &Prop) -> Option<&'v [u8]>;
}

struct ByName<F>(F);

impl<'v, F: Fn(&str) -> Option<&'v str>> Props<'v> for ByName<F> {
    #[inline(always)]
    fn get(&self, prop: &Prop) -> Option<&'v [u8]> {
        (self.0)(&prop.name).map(str::as_bytes)
    }
}

struct BytesByName<F>(F);

impl<'v, F: Fn(&str) -> Option<&'v [u8]>> Props<'v> for BytesByName<F> {
    #[inline(always)]
    fn get(&self, prop: &Prop) -> Option<&'v [u8]> {
        (self.0)(&prop.name)
    }
}

/// Values by slot, as text or as bytes.
struct BySlot<'s, T>(&'s [Option<T>]);

impl<'v> Props<'v> for BySlot<'_, &'v str> {
    #[inline(always)]
    fn get(&self, prop: &Prop) -> Option<&'v [u8]> {
        self.0.get(prop.slot).copied().flatten().map(str::as_bytes)
    }
}

impl<'v> Props<'v> for BySlot<'_, &'v [u8]> {
    #[inline(always)]
    fn get(&self, prop: &Prop) -> Option<&'v [u8]> {
        self.0.get(prop.slot).copied().flatten()
    }
}

/// AND (`decisive` false) or OR (`decisive` true) in three-valued logic: the decisive value
/// wins over UNKNOWN and stops the walk; otherwise any UNKNOWN makes the whole UNKNOWN.
fn junction<'v, P: Props<'v>>(items: &[Node], props: &P, decisive: bool) -> Option<bool> {
    let mut all_known = true;
    for item in items {
        match eval(item, props) {
            Some(v) if v == decisive => return Some(decisive),
            Some(_) => {}
            None => all_known = false,
        }
    }
    all_known.then_some(!decisive)
}

fn eval<'v, P: Props<'v>>(node: &Node, props: &P) -> Option<bool> {
    match node {
        Node::Const(b) => Some(*b),
        Node::Not(inner) => eval(inner, props).map(|b| !b),
        Node::And(items) => junction(items, props, false),
        Node::Or(items) => junction(items, props, true),
        Node::Cmp(op, left, right) => {
            let l = resolve(left, props)?;
            let r = resolve(right, props)?;
            match op {
                CmpOp::Eq => equal(l, r),
                CmpOp::Ne => equal(l, r).map(|b| !b),
                CmpOp::Lt => order(l, r).map(|o| o == Ordering::Less),
                CmpOp::Le => order(l, r).map(|o| o != Ordering::Greater),
                CmpOp::Gt => order(l, r).map(|o| o == Ordering::Greater),
                CmpOp::Ge => order(l, r).map(|o| o != Ordering::Less),
            }
        }
        Node::Between {
            value,
            low,
            high,
            negated,
        } => {
            let v = resolve(value, props)?;
            let to_low = resolve(low, props).and_then(|l| order(v, l));
            let to_high = resolve(high, props).and_then(|h| order(v, h));
            if *negated {
                or3(
                    to_low.map(|o| o == Ordering::Less),
                    to_high.map(|o| o == Ordering::Greater),
                )
            } else {
                and3(
                    to_low.map(|o| o != Ordering::Less),
                    to_high.map(|o| o != Ordering::Greater),
                )
            }
        }
        Node::In {
            prop,
            list,
            negated,
        } => {
            let v = props.get(prop)?;
            // Byte order is `str`'s order: the list's sort holds.
            let found = list.binary_search_by(|item| item.as_bytes().cmp(v)).is_ok();
            Some(found != *negated)
        }
        Node::IsNull { prop, negated } => Some(props.get(prop).is_none() != *negated),
        Node::Text {
            op,
            prop,
            needle,
            negated,
        } => {
            let v = std::str::from_utf8(props.get(prop)?).ok()?;
            let hit = match op {
                TextOp::Contains => v.contains(&**needle),
                TextOp::StartsWith => v.starts_with(&**needle),
                TextOp::EndsWith => v.ends_with(&**needle),
            };
            Some(hit != *negated)
        }
    }
}

fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn or3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

#[inline(always)]
fn resolve<'a, 'v: 'a, P: Props<'v>>(operand: &'a Operand, props: &P) -> Option<Val<'a>> {
    Some(match operand {
        Operand::Prop(prop) => Val::Str(props.get(prop)?),
        Operand::Str(s) => Val::Str(s.as_bytes()),
        Operand::Num(n) => Val::Num(*n),
        Operand::Bool(b) => Val::Bool(*b),
    })
}

/// `=`: strings compare as strings; a string against a number compares numerically when
/// the string is a number (else UNKNOWN); a string against TRUE/FALSE reads it as a
/// boolean (else UNKNOWN); a number never equals a boolean.
#[inline(always)]
fn equal(l: Val<'_>, r: Val<'_>) -> Option<bool> {
    match (l, r) {
        (Val::Str(a), Val::Str(b)) => Some(same(a, b)),
        (Val::Str(s), Val::Num(n)) | (Val::Num(n), Val::Str(s)) => {
            Some(cmp_num(parse_num(s)?, n)? == Ordering::Equal)
        }
        (Val::Num(a), Val::Num(b)) => Some(cmp_num(a, b)? == Ordering::Equal),
        (Val::Str(s), Val::Bool(b)) | (Val::Bool(b), Val::Str(s)) => Some(parse_bool(s)? == b),
        (Val::Bool(a), Val::Bool(b)) => Some(a == b),
        (Val::Num(_), Val::Bool(_)) | (Val::Bool(_), Val::Num(_)) => Some(false),
    }
}

/// `a == b`, byte by byte: values are short, and in wasm the `memcmp` call that slice
/// equality makes costs more than the comparison.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// `<`, `>`, ...: numbers only; a string that is not a number makes it UNKNOWN.
fn order(l: Val<'_>, r: Val<'_>) -> Option<Ordering> {
    cmp_num(as_num(l)?, as_num(r)?)
}

fn as_num(v: Val<'_>) -> Option<Num> {
    match v {
        Val::Str(s) => parse_num(s),
        Val::Num(n) => Some(n),
        Val::Bool(_) => None,
    }
}

/// Reads a property value as a number without allocating: a decimal `i64` when it is
/// one, else a finite `f64` (so `inf` and `NaN` are not numbers). Surrounding ASCII
/// whitespace is ignored, as Java's `Double.valueOf` does.
/// A plain integer is read from the bytes; anything else must be UTF-8.
pub(crate) fn parse_num(s: &[u8]) -> Option<Num> {
    let s = s.trim_ascii();
    if let Some(i) = parse_short_int(s) {
        return Some(Num::Int(i));
    }
    let s = std::str::from_utf8(s).ok()?;
    if let Ok(i) = s.parse::<i64>() {
        return Some(Num::Int(i));
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Some(Num::Float(f)),
        _ => None,
    }
}

/// The common case of [`parse_num`], without the general parser's overhead: an optional
/// sign and up to 18 digits, which cannot overflow an `i64`.
fn parse_short_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i64::from(d);
    }
    Some(if negative { -v } else { v })
}

fn parse_bool(s: &[u8]) -> Option<bool> {
    let s = s.trim_ascii();
    if s.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if s.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        None
    }
}

/// Exact comparison, also between an `i64` and an `f64` (casting the integer would
/// round above 2^53).
pub(crate) fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).map(Ordering::reverse),
    }
}

fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    // 2^63 is exact as an f64; past it (either way) the float is beyond every i64.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    // In [-2^63, 2^63) `as` truncates exactly, and the whole part converts back exactly
    // (cheaper than `f64::trunc`, a libm call on baseline x86-64 and wasm).
    let whole = f as i64;
    match i.cmp(&whole) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - whole as f64)),
        other => Some(other),
    }
}

/// Canonical SQL, fully parenthesised; parsing it gives back an equal [`Expr`].
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

impl fmt::Display for Prop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { "NOT " } else { "" };
        match self {
            Node::Const(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Node::Not(inner) => write!(f, "NOT {inner}"),
            Node::And(items) | Node::Or(items) => {
                let sep = if matches!(self, Node::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
            Node::Cmp(op, l, r) => {
                let op = match op {
                    CmpOp::Eq => "=",
                    CmpOp::Ne => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                write!(f, "{l} {op} {r}")
            }
            Node::Between {
                value,
                low,
                high,
                negated,
            } => write!(f, "{value} {}BETWEEN {low} AND {high}", not(*negated)),
            Node::In {
                prop,
                list,
                negated,
            } => {
                write!(f, "{prop} {}IN (", not(*negated))?;
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_str_literal(f, item)?;
                }
                f.write_str(")")
            }
            Node::IsNull { prop, negated } => write!(f, "{prop} IS {}NULL", not(*negated)),
            Node::Text {
                op,
                prop,
                needle,
                negated,
            } => {
                let op = match op {
                    TextOp::Contains => "CONTAINS",
                    TextOp::StartsWith => "STARTSWITH",
                    TextOp::EndsWith => "ENDSWITH",
                };
                write!(f, "{prop} {}{op} ", not(*negated))?;
                write_str_literal(f, needle)
            }
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Prop(prop) => write!(f, "{prop}"),
            Operand::Str(s) => write_str_literal(f, s),
            Operand::Num(Num::Int(i)) => write!(f, "{i}"),
            // `{:?}` always shows a decimal point or exponent, so it re-parses as a float.
            Operand::Num(Num::Float(x)) => write!(f, "{x:?}"),
            Operand::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
        }
    }
}

fn write_str_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("'")?;
    for (i, part) in s.split('\'').enumerate() {
        if i > 0 {
            f.write_str("''")?;
        }
        f.write_str(part)?;
    }
    f.write_str("'")
}
