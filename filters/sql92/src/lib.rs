//! RocketMQ's SQL92 property filter as a weir filter: keeps the messages whose properties
//! satisfy an SQL92 boolean expression, e.g.
//! `region = 'eu' AND (amount > 100 OR vip = TRUE) AND tier IN ('gold', 'platinum')`.
//!
//! # Parameters
//!
//! - `expr` (required): the expression. A bad one fails `init` (so the upload is refused)
//!   with what was expected, what was found and the 1-based column, e.g.
//!   `expr: expected a value after '>', found 'AND' at column 5: a > AND b = 1`.
//!
//! No other parameter is accepted. The filter never reads bodies.
//!
//! # Grammar
//!
//! - Conditions: `a = v`, `a <> v`, `a < v`, `a <= v`, `a > v`, `a >= v`,
//!   `a [NOT] BETWEEN low AND high`, `a [NOT] IN ('x', 'y', ...)`, `a IS [NOT] NULL`,
//!   and RocketMQ 5's `a [NOT] CONTAINS 'x'`, `a [NOT] STARTSWITH 'x'`,
//!   `a [NOT] ENDSWITH 'x'`; combined with `NOT`, `AND`, `OR` (binding in that order,
//!   tightest first) and parentheses. `TRUE` and `FALSE` are conditions too.
//! - Values: property names; `'string'` literals (`''` is a quote inside one); numbers:
//!   integers (`42`, `-7`, `42L`, within `i64`) and decimals (`1.5`, `-.5`, `2e3`);
//!   `TRUE`, `FALSE`.
//! - Property names start with a letter, `_` or `$` and go on with letters, digits, `_`,
//!   `$` and `.` (`order.region`). Keywords are case-insensitive and cannot be property
//!   names. `--` starts a comment to the end of the line; `/* ... */` is a comment.
//! - Rejected when parsing, as in RocketMQ: a string or boolean next to `<`, `<=`, `>`,
//!   `>=` or `BETWEEN` (only numbers are ordered); `BETWEEN` with constant bounds in the
//!   wrong order; `IN` lists of anything but strings; `IN`, `IS NULL`, `CONTAINS`, ... on
//!   anything but a property; `NULL` outside `IS [NOT] NULL`. Also a property alone as a
//!   condition (`a AND b = 1`): write `a = TRUE`, or `a IS NOT NULL`.
//!
//! # Semantics
//!
//! Property values are strings. A comparison is TRUE, FALSE or UNKNOWN, and a message is
//! kept only when the whole expression is TRUE:
//!
//! - A missing property makes every condition on it UNKNOWN, except `IS [NOT] NULL`.
//! - `=` and `<>` between strings compare the strings. Against a number, the property is
//!   read as a number (a decimal `i64`, else a finite `f64`; surrounding spaces ignored)
//!   and compared numerically, exactly (`3.0 = 3`); a value that is not a number makes the
//!   comparison UNKNOWN. Against `TRUE`/`FALSE`, the value must be `true` or `false`
//!   (any case), else UNKNOWN.
//! - `<`, `<=`, `>`, `>=` and `BETWEEN` compare numbers only: a property that is not a
//!   number makes them UNKNOWN. `a BETWEEN x AND y` is `a >= x AND a <= y`;
//!   `a NOT BETWEEN x AND y` is `a < x OR a > y`.
//! - `IN`, `CONTAINS`, `STARTSWITH` and `ENDSWITH` compare strings, case-sensitively.
//! - Three-valued logic: `NOT UNKNOWN` is UNKNOWN; `FALSE AND UNKNOWN` is FALSE;
//!   `TRUE OR UNKNOWN` is TRUE; other mixes with UNKNOWN are UNKNOWN. So `a <> 5` and
//!   `NOT a = 5` both drop messages without `a`: write `a IS NULL OR a <> 5` to keep them.
//! - `TAGS` reads the message's tag when the message has no property of that name (in
//!   RocketMQ the tag is a property called `TAGS`), so `TAGS IN ('TagA', 'TagB')` works.
//!
//! Differences from RocketMQ, where it raises an evaluation error and drops the message,
//! or reads oddly: a type mismatch here is UNKNOWN (same verdict, even under `NOT`); an
//! integer literal against a decimal value (`a > 3` with `a = 3.5`) compares numerically
//! instead of failing; `NOT a = 1` means `NOT (a = 1)` (standard SQL) rather than
//! `(NOT a) = 1`; booleans accept only `true`/`false`; `CONTAINS` and friends on a missing
//! property are UNKNOWN rather than FALSE (same verdict except under `NOT`).
//!
//! # Natively
//!
//! [`parse`] and [`Expr::evaluate`] work without the SDK's message type, for tests and
//! benchmarks ([`Expr::evaluate_resolved`] takes the values already looked up, by slot of
//! [`Expr::property_names`]; [`Expr::evaluate_bytes`] and [`Expr::evaluate_resolved_bytes`]
//! take them as stored bytes, as the filter does: equal verdicts for UTF-8 values, and a
//! value that is not UTF-8, which no broker stores, compares as its bytes and is UNKNOWN
//! where it would be read as text):
//!
//! ```
//! let expr = weir_filter_sql92::parse("a BETWEEN 1 AND 10 AND b = 'x'").unwrap();
//! let props = [("a", "7"), ("b", "x")];
//! let lookup = |name: &str| props.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
//! assert!(expr.evaluate(lookup));
//! ```

mod expr;
mod lex;
mod parse;
#[cfg(test)]
mod tests;

pub use expr::Expr;
pub use parse::{ParseError, parse};

use weir_filter_sdk::{Filter, Message, ParamError, Params};

/// Expressions reading up to this many distinct properties fetch them all in one pass
/// over the message (on the stack); longer ones look each up when evaluated.
const MAX_SLOTS: usize = 16;

/// The filter: one parsed expression, evaluated against each message's properties.
pub struct Sql92 {
    expr: Expr,
    /// The slot of `TAGS`, when the expression reads it.
    tags_slot: Option<usize>,
}

impl Sql92 {
    /// The parsed expression.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}

impl Filter for Sql92 {
    fn init(params: &Params) -> Result<Self, ParamError> {
        params.allow_only(&["expr"])?;
        let source = params.require("expr")?;
        let expr = parse(source).map_err(|e| ParamError::new(format!("expr: {e}")))?;
        let tags_slot = expr.property_names().iter().position(|n| &**n == "TAGS");
        Ok(Sql92 { expr, tags_slot })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        // Values as their stored bytes: see `expr`'s docs on UTF-8.
        let names = self.expr.property_names();
        if names.len() <= 1 || names.len() > MAX_SLOTS {
            return self.expr.evaluate_bytes(|name| lookup(msg, name));
        }
        // One walk over the message for every name the expression reads.
        let mut buf = [None; MAX_SLOTS];
        let values = &mut buf[..names.len()];
        msg.properties_bytes_of(names, values);
        if let Some(i) = self.tags_slot
            && values[i].is_none()
            && !msg.tags().is_empty()
        {
            values[i] = Some(msg.tags().as_bytes());
        }
        self.expr.evaluate_resolved_bytes(values)
    }
}

/// A property's value; `TAGS` falls back to the message's tag (see the crate docs).
fn lookup<'a>(msg: &Message<'a>, name: &str) -> Option<&'a [u8]> {
    match msg.property_bytes(name) {
        Some(v) => Some(v),
        None if name == "TAGS" && !msg.tags().is_empty() => Some(msg.tags().as_bytes()),
        None => None,
    }
}

weir_filter_sdk::export_filter!(Sql92);
